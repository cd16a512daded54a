# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.cow_snapshot on real file systems (btrfs, xfs with reflink, ext4 on loop images
made by the test), run through ansible on this machine."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest
from conftest import run_module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def sh(*argv):
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


def cow(args, *extra, check=True):
    return run_module("replica.cloud.cow_snapshot", {k: (str(v) if isinstance(v, os.PathLike) else v)
                                                     for k, v in args.items()}, *extra, check=check)


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
    assert rc != 0 and "unknown retention keys: dayly" in result["msg"]
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
