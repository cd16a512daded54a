# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.cow_snapshot on real file systems (btrfs, xfs with reflink, ext4 on loop images
made by the test), run through ansible on this machine."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import importlib
import subprocess
import sys
import time

import pytest
from conftest import run_module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def sh(*argv):
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


def cow(args, *extra, check=True, env=None):
    return run_module("replica.cloud.cow_snapshot", {k: (str(v) if isinstance(v, os.PathLike) else v)
                                                     for k, v in args.items()}, *extra, check=check, env=env)


def crash(args, point):
    """Run with a ``kill -9`` at *point* (``_lock.crash_point``): the run must die there."""
    rc, result = cow(args, check=False, env={"REPLICA_CRASH_AT": point})
    assert rc != 0 and "Killed" in result.get("module_stderr", ""), result
    return result


def fill(root):
    (root / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "data/big", "wb") as handle:
        handle.write(os.urandom(8 << 20))
    (root / "data/note").write_text("original\n")
    os.symlink("data/note", root / "link")


@pytest.fixture
def subvolume(loop_fs):
    fs = loop_fs("btrfs")
    sh("btrfs", "subvolume", "create", str(fs / "db"))
    fill(fs / "db")
    return fs / "db"


@pytest.fixture
def reflink_dir(loop_fs):
    fs = loop_fs("xfs", 512)
    (fs / "db").mkdir()
    fill(fs / "db")
    return fs / "db"


def used_kib(path):
    return int(sh("df", "--output=used", "-k", str(path)).split()[1])


def test_btrfs_snapshot_and_fork(subvolume):
    snap = subvolume.parent / "snap/db@manual"
    rc, checked = cow({"src": subvolume, "dest": snap}, "--check", "--diff")
    assert rc == 0 and checked["changed"] and checked["backend"] == "btrfs" and not snap.exists()

    rc, made = cow({"src": subvolume, "dest": snap})
    assert rc == 0 and made["changed"] and made["dest"] == str(snap)
    assert sh("btrfs", "property", "get", "-ts", str(snap), "ro").strip() == "ro=true"
    assert (snap / "data/note").read_text() == "original\n"
    with pytest.raises(OSError):
        (snap / "data/note").write_text("changed\n")  # read-only, even for root
    rc, again = cow({"src": subvolume, "dest": snap})
    assert rc == 0 and not again["changed"]

    fork = subvolume.parent / "db-test"
    rc, forked = cow({"src": snap, "dest": fork, "state": "fork"})
    assert rc == 0 and forked["changed"]
    (fork / "data/note").write_text("only in the fork\n")
    assert (subvolume / "data/note").read_text() == "original\n"
    rc, again = cow({"src": snap, "dest": fork, "state": "fork"})
    assert rc == 0 and not again["changed"]
    # the fork is not a snapshot, and the snapshot not a fork: a clear refusal, nothing changed
    rc, wrong = cow({"src": snap, "dest": fork, "state": "snapshot"}, check=False)
    assert rc != 0 and "is not a snapshot of" in wrong["msg"]

    rc, gone = cow({"src": snap, "dest": fork, "state": "absent"})
    assert rc == 0 and gone["changed"] and not fork.exists()
    rc, again = cow({"src": snap, "dest": fork, "state": "absent"})
    assert rc == 0 and not again["changed"]


def test_btrfs_refuses_what_it_must(subvolume):
    plain = subvolume.parent / "plain"
    plain.mkdir()
    (plain / "keep").write_text("x")
    rc, result = cow({"src": subvolume, "dest": plain, "state": "fork"}, check=False)
    assert rc != 0 and "exists and is not a fork" in result["msg"]
    rc, result = cow({"src": subvolume, "dest": plain, "state": "absent"}, check=False)
    assert rc != 0 and "not removed" in result["msg"] and (plain / "keep").exists()
    rc, result = cow({"src": subvolume.parent / "missing", "state": "snapshot"}, check=False)
    assert rc != 0 and "does not exist" in result["msg"]
    rc, result = cow({"src": plain, "state": "snapshot", "backend": "btrfs"}, check=False)
    assert rc != 0 and "is not a btrfs subvolume" in result["msg"]
    rc, result = cow({"src": subvolume, "state": "pruned", "retention": {"dayly": 3}}, check=False)
    # a suboption: Ansible names the misspelled key and the known ones before the module runs
    assert rc != 0 and "module: retention.dayly. Supported parameters include: daily, hourly" in result["msg"]
    rc, result = cow({"src": subvolume, "state": "fork"}, check=False)
    assert rc != 0 and "dest" in result["msg"]
    assert sorted(os.listdir(subvolume.parent)) == ["db", "plain"]


