# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of vfio_bind: addresses, the group plan, mdev plans and persistence texts."""

from __future__ import annotations

import json

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _vfio as vfio


def dev(address, driver=None, override=None, group="14", klass=0x030000, ids=("10de", "2684")):
    return {"address": address, "vendor": ids[0], "device": ids[1], "class": klass, "driver": driver,
            "override": override, "group": group}


GPU = "0000:01:00.0"
AUDIO = "0000:01:00.1"
BRIDGE = "0000:00:01.0"


def group_of(*devices):
    table = {d["address"]: d for d in devices}
    groups = {}
    for d in devices:
        groups.setdefault(d["group"], []).append(d["address"])
    return table, groups


@pytest.mark.parametrize("text, address", [
    ("0000:01:00.0", "0000:01:00.0"), ("01:00.0", "0000:01:00.0"), ("0000:3B:00.7", "0000:3b:00.7"),
    (" 0001:af:1f.3 ", "0001:af:1f.3"), ("01:00", None), ("0000:01:20.0", None), ("0000:01:00.8", None), ("10de:2684", None)])
def test_normalize_address(text, address):
    assert vfio.normalize_address(text) == address


def test_parse_device():
    assert vfio.parse_device("01:00.0") == {"address": "0000:01:00.0"}
    assert vfio.parse_device("10DE:2684") == {"ids": ("10de", "2684")}
    for bad in ("", "gpu0", "10de-2684", "10de:2684:1"):
        with pytest.raises(vfio.VfioError, match="device"):
            vfio.parse_device(bad)


def test_sysfs_values():
    assert vfio.hex_id("0x10DE\n") == "10de"
    assert vfio.parse_override("(null)\n") is None
    assert vfio.parse_override("vfio-pci\n") == "vfio-pci"
    assert vfio.is_bridge(dev(BRIDGE, klass=0x060400)) and not vfio.is_bridge(dev(GPU))
    assert vfio.is_vfio("vfio-pci") and vfio.is_vfio("mlx5_vfio_pci") and not vfio.is_vfio("nvidia") and not vfio.is_vfio(None)


def test_strict_refuses_a_member_on_a_host_driver():
    devices, groups = group_of(dev(GPU, "nvidia"), dev(AUDIO, "snd_hda_intel", ids=("10de", "22ba")))
    with pytest.raises(vfio.VfioError, match=r"IOMMU group 14 of 0000:01:00.0 also holds 0000:01:00.1 .*snd_hda_intel.*iommu_group=whole"):
        vfio.plan([GPU], devices, groups, "bound", "strict")


def test_strict_accepts_unbound_stub_vfio_members_and_bridges():
    devices, groups = group_of(dev(GPU, "nvidia"), dev(AUDIO, None), dev("0000:01:00.2", "pci-stub"),
                               dev("0000:01:00.3", "vfio-pci", "vfio-pci"), dev(BRIDGE, "pcieport", klass=0x060400))
    the_plan = vfio.plan([GPU], devices, groups, "bound", "strict")
    assert the_plan["devices"] == [GPU]
    assert the_plan["changes"] == [{"address": GPU, "before": {"driver": "nvidia", "override": None},
                                    "after": {"driver": "vfio-pci", "override": "vfio-pci"}}]
    assert the_plan["members"] == {"14": sorted([GPU, AUDIO, "0000:01:00.2", "0000:01:00.3", BRIDGE])}


def test_whole_takes_every_member_but_bridges():
    devices, groups = group_of(dev(GPU, "nvidia"), dev(AUDIO, "snd_hda_intel"), dev(BRIDGE, "pcieport", klass=0x060400))
    the_plan = vfio.plan([GPU], devices, groups, "bound", "whole")
    assert the_plan["devices"] == [GPU, AUDIO]
    assert [c["address"] for c in the_plan["changes"]] == [GPU, AUDIO]


def test_bound_is_no_change_only_with_the_override():
    devices, groups = group_of(dev(GPU, "vfio-pci", "vfio-pci"), dev(AUDIO, "vfio-pci", None))
    the_plan = vfio.plan([GPU, AUDIO], devices, groups, "bound", "strict")
    assert [c["address"] for c in the_plan["changes"]] == [AUDIO]  # on vfio-pci by new_id: a reprobe would lose it


def test_bridge_or_groupless_device_refused():
    devices, groups = group_of(dev(BRIDGE, "pcieport", klass=0x060400))
    with pytest.raises(vfio.VfioError, match="is a PCI bridge"):
        vfio.plan([BRIDGE], devices, groups, "bound", "whole")
    devices = {GPU: dev(GPU, "nvidia", group=None)}
    with pytest.raises(vfio.VfioError, match="has no IOMMU group"):
        vfio.plan([GPU], devices, {}, "bound", "strict")


def test_unbound_plans():
    devices, groups = group_of(dev(GPU, "vfio-pci", "vfio-pci"), dev(AUDIO, "vfio-pci", "vfio-pci"),
                               dev(BRIDGE, "pcieport", klass=0x060400))
    strict = vfio.plan([GPU], devices, groups, "unbound", "strict")
    assert [c["address"] for c in strict["changes"]] == [GPU]
    assert strict["changes"][0]["after"] == {"driver": None, "override": None}
    whole = vfio.plan([GPU], devices, groups, "unbound", "whole")
    assert whole["devices"] == [GPU, AUDIO]
    named = vfio.plan([GPU], devices, groups, "unbound", "strict", driver="nouveau")
    assert named["changes"][0]["after"] == {"driver": "nouveau", "override": None}
    # already off vfio-pci: no change, unless another driver is named
    devices, groups = group_of(dev(GPU, "nvidia"))
    assert vfio.plan([GPU], devices, groups, "unbound", "whole")["changes"] == []
    assert len(vfio.plan([GPU], devices, groups, "unbound", "strict", driver="nouveau")["changes"]) == 1
    # an override left for vfio-pci (the device unbound) is a change: the next probe would give it to vfio-pci
    devices, groups = group_of(dev(GPU, None, "vfio-pci"))
    assert len(vfio.plan([GPU], devices, groups, "unbound", "strict")["changes"]) == 1


