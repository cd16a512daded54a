# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time to fork (make a writable copy of) a directory tree: copy-on-write against a plain copy.

    .venv/bin/python benchmarks/fork.py [--sizes 100M,2G] [--runs 3] [--json PATH]   (as root)

Makes three file systems, each on its own sparse loop image in a temporary directory under
/var/tmp (--workdir), writes the same tree to each (a few thousand small files of 4-64 KiB plus
large files of 8-64 MiB, nested directories, incompressible content), and times the fork:

    btrfs snapshot     btrfs subvolume snapshot SRC DEST        (writable snapshot)
    btrfs reflink cp   cp -a --reflink=always SRC/. DEST/       (within the same btrfs)
    xfs reflink cp     cp -a --reflink=always SRC/. DEST/       (mkfs.xfs -m reflink=1)
    ext4 plain cp      cp -a SRC/. DEST/                        (no reflink on ext4)

A timed fork is the command plus a syncfs of the target (sync -f DEST), so a plain copy counts
until its data is on disk and not only in the page cache. Before each run the page cache is
dropped (sync; echo 3 > /proc/sys/vm/drop_caches), so the source is read from disk. After each
run the fork is deleted (btrfs subvolume delete, else rm -rf) and the file system synced.
Compression is not enabled on btrfs. A mechanism whose first run (fork and delete) takes longer
than --slow seconds is cut to 2 runs, and the table says so.

Prints median / min seconds per size and mechanism, and the tree's file count. --json PATH
writes every run's raw numbers. The loop images are unmounted, detached and deleted at the
end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loop import release  # noqa: E402  pylint: disable=wrong-import-position

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": 1 << 40}

TOOLS = {"mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs", "mkfs.xfs": "xfsprogs",
         "mkfs.ext4": "e2fsprogs", "mount": "mount", "umount": "mount", "losetup": "mount",
         "cp": "coreutils", "rm": "coreutils", "sync": "coreutils", "truncate": "coreutils"}
MKFS = {"btrfs": ["mkfs.btrfs", "-f", "-q"],
        "xfs": ["mkfs.xfs", "-f", "-q", "-m", "reflink=1"],
        "ext4": ["mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"]}

SMALL_FILE = (4 * KIB, 64 * KIB)
LARGE_FILE = (8 * MIB, 64 * MIB)
MAX_SMALL_FILES = 4000
FILES_PER_DIR = 32
CHUNK = 4 * MIB
SEED = 20260101


class FileSystem:
    """One file system on a sparse loop image, mounted under the work directory."""

    def __init__(self, kind, workdir, image_size):
        self.kind = kind
        self.image = os.path.join(workdir, f"{kind}.img")
        self.mnt = os.path.join(workdir, kind)
        self.image_size = image_size
        self.mounted = False

    def create(self):
        with open(self.image, "wb") as image:
            image.truncate(self.image_size)
        run(*MKFS[self.kind], self.image)
        os.mkdir(self.mnt)
        run("mount", "-o", "loop", self.image, self.mnt)
        self.mounted = True
        options = mount_options(self.mnt)
        if any(opt.startswith("compress") for opt in options):
            raise RuntimeError(f"{self.mnt} is mounted with compression ({','.join(options)})")

    def make_source(self, path):
        """An empty directory for a source tree: a subvolume on btrfs, so it can be snapshotted."""
        if self.kind == "btrfs":
            run("btrfs", "subvolume", "create", path)
        else:
            os.mkdir(path)

    def remove_source(self, path):
        if self.kind == "btrfs":
            run("btrfs", "subvolume", "delete", "--commit-after", path)
        else:
            run("rm", "-rf", path)
        self.settle()

    def settle(self):
        """Wait for deleted btrfs subvolumes to be cleaned up, then write everything out."""
        if self.kind == "btrfs":
            run("btrfs", "subvolume", "sync", self.mnt)
        run("sync", "-f", self.mnt)

    def destroy(self):
        """Unmount, make sure no loop device is left on the image, delete it; report problems."""
        problems = release(self.image, self.mnt, self.mounted)
        self.mounted = False
        return problems


class Mechanism:
    """A way to fork SRC into DEST on one file system."""

    def __init__(self, label, fs, kind):
        self.label = label
        self.fs = fs
        self.kind = kind  # snapshot, reflink or copy

    def fork(self, src, dest):
        if self.kind == "snapshot":
            run("btrfs", "subvolume", "snapshot", src, dest)
            return
        os.mkdir(dest)
        reflink = ["--reflink=always"] if self.kind == "reflink" else []
        run("cp", "-a", *reflink, src + "/.", dest + "/")

    def remove(self, path):
        if self.kind == "snapshot":
            run("btrfs", "subvolume", "delete", "--commit-after", path)
        else:
            run("rm", "-rf", path)
        self.fs.settle()


