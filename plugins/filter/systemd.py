# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd naming filters."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils._sandbox import SandboxError, escape_path


def systemd_escape_path(path):
    try:
        return escape_path(path)
    except SandboxError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """replica.cloud systemd filters."""

    def filters(self):
        return {"systemd_escape_path": systemd_escape_path}