def test_a_device_left_unprobed_by_a_killed_run_is_a_change():
    """Without a driver and not held for vfio-pci reads as "no loaded driver takes it" (no change),
    unless the killed run's note says it was between its unbind from vfio-pci and its probe."""
    devices, groups = group_of(dev(GPU, None), dev(AUDIO, None))
    assert vfio.plan([GPU], devices, groups, "unbound", "whole")["changes"] == []
    devices[GPU]["pending"] = devices[AUDIO]["pending"] = True
    whole = vfio.plan([GPU], devices, groups, "unbound", "whole")
    assert whole["devices"] == [GPU, AUDIO] and len(whole["changes"]) == 2
    # on the named driver but its override still set (killed before clearing it): a change
    devices, groups = group_of(dev(GPU, "nouveau", "nouveau"))
    assert len(vfio.plan([GPU], devices, groups, "unbound", "strict", driver="nouveau")["changes"]) == 1
    assert vfio.pending_name("/sys", GPU).endswith("-" + GPU) and vfio.pending_name("/sys", GPU) != vfio.pending_name("/tmp/sys", GPU)


def test_unbound_whole_leaves_host_driver_members():
    devices, groups = group_of(dev(GPU, "vfio-pci", "vfio-pci"), dev(AUDIO, "snd_hda_intel"))
    assert vfio.plan([GPU], devices, groups, "unbound", "whole")["devices"] == [GPU]


def test_listing():
    devices, dummy = group_of(dev(GPU, "vfio-pci", "vfio-pci"), dev(AUDIO, None))
    assert vfio.listing(devices, [GPU, AUDIO]) == ("0000:01:00.0 vfio-pci [driver_override=vfio-pci]\n"
                                                   "0000:01:00.1 (no driver)\n")
    assert vfio.listing(devices, []) == ""


def test_driverctl_files():
    assert vfio.driverctl_file(GPU) == "pci-0000:01:00.0"
    assert vfio.driverctl_text() == "vfio-pci\n"


UUID = "5b0a7b0e-7c8f-4a34-9ec2-2f8f3b0f5c11"


def test_check_mdevs():
    assert vfio.check_mdevs([{"type": "nvidia-558", "uuid": UUID.upper()}]) == [
        {"type": "nvidia-558", "uuid": UUID, "start": "auto"}]
    for bad, message in (([{"type": "x", "uuid": "nope"}], "is not a UUID"),
                         ([{"type": "x", "uuid": UUID}, {"type": "y", "uuid": UUID}], "listed twice"),
                         ([{"type": "../x", "uuid": UUID}], "not an mdev type"),
                         ([{"type": "x", "uuid": UUID, "start": "later"}], "auto or manual"),
                         ([{"type": "x", "uuid": UUID, "size": 1}], "unknown keys"),
                         (["x"], "not a dict")):
        with pytest.raises(vfio.VfioError, match=message):
            vfio.check_mdevs(bad)


def test_mdev_plan():
    items = vfio.check_mdevs([{"type": "nvidia-558", "uuid": UUID}])
    parent = "0000:3b:00.0"
    assert vfio.mdev_plan(parent, items, {}, "bound") == {"create": items, "remove": []}
    have = {UUID: {"parent": parent, "type": "nvidia-558"}}
    assert vfio.mdev_plan(parent, items, have, "bound") == {"create": [], "remove": []}
    assert vfio.mdev_plan(parent, items, have, "unbound") == {"create": [], "remove": items}
    assert vfio.mdev_plan(parent, items, {}, "unbound") == {"create": [], "remove": []}
    with pytest.raises(vfio.VfioError, match="exists as nvidia-559 on 0000:3b:00.0"):
        vfio.mdev_plan(parent, items, {UUID: {"parent": parent, "type": "nvidia-559"}}, "bound")
    with pytest.raises(vfio.VfioError, match="on 0000:af:00.0, not"):
        vfio.mdev_plan(parent, items, {UUID: {"parent": "0000:af:00.0", "type": "nvidia-558"}}, "unbound")


def test_mdevctl_definition():
    item = {"type": "nvidia-558", "uuid": UUID, "start": "auto"}
    text = vfio.mdevctl_definition(item)
    assert json.loads(text) == {"mdev_type": "nvidia-558", "start": "auto", "attrs": []}
    assert vfio.same_mdevctl_definition(text, item)
    assert vfio.same_mdevctl_definition('{"mdev_type":"nvidia-558","start":"auto"}', item)
    assert not vfio.same_mdevctl_definition(text, dict(item, start="manual"))
    assert not vfio.same_mdevctl_definition("{broken", item)


def test_iommu_hint():
    assert "intel_iommu=on iommu=pt" in vfio.iommu_hint("GenuineIntel")
    assert "iommu=pt" in vfio.iommu_hint("AuthenticAMD") and "intel_iommu" not in vfio.iommu_hint("AuthenticAMD")
    both = vfio.iommu_hint(None)
    assert "intel_iommu=on iommu=pt on Intel" in both and "iommu=pt (AMD-Vi" in both
