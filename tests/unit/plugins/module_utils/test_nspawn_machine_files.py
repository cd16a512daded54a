# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files that define an nspawn machine, rendered from its spec."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns


def sections(text):
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            out[current] = []
        elif "=" in line and current:
            out[current].append(tuple(line.split("=", 1)))
    return out


@pytest.mark.parametrize("name", ["a", "web1", "db-2", "x" * 63])
def test_good_names(name):
    assert ns.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "Web", "a_b", "a.b", "x" * 64, None])
def test_bad_names(name):
    with pytest.raises(ns.MachineError):
        ns.check_name(name)


def test_default_machine():
    got = sections(ns.render_nspawn({"name": "web1"}))
    assert got["Exec"] == [("Boot", "yes"), ("NotifyReady", "yes"), ("Hostname", "web1")]
    assert got["Files"] == [("BindReadOnly", f"{ns.HOSTS_FILE}:/etc/hosts")]
    assert got["Network"] == [("VirtualEthernet", "yes")]


@pytest.mark.parametrize("network,expected", [
    ({"type": "bridge", "bridge": "br0"}, [("VirtualEthernet", "yes"), ("Bridge", "br0")]),
    ({"type": "macvlan", "interface": "eth0"}, [("VirtualEthernet", "no"), ("MACVLAN", "eth0")]),
    ({"type": "ipvlan", "interface": "eth0"}, [("VirtualEthernet", "no"), ("IPVLAN", "eth0")]),
    ({"type": "none"}, [("Private", "yes"), ("VirtualEthernet", "no")]),
    ({"type": "host"}, [("Private", "no"), ("VirtualEthernet", "no")]),
])
def test_networks(network, expected):
    assert sections(ns.render_nspawn({"name": "m", "network": network}))["Network"] == expected


@pytest.mark.parametrize("network", [{"type": "bridge"}, {"type": "macvlan"}, {"type": "ipvlan"}, {"type": "wifi"},
                                     {"type": "bridge", "bridge": "bad name"}])
def test_bad_networks(network):
    with pytest.raises(ns.MachineError):
        ns.render_nspawn({"name": "m", "network": network})


def test_binds_capabilities_settings_timezone():
    text = ns.render_nspawn({"name": "m", "binds": ["/srv/data", {"src": "/srv/a", "dest": "/a"}],
                             "binds_ro": ["/etc/ssl:/etc/ssl"], "capabilities": ["CAP_NET_ADMIN"],
                             "timezone": "Europe/Berlin", "shared_hosts": False,
                             "settings": {"Exec": {"Hostname": "other", "Environment": ["A=1", "B=2"]},
                                          "Network": {"Port": "tcp:8080:80"}}})
    got = sections(text)
    assert ("Capability", "CAP_NET_ADMIN") in got["Exec"] and ("Timezone", "off") in got["Exec"]
    assert [v for k, v in got["Exec"] if k == "Hostname"] == ["other"]  # settings win
    assert [v for k, v in got["Exec"] if k == "Environment"] == ["A=1", "B=2"]
    assert got["Files"] == [("Bind", "/srv/data"), ("Bind", "/srv/a:/a"), ("BindReadOnly", "/etc/ssl")]
    assert ("Port", "tcp:8080:80") in got["Network"]
    for bad in ({"binds": ["relative"]}, {"capabilities": ["NET_ADMIN"]}, {"settings": {"Service": {"A": 1}}},
                {"settings": {"Exec": {"bad key": 1}}}):
        with pytest.raises(ns.MachineError):
            ns.render_nspawn(dict({"name": "m"}, **bad))


def test_dropin_limits_and_gpu():
    assert ns.render_dropin({"name": "m"}) is None
    text = ns.render_dropin({"memory_max": "2G", "cpu_weight": 200, "tasks_max": 512,
                             "gpu": {"devices": ["/dev/nvidia0", "/dev/nvidiactl"]}})
    assert "MemoryMax=2G\nCPUWeight=200\nTasksMax=512\n" in text
    assert "DeviceAllow=/dev/nvidia0 rwm\nDeviceAllow=/dev/nvidiactl rwm\n" in text
    with pytest.raises(ns.MachineError):
        ns.render_dropin({"memory_max": "lots"})


