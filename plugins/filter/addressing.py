# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deterministic instance addresses (the same functions the modules use on the target)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils import _addressing


def _wrap(function):
    def filter_(name, segment=None, taken=(), namespace="replica"):
        try:
            if function is _addressing.mac_for:
                return function(name, namespace=namespace)
            return function(name, segment, taken=taken or (), namespace=namespace)
        except (_addressing.AddressError, TypeError, ValueError) as exc:
            raise AnsibleFilterError(str(exc)) from exc
    return filter_


class FilterModule:
    """replica.cloud addressing filters."""

    def filters(self):
        return {"instance_ipv6": _wrap(_addressing.ipv6_for), "instance_ipv4": _wrap(_addressing.ipv4_for),
                "instance_mac": _wrap(_addressing.mac_for)}
