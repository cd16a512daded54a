# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshot retention: the policy over many names, and pruning real btrfs snapshots.

    .venv/bin/python benchmarks/retention.py [--names 1000,10000,100000] [--runs 5]
                                             [--snapshots 1000] [--json PATH]   (as root)

1. Policy evaluation (module_utils/_retention.py, no file system): for each count in --names,
   names ``db@YYYYMMDDTHHMMSSZ`` one every 5 minutes going back from now (100,000 names reach
   back about 347 days) are (a) parsed with ``parse_snapshot_name`` and (b) given to ``select``
   with the policy {hourly: 48, daily: 30, weekly: 12, monthly: 24, yearly: all, min_age: 1h,
   timezone: Europe/Berlin}. Median of --runs runs each; "kept" is how many the policy keeps;
   "peak MiB" is the tracemalloc peak of one extra parse + select (measured apart, as
   tracemalloc slows the code down), not counting the list of names itself.

2. Pruning real btrfs snapshots (--snapshots N, 0 leaves it out): a btrfs file system on a
   sparse loop image (2 GiB) in a temporary folder under /var/tmp (--workdir), a subvolume
   ``db`` with 20 MiB in 300 files, and N read-only snapshots ``.snapshots/db@<stamp>``, one per
   hour going back from now, each made with ``btrfs subvolume snapshot -r`` (timed: create/each
   is the mean per snapshot, one command each). Then, through ansible as a test does it
   (``ansible localhost -c local -m replica.cloud.cow_snapshot``, target Python /usr/bin/python3):

       module prune      state: pruned, retention {hourly: 24, daily: 7, weekly: 4}: the whole
                         ansible command, deleting what the policy does not keep
       second run        the same again, nothing left to delete (median of 3)
       ansible baseline  state: pruned on an empty subvolume with no snapshots: ansible's own
                         start-up and the module's fixed cost (median of 3, after one warm-up)
       raw delete        Btrfs(subprocess_runner).remove() of a fresh batch of N snapshots
                         (``btrfs subvolume delete``, 100 paths a command), no ansible
       cleaner sync      btrfs deletes subvolumes in the background (the cleaner thread): how
                         long ``btrfs subvolume sync MNT`` takes after the module prune returns.
                         The cleaner starts at the next transaction commit, and nothing forces
                         one, so this is mostly the wait for the periodic commit (mount option
                         commit=, 30 s by default): anywhere from 1 to about 30 s
       commit+sync       after the raw delete: ``btrfs filesystem sync MNT`` (commit now), then
                         ``btrfs subvolume sync MNT``: the cleaner's own work. btrfs-progs checks
                         once a second, so 1.0 means "done within the first second"

The loop image is unmounted, detached (losetup -j) and deleted at the end, also on failure or
Ctrl-C. --json PATH writes the raw numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loop import release  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

# pylint: disable=wrong-import-position
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow  # noqa: E402
from ansible_collections.replica.cloud.plugins.module_utils import _retention as retention  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
BASE = "db"
POLICY = {"hourly": 48, "daily": 30, "weekly": 12, "monthly": 24, "yearly": "all", "min_age": "1h",
          "timezone": "Europe/Berlin"}
PRUNE = {"daily": 7, "weekly": 4, "hourly": 24}
IMAGE_SIZE = 2 * GIB
CONTENT_FILES = 300
CONTENT_BYTES = 20 * MIB
REPEATS = 3  # second run and baseline
SEED = 20260101
TOOLS = {"mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs", "mount": "mount", "umount": "mount",
         "losetup": "mount"}
TARGET_PYTHON = "/usr/bin/python3"


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(*cmd):
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def timed(func, *args):
    start = time.perf_counter()
    value = func(*args)
    return time.perf_counter() - start, value


# --- 1. policy evaluation ---------------------------------------------------------------------

def make_names(count, now):
    step = dt.timedelta(minutes=5)
    return [retention.snapshot_name(BASE, now - index * step) for index in range(count)]


def parse_all(names):
    return [(name, retention.parse_snapshot_name(BASE, name)) for name in names]


