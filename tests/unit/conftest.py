# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make ``ansible_collections.replica.cloud`` importable under plain pytest.

The checkout holds ``.collections/ansible_collections/replica/cloud``, a link
back to the checkout itself; putting ``.collections`` on ``sys.path`` lets
tests import the collection's code by its real name.
"""

from __future__ import annotations

import os
import sys

_COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), '.collections')

if os.path.isdir(os.path.join(_COLLECTIONS, 'ansible_collections')) and _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
