# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.containers on the hypervisor: an image built ahead of time, machines from inventory
(site1 and db1 on a bridge of their own, br-m, with static addresses; the machines in segments are
test_network.py's), a machine started by name through the template service set, a lambda that
scales to zero."""

from __future__ import annotations

import json
import time

IMAGE = "/var/lib/machines/.images/debian-13"


def inside(host, machine, command):
    return host.run(f"systemd-run -M {machine} --wait --pipe --quiet /bin/sh -c '{command}'")


def wait(check, timeout=30, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def test_the_image_is_built_read_only_with_its_packages(host):
    assert host.check_output(f"btrfs property get -ts {IMAGE} ro") == "ro=true"
    record = json.loads(host.file(f"{IMAGE}.json").content_string)
    assert "curl" in record["packages"] and "systemd" in record["packages"]
    assert host.file(f"{IMAGE}/usr/bin/curl").exists


def test_machines_run_with_their_first_boot_settings(host):
    out = host.check_output("machinectl list --no-legend")
    assert "site1" in out and "db1" in out
    assert inside(host, "site1", "hostname").stdout.strip() == "site1"
    assert "ReplicaMolecule" in inside(host, "site1", "cat /root/.ssh/authorized_keys").stdout
    assert host.check_output("systemctl show -p MemoryMax --value systemd-nspawn@site1.service") == "536870912"


def test_machines_reach_each_other_by_name(host):
    fetch = "for i in $(seq 60); do curl -fsS http://site1/ && exit 0; sleep 0.25; done; exit 1"
    assert inside(host, "db1", fetch).stdout.strip() == "site1 says hello"


def test_the_image_is_unchanged_by_a_machine(host):
    before = host.check_output(f"btrfs subvolume show {IMAGE} | grep -i generation")
    inside(host, "site1", "echo changed > /etc/motd; dd if=/dev/zero of=/var/tmp/blob bs=1M count=4 2>/dev/null")
    assert host.check_output(f"btrfs subvolume show {IMAGE} | grep -i generation") == before
    assert "changed" not in host.file(f"{IMAGE}/etc/motd").content_string


def test_a_new_machine_by_name(host):
    host.check_output("systemctl start replica-machine@quick.service")
    assert host.check_output("systemctl is-active systemd-nspawn@quick.service") == "active"
    assert inside(host, "quick", "hostname").stdout.strip() == "quick"
    assert "debian-13" in host.check_output("journalctl -u replica-machine-prepare@quick.service --no-pager")
    host.check_output("systemctl stop replica-machine@quick.service")
    assert wait(lambda: host.run("systemctl is-active systemd-nspawn@quick.service").stdout.strip() != "active")


def test_a_lambda_starts_on_connection_and_scales_to_zero(host):
    assert host.run("systemctl is-active systemd-nspawn@hello.service").stdout.strip() != "active"
    page = host.check_output("curl -fsS --retry 5 --retry-connrefused --max-time 30 http://127.0.0.1:8081/")
    assert page == "hello from a lambda"
    assert host.check_output("systemctl is-active systemd-nspawn@hello.service") == "active"
    # idle: 5s, then the proxy exits and the machine, unneeded, stops
    assert wait(lambda: host.run("systemctl is-active systemd-nspawn@hello.service").stdout.strip() != "active",
                timeout=45)
    page = host.check_output("curl -fsS --retry 5 --retry-connrefused --max-time 30 http://127.0.0.1:8081/")
    assert page == "hello from a lambda"


#: capabilities no machine may hold (bit: name): loading kernel code, raw I/O, the host's clock,
#: its kernel log, BPF programs
CAPS_NEVER = {16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO", 25: "CAP_SYS_TIME", 34: "CAP_SYSLOG", 39: "CAP_BPF"}
#: what root in a machine tries, each of which must fail (attempts that cannot harm the host if
#: they succeeded: a read of a loop device, a sysctl write and a remount inside the machine)
ESCAPES = {
    "write a kernel setting": "echo 1 > /proc/sys/kernel/sysrq",
    "read a host block device": "mknod /run/probe-blk b 7 0 && head -c 1 /run/probe-blk >/dev/null",
    "make /sys writable": "mount -o remount,rw /sys",
    "mount the host's cgroup tree": "mkdir -p /run/probe-cg && mount -t cgroup2 none /run/probe-cg && test -e /run/probe-cg/init.scope/../../machine.slice",
}


def test_a_machine_is_confined(host):
    """The stock systemd-nspawn@.service (-U): root in the machine is an unprivileged user of its
    own range on the host, without the capabilities that reach the host's kernel, and the usual
    escapes fail."""
    leader = host.check_output("machinectl show --property=Leader --value site1")
    uid_map = host.file(f"/proc/{leader}/uid_map").content_string.split()
    assert uid_map[0] == "0" and uid_map[1] != "0" and uid_map[2] == "65536", uid_map
    bounding = int(inside(host, "site1", r"sed -n s/^CapBnd:\s*//p /proc/self/status").stdout.strip(), 16)
    assert not [name for bit, name in CAPS_NEVER.items() if bounding >> bit & 1], hex(bounding)
    succeeded = {what: result.stdout for what, result in
                 ((what, inside(host, "site1", command + " 2>&1")) for what, command in ESCAPES.items())
                 if result.rc == 0}
    assert not succeeded, succeeded
