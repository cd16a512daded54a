#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_address
short_description: An instance's deterministic addresses and its name in its segment's DNS zone
version_added: 0.1.0
description:
  - Gives a container or VM its addresses in a network segment made by the
    M(replica.cloud.network) role, and its name in the segment's zone
    (C(NAME.SEGMENT.DOMAIN)), and takes them away again.
  - The IPv6 and IPv4 addresses are derived from the instance's name and the segment's prefix
    by the functions of C(plugins/module_utils/_addressing.py) (SHA-256 host bits; network,
    gateway and broadcast addresses never given), the same as the
    C(replica.cloud.instance_ipv6) and C(replica.cloud.instance_ipv4) filters. An address
    already recorded for another instance of the segment counts as taken, so a collision
    hashes again; an instance keeps the addresses it was given as long as its record exists.
  - The record is a hosts file in the segment's C(hosts) folder, which the segment's dnsmasq
    watches (the name resolves at once, and is gone as soon as the file is removed), and a DHCP
    reservation in its C(dhcp-hosts) folder (so an instance that asks by DHCP gets the same IPv4
    address).
  - Where the firewall rules of the network role name the instance (C(SEGMENT/NAME)), its
    addresses go into the nft sets those rules match on (C(instances.nft), loaded at once).
  - Reads the segments from C(segments.json) in O(config_dir), written by the network role.
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "The replica.cloud.network role converged on the host (its segments.json); nftables and avahi-daemon where its firewall and mDNS run."
options:
  name:
    description: The instance's name, a host name label (1-63 of C([a-z0-9-]), not starting or ending with C(-)).
    type: str
    required: true
  segment:
    description:
      - The segment, as declared in C(network_segments). Required with O(state=present); with
        O(state=absent) and no segment the instance's record is removed from whichever segment
        holds it (nothing happens where it has none, or where the network role is not used).
    type: str
  state:
    description:
      - V(present) - the instance has its addresses and its name.
      - V(absent) - its record is removed and its name no longer resolves.
    type: str
    choices: [present, absent]
    default: present
  mac:
    description:
      - The MAC address of the instance's NIC in the segment, to make the DHCP reservation by
        MAC instead of by the host name the client sends.
      - Six hex pairs separated by C(:), unicast (C(_network.check_mac)); anything else is refused
        before anything is written.
    type: str
  kinds:
    description:
      - The kinds of segment this instance can attach to; O(state=present) in a segment of another
        kind fails before anything is written. A VM's tap needs a bridge (the vms role passes
        V([bridge])); a container attaches to any kind (a macvlan or ipvlan of the segment's uplink).
    type: list
    elements: str
    choices: [bridge, macvlan, ipvlan]
    default: [bridge, macvlan, ipvlan]
  config_dir:
    description: Where the network role keeps the segments' configuration.
    type: path
    default: /etc/replica/network
  avahi_hosts:
    description:
      - The avahi static hosts file. In a segment with mDNS the instance is published there as
        C(NAME.local) (a managed block; the rest of the file is kept) and avahi reloads it.
        Nothing is written where the file does not exist (avahi is not installed).
    type: path
    default: /etc/avahi/hosts
notes:
  - Standard library only; the DHCP reservation of a removed instance is dropped by a SIGHUP to
    the segment's dnsmasq (C(replica-dnsmasq@SEGMENT.service)) when it runs.
  - "Concurrency: reading the segment's records, choosing a free address and writing it happen under
    the segment's lock (C(/run/replica/locks), root's alone), so two runs at once never choose the
    same address; a run waits up to 600 s, then fails naming the holder."
  - "Crash consistency: each record is written whole (a rename), and an address is derived from the
    name, so killed at any point a re-run writes the same records and converges."
attributes:
  check_mode:
    description: Reports the addresses and records it would write or remove, and writes nothing.
    support: full
  diff_mode:
    description: Shows the instance's records (and the mDNS block) before and after.
    support: full
"""

EXAMPLES = r"""
- name: Addresses and a name for web1 in the lan segment
  replica.cloud.instance_address:
    name: web1
    segment: lan
  register: web1_address

