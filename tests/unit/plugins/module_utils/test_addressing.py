# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deterministic instance addresses: stable, inside their segment, never reserved, collision-free."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _addressing as addr
from ansible_collections.replica.cloud.plugins.module_utils import _qemu

NAMES = [f"web{i}" for i in range(2000)]


def test_ipv6_is_the_documented_hash_in_the_prefix():
    address = addr.ipv6_for("web1", "fd42:0:0:7::/64")
    iid = int.from_bytes(hashlib.sha256(b"replica:web1").digest(), "big") % (1 << 64)
    assert address == str(ipaddress.ip_address("fd42:0:0:7::") + iid)
    assert address == addr.ipv6_for("web1", "fd42:0:0:7::/64")  # stable
    assert address != addr.ipv6_for("web2", "fd42:0:0:7::/64")
    assert addr.ipv6_for("web1", "fd42:0:0:8::/64").endswith(address.split(":", 4)[-1])  # same IID elsewhere


def test_ipv6_addresses_of_many_names_are_distinct_and_inside():
    network = ipaddress.ip_network("2001:db8:1:2::/64")
    seen = {addr.ipv6_for(n, str(network)) for n in NAMES}
    assert len(seen) == len(NAMES) and all(ipaddress.ip_address(a) in network for a in seen)


def test_ipv6_on_a_shorter_prefix_and_refusals():
    assert ipaddress.ip_address(addr.ipv6_for("a", "fd00:1::/48")) in ipaddress.ip_network("fd00:1::/48")
    with pytest.raises(addr.AddressError, match="/64 or a shorter"):
        addr.ipv6_for("a", "fd00::/80")
    with pytest.raises(addr.AddressError, match="not a network prefix"):
        addr.ipv6_for("a", "fd00::1/64")  # host bits set
    with pytest.raises(addr.AddressError, match="not an IPv6"):
        addr.ipv6_for("a", "10.0.0.0/24")
    with pytest.raises(addr.AddressError, match="instance name"):
        addr.ipv6_for("", "fd00::/64")


def test_a_taken_address_moves_only_the_newcomer():
    first = addr.ipv6_for("web1", "fd00::/64")
    moved = addr.ipv6_for("web1", "fd00::/64", taken=[first])
    assert moved != first and moved == addr.ipv6_for("web1", "fd00::/64", taken=[first])  # still deterministic


def test_ipv4_never_gives_network_gateway_or_broadcast_and_fills_a_small_subnet():
    subnet = ipaddress.ip_network("10.7.0.0/29")  # 8 addresses, 5 usable
    taken = []
    for name in ("a", "b", "c", "d", "e"):
        taken.append(addr.ipv4_for(name, str(subnet), taken))
    assert len(set(taken)) == 5
    assert not {"10.7.0.0", "10.7.0.1", "10.7.0.7"} & set(taken)
    with pytest.raises(addr.AddressError, match="full"):
        addr.ipv4_for("f", str(subnet), taken)
    with pytest.raises(addr.AddressError, match="too small"):
        addr.ipv4_for("a", "10.7.0.0/31")


def test_ipv4_on_a_24_is_stable_and_independent_of_unrelated_names():
    alone = addr.ipv4_for("db1", "192.0.2.0/24")
    others = [addr.ipv4_for(n, "192.0.2.0/24") for n in ("x1", "x2", "x3")]
    assert addr.ipv4_for("db1", "192.0.2.0/24", taken=[o for o in others if o != alone]) == alone


def test_macs_are_local_unicast_and_the_vms_keep_theirs():
    mac = addr.mac_for("web1")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01 and len(mac.split(":")) == 6
    # qemu_vm's MACs are the same function in the replica-vm namespace (existing VMs keep theirs)
    assert _qemu.mac_for("tiny1") == "52:54:" + ":".join(f"{b:02x}" for b in hashlib.sha256(b"replica-vm:tiny1").digest()[:4])


def test_the_filters_give_the_same_answers():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.replica.cloud.plugins.filter.addressing import FilterModule

    filters = FilterModule().filters()
    assert filters["instance_ipv6"]("web1", "fd00::/64") == addr.ipv6_for("web1", "fd00::/64")
    assert filters["instance_ipv4"]("web1", "10.0.7.0/24", taken=["10.0.7.9"]) == addr.ipv4_for("web1", "10.0.7.0/24", ["10.0.7.9"])
    assert filters["instance_mac"]("web1") == addr.mac_for("web1")
    with pytest.raises(AnsibleFilterError, match="not a network prefix"):
        filters["instance_ipv4"]("web1", "10.0.7.1/24")
