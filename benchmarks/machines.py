# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machines in a lab host: replica.cloud.nspawn_machine from request to READY. Prints a table.

    .venv/bin/python benchmarks/machines.py [--runs 10] [--runs-10 3] [--large 2G] [--json PATH]   (as root)

Everything runs inside ONE lab host (``bench-mach``, booted from the lab's cached base image with
scripts/replica_lab.py), which is removed at the end, also on failure or Ctrl-C. The lab's base
image (Debian 12) is put into it as a read-only btrfs snapshot at /var/lib/machines/.images/debian-12
(tests/integration/conftest.py ``seed_image``): the "warm image cache" case, nothing is fetched.
Modules run through ansible and the replica.cloud.nspawn connection, as the integration tests do
(``run_module``), with the lab host's /usr/bin/python3 and pipelining on (the connection supports
it; it saves a file transfer per task). Before the timed runs one untimed create/remove cycle
warms the page cache and ansible's own caches.

1. One machine (--runs N, default 10). Each run:
     ready_seconds     ``{name: m1, image: debian-12}`` (state started): the module's own
                       RV(ready_seconds): the time its blocking ``systemctl start`` takes, which
                       returns when the machine's systemd sent READY (NotifyReady=yes)
     ansible call      the wall time of that whole ``ansible`` command (ansible's start-up,
                       the connection, fork, first-boot files, enable, start until READY)
     remove            ``state: absent`` (stop, disable, delete the fork and its nested subvolumes): the whole
                       ``ansible`` command
     systemctl start   the module creates m1 with ``state: present`` (not started), then
                       ``systemctl start systemd-nspawn@m1.service`` is timed inside the lab host
                       by the shell there (date +%s%N around it; systemctl blocks until READY):
                       nspawn boot-to-READY without the module or ansible. m1 is removed again
                       (untimed).
