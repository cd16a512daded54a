# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network role's inventory check and renderers (plugins/module_utils/_network.py)."""

from __future__ import annotations

import base64

from ansible.errors import AnsibleFilterError

from ansible_collections.replica.cloud.plugins.module_utils import _network

_RENDERERS = {
    "networkd": _network.networkd_files,
    "uplink_dropin": _network.uplink_dropin,
    "dnsmasq": _network.dnsmasq_conf,
    "unbound": _network.unbound_conf,
    "nftables": _network.nft_ruleset,
    "avahi": _network.avahi_conf,
    "segments_json": _network.segments_json,
    "instance_sets_json": _network.instance_sets_json,
    "instance_sets": _network.instance_sets,
    "instances_nft": lambda sets, hosts: _network.instances_nft_from_hosts(sets, _hosts_texts(hosts)),
}


def _hosts_texts(hosts):
    """``{"SEGMENT/NAME": text}`` from a dict of texts, or from slurp results over instance_sets
    items (a missing record, slurp failed, is left out)."""
    if isinstance(hosts, dict):
        return hosts
    out = {}
    for result in hosts or []:
        spec = result["item"]["value"]
        if result.get("content"):
            out[f"{spec['segment']}/{spec['instance']}"] = base64.b64decode(result["content"]).decode()
    return out


def network_topology(segments, rules=None, ingress=None, domain="home.arpa"):
    """The checked topology; an AnsibleFilterError names the culprit."""
    try:
        return _network.check_topology(segments, rules or [], ingress or [], domain)
    except (_network.NetworkError, TypeError, AttributeError) as exc:
        raise AnsibleFilterError(f"network inventory: {exc}") from exc


def network_config(data, kind, *args, **kwargs):
    """A file (or files) of kind *kind* for a checked topology or one of its segments."""
    if kind not in _RENDERERS:
        raise AnsibleFilterError(f"network_config: kind {kind!r} must be one of {', '.join(sorted(_RENDERERS))}")
    try:
        return _RENDERERS[kind](data, *args, **kwargs)
    except (_network.NetworkError, KeyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"network_config({kind}): {exc}") from exc


class FilterModule:
    """replica.cloud network filters."""

    def filters(self):
        return {"network_topology": network_topology, "network_config": network_config}
