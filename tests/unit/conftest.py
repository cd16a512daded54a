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

_TOP = os.path.dirname(_COLLECTIONS)


def run_module_process(module, args, tmp_path, **flags):
    """Run plugins/modules/MODULE.py as Ansible runs it (a process given its arguments' file) and
    return its JSON result; *flags* are Ansible's own (``_ansible_check_mode=True``)."""
    import json  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    path = os.path.join(str(tmp_path), f"{module}.args.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args, **flags)}, handle)
    env = dict(os.environ, PYTHONPATH=_COLLECTIONS, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    out = subprocess.run([sys.executable, os.path.join(_TOP, "plugins", "modules", f"{module}.py"), path],
                         capture_output=True, text=True, env=env, check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)
