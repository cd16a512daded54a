# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the instance modules' parameters share: the options every instance has (their
documentation is the ``replica.cloud.instance`` doc fragment) and the spec as the pure functions
take it.

Standard library only, and no Ansible imports.
"""

from __future__ import annotations

from ansible_collections.replica.cloud.plugins.module_utils import _lifecycle


def instance_options(timeout):
    """``state``, ``wait``, ``timeout`` and ``keep_data``: the options of every instance module
    (nspawn_machine, qemu_vm), with *timeout* seconds to wait for ready by default."""
    return {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "started", "choices": list(_lifecycle.STATES)},
        "wait": {"type": "bool", "default": True},
        "timeout": {"type": "int", "default": timeout},
        "keep_data": {"type": "bool", "default": False},
    }


def without_none(value):
    """*value* without the keys whose value is None, in nested dicts and lists too: the suboptions
    not given, which Ansible fills in with None. The specs (and the digests made of them: a
    machine's first-boot settings, a VM's cloud-init instance id) stay what they were before the
    suboptions were declared."""
    if isinstance(value, dict):
        return {key: without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_none(item) for item in value]
    return value


def spec_of(params):
    """The module's parameters as the pure functions take them: suboptions not given are left
    out, top-level options stay (None when not given)."""
    spec = without_none(params)
    for key in params:
        spec.setdefault(key, None)
    return spec
