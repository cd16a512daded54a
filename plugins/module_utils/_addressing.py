# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deterministic addresses for instances: an IPv6 address, an IPv4 address and a MAC derived
from the instance's name and its segment, stable across rebuilds.

Pure functions, standard library only (``ipaddress``, ``hashlib``), so modules on the target
and filters on the controller compute the same answers.

How an address is derived
    The host part is the SHA-256 of ``"<namespace>:<name>"`` (then ``"<namespace>:<name>#<n>"``
    for n = 1, 2, ... on a collision), read as a big-endian integer and reduced to the
    segment's host bits. For IPv6 on a /64 that is the interface identifier; for IPv4 an index
    into the usable hosts (the network address, the gateway ``.1`` and the broadcast address are
    never given out).

Collisions
    ``taken`` is the set of addresses already given to *other* names. A candidate that is taken
    or reserved is skipped by hashing again with the next counter, so an address depends only
    on the name and on which earlier-placed names collided with it: adding or removing an
    unrelated instance never moves an existing one. On a /64 the chance that two of 10,000
    names collide is about 3e-12; on a /24 IPv4 subnet collisions are common, which is why
    callers pass ``taken`` (the addresses of the segment's other instances, as recorded).
"""

from __future__ import annotations

import hashlib
import ipaddress

#: interface identifiers never given out on an IPv6 segment: the subnet-router anycast (all
#: zero) and the reserved anycast range of RFC 2526 (the top 128 of the /64)
_RESERVED_IID_TOP = 128


class AddressError(ValueError):
    """A segment or name that cannot give an address; the message says what to fix."""


def _digest_int(namespace, name, counter):
    salt = f"{namespace}:{name}" if counter == 0 else f"{namespace}:{name}#{counter}"
    return int.from_bytes(hashlib.sha256(salt.encode()).digest(), "big")


def _network(prefix, version):
    try:
        network = ipaddress.ip_network(prefix, strict=True)
    except ValueError as exc:
        raise AddressError(f"{prefix!r} is not a network prefix (like fd00:1::/64 or 10.0.0.0/24): {exc}") from None
    if network.version != version:
        raise AddressError(f"{prefix!r} is not an IPv{version} prefix")
    return network


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise AddressError(f"instance name {name!r} must be a non-empty string")


def ipv6_for(name, prefix, taken=(), namespace="replica"):
    """The IPv6 address of instance *name* in the segment *prefix* (``/64`` or shorter)."""
    _check_name(name)
    network = _network(prefix, 6)
    host_bits = 128 - network.prefixlen
    if host_bits < 64:
        raise AddressError(f"{prefix!r}: give a /64 or a shorter prefix (SLAAC and stable identifiers need 64 host bits)")
    taken = {ipaddress.ip_address(a) for a in taken}
    top = (1 << host_bits) - _RESERVED_IID_TOP
    for counter in range(64):
        host = _digest_int(namespace, name, counter) % (1 << host_bits)
        address = network.network_address + host
        if 0 < host < top and address not in taken:
            return str(address)
    raise AddressError(f"no free address for {name!r} in {prefix} after 64 tries: the segment is full")


def ipv4_for(name, subnet, taken=(), namespace="replica"):
    """The IPv4 address of instance *name* in *subnet*, never the network address, the gateway
    (the first host, ``.1`` on a /24) or the broadcast address."""
    _check_name(name)
    network = _network(subnet, 4)
    usable = network.num_addresses - 3
    if usable < 1:
        raise AddressError(f"{subnet!r} is too small for instances: give a /29 or larger")
    taken = {ipaddress.ip_address(a) for a in taken}
    if len({a for a in taken if a in network}) >= usable:
        raise AddressError(f"no free address for {name!r} in {subnet}: the subnet is full")
    for counter in range(max(64, 4 * usable)):
        address = network.network_address + 2 + _digest_int(namespace, name, counter) % usable
        if address not in taken:
            return str(address)
    # a nearly full subnet: the first free address, in order (still deterministic)
    for index in range(usable):
        address = network.network_address + 2 + index
        if address not in taken:
            return str(address)
    raise AddressError(f"no free address for {name!r} in {subnet}: the subnet is full")


def mac_for(name, namespace="replica"):
    """A stable, locally administered unicast MAC for *name* (``52:54:`` and four hash bytes)."""
    _check_name(name)
    digest = hashlib.sha256(f"{namespace}:{name}".encode()).digest()
    return "52:54:" + ":".join(f"{b:02x}" for b in digest[:4])
