# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the replica-tools package puts a command (plugins/module_utils/_tools.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils import _tools


def tools_command(command):
    if command not in _tools.COMMANDS:
        raise AnsibleFilterError(f"replica-tools has no command {command!r} (it has {', '.join(sorted(_tools.COMMANDS))})")
    return _tools.command_path(command)


class FilterModule:
    """replica.cloud tools filters."""

    def filters(self):
        return {"tools_command": tools_command}
