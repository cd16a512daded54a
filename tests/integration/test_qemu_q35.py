# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.qemu_vm in a lab host, q35 under TCG: UEFI (OVMF) direct-boots Debian's kernel
from a reflink-forked disk, with a software TPM (swtpm, state on the VM's CoW storage), an iSCSI
disk served by tgt in the lab host through QEMU's own initiator, and the VNC display behind a
socket-activated websocket proxy. A probe unit in the test image prints what the guest sees on
its serial console; the websocket is opened from the lab host and must carry the VNC greeting."""

from __future__ import annotations

import json
import os
import time

from conftest import VM_PACKAGES, probe_line, run_module, seed_vm_images

IQN = "iqn.2026-11.cloud.replica.lab:disk1"
SIGNATURE = b"replica-iscsi-lun-ok"

# From the lab host: open the web console's socket, ask for a websocket, read the first frame.
with open(os.path.join(os.path.dirname(__file__), "files", "websocket_probe.py"), encoding="utf-8") as _probe:
    WEBSOCKET_PROBE = _probe.read()


def test_q35_tpm_iscsi_web_console(lab, lab_host):
    machine = lab_host("it-q35", packages=VM_PACKAGES)
    base = seed_vm_images(lab, machine)
    before = os.stat(base).st_mtime_ns

    # an iSCSI target in the lab host (tgt, user space), one LUN whose first bytes are known
    lun = os.path.join(machine.directory, "var/lib/lun1.img")
    with open(lun, "wb") as handle:
        handle.write(SIGNATURE)
        handle.truncate(64 << 20)
    for argv in (["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN],
                 ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", "/var/lib/lun1.img"],
                 ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]):
        lab.exec(machine, ["tgtadm", "--lld", "iscsi", *argv])

    spec = {"name": "q1", "machine": "q35", "image": "debian.raw", "kernel": "/var/lib/replica/vm-images/vmlinuz",
            "initrd": "/var/lib/replica/vm-images/initrd.img", "memory": "1G", "tpm": True,
            "disks": [{"iscsi": f"iscsi://127.0.0.1/{IQN}/1"}], "ready_pattern": " end", "timeout": 300}

    def qv(args, *extra, check=True):
        return run_module("replica.cloud.qemu_vm", args, *extra, check=check, machine=machine)

    rc, checked = qv(spec, "--check", "--diff")
    assert rc == 0 and checked["changed"]
    assert not os.path.exists(os.path.join(machine.directory, "var/lib/replica/vms/q1"))

    rc, up = qv(spec)
    assert rc == 0 and up["changed"] and up["state"] == "running" and up["ready_seconds"] > 0, up
    serial = lab.exec(machine, ["cat", "/run/replica-vm/q1/serial.log"]).stdout
    probe = probe_line(serial)
    assert probe["tpm"] == "2"  # the guest sees a TPM 2.0
    assert probe["disks"] == "vda" or probe["disks"].startswith("vda")
    assert probe["vdb"] == SIGNATURE.decode()  # the iSCSI LUN is the guest's second disk
    assert "EFI v" in serial or "efi:" in serial  # booted by the UEFI firmware

    vm_dir = os.path.join(machine.directory, "var/lib/replica/vms/q1")
    tpm_state = sorted(os.listdir(os.path.join(vm_dir, "tpm")))
    assert tpm_state  # the TPM's state is in the VM's folder
    assert lab.exec(machine, ["systemctl", "is-active", "replica-vm-swtpm@q1.service",
                              "replica-vm-console@q1.socket"]).stdout.split() == ["active", "active"]

    # the web console: an HTTP upgrade to a websocket whose first frame is the VNC greeting
    answer = json.loads(lab.exec(machine, ["python3", "-c", WEBSOCKET_PROBE, up["web_console"]]).stdout)
    assert answer["status"].startswith("HTTP/1.1 101") and answer["opcode"] == 2
    assert answer["payload"].startswith("RFB 003.00")

    rc, again = qv(spec)
    assert rc == 0 and not again["changed"]

    # QEMU crashes: the next converge starts the set afresh, and the guest has its TPM again
    lab.exec(machine, ["systemctl", "kill", "--signal=SIGKILL", "replica-vm@q1.service"])
    deadline = time.monotonic() + 30
    while lab.exec(machine, ["systemctl", "is-active", "replica-vm@q1.service"], check=False).stdout.strip() == "active":
        assert time.monotonic() < deadline, "QEMU did not die"
        time.sleep(0.2)
    rc, back = qv(spec)
    assert rc == 0 and back["changed"] and back["state"] == "running", back
    serial = lab.exec(machine, ["cat", "/run/replica-vm/q1/serial.log"]).stdout
    assert "replica-probe tpm=2 " in serial
    assert sorted(os.listdir(os.path.join(vm_dir, "tpm"))) == tpm_state  # its state files are kept

    # stop is graceful and takes the helpers with it
    rc, down = qv(dict(spec, state="stopped"))
    assert rc == 0 and down["changed"] and down["state"] == "stopped"
    states = lab.exec(machine, ["systemctl", "is-active", "replica-vm@q1.service", "replica-vm-swtpm@q1.service",
                                "replica-vm-console@q1.socket"], check=False).stdout.split()
    assert states == ["inactive"] * 3
    log = lab.exec(machine, ["journalctl", "-u", "replica-vm@q1.service", "--no-pager"]).stdout
    assert "Deactivated successfully" in log and not down.get("warnings")  # powered down, not killed

    rc, gone = qv({"name": "q1", "state": "absent"})
    assert rc == 0 and gone["changed"] and not os.path.exists(vm_dir)
    leftovers = [n for n in os.listdir(os.path.join(machine.directory, "etc/systemd/system")) if "@q1." in n]
    assert leftovers == []
    assert os.stat(base).st_mtime_ns == before
