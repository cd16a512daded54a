# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's network from inventory: segments (bridges), their DHCP/DNS, the resolver and the
firewall, as pure functions (no I/O) that check the inventory and render the files.

The network role calls these through the ``replica.cloud.network_*`` filters; the
``instance_address`` module reads the checked topology back from ``segments.json`` on the target.

A segment is ``{name, kind, uplink, ipv4, ipv6, nat, dhcp, mdns, interfaces}``: its host link (a
bridge ``br-<name>``, or for ``kind: macvlan``/``ipvlan`` the host's own macvlan ``mv-<name>`` or
ipvlan ``iv-<name>`` on the ``uplink`` NIC, the instances' macvlans/ipvlans sitting beside it on the
same wire) holds the gateway: the first host address (``.1``, ``::1``) is the gateway, the resolver
and the DHCP server; its zone is
``<name>.<domain>``, served by one dnsmasq per segment on ``127.0.0.1:<dns_port>`` and reached
through unbound. A rule is ``{from, to, proto, port}`` (segments; ``port`` an int, ``"a-b"`` or a
list); an ingress entry ``{port, proto, from}`` opens a port of the host itself.
"""

from __future__ import annotations

import ipaddress
import json
import re

from ansible_collections.replica.cloud.plugins.module_utils import _names

HEADER = "Managed by replica.cloud.network"
#: dnsmasq of the n-th segment answers on 127.0.0.1:(DNS_PORT_BASE + n)
DNS_PORT_BASE = 5301
_SEGMENT_RE = re.compile(r"^[a-z][a-z0-9]{0,11}\Z")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z")
_DOMAIN_RE = re.compile(r"^(?=.{1,200}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_PROTOS = ("tcp", "udp")
_SEGMENT_KEYS = {"name", "kind", "uplink", "ipv4", "ipv6", "nat", "dhcp", "mdns", "interfaces"}
#: a segment's kind and the prefix of its host link's name: a bridge the instances are ports of, or
#: a macvlan (bridge mode) / ipvlan (L2 mode) of an uplink NIC, beside the instances' own
KINDS = {"bridge": "br-", "macvlan": "mv-", "ipvlan": "iv-"}
_RULE_KEYS = {"from", "to", "proto", "port", "comment"}
_INGRESS_KEYS = {"port", "proto", "from", "comment"}
#: unbound's default local zones a segment's reverse zone may sit in (they must be "nodefault")
_RFC1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


class NetworkError(ValueError):
    """Inventory that cannot become a network; the message names the culprit and the fix."""


def _prefix(segment, key, version):
    value = segment.get(key)
    if value in (None, ""):
        return None
    try:
        network = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise NetworkError(f"segment {segment['name']!r}: {key} {value!r} is not a network prefix "
                           f"(host bits must be zero, like {'10.20.1.0/24' if version == 4 else 'fd00:20:1::/64'}): {exc}") from None
    if network.version != version:
        raise NetworkError(f"segment {segment['name']!r}: {key} {value!r} is not an IPv{version} prefix")
    if version == 4 and network.prefixlen > 29:
        raise NetworkError(f"segment {segment['name']!r}: ipv4 {value} is too small, give a /29 or larger")
    if version == 6 and network.prefixlen > 64:
        raise NetworkError(f"segment {segment['name']!r}: ipv6 {value} must be a /64 or shorter "
                           f"(instances' addresses use 64 host bits)")
    return network


def _ports(value, where):
    """``port`` as nft text: ``443``, ``"8000-8100"`` or a list of those."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise NetworkError(f"{where}: port must not be empty")
    out = []
    for item in items:
        text = str(item).strip()
        match = re.match(r"^(\d{1,5})(?:-(\d{1,5}))?\Z", text)
        if not match or isinstance(item, bool):
            raise NetworkError(f"{where}: port {item!r} must be a number 1-65535 or a range like 8000-8100")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= low <= high <= 65535:
            raise NetworkError(f"{where}: port {item!r} must be within 1-65535, low end first")
        out.append(str(low) if low == high else f"{low}-{high}")
    return out


