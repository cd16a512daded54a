# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's locks: a safe folder, a wait that ends naming the holder, no first-run race,
and a lock that its holder's death releases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _lock

HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import _lock
with _lock.held("test", "key", "a holder in a child", folder=sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


def holder(tmp_path):
    folder = os.path.dirname(_lock.__file__)
    child = subprocess.Popen([sys.executable, "-c", HOLD, folder, str(tmp_path / "locks")],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_waiting_run_names_the_holder_then_gets_it_when_the_holder_is_killed(tmp_path):
    child = holder(tmp_path)
    try:
        with pytest.raises(_lock.LockError, match=rf"key is locked by another run \(pid {child.pid}: a holder in a child"):
            with _lock.held("test", "key", "a waiter", wait=0.3, folder=str(tmp_path / "locks")):
                pass
    finally:
        os.kill(child.pid, signal.SIGKILL)  # kill -9: the kernel drops the flock
        child.wait()
    start = time.monotonic()
    with _lock.held("test", "key", "a waiter", wait=5, folder=str(tmp_path / "locks")) as path:
        assert os.path.basename(path).startswith("test-")
    assert time.monotonic() - start < 1


def test_shared_locks_go_together(tmp_path):
    folder = str(tmp_path / "locks")
    with _lock.held("test", "k", "reader 1", shared=True, folder=folder):
        with _lock.held("test", "k", "reader 2", shared=True, wait=0.2, folder=folder):
            pass


def test_the_folder_is_roots_alone(tmp_path):
    folder = tmp_path / "locks"
    with _lock.held("test", "k", "x", folder=str(folder)):
        assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)
    with pytest.raises(_lock.LockError, match="is not a folder that only uid"):
        with _lock.held("test", "k", "x", folder=str(folder)):
            pass
    assert _lock.LOCK_DIR.startswith("/run/") and "/tmp" not in _lock.LOCK_DIR


@pytest.mark.parametrize("kind", ["", "A", "a/b", "a b", "x" * 40])
def test_lock_kinds_follow_a_rule(kind):
    with pytest.raises(ValueError):
        _lock.lock_file(kind, "k")


def test_keys_of_any_text_make_safe_file_names():
    for key in ("/srv/data", "a\nb", "../../etc", "\u00e9", "x" * 500):
        name = os.path.basename(_lock.lock_file("cow", key))
        assert name.startswith("cow-") and len(name) == len("cow-") + 24 + len(".lock")
