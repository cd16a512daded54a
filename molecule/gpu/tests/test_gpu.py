# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.gpu in a lab host, binding devices of an emulated sysfs (served by the CI
machine, seen at /run/replica-sysfs): the devices are on vfio-pci, and what the role left for the
next boot is read by the tools that read it at boot - driverctl, mdevctl, grub-mkconfig's way of
sourcing /etc/default/grub, kmod's modprobe and systemd."""

from __future__ import annotations

import json

testinfra_hosts = ["lab://mol-gpu"]

SYS = "/run/replica-sysfs"
GPU, AUDIO, PORT, VGPU = "0000:01:00.0", "0000:01:00.1", "0000:00:01.0", "0000:3b:00.0"
UUID1, UUID2 = "5b0a7b0e-7c8f-4a34-9ec2-2f8f3b0f5c11", "0f3c2d8e-1a52-4b63-8c47-6de5a0e0b9a2"
#: the emulated tree as /sys, the lab's modprobe answering yes (module loading is not emulated;
#: driverctl runs modprobe -q vfio-pci before it binds)
AS_SYS = (f"unshare --mount --propagation private sh -c 'mount --bind {SYS} /sys && "
          "mount --bind /bin/true \"$(readlink -f /sbin/modprobe)\" && exec \"$0\" \"$@\"'")


def driver(host, address):
    return host.file(f"{SYS}/bus/pci/devices/{address}/driver").linked_to.rsplit("/", 1)[-1]


def test_the_group_is_on_vfio_and_the_bridge_is_not(host):
    assert driver(host, GPU) == "vfio-pci" and driver(host, AUDIO) == "vfio-pci"
    assert driver(host, PORT) == "pcieport"
    assert host.file(f"{SYS}/bus/pci/devices/{GPU}/driver_override").content_string.strip() == "vfio-pci"


def test_driverctl_binds_them_again_at_boot(host):
    for address in (GPU, AUDIO):
        assert host.check_output(f"od -An -c /etc/driverctl.d/pci-{address}").split() == [*"vfio-pci", "\\n"]  # as driverctl saves it
    assert host.file("/lib/udev/rules.d/05-driverctl.rules").exists  # what starts driverctl@pci-ADDRESS at boot
    # a boot where nvidia took the GPU first: driverctl@pci-0000:01:00.0.service's command gives it back
    host.check_output(f"sh -c 'echo > {SYS}/bus/pci/devices/{GPU}/driver_override && echo {GPU} > {SYS}/bus/pci/drivers/vfio-pci/unbind"
                      f" && echo {GPU} > {SYS}/bus/pci/drivers_probe'")
    assert driver(host, GPU) == "nvidia"
    host.check_output(f"{AS_SYS} driverctl load-override {GPU}")
    assert driver(host, GPU) == "vfio-pci"
    assert f"{GPU} vfio-pci" in host.check_output(f"{AS_SYS} driverctl list-overrides")


def test_mdevctl_has_the_mediated_devices(host):
    assert sorted(host.file(f"{SYS}/bus/mdev/devices").listdir()) == sorted([UUID1, UUID2])
    assert host.file(f"{SYS}/bus/pci/devices/{VGPU}/mdev_supported_types/nvidia-558/available_instances").content_string.strip() == "0"
    listing = json.loads(host.check_output(f"{AS_SYS} mdevctl list --defined --dumpjson"))
    found = {(parent, uuid, d["mdev_type"], d["start"]) for group in listing for parent, entries in group.items()
             for entry in entries for uuid, d in entry.items()}
    assert found == {(VGPU, UUID1, "nvidia-558", "auto"), (VGPU, UUID2, "nvidia-558", "manual")}
    assert driver(host, VGPU) == "nvidia"  # the parent keeps its host driver


def test_the_kernel_command_line_as_grub_mkconfig_reads_it(host):
    vendor = host.check_output("sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -1")
    iommu = "iommu=pt" if vendor == "AuthenticAMD" else "intel_iommu=on iommu=pt"
    # grub-mkconfig sources /etc/default/grub, then /etc/default/grub.d/*.cfg
    line = host.check_output("bash -c '. /etc/default/grub; for f in /etc/default/grub.d/*.cfg; do . \"$f\"; done; "
                             "echo \"$GRUB_CMDLINE_LINUX\"'")
    assert line.split() == [*iommu.split(), "vfio-pci.ids=10de:2684,10de:22ba", "default_hugepagesz=1G", "hugepagesz=1G",
                            "hugepages=2"]
    assert host.file("/run/reboot-required").exists


def test_modprobe_reads_the_vfio_options(host):
    config = host.check_output("modprobe -c")
    assert "options vfio_pci ids=10de:2684,10de:22ba" in config
    assert "softdep nouveau pre: vfio-pci" in config and "softdep snd_hda_intel pre: vfio-pci" in config


def test_systemd_reads_hugepages_and_modules(host):
    assert "vm.nr_hugepages = 64" in host.check_output("systemd-analyze cat-config sysctl.d")
    modules = host.check_output("systemd-analyze cat-config modules-load.d").split()
    assert all(m in modules for m in ("vfio", "vfio_iommu_type1", "vfio_pci"))
