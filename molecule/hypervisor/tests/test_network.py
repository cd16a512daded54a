# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.network in a lab host: two bridge segments (lan, dmz) and a macvlan segment (ext,
on the lab host's NIC) with machines in each. Names
resolve in their zone and across zones through unbound, addresses are the addressing
functions' output, the firewall lets dmz reach lan's port 443 and nothing else across, stray
DNS is answered locally, mDNS names answer, and the services are hardened."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / ".collections"))

from ansible_collections.replica.cloud.plugins.module_utils import _addressing  # noqa: E402  pylint: disable=wrong-import-position

DOMAIN = "mol.home.arpa"
SEGMENTS = {"lan": ("10.20.1.0/24", "fd00:20:1::/64"), "dmz": ("10.20.2.0/24", "fd00:20:2::/64"),
            "ext": ("10.20.3.0/24", "fd00:20:3::/64")}
MACHINES = {"web1": "lan", "app1": "lan", "edge1": "dmz", "dhcp1": "dmz", "ext1": "ext"}
STATIC = ["app1", "edge1", "web1", "ext1"]
#: the interface a machine sees: a veth port of its bridge, or a macvlan of the lab host's host0
GUEST_IFACE = {"ext": "mv-host0"}


def inside(host, machine, command):
    return host.run(f"systemd-run -M {machine} --wait --pipe --quiet /bin/sh -c '{command}'")


def dig(host, machine, server, name, rtype="A", port=53):
    out = inside(host, machine, f"dig +short +time=2 +tries=2 -p {port} @{server} {name} {rtype}")
    return out.stdout.strip()


def record(host, machine):
    """(ipv4, ipv6) recorded for the machine in its segment's hosts folder."""
    text = host.file(f"/etc/replica/network/{MACHINES[machine]}/hosts/{machine}").content_string
    found = re.findall(r"^([0-9a-f:.]+) ", text, re.M)
    return [a for a in found if ipaddress.ip_address(a).version == 4][0], [a for a in found if ipaddress.ip_address(a).version == 6][0]


def connects(host, source, target, port, family):
    """Whether *source* gets the page from *target*:*port* over IPv4 or IPv6 (by name)."""
    fqdn = f"{target}.{MACHINES[target]}.{DOMAIN}"
    out = inside(host, source, f"curl -{family} -sS -m 5 --retry 10 --retry-connrefused --retry-delay 0 --retry-max-time 20 "
                               f"http://{fqdn}:{port}/")
    if out.rc == 0:
        return out.stdout.strip() == "hello from the machine"
    return False


def refused(host, source, target, port, family):
    """Whether the connection is refused at once by the firewall (ICMP admin-prohibited)."""
    fqdn = f"{target}.{MACHINES[target]}.{DOMAIN}"
    out = inside(host, source, f"curl -{family} -sS -m 5 http://{fqdn}:{port}/")
    # curl 7.88 (Debian 12) says "Couldn't connect", curl 8 (Debian 13) "Could not connect"
    return out.rc == 7 and any(text in out.stderr for text in ("Couldn't connect", "Could not connect", "No route"))


def test_links_carry_the_gateways(host):
    for segment, (ipv4, ipv6) in SEGMENTS.items():
        link = "mv-ext" if segment == "ext" else f"br-{segment}"
        data = json.loads(host.check_output(f"ip -j -d addr show {link}"))[0]
        if segment == "ext":
            assert data["link"] == "host0" and data["linkinfo"]["info_kind"] == "macvlan"
            assert data["linkinfo"]["info_data"]["mode"] == "bridge"
        addresses = {a["local"] for a in data["addr_info"]}
        assert str(ipaddress.ip_network(ipv4).network_address + 1) in addresses
        assert str(ipaddress.ip_network(ipv6).network_address + 1) in addresses
    # declared to systemd-networkd, not made by hand: they come back after a reboot
    links = host.check_output("networkctl list --no-legend")
    assert "br-lan" in links and "mv-ext" in links
    assert host.file("/etc/systemd/network/50-replica-br-lan.netdev").exists
    # the macvlan hangs off the uplink through a drop-in for the uplink's own .network
    assert host.file("/etc/systemd/network/10-replica-lab.network.d/50-replica-ext.conf").content_string.strip().endswith("MACVLAN=mv-ext")


