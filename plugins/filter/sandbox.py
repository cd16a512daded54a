# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the service_sandbox role."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils._sandbox import (
    SandboxError,
    overlay_source,
    proxy_units,
    render_dropin,
    state_mount_unit,
)


def _wrap(func):
    def wrapped(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SandboxError as exc:
            raise AnsibleFilterError(str(exc)) from exc
    wrapped.__name__ = func.__name__
    return wrapped


class FilterModule:
    """replica.cloud sandbox filters."""

    def filters(self):
        return {
            "sandbox_dropin": _wrap(render_dropin),
            "sandbox_overlay_source": _wrap(overlay_source),
            "sandbox_proxy_units": _wrap(proxy_units),
            "sandbox_state_mount": _wrap(state_mount_unit),
        }