def _proto(value, where):
    proto = str(value or "tcp").lower()
    if proto not in _PROTOS:
        raise NetworkError(f"{where}: proto {value!r} must be one of {', '.join(_PROTOS)}")
    return proto


def _kind(raw, name, interfaces):
    """``(kind, uplink)`` of a segment: a bridge has no uplink, a macvlan/ipvlan needs one."""
    kind = raw.get("kind", "bridge")
    if kind not in KINDS:
        raise NetworkError(f"segment {name!r}: kind {kind!r} must be one of {', '.join(KINDS)}")
    uplink = raw.get("uplink")
    if kind == "bridge":
        if uplink is not None:
            raise NetworkError(f"segment {name!r}: uplink is for kind macvlan or ipvlan; a bridge takes host NICs "
                               f"as interfaces")
        return kind, None
    if not isinstance(uplink, str) or not _IFACE_RE.match(uplink):
        raise NetworkError(f"segment {name!r}: kind {kind} needs uplink, the host NIC its instances share "
                           f"(like eth0), got {uplink!r}")
    if interfaces:
        raise NetworkError(f"segment {name!r}: a {kind} segment has no interfaces to enslave; its instances "
                           f"sit on uplink {uplink} beside the host")
    return kind, uplink


def _check_uplinks(segments):
    """A NIC carries one kind of stacked links (the kernel gives a NIC one receive handler: bridge
    port, macvlans or ipvlans), so an uplink may not be a bridge port nor mix macvlan and ipvlan."""
    ports = {iface: s["name"] for s in segments for iface in s["interfaces"]}
    kinds = {}
    for segment in segments:
        uplink = segment["uplink"]
        if not uplink:
            continue
        if uplink in ports:
            raise NetworkError(f"segment {segment['name']!r}: uplink {uplink} is a port of the bridge of segment "
                               f"{ports[uplink]!r}; a NIC is either a bridge port or an uplink")
        other = kinds.setdefault(uplink, segment)
        if other["kind"] != segment["kind"]:
            raise NetworkError(f"segment {segment['name']!r}: uplink {uplink} already carries {other['kind']} "
                               f"segment {other['name']!r}; one NIC carries macvlans or ipvlans, not both")