@pytest.mark.parametrize("machine", STATIC)
def test_ipv6_address_is_the_functions_output(host, machine):
    ipv4_net, ipv6_net = SEGMENTS[MACHINES[machine]]
    expected = _addressing.ipv6_for(machine, ipv6_net)
    assert record(host, machine)[1] == expected
    out = inside(host, machine, f"ip -j addr show {GUEST_IFACE.get(MACHINES[machine], 'host0')}").stdout
    addresses = {a["local"] for a in json.loads(out)[0]["addr_info"]}
    assert expected in addresses
    assert record(host, machine)[0] in addresses
    assert ipaddress.ip_address(record(host, machine)[0]) in ipaddress.ip_network(ipv4_net)


def test_dhcp_gives_the_recorded_address(host):
    ipv4, _ipv6 = record(host, "dhcp1")
    deadline = time.monotonic() + 20
    found = set()
    while time.monotonic() < deadline and ipv4 not in found:
        out = inside(host, "dhcp1", "ip -j -4 addr show host0").stdout or "[]"
        found = {a["local"] for a in json.loads(out)[0]["addr_info"]} if json.loads(out) else set()
        time.sleep(0.5)
    assert ipv4 in found
    assert f"{ipv4} " in host.file("/var/lib/replica-network/dmz/dnsmasq.leases").content_string


def test_names_resolve_in_their_zone(host):
    ipv4, ipv6 = record(host, "web1")
    assert dig(host, "app1", "10.20.1.1", f"web1.lan.{DOMAIN}") == ipv4
    assert dig(host, "app1", "10.20.1.1", f"web1.lan.{DOMAIN}", "AAAA") == ipv6
    # through the machine's own resolver configuration (the segment's search domain)
    assert ipv6 in inside(host, "app1", "getent ahosts web1").stdout
    # reverse
    assert dig(host, "app1", "10.20.1.1", f"-x {ipv4}", "") == f"web1.lan.{DOMAIN}."


def test_names_resolve_across_zones_through_the_resolver(host):
    edge4, edge6 = record(host, "edge1")
    web4, _web6 = record(host, "web1")
    assert dig(host, "app1", "10.20.1.1", f"edge1.dmz.{DOMAIN}") == edge4
    assert dig(host, "edge1", "fd00:20:2::1", f"web1.lan.{DOMAIN}") == web4
    assert edge6 in host.check_output(f"dig +short @127.0.0.1 edge1.dmz.{DOMAIN} AAAA")


def test_dns_aimed_at_an_outside_resolver_is_answered_locally(host):
    web4, web6 = record(host, "web1")
    # TEST-NET and documentation addresses: nothing answers there, the redirect does
    assert dig(host, "edge1", "192.0.2.53", f"web1.lan.{DOMAIN}") == web4
    assert dig(host, "app1", "2001:db8::53", f"web1.lan.{DOMAIN}", "AAAA") == web6


@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize("source,target,port,allowed", [
    ("app1", "web1", 8080, True),     # within a segment: everything
    ("edge1", "web1", 443, True),     # the rule dmz -> lan tcp/443
    ("edge1", "web1", 8080, False),   # not in the rule
    ("web1", "edge1", 443, False),    # lan -> dmz: only app1 -> edge1:8080
    ("app1", "edge1", 8080, True),    # the instance rule lan/app1 -> dmz/edge1 tcp/8080
    ("web1", "edge1", 8080, False),   # another instance of lan
    ("app1", "edge1", 443, False),    # another port
    ("ext1", "web1", 8080, True),     # the rule ext -> lan tcp/8080, from the macvlan segment
    ("ext1", "web1", 443, False),     # not in it
    ("web1", "ext1", 8080, False),    # lan -> ext: no rule
    ("edge1", "ext1", 8080, False),   # dmz -> ext: no rule
])
def test_segmentation_matrix(host, source, target, port, allowed, family):
    if allowed:
        assert connects(host, source, target, port, family)
    else:
        assert refused(host, source, target, port, family)


