# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.network in a lab host: converge times, how fast a name appears and goes, the
resolver's answer times, and how long the firewall takes to load. Prints a table.

    .venv/bin/python benchmarks/network.py [--runs 20] [--json PATH]   (as root)

Everything runs inside ONE lab host (``bench-net``, from the lab image with the network
scenario's packages, so nothing is downloaded), removed at the end, also on failure or Ctrl-C.

1. converge      ``ansible-playbook`` of the role with two segments (lan, dmz; the molecule
                 scenario's inventory): the first run (wall), then a second one (no change).
2. name appears  a record file written into ``lan/hosts/`` (what instance_address writes), then
                 ``dig`` at the segment's dnsmasq every 5 ms until it answers; timed by the lab
                 host's shell (--runs, default 20). dnsmasq sees the file through inotify.
   name goes     the file removed, until the answer is NXDOMAIN.
3. resolver      ``dig @127.0.0.1`` (the host's resolver address) for a recorded name through unbound (its stub to dnsmasq):
                 the first query of a name (cold) and the same again (cached); dig's own
                 "Query time" (ms resolution).
4. firewall      ``nft -f`` of the role's rule set for K segments with a rule between every
                 ordered pair (K = 2, 10, 30: 2, 90, 870 rules), the atomic replace of table
                 ``inet replica`` (median of 5, timed by the lab host's shell); the role's own rule
                 set is loaded again afterwards.

p50 is the median, p95 the nearest-rank 95th percentile (the maximum for fewer than 20 values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, ".collections"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position,import-error
from _loop import log, pct  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.replica.cloud.plugins.module_utils import _network  # noqa: E402  pylint: disable=wrong-import-position

LAB_HOST = "bench-net"
PACKAGES = ["systemd-container", "btrfs-progs", "mmdebstrap", "dnsmasq-base", "unbound", "dns-root-data", "nftables",
            "avahi-daemon", "bind9-dnsutils", "curl"]
ZONE = "lan.bench.home.arpa"
PLAYBOOK = """---
- name: The network role
  hosts: all
  gather_facts: false
  vars:
    network_domain: bench.home.arpa
    network_segments:
      - {name: lan, ipv4: 10.20.1.0/24, ipv6: "fd00:20:1::/64"}
      - {name: dmz, ipv4: 10.20.2.0/24, ipv6: "fd00:20:2::/64"}
    network_rules:
      - {from: dmz, to: lan, proto: tcp, port: 443}
  roles:
    - replica.cloud.network
"""


class BenchError(RuntimeError):
    """A step that did not work; the message says which."""


def sh(lab, machine, script):
    proc = lab.exec(machine, ["/bin/sh", "-c", script], check=False)
    if proc.returncode != 0:
        raise BenchError(f"in {machine.name}: {script!r} failed (rc={proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def converge(machine, workdir):
    path = os.path.join(workdir, "network.yml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(PLAYBOOK)
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               LC_ALL="C.UTF-8", ANSIBLE_NOCOLOR="1")
    argv = [os.path.join(bindir, "ansible-playbook"), "-i", f"{machine.name},", "-c", "replica.cloud.nspawn",
            "-e", f"ansible_nspawn_leader_pid={machine.leader}", "-e", "ansible_python_interpreter=/usr/bin/python3", path]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(f"converge failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    changed = int(proc.stdout.rsplit("changed=", 1)[1].split()[0])
    return wall, changed


def until(lab, machine, action, check):
    """Seconds from *action* until the shell condition *check* holds (polled every 5 ms)."""
    out = sh(lab, machine, f"s=$(date +%s%N); {action}; i=0; until {check}; do i=$((i+1)); [ $i -gt 2000 ] && exit 3; "
                           f"sleep 0.005; done; e=$(date +%s%N); echo $((e - s))")
    return int(out.strip()) / 1e9


def names(lab, machine, runs):
    appear, gone = [], []
    for run in range(runs):
        name = f"probe{run}"
        path = f"/etc/replica/network/lan/hosts/{name}"
        query = f"dig +short +time=1 @127.0.0.1 -p 5301 {name}.{ZONE}"
        appear.append(until(lab, machine, f"echo '10.20.1.{200 + run % 50} {name}.{ZONE} {name}' > {path}",
                            f"[ -n \"$({query})\" ]"))
        gone.append(until(lab, machine, f"rm -f {path}", f"[ -z \"$({query})\" ]"))
    return appear, gone


def resolver(lab, machine, runs):
    cold, cached = [], []
    for run in range(runs):
        name = f"res{run}"
        sh(lab, machine, f"echo '10.20.1.{100 + run % 50} {name}.{ZONE} {name}' > /etc/replica/network/lan/hosts/{name}")
        time.sleep(0.05)
        for bucket in (cold, cached):
            out = sh(lab, machine, f"dig +time=2 @127.0.0.1 {name}.{ZONE}")
            if "status: NOERROR" not in out:
                raise BenchError(f"unbound did not answer {name}.{ZONE}: {out}")
            bucket.append(int(out.split("Query time: ")[1].split()[0]) / 1000)
        sh(lab, machine, f"rm -f /etc/replica/network/lan/hosts/{name}")
    return cold, cached


def firewall(lab, machine):
    rows = {}
    for count in (2, 10, 30):
        segments = [{"name": f"s{i}", "ipv4": f"10.{100 + i}.0.0/24", "ipv6": f"fd00:{100 + i}::/64"} for i in range(count)]
        rules = [{"from": f"s{a}", "to": f"s{b}", "proto": "tcp", "port": 443} for a in range(count) for b in range(count) if a != b]
        ruleset = _network.nft_ruleset(_network.check_topology(segments, rules, [], "bench.home.arpa"))
        # /var/tmp: the lab host's /tmp is a tmpfs of its own, not the folder seen from here
        path = os.path.join(machine.directory, "var/tmp", f"bench-{count}.nft")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(ruleset)
        times = []
        for _run in range(5):
            out = sh(lab, machine, f"s=$(date +%s%N); nft -f /var/tmp/bench-{count}.nft || exit 3; e=$(date +%s%N); "
                                   f"echo $((e - s))")
            times.append(int(out.strip()) / 1e9)
        rows[f"{count} segments, {len(rules)} rules"] = times
        listed = sh(lab, machine, "nft list table inet replica | grep -c 'tcp dport 443 accept'")
        if int(listed.strip()) != len(rules):
            raise BenchError(f"{count} segments: {listed.strip()} rules loaded, not {len(rules)}")
    sh(lab, machine, "systemctl reload replica-firewall.service")
    return rows


def table(rows):
    lines = [f"{'measure':<44} {'n':>4} {'p50':>10} {'p95':>10} {'max':>10}"]
    for label, values in rows:
        lines.append(f"{label:<44} {len(values):>4} {statistics.median(values):>9.4f}s {pct(values, 0.95):>9.4f}s {max(values):>9.4f}s")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("must run as root (lab hosts)")
    lab = replica_lab.Lab()
    if lab.get(LAB_HOST):
        lab.down(LAB_HOST)
    workdir = tempfile.mkdtemp(prefix="network-bench-")
    try:
        log(f"booting lab host {LAB_HOST}")
        machine = lab.up(LAB_HOST, packages=PACKAGES)
        log("converging the network role")
        first, _changed = converge(machine, workdir)
        second, changed = converge(machine, workdir)
        if changed:
            raise BenchError(f"the second converge changed {changed} things")
        log("names")
        appear, gone = names(lab, machine, args.runs)
        log("resolver")
        cold, cached = resolver(lab, machine, args.runs)
        log("firewall")
        rules = firewall(lab, machine)
    except (BenchError, replica_lab.LabError, subprocess.CalledProcessError, OSError) as exc:
        log(f"error: {exc}")
        sys.exit(1)
    finally:
        log(f"removing lab host {LAB_HOST}")
        lab.down(LAB_HOST)
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    rows = [("converge, first run (wall)", [first]), ("converge, second run, no change (wall)", [second]),
            ("name appears (record -> dnsmasq answers)", appear), ("name goes (rm -> NXDOMAIN)", gone),
            ("unbound, first query (dig's ms resolution)", cold), ("unbound, cached (dig's ms resolution)", cached)]
    rows += [(f"nft -f, {label}", times) for label, times in rules.items()]
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(dict(rows), handle, indent=1)


if __name__ == "__main__":
    main()