def check_topology(segments, rules=(), ingress=(), domain="home.arpa"):
    """The checked, normalized topology, or NetworkError naming the first culprit.

    Returns ``{domain, segments: [...], rules: [...], ingress: [...]}`` where each segment has
    ``kind``, ``link`` (the host's interface in the segment), ``uplink`` (macvlan/ipvlan), ``bridge``
    (the link of a bridge segment, else None), ``zone``, ``dns_port``, ``gateway4``/``gateway6`` (``None`` without that family)
    and ``ipv4``/``ipv6`` as prefixes."""
    domain = str(domain or "").strip(".").lower()
    if not _DOMAIN_RE.match(domain):
        raise NetworkError(f"domain {domain!r} is not a DNS name (like host1.home.arpa)")
    if not isinstance(segments, list):
        raise NetworkError("segments must be a list of {name, ipv4, ipv6, ...}")
    out, names, seen = [], set(), []
    for index, raw in enumerate(segments):
        if not isinstance(raw, dict):
            raise NetworkError(f"segment #{index + 1} must be a dictionary, got {raw!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not _SEGMENT_RE.match(name):
            raise NetworkError(f"segment #{index + 1}: name {name!r} must be 1-12 lower case letters and "
                               f"digits, starting with a letter (the host link is br-NAME, mv-NAME or iv-NAME)")
        unknown = sorted(set(raw) - _SEGMENT_KEYS)
        if unknown:
            raise NetworkError(f"segment {name!r}: unknown keys {', '.join(unknown)} "
                               f"(known: {', '.join(sorted(_SEGMENT_KEYS))})")
        if name in names:
            raise NetworkError(f"segment {name!r} is declared twice")
        names.add(name)
        ipv4, ipv6 = _prefix(raw, "ipv4", 4), _prefix(raw, "ipv6", 6)
        if ipv4 is None and ipv6 is None:
            raise NetworkError(f"segment {name!r} needs an ipv4 subnet, an ipv6 prefix or both")
        for net in (ipv4, ipv6):
            if net is None:
                continue
            for other_name, other in seen:
                if other.version == net.version and net.overlaps(other):
                    raise NetworkError(f"segment {name!r}: {net} overlaps {other} of segment {other_name!r}; "
                                       f"give each segment its own subnet")
            seen.append((name, net))
        interfaces = raw.get("interfaces") or []
        for iface in interfaces:
            if not isinstance(iface, str) or not _IFACE_RE.match(iface):
                raise NetworkError(f"segment {name!r}: interface {iface!r} is not an interface name")
        kind, uplink = _kind(raw, name, interfaces)
        link = KINDS[kind] + name
        out.append({
            "name": name, "kind": kind, "link": link, "uplink": uplink, "bridge": link if kind == "bridge" else None,
            "zone": f"{name}.{domain}", "dns_port": DNS_PORT_BASE + index,
            "ipv4": str(ipv4) if ipv4 else None, "ipv6": str(ipv6) if ipv6 else None,
            "gateway4": str(ipv4.network_address + 1) if ipv4 else None,
            "gateway6": str(ipv6.network_address + 1) if ipv6 else None,
            "prefixlen4": ipv4.prefixlen if ipv4 else None, "prefixlen6": ipv6.prefixlen if ipv6 else None,
            "nat": bool(raw.get("nat", True)), "dhcp": bool(raw.get("dhcp", kind == "bridge")) and ipv4 is not None,
            "mdns": bool(raw.get("mdns", False)), "interfaces": list(interfaces),
        })
    _check_uplinks(out)
    checked_rules = []
    for index, rule in enumerate(rules or []):
        where = f"rule #{index + 1} ({rule.get('from')} -> {rule.get('to')})" if isinstance(rule, dict) else f"rule #{index + 1}"
        if not isinstance(rule, dict):
            raise NetworkError(f"{where} must be a dictionary like {{from: lab, to: lan, proto: tcp, port: 443}}")
        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            raise NetworkError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_RULE_KEYS))})")
        ends = {}
        for end in ("from", "to"):
            segment, slash, instance = str(rule.get(end) or "").partition("/")
            if segment not in names:
                raise NetworkError(f"{where}: {end} names segment {segment!r}, which is not declared "
                                   f"(declared: {', '.join(sorted(names)) or 'none'})")
            if slash and not _names.is_machine_name(instance):
                raise NetworkError(f"{where}: {end} {rule.get(end)!r} must be SEGMENT or SEGMENT/INSTANCE, "
                                   f"the instance a host name label ({_names.MACHINE_NAME_RULE})")
            ends[end] = (segment, instance or None)
        if ends["from"][0] == ends["to"][0]:
            raise NetworkError(f"{where}: a segment always reaches itself; a rule needs two segments")
        ports = _ports(rule["port"], where) if rule.get("port") is not None else []
        if not ports and str(rule.get("proto") or "any").lower() == "any":
            proto = "any"
        else:
            proto = _proto(rule.get("proto"), where)
        checked_rules.append({"from": ends["from"][0], "to": ends["to"][0], "proto": proto, "ports": ports,
                              "from_instance": ends["from"][1], "to_instance": ends["to"][1],
                              "comment": str(rule.get("comment") or "")})
    checked_ingress = []
    for index, entry in enumerate(ingress or []):
        where = f"ingress #{index + 1}"
        if not isinstance(entry, dict) or "port" not in entry:
            raise NetworkError(f"{where} must be a dictionary with a port, like {{port: 443, proto: tcp, from: [lan]}}")
        unknown = sorted(set(entry) - _INGRESS_KEYS)
        if unknown:
            raise NetworkError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_INGRESS_KEYS))})")
        sources = entry.get("from", "any")
        sources = [sources] if isinstance(sources, str) else list(sources)
        for source in sources:
            if source != "any" and source not in names:
                raise NetworkError(f"{where}: from names segment {source!r}, which is not declared "
                                   f"(use a declared segment or 'any')")
        checked_ingress.append({"ports": _ports(entry["port"], where), "proto": _proto(entry.get("proto"), where),
                                "from": ["any"] if "any" in sources else sources,
                                "comment": str(entry.get("comment") or "")})
    return {"domain": domain, "segments": out, "rules": checked_rules, "ingress": checked_ingress}