- name: A container with them
  replica.cloud.nspawn_machine:
    name: web1
    image: debian-12
    network: "{{ web1_address.network }}"

- name: Remove the name
  replica.cloud.instance_address:
    name: web1
    segment: lan
    state: absent
"""

RETURN = r"""
ipv4:
  description: The instance's IPv4 address (none when the segment has no IPv4 subnet).
  returned: state is present
  type: str
  sample: 10.20.1.57
ipv6:
  description: The instance's IPv6 address (none when the segment has no IPv6 prefix).
  returned: state is present
  type: str
  sample: fd00:20:1::5c1e:9a0b:3f2d:71c4
fqdn:
  description: The instance's name in the segment's zone.
  returned: always
  type: str
  sample: web1.lan.host1.home.arpa
network:
  description:
    - The network option for M(replica.cloud.nspawn_machine) (a port of the bridge, or a macvlan/ipvlan of the
      segment's uplink; static addresses, gateways, DNS).
  returned: state is present
  type: dict
  sample: {type: bridge, bridge: br-lan, addresses: [10.20.1.57/24], gateway: [10.20.1.1], dns: [10.20.1.1]}
files:
  description:
    - The first-boot files for M(replica.cloud.nspawn_machine) (its O(replica.cloud.nspawn_machine#module:files) option) - a
      C(/etc/resolv.conf) with the segment's resolvers that searches its zone.
  returned: state is present
  type: list
  elements: dict
  sample: [{path: /etc/resolv.conf, content: "nameserver 10.20.1.1\nsearch lan.host1.home.arpa\n"}]
cloud_init_network:
  description: A cloud-init network configuration (version 2) with these addresses for the NIC with O(mac), for a VM's seed.
  returned: state is present and O(mac) is given
  type: dict
  sample: {version: 2, ethernets: {nic0: {match: {macaddress: "52:54:4f:1a:2b:3c"}, addresses: [10.20.1.57/24], gateway4: 10.20.1.1}}}
zone:
  description: The segment's DNS zone.
  returned: always
  type: str
  sample: lan.host1.home.arpa
bridge:
  description: The segment's bridge (none for a macvlan or ipvlan segment).
  returned: always
  type: str
  sample: br-lan
kind:
  description: The segment's kind, V(bridge), V(macvlan) or V(ipvlan).
  returned: always
  type: str
  sample: bridge
link:
  description: The host's own interface in the segment (C(br-NAME), C(mv-NAME) or C(iv-NAME)), which holds the gateway.
  returned: always
  type: str
  sample: br-lan
"""

import contextlib
import json
import os
import signal

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.replica.cloud.plugins.module_utils import _addressing, _lock, _names, _network, _runner
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text, write_text


def _segment_records(config_dir, segment):
    """``{instance: (ipv4, ipv6)}`` recorded in *segment*'s hosts folder."""
    hosts_dir = os.path.join(config_dir, segment, "hosts")
    try:
        entries = sorted(e for e in os.listdir(hosts_dir) if not e.startswith("."))
    except FileNotFoundError:
        return {}
    return {entry: _network.parse_hosts(read_text(os.path.join(hosts_dir, entry))) for entry in entries}


def _reload_dnsmasq(module, segment):
    unit = f"replica-dnsmasq@{segment}.service"
    rc, out, _err = _runner.Runner(module).run(["systemctl", "show", "--property=MainPID", "--value", unit], check=False)
    pid = int(out.strip() or 0) if rc == 0 and out.strip().isdigit() else 0
    if pid:
        os.kill(pid, signal.SIGHUP)


def _avahi_records(config_dir, segments, changed_segment, name, records):
    """All instances of the mDNS segments, with *name*'s new *records* in *changed_segment*."""
    out = []
    for seg_name in sorted(segments):
        if not segments[seg_name].get("mdns"):
            continue
        recorded = _segment_records(config_dir, seg_name)
        if seg_name == changed_segment:
            recorded.pop(name, None)
        out += [(entry,) + addresses for entry, addresses in recorded.items()]
        if seg_name == changed_segment and records:
            out.append((name,) + records)
    return out


def _write_in_place(path, content):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)


def _sync_instance_sets(module, config_dir, result):
    """Refill the nft sets of the instances the firewall rules name (instances.nft, written by
    the same function the role uses) and load it into the running table."""
    text = read_text(os.path.join(config_dir, "instance-sets.json"))
    if text is None:
        return False
    sets = json.loads(text)
    hosts = {f"{v['segment']}/{v['instance']}": read_text(os.path.join(config_dir, v["segment"], "hosts", v["instance"]))
             for v in sets.values()}
    after = _network.instances_nft_from_hosts(sets, hosts)
    path = os.path.join(config_dir, "instances.nft")
    before = read_text(path)
    if after == before:
        return False
    result["diff"]["before"] += before or ""
    result["diff"]["after"] += after
    if not module.check_mode:
        write_text(path, after)
        runner = _runner.Runner(module)
        rc, _out, _err = runner.run(["systemctl", "is-active", "--quiet", "replica-firewall.service"], check=False)
        if rc == 0:
            rc, _out, err = runner.run(["nft", "-f", path], check=False)
            if rc != 0:
                module.fail_json(msg=f"the instance sets in {path} do not load ({err.strip()}): converge the "
                                     f"replica.cloud.network role again to renew the firewall's sets", **result)
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "segment": {"type": "str"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "mac": {"type": "str"},
            "kinds": {"type": "list", "elements": "str", "choices": list(_network.KINDS), "default": list(_network.KINDS)},
            "config_dir": {"type": "path", "default": "/etc/replica/network"},
            "avahi_hosts": {"type": "path", "default": "/etc/avahi/hosts"},
        },
        required_if=[("state", "present", ["segment"])],
        supports_check_mode=True,
    )
    params = module.params
    name, segment_name = params["name"], params["segment"]
    absent = params["state"] == "absent"
    try:
        _names.check_machine_name(name)
    except _names.BadName as exc:
        module.fail_json(msg=str(exc))
    text = read_text(os.path.join(params["config_dir"], "segments.json"))
    if text is None and absent:
        module.exit_json(changed=False, fqdn=None, zone=None, bridge=None, kind=None, link=None)   # no network role here: no name to remove
    if text is None:
        module.fail_json(msg=f"{params['config_dir']}/segments.json is missing: converge the replica.cloud.network "
                             f"role on this host first (it declares the segments)")
    segments = json.loads(text)["segments"]
    if absent and segment_name is None:
        # removal without a segment: wherever the instance has a record
        held = [seg for seg in sorted(segments)
                if any(os.path.lexists(os.path.join(params["config_dir"], seg, kind, name)) for kind in ("hosts", "dhcp-hosts"))]
        if not held:
            module.exit_json(changed=False, fqdn=None, zone=None, bridge=None, kind=None, link=None)
        segment_name = held[0]
    if segment_name not in segments:
        module.fail_json(msg=f"segment {segment_name!r} is not declared on this host (declared: "
                             f"{', '.join(sorted(segments)) or 'none'}): add it to network_segments")
    segment = segments[segment_name]
    if params["mac"]:
        try:
            params["mac"] = _network.check_mac(params["mac"])
        except _network.NetworkError as exc:
            module.fail_json(msg=str(exc))
    # the segment's records are read, an address chosen and written under the segment's lock (two
    # runs at once must not choose the same free address); held until this process exits
    locks = contextlib.ExitStack()
    try:
        locks.enter_context(_lock.held("address", os.path.join(params["config_dir"], segment_name),
                                       f"instance_address {name}"))
    except _lock.LockError as exc:
        module.fail_json(msg=str(exc))
    hosts_path = os.path.join(params["config_dir"], segment_name, "hosts", name)
    dhcp_path = os.path.join(params["config_dir"], segment_name, "dhcp-hosts", name)
    before_hosts, before_dhcp = read_text(hosts_path), read_text(dhcp_path)
    fqdn = f"{name}.{segment['zone']}"
    kind = segment.get("kind", "bridge")
    result = {"changed": False, "fqdn": fqdn, "zone": segment["zone"], "bridge": segment["bridge"], "kind": kind,
              "link": segment.get("link", segment["bridge"])}
    if not absent and kind not in params["kinds"]:
        hint = ("; to put such instances on a NIC's wire, declare a bridge segment with interfaces: [NIC]"
                if "bridge" in params["kinds"] else "")
        module.fail_json(msg=f"segment {segment_name!r} is a {kind} segment and {name} attaches only to "
                             f"{' or '.join(params['kinds'])} segments{hint}", **result)

    avahi_path = params["avahi_hosts"]
    avahi_before = read_text(avahi_path) if segment.get("mdns") else None

    def sync_avahi(records):
        """Publish the mDNS segments' instances as NAME.local (in place: avahi may hold the file)."""
        if not segment.get("mdns") or avahi_before is None:
            return False
        after = _network.avahi_hosts(avahi_before, _avahi_records(params["config_dir"], segments, segment_name, name, records))
        if after == avahi_before:
            return False
        result["diff"]["before"] += avahi_before
        result["diff"]["after"] += after
        if not module.check_mode:
            _write_in_place(avahi_path, after)
            rc, _out, _err = _runner.Runner(module).run(["systemctl", "is-active", "--quiet", "avahi-daemon.service"],
                                                        check=False)
            if rc == 0:
                _runner.Runner(module).run(["avahi-daemon", "--reload"], check=False)
        return True

    if params["state"] == "absent":
        result["changed"] = before_hosts is not None or before_dhcp is not None
        result["diff"] = {"before": (before_hosts or "") + (before_dhcp or ""), "after": ""}
        if result["changed"] and not module.check_mode:
            for path in (hosts_path, dhcp_path):
                if os.path.lexists(path):
                    os.unlink(path)
            if before_dhcp is not None:
                _reload_dnsmasq(module, segment_name)
        result["changed"] = sync_avahi(None) or result["changed"]
        result["changed"] = _sync_instance_sets(module, params["config_dir"], result) or result["changed"]
        module.exit_json(**result)

    ipv4, ipv6 = _network.parse_hosts(before_hosts)
    taken = [a for entry, addresses in _segment_records(params["config_dir"], segment_name).items() if entry != name
             for a in addresses if a]
    try:
        if segment["ipv4"] and not ipv4:
            ipv4 = _addressing.ipv4_for(name, segment["ipv4"], taken=taken)
        if segment["ipv6"] and not ipv6:
            ipv6 = _addressing.ipv6_for(name, segment["ipv6"], taken=taken)
    except _addressing.AddressError as exc:
        module.fail_json(msg=f"segment {segment_name}: {exc}")
    _lock.crash_point("address-chosen")
    _lock.pause_point("address-chosen")
    hosts, dhcp = _network.instance_records(name, segment, ipv4=ipv4, ipv6=ipv6, mac=params["mac"])
    result["changed"] = hosts != before_hosts or dhcp != before_dhcp
    result["diff"] = {"before": (before_hosts or "") + (before_dhcp or ""), "after": hosts + (dhcp or "")}
    if result["changed"] and not module.check_mode:
        write_text(hosts_path, hosts)
        if dhcp is None:
            if os.path.lexists(dhcp_path):
                os.unlink(dhcp_path)
        else:
            write_text(dhcp_path, dhcp)
    result["changed"] = sync_avahi((ipv4, ipv6)) or result["changed"]
    if not module.check_mode:
        result["changed"] = _sync_instance_sets(module, params["config_dir"], result) or result["changed"]
    if params["mac"]:
        result["cloud_init_network"] = _network.cloud_init_network(params["mac"], segment, ipv4=ipv4, ipv6=ipv6)
    result.update(ipv4=ipv4, ipv6=ipv6, network=_network.instance_network(segment, ipv4=ipv4, ipv6=ipv6),
                  files=_network.instance_files(segment, ipv4=ipv4, ipv6=ipv6))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
