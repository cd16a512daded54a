# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""instance_address run as Ansible runs it (a process with its arguments), on a config folder of
the test's own: records, collisions, idempotence, check mode, removal, mDNS publishing, errors.
(The whole path, with dnsmasq answering from these records, is the network molecule scenario.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _addressing, _network

TOP = pathlib.Path(__file__).resolve().parents[4]
MODULE = TOP / "plugins" / "modules" / "instance_address.py"


def run(tmp_path, **args):
    args.setdefault("config_dir", str(tmp_path / "net"))
    args.setdefault("avahi_hosts", str(tmp_path / "avahi-hosts"))
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(TOP / ".collections"), PATH="/usr/bin:/bin")
    out = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True, text=True, env=env, check=False)
    return json.loads(out.stdout)


@pytest.fixture(name="net")
def net_fixture(tmp_path):
    topology = _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29", "ipv6": "fd00:20:1::/64", "mdns": True},
                                        {"name": "v6", "ipv6": "fd00:20:6::/64"}], [], [], "h1.home.arpa")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "segments.json").write_text(_network.segments_json(topology))
    (tmp_path / "avahi-hosts").write_text("# avahi\n")
    return tmp_path


def test_present_records_the_functions_addresses_and_is_idempotent(net):
    first = run(net, name="web1", segment="lan")
    assert first["changed"] is True
    assert first["ipv6"] == _addressing.ipv6_for("web1", "fd00:20:1::/64")
    assert first["ipv4"] == _addressing.ipv4_for("web1", "10.20.1.0/29")
    assert first["fqdn"] == "web1.lan.h1.home.arpa" and first["bridge"] == "br-lan"
    assert first["network"] == {"type": "bridge", "bridge": "br-lan", "addresses": [f"{first['ipv4']}/29", f"{first['ipv6']}/64"],
                                "gateway": ["10.20.1.1", "fd00:20:1::1"], "dns": ["10.20.1.1", "fd00:20:1::1"]}
    hosts = (net / "net/lan/hosts/web1").read_text()
    assert f"{first['ipv4']} web1.lan.h1.home.arpa web1" in hosts
    assert (net / "net/lan/dhcp-hosts/web1").read_text() == f"web1,{first['ipv4']}\n"
    assert f"{first['ipv6']} web1.local" in (net / "avahi-hosts").read_text()
    again = run(net, name="web1", segment="lan")
    assert again["changed"] is False and again["ipv4"] == first["ipv4"]


def test_a_collision_rehashes_and_the_first_keeps_its_address(net):
    # a /29 has 5 addresses for instances: six names must collide, each still gets a free one
    given = {}
    for index in range(5):
        given[f"m{index}"] = run(net, name=f"m{index}", segment="lan")["ipv4"]
    assert len(set(given.values())) == 5
    assert "10.20.1.1" not in given.values() and "10.20.1.7" not in given.values()
    full = run(net, name="m5", segment="lan")
    assert full.get("failed") and "the subnet is full" in full["msg"]
    assert not (net / "net/lan/hosts/m5").exists()
    # rebuilding an instance (same name) keeps its address while its record exists
    assert run(net, name="m3", segment="lan")["ipv4"] == given["m3"]


def test_check_mode_and_diff_change_nothing(net):
    out = run(net, name="web1", segment="lan", _ansible_check_mode=True, _ansible_diff=True)
    assert out["changed"] is True and "web1.lan.h1.home.arpa" in out["diff"]["after"]
    assert not (net / "net/lan/hosts/web1").exists() and "web1" not in (net / "avahi-hosts").read_text()


def test_absent_removes_the_name_and_its_mdns_entry(net):
    run(net, name="web1", segment="lan")
    run(net, name="app1", segment="lan")
    out = run(net, name="web1", segment="lan", state="absent")
    assert out["changed"] is True
    assert not (net / "net/lan/hosts/web1").exists() and not (net / "net/lan/dhcp-hosts/web1").exists()
    avahi = (net / "avahi-hosts").read_text()
    assert "web1" not in avahi and "app1.local" in avahi and avahi.startswith("# avahi\n")
    assert run(net, name="web1", segment="lan", state="absent")["changed"] is False


