#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_table
short_description: The live nftables table is the declared one, whatever earlier runs did
version_added: 0.1.0
description:
  - Compares the B(live) table O(family) O(name) with the one the file O(path) declares (and the
    set elements O(sets_path) adds), and loads the file when they differ. The file is loaded into a
    scratch network namespace first, so nft itself normalises both sides; handles are ignored and
    set elements compared as sets.
  - This is what makes a firewall converge after a run that failed between writing the rules and
    loading them (a handler that never ran), after C(nft flush ruleset) by another tool, or after a
    rule added by hand; comparing the file with itself would see nothing to do.
  - O(path) must replace the table whole in one transaction (C(table ...; delete table ...; table
    ... { ... })), as the network role's rule set does.
author: replica.cloud contributors (@replica-cloud)
options:
  name:
    description: The table's name.
    type: str
    required: true
  family:
    description: The table's family.
    type: str
    choices: [inet, ip, ip6, arp, bridge, netdev]
    default: inet
  path:
    description: The nft file that declares the table (required with O(state=present)).
    type: path
  sets_path:
    description: An nft file of C(add element) commands loaded after O(path) (optional).
    type: path
  unit:
    description:
      - A systemd unit whose C(ExecReload) loads O(path) and O(sets_path) (the network role's
        C(replica-firewall.service)); the module then applies through C(systemctl reload-or-restart)
        so that the unit stays the one way the table is loaded. Without it, C(nft -f) is run.
    type: str
  state:
    description:
      - V(present) - the live table equals the declared one (loaded when it does not).
      - V(absent) - the table is not loaded.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Needs C(nft) (nftables) and C(unshare) (util-linux) on the target, and root.
  - "Crash consistency: the table is replaced in one nft transaction, so a kill leaves the old
    table or the new one, never a mix; the next run compares again and converges."
attributes:
  check_mode:
    description: Reports whether the live table differs, and loads nothing.
    support: full
  diff_mode:
    description: Shows the live and the declared table (C(nft -s list table)).
    support: full
"""

EXAMPLES = r"""
- name: The firewall that is loaded is the one declared
  replica.cloud.nft_table:
    name: replica
    path: /etc/replica/network/replica.nft
    sets_path: /etc/replica/network/instances.nft
    unit: replica-firewall.service
"""

RETURN = r"""
reason:
  description: Why the table was (or would be) loaded or deleted; empty when nothing was needed.
  returned: always
  type: str
  sample: the live table differs from the declared one
"""

import json
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _live as live

ENV = {"LC_ALL": "C", "LANG": "C"}

# run in a scratch network namespace: load the declared files, print their listing (two nft
# runs: a listing inside the loading transaction does not see the rules yet)
SCRATCH = r"""
import json, subprocess, sys
nft, family, name, *files = sys.argv[1:]
for path in files:
    loaded = subprocess.run([nft, "-f", path], capture_output=True, text=True)
    if loaded.returncode:
        raise SystemExit("nft -f %s: %s" % (path, loaded.stderr.strip()))
out = {}
for key, flags in (("json", ["-j", "-s"]), ("text", ["-s"])):
    out[key] = subprocess.run([nft, *flags, "list", "table", family, name], capture_output=True,
                              text=True, check=True).stdout
print(json.dumps(out))
"""


def live_table(module, nft, family, name):
    """``(json listing, text listing)`` of the live table, or ``(None, "")`` when it is not loaded."""
    rc, out, dummy = module.run_command([nft, "-j", "-s", "list", "table", family, name], environ_update=ENV)
    if rc != 0:
        return None, ""
    text = module.run_command([nft, "-s", "list", "table", family, name], environ_update=ENV)[1]
    return out, text


def declared_table(module, nft, family, name, files):
    unshare = module.get_bin_path("unshare", required=True)
    rc, out, err = module.run_command([unshare, "--net", "--", sys.executable, "-c", SCRATCH, nft, family, name, *files],
                                      environ_update=ENV)
    if rc != 0:
        module.fail_json(msg=f"the declared table {family} {name} does not load ({(err or out).strip()}): fix "
                             f"{' or '.join(files)}; the live table was left as it is")
    data = json.loads(out)
    return data["json"], data["text"]


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "family": {"type": "str", "choices": ["inet", "ip", "ip6", "arp", "bridge", "netdev"], "default": "inet"},
            "path": {"type": "path"},
            "sets_path": {"type": "path"},
            "unit": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        required_if=[("state", "present", ["path"])],
        supports_check_mode=True,
    )
    params = module.params
    family, name = params["family"], params["name"]
    nft = module.get_bin_path("nft")
    if not nft:
        module.fail_json(msg="nft is not installed on the target: install the nftables package")
    live_json, live_text = live_table(module, nft, family, name)
    result = {"changed": False, "reason": ""}
    if params["state"] == "absent":
        declared_text = ""
        if live_json is not None:
            result.update(changed=True, reason="the table is loaded")
            if not module.check_mode:
                rc, out, err = module.run_command([nft, "delete", "table", family, name], environ_update=ENV)
                if rc != 0:
                    module.fail_json(msg=f"nft delete table {family} {name} failed: {(err or out).strip()}", **result)
    else:
        files = [params["path"]] + ([params["sets_path"]] if params["sets_path"] else [])
        declared_json, declared_text = declared_table(module, nft, family, name, files)
        if live_json is None:
            result.update(changed=True, reason="the table is not loaded")
        elif live.nft_normalize(live_json) != live.nft_normalize(declared_json):
            result.update(changed=True, reason="the live table differs from the declared one")
        if result["changed"] and not module.check_mode:
            if params["unit"]:
                argv = [module.get_bin_path("systemctl", required=True), "reload-or-restart", params["unit"]]
            else:
                argv = [nft, "-f", params["path"]]
            rc, out, err = module.run_command(argv, environ_update=ENV)
            if rc == 0 and not params["unit"] and params["sets_path"]:
                rc, out, err = module.run_command([nft, "-f", params["sets_path"]], environ_update=ENV)
            if rc != 0:
                module.fail_json(msg=f"loading the table failed ({' '.join(argv)}): {(err or out).strip()}", **result)
            after_json = live_table(module, nft, family, name)[0]
            if after_json is None or live.nft_normalize(after_json) != live.nft_normalize(declared_json):
                module.fail_json(msg=f"after {' '.join(argv)} the live table {family} {name} still differs from "
                                     f"{params['path']}: does the unit load that file?", **result)
    if module._diff:
        result["diff"] = {"before": live_text, "after": declared_text,
                          "before_header": f"live table {family} {name}", "after_header": "declared"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
