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
requirements:
  - "On the host: nftables (nft) and util-linux (unshare), to load the declared table in a scratch network namespace first."
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
from ansible_collections.replica.cloud.plugins.module_utils import _runner

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


class TableError(Exception):
    """A table that does not load or stay as declared; the message says what to fix."""


def live_table(runner, nft, family, name):
    """``(json listing, text listing)`` of the live table, or ``(None, "")`` when it is not loaded."""
    rc, out, dummy = runner.run([nft, "-j", "-s", "list", "table", family, name], check=False)
    if rc != 0:
        return None, ""
    text = runner.run([nft, "-s", "list", "table", family, name], check=False)[1]
    return out, text


def declared_table(runner, nft, family, name, files):
    unshare = runner.bin("unshare")
    try:
        out = runner.run([unshare, "--net", "--", sys.executable, "-c", SCRATCH, nft, family, name, *files])[1]
    except _runner.CommandError as exc:
        raise TableError(f"the declared table {family} {name} does not load ({(exc.stderr or exc.stdout).strip()}): "
                         f"fix {' or '.join(files)}; the live table was left as it is") from exc
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
    result = {"changed": False, "reason": ""}
    try:
        converge(module, _runner.Runner(module), result)
    except (TableError, _runner.CommandError) as exc:
        _runner.fail(module, exc, **result)
    module.exit_json(**result)


def converge(module, runner, result):
    params = module.params
    family, name = params["family"], params["name"]
    nft = runner.bin("nft")
    live_json, live_text = live_table(runner, nft, family, name)
    if params["state"] == "absent":
        declared_text = ""
        if live_json is not None:
            result.update(changed=True, reason="the table is loaded")
            if not module.check_mode:
                runner.change([nft, "delete", "table", family, name], f"nft delete table {family} {name}")
    else:
        files = [params["path"]] + ([params["sets_path"]] if params["sets_path"] else [])
        declared_json, declared_text = declared_table(runner, nft, family, name, files)
        if live_json is None:
            result.update(changed=True, reason="the table is not loaded")
        elif live.nft_normalize(live_json) != live.nft_normalize(declared_json):
            result.update(changed=True, reason="the live table differs from the declared one")
        if result["changed"] and not module.check_mode:
            if params["unit"]:
                argv = [runner.bin("systemctl"), "reload-or-restart", params["unit"]]
            else:
                argv = [nft, "-f", params["path"]]
            runner.change(argv, f"loading the table ({' '.join(argv)})")
            if not params["unit"] and params["sets_path"]:
                runner.change([nft, "-f", params["sets_path"]], f"loading the table's sets ({params['sets_path']})")
            after_json = live_table(runner, nft, family, name)[0]
            if after_json is None or live.nft_normalize(after_json) != live.nft_normalize(declared_json):
                raise TableError(f"after {' '.join(argv)} the live table {family} {name} still differs from "
                                 f"{params['path']}: does the unit load that file?")
    if module._diff:
        result["diff"] = {"before": live_text, "after": declared_text,
                          "before_header": f"live table {family} {name}", "after_header": "declared"}


if __name__ == "__main__":
    main()
