# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QEMU command line, unit drop-in and cloud-init seed rendered for a VM."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _qemu as vm

MICRO = {"name": "tiny1", "kernel": "/k", "initrd": "/i", "disk": "/vms/tiny1/disk.raw", "memory": "1G", "cpus": 2}


def after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_microvm_tcg():
    argv = vm.build_argv(MICRO, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert after(argv, "-M") == ["microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on"]
    assert after(argv, "-cpu") == ["max"] and after(argv, "-m") == ["1024"] and after(argv, "-smp") == ["2"]
    assert after(argv, "-kernel") == ["/k"] and after(argv, "-initrd") == ["/i"]
    assert "virtio-blk-device,drive=root" in after(argv, "-device")
    assert after(argv, "-netdev") == ["user,id=n0"]
    assert f"virtio-net-device,netdev=n0,mac={vm.mac_for('tiny1')}" in after(argv, "-device")
    assert after(argv, "-qmp") == ["unix:/run/replica-vm/tiny1/qmp.sock,server=on,wait=off"]


def test_microvm_kvm_has_no_pit_override():
    argv = vm.build_argv(MICRO, "kvm")
    assert after(argv, "-M") == ["microvm,x-option-roms=off,rtc=on,isa-serial=on"] and after(argv, "-cpu") == ["host"]


def test_q35_with_firmware_tpm_iso_tap():
    spec = {"name": "win1", "machine": "q35", "disk": "/d.raw", "iso": "/inst.iso", "drivers_iso": "/virtio.iso",
            "tpm": True, "network": {"type": "tap", "bridge": "br0"}}
    argv = vm.build_argv(spec, "tcg", firmware=("/code.fd", "/vars.fd"), tpm_socket="/run/replica-vm/win1/swtpm.sock")
    drives = after(argv, "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/code.fd" in drives
    assert "if=pflash,format=raw,unit=1,file=/vars.fd" in drives
    assert any("file=/inst.iso" in d for d in drives) and any("file=/virtio.iso" in d for d in drives)
    assert "tpm-crb,tpmdev=tpm0" in after(argv, "-device")
    assert after(argv, "-vnc") == ["unix:/run/replica-vm/win1/vnc.sock"]
    assert after(argv, "-netdev") == ["tap,id=n0,ifname=vm-win1,script=no,downscript=no"]
    dropin = vm.render_dropin(spec, argv)
    assert "Requires=replica-vm-swtpm@win1.service" in dropin
    assert "ExecStartPre=/sbin/ip link set vm-win1 master br0 up" in dropin
    assert "\nExecStart=\nExecStart=qemu-system-x86_64 " in dropin


def test_iscsi_disk():
    argv = vm.build_argv(dict(MICRO, disks=[{"iscsi": "iscsi://10.0.0.5/iqn.2026-01.lab:disk1/0"}]), "tcg")
    assert "id=disk0,file=iscsi://10.0.0.5/iqn.2026-01.lab:disk1/0,if=none,cache=none,format=raw" in after(argv, "-drive")


@pytest.mark.parametrize("spec,message", [
    ({"name": "x", "machine": "microvm"}, "kernel"),
    ({"name": "x", "kernel": "/k", "tpm": True}, "tpm needs machine q35"),
    ({"name": "x", "kernel": "/k", "iso": "/a.iso"}, "iso needs machine q35"),
    ({"name": "x", "machine": "pc"}, "machine"),
    ({"name": "X!", "kernel": "/k"}, "VM name"),
    ({"name": "x", "kernel": "/k", "network": {"type": "tap"}}, "bridge"),
    ({"name": "x", "kernel": "/k", "memory": "lots"}, "memory"),
])
def test_bad_specs(spec, message):
    with pytest.raises(vm.VmError, match=message):
        vm.validate(spec)


def test_mac_is_stable_and_local():
    mac = vm.mac_for("web1")
    assert mac == vm.mac_for("web1") != vm.mac_for("web2")
    assert mac.startswith("52:54:") and len(mac.split(":")) == 6


def test_quoting_for_systemd():
    dropin = vm.render_dropin({"name": "t"}, ["qemu", "-append", "console=ttyS0 root=/dev/vda", "-name", "50%"])
    assert "ExecStart=qemu -append 'console=ttyS0 root=/dev/vda' -name 50%%" in dropin


def test_cloud_init_seed():
    files = vm.cloud_init({"name": "web1", "cloud_init": {"hostname": "web1", "ssh_authorized_keys": ["ssh-ed25519 A"]}})
    assert files["meta-data"].startswith("instance-id: web1-") and "local-hostname: web1" in files["meta-data"]
    assert files["user-data"].startswith("#cloud-config\n") and '"ssh-ed25519 A"' in files["user-data"]
    raw = vm.cloud_init({"name": "a", "cloud_init": {"user_data": "packages: [nginx]\n", "network_config": {"version": 2}}})
    assert raw["user-data"] == "#cloud-config\npackages: [nginx]\n" and '"version": 2' in raw["network-config"]


def test_tcg_microvm_skips_tsc_calibration_when_the_host_rate_is_known():
    argv = vm.build_argv(dict(MICRO, tsc_khz=2596134), "tcg")
    assert after(argv, "-append") == ["console=ttyS0 root=/dev/vda rw tsc_early_khz=2596134 tsc=reliable"]
    assert after(vm.build_argv(dict(MICRO, tsc_khz=2596134), "kvm"), "-append") == ["console=ttyS0 root=/dev/vda rw"]
    assert after(vm.build_argv(MICRO, "tcg"), "-append") == ["console=ttyS0 root=/dev/vda rw"]
