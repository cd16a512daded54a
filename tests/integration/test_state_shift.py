# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.state_shift on a real btrfs file system (a loop image made by the test), run
through ansible on this machine: the move keeps every file, owner, mode, link and xattr, is
idempotent, refuses what it must refuse and leaves nothing behind when it does."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from conftest import run_module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def sh(*argv):
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


@pytest.fixture
def cow(loop_fs):
    """A btrfs file system on a loop image."""
    return loop_fs("btrfs")


@pytest.fixture
def plain(loop_fs):
    """A tmpfs: a file system without copy-on-write subvolumes."""
    return loop_fs("tmpfs", 16)


@pytest.fixture
def state(tmp_path):
    """A service's state directory with the things a copy tends to lose."""
    root = tmp_path / "var/lib/svc"
    (root / "15/main/base").mkdir(parents=True)
    with open(root / "15/main/base/16384", "wb") as handle:
        handle.write(os.urandom(3 << 20))
    (root / "15/main/PG_VERSION").write_text("15\n")
    os.link(root / "15/main/PG_VERSION", root / "hardlink")
    os.symlink("15/main/PG_VERSION", root / "symlink")
    secret = root / "15/main/secret"
    secret.write_text("s3cret\n")
    os.chown(secret, 1234, 2345)
    os.chmod(secret, 0o640)
    os.setxattr(secret, "user.replica", b"kept")
    os.chown(root, 1234, 2345)
    os.chmod(root, 0o750)
    return root


def fingerprint(root):
    """Everything a service would notice about its state directory."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files) + ["."]:
            full = os.path.normpath(os.path.join(directory, name))
            st = os.lstat(full)
            item = [st.st_mode, st.st_uid, st.st_gid, st.st_nlink if not os.path.isdir(full) else 0]
            if os.path.islink(full):
                item.append(os.readlink(full))
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    item.append(hashlib.sha256(handle.read()).hexdigest())
                item.append(st.st_mtime_ns)
                item.append(sorted((x, os.getxattr(full, x)) for x in os.listxattr(full)))
            out[os.path.relpath(full, root)] = item
    return out


def shift(ansible, path, subvolume, state="present", *extra, check=True):  # pylint: disable=unused-argument
    return run_module("replica.cloud.state_shift",
                      {"path": str(path), "subvolume": str(subvolume), "state": state}, *extra, check=check)


def test_move_in_and_back_keeps_everything(ansible, cow, state):
    subvolume = cow / "state/svc"
    original = fingerprint(state)

    rc, checked = shift(ansible, state, subvolume, "present", "--check", "--diff")
    assert rc == 0 and checked["changed"] and checked["action"] == "move-in"
    assert not subvolume.exists() and fingerprint(state) == original  # check mode moved nothing

    rc, moved = shift(ansible, state, subvolume)
    assert rc == 0 and moved["changed"] and moved["location"] == "subvolume"
    assert moved["files"] == len(original) - 1
    assert fingerprint(subvolume) == original
    assert os.listdir(state) == []
    st = os.lstat(state)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o750)
    assert "Name:" in sh("btrfs", "subvolume", "show", str(subvolume))
    assert sorted(os.listdir(cow / "state")) == ["svc"]  # no partial copy left beside it
    assert sorted(os.listdir(state.parent)) == ["svc"]  # nor the old directory

    rc, again = shift(ansible, state, subvolume)
    assert rc == 0 and not again["changed"]

    # mounted over the directory, as the role does: still no change, and it cannot move back
    sh("mount", "--bind", str(subvolume), str(state))
    try:
        rc, mounted = shift(ansible, state, subvolume)
        assert rc == 0 and not mounted["changed"] and mounted["mounted"]
        assert fingerprint(state) == original
        rc, refused = shift(ansible, state, subvolume, "absent", check=False)
        assert rc != 0 and "unmount" in refused["msg"]
    finally:
        sh("umount", str(state))

    rc, back = shift(ansible, state, subvolume, "absent", "--diff")
    assert rc == 0 and back["changed"] and back["action"] == "move-out"
    assert fingerprint(state) == original
    assert not subvolume.exists()
    assert sorted(os.listdir(state.parent)) == ["svc"]
    rc, again = shift(ansible, state, subvolume, "absent")
    assert rc == 0 and not again["changed"]


def test_refuses_a_file_system_without_cow(ansible, plain, state):
    original = fingerprint(state)
    rc, result = shift(ansible, state, plain / "pool/svc", check=False)
    assert rc != 0
    assert "tmpfs" in result["msg"] and "btrfs" in result["msg"]
    assert "Nothing was changed" in result["msg"]
    assert fingerprint(state) == original
    assert os.listdir(plain) == []  # not even the pool folder


def test_refuses_while_a_process_uses_the_state(ansible, cow, state):
    original = fingerprint(state)
    with subprocess.Popen(["sleep", "60"], cwd=state / "15/main") as busy:
        try:
            rc, result = shift(ansible, state, cow / "svc", check=False)
        finally:
            busy.kill()
    assert rc != 0 and str(busy.pid) in result["msg"] and "stop the service" in result["msg"]
    assert fingerprint(state) == original and os.listdir(cow) == []


def test_refuses_when_both_sides_hold_data(ansible, cow, state):
    sh("btrfs", "subvolume", "create", str(cow / "svc"))
    (cow / "svc/other").write_text("other data\n")
    original = fingerprint(state)
    rc, result = shift(ansible, state, cow / "svc", check=False)
    assert rc != 0 and "both" in result["msg"]
    assert fingerprint(state) == original and os.listdir(cow / "svc") == ["other"]


def test_moves_into_an_existing_empty_subvolume(ansible, cow, state):
    sh("btrfs", "subvolume", "create", str(cow / "svc"))
    original = fingerprint(state)
    rc, result = shift(ansible, state, cow / "svc")
    assert rc == 0 and result["changed"]
    assert fingerprint(cow / "svc") == original


def test_refuses_a_subvolume_path_that_is_a_plain_folder(ansible, cow, state):
    (cow / "svc").mkdir()
    rc, result = shift(ansible, state, cow / "svc", check=False)
    assert rc != 0 and "is not a btrfs subvolume" in result["msg"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-subvolume", "existing-subvolume"])
@pytest.mark.parametrize("point", ["state-copying", "state-copied", "state-emptied"])
def test_a_move_in_killed_at_each_window_converges(ansible, cow, state, point, existing):
    """``kill -9`` before the copy, after it (both sides hold the data: the re-run refused before
    the mark), and after the directory was swapped empty (it was missing for a moment before):
    the re-run finishes the move, with every file, and leaves nothing aside."""
    subvolume = cow / "svc"
    if existing:
        sh("btrfs", "subvolume", "create", str(subvolume))
    original = fingerprint(state)
    rc, killed = run_module("replica.cloud.state_shift", {"path": str(state), "subvolume": str(subvolume)},
                            check=False, env={"REPLICA_CRASH_AT": point})
    assert rc != 0 and "Killed" in killed.get("module_stderr", ""), killed
    assert os.path.isdir(state)  # never missing
    rc, again = shift(ansible, state, subvolume)
    assert rc == 0 and again["changed"], again
    assert again["action"] == ("finish" if point != "state-copying" else "move-in")
    assert fingerprint(subvolume) == original and os.listdir(state) == []
    assert sorted(os.listdir(state.parent)) == ["svc"] and sorted(os.listdir(cow)) == ["svc"]
    rc, rest = shift(ansible, state, subvolume)
    assert rc == 0 and not rest["changed"]