def test_gpu_binds():
    gpu = {"devices": ["/dev/nvidia0", "/dev/nvidia-uvm"], "libraries": ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"],
           "binaries": ["/usr/bin/nvidia-smi"]}
    got = sections(ns.render_nspawn({"name": "m", "gpu": gpu, "shared_hosts": False}))["Files"]
    assert got == [("Bind", "/dev/nvidia0"), ("Bind", "/dev/nvidia-uvm"),
                   ("BindReadOnly", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"), ("BindReadOnly", "/usr/bin/nvidia-smi")]


def test_firstboot_files():
    files = ns.firstboot_files({
        "name": "web1", "ssh_authorized_keys": ["ssh-ed25519 AAA a@b "],
        "users": [{"name": "alice", "groups": ["sudo"], "ssh_authorized_keys": ["ssh-ed25519 BBB"]}, {"name": "bob", "uid": 2000}],
        "files": [{"path": "/etc/motd", "content": "hi\n", "mode": "0600"}],
        "network": {"type": "bridge", "bridge": "br0", "addresses": ["10.0.0.5/24"], "gateway": "10.0.0.1", "dns": ["10.0.0.1"]},
        "nfs": [{"what": "nas:/export/media", "where": "/mnt/media"}]})
    assert files["/etc/hostname"] == ("web1\n", 0o644, 0, 0)
    assert files["/root/.ssh/authorized_keys"] == ("ssh-ed25519 AAA a@b\n", 0o600, 0, 0)
    assert files["/etc/sysusers.d/50-replica.conf"][0] == (
        'u alice 1000 "alice" /home/alice /bin/bash\nm alice sudo\nu bob 2000 "bob" /home/bob /bin/bash\n')
    assert files["/home/alice/.ssh/authorized_keys"] == ("ssh-ed25519 BBB\n", 0o600, 1000, 1000)
    assert files["/etc/motd"] == ("hi\n", 0o600, 0, 0)
    network = files["/etc/systemd/network/10-replica.network"][0]
    assert "Name=host0" in network and "Address=10.0.0.5/24" in network and "Gateway=10.0.0.1" in network
    assert "What=nas:/export/media\nWhere=/mnt/media\nType=nfs" in files["/etc/systemd/system/mnt-media.mount"][0]
    assert files["/etc/systemd/system/remote-fs.target.wants/mnt-media.automount"] == ("->", "../mnt-media.automount")
    for bad in ({"users": [{"name": "root"}]}, {"files": [{"path": "relative"}]}, {"timezone": "../etc"},
                {"network": {"addresses": ["10.0.0.5"]}}, {"nfs": [{"what": "nas", "where": "/mnt"}]}):
        with pytest.raises(ns.MachineError):
            ns.firstboot_files(dict({"name": "m"}, **bad))


def test_macvlan_interface_and_digest():
    assert ns.guest_interface({"type": "macvlan", "interface": "enp1s0f0"}) == "mv-enp1s0f0"
    assert ns.guest_interface({"type": "ipvlan", "interface": "eth0"}) == "iv-eth0"
    assert ns.guest_interface({"type": "none"}) is None
    one = ns.firstboot_digest({"name": "a", "hostname": "x"})
    assert one == ns.firstboot_digest({"name": "b", "hostname": "x", "memory_max": "1G"})
    assert one != ns.firstboot_digest({"name": "a", "hostname": "y"})


def test_hosts():
    text = ns.render_hosts({"web1": ["10.0.0.11"], "db1": ["10.0.0.12", "fd00::12/64"]})
    assert text.splitlines()[3:] == ["10.0.0.12\tdb1", "fd00::12\tdb1", "10.0.0.11\tweb1"]