def evaluate(count, runs, now):
    names = make_names(count, now)
    parse_s, select_s = [], []
    kept = deleted = 0
    for dummy in range(runs):
        seconds, parsed = timed(parse_all, names)
        parse_s.append(seconds)
        seconds, (keep, delete, dummy_reasons) = timed(retention.select, parsed, POLICY, now)
        select_s.append(seconds)
        kept, deleted = len(keep), len(delete)
        if any(when is None for dummy_name, when in parsed):
            raise RuntimeError("a generated name did not parse")
        del parsed
    tracemalloc.start()
    try:
        retention.select(parse_all(names), POLICY, now)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    span = (now - retention.parse_snapshot_name(BASE, names[-1])).total_seconds() / 86400
    return {"names": count, "span_days": span, "parse_s": parse_s, "select_s": select_s,
            "parse_median_s": statistics.median(parse_s), "select_median_s": statistics.median(select_s),
            "kept": kept, "deleted": deleted, "peak_mib": peak / MIB}


# --- 2. pruning real btrfs snapshots ------------------------------------------------------------

class LoopBtrfs:
    """A btrfs file system on a sparse loop image, mounted under the work directory."""

    def __init__(self, workdir):
        self.image = os.path.join(workdir, "btrfs.img")
        self.mnt = os.path.join(workdir, "mnt")
        self.mounted = False

    def create(self):
        with open(self.image, "wb") as image:
            image.truncate(IMAGE_SIZE)
        run("mkfs.btrfs", "-f", "-q", self.image)
        os.mkdir(self.mnt)
        run("mount", "-o", "loop", self.image, self.mnt)
        self.mounted = True

    def destroy(self):
        """Unmount, make sure no loop device is left on the image, delete it; report problems."""
        problems = release(self.image, self.mnt, self.mounted)
        self.mounted = False
        return problems