2. Ten machines started together (--runs-10 N, default 3). One ``ansible-playbook``: a task with
   ``loop: p1..p10``, ``async: 120, poll: 0`` launches the ten module runs, then
   ``async_status`` (``until: finished``, delay 0.1 s) collects them. This is how a playbook
   starts many machines at once with a single controller process; ten parallel ``ansible``
   processes would instead measure ten Python start-ups fighting over 2 cores. The launches are
   sequential inside ansible (each async start is one trip through the connection), so the ten
   starts are spread over the first seconds; the table shows that spread. --launch hosts
   instead starts them all at the same moment: one inventory alias per machine (p1..p10, all
   the same lab host) and ``-f 10``, a plain task without async, ten ansible workers at once.
     ready_seconds       every machine's RV(ready_seconds) (10 per run); with starts overlapping,
                         the ten boots share the two cores
     all ready (wall)    the whole ansible-playbook command, until async_status has seen all ten
                         finished (includes ansible's start-up and the polling)
     1st start->all READY  inside the lab host, from systemd's own unit timestamps: the earliest
                         InactiveExitTimestamp (first start request) to the latest
                         ActiveEnterTimestamp (last READY) of the ten units
     start spread        latest minus earliest InactiveExitTimestamp: how staggered the launches were
     remove (wall)       the same playbook shape with ``state: absent`` (between runs)
3. Fork time, small against large image (inside the lab host, median of 5; timed by the shell
   there, the command plus ``sync -f`` of the result):
     fork small image    ``btrfs subvolume snapshot`` of debian-12 (what the module does first)
     fork large image    the same of ``large``: a snapshot of debian-12 with --large (2 GiB) of
                         incompressible data added under /srv/bulk (32 files), made read-only
                         once at /var/lib/machines/.images/large
     copy small image    ``cp -a --reflink=never`` of debian-12, once, for comparison
   Each fork is deleted after its run (``btrfs subvolume delete --commit-after``, untimed). The
   point: a copy-on-write fork costs the same whatever the image's size.

p50 is the median, p95 the nearest-rank 95th percentile (the maximum for fewer than 20 values).
The btrfs pool is shared with any other lab hosts running at the time; their work is noise here.
At the end the lab host is checked for what the module left behind (forks, subvolumes, unit
settings, units); anything found is printed. --json PATH writes every raw number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position
from _loop import log, pct  # noqa: E402  pylint: disable=wrong-import-position
from conftest import run_module, seed_image  # noqa: E402  pylint: disable=wrong-import-position

LAB_HOST = "bench-mach"
IMAGE = "debian-12"
IMAGES = "/var/lib/machines/.images"
MACHINES = "/var/lib/machines"
MODULE = "replica.cloud.nspawn_machine"
PIPELINING = ("-e", "ansible_pipelining=true")
MIB = 1 << 20
UNITS = {"": 1, "K": 1 << 10, "M": MIB, "G": 1 << 30}

PLAYBOOK = """\
- name: Machines together
  hosts: all
  gather_facts: false
  tasks:
    - name: Launch
      {module}:
        name: "{{{{ item }}}}"
        image: {image}
        state: {state}
      loop: {names}
      async: 120
      poll: 0
      register: jobs
    - name: Collect
      ansible.builtin.async_status:
        jid: "{{{{ item.ansible_job_id }}}}"
      loop: "{{{{ jobs.results }}}}"
      register: done
      until: done.finished
      retries: 1200
      delay: 0.1
"""

#: --launch hosts: one inventory alias per machine (all the same lab host), one fork each
PLAYBOOK_HOSTS = """\
- name: Machines together
  hosts: all
  gather_facts: false
  tasks:
    - name: Machine
      {module}:
        name: "{{{{ inventory_hostname }}}}"
        image: {image}
        state: {state}
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


def parse_size(text):
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in UNITS else ""
    return int(float(text[:len(text) - len(unit)]) * UNITS[unit])


def terminate(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Helpers that act inside the lab host
# ---------------------------------------------------------------------------------------------

class Host:
    """The lab host the machines run in."""

    def __init__(self, lab, machine):
        self.lab = lab
        self.machine = machine

    def sh(self, script, check=True):
        proc = self.lab.exec(self.machine, ["/bin/sh", "-c", script], check=False)
        if check and proc.returncode != 0:
            raise BenchError(f"in {self.machine.name}: {script!r} failed (rc={proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def timed(self, command, then_sync=None):
        """Seconds *command* takes, timed by the lab host's shell; with *then_sync*, also the
        seconds until ``sync -f then_sync`` returns. Returns (command_s, with_sync_s)."""
        sync = f"sync -f {then_sync}; " if then_sync else ""
        out = self.sh(f"s=$(date +%s%N); {command} >/dev/null || exit 3; m=$(date +%s%N); {sync}"
                      "e=$(date +%s%N); echo $((m - s)) $((e - s))")
        cmd_ns, total_ns = (int(v) for v in out.split())
        return cmd_ns / 1e9, total_ns / 1e9

    def path(self, inside):
        """*inside* (a path in the lab host) as seen from this machine."""
        return os.path.join(self.machine.directory, inside.lstrip("/"))

    def unit_times(self, names):
        """{name: (start request, READY)} from systemd's monotonic unit timestamps, seconds."""
        units = [f"systemd-nspawn@{name}.service" for name in names]
        out = self.sh("systemctl show -p Id,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic "
                      + " ".join(units))
        found = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            name = props["Id"].removeprefix("systemd-nspawn@").removesuffix(".service")
            found[name] = (int(props["InactiveExitTimestampMonotonic"]) / 1e6,
                           int(props["ActiveEnterTimestampMonotonic"]) / 1e6)
        return found


def module(host, args):
    """Run the module in the lab host; return (result, wall seconds of the ansible command)."""
    started = time.monotonic()
    try:
        rc, result = run_module(MODULE, args, *PIPELINING, check=True, machine=host.machine)
    except AssertionError as exc:
        raise BenchError(f"{MODULE} {json.dumps(args)}: {exc}") from None
    wall = time.monotonic() - started
    if rc != 0 or result.get("failed"):
        raise BenchError(f"{MODULE} {json.dumps(args)} failed: {result.get('msg')}")
    return result, wall


def playbook(host, workdir, names, state, launch="async"):
    """One ansible-playbook running the module for *names* at once; returns (the module results,
    wall seconds). *launch* async: a loop with async/poll 0, collected with async_status;
    hosts: one inventory alias per name, as many forks as names."""
    path = os.path.join(workdir, f"together-{state}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        text = PLAYBOOK if launch == "async" else PLAYBOOK_HOSTS
        handle.write(text.format(module=MODULE, image=IMAGE, state=state, names=json.dumps(names)))
    inventory = [f"{host.machine.name},"] if launch == "async" else [",".join(names) + ",", "-f", str(len(names))]
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""), LC_ALL="C.UTF-8",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0")
    argv = [os.path.join(bindir, "ansible-playbook"), "-i", *inventory,
            "-c", "replica.cloud.nspawn", "-e", f"ansible_nspawn_leader_pid={host.machine.leader}",
            "-e", "ansible_python_interpreter=/usr/bin/python3", *PIPELINING, path]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    wall = time.monotonic() - started
    try:
        report = json.loads(proc.stdout)
        tasks = report["plays"][0]["tasks"]
        if launch == "async":
            collected = tasks[1]["hosts"][host.machine.name]["results"]
        else:
            collected = [dict(tasks[0]["hosts"][name], finished=1) for name in names]
    except (ValueError, KeyError, IndexError):
        raise BenchError(f"ansible-playbook ({state}) rc={proc.returncode}:\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-2000:]}") from None
    failed = [item for item in collected if item.get("failed") or not item.get("finished")]
    if proc.returncode != 0 or failed:
        raise BenchError(f"ansible-playbook ({state}) rc={proc.returncode}: "
                         + "; ".join(str(item.get("msg")) for item in failed))
    return collected, wall


# ---------------------------------------------------------------------------------------------
# The three parts
# ---------------------------------------------------------------------------------------------

def one_machine(host, runs, raw):
    spec = {"name": "m1", "image": IMAGE}
    log("warm-up: create m1 and remove it (untimed)")
    module(host, spec)
    module(host, {"name": "m1", "state": "absent"})
    rows = {"ready": [], "call": [], "systemctl": [], "remove": []}
    for index in range(runs):
        result, wall = module(host, spec)
        if result.get("state") != "running" or "ready_seconds" not in result:
            raise BenchError(f"m1 is {result.get('state')} after state=started: {result}")
        start, ready = host.unit_times(["m1"])["m1"]
        owner = os.stat(host.path(f"{MACHINES}/m1")).st_uid
        removed, remove_wall = module(host, {"name": "m1", "state": "absent"})
        if not removed.get("changed") or os.path.lexists(host.path(f"{MACHINES}/m1")):
            raise BenchError(f"m1 not removed: {removed}")
        module(host, dict(spec, state="present"))
        direct = host.timed("systemctl start systemd-nspawn@m1.service")[0]
        module(host, {"name": "m1", "state": "absent"})
        rows["ready"].append(result["ready_seconds"])
        rows["call"].append(wall)
        rows["systemctl"].append(direct)
        rows["remove"].append(remove_wall)
        raw.append({"run": index + 1, "ready_seconds": result["ready_seconds"], "ansible_call_s": wall,
                    "systemd_start_to_active_s": round(ready - start, 6), "systemctl_start_s": direct,
                    "remove_s": remove_wall, "fork_root_uid_after_boot": owner})
        log(f"1 machine run {index + 1}/{runs}: ready {result['ready_seconds']:.3f} s, ansible call {wall:.2f} s, "
            f"systemctl start {direct:.3f} s, remove {remove_wall:.2f} s")
    return rows


def together(host, workdir, runs, count, raw, launch):
    names = [f"p{i}" for i in range(1, count + 1)]
    rows = {"ready": [], "wall": [], "span": [], "spread": [], "remove": []}
    for index in range(runs):
        results, wall = playbook(host, workdir, names, "started", launch)
        ready = [item["ready_seconds"] for item in results]
        if len(ready) != count:
            raise BenchError(f"{len(ready)} of {count} machines reported ready_seconds")
        times = host.unit_times(names)
        starts = [t[0] for t in times.values()]
        span = max(t[1] for t in times.values()) - min(starts)
        spread = max(starts) - min(starts)
        running = host.sh("machinectl list --no-legend | wc -l").strip()
        dummy, remove_wall = playbook(host, workdir, names, "absent", launch)
        left = [n for n in names if os.path.lexists(host.path(f"{MACHINES}/{n}"))]
        if left:
            raise BenchError(f"not removed: {left}")
        rows["ready"] += ready
        rows["wall"].append(wall)
        rows["span"].append(span)
        rows["spread"].append(spread)
        rows["remove"].append(remove_wall)
        raw.append({"run": index + 1, "ready_seconds": ready, "playbook_wall_s": wall,
                    "first_start_to_last_ready_s": round(span, 6), "start_spread_s": round(spread, 6),
                    "per_machine_systemd_s": {n: round(t[1] - t[0], 6) for n, t in sorted(times.items())},
                    "machines_listed": int(running), "remove_wall_s": remove_wall})
        log(f"{count} together run {index + 1}/{runs}: playbook {wall:.2f} s, first start->last READY {span:.2f} s "
            f"(starts spread over {spread:.2f} s), ready_seconds p50 {statistics.median(ready):.3f} max {max(ready):.3f}, "
            f"remove {remove_wall:.2f} s")
    return rows


def write_bulk(folder, size):
    """*size* bytes of incompressible data in 32 files under *folder* (fresh random per file;
    a 4 MiB block repeats inside a file, far beyond btrfs' 128 KiB compression window)."""
    os.makedirs(folder)
    per_file = -(-size // 32)
    for index in range(32):
        block = os.urandom(4 * MIB)
        with open(os.path.join(folder, f"bulk{index:02d}.dat"), "wb") as handle:
            left = per_file
            while left > 0:
                handle.write(block[:min(left, len(block))])
                left -= len(block)


def tree_bytes(path):
    out = subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def forks(host, large_size, runs, raw):
    small = f"{IMAGES}/{IMAGE}"
    large = f"{IMAGES}/large"
    dest = f"{MACHINES}/forktest"
    log(f"making the large image: a snapshot of {IMAGE} plus {large_size / MIB:.0f} MiB")
    started = time.monotonic()
    host.sh(f"btrfs subvolume snapshot {small} {large}")
    write_bulk(host.path(f"{large}/srv/bulk"), large_size)
    host.sh(f"sync -f {large} && btrfs property set -ts {large} ro true")
    raw["large_image_made_s"] = time.monotonic() - started
    raw["small_image_bytes"] = tree_bytes(host.path(small))
    raw["large_image_bytes"] = tree_bytes(host.path(large))
    rows = {}
    for label, src in (("small", small), ("large", large)):
        rows[label] = []
        for index in range(runs):
            host.sh(f"sync -f {MACHINES}")
            cmd_s, total_s = host.timed(f"btrfs subvolume snapshot {src} {dest}", then_sync=dest)
            host.sh(f"btrfs subvolume delete --commit-after {dest} >/dev/null")
            rows[label].append(total_s)
            raw.setdefault(f"fork_{label}", []).append({"snapshot_s": cmd_s, "with_sync_s": total_s})
            log(f"fork {label} image run {index + 1}/{runs}: {total_s:.3f} s (snapshot {cmd_s:.3f} s)")
    host.sh(f"sync -f {MACHINES}")
    cmd_s, total_s = host.timed(f"cp -a --reflink=never {small} {dest}", then_sync=dest)
    host.sh(f"rm -rf {dest}")
    rows["copy"] = [total_s]
    raw["copy_small"] = [{"cp_s": cmd_s, "with_sync_s": total_s}]
    log(f"copy small image: {total_s:.2f} s (cp {cmd_s:.2f} s + sync)")
    host.sh(f"btrfs property set -ts {large} ro false && btrfs subvolume delete --commit-after {large} >/dev/null")
    return rows


def leftovers(host):
    """What the module left in the lab host after every machine was removed."""
    found = {}
    listing = sorted(e for e in os.listdir(host.path(MACHINES)) if e != ".images")
    if listing:
        found["machines_dir"] = listing
    subvols = [line.split(" path ", 1)[1] for line in host.sh(f"btrfs subvolume list -o {MACHINES} || true").splitlines()
               if f"{LAB_HOST}{MACHINES}/" in line and f"{MACHINES}/.images/" not in line]
    if subvols:
        found["subvolumes"] = subvols
    for folder in ("/etc/systemd/nspawn", "/etc/replica/machines", "/etc/replica/machines/hosts.d"):
        if os.path.isdir(host.path(folder)):
            entries = sorted(e for e in os.listdir(host.path(folder)) if not os.path.isdir(host.path(f"{folder}/{e}")))
            entries = [e for e in entries if e != "hosts"]
            if entries:
                found[folder] = entries
    dropins = [e for e in os.listdir(host.path("/etc/systemd/system")) if e.startswith("systemd-nspawn@")]
    if dropins:
        found["dropins"] = dropins
    units = host.sh("systemctl list-units --all --no-legend --plain 'systemd-nspawn@*' || true").strip()
    if units:
        found["units"] = units.splitlines()
    wants = host.path("/etc/systemd/system/machines.target.wants")
    if os.path.isdir(wants) and os.listdir(wants):
        found["machines.target.wants"] = sorted(os.listdir(wants))
    failed = host.sh("systemctl --failed --no-legend --plain || true").strip()
    if failed:
        found["failed_units"] = failed.splitlines()
    return found


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def table(rows, raw):
    small = raw["forks"].get("small_image_bytes", 0) / MIB
    large = raw["forks"].get("large_image_bytes", 0) / MIB
    lines = ["machines in a lab host (Debian 12 image, btrfs, warm cache), seconds",
             f"{'case':32} {'runs':>4}  {'p50':>7} {'p95':>7}"]
    for label, values in rows:
        if values:
            lines.append(f"{label:32} {len(values):>4}  {statistics.median(values):>7.3f} {pct(values, 0.95):>7.3f}")
    lines.append(f"images: small {small:.0f} MiB, large {large:.0f} MiB; together: launch {raw['launch']}; "
                 f"lab host systemd {raw.get('systemd', '?')}, kernel {platform.release()}")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10, help="one-machine runs (default 10)")
    parser.add_argument("--runs-10", dest="runs_10", type=int, default=3, help="ten-together runs (default 3)")
    parser.add_argument("--together", type=int, default=10, help="machines started together (default 10)")
    parser.add_argument("--launch", choices=("async", "hosts"), default="async",
                        help="how the machines are started together (default async, see above)")
    parser.add_argument("--fork-runs", type=int, default=5, help="timed forks per image (default 5)")
    parser.add_argument("--large", default="2G", help="data added to make the large image (default 2G)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers to PATH")
    args = parser.parse_args()
    try:
        args.large = parse_size(args.large)
    except (ValueError, KeyError, IndexError):
        parser.error(f"bad size {args.large!r} (examples: 500M, 2G)")
    if min(args.runs, args.runs_10, args.together, args.fork_runs) < 1:
        parser.error("counts must be at least 1")
    return args


def benchmark(args, lab, raw, workdir):
    log(f"booting lab host {LAB_HOST}")
    started = time.monotonic()
    machine = lab.up(LAB_HOST)
    raw["lab_host_up_s"] = time.monotonic() - started
    host = Host(lab, machine)
    seed_image(lab, machine, IMAGE)
    raw["systemd"] = host.sh("systemctl --version | head -n1").split()[1]
    one = one_machine(host, args.runs, raw.setdefault("one_machine_runs", []))
    many = together(host, workdir, args.runs_10, args.together, raw.setdefault("together_runs", []),
                    args.launch)
    raw["leftovers"] = leftovers(host)
    fork_rows = forks(host, args.large, args.fork_runs, raw.setdefault("forks", {}))
    label = f"{args.together} together"
    return [("1 machine  ready_seconds", one["ready"]),
            ("1 machine  ansible call", one["call"]),
            ("1 machine  systemctl start", one["systemctl"]),
            ("1 machine  remove", one["remove"]),
            (f"{label} ready_seconds", many["ready"]),
            (f"{label} all ready (wall)", many["wall"]),
            (f"{label} 1st start->all READY", many["span"]),
            (f"{label} start spread", many["spread"]),
            (f"{label} remove (wall)", many["remove"]),
            ("fork small image (btrfs)", fork_rows["small"]),
            ("fork large image (btrfs)", fork_rows["large"]),
            ("copy small image (cp -a)", fork_rows["copy"])]


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("must run as root (lab hosts: loop devices, btrfs, systemd-nspawn)")
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    lab = replica_lab.Lab()
    if lab.get(LAB_HOST):
        log(f"removing {LAB_HOST} left from an earlier run")
        lab.down(LAB_HOST)
    raw = {"kernel": platform.release(), "runs": args.runs, "runs_10": args.runs_10, "together": args.together,
           "fork_runs": args.fork_runs, "launch": args.launch, "large_bytes_added": args.large}
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="machines-bench-")
    rows = None
    try:
        rows = benchmark(args, lab, raw, workdir)
    except KeyboardInterrupt:
        log("interrupted, cleaning up")
        sys.exit(130)
    except (BenchError, replica_lab.LabError, subprocess.CalledProcessError, OSError) as exc:
        log(f"error: {exc}")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log(f"removing lab host {LAB_HOST}")
        try:
            lab.down(LAB_HOST)
        except replica_lab.LabError as exc:
            log(f"cleanup: {exc}")
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        with contextlib.suppress(OSError):
            os.rmdir(workdir)
    elapsed = time.monotonic() - started
    print(table(rows, raw))
    if raw.get("leftovers"):
        print(f"left in the lab host after removing every machine: {json.dumps(raw['leftovers'])}")
    print(f"total runtime {elapsed:.0f} s")
    if args.json:
        raw["rows"] = [{"case": label, "runs": len(values), "p50_s": statistics.median(values),
                        "p95_s": pct(values, 0.95), "values": values} for label, values in rows if values]
        raw["total_runtime_s"] = elapsed
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(raw, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