def stamp(when):
    return when.strftime("%Y%m%dT%H%M%SZ")


def test_btrfs_timestamped_snapshots_and_pruning(subvolume):
    rc, made = cow({"src": subvolume, "state": "snapshot"})
    assert rc == 0 and made["changed"]
    snapdir = subvolume.parent / ".snapshots"
    assert made["dest"].startswith(f"{snapdir}/db@") and made["snapshots"] == [made["dest"]]
    now = dt.datetime.now(dt.timezone.utc).replace(minute=30, second=0, microsecond=0)
    # six hours back, one snapshot every 20 minutes; plus snapshots the policy must not touch
    history = [now - dt.timedelta(minutes=20 * i) for i in range(1, 19)]
    for when in history:
        sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume), str(snapdir / f"db@{stamp(when)}"))
    sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume), str(snapdir / "db-by-hand"))
    sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume), str(snapdir / "other@20200101T000000Z"))
    policy = {"hourly": 3}
    rc, checked = cow({"src": subvolume, "state": "pruned", "retention": policy}, "--check")
    assert rc == 0 and checked["changed"] and len(checked["deleted"]) == 19 - 4
    assert len(os.listdir(snapdir)) == 21  # check mode deleted nothing

    rc, pruned = cow({"src": subvolume, "state": "pruned", "retention": policy}, "--diff")
    assert rc == 0 and pruned["changed"]
    kept = sorted(os.listdir(snapdir))
    assert "db-by-hand" in kept and "other@20200101T000000Z" in kept
    ours = [name for name in kept if name.startswith("db@")]
    assert len(ours) == 4 and pruned["snapshots"] == [str(snapdir / n) for n in ours]
    # the newest, and the first of each of the three most recent hours
    assert os.path.basename(made["dest"]) in ours
    hours = sorted({n[3:14] for n in ours})
    assert len(hours) == 3
    rc, again = cow({"src": subvolume, "state": "pruned", "retention": policy})
    assert rc == 0 and not again["changed"] and again["deleted"] == []


def test_reflink_fork_shares_data_and_snapshot_is_immutable(reflink_dir):
    before = used_kib(reflink_dir)
    fork = reflink_dir.parent / "db-fork"
    rc, forked = cow({"src": reflink_dir, "dest": fork, "state": "fork"})
    assert rc == 0 and forked["changed"] and forked["backend"] == "reflink"
    assert (fork / "data/big").read_bytes() == (reflink_dir / "data/big").read_bytes()
    assert os.readlink(fork / "link") == "data/note"
    assert used_kib(reflink_dir) - before < 2048  # 8 MiB of data, shared: no new blocks
    rc, again = cow({"src": reflink_dir, "dest": fork, "state": "fork"})
    assert rc == 0 and not again["changed"]

    rc, snap = cow({"src": reflink_dir, "state": "snapshot"})
    assert rc == 0 and snap["changed"]
    with pytest.raises(OSError):
        with open(os.path.join(snap["dest"], "data/note"), "a", encoding="utf-8") as handle:
            handle.write("changed\n")
    with pytest.raises(OSError):
        os.unlink(os.path.join(snap["dest"], "data/note"))
    rc, gone = cow({"src": reflink_dir, "dest": snap["dest"], "state": "absent"})
    assert rc == 0 and gone["changed"] and not os.path.exists(snap["dest"])
    rc, gone = cow({"src": reflink_dir, "dest": fork, "state": "absent"})
    assert rc == 0 and not fork.exists()
    assert sorted(os.listdir(reflink_dir.parent)) == [".snapshots", "db"]


