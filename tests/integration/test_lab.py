# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab hosts boot as full systemd machines, carry nested work, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
    gateway = str(next(lab.subnet.hosts()))
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
        assert replica_lab.run(["ip", "link", "show", lab.bridge], check=False).returncode == 0
    assert replica_lab.run(["ip", "link", "show", lab.bridge], check=False).returncode != 0
    assert replica_lab.run(["nft", "list", "table", "inet", lab.nft_table], check=False).returncode != 0


#: a TCP server in a network namespace standing for "the outside": it answers each connection
#: with the address it came from, so a lab host learns whether its lab's NAT rewrote it
PEER_ECHO = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("198.51.100.2", 8099))
srv.listen(4)
srv.settimeout(120)
print("ready", flush=True)
for _ in range(int(sys.argv[1])):
    conn, peer = srv.accept()
    conn.sendall(peer[0].encode())
    conn.close()
"""

ASK_PEER = ("import socket; s = socket.create_connection(('198.51.100.2', 8099), timeout=10); "
            "print(s.recv(64).decode())")


def _forward():
    with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as handle:
        return handle.read().strip()


def test_two_labs_at_once(lab, lab_host, tmp_path):
    """A second lab (its own REPLICA_LAB_DIR, REPLICA_LAB_RUN, bridge and subnet) runs beside the
    default one: each has its own NAT table, both hosts reach the outside through NAT, the first
    lab going down leaves the second its NAT and ip_forward, and the last one restores
    ip_forward. A lab that would share a bridge with a running one is refused."""
    if lab.list():
        pytest.skip("other lab hosts are running: ip_forward's original value is not known")
    orig = _forward()
    other = replica_lab.Lab(root=str(tmp_path / "lab2"), run_dir=str(tmp_path / "run2"), pool_size="4G",
                            bridge="rlab-it2", subnet="10.214.99.0/24")
    assert other.nft_table != lab.nft_table
    ns, proc = "rlab-it-out", None
    try:
        # the second lab's pool gets the first one's base image by btrfs send/receive (no rebuild)
        os.makedirs(other.root)
        other.ensure_pool()
        image = lab.image()
        send = subprocess.Popen(["btrfs", "send", "-q", image], stdout=subprocess.PIPE)
        subprocess.run(["btrfs", "receive", "-q", other.images], stdin=send.stdout, check=True)
        assert send.wait() == 0
        shutil.copy(f"{image}.json", other.images)

        first = lab_host("it-lab-a")
        # same bridge as the running default lab: refused before anything is made
        clash = replica_lab.Lab(root=lab.root, run_dir=str(tmp_path / "run3"))
        with pytest.raises(replica_lab.LabError, match="REPLICA_LAB_BRIDGE"):
            clash.up("it-lab-c")
        assert clash.leftovers("it-lab-c")["directory"] == []
        second = other.up("it-lab-b")
        assert second.address.startswith("10.214.99.")
        for table in (lab.nft_table, other.nft_table):
            assert replica_lab.run(["nft", "list", "table", "inet", table], check=False).returncode == 0
        assert _forward() == "1"

        # "the outside": a namespace behind a veth of the CI machine
        for argv in (["ip", "netns", "add", ns],
                     ["ip", "link", "add", "rlab-it-o0", "type", "veth", "peer", "name", "eth0", "netns", ns],
                     ["ip", "addr", "add", "198.51.100.1/24", "dev", "rlab-it-o0"],
                     ["ip", "link", "set", "rlab-it-o0", "up"],
                     ["ip", "-n", ns, "addr", "add", "198.51.100.2/24", "dev", "eth0"],
                     ["ip", "-n", ns, "link", "set", "eth0", "up"]):
            replica_lab.run(argv)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PEER_ECHO, "3"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        ask = ["python3", "-c", ASK_PEER]
        assert lab.exec(first, ask).stdout.strip() == "198.51.100.1"    # masqueraded by its lab
        assert other.exec(second, ask).stdout.strip() == "198.51.100.1"

        # the default lab goes first: the second keeps its NAT and ip_forward
        lab.down(first.name)
        assert replica_lab.run(["nft", "list", "table", "inet", lab.nft_table], check=False).returncode != 0
        assert _forward() == "1"
        assert other.exec(second, ask).stdout.strip() == "198.51.100.1"
        other.down(second.name)
        assert replica_lab.run(["nft", "list", "table", "inet", other.nft_table], check=False).returncode != 0
        assert replica_lab.run(["ip", "link", "show", other.bridge], check=False).returncode != 0
        assert _forward() == orig
    finally:
        if proc:
            proc.kill()
            proc.wait()
        replica_lab.run(["ip", "netns", "del", ns], check=False)
        replica_lab.run(["ip", "link", "del", "rlab-it-o0"], check=False)
        other.down("it-lab-b")
        if os.path.ismount(other.pool):
            replica_lab.run(["umount", other.pool])
        shutil.rmtree(other.root, ignore_errors=True)