def _set(items):
    items = list(items)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _quoted(names):
    return _set(f'"{n}"' for n in names)


def networkd_files(segment):
    """``{file name: content}`` for systemd-networkd: the segment's host link (a bridge, or a
    macvlan/ipvlan of its uplink), its addresses, a bridge's enslaved NICs. A macvlan/ipvlan also
    needs a line in its uplink's own .network (see :func:`uplink_dropin`)."""
    link, kind = segment["link"], segment["kind"]
    netdev = [f"# {HEADER}", "[NetDev]", f"Name={link}", f"Kind={kind}"]
    if kind == "macvlan":
        netdev += ["", "[MACVLAN]", "Mode=bridge"]   # the host's macvlan and the instances' reach each other
    elif kind == "ipvlan":
        netdev += ["", "[IPVLAN]", "Mode=L2"]
    files = {f"50-replica-{link}.netdev": "\n".join(netdev) + "\n"}
    lines = [f"# {HEADER}", "[Match]", f"Name={link}", "", "[Link]", "RequiredForOnline=no", "",
             "[Network]", "ConfigureWithoutCarrier=yes", "IPv6AcceptRA=no", "LinkLocalAddressing=ipv6"]
    if segment["ipv6"]:
        lines.append("IPv6SendRA=no")
    for family in ("4", "6"):
        if segment[f"gateway{family}"]:
            lines += ["", "[Address]", f"Address={segment[f'gateway{family}']}/{segment[f'prefixlen{family}']}"]
            if family == "6":
                # no DAD on the gateway: it is ours by definition, and a tentative address cannot be bound
                lines.append("DuplicateAddressDetection=none")
    files[f"50-replica-{link}.network"] = "\n".join(lines) + "\n"
    for iface in segment["interfaces"]:
        files[f"51-replica-{link}-{iface}.network"] = (f"# {HEADER}\n[Match]\nName={iface}\n\n[Network]\n"
                                                       f"Bridge={link}\n")
    return files


def uplink_dropin(segment):
    """The drop-in for the uplink's own .network that stacks a macvlan/ipvlan segment's host link
    on it (``<uplink's .network>.d/50-replica-<segment>.conf``), or None for a bridge segment.
    networkd creates such links only with their parent's configuration, so the role adds this
    drop-in to whichever file configures the uplink and leaves the rest of that file alone."""
    kind = segment["kind"]
    if kind == "bridge":
        return None
    return f"# {HEADER}: segment {segment['name']}\n[Network]\n{kind.upper()}={segment['link']}\n"


def dnsmasq_conf(segment, config_dir="/etc/replica/network"):
    """One dnsmasq per segment: authoritative DNS for the segment's zone on 127.0.0.1 (unbound
    forwards to it), DHCPv4 on the bridge for the instances recorded in its dhcp-hosts folder."""
    name, zone = segment["name"], segment["zone"]
    lines = [f"# {HEADER}: segment {name}",
             f"port={segment['dns_port']}", "listen-address=127.0.0.1", "bind-dynamic",
             "no-resolv", "no-hosts", "no-poll", "no-ping", "domain-needed", "bogus-priv",
             f"local=/{zone}/", f"domain={zone}", f"hostsdir={config_dir}/{name}/hosts",
             "log-facility=-", "user=dnsmasq", "group=nogroup"]
    if segment["dhcp"]:
        net = ipaddress.ip_network(segment["ipv4"])
        lines += [f"interface={segment['link']}",
                  f"dhcp-range=set:{name},{net.network_address},static,{net.netmask},12h",
                  f"dhcp-option=tag:{name},option:router,{segment['gateway4']}",
                  f"dhcp-option=tag:{name},option:dns-server,{segment['gateway4']}",
                  f"dhcp-option=tag:{name},option:domain-search,{zone}",
                  f"dhcp-hostsdir={config_dir}/{name}/dhcp-hosts",
                  f"dhcp-leasefile=/var/lib/replica-network/{name}/dnsmasq.leases"]
        if segment["kind"] == "bridge":
            # the only DHCP server on its own bridge; on a shared wire (macvlan/ipvlan) another
            # server may own other clients, which an authoritative dnsmasq would NAK
            lines.append("dhcp-authoritative")
    return "\n".join(lines) + "\n"