def run(*cmd):
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def mount_options(path):
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == path:
                return fields[3].split(",")
    raise RuntimeError(f"{path} is not mounted")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


def parse_size(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 10M, 100M, 2G)")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def plan_tree(size, seed):
    """(relative path, bytes) of a tree of SIZE bytes: small files (half, at most
    MAX_SMALL_FILES of them) and large files, shuffled into nested directories."""
    rng = random.Random(seed)
    sizes = []
    small_budget = min(size // 2, MAX_SMALL_FILES * sum(SMALL_FILE) // 2)
    used = 0
    while used < small_budget:
        sizes.append(min(rng.randint(*SMALL_FILE), small_budget - used))
        used += sizes[-1]
    while used < size:
        sizes.append(min(rng.randint(*LARGE_FILE), size - used))
        used += sizes[-1]
    rng.shuffle(sizes)
    files = []
    for index, nbytes in enumerate(sizes):
        leaf = index // FILES_PER_DIR
        dirs = [f"d{(leaf >> shift) & 7}" for shift in (6, 3, 0)]
        files.append(("/".join(dirs + [f"f{index:05d}.dat"]), nbytes))
    return files


def write_tree(roots, files, seed):
    """Write the same tree to every root in one pass, content from a seeded PRNG."""
    rng = random.Random(seed)
    for relpath, nbytes in files:
        handles = []
        try:
            for root in roots:
                path = os.path.join(root, relpath)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                handles.append(open(path, "wb"))  # pylint: disable=consider-using-with
            left = nbytes
            while left:
                chunk = rng.randbytes(min(CHUNK, left))
                for handle in handles:
                    handle.write(chunk)
                left -= len(chunk)
        finally:
            for handle in handles:
                handle.close()


def time_fork(mechanism, src, dest):
    drop_caches()
    start = time.perf_counter()
    mechanism.fork(src, dest)
    forked = time.perf_counter()
    run("sync", "-f", dest)
    synced = time.perf_counter()
    mechanism.remove(dest)
    removed = time.perf_counter()
    return {"fork_s": forked - start, "sync_s": synced - forked, "total_s": synced - start,
            "delete_s": removed - synced}


def check_host(workdir, image_size):
    missing = sorted({f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        packages = sorted({TOOLS[item.split()[0]] for item in missing})
        sys.exit(f"missing tools: {', '.join(missing)}; install with: apt-get install -y {' '.join(packages)}")
    if os.geteuid() != 0:
        sys.exit("must run as root (loop mounts, mkfs, drop_caches)")
    if not os.path.isdir(workdir):
        sys.exit(f"work directory {workdir} does not exist")
    free = shutil.disk_usage(workdir).free
    if free < image_size * len(MKFS):
        print(f"warning: {workdir} has {free / GIB:.1f} GiB free, the sparse images may grow to "
              f"{image_size * len(MKFS) / GIB:.1f} GiB", file=sys.stderr)


def terminate(signum, _frame):
    raise SystemExit(128 + signum)


def measure(args, label, mechanism, src):
    """Timed forks of SRC; cut to 2 runs when the first one is slower than --slow."""
    dest = os.path.join(mechanism.fs.mnt, "fork")
    runs = []
    wanted = args.runs
    while len(runs) < wanted:
        runs.append(time_fork(mechanism, src, dest))
        last = runs[-1]
        log(f"{label} {mechanism.label} run {len(runs)}: {last['total_s']:.3f} s (fork {last['fork_s']:.3f} "
            f"+ sync {last['sync_s']:.3f}), delete {last['delete_s']:.3f} s")
        if len(runs) == 1 and wanted > 2 and last["total_s"] + last["delete_s"] > args.slow:
            wanted = 2
            log(f"{label} {mechanism.label}: first run slower than {args.slow:g} s, cut to 2 runs")
    return runs


def make_mechanisms(args, filesystems):
    mechanisms = [Mechanism("btrfs snapshot", filesystems["btrfs"], "snapshot")]
    if not args.no_btrfs_reflink:
        mechanisms.append(Mechanism("btrfs reflink cp", filesystems["btrfs"], "reflink"))
    return mechanisms + [Mechanism("xfs reflink cp", filesystems["xfs"], "reflink"),
                         Mechanism("ext4 plain cp", filesystems["ext4"], "copy")]


def benchmark(args, workdir, filesystems, results):
    """Fills FILESYSTEMS as they are made (for the caller to clean up) and RESULTS as runs finish."""
    for kind in MKFS:
        filesystems[kind] = FileSystem(kind, workdir, 3 * max(args.sizes) + GIB)
        filesystems[kind].create()
    mechanisms = make_mechanisms(args, filesystems)
    for label, size in zip(args.labels, args.sizes):
        files = plan_tree(size, SEED)
        sources = {}
        for kind, filesystem in filesystems.items():
            sources[kind] = os.path.join(filesystem.mnt, f"src-{label}")
            filesystem.make_source(sources[kind])
        log(f"{label}: writing {len(files)} files to {', '.join(sources)}")
        write_tree(list(sources.values()), files, SEED + 1)
        os.sync()
        for mechanism in mechanisms:
            runs = measure(args, label, mechanism, sources[mechanism.fs.kind])
            totals = [item["total_s"] for item in runs]
            results.append({"size": label, "bytes": size, "files": len(files), "mechanism": mechanism.label,
                            "runs": runs, "median_s": statistics.median(totals), "min_s": min(totals)})
        for kind, path in sources.items():
            filesystems[kind].remove_source(path)


def print_table(args, results, elapsed):
    labels = list(dict.fromkeys(item["mechanism"] for item in results))
    cells = {(item["size"], item["mechanism"]): item for item in results}
    width = {label: max(len(label), 15) for label in labels}
    print(f"fork of a writable copy, caches dropped before each run (median / min of {args.runs} runs, seconds)")
    print("timed: the fork command plus a syncfs of the copy; each fork is deleted after its run")
    print((f"{'size':6} {'files':>6}   " + "   ".join(f"{label:{width[label]}}" for label in labels)).rstrip())
    cut = False
    for size in args.labels:
        row = [f"{size:6} {cells[(size, labels[0])]['files']:>6}"]
        for label in labels:
            item = cells[(size, label)]
            mark = "*" if len(item["runs"]) < args.runs else ""
            cut = cut or bool(mark)
            row.append(f"{item['median_s']:.3f} / {item['min_s']:.3f}{mark}".ljust(width[label]))
        print("   ".join(row).rstrip())
    if cut:
        print(f"* 2 runs only: the first run took longer than {args.slow:g} s")
    print(f"total runtime {elapsed:.0f} s")


def log(message):
    print(message, file=sys.stderr, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100M,2G", help="comma-separated tree sizes (default 100M,2G)")
    parser.add_argument("--runs", type=int, default=3, help="timed forks per size and mechanism (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers to PATH")
    parser.add_argument("--workdir", default="/var/tmp", help="where the loop images go (default /var/tmp)")
    parser.add_argument("--slow", type=float, default=60.0,
                        help="cut a mechanism to 2 runs when its first fork and delete take longer (default 60 s)")
    parser.add_argument("--no-btrfs-reflink", action="store_true", help="leave out cp --reflink within btrfs")
    args = parser.parse_args()
    args.labels = [part.strip() for part in args.sizes.split(",") if part.strip()]
    try:
        args.sizes = [parse_size(label) for label in args.labels]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not args.sizes or args.runs < 1:
        parser.error("need at least one size and one run")
    return args


def cleanup(filesystems, workdir):
    problems = []
    for filesystem in filesystems.values():
        problems += filesystem.destroy()
    try:
        os.rmdir(workdir)
    except OSError as exc:
        problems.append(f"could not remove {workdir}: {exc}")
    for problem in problems:
        log(f"cleanup: {problem}")


def main():
    args = parse_args()
    check_host(args.workdir, 3 * max(args.sizes) + GIB)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="fork-bench-", dir=args.workdir)
    filesystems = {}
    results = []
    try:
        benchmark(args, workdir, filesystems, results)
    except KeyboardInterrupt:
        log("interrupted, cleaning up")
        sys.exit(130)
    except RuntimeError as exc:
        log(f"error: {exc}")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup(filesystems, workdir)
    elapsed = time.perf_counter() - started
    print_table(args, results, elapsed)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"kernel": platform.release(), "runs": args.runs, "caches_dropped": True,
                       "timed": "fork command + sync -f of the copy", "total_runtime_s": elapsed,
                       "results": results}, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
