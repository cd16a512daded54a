# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica-snapshot, the command the storage role's timers run, on a real btrfs loop image:
it snapshots, prunes by the same retention function as the module, lists, and fails clearly."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _tools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The replica-tools package's files, laid out as it installs them (under a scratch root)."""
    root = tmp_path_factory.mktemp("replica-tools")
    spec = _tools.package_spec(lambda relative: open(os.path.join(ROOT, relative), encoding="utf-8").read(), "0.1.0")
    for item in spec["files"]:
        path = root / item["dest"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item["content"])
    return root


@pytest.fixture
def replica_snapshot(installed):
    def run(policies, *argv):
        # as installed: the command beside the module_utils of its package, run by the system's Python
        env = dict(os.environ, PYTHONPATH=str(installed / _tools.PYTHON_DIR.lstrip("/")))
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        return subprocess.run([python, str(installed / _tools.PYTHON_DIR.lstrip("/") / "replica_snapshot.py"),
                               "--policies", str(policies), *argv], env=env, text=True, capture_output=True, check=False)
    return run


@pytest.fixture
def policy(loop_fs, tmp_path):
    fs = loop_fs("btrfs")
    subprocess.run(["btrfs", "subvolume", "create", str(fs / "db")], check=True, capture_output=True)
    (fs / "db/data").write_text("x\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "db.json").write_text(json.dumps({"src": str(fs / "db"), "retention": {"daily": 2}}))
    return policies, fs


def test_snapshot_prune_list(policy, replica_snapshot):
    policies, fs = policy
    snaps = fs / ".snapshots"
    snaps.mkdir()
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    seeded = [f"db@{(old - dt.timedelta(days=d)).strftime('%Y%m%dT%H%M%SZ')}" for d in range(4)]
    for name in seeded:
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(fs / "db"), str(snaps / name)],
                       check=True, capture_output=True)

    dry = replica_snapshot(policies, "--dry-run", "db")
    assert dry.returncode == 0 and "would snapshot" in dry.stdout and sorted(os.listdir(snaps)) == sorted(seeded)

    run = replica_snapshot(policies, "db")
    assert run.returncode == 0, run.stderr
    left = sorted(os.listdir(snaps))
    # daily: 2 keeps today's new snapshot and the newest of the seeded days
    assert len(left) == 2 and left[0] == seeded[0] and left[1] > seeded[0]
    assert run.stdout.count("deleted ") == 3

    listing = replica_snapshot(policies, "--list", "db")
    assert listing.returncode == 0 and listing.stdout.count("keep") == 2 and "daily" in listing.stdout
    again = replica_snapshot(policies, "--prune", "db")
    assert again.returncode == 0 and "0 deleted" in again.stdout


def test_failures_are_clear(policy, replica_snapshot):
    policies, fs = policy
    (policies / "gone.json").write_text(json.dumps({"src": str(fs / "missing"), "retention": {}}))
    result = replica_snapshot(policies, "gone")
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = replica_snapshot(policies, "nope")
    assert result.returncode == 2 and "cannot read policy" in result.stderr
    (policies / "bad.json").write_text(json.dumps({"src": str(fs / "db"), "retention": {"daily": -1}}))
    result = replica_snapshot(policies, "bad")
    assert result.returncode == 1 and "daily" in result.stderr
    assert not (fs / ".snapshots").exists()
