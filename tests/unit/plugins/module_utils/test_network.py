# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network role's inventory check and renderers; the nft rule set is also checked by
``nft -c`` where nft is installed (it is on the CI machine: scripts/setup installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _addressing, _network as net

SEGMENTS = [{"name": "lan", "ipv4": "10.20.1.0/24", "ipv6": "fd00:20:1::/64", "mdns": True},
            {"name": "dmz", "ipv4": "10.20.2.0/24", "ipv6": "fd00:20:2::/64", "nat": False}]
RULES = [{"from": "dmz", "to": "lan", "proto": "tcp", "port": [443, "8000-8100"]}]
INGRESS = [{"port": 8443, "from": ["lan"]}, {"port": 51820, "proto": "udp"}]


def topology(segments=None, rules=None, ingress=None, domain="h1.home.arpa"):
    return net.check_topology(SEGMENTS if segments is None else segments, RULES if rules is None else rules,
                              INGRESS if ingress is None else ingress, domain)


def test_segments_get_bridges_zones_gateways_and_ports():
    lan, dmz = topology()["segments"]
    assert (lan["bridge"], lan["zone"], lan["gateway4"], lan["gateway6"], lan["dns_port"]) == (
        "br-lan", "lan.h1.home.arpa", "10.20.1.1", "fd00:20:1::1", 5301)
    assert dmz["dns_port"] == 5302 and dmz["nat"] is False and lan["nat"] is True
    assert lan["dhcp"] is True and lan["mdns"] is True and dmz["mdns"] is False


@pytest.mark.parametrize("segments,rules,ingress,message", [
    ([{"name": "lan", "ipv4": "10.20.1.0/24"}, {"name": "lab", "ipv4": "10.20.1.128/25"}], [], [],
     "segment 'lab': 10.20.1.128/25 overlaps 10.20.1.0/24 of segment 'lan'"),
    ([{"name": "lan", "ipv6": "fd00::/48"}, {"name": "lab", "ipv6": "fd00:0:0:5::/64"}], [], [],
     "segment 'lab': fd00:0:0:5::/64 overlaps fd00::/48 of segment 'lan'"),
    ([{"name": "lan", "ipv4": "10.20.1.1/24"}], [], [], "segment 'lan': ipv4 '10.20.1.1/24' is not a network prefix"),
    ([{"name": "lan", "ipv6": "fd00:1::/80"}], [], [], "must be a /64 or shorter"),
    ([{"name": "lan", "ipv4": "fd00:1::/64"}], [], [], "is not an IPv4 prefix"),
    ([{"name": "lan", "ipv4": "10.0.0.0/30"}], [], [], "too small"),
    ([{"name": "Lan", "ipv4": "10.0.0.0/24"}], [], [], "name 'Lan' must be"),
    ([{"name": "averyverylongname", "ipv4": "10.0.0.0/24"}], [], [], "1-12 lower case"),
    ([{"name": "lan"}], [], [], "needs an ipv4 subnet, an ipv6 prefix or both"),
    ([{"name": "lan", "ipv4": "10.0.0.0/24", "vlan": 5}], [], [], "unknown keys vlan"),
    ([{"name": "lan", "ipv4": "10.0.0.0/24"}, {"name": "lan", "ipv4": "10.0.1.0/24"}], [], [], "declared twice"),
    (SEGMENTS, [{"from": "lab", "to": "lan", "port": 443}], [], "rule #1 (lab -> lan): from names segment 'lab', which is not declared"),
    (SEGMENTS, [{"from": "lan", "to": "wan"}], [], "to names segment 'wan'"),
    (SEGMENTS, [{"from": "lan", "to": "lan"}], [], "a segment always reaches itself"),
    (SEGMENTS, [{"from": "lan", "to": "dmz", "port": 70000}], [], "within 1-65535"),
    (SEGMENTS, [{"from": "lan", "to": "dmz", "port": "90-80"}], [], "low end first"),
    (SEGMENTS, [{"from": "lan", "to": "dmz", "port": 80, "proto": "sctp"}], [], "proto 'sctp' must be one of tcp, udp"),
    (SEGMENTS, [], [{"port": 443, "from": ["wan"]}], "ingress #1: from names segment 'wan'"),
    (SEGMENTS, [], [{"proto": "tcp"}], "ingress #1 must be a dictionary with a port"),
    ([{"name": "ext", "kind": "vxlan", "ipv4": "10.0.0.0/24"}], [], [], "kind 'vxlan' must be one of bridge, macvlan, ipvlan"),
    ([{"name": "ext", "kind": "macvlan", "ipv4": "10.0.0.0/24"}], [], [], "kind macvlan needs uplink"),
    ([{"name": "ext", "uplink": "eth0", "ipv4": "10.0.0.0/24"}], [], [], "uplink is for kind macvlan or ipvlan"),
    ([{"name": "ext", "kind": "ipvlan", "uplink": "eth0", "interfaces": ["eth1"], "ipv4": "10.0.0.0/24"}], [], [],
     "a ipvlan segment has no interfaces to enslave"),
    ([{"name": "lan", "ipv4": "10.0.0.0/24", "interfaces": ["eth0"]},
      {"name": "ext", "kind": "macvlan", "uplink": "eth0", "ipv4": "10.0.1.0/24"}], [], [],
     "segment 'ext': uplink eth0 is a port of the bridge of segment 'lan'"),
    ([{"name": "ext", "kind": "macvlan", "uplink": "eth0", "ipv4": "10.0.1.0/24"},
      {"name": "ext2", "kind": "ipvlan", "uplink": "eth0", "ipv4": "10.0.2.0/24"}], [], [],
     "uplink eth0 already carries macvlan segment 'ext'"),
])
def test_bad_inventory_names_the_culprit(segments, rules, ingress, message):
    with pytest.raises(net.NetworkError) as error:
        net.check_topology(segments, rules, ingress, "h1.home.arpa")
    assert message in str(error.value)


def test_bad_domain():
    with pytest.raises(net.NetworkError, match="is not a DNS name"):
        topology(domain="under_score.example")


def test_rules_without_port_allow_everything_or_one_protocol():
    rules = topology(rules=[{"from": "lan", "to": "dmz"}, {"from": "dmz", "to": "lan", "proto": "udp"}])["rules"]
    assert [(r["proto"], r["ports"]) for r in rules] == [("any", []), ("udp", [])]
    ruleset = net.nft_ruleset(topology(rules=[{"from": "lan", "to": "dmz"}, {"from": "dmz", "to": "lan", "proto": "udp"}]))
    assert '    iifname "br-lan" oifname "br-dmz" accept\n' in ruleset
    assert '    iifname "br-dmz" oifname "br-lan" meta l4proto udp accept\n' in ruleset


def test_ruleset_replaces_one_table_and_keeps_ssh_first():
    ruleset = net.nft_ruleset(topology(), ssh_ports=[22, 2222])
    lines = ruleset.splitlines()
    assert lines[1:3] == ["table inet replica", "delete table inet replica"]
    ssh = lines.index('    tcp dport { 22, 2222 } accept comment "SSH stays reachable"')
    assert ssh < min(i for i, line in enumerate(lines) if "reject" in line)
    assert 'iifname "br-dmz" oifname "br-lan" tcp dport { 443, 8000-8100 } accept' in ruleset
    assert 'iifname "br-lan" tcp dport 8443 accept' in ruleset and "    udp dport 51820 accept" in ruleset
    assert 'iifname "br-lan" oifname != { "br-lan", "br-dmz" } accept' in ruleset   # lan has NAT egress
    assert 'iifname "br-dmz" oifname !=' not in ruleset                              # dmz does not
    assert "ip saddr 10.20.1.0/24 oifname" in ruleset and "ip saddr 10.20.2.0/24" not in ruleset
    assert 'iifname "br-dmz" ip6 daddr != fd00:20:2::1 udp dport 53 dnat ip6 to [fd00:20:2::1]:53' in ruleset
    assert 'iifname "br-lan" udp dport 5353 accept' in ruleset and 'iifname "br-dmz" udp dport 5353' not in ruleset


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (scripts/setup installs nftables)")
@pytest.mark.parametrize("policy", ["drop", "accept"])
def test_ruleset_passes_nft_check(tmp_path, policy):
    path = tmp_path / "replica.nft"
    path.write_text(net.nft_ruleset(topology(), input_policy=policy))
    check = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    empty = tmp_path / "empty.nft"
    empty.write_text(net.nft_ruleset(topology(segments=[], rules=[], ingress=[])))
    assert subprocess.run(["nft", "-c", "-f", str(empty)], check=False).returncode == 0


def test_bad_input_policy():
    with pytest.raises(net.NetworkError, match="drop or accept"):
        net.nft_ruleset(topology(), input_policy="reject")


def test_networkd_files_make_a_bridge_with_its_gateways_and_nics():
    lan = topology(segments=[dict(SEGMENTS[0], interfaces=["eth1"])], rules=[], ingress=[])["segments"][0]
    files = net.networkd_files(lan)
    assert sorted(files) == ["50-replica-br-lan.netdev", "50-replica-br-lan.network", "51-replica-br-lan-eth1.network"]
    assert "Kind=bridge" in files["50-replica-br-lan.netdev"]
    network = files["50-replica-br-lan.network"]
    assert "Address=10.20.1.1/24" in network and "Address=fd00:20:1::1/64\nDuplicateAddressDetection=none" in network
    assert "ConfigureWithoutCarrier=yes" in network
    assert "Bridge=br-lan" in files["51-replica-br-lan-eth1.network"]


def test_dnsmasq_serves_its_zone_and_dhcp_on_its_bridge_only():
    lan = topology()["segments"][0]
    conf = net.dnsmasq_conf(lan, "/etc/replica/network").splitlines()
    for line in ("port=5301", "listen-address=127.0.0.1", "bind-dynamic", "local=/lan.h1.home.arpa/",
                 "hostsdir=/etc/replica/network/lan/hosts", "interface=br-lan",
                 "dhcp-range=set:lan,10.20.1.0,static,255.255.255.0,12h", "dhcp-option=tag:lan,option:dns-server,10.20.1.1",
                 "dhcp-hostsdir=/etc/replica/network/lan/dhcp-hosts", "user=dnsmasq"):
        assert line in conf
    no_dhcp = topology(segments=[{"name": "v6", "ipv6": "fd00:9::/64"}], rules=[], ingress=[])["segments"][0]
    assert not any(line.startswith(("interface=", "dhcp-")) for line in net.dnsmasq_conf(no_dhcp).splitlines())


def test_unbound_stubs_each_zone_and_reverse_zone_to_its_dnsmasq():
    conf = net.unbound_conf(topology(), forwarders=["192.0.2.1"])
    assert 'module-config: "validator iterator"' in conf
    assert 'stub-zone:\n  name: "lan.h1.home.arpa."\n  stub-addr: 127.0.0.1@5301' in conf
    assert 'name: "2.20.10.in-addr.arpa."\n  stub-addr: 127.0.0.1@5302' in conf
    assert 'name: "0.0.0.0.1.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa."' in conf
    for line in ('local-zone: "home.arpa." nodefault', 'local-zone: "10.in-addr.arpa." nodefault',
                 'local-zone: "d.f.ip6.arpa." nodefault', 'domain-insecure: "lan.h1.home.arpa."',
                 "interface: 10.20.2.1", "interface: fd00:20:1::1", "access-control: 10.20.1.0/24 allow",
                 "forward-addr: 192.0.2.1"):
        assert line in conf
    private = net.unbound_conf(topology(segments=[{"name": "a", "ipv4": "172.20.0.0/16"}, {"name": "b", "ipv4": "192.168.7.0/24"}],
                                        rules=[], ingress=[], domain="example.org"))
    assert 'local-zone: "20.172.in-addr.arpa." nodefault' in private and 'local-zone: "168.192.in-addr.arpa." nodefault' in private
    assert "home.arpa" not in private and "forward-zone" not in private


def test_avahi_answers_on_the_mdns_segments_and_reflects_between_several():
    assert "allow-interfaces=br-lan\n" in net.avahi_conf(topology()) and "enable-reflector=no" in net.avahi_conf(topology())
    both = topology(segments=[dict(s, mdns=True) for s in SEGMENTS])
    assert "allow-interfaces=br-lan,br-dmz\n" in net.avahi_conf(both) and "enable-reflector=yes" in net.avahi_conf(both)


def test_segments_json_is_what_instance_address_reads():
    data = json.loads(net.segments_json(topology()))
    assert data["domain"] == "h1.home.arpa"
    assert data["segments"]["lan"] == {"name": "lan", "kind": "bridge", "link": "br-lan", "uplink": None,
                                       "bridge": "br-lan", "zone": "lan.h1.home.arpa", "ipv4": "10.20.1.0/24",
                                       "ipv6": "fd00:20:1::/64", "gateway4": "10.20.1.1", "gateway6": "fd00:20:1::1",
                                       "prefixlen4": 24, "prefixlen6": 64, "dhcp": True, "mdns": True}


def test_instance_records_round_trip():
    lan = json.loads(net.segments_json(topology()))["segments"]["lan"]
    ipv4, ipv6 = _addressing.ipv4_for("web1", lan["ipv4"]), _addressing.ipv6_for("web1", lan["ipv6"])
    hosts, dhcp = net.instance_records("web1", lan, ipv4=ipv4, ipv6=ipv6)
    assert f"{ipv4} web1.lan.h1.home.arpa web1\n" in hosts and f"{ipv6} web1.lan.h1.home.arpa web1\n" in hosts
    assert dhcp == f"web1,{ipv4}\n"
    assert net.instance_records("web1", lan, ipv4=ipv4, mac="52:54:00:00:00:01")[1] == f"52:54:00:00:00:01,{ipv4},web1\n"
    assert net.parse_hosts(hosts) == (ipv4, ipv6)
    assert net.parse_hosts(None) == (None, None)
    assert net.instance_records("v6", dict(lan, dhcp=False), ipv6=ipv6)[1] is None


def test_avahi_hosts_keeps_the_rest_of_the_file_and_replaces_its_block():
    current = "# avahi's own comment\n192.0.2.9 printer.local\n"
    first = net.avahi_hosts(current, [("web1", "10.20.1.5", "fd00::5"), ("app1", "10.20.1.6", None)])
    assert first.startswith(current)
    assert first.count(net.AVAHI_BEGIN) == 1
    assert "10.20.1.6 app1.local\n10.20.1.5 web1.local\nfd00::5 web1.local\n" in first
    second = net.avahi_hosts(first, [("web1", "10.20.1.5", None)])
    assert "app1" not in second and "10.20.1.5 web1.local" in second and second.startswith(current)
    assert net.avahi_hosts(second, []) == current


def test_rules_may_name_instances_which_get_nft_sets():
    topo = topology(rules=[{"from": "lan/app1", "to": "dmz/edge-1", "proto": "tcp", "port": 8080},
                           {"from": "dmz", "to": "lan/web1", "port": 443}])
    assert topo["rules"][0]["from"] == "lan" and topo["rules"][0]["from_instance"] == "app1"
    assert net.instance_sets(topo) == {
        "i4_lan_app1": {"segment": "lan", "instance": "app1", "family": 4},
        "i6_lan_app1": {"segment": "lan", "instance": "app1", "family": 6},
        "i4_dmz_edge_1": {"segment": "dmz", "instance": "edge-1", "family": 4},
        "i6_dmz_edge_1": {"segment": "dmz", "instance": "edge-1", "family": 6},
        "i4_lan_web1": {"segment": "lan", "instance": "web1", "family": 4},
        "i6_lan_web1": {"segment": "lan", "instance": "web1", "family": 6}}
    ruleset = net.nft_ruleset(topo)
    assert "  set i4_lan_app1 { type ipv4_addr; }" in ruleset and "  set i6_dmz_edge_1 { type ipv6_addr; }" in ruleset
    assert ('iifname "br-lan" oifname "br-dmz" ip saddr @i4_lan_app1 ip daddr @i4_dmz_edge_1 tcp dport 8080 accept'
            in ruleset)
    assert 'iifname "br-lan" oifname "br-dmz" ip6 saddr @i6_lan_app1 ip6 daddr @i6_dmz_edge_1 tcp dport 8080 accept' in ruleset
    assert 'iifname "br-dmz" oifname "br-lan" ip daddr @i4_lan_web1 tcp dport 443 accept' in ruleset
    script = net.instances_nft(net.instance_sets(topo), {"lan/app1": ("10.20.1.5", "fd00:20:1::5")})
    assert "flush set inet replica i4_lan_web1\n" in script and "add element inet replica i6_lan_app1 { fd00:20:1::5 }" in script
    assert "i4_lan_web1 {" not in script
    assert script == net.instances_nft_from_hosts(net.instance_sets(topo), {"lan/app1": "10.20.1.5 a\nfd00:20:1::5 a\n",
                                                                            "lan/web1": None})


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (scripts/setup installs nftables)")
def test_instance_rules_pass_nft_check(tmp_path):
    topo = topology(rules=[{"from": "lan/app1", "to": "dmz/edge1", "proto": "tcp", "port": 8080}])
    path = tmp_path / "replica.nft"
    path.write_text(net.nft_ruleset(topo) + net.instances_nft(net.instance_sets(topo), {"lan/app1": ("10.20.1.5", "fd00:20:1::5")}))
    check = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("end,message", [("lan/", "must be SEGMENT or SEGMENT/INSTANCE"), ("lan/Web_1", "host name label"),
                                         ("wan/web1", "names segment 'wan'")])
def test_bad_instance_in_a_rule(end, message):
    with pytest.raises(net.NetworkError, match=re.escape(message)):
        topology(rules=[{"from": "dmz", "to": end, "port": 443}])


def test_cloud_init_network_gives_the_vm_its_static_addresses():
    lan = json.loads(net.segments_json(topology()))["segments"]["lan"]
    config = net.cloud_init_network("52:54:aa:bb:cc:dd", lan, ipv4="10.20.1.9", ipv6="fd00:20:1::9")
    assert config == {"version": 2, "ethernets": {"nic0": {
        "match": {"macaddress": "52:54:aa:bb:cc:dd"}, "addresses": ["10.20.1.9/24", "fd00:20:1::9/64"],
        "gateway4": "10.20.1.1", "gateway6": "fd00:20:1::1",
        "nameservers": {"addresses": ["10.20.1.1", "fd00:20:1::1"], "search": ["lan.h1.home.arpa"]}}}}
    v6 = net.cloud_init_network("52:54:aa:bb:cc:dd", dict(lan, gateway4=None), ipv6="fd00:20:1::9")["ethernets"]["nic0"]
    assert v6["addresses"] == ["fd00:20:1::9/64"] and "gateway4" not in v6


EXT = {"name": "ext", "kind": "macvlan", "uplink": "eth0", "ipv4": "10.20.3.0/24", "ipv6": "fd00:20:3::/64"}


def test_a_macvlan_segment_sits_on_its_uplink_beside_its_instances():
    lan, ext = topology(segments=[SEGMENTS[0], EXT], rules=[{"from": "ext", "to": "lan", "port": 443}], ingress=[])["segments"]
    assert (ext["kind"], ext["link"], ext["uplink"], ext["bridge"]) == ("macvlan", "mv-ext", "eth0", None)
    assert ext["dhcp"] is False and lan["dhcp"] is True     # a shared wire may have its own DHCP server
    files = net.networkd_files(ext)
    assert sorted(files) == ["50-replica-mv-ext.netdev", "50-replica-mv-ext.network"]
    assert "Kind=macvlan\n\n[MACVLAN]\nMode=bridge" in files["50-replica-mv-ext.netdev"]
    assert "Name=mv-ext" in files["50-replica-mv-ext.network"] and "Address=10.20.3.1/24" in files["50-replica-mv-ext.network"]
    assert net.uplink_dropin(ext).endswith("[Network]\nMACVLAN=mv-ext\n") and net.uplink_dropin(lan) is None
    assert net.instance_network(ext, "10.20.3.9", "fd00:20:3::9") == {
        "type": "macvlan", "interface": "eth0", "addresses": ["10.20.3.9/24", "fd00:20:3::9/64"],
        "gateway": ["10.20.3.1", "fd00:20:3::1"], "dns": ["10.20.3.1", "fd00:20:3::1"]}
    # the container's resolver: the segment's gateways, searching its zone
    assert net.instance_files(ext, "10.20.3.9", "fd00:20:3::9") == [{
        "path": "/etc/resolv.conf",
        "content": f"nameserver 10.20.3.1\nnameserver fd00:20:3::1\nsearch {ext['zone']}\n"}]


def test_a_macvlan_segment_is_policed_by_its_host_link(tmp_path):
    topo = topology(segments=[SEGMENTS[0], EXT], rules=[{"from": "ext", "to": "lan", "port": 443}], ingress=[])
    ruleset = net.nft_ruleset(topo)
    assert 'iifname "mv-ext" oifname "br-lan" tcp dport 443 accept' in ruleset
    assert 'iifname { "br-lan", "mv-ext" } udp dport { 53, 67, 547 } accept' in ruleset
    assert 'iifname "mv-ext" ip daddr != 10.20.3.1 udp dport 53 dnat ip to 10.20.3.1:53' in ruleset
    assert "ip saddr 10.20.3.0/24 oifname" in ruleset
    if shutil.which("nft"):
        path = tmp_path / "replica.nft"
        path.write_text(ruleset)
        check = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr


def test_dhcp_on_a_shared_wire_is_not_authoritative():
    ext = topology(segments=[dict(EXT, dhcp=True)], rules=[], ingress=[])["segments"][0]
    conf = net.dnsmasq_conf(ext).splitlines()
    assert "interface=mv-ext" in conf and "dhcp-authoritative" not in conf
    assert "dhcp-authoritative" in net.dnsmasq_conf(topology()["segments"][0]).splitlines()


def test_an_ipvlan_segment():
    ext = topology(segments=[dict(EXT, kind="ipvlan")], rules=[], ingress=[])["segments"][0]
    assert ext["link"] == "iv-ext"
    assert "Kind=ipvlan\n\n[IPVLAN]\nMode=L2" in net.networkd_files(ext)["50-replica-iv-ext.netdev"]
    assert net.uplink_dropin(ext).endswith("IPVLAN=iv-ext\n")
    assert net.instance_network(ext, "10.20.3.9")["type"] == "ipvlan"
    assert "allow-interfaces=iv-ext" in net.avahi_conf(topology(segments=[dict(EXT, kind="ipvlan", mdns=True)], rules=[], ingress=[]))
