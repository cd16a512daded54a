# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.qemu_vm in a lab host: a microVM boots Debian's kernel by direct boot from a
disk forked (reflink) from a base image, under TCG (no usable KVM here), to a login prompt on
its serial console; it is idempotent, stops gracefully and leaves nothing when removed."""

from __future__ import annotations

import os
import time

from conftest import VM_PACKAGES, crash_in, probe_line, run_module, seed_vm_images


def test_microvm_lifecycle(lab, lab_host):
    machine = lab_host("it-qemu", packages=VM_PACKAGES)
    base = seed_vm_images(lab, machine)
    before = os.stat(base).st_mtime_ns

    spec = {"name": "tiny1", "image": "debian.raw", "kernel": "/var/lib/replica/vm-images/vmlinuz",
            "initrd": "/var/lib/replica/vm-images/initrd.img", "memory": "512M",
            "cloud_init": {"hostname": "tiny1"}, "timeout": 240}

    def qv(args, *extra, check=True):
        return run_module("replica.cloud.qemu_vm", args, *extra, check=check, machine=machine)

    def killed_at(args, point):
        proc = crash_in(machine, "replica.cloud.qemu_vm", args, point)
        assert proc.returncode != 0 and "Killed" in proc.stdout, proc.stdout

    def need_reload(unit):
        return lab.exec(machine, ["systemctl", "show", "--property=NeedDaemonReload", unit]).stdout.strip()

    vms = os.path.join(machine.directory, "var/lib/replica/vms")
    # killed once its folder is whole, before the rename: nothing is there, and the re-run makes it
    kill = {"name": "kill1", "image": "debian.raw", "kernel": spec["kernel"], "state": "present",
            "cloud_init": {"hostname": "kill1"}}
    killed_at(kill, "vm-created")
    assert not os.path.exists(os.path.join(vms, "kill1")) and os.path.exists(os.path.join(vms, ".kill1.partial"))
    rc, made = qv(kill)
    assert rc == 0 and made["changed"] and sorted(os.listdir(os.path.join(vms, "kill1"))) == ["disk.raw", "seed.iso", "vm.json"]
    assert not os.path.exists(os.path.join(vms, ".kill1.partial"))
    rc, again = qv(kill)
    assert rc == 0 and not again["changed"]

    rc, checked = qv(spec, "--check", "--diff")
    assert rc == 0 and checked["changed"] and not os.path.exists(os.path.join(machine.directory, "var/lib/replica/vms/tiny1"))
    assert checked["actions"] == ["create", "configure", "start"] and checked["state"] == "running"

    rc, up = qv(spec)
    assert rc == 0 and up["changed"] and up["state"] == "running" and up["pid"] > 0
    assert up["actions"] == checked["actions"]   # check mode said what the run then did
    assert up["accel"] in ("kvm", "tcg") and up["ready_seconds"] > 0
    assert up["disk"].endswith("disk.raw")  # a reflink fork on the lab host's btrfs
    vm_dir = os.path.join(machine.directory, "var/lib/replica/vms/tiny1")
    assert os.path.exists(os.path.join(vm_dir, "seed.iso"))
    serial = lab.exec(machine, ["cat", "/run/replica-vm/tiny1/serial.log"]).stdout
    assert "login:" in serial
    deadline = time.monotonic() + 60  # the probe unit may print just after the login prompt
    while " end" not in serial and time.monotonic() < deadline:
        time.sleep(0.5)
        serial = lab.exec(machine, ["cat", "/run/replica-vm/tiny1/serial.log"]).stdout
    # the guest's NIC has the MAC derived from its name, and QEMU's user-mode address is reported
    probe = probe_line(serial)
    assert probe["mac"] == up["mac"] and up["mac"].startswith("52:54:") and up["addresses"] == ["10.0.2.15"]

    rc, again = qv(spec)
    assert rc == 0 and not again["changed"] and not again["restart_required"]

    # killed after writing new settings, before daemon-reload: systemd still holds the old unit;
    # the re-run reloads it, and says the running VM needs a restart
    bigger = dict(spec, memory="640M")
    killed_at(bigger, "vm-units-written")
    assert need_reload("replica-vm@tiny1.service") == "NeedDaemonReload=yes"
    rc, after = qv(bigger)
    assert rc == 0 and after["changed"] and after["restart_required"] and after["state"] == "running"
    assert need_reload("replica-vm@tiny1.service") == "NeedDaemonReload=no"
    rc, after = qv(bigger)
    assert rc == 0 and not after["changed"] and after["restart_required"]

    # a removal killed after the folder was moved aside: the units are still there, and the re-run finishes
    killed_at({"name": "kill1", "state": "absent"}, "vm-removing")
    assert not os.path.exists(os.path.join(vms, "kill1")) and os.path.exists(os.path.join(vms, ".kill1.removing"))
    rc, gone = qv({"name": "kill1", "state": "absent"})
    assert rc == 0 and gone["changed"] and not os.path.exists(os.path.join(vms, ".kill1.removing"))
    assert not os.path.exists(os.path.join(machine.directory, "etc/systemd/system/replica-vm@kill1.service.d"))
    rc, gone = qv({"name": "kill1", "state": "absent"})
    assert rc == 0 and not gone["changed"]

    rc, checked = qv(dict(spec, state="stopped"), "--check")
    # spec's memory is not bigger's, which the VM has now: its settings are written, then it stops
    assert rc == 0 and checked["actions"] == ["configure", "stop"] and checked["state"] == "stopped"
    rc, down = qv(dict(spec, state="stopped"))
    assert down["actions"] == checked["actions"]
    assert rc == 0 and down["changed"] and down["state"] == "stopped"
    log = lab.exec(machine, ["journalctl", "-u", "replica-vm@tiny1.service", "--no-pager"]).stdout
    assert "Deactivated successfully" in log.splitlines()[-1] or "Deactivated successfully" in log  # graceful

    # bad input creates nothing
    rc, bad = qv({"name": "bad1", "image": "nope.raw", "kernel": spec["kernel"]}, check=False)
    assert rc != 0 and "image" in bad["msg"] and "debian.raw" in bad["msg"]
    rc, bad = qv({"name": "bad2", "image": "debian.raw", "kernel": spec["kernel"], "tpm": True}, check=False)
    assert rc != 0 and "tpm needs machine q35" in bad["msg"]
    rc, bad = qv({"name": "bad3", "image": "debian.raw"}, check=False)
    assert rc != 0 and "kernel" in bad["msg"]
    assert sorted(os.listdir(os.path.join(machine.directory, "var/lib/replica/vms"))) == ["tiny1"]

    rc, gone = qv({"name": "tiny1", "state": "absent"})
    assert rc == 0 and gone["changed"] and not os.path.exists(vm_dir)
    assert not os.path.exists(os.path.join(machine.directory, "etc/systemd/system/replica-vm@tiny1.service.d"))
    assert os.stat(base).st_mtime_ns == before  # the base image was never written
