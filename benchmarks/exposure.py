# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`systemd-analyze security` exposure of every service the collection hardens, before and after.

    .venv/bin/python benchmarks/exposure.py      (as root)

Boots a lab host with the packages of the service_sandbox molecule scenario, reads each packaged
unit's exposure, converges that scenario's playbook (the same role calls users make), reads it
again, prints a table and removes the lab host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position

SCENARIO = os.path.join(ROOT, "molecule", "service_sandbox")


def exposure(lab, machine, unit):
    out = lab.exec(machine, ["systemd-analyze", "security", "--no-pager", unit]).stdout
    return float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))


def main():
    with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as handle:
        packages = yaml.safe_load(handle)["platforms"][0]["packages"]
    units = []
    with open(os.path.join(SCENARIO, "converge.yml"), encoding="utf-8") as handle:
        for play in yaml.safe_load(handle):
            play_vars = {}
            for name in play.get("vars_files", []):
                with open(os.path.join(SCENARIO, name), encoding="utf-8") as vars_file:
                    play_vars.update(yaml.safe_load(vars_file))
            for task in play["tasks"]:
                unit = dict(play_vars, **task.get("vars", {})).get("service_sandbox_unit")
                if unit:
                    units.append(unit)
    lab = replica_lab.Lab()
    with lab.host("bench-exposure", packages=packages) as machine:
        before = {unit: exposure(lab, machine, unit) for unit in units}
        inventory = f"{machine.name},"
        bindir = os.path.dirname(sys.executable)
        subprocess.run([os.path.join(bindir, "ansible-playbook"), "-i", inventory,
                        "-c", "replica.cloud.nspawn", "-e", f"ansible_nspawn_leader_pid={machine.leader}",
                        os.path.join(SCENARIO, "converge.yml")], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL,
                       env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                                PATH=bindir + os.pathsep + os.environ["PATH"]))
        after = {unit: exposure(lab, machine, unit) for unit in units}
        proxies = [u.rsplit("/", 1)[-1] for u in lab.exec(
            machine, ["sh", "-c", "ls /etc/systemd/system/replica-proxy-*.service"]).stdout.split()]
        after.update({unit: exposure(lab, machine, unit) for unit in proxies})
    print(f"{'unit':36} {'packaged':>9} {'sandboxed':>10}")
    for unit, value in after.items():
        packaged = f"{before[unit]:.1f}" if unit in before else "-"
        print(f"{unit:36} {packaged:>9} {value:>10.1f}")


if __name__ == "__main__":
    main()