def test_ingress_opens_a_host_port_for_its_segment_only(host):
    unit = "mol-listener-8443"
    host.check_output(f"systemd-run --unit={unit} --property=WorkingDirectory=/srv /usr/bin/python3 -m http.server 8443 --bind ::")
    try:
        probe = "curl -sS -m 5 -o /dev/null -w %{{http_code}} --retry 10 --retry-connrefused --retry-delay 0 http://{}:8443/"
        assert inside(host, "app1", probe.format("10.20.1.1")).stdout.strip() in ("200", "404")
        assert refused_host(host, "edge1", "10.20.2.1", 8443)
    finally:
        host.run(f"systemctl stop {unit}")


def refused_host(host, source, address, port):
    out = inside(host, source, f"curl -sS -m 5 http://{address}:{port}/")
    return out.rc == 7


def test_instance_rules_match_the_recorded_addresses(host):
    app4, app6 = record(host, "app1")
    edge4, edge6 = record(host, "edge1")
    for name, address in (("i4_lan_app1", app4), ("i6_lan_app1", app6), ("i4_dmz_edge1", edge4), ("i6_dmz_edge1", edge6)):
        assert address in host.check_output(f"nft list set inet replica {name}")
    # a reload (the table is replaced) fills them again
    host.check_output("systemctl reload replica-firewall.service")
    assert app4 in host.check_output("nft list set inet replica i4_lan_app1")


def test_the_firewall_keeps_ssh_and_loads_in_one_table(host):
    ruleset = host.check_output("nft list table inet replica")
    assert 'tcp dport 22 accept comment "SSH stays reachable"' in ruleset
    assert "policy drop" in ruleset
    assert host.run("nft -c -f /etc/replica/network/replica.nft").rc == 0
    assert host.service("replica-firewall.service").is_enabled


def test_daemons_listen_only_where_they_serve(host):
    """Who may reach what, on the host: every listening socket is on loopback, on a segment's own
    gateway address, or tied to a segment's link (DHCP); only SSH and mDNS (which avahi limits to
    the mDNS segments) listen on every address."""
    gateways = {"10.20.1.1", "10.20.2.1", "10.20.3.1", "fd00:20:1::1", "fd00:20:2::1", "fd00:20:3::1"}
    wide = []
    for line in host.check_output("ss -Hltnup").splitlines():
        fields = line.split()
        local, users = fields[4], " ".join(fields[6:])
        address, port = local.rsplit(":", 1)
        address = address.strip("[]")
        if "%" in address:  # bound to one link (dnsmasq's DHCP, a link-local address)
            continue
        if address in ("127.0.0.1", "::1") or address.startswith("127.") or address in gateways:
            continue
        if (port == "22" and "sshd" in users) or (port == "5353" and "avahi" in users) or \
                ("avahi" in users and fields[0] == "udp"):
            continue
        wide.append(line)
    assert not wide, "\n".join(wide)


def test_mdns_answers_for_the_instances(host):
    _web4, web6 = record(host, "web1")
    edge4, _edge6 = record(host, "edge1")
    # a legacy unicast mDNS query to the host's responder, from both segments
    assert dig(host, "app1", "10.20.1.1", "web1.local", "AAAA", port=5353) == web6
    assert dig(host, "app1", "10.20.1.1", "edge1.local", "A", port=5353) == edge4


@pytest.mark.parametrize("unit,limit", [("replica-dnsmasq@lan.service", 2.5), ("unbound.service", 2.5),
                                        ("avahi-daemon.service", 2.5)])
def test_services_are_hardened(host, unit, limit):
    assert host.service(unit).is_running
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert exposure <= limit, out.splitlines()[-1]


