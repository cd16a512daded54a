# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cow_snapshot's ZFS backend against the zfs(8) command-line contract.

No ZFS kernel module can be loaded on the CI machine, so these tests put a stand-in ``zfs``
(tests/integration/files/fake-zfs/zfs) first on PATH: it answers the few command lines the
backend uses, the way zfsutils-linux does, and logs them. What this verifies: the exact command
lines, the parsing of ``zfs list``/``zfs get`` output, idempotence and the policy. What it does
not: real ZFS behaviour (atomicity, space, clones' dependence on their origin) — unverified here.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from conftest import run_module

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "fake-zfs")


@pytest.fixture
def zfs(tmp_path, monkeypatch):
    state = tmp_path / "zfs.json"
    state.write_text(json.dumps({"datasets": {"tank": {"origin": "-"}, "tank/db": {"origin": "-"},
                                              "tank/forks": {"origin": "-"}}, "snapshots": []}))
    monkeypatch.setenv("FAKE_ZFS_STATE", str(state))
    monkeypatch.setenv("PATH", FAKE + os.pathsep + os.environ["PATH"])

    def read():
        return json.loads(state.read_text())

    def calls():
        log = tmp_path / "zfs.json.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return [json.loads(line) for line in lines]
    return read, calls


def cow(args, *extra, check=True):
    return run_module("replica.cloud.cow_snapshot", args, *extra, check=check)


def test_snapshot_fork_absent(zfs):
    read, calls = zfs
    rc, made = cow({"src": "tank/db", "dest": "tank/db@before-upgrade"})
    assert rc == 0 and made["changed"] and made["backend"] == "zfs"
    assert ["snapshot", "tank/db@before-upgrade"] in calls()
    rc, again = cow({"src": "tank/db", "dest": "tank/db@before-upgrade"})
    assert rc == 0 and not again["changed"]
    assert not any(c[0] == "snapshot" for c in calls())

    rc, forked = cow({"src": "tank/db", "dest": "tank/forks/test", "state": "fork"})
    assert rc == 0 and forked["changed"]
    made_calls = [c for c in calls() if c[0] in ("snapshot", "clone")]
    assert made_calls[0][0] == "snapshot" and made_calls[0][1].startswith("tank/db@")
    assert made_calls[1] == ["clone", made_calls[0][1], "tank/forks/test"]
    assert read()["datasets"]["tank/forks/test"]["origin"] == made_calls[0][1]
    rc, again = cow({"src": "tank/db", "dest": "tank/forks/test", "state": "fork"})
    assert rc == 0 and not again["changed"]
    # fork of a given snapshot clones it directly
    rc, direct = cow({"src": "tank/db@before-upgrade", "dest": "tank/forks/old", "state": "fork"})
    assert rc == 0 and direct["changed"]
    assert [c for c in calls() if c[0] in ("snapshot", "clone")] == [
        ["clone", "tank/db@before-upgrade", "tank/forks/old"]]

    rc, wrong = cow({"src": "tank/db", "dest": "tank", "state": "absent"}, check=False)
    assert rc != 0 and "not removed" in wrong["msg"]
    rc, gone = cow({"src": "tank/db", "dest": "tank/forks/test", "state": "absent"})
    assert rc == 0 and gone["changed"] and ["destroy", "tank/forks/test"] in calls()
    assert "tank/forks/test" not in read()["datasets"]


def test_missing_dataset(zfs):
    read = zfs[0]
    rc, result = cow({"src": "tank/nope", "state": "snapshot"}, check=False)
    assert rc != 0 and "tank/nope is not an existing ZFS dataset" in result["msg"]
    assert read()["snapshots"] == []


def test_pruning(zfs):
    read, calls = zfs
    now = dt.datetime.now(dt.timezone.utc).replace(minute=30, second=0, microsecond=0)
    state = read()
    for i in range(48, 0, -1):  # two days, hourly
        state["snapshots"].append(f"tank/db@{(now - dt.timedelta(hours=i)).strftime('%Y%m%dT%H%M%SZ')}")
    state["snapshots"].append("tank/db@autosnap_2026-01-01_00:00:00_daily")  # another tool's: untouched
    with open(os.environ["FAKE_ZFS_STATE"], "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    rc, taken = cow({"src": "tank/db"})
    assert rc == 0 and taken["dest"].startswith("tank/db@")
    rc, pruned = cow({"src": "tank/db", "state": "pruned", "retention": {"hourly": 6, "daily": 2}})
    assert rc == 0 and pruned["changed"]
    left = read()["snapshots"]
    assert "tank/db@autosnap_2026-01-01_00:00:00_daily" in left
    ours = [s for s in left if not s.startswith("tank/db@autosnap")]
    assert ours == pruned["snapshots"] and taken["dest"] in ours
    assert 6 <= len(ours) <= 8  # 6 hourly (the newest among them), plus up to two day firsts
    destroyed = [c[1] for c in calls() if c[0] == "destroy"]
    assert len(destroyed) == 49 - len(ours) and all(d.startswith("tank/db@2") for d in destroyed)
    rc, again = cow({"src": "tank/db", "state": "pruned", "retention": {"hourly": 6, "daily": 2}})
    assert rc == 0 and not again["changed"]