def test_a_segment_without_ipv4_or_mdns(net):
    out = run(net, name="web1", segment="v6")
    assert out["ipv4"] is None and out["network"]["addresses"] == [f"{_addressing.ipv6_for('web1', 'fd00:20:6::/64')}/64"]
    assert not (net / "net/v6/dhcp-hosts/web1").exists()
    assert "web1" not in (net / "avahi-hosts").read_text()


@pytest.mark.parametrize("args,message", [
    ({"name": "web1", "segment": "wan"}, "segment 'wan' is not declared on this host (declared: lan, v6)"),
    ({"name": "Web_1", "segment": "lan"}, "must be a host name label"),
    ({"name": "web1", "segment": "lan", "config_dir": "/nonexistent"}, "converge the replica.cloud.network role"),
])
def test_errors_say_what_to_fix(net, args, message):
    out = run(net, **args)
    assert out.get("failed") and message in out["msg"]


def test_instances_named_by_rules_fill_their_nft_sets(net):
    topology = _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29", "ipv6": "fd00:20:1::/64"},
                                        {"name": "v6", "ipv6": "fd00:20:6::/64"}],
                                       [{"from": "lan/web1", "to": "v6", "port": 443}], [], "h1.home.arpa")
    (net / "net" / "instance-sets.json").write_text(_network.instance_sets_json(topology))
    out = run(net, name="web1", segment="lan")
    script = (net / "net" / "instances.nft").read_text()
    assert f"add element inet replica i4_lan_web1 {{ {out['ipv4']} }}" in script
    assert f"add element inet replica i6_lan_web1 {{ {out['ipv6']} }}" in script
    assert run(net, name="app1", segment="lan")["changed"] is True    # its own record only
    assert (net / "net" / "instances.nft").read_text() == script
    run(net, name="web1", segment="lan", state="absent")
    assert "add element" not in (net / "net" / "instances.nft").read_text()


def test_absent_without_segment_finds_the_record(net):
    run(net, name="web1", segment="v6")
    out = run(net, name="web1", state="absent")
    assert out["changed"] is True and out["fqdn"] == "web1.v6.h1.home.arpa"
    assert not (net / "net/v6/hosts/web1").exists()
    assert run(net, name="web1", state="absent")["changed"] is False
    # where the network role was never used there is nothing to remove
    assert run(net, name="web1", state="absent", config_dir=str(net / "nowhere"))["changed"] is False
    assert "segment" in run(net, name="web1")["msg"]


def test_a_macvlan_segment_gives_a_macvlan_network_and_refuses_bridge_only_instances(tmp_path):
    topology = _network.check_topology([{"name": "ext", "kind": "macvlan", "uplink": "eth0", "ipv4": "10.20.3.0/24"}], [], [], "h1.home.arpa")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "segments.json").write_text(_network.segments_json(topology))
    vm = run(tmp_path, name="vm1", segment="ext", kinds=["bridge"])
    assert vm["failed"] is True and "segment 'ext' is a macvlan segment and vm1 attaches only to bridge segments" in vm["msg"]
    assert "interfaces: [NIC]" in vm["msg"] and not (tmp_path / "net/ext/hosts/vm1").exists()
    box = run(tmp_path, name="box1", segment="ext")
    assert box["changed"] is True and (box["kind"], box["link"], box["bridge"]) == ("macvlan", "mv-ext", None)
    assert box["network"] == {"type": "macvlan", "interface": "eth0", "addresses": [f"{box['ipv4']}/24"],
                              "gateway": ["10.20.3.1"], "dns": ["10.20.3.1"]}
    assert not (tmp_path / "net/ext/dhcp-hosts/box1").exists()     # no DHCP on a shared wire unless asked