def test_dnsmasq_runs_unprivileged_and_unbound_validates(host):
    pid = host.check_output("systemctl show --property=MainPID --value replica-dnsmasq@lan.service")
    assert host.check_output(f"ps -o user= -p {pid}") == "dnsmasq"
    # the configuration is the collection's, mounted read-only over the packaged file in the
    # service's mount namespace
    root = f"/proc/{host.check_output('systemctl show -p MainPID --value unbound.service')}/root"
    assert 'module-config: "validator iterator"' in host.file(f"{root}/etc/unbound/unbound.conf").content_string
    assert host.run(f"sh -c 'echo x >> {root}/etc/unbound/unbound.conf'").rc != 0


def test_a_new_name_appears_without_a_restart(host):
    started = host.check_output("systemctl show -p ExecMainStartTimestampMonotonic --value replica-dnsmasq@lan.service")
    path = "/etc/replica/network/lan/hosts/probe"
    host.check_output(f"sh -c 'echo \"10.20.1.250 probe.lan.{DOMAIN} probe\" > {path}'")
    try:
        deadline = time.monotonic() + 10
        answer = ""
        while time.monotonic() < deadline and answer != "10.20.1.250":
            answer = host.check_output(f"dig +short @127.0.0.1 -p 5301 probe.lan.{DOMAIN}")
            time.sleep(0.2)
        assert answer == "10.20.1.250"
    finally:
        host.run(f"rm -f {path}")
    assert host.check_output("systemctl show -p ExecMainStartTimestampMonotonic --value replica-dnsmasq@lan.service") == started


def test_macvlan_instances_resolve_through_their_gateway(host):
    web4, _web6 = record(host, "web1")
    ext4, ext6 = record(host, "ext1")
    assert dig(host, "ext1", "10.20.3.1", f"web1.lan.{DOMAIN}") == web4
    assert dig(host, "app1", "10.20.1.1", f"ext1.ext.{DOMAIN}", "AAAA") == ext6
    assert dig(host, "ext1", "192.0.2.53", f"ext1.ext.{DOMAIN}") == ext4     # stray DNS is redirected here too
    assert host.run(f"ping -c 1 -W 2 {ext4}").rc == 0 and host.run(f"ping -6 -c 1 -W 2 {ext6}").rc == 0


@pytest.fixture(name="wire")
def wire_fixture():
    """A network namespace on this machine plugged into the lab bridge, the wire the lab host's
    host0 is on, with an address in segment ext: another computer on the uplink's network."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "scripts"))
    import replica_lab  # pylint: disable=import-outside-toplevel
    ns = "mol-wire"
    steps = [["ip", "netns", "add", ns], ["ip", "link", "add", "molw0", "type", "veth", "peer", "name", "molw1"],
             ["ip", "link", "set", "molw1", "master", replica_lab.BRIDGE, "up"], ["ip", "link", "set", "molw0", "netns", ns],
             ["ip", "-n", ns, "link", "set", "molw0", "up"], ["ip", "-n", ns, "addr", "add", "10.20.3.254/24", "dev", "molw0"],
             ["ip", "-n", ns, "addr", "add", "fd00:20:3::fe/64", "dev", "molw0", "nodad"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", "molw1"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_macvlan_instances_are_on_the_uplinks_wire(host, wire):
    """A machine on the uplink's network reaches ext1 directly, at layer 2: no route through the
    lab host (which would refuse it: no rule lets anything from outside into ext)."""
    ext4, ext6 = record(host, "ext1")
    for address in (ext4, f"[{ext6}]"):
        out = subprocess.run(["ip", "netns", "exec", wire, "curl", "-sS", "-m", "5", "--retry", "10", "--retry-connrefused",
                              "--retry-delay", "0", "--retry-max-time", "20", f"http://{address}:8080/"],
                             capture_output=True, text=True, check=False)
        assert out.stdout.strip() == "hello from the machine", out.stderr
    neighbours = subprocess.run(["ip", "-n", wire, "neigh", "show", ext4], capture_output=True, text=True, check=True).stdout
    mac = json.loads(inside(host, "ext1", "ip -j link show mv-host0").stdout)[0]["address"]
    assert mac in neighbours     # its own MAC answered on the wire, not the lab host's