def test_no_cow_is_refused(loop_fs):
    fs = loop_fs("ext4", 64)
    (fs / "db").mkdir()
    (fs / "db/file").write_text("x")
    entries = sorted(os.listdir(fs))
    rc, result = cow({"src": fs / "db", "dest": fs / "db-fork", "state": "fork"}, check=False)
    assert rc != 0
    assert "ext4" in result["msg"] and "copy-on-write" in result["msg"] and "full copies" in result["msg"]
    rc, result = cow({"src": fs / "db", "dest": fs / "db-fork", "state": "fork", "backend": "reflink"},
                     check=False)
    assert rc != 0 and "without reflink" in result["msg"]
    assert sorted(os.listdir(fs)) == entries  # the probe files are gone too


def test_two_prunes_of_one_source_at_once_both_succeed(subvolume):
    """A timer and a playbook pruning the same snapshots: both finish, and between them exactly
    what the policy does not keep is gone (the listing is read under the lock; the race itself is
    test_listing_while_another_run_deletes)."""
    snapdir = subvolume.parent / ".snapshots"
    snapdir.mkdir()
    policy = {"latest": 3}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for trial in range(2):
        for i in range(200):
            sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume),
               str(snapdir / f"db@{stamp(now - dt.timedelta(minutes=trial * 1000 + i + 1))}"))
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # the second starts while the first deletes (ansible's start takes about a second)
            runs = list(pool.map(lambda delay: time.sleep(delay) or cow(
                {"src": subvolume, "state": "pruned", "retention": policy}, check=False), (0, 0.3)))
        assert [rc for rc, dummy in runs] == [0, 0], runs
        # one run deleted them all, the other (planning under the lock, after it) found nothing to do
        assert sorted(len(result["deleted"]) for dummy, result in runs) == [0, 200 if trial else 197]
        assert len(os.listdir(snapdir)) == 3


def test_bad_input_is_refused_before_anything(reflink_dir):
    """Hostile names and policies: a clear message, no traceback, nothing made."""
    entries = sorted(os.listdir(reflink_dir.parent))
    bad = [({"name": "db\nx"}, "snapshot name"), ({"name": "a b"}, "snapshot name"), ({"name": "é"}, "snapshot name"),
           ({"name": "%n;.."}, "snapshot name"), ({"name": "x" * 200}, "snapshot name"),
           ({"state": "pruned", "retention": {"min_age": "99999999999999w"}}, "more than 100 years"),
           ({"state": "pruned", "retention": {"min_age": 10 ** 30}}, "more than 100 years"),
           ({"state": "pruned", "retention": {"daily": 10 ** 30}}, "must be a count"),
           ({"state": "pruned", "retention": {"timezone": 5}}, "IANA time zone"),
           ({"state": "pruned", "retention": {"timezone": ["UTC"]}}, "IANA time zone"),
           ({"state": "pruned", "retention": {"latest": "\u00b2"}}, "latest must be"),
           ({"dest": str(reflink_dir.parent / "f\u0000x"), "state": "fork"}, "NUL"),
           ({"dest": str(reflink_dir.parent / "f\nx"), "state": "fork"}, "newline")]
    for args, words in bad:
        rc, result = cow({"src": reflink_dir, **args}, check=False)
        assert rc != 0 and words in result["msg"] and "Traceback" not in result.get("module_stderr", ""), (args, result)
    assert sorted(os.listdir(reflink_dir.parent)) == entries


def test_dest_through_a_symlink_and_a_refused_run_leave_nothing(reflink_dir, loop_fs):
    other = loop_fs("tmpfs", 16)
    os.symlink(other, reflink_dir.parent / "elsewhere")
    rc, result = cow({"src": reflink_dir, "dest": reflink_dir.parent / "elsewhere/fork", "state": "fork"}, check=False)
    assert rc != 0 and "reached through a symlink" in result["msg"]
    # a snapshot folder on a file system that cannot share extents: refused, and not created
    rc, result = cow({"src": reflink_dir, "snapshot_dir": other / "snaps"}, check=False)
    assert rc != 0 and "cannot share extents" in result["msg"]
    assert os.listdir(other) == []


