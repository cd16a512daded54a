# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The containers role's inventory check (plugins/module_utils/_nspawn.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils import _nspawn


def containers_inventory(machines, images, known_images=None, default_image=None):
    """The machines, checked; an AnsibleFilterError names the culprit. Without *known_images*
    (the images built on the host) the machines' images are not checked."""
    try:
        return _nspawn.check_inventory(machines, images, known_images, default_image or None)
    except _nspawn.MachineError as exc:
        raise AnsibleFilterError(f"containers inventory: {exc}") from exc


def containers_lambdas(lambdas):
    """The lambdas, checked (_nspawn.check_lambdas); an AnsibleFilterError names the culprit."""
    try:
        return _nspawn.check_lambdas(lambdas)
    except _nspawn.MachineError as exc:
        raise AnsibleFilterError(f"containers lambdas: {exc}") from exc


def machine_layout(name, machines_dir=_nspawn.MACHINES_DIR):
    """Where machine *name*'s files and units are (_nspawn.layout, the module's own), as a dict."""
    try:
        return _nspawn.layout(name, machines_dir)._asdict()
    except _nspawn.MachineError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """replica.cloud containers filters."""

    def filters(self):
        return {"containers_inventory": containers_inventory, "containers_lambdas": containers_lambdas,
                "machine_layout": machine_layout}
