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


def test_microvm_boots_through_qboot_when_given():
    argv = vm.build_argv(MICRO, "tcg", bios=vm.QBOOT)
    assert after(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert after(vm.build_argv(MICRO, "tcg"), "-bios") == []


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
    assert "ExecStartPre=+/sbin/ip link set vm-win1 master br0 up" in dropin
    assert "CapabilityBoundingSet=CAP_NET_ADMIN" in dropin
    assert "\nExecStart=\nExecStart=qemu-system-x86_64 " in dropin


def test_iscsi_disk():
    argv = vm.build_argv(dict(MICRO, disks=[{"iscsi": "iscsi://10.0.0.5/iqn.2026-01.lab:disk1/0"}]), "tcg")
    assert "id=disk0,file=iscsi://10.0.0.5/iqn.2026-01.lab:disk1/0,if=none,cache=none,format=raw" in after(argv, "-drive")


@pytest.mark.parametrize("spec,message", [
    ({"name": "x", "machine": "microvm"}, "kernel"),
    ({"name": "x", "kernel": "/k", "tpm": True}, "tpm needs machine q35"),
    ({"name": "x", "kernel": "/k", "iso": "/a.iso"}, "iso needs machine q35"),
    ({"name": "x", "machine": "pc"}, "machine"),
    ({"name": "X!", "kernel": "/k"}, "machine name 'X!' must be a host name label"),
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


Q35 = {"name": "win1", "machine": "q35", "disk": "/d.raw"}


@pytest.mark.parametrize("value,listen", [
    (None, "/run/replica-vm-console/win1.sock"),
    ("unix", "/run/replica-vm-console/win1.sock"),
    ("/srv/ingress/win1.sock", "/srv/ingress/win1.sock"),
    ("127.0.0.1:6081", "127.0.0.1:6081"),
    ("[::1]:6081", "[::1]:6081"),
    ("none", None),
])
def test_web_console_listen(value, listen):
    assert vm.web_console_listen(dict(Q35, web_console=value)) == listen


def test_microvms_have_no_web_console():
    assert vm.web_console_listen({"name": "tiny1", "kernel": "/k"}) is None
    with pytest.raises(vm.VmError, match="web_console needs machine q35"):
        vm.validate({"name": "tiny1", "kernel": "/k", "web_console": "unix"})


@pytest.mark.parametrize("value", ["localhost", ":6081", "localhost:6081", "1.2.3.4:0", "1.2.3.4:70000", "relative.sock", "host:port",
                                   "127.0.0.1:6081\n", "/srv/a.sock\nExecStartPre=/bin/sh", "/srv/%n.sock", "/srv/a b.sock",
                                   "/srv/../etc/x.sock", "/" + "s" * 107])
def test_bad_web_console(value):
    with pytest.raises(vm.VmError, match="web_console"):
        vm.validate(dict(Q35, web_console=value))


def test_units_of_a_q35_vm_with_tpm_and_default_console():
    units = vm.render_units(dict(Q35, tpm=True), ["qemu"], "/var/lib/replica/vms/win1")
    assert sorted(units) == ["replica-vm-swtpm@win1.service.d/50-vm.conf", "replica-vm@win1.service.d/50-vm.conf"]
    main = units["replica-vm@win1.service.d/50-vm.conf"]
    assert "Requires=replica-vm-swtpm@win1.service" in main and "After=replica-vm-swtpm@win1.service" in main
    assert "Wants=replica-vm-console@win1.socket" in main
    tpm = units["replica-vm-swtpm@win1.service.d/50-vm.conf"]
    # the TPM's state is on the VM's (CoW) storage, and only there is it writable
    assert "ReadWritePaths=/var/lib/replica/vms/win1/tpm" in tpm
    assert "--tpmstate dir=/var/lib/replica/vms/win1/tpm,mode=0600" in tpm
    assert f"path={vm.paths('win1')['tpm']}" in tpm and "--terminate" in tpm
    assert all(text.startswith(vm.HEADER) for text in units.values())


def test_units_of_a_console_on_a_port_and_of_a_microvm():
    units = vm.render_units(dict(Q35, web_console="127.0.0.1:6081"), ["qemu"], "/vms/win1")
    assert units["replica-vm-console@win1.socket.d/50-vm.conf"].endswith("ListenStream=\nListenStream=127.0.0.1:6081\n")
    micro = vm.render_units(MICRO, ["qemu"], "/vms/tiny1")
    assert list(micro) == ["replica-vm@tiny1.service.d/50-vm.conf"] and "console" not in micro["replica-vm@tiny1.service.d/50-vm.conf"]
    none = vm.render_units(dict(Q35, web_console="none"), ["qemu"], "/vms/win1")
    assert "Wants=replica-vm-console" not in none["replica-vm@win1.service.d/50-vm.conf"]


def test_templates_bind_the_helpers_to_the_vm():
    t = vm.TEMPLATES
    assert set(t) == {"replica-vm@.service", "replica-vm-swtpm@.service", "replica-vm-console@.socket",
                      "replica-vm-console@.service", "replica-vm-websockify@.service"}
    # stopping the VM stops its TPM, its console socket and the websocket bridge
    assert "PartOf=replica-vm@%i.service" in t["replica-vm-swtpm@.service"]
    for unit in ("replica-vm-console@.socket", "replica-vm-websockify@.service"):
        assert "BindsTo=replica-vm@%i.service" in t[unit]
    # the proxy joins the bridge's private network namespace, where websockify listens on loopback
    proxy, bridge = t["replica-vm-console@.service"], t["replica-vm-websockify@.service"]
    assert "JoinsNamespaceOf=replica-vm-websockify@%i.service" in proxy and "PrivateNetwork=yes" in proxy
    assert f"127.0.0.1:{vm.WEBSOCKIFY_PORT}" in proxy and f"127.0.0.1:{vm.WEBSOCKIFY_PORT}" in bridge
    assert "--exit-idle-time=300" in proxy and "StopWhenUnneeded=yes" in bridge
    assert "--unix-target=/run/replica-vm/%i/vnc.sock" in bridge
    for name, text in t.items():
        if name.endswith(".service") and name != "replica-vm@.service":
            assert "ProtectSystem=strict" in text and "CapabilityBoundingSet=\n" in text, name


def test_qemu_runs_hardened_with_only_its_folder_writable():
    template = vm.TEMPLATES["replica-vm@.service"]
    assert "ProtectSystem=strict" in template and "CapabilityBoundingSet=\n" in template
    # QEMU needs /dev/kvm and /dev/net/tun, writable+executable memory under TCG, and the network
    for missing in ("PrivateDevices=", "MemoryDenyWriteExecute=", "PrivateNetwork="):
        assert missing not in template
    units = vm.render_units(dict(MICRO, disks=[{"path": "/srv/data disk.raw"}]), ["qemu"], "/vms/tiny1")
    dropin = units["replica-vm@tiny1.service.d/50-vm.conf"]
    assert "ReadWritePaths=/vms/tiny1\n" in dropin and "ReadWritePaths='/srv/data disk.raw'\n" in dropin
    assert "CapabilityBoundingSet" not in dropin  # user-mode networking needs no capability


def test_macvtap_device_made_with_the_guests_mac_and_passed_as_fd_3():
    spec = dict(MICRO, network={"type": "macvtap", "interface": "eno1"})
    dropin = vm.render_dropin(spec, vm.build_argv(spec, "tcg"))
    mac = vm.mac_for("tiny1")
    assert f"ExecStartPre=+/sbin/ip link add link eno1 name vm-tiny1 address {mac} type macvtap mode bridge" in dropin
    assert "ExecStopPost=+-/sbin/ip link delete vm-tiny1" in dropin
    start = [line for line in dropin.splitlines() if line.startswith("ExecStart=/")][0]
    # '$$' is systemd's literal '$': the shell opens the tap's character device as fd 3, then runs QEMU
    assert start.startswith('ExecStart=/bin/sh -c "exec 3<>/dev/tap$$(cat /sys/class/net/vm-tiny1/ifindex) && exec \\"$$@\\"" qemu ')
    assert "-netdev tap,id=n0,fd=3" in start and f"mac={mac}" in start
    with pytest.raises(vm.VmError, match="network mode"):
        vm.validate(dict(MICRO, network={"type": "macvtap", "interface": "eno1", "mode": "sideways"}))


def test_link_local_is_eui64_of_the_mac():
    assert vm.link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"


def test_addresses_without_asking_the_guest():
    user = vm.addresses(MICRO)
    assert user == {"mac": vm.mac_for("tiny1"), "addresses": ["10.0.2.15"]}
    tap = vm.addresses(dict(MICRO, network={"type": "tap", "bridge": "br0", "mac": "52:54:00:12:34:56"},
                            cloud_init={"network_config": {"version": 2, "ethernets": {"eth0": {
                                "addresses": ["10.0.0.5/24", "fd00::5/64"]}}}}))
    assert tap == {"mac": "52:54:00:12:34:56", "addresses": ["10.0.0.5", "fd00::5", "fe80::5054:ff:fe12:3456"]}
    assert vm.addresses(dict(MICRO, network={"type": "none"})) == {"mac": "", "addresses": []}


def test_instance_units_are_the_templates_instantiated():
    assert vm.instance_units("q1") == ["replica-vm@q1.service", "replica-vm-swtpm@q1.service", "replica-vm-console@q1.socket",
                                       "replica-vm-console@q1.service", "replica-vm-websockify@q1.service"]
    assert vm.guest_mac({"name": "q1"}) == vm.mac_for("q1")
    assert vm.guest_mac({"name": "q1", "network": {"mac": "52:54:00:00:00:01"}}) == "52:54:00:00:00:01"
