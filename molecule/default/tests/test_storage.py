# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.storage on a lab host: pools on loop images, snapshot timers that take and prune,
maintenance that runs, the failure hook."""

from __future__ import annotations

import datetime as dt
import time

SNAPS = "/srv/cow/state/.snapshots"


def wait(check, timeout=60, step=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return check()


def test_pools_are_mounted_and_enabled(host):
    assert host.check_output("findmnt -n -o FSTYPE /srv/cow") == "btrfs"
    assert host.check_output("findmnt -n -o FSTYPE /srv/reflink") == "xfs"
    assert "reflink=1" in host.check_output("xfs_info /srv/reflink")
    for unit in ("srv-cow.mount", "srv-reflink.mount"):
        assert host.check_output(f"systemctl is-enabled {unit}") == "enabled"
    for folder in ("images", "machines", "state", "snapshots"):
        assert host.file(f"/srv/cow/{folder}").is_directory
        assert host.file(f"/srv/reflink/{folder}").is_directory
    assert "Name:" in host.check_output("btrfs subvolume show /srv/cow/state/demo")


def test_the_timer_takes_snapshots_and_prunes_old_ones(host):
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    seeded = [f"demo@{(long_ago - dt.timedelta(hours=h)).strftime('%Y%m%dT%H%M%SZ')}" for h in range(3)]
    host.check_output(f"mkdir -p {SNAPS}")
    for name in seeded:
        host.check_output(f"btrfs subvolume snapshot -r /srv/cow/state/demo {SNAPS}/{name}")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def fired():
        names = host.check_output(f"ls {SNAPS}").split()
        fresh = [n for n in names if n.startswith("demo@") and n[5:] >= started]
        return fresh if fresh and not set(seeded) & set(names) else None

    assert wait(fired, timeout=60), host.check_output(f"ls {SNAPS}; journalctl -u replica-snapshot@demo.service -n 20 --no-pager")
    log = host.check_output("journalctl -u replica-snapshot@demo.service --no-pager")
    for name in seeded:
        assert f"deleted {SNAPS}/{name}" in log
    # hourly: 1 and latest: 3 keep at most four
    names = [n for n in host.check_output(f"ls {SNAPS}").split() if n.startswith("demo@")]
    assert 1 <= len(names) <= 4
    assert "enabled" == host.check_output("systemctl is-enabled replica-snapshot-demo.timer")
    listing = host.check_output("replica-snapshot --list demo")
    assert "keep" in listing and "latest" in listing


def test_reflink_policy_makes_an_immutable_snapshot(host):
    host.check_output("systemctl start replica-snapshot@web.service")
    snaps = host.check_output("ls /srv/reflink/state/.snapshots").split()
    assert len(snaps) >= 1 and snaps[0].startswith("web@")
    snap = f"/srv/reflink/state/.snapshots/{snaps[-1]}"
    assert host.file(f"{snap}/index.html").content_string.strip() == "served from a reflink pool"
    assert "i" in host.check_output(f"lsattr -d {snap}/index.html").split()[0]
    assert host.run(f"sh -c 'echo changed > {snap}/index.html'").rc != 0


def test_a_failed_run_fires_the_failure_hook(host):
    assert host.run("systemctl start replica-snapshot@broken.service").rc != 0
    assert wait(lambda: host.file("/run/replica-test-alerts/replica-snapshot@broken.service").exists, timeout=20)
    log = host.check_output("journalctl -u replica-snapshot@broken.service --no-pager")
    assert "/srv/cow/state/missing does not exist" in log


def test_maintenance_runs(host):
    for unit in ("replica-storage-scrub@srv-cow.timer", "replica-storage-trim@srv-cow.timer",
                 "replica-storage-trim@srv-reflink.timer"):
        assert host.check_output(f"systemctl is-enabled {unit}") == "enabled", unit
    for unit in ("replica-storage-scrub@srv-reflink.timer", "replica-storage-balance@srv-cow.timer",
                 "replica-storage-defrag@srv-cow.timer"):
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() != "enabled", unit
    host.check_output("systemctl start replica-storage-scrub@srv-cow.service")
    assert "scrub" in host.check_output("journalctl -u replica-storage-scrub@srv-cow.service --no-pager").lower()
    host.check_output("systemctl start replica-storage-trim@srv-reflink.service")
    assert "trimmed" in host.check_output("journalctl -u replica-storage-trim@srv-reflink.service --no-pager")


def test_zfs_parameters_are_written(host):
    assert host.file("/etc/modprobe.d/replica-zfs.conf").contains("options zfs zfs_arc_max=1073741824")


def test_the_timers_command_comes_from_the_replica_tools_package(host):
    """replica-snapshot is the replica-tools package's (apt installed it, dpkg knows its files),
    not a copy the role made; what earlier versions copied under /usr/local is gone."""
    package = host.package("replica-tools")
    assert package.is_installed and "+" in package.version   # the collection's version and a digest
    owner = host.check_output("dpkg -S /usr/sbin/replica-snapshot")
    assert owner == "replica-tools: /usr/sbin/replica-snapshot"
    assert host.run("dpkg --verify replica-tools").rc == 0 and host.check_output("dpkg --verify replica-tools") == ""
    assert not host.file("/usr/local/lib/replica/python").exists
    assert not host.file("/usr/local/sbin/replica-snapshot").exists
    assert "/usr/sbin/replica-snapshot" in host.check_output("systemctl cat replica-snapshot@demo.service")
