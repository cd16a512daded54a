# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.vms in a lab host (TCG): a disk image and its kernel built ahead of time, a
microVM named by cloud-init, a q35 VM under UEFI with a TPM 2.0 and a web console that answers a
websocket upgrade with the VNC greeting, and a graceful stop that takes the helpers along."""

from __future__ import annotations

import json
import os
import shlex
import time

IMAGES = "/var/lib/replica/vm-images"

# the probe the integration tests use too
with open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "integration", "files", "websocket_probe.py"),
          encoding="utf-8") as _probe:
    WEBSOCKET_PROBE = _probe.read()


def test_the_image_its_kernel_and_initrd_were_built_ahead_of_time(host):
    record = json.loads(host.file(f"{IMAGES}/debian-13-vm.json").content_string)
    assert "linux-image-cloud-amd64" in record["packages"] and "cloud-init" in record["packages"]
    assert record["size"] == "2048M"
    assert host.file(f"{IMAGES}/debian-13-vm.vmlinuz").size > 1 << 20
    assert host.file(f"{IMAGES}/debian-13-vm.initrd.img").size > 1 << 20
    assert host.check_output(f"blkid -o value -s TYPE {IMAGES}/debian-13-vm.raw") == "ext4"


def test_the_microvm_booted_with_the_name_from_its_seed(host):
    assert host.check_output("systemctl is-active replica-vm@micro1.service") == "active"
    serial = host.file("/run/replica-vm/micro1/serial.log").content_string
    assert "micro1 login:" in serial


def test_the_microvm_in_segment_lan_has_its_name_and_addresses(host):
    import re  # pylint: disable=import-outside-toplevel
    record = host.file("/etc/replica/network/lan/hosts/micro1").content_string
    ipv4 = re.search(r"^(10\.20\.1\.\d+) micro1\.lan\.mol\.home\.arpa", record, re.M).group(1)
    ipv6 = re.search(r"^(fd00:20:1:[0-9a-f:]+) micro1", record, re.M).group(1)
    assert host.check_output("dig +short @127.0.0.1 micro1.lan.mol.home.arpa") == ipv4
    assert host.check_output("dig +short @127.0.0.1 micro1.lan.mol.home.arpa AAAA") == ipv6
    # the NIC is a tap on br-lan with the VM's MAC; the guest took the static addresses of its seed
    assert "br-lan" in host.check_output("ip -o link show master br-lan")
    for address in (ipv4, ipv6):
        ping = f"for i in $(seq 60); do ping -c1 -W1 {address} >/dev/null && exit 0; sleep 1; done; exit 1"
        assert host.run(f"sh -c {shlex.quote(ping)}").rc == 0, f"micro1 does not answer on {address}"


def test_the_q35_vm_booted_under_uefi_and_sees_a_tpm2(host):
    serial = host.file("/run/replica-vm/q1/serial.log").content_string
    assert "replica-ready tpm=2" in serial
    assert host.check_output("systemctl is-active replica-vm-swtpm@q1.service") == "active"
    assert host.file("/var/lib/replica/vms/q1/tpm").is_directory  # the TPM's state is on the VM's storage
    assert host.file("/var/lib/replica/vms/q1/OVMF_VARS.fd").exists


def test_the_web_console_answers_a_websocket_upgrade_with_the_vnc_greeting(host):
    host.check_output("systemctl is-active replica-vm-console@q1.socket")
    out = host.check_output(f"python3 -c {shlex.quote(WEBSOCKET_PROBE)} /run/replica-vm-console/q1.sock")
    answer = json.loads(out)
    assert answer["status"].startswith("HTTP/1.1 101") and answer["opcode"] == 2
    assert answer["payload"].startswith("RFB 003.00")


def test_the_web_console_refuses_users_other_than_root(host):
    """The console has no password of its own: its socket is root's (0660 root:root), so another
    user of the host cannot reach the VM's screen (the ingress gate will proxy it for others)."""
    info = host.file("/run/replica-vm-console/q1.sock")
    assert (info.user, info.group, info.mode) == ("root", "root", 0o660)
    probe = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/replica-vm-console/q1.sock')"
    out = host.run(f"runuser -u nobody -- python3 -c {shlex.quote(probe)}")
    assert out.rc != 0 and "PermissionError" in out.stderr


def test_stopping_the_vm_stops_its_whole_set_gracefully(host):
    host.check_output("systemctl stop replica-vm@q1.service")
    units = "replica-vm@q1.service replica-vm-swtpm@q1.service replica-vm-websockify@q1.service replica-vm-console@q1.socket"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and host.run(f"systemctl is-active {units}").stdout.split() != ["inactive"] * 4:
        time.sleep(0.5)
    assert host.run(f"systemctl is-active {units}").stdout.split() == ["inactive"] * 4
    log = host.check_output("journalctl -u replica-vm@q1.service --no-pager -o cat")
    assert "Deactivated successfully" in log.splitlines()[-2:][0] or "Deactivated successfully" in log
    assert "SIGKILL" not in log.split("Stopping")[-1]
    host.check_output("systemctl start replica-vm@q1.service")


def test_an_image_given_as_a_file_was_imported_as_raw(host):
    info = json.loads(host.check_output(f"qemu-img info --output=json {IMAGES}/imported.raw"))
    assert info["format"] == "raw" and info["virtual-size"] == 64 << 20
    assert host.check_output(f"head -c 4096 {IMAGES}/imported.raw | tr -d a | wc -c") == "0"
    assert not host.file(f"{IMAGES}/.imported.raw.partial").exists