def _reverse_zones(segment):
    """Reverse zones of the segment's subnets at a label boundary (PTR records from dnsmasq)."""
    zones = []
    if segment["ipv4"]:
        net = ipaddress.ip_network(segment["ipv4"])
        octets = net.prefixlen // 8
        if octets:
            labels = str(net.network_address).split(".")[:octets]
            zones.append(".".join(reversed(labels)) + ".in-addr.arpa")
    if segment["ipv6"]:
        net = ipaddress.ip_network(segment["ipv6"])
        nibbles = net.prefixlen // 4
        labels = net.network_address.exploded.replace(":", "")[:nibbles]
        zones.append(".".join(reversed(labels)) + ".ip6.arpa")
    return zones


def _default_zone_for(segment):
    """unbound's built-in local zones that would hide the segment's reverse zones."""
    out = []
    if segment["ipv4"]:
        net = ipaddress.ip_network(segment["ipv4"])
        for private in _RFC1918:
            if net.subnet_of(private):
                if private.prefixlen == 8:
                    out.append("10.in-addr.arpa")
                elif private.prefixlen == 12:
                    out.append(f"{int(str(net.network_address).split('.')[1])}.172.in-addr.arpa")
                else:
                    out.append("168.192.in-addr.arpa")
    if segment["ipv6"] and ipaddress.ip_network(segment["ipv6"]).subnet_of(ipaddress.ip_network("fd00::/8")):
        out.append("d.f.ip6.arpa")
    return out


def unbound_conf(topology, forwarders=(), listen_extra=()):
    """unbound.conf: a validating recursive resolver for the host and the segments, each
    segment's zone (and reverse zones) stubbed to its dnsmasq."""
    domain = topology["domain"]
    segments = topology["segments"]
    lines = [f"# {HEADER}", "server:", "  interface-automatic: no", "  ip-freebind: yes",
             "  interface: 127.0.0.1", "  interface: ::1"]
    lines += [f"  interface: {a}" for s in segments for a in (s["gateway4"], s["gateway6"]) if a]
    lines += [f"  interface: {a}" for a in listen_extra]
    lines += ["  access-control: 127.0.0.0/8 allow", "  access-control: ::1/128 allow"]
    lines += [f"  access-control: {n} allow" for s in segments for n in (s["ipv4"], s["ipv6"]) if n]
    lines += ['  chroot: ""', '  username: "unbound"', '  directory: "/etc/unbound"',
              '  auto-trust-anchor-file: "/var/lib/unbound/root.key"',
              '  module-config: "validator iterator"', "  do-not-query-localhost: no",
              "  hide-identity: yes", "  hide-version: yes", "  qname-minimisation: yes",
              f'  domain-insecure: "{domain}."', f'  private-domain: "{domain}."']
    if domain == "home.arpa" or domain.endswith(".home.arpa"):
        lines.append('  local-zone: "home.arpa." nodefault')
    defaults = sorted({z for s in segments for z in _default_zone_for(s)})
    lines += [f'  local-zone: "{z}." nodefault' for z in defaults]
    for segment in segments:
        for zone in [segment["zone"]] + _reverse_zones(segment):
            lines.append(f'  domain-insecure: "{zone}."')
    for segment in segments:
        for zone in [segment["zone"]] + _reverse_zones(segment):
            lines += ["", "stub-zone:", f'  name: "{zone}."', f"  stub-addr: 127.0.0.1@{segment['dns_port']}"]
    if forwarders:
        lines += ["", "forward-zone:", '  name: "."']
        lines += [f"  forward-addr: {f}" for f in forwarders]
    return "\n".join(lines) + "\n"


