# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab hosts boot as full systemd machines, carry nested work, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

import replica_lab
from conftest import start_nested

EMPTY = {"processes": [], "mounts": [], "loops": [], "links": [], "directory": [], "state": []}


def sh(lab, machine, script, check=True):
    return lab.exec(machine, ["/bin/sh", "-ec", script], check=check)


def test_boots_full_systemd_with_network(lab, lab_host):
    machine = lab_host("it-boot")
    state = lab.exec(machine, ["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert lab.exec(machine, ["hostname"]).stdout.strip() == "it-boot"
    # PID 1 inside is systemd, in its own PID namespace
    assert lab.exec(machine, ["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    # its own network namespace, joined to the CI machine by the lab bridge
    assert machine.address in lab.exec(machine, ["ip", "-4", "-o", "addr", "show", "host0"]).stdout
    gateway = str(next(replica_lab.SUBNET.hosts()))
    assert lab.exec(machine, ["ping", "-c1", "-W5", gateway], check=False).returncode == 0
    # the fork is a btrfs snapshot of the cached image: a write inside leaves the image alone
    sh(lab, machine, "echo written > /etc/replica-probe")
    image = os.path.join(lab.images, machine.image)
    assert not os.path.exists(os.path.join(image, "etc/replica-probe"))
    assert os.path.exists(os.path.join(machine.directory, "etc/replica-probe"))
    # the clock is the host's: a service in the lab host may not call settimeofday() (with a time
    # zone only, it once warped the CI machine's clock; the zero zone asked here would not)
    setter = ("import ctypes, errno, time\n"
              "class TZ(ctypes.Structure): _fields_ = [('w', ctypes.c_int), ('d', ctypes.c_int)]\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "rc = libc.settimeofday(None, ctypes.byref(TZ(0, 0)))\n"
              "print('refused' if rc != 0 and ctypes.get_errno() == errno.EPERM else 'set')\n")
    out = lab.exec(machine, ["systemd-run", "--wait", "--pipe", "--quiet", "/usr/bin/python3", "-c", setter]).stdout
    assert out.strip() == "refused"


def test_nested_work_loop_btrfs_and_nspawn(lab, lab_host):
    """What later roles need inside a lab host: loop devices, btrfs, and machined-registered
    nested nspawn machines that boot to a running systemd."""
    machine = lab_host("it-nested")
    sh(lab, machine, """
        truncate -s 300M /var/tmp/pool.img
        mkfs.btrfs -q /var/tmp/pool.img
        mkdir -p /srv/pool
        mount -o loop /var/tmp/pool.img /srv/pool
        btrfs subvolume create /srv/pool/sub
        btrfs subvolume snapshot -r /srv/pool/sub /srv/pool/sub@snap
    """)
    listing = sh(lab, machine, "btrfs subvolume list /srv/pool").stdout
    assert "sub@snap" in listing
    # a nested machine from the same image, started through machined as on a real host
    assert start_nested(lab, machine, "inner") in ("running", "degraded")
    assert "inner" in sh(lab, machine, "machinectl list --no-legend").stdout


def test_down_leaves_nothing_even_mid_work(lab):
    """Teardown with a mounted loop device, a detached-from-autoclear loop, a nested machine
    and a stray process inside: nothing of it survives on the CI machine."""
    name = "it-teardown"
    with pytest.raises(RuntimeError, match="simulated test failure"):
        with lab.host(name) as machine:
            sh(lab, machine, """
                truncate -s 200M /var/tmp/a.img /var/tmp/b.img
                mkfs.btrfs -q /var/tmp/a.img
                mkdir -p /mnt/a
                mount -o loop /var/tmp/a.img /mnt/a
                losetup -f /var/tmp/b.img
                systemd-run --unit=replica-sleeper sleep 600
            """)
            during = lab.leftovers(name)
            assert during["processes"] and during["directory"] and during["state"]
            assert during["loops"], "the test should have left a loop device to clean up"
            raise RuntimeError("simulated test failure")
    assert lab.leftovers(name) == EMPTY


def test_down_after_crash(lab):
    """A lab host whose nspawn was killed outright (a crashed test run) is still cleaned."""
    name = "it-crash"
    machine = lab.up(name)
    try:
        os.killpg(machine.nspawn_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while machine.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not machine.alive()
        assert [m.name for m in lab.list()].count(name) == 1  # still recorded
    finally:
        lab.down(name)
    assert lab.leftovers(name) == EMPTY
    assert name not in [m.name for m in lab.list()]


def test_boot_failure_leaves_nothing(lab):
    with pytest.raises(replica_lab.LabError):
        lab.up("it-timeout", timeout=0.001)
    assert lab.leftovers("it-timeout") == EMPTY


def test_network_removed_with_last_host(lab):
    if lab.list():
        pytest.skip("other lab hosts are running: the shared bridge stays while they do")
    with lab.host("it-net"):
        assert replica_lab.run(["ip", "link", "show", replica_lab.BRIDGE], check=False).returncode == 0
    assert replica_lab.run(["ip", "link", "show", replica_lab.BRIDGE], check=False).returncode != 0
    assert replica_lab.run(["nft", "list", "table", "inet", replica_lab.NFT_TABLE],
                           check=False).returncode != 0
