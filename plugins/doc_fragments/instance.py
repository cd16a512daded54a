# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options every instance module (nspawn_machine, qemu_vm) shares; their argument spec is
plugins/module_utils/_params.py's instance_options, their lifecycle _lifecycle.plan."""

from __future__ import annotations


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    """Shared documentation of the instance modules."""

    DOCUMENTATION = r"""
options:
  name:
    description:
      - The instance's name, also its host name and its DNS label - 1-63 of C(a-z), C(0-9) and
        C(-), not starting or ending with C(-). One rule for containers, VMs, lambdas, DNS and DHCP
        records and lab hosts (C(plugins/module_utils/_names.py)); a name that breaks it is
        refused before anything is written, with the same message everywhere.
    type: str
    required: true
  state:
    description:
      - V(present) - defined; the module neither starts nor stops it.
      - V(started), V(stopped), V(restarted) - defined and in that state.
      - V(absent) - stopped, its units and settings removed, its data deleted unless O(keep_data).
      - RV(actions) lists what the module did for it, or in check mode what it would do, in order
        (V(clean), V(create), V(configure), V(enable), V(disable), V(stop), V(start), V(restart),
        V(remove)); the module reports a change exactly when there are any.
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: started
  wait:
    description: Return only when the instance is ready (see O(timeout)).
    type: bool
    default: true
  keep_data:
    description: With O(state=absent), keep the instance's data (its root or its disk).
    type: bool
    default: false
notes:
  - "Check mode returns the same RV(actions) a real run then takes, and the RV(state) it would leave."
"""
