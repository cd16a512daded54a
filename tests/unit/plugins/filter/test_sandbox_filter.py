# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sandbox filters turn profile errors into Ansible filter errors."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.filter.sandbox import FilterModule


def test_filters_render_and_refuse():
    filters = FilterModule().filters()
    assert "ProtectSystem=strict" in filters["sandbox_dropin"]({})
    assert filters["sandbox_overlay_source"]("nginx", "/etc/nginx/nginx.conf") == \
        "/etc/replica/nginx/etc/nginx/nginx.conf"
    with pytest.raises(AnsibleFilterError, match="unknown sandbox profile keys"):
        filters["sandbox_dropin"]({"nope": True})