def nft_ruleset(topology, ssh_ports=(22,), input_policy="drop"):
    """The host's firewall as one nft script that replaces table ``inet replica`` atomically.

    input: loopback, replies, ICMP and the SSH ports always (a broken inventory cannot lock
    you out); DHCP, DNS (and mDNS where enabled) from the segments; the ingress ports; then
    ``input_policy`` for the rest. forward: within a segment, the rules between segments,
    egress to the outside for segments with ``nat``; any other traffic from or to a segment is
    refused (ICMP admin-prohibited, so clients fail fast); other traffic is left alone.
    prerouting: DNS from a segment to any other resolver is redirected to the local one.
    postrouting: masquerade the segments' egress."""
    if input_policy not in ("drop", "accept"):
        raise NetworkError(f"input policy {input_policy!r} must be drop or accept")
    segments = topology["segments"]
    by_name = {s["name"]: s for s in segments}
    links = [s["link"] for s in segments]
    ssh = [str(p) for p in ssh_ports] or ["22"]
    lines = [f"# {HEADER}: loaded in one transaction by replica-firewall.service",
             "table inet replica", "delete table inet replica", "", "table inet replica {"]
    for name, spec in sorted(instance_sets(topology).items()):
        lines.append(f"  set {name} {{ type {'ipv4_addr' if spec['family'] == 4 else 'ipv6_addr'}; }}")
    lines += ["  chain input {", f"    type filter hook input priority filter; policy {input_policy};",
              "    iif lo accept", "    ct state established,related accept", "    ct state invalid drop",
              "    meta l4proto { icmp, ipv6-icmp } accept",
              f"    tcp dport {_set(ssh)} accept comment \"SSH stays reachable\""]
    if links:
        lines += [f"    iifname {_quoted(links)} udp dport {{ 53, 67, 547 }} accept",
                  f"    iifname {_quoted(links)} tcp dport 53 accept"]
        mdns = [s["link"] for s in segments if s["mdns"]]
        if mdns:
            lines.append(f"    iifname {_quoted(mdns)} udp dport 5353 accept")
    for entry in topology["ingress"]:
        source = "" if entry["from"] == ["any"] else f"iifname {_quoted(by_name[n]['link'] for n in entry['from'])} "
        comment = f' comment "{entry["comment"]}"' if entry["comment"] else ""
        lines.append(f"    {source}{entry['proto']} dport {_set(entry['ports'])} accept{comment}")
    if links and input_policy == "drop":
        lines.append(f"    iifname {_quoted(links)} reject with icmpx admin-prohibited")
    lines += ["  }", ""]
    lines += ["  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    if links:
        lines += [f"    iifname {_quoted(links)} ct state invalid drop",
                  f"    oifname {_quoted(links)} ct state established,related accept",
                  f"    iifname {_quoted(links)} ct state established,related accept"]
        lines += [f'    iifname "{b}" oifname "{b}" accept' for b in links]
        for rule in topology["rules"]:
            src, dst = by_name[rule["from"]], by_name[rule["to"]]
            if rule["ports"]:
                match = f" {rule['proto']} dport {_set(rule['ports'])}"
            else:
                match = "" if rule["proto"] == "any" else f" meta l4proto {rule['proto']}"
            comment = f' comment "{rule["comment"]}"' if rule["comment"] else ""
            for addresses in _rule_address_matches(rule, src, dst):
                lines.append(f'    iifname "{src["link"]}" oifname "{dst["link"]}"{addresses}{match} accept{comment}')
        egress = [s["link"] for s in segments if s["nat"]]
        if egress:
            lines.append(f"    iifname {_quoted(egress)} oifname != {_quoted(links)} accept")
        lines += [f"    iifname {_quoted(links)} reject with icmpx admin-prohibited",
                  f"    oifname {_quoted(links)} reject with icmpx admin-prohibited"]
    lines += ["  }", ""]
    lines += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for s in segments:
        for family, gateway in (("ip", s["gateway4"]), ("ip6", s["gateway6"])):
            if gateway:
                for proto in _PROTOS:
                    lines.append(f'    iifname "{s["link"]}" {family} daddr != {gateway} {proto} dport 53 '
                                 f'dnat {family} to {"[" + gateway + "]" if family == "ip6" else gateway}:53')
    lines += ["  }", ""]
    lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    for s in segments:
        if s["nat"] and links:
            for family, net in (("ip", s["ipv4"]), ("ip6", s["ipv6"])):
                if net:
                    lines.append(f"    {family} saddr {net} oifname != {_quoted(links)} masquerade")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def set_name(family, segment, instance):
    """The nft set holding an instance's addresses of one family, for the rules that name it."""
    return f"i{family}_{segment}_{instance.replace('-', '_')}"


def _rule_address_matches(rule, src, dst):
    """The address matches of a rule line: one empty match for a segment-to-segment rule, else
    one per family both ends have (an instance's addresses are in its nft sets)."""
    if not rule["from_instance"] and not rule["to_instance"]:
        return [""]
    out = []
    for family, keyword in ((4, "ip"), (6, "ip6")):
        if not (src[f"gateway{family}"] and dst[f"gateway{family}"]):
            continue
        match = ""
        if rule["from_instance"]:
            match += f" {keyword} saddr @{set_name(family, rule['from'], rule['from_instance'])}"
        if rule["to_instance"]:
            match += f" {keyword} daddr @{set_name(family, rule['to'], rule['to_instance'])}"
        out.append(match)
    return out


def instance_sets(topology):
    """``{set name: {segment, instance, family}}`` for every instance the rules name."""
    by_name = {s["name"]: s for s in topology["segments"]}
    out = {}
    for rule in topology["rules"]:
        for end in ("from", "to"):
            instance = rule.get(f"{end}_instance")
            if not instance:
                continue
            for family in (4, 6):
                if by_name[rule[end]][f"gateway{family}"]:
                    out[set_name(family, rule[end], instance)] = {"segment": rule[end], "instance": instance, "family": family}
    return out


def instance_sets_json(topology):
    """What the modules read to keep the instances' nft sets filled."""
    return json.dumps(instance_sets(topology), indent=2, sort_keys=True) + "\n"


def instances_nft(sets, records):
    """The nft script that fills the instance sets (one transaction): each set is flushed, then
    gets the recorded addresses of its instance (*records*: ``{"SEGMENT/NAME": (ipv4, ipv6)}``)."""
    lines = [f"# {HEADER}: the addresses of the instances the rules name (instance_address keeps this file)"]
    for name in sorted(sets):
        spec = sets[name]
        lines.append(f"flush set inet replica {name}")
        address = (records.get(f"{spec['segment']}/{spec['instance']}") or (None, None))[0 if spec["family"] == 4 else 1]
        if address:
            lines.append(f"add element inet replica {name} {{ {address} }}")
    return "\n".join(lines) + "\n"


def instances_nft_from_hosts(sets, hosts_texts):
    """instances_nft from the instances' hosts files ``{"SEGMENT/NAME": text or None}``."""
    return instances_nft(sets, {key: parse_hosts(text) for key, text in (hosts_texts or {}).items() if text})


def avahi_conf(topology):
    """avahi-daemon.conf for the segments with mDNS: it answers and reflects only there."""
    links = [s["link"] for s in topology["segments"] if s["mdns"]]
    return (f"# {HEADER}\n[server]\nuse-ipv4=yes\nuse-ipv6=yes\nallow-interfaces={','.join(links)}\n"
            f"ratelimit-interval-usec=1000000\nratelimit-burst=1000\n\n[wide-area]\nenable-wide-area=no\n\n"
            f"[publish]\npublish-hinfo=no\npublish-workstation=no\n\n[reflector]\n"
            f"enable-reflector={'yes' if len(links) > 1 else 'no'}\n\n[rlimits]\n")


def segments_json(topology):
    """What the instance_address module reads on the target."""
    keys = ("name", "kind", "link", "uplink", "bridge", "zone", "ipv4", "ipv6", "gateway4", "gateway6", "prefixlen4", "prefixlen6", "dhcp", "mdns")
    data = {"domain": topology["domain"], "segments": {s["name"]: {k: s[k] for k in keys} for s in topology["segments"]}}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def check_mac(mac):
    """The one rule for a MAC address the caller gives: six colon-separated hex pairs, unicast
    (it goes into dnsmasq's reservations, where a comma or newline would add others). Returns it
    in lower case."""
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac.lower()):
        raise NetworkError(f"mac {mac!r} must be six hex pairs separated by ':', such as 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise NetworkError(f"mac {mac!r} is a multicast address (its first octet is odd): give a unicast one")
    return mac.lower()


def instance_records(name, segment, ipv4=None, ipv6=None, mac=None):
    """The hosts-file entry (dnsmasq ``hostsdir``) and the DHCP reservation (``dhcp-hostsdir``,
    or None without DHCP) of instance *name* in *segment* (a segments.json entry)."""
    fqdn = f"{name}.{segment['zone']}"
    hosts = f"# {HEADER}: instance {name}\n"
    hosts += "".join(f"{a} {fqdn} {name}\n" for a in (ipv4, ipv6) if a)
    dhcp = None
    if segment.get("dhcp") and ipv4:
        dhcp = f"{check_mac(mac)},{ipv4},{name}\n" if mac else f"{name},{ipv4}\n"
    return hosts, dhcp


def parse_hosts(text):
    """``(ipv4, ipv6)`` recorded in an instance's hosts file (None where absent)."""
    ipv4 = ipv6 = None
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        if address.version == 4 and ipv4 is None:
            ipv4 = str(address)
        elif address.version == 6 and ipv6 is None:
            ipv6 = str(address)
    return ipv4, ipv6


AVAHI_BEGIN = "# BEGIN replica.cloud instances (instance_address; edits inside are replaced)"
AVAHI_END = "# END replica.cloud instances"


def avahi_hosts(current, records):
    """``/etc/avahi/hosts`` with its managed block replaced by *records* ``[(name, ipv4, ipv6)]``
    (the instances of the mDNS segments, published as ``NAME.local``); the rest is kept."""
    lines = (current or "").splitlines()
    if AVAHI_BEGIN in lines and AVAHI_END in lines[lines.index(AVAHI_BEGIN):]:
        start = lines.index(AVAHI_BEGIN)
        end = lines.index(AVAHI_END, start)
        lines = lines[:start] + lines[end + 1:]
    block = []
    for name, ipv4, ipv6 in sorted(records, key=lambda r: r[0]):
        block += [f"{a} {name}.local" for a in (ipv4, ipv6) if a]
    if block:
        lines += [AVAHI_BEGIN] + block + [AVAHI_END]
    return "\n".join(lines) + "\n" if lines else ""


def instance_network(segment, ipv4=None, ipv6=None):
    """The ``network`` option of nspawn_machine for an instance with these addresses: a port of
    the segment's bridge (or a macvlan/ipvlan of its uplink), static addresses, the segment's
    gateways as routers and resolvers."""
    addresses, gateways = [], []
    for family, address in (("4", ipv4), ("6", ipv6)):
        if address and segment.get(f"gateway{family}"):
            addresses.append(f"{address}/{segment[f'prefixlen{family}']}")
            gateways.append(segment[f"gateway{family}"])
    kind = segment.get("kind", "bridge")
    attach = {"type": "bridge", "bridge": segment["bridge"]} if kind == "bridge" else {"type": kind, "interface": segment["uplink"]}
    return dict(attach, addresses=addresses, gateway=gateways, dns=gateways)


def instance_files(segment, ipv4=None, ipv6=None):
    """The first-boot files of a container in *segment* (the ``files`` option of nspawn_machine):
    ``/etc/resolv.conf`` naming the segment's resolvers (its gateways) and searching its zone."""
    dns = instance_network(segment, ipv4=ipv4, ipv6=ipv6)["dns"]
    lines = [f"nameserver {address}" for address in dns] + [f"search {segment['zone']}"]
    return [{"path": "/etc/resolv.conf", "content": "\n".join(lines) + "\n"}]


def cloud_init_network(mac, segment, ipv4=None, ipv6=None):
    """A cloud-init network configuration (version 2) that gives the NIC with *mac* the
    instance's static addresses, the segment's gateways and resolver (for VMs)."""
    network = instance_network(segment, ipv4=ipv4, ipv6=ipv6)
    nic = {"match": {"macaddress": mac}, "addresses": network["addresses"],
           "nameservers": {"addresses": network["dns"], "search": [segment["zone"]]}}
    for gateway in network["gateway"]:
        nic["gateway6" if ":" in gateway else "gateway4"] = gateway
    return {"version": 2, "ethernets": {"nic0": nic}}