def write_content(root):
    rng = random.Random(SEED)
    average = CONTENT_BYTES // CONTENT_FILES
    left = CONTENT_BYTES
    for index in range(CONTENT_FILES):
        folder = os.path.join(root, f"d{index % 10}")
        os.makedirs(folder, exist_ok=True)
        size = left if index == CONTENT_FILES - 1 else min(left, rng.randint(average // 2, average * 3 // 2))
        with open(os.path.join(folder, f"f{index:04d}.dat"), "wb") as handle:
            handle.write(rng.randbytes(size))
        left -= size


def make_snapshots(src, snapdir, count, now):
    """COUNT read-only snapshots of SRC, one per hour back from NOW; returns (seconds, paths)."""
    paths = [os.path.join(snapdir, retention.snapshot_name(BASE, now - dt.timedelta(hours=index)))
             for index in range(count)]
    start = time.perf_counter()
    for path in paths:
        run("btrfs", "subvolume", "snapshot", "-r", src, path)
    return time.perf_counter() - start, paths


def run_module(module, args, *extra):
    """Run a module of the collection on this machine through ansible, as tests/integration's
    conftest.run_module does; returns (seconds, rc, result)."""
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""), LC_ALL="C.UTF-8",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    argv = [os.path.join(bindir, "ansible"), "localhost", "-c", "local", "-i", "localhost,",
            "-e", f"ansible_python_interpreter={TARGET_PYTHON}", "-m", module, "-a", json.dumps(args), *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    text = proc.stdout
    try:
        result = json.loads(text[text.index(" => {") + 4:])
    except ValueError as exc:
        raise RuntimeError(f"no module result from {module} (rc {proc.returncode}):\n{text}\n{proc.stderr}") from exc
    if proc.returncode != 0 or result.get("failed"):
        raise RuntimeError(f"{module} failed (rc {proc.returncode}): {result.get('msg', text)}")
    return seconds, result


def subvolume_sync(mnt):
    seconds, dummy = timed(run, "btrfs", "subvolume", "sync", mnt)
    return seconds


def prune_benchmark(args, fs, result):
    """Fills RESULT as it goes (so a failure still leaves the numbers so far)."""
    fs.create()
    src = os.path.join(fs.mnt, BASE)
    empty = os.path.join(fs.mnt, "empty")
    snapdir = os.path.join(fs.mnt, ".snapshots")
    run("btrfs", "subvolume", "create", src)
    run("btrfs", "subvolume", "create", empty)
    write_content(src)
    os.mkdir(snapdir)
    run("sync", "-f", fs.mnt)

    def cow_snapshot(params):
        return run_module("replica.cloud.cow_snapshot", params)

    baseline_args = {"src": empty, "state": "pruned", "retention": PRUNE,
                     "snapshot_dir": os.path.join(fs.mnt, ".snapshots-empty")}
    prune_args = {"src": src, "state": "pruned", "retention": PRUNE}

    log("ansible warm-up and baseline (pruning a subvolume without snapshots)")
    cow_snapshot(baseline_args)
    baseline = []
    for dummy in range(REPEATS):
        seconds, out = cow_snapshot(baseline_args)
        if out["changed"] or out["deleted"]:
            raise RuntimeError(f"baseline run changed something: {out}")
        baseline.append(seconds)
    result["baseline_s"] = baseline

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    log(f"creating {args.snapshots} read-only snapshots of {src}")
    seconds, paths = make_snapshots(src, snapdir, args.snapshots, now)
    result["create_s"] = seconds
    result["create_each_s"] = seconds / args.snapshots
    run("sync", "-f", fs.mnt)

    log("module prune")
    expected = retention.select([(path, retention.parse_snapshot_name(BASE, os.path.basename(path)))
                                 for path in paths], PRUNE, dt.datetime.now(dt.timezone.utc))[1]
    seconds, out = cow_snapshot(prune_args)
    result["module_prune_s"] = seconds
    result["deleted"] = len(out["deleted"])
    result["deleted_expected"] = len(expected)
    result["kept"] = len(out["snapshots"])
    result["module_changed"] = out["changed"]
    left = [entry.name for entry in os.scandir(snapdir)]
    result["left_on_disk"] = len(left)
    if len(left) != len(out["snapshots"]) or set(out["deleted"]) & {os.path.join(snapdir, name) for name in left}:
        raise RuntimeError(f"after the prune {len(left)} snapshots are left, the module says {len(out['snapshots'])}")
    result["module_sync_s"] = subvolume_sync(fs.mnt)

    log("second (no-op) prune")
    second = []
    for dummy in range(REPEATS):
        seconds, out = cow_snapshot(prune_args)
        if out["changed"] or out["deleted"]:
            raise RuntimeError(f"second prune deleted {len(out['deleted'])} more")
        second.append(seconds)
    result["second_run_s"] = second

    log(f"clearing and recreating {args.snapshots} snapshots for the raw delete")
    cow.Btrfs(cow.subprocess_runner).remove([os.path.join(snapdir, name) for name in left])
    run("btrfs", "filesystem", "sync", fs.mnt)  # commit now: the cleaner starts at a commit
    subvolume_sync(fs.mnt)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    seconds, paths = make_snapshots(src, snapdir, args.snapshots, now)
    result["create2_s"] = seconds
    result["create2_each_s"] = seconds / args.snapshots
    run("sync", "-f", fs.mnt)

    log("raw delete: Btrfs(subprocess_runner).remove()")
    backend = cow.Btrfs(cow.subprocess_runner)
    listed = backend.list_snapshots(snapdir, lambda name: retention.parse_snapshot_name(BASE, name))
    if len(listed) != args.snapshots:
        raise RuntimeError(f"list_snapshots found {len(listed)} of {args.snapshots} snapshots")
    seconds, dummy = timed(backend.remove, paths)
    result["raw_delete_s"] = seconds
    # the cleaner starts on the next transaction commit, periodic (commit=30 s by default) unless
    # forced: force it here, so this number is the cleaner's own work
    result["raw_commit_s"], dummy = timed(run, "btrfs", "filesystem", "sync", fs.mnt)
    result["raw_sync_s"] = subvolume_sync(fs.mnt)
    if os.listdir(snapdir):
        raise RuntimeError(f"{len(os.listdir(snapdir))} snapshots left after the raw delete")


# --- main ------------------------------------------------------------------------------------------

def check_host(args):
    if not args.snapshots:
        return
    if os.geteuid() != 0:
        sys.exit("must run as root (loop mount, mkfs.btrfs, btrfs subvolume); or pass --snapshots 0 "
                 "for the policy evaluation only")
    missing = sorted(f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool))
    if missing:
        packages = sorted({TOOLS[item.split()[0]] for item in missing})
        sys.exit(f"missing tools: {', '.join(missing)}; install with: apt-get install -y {' '.join(packages)}")
    with open("/proc/filesystems", encoding="ascii") as handle:
        if "btrfs" not in handle.read():
            sys.exit("the kernel has no btrfs support (modprobe btrfs?)")
    if not os.access(TARGET_PYTHON, os.X_OK):
        sys.exit(f"{TARGET_PYTHON} (the module's target Python) is missing")
    if not os.access(os.path.join(os.path.dirname(sys.executable), "ansible"), os.X_OK):
        sys.exit(f"no ansible next to {sys.executable}: run with the checkout's .venv/bin/python")
    if not os.path.isdir(args.workdir):
        sys.exit(f"work directory {args.workdir} does not exist")


def terminate(signum, dummy_frame):
    raise SystemExit(128 + signum)


def print_tables(args, policy_rows, prune, elapsed):
    if policy_rows:
        print(f"retention policy evaluation (median of {args.runs}, seconds)")
        print(f"policy {json.dumps(POLICY)}, one name every 5 minutes")
        print(f"{'names':>8} {'days':>6} {'parse':>8} {'select':>8} {'kept':>6} {'peak MiB':>9}")
        for row in policy_rows:
            print(f"{row['names']:>8} {row['span_days']:>6.1f} {row['parse_median_s']:>8.4f} "
                  f"{row['select_median_s']:>8.4f} {row['kept']:>6} {row['peak_mib']:>9.2f}")
    if prune:
        if policy_rows:
            print()
        print("pruning real btrfs snapshots (seconds; second run and baseline: median of "
              f"{REPEATS}; retention {json.dumps(PRUNE)})")
        print(f"{'snapshots':>9} {'create/each':>11} {'module prune':>12} {'deleted':>7} {'second run':>10} "
              f"{'ansible baseline':>16} {'raw delete':>10} {'cleaner sync':>12} {'commit+sync':>11}")

        def cell(key, width, fmt=".3f"):
            value = prune.get(key)
            if isinstance(value, list):
                value = statistics.median(value) if value else None
            return f"{'-' if value is None else format(value, fmt):>{width}}"

        forced = "-"
        if "raw_sync_s" in prune:
            forced = f"{prune['raw_commit_s'] + prune['raw_sync_s']:.3f}"
        print(f"{args.snapshots:>9} {cell('create_each_s', 11, '.4f')} {cell('module_prune_s', 12)} "
              f"{cell('deleted', 7, 'd')} {cell('second_run_s', 10)} {cell('baseline_s', 16)} "
              f"{cell('raw_delete_s', 10)} {cell('module_sync_s', 12)} {forced:>11}")
        if "module_prune_s" in prune and "baseline_s" in prune:
            base = statistics.median(prune["baseline_s"])
            print(f"module prune less baseline: {prune['module_prune_s'] - base:.3f} s for {prune.get('deleted')} "
                  f"deletions ({prune.get('kept')} kept); create/each again before the raw delete: "
                  f"{cell('create2_each_s', 0, '.4f').strip()} s")
            print("cleaner sync: subvolume sync after the module prune, waiting for the periodic commit; "
                  "commit+sync: filesystem sync, then subvolume sync, after the raw delete")
    print(f"total runtime {elapsed:.0f} s")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--names", default="1000,10000,100000",
                        help="comma-separated counts of snapshot names for the policy (default 1000,10000,100000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per count, the median is shown (default 5)")
    parser.add_argument("--snapshots", type=int, default=1000,
                        help="real btrfs snapshots to create and prune (default 1000; 0 leaves it out)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the loop image goes (default /var/tmp)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers to PATH")
    args = parser.parse_args()
    try:
        args.names = [int(part.replace("_", "")) for part in args.names.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--names must be comma-separated counts, got {args.names!r}")
    if any(count < 1 for count in args.names) or args.runs < 1 or args.snapshots < 0:
        parser.error("counts and runs must be 1 or more, --snapshots 0 or more")
    return args


def main():
    args = parse_args()
    check_host(args)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    started = time.perf_counter()
    policy_rows, prune = [], {}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for count in args.names:
        log(f"policy over {count} names")
        policy_rows.append(evaluate(count, args.runs, now))
    failed = None
    if args.snapshots:
        workdir = tempfile.mkdtemp(prefix="retention-bench-", dir=args.workdir)
        fs = LoopBtrfs(workdir)
        try:
            prune_benchmark(args, fs, prune)
        except KeyboardInterrupt:
            log("interrupted, cleaning up")
            failed = 130
        except (RuntimeError, cow.CowError, OSError) as exc:
            log(f"error: {exc}")
            failed = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            problems = fs.destroy()
            try:
                os.rmdir(workdir)
            except OSError as exc:
                problems.append(f"could not remove {workdir}: {exc}")
            for problem in problems:
                log(f"cleanup: {problem}")
    elapsed = time.perf_counter() - started
    print_tables(args, policy_rows, prune, elapsed)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"kernel": platform.release(), "python": platform.python_version(), "runs": args.runs,
                       "policy": POLICY, "prune_retention": PRUNE, "policy_evaluation": policy_rows,
                       "prune": dict(prune, snapshots=args.snapshots) if args.snapshots else None,
                       "total_runtime_s": elapsed}, handle, indent=2)
            handle.write("\n")
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