@pytest.mark.parametrize("point", ["reflink-copied", "reflink-renamed", "reflink-sealing"])
def test_reflink_snapshot_killed_at_each_window_converges(reflink_dir, point):
    """``kill -9`` after the copy, between rename and chattr +i, and midway through chattr: the
    next run leaves only whole, immutable snapshots and no partial copy."""
    for i in range(600):  # more than one chattr batch (500), so "reflink-sealing" is reached
        (reflink_dir / f"data/f{i}").write_text(str(i))
    crash({"src": reflink_dir}, point)
    # snapshot names carry the second: the re-run must not fall in the crashed run's second, or
    # both name the same snapshot (the re-run then only finishes it, and there is one)
    time.sleep(1.05 - time.time() % 1)
    rc, made = cow({"src": reflink_dir})
    assert rc == 0 and made["changed"]
    snapdir = reflink_dir.parent / ".snapshots"
    names = sorted(os.listdir(snapdir))
    assert not [n for n in names if n.endswith(".partial")], names
    assert len(names) == (1 if point == "reflink-copied" else 2)
    for name in names:
        assert "i" in sh("lsattr", "-d", str(snapdir / name)).split()[0]
        assert "i" in sh("lsattr", str(snapdir / name / "data/f599")).split()[0]
        assert (snapdir / name / "data/big").read_bytes() == (reflink_dir / "data/big").read_bytes()
    # an explicit dest killed before it was sealed: the re-run finishes it (changed), then rests
    dest = reflink_dir.parent / "manual"
    crash({"src": reflink_dir, "dest": dest}, "reflink-renamed")
    rc, sealed = cow({"src": reflink_dir, "dest": dest})
    assert rc == 0 and sealed["changed"] and "i" in sh("lsattr", "-d", str(dest)).split()[0]
    rc, again = cow({"src": reflink_dir, "dest": dest})
    assert rc == 0 and not again["changed"]


def test_btrfs_prune_killed_midway_converges(subvolume):
    snapdir = subvolume.parent / ".snapshots"
    snapdir.mkdir()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for i in range(250):
        sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume), str(snapdir / f"db@{stamp(now - dt.timedelta(minutes=i))}"))
    crash({"src": subvolume, "state": "pruned", "retention": {"latest": 2}}, "btrfs-pruning")
    left = len(os.listdir(snapdir))
    assert 2 < left < 250  # killed after the first batch of 100
    rc, again = cow({"src": subvolume, "state": "pruned", "retention": {"latest": 2}})
    assert rc == 0 and len(again["deleted"]) == left - 2 and len(os.listdir(snapdir)) == 2


def load_util(name):
    """The checkout's module_utils/NAME.py, loaded the way the host tools load it (flat)."""
    folder = os.path.join(os.path.dirname(__file__), "../../plugins/module_utils")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_the_lock_is_roots_and_a_held_lock_names_its_holder(subvolume):
    """The series' lock lives in /run/replica/locks (0700, root), never /tmp; a run that waits
    past lock_wait fails naming the holder."""
    snapdir = subvolume.parent / ".snapshots"
    lock = load_util("_lock")
    with lock.held("cow", str(snapdir), "a test holding the lock"):
        info = os.stat(lock.LOCK_DIR)
        assert info.st_uid == 0 and info.st_mode & 0o777 == 0o700
        rc, result = cow({"src": subvolume, "lock_wait": 1}, check=False)
    assert rc != 0 and f"pid {os.getpid()}: a test holding the lock" in result["msg"] and "waited 1 s" in result["msg"]
    rc, made = cow({"src": subvolume, "lock_wait": 1})
    assert rc == 0 and made["changed"]


def test_listing_while_another_run_deletes(subvolume):
    """The race two prunes had: a listing read while another run deletes (a name read, then
    gone before its lstat). The listing skips what vanished instead of failing."""
    cowlib = load_util("_cow")
    retention = load_util("_retention")
    snapdir = subvolume.parent / ".snapshots"
    snapdir.mkdir()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    names = [str(snapdir / f"db@{stamp(now - dt.timedelta(minutes=i))}") for i in range(300)]
    for name in names:
        sh("btrfs", "subvolume", "snapshot", "-r", str(subvolume), name)
    series = cowlib.Series(cowlib.Btrfs(cowlib.subprocess_runner), str(subvolume), retention)
    with subprocess.Popen(["btrfs", "subvolume", "delete", *names], stdout=subprocess.DEVNULL) as deleting:
        seen = set()
        while deleting.poll() is None:
            seen.add(len(series.listing()))
    assert series.listing() == [] and len(seen) > 2  # it listed midway, more than once
