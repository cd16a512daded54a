# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sysfs emulator (sysfs_emulator.py): its kernel model driven directly, then the same tree mounted with FUSE
and driven from a separate process through plain os calls, as an Ansible module would."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import signal
import subprocess
import sys

import pytest

import sysfs_emulator as se  # pylint: disable=import-error

GPU, AUDIO, BRIDGE, USB, NIC, BRIDGE2 = "0000:01:00.0", "0000:01:00.1", "0000:00:01.0", "0000:00:14.0", "0000:02:00.0", "0000:00:1c.0"
UUID1 = "6a3b2c1d-0000-4000-8000-000000000001"
UUID2 = "6a3b2c1d-0000-4000-8000-000000000002"
UUID3 = "6a3b2c1d-0000-4000-8000-000000000003"
TYPE = f"bus/pci/devices/{GPU}/mdev_supported_types/nvidia-500"

SPEC = {
    "iommu": "intel",
    "drivers": {
        "nvidia": {"ids": ["10de:2684"]},
        "snd_hda_intel": {"ids": ["10de:228b"]},
        "pcieport": {"classes": ["0x0604"]},
        "igb": {"ids": ["8086:1533"]},
        "xhci_hcd": {"classes": ["0x0c03"], "suppress_bind_attrs": True},
        "vfio-pci": {"ids": []},
    },
    "devices": [
        {"address": BRIDGE, "vendor": "0x8086", "device": "0xa70d", "class": "0x060400", "group": 1, "driver": "pcieport"},
        {"address": GPU, "vendor": "0x10de", "device": "0x2684", "class": "0x030000", "subsystem_vendor": "0x10de",
         "subsystem_device": "0x16f3", "group": 14, "parent": BRIDGE, "driver": "nvidia",
         "mdev_types": {"nvidia-500": {"name": "GRID A100-4C", "available_instances": 2, "device_api": "vfio-pci", "description": "4 GB"}}},
        {"address": AUDIO, "vendor": "0x10de", "device": "0x228b", "class": "0x040300", "group": 14, "parent": BRIDGE,
         "driver": "snd_hda_intel", "probe_errors": {"vfio-pci": "EIO"}},
        {"address": USB, "vendor": "0x8086", "device": "0x7ae0", "class": "0x0c0330", "group": 5, "driver": "xhci_hcd"},
        {"address": BRIDGE2, "vendor": "0x8086", "device": "0x7ab8", "class": "0x060400", "group": 7, "driver": "pcieport"},
        {"address": NIC, "vendor": "0x8086", "device": "0x1533", "class": "0x020000", "group": 16, "parent": BRIDGE2, "driver": None},
    ],
    "mdev_driver": "vfio_mdev",
}


def spec(**changes):
    made = copy.deepcopy(SPEC)
    made.update(changes)
    return made


def code(call, *args):
    """The errno name a model call fails with, or None."""
    try:
        call(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None


def bound(kernel, address):
    path = f"bus/pci/devices/{address}/driver"
    return os.path.basename(kernel.readlink(path)) if "driver" in kernel.listdir(f"bus/pci/devices/{address}") else None


# ------------------------------------------------------------------------------------------------ the model


def test_tree_shape():
    k = se.Kernel(spec())
    assert k.realpath(f"bus/pci/devices/{GPU}") == f"devices/pci0000:00/{BRIDGE}/{GPU}"
    assert k.realpath(f"bus/pci/devices/{NIC}") == f"devices/pci0000:00/{BRIDGE2}/{NIC}"
    assert k.realpath(f"bus/pci/devices/{USB}") == f"devices/pci0000:00/{USB}"
    assert k.readlink(f"bus/pci/devices/{GPU}") == f"../../../devices/pci0000:00/{BRIDGE}/{GPU}"
    assert k.readlink(f"bus/pci/devices/{GPU}/iommu_group") == "../../../../kernel/iommu_groups/14"
    assert k.readlink(f"bus/pci/devices/{USB}/iommu_group") == "../../../kernel/iommu_groups/5"
    assert k.readlink(f"bus/pci/devices/{GPU}/driver") == "../../../../bus/pci/drivers/nvidia"
    assert k.readlink(f"bus/pci/devices/{GPU}/subsystem") == "../../../../bus/pci"
    assert k.realpath(f"bus/pci/devices/{GPU}/iommu_group") == "kernel/iommu_groups/14"
    assert k.listdir("kernel/iommu_groups") == ["1", "14", "16", "5", "7"]
    assert k.listdir("kernel/iommu_groups/14/devices") == [GPU, AUDIO]
    assert k.realpath(f"kernel/iommu_groups/14/devices/{AUDIO}") == f"devices/pci0000:00/{BRIDGE}/{AUDIO}"
    assert k.read("kernel/iommu_groups/14/type") == "DMA\n"
    assert k.listdir("bus/pci/devices") == sorted([GPU, AUDIO, BRIDGE, USB, NIC, BRIDGE2])
    assert {GPU, AUDIO} < set(k.listdir(f"devices/pci0000:00/{BRIDGE}"))
    assert k.listdir("bus/pci/drivers/nvidia") == [GPU, "bind", "module", "new_id", "remove_id", "unbind"]
    assert k.realpath(f"bus/pci/drivers/nvidia/{GPU}") == f"devices/pci0000:00/{BRIDGE}/{GPU}"
    assert k.realpath("bus/pci/drivers/vfio-pci/module") == "module/vfio_pci"
    assert k.listdir("bus/pci/drivers/pcieport") == [BRIDGE, BRIDGE2, "bind", "module", "new_id", "remove_id", "unbind"]
    assert "driver" not in k.listdir(f"bus/pci/devices/{NIC}")
    assert k.listdir("class/iommu") == ["dmar0"] and k.kind("class/iommu/dmar0") == "link"
    assert k.kind("bus/pci/drivers_probe") == "file" and k.kind("bus/pci/devices") == "dir"
    assert {"vfio_pci", "nvidia", "snd_hda_intel", "vfio_mdev"} <= set(k.listdir("module"))
    assert k.listdir("bus/mdev/devices") == [] and k.listdir("class/mdev_bus") == [GPU]


def test_attributes():
    k = se.Kernel(spec())
    dev = f"bus/pci/devices/{GPU}"
    assert [k.read(f"{dev}/{name}") for name in ("vendor", "device", "class", "subsystem_vendor", "subsystem_device")] == \
        ["0x10de\n", "0x2684\n", "0x030000\n", "0x10de\n", "0x16f3\n"]
    assert k.read(f"{dev}/driver_override") == "(null)\n"
    assert k.read(f"{dev}/numa_node") == "-1\n"
    assert k.read(f"{dev}/modalias") == "pci:v000010DEd00002684sv000010DEsd000016F3bc03sc00i00\n"
    assert k.read("bus/pci/drivers_autoprobe") == "1\n"
    assert k.lookup(f"{dev}/driver_override").mode == 0o644
    assert k.lookup(f"{dev}/vendor").mode == 0o444
    assert k.lookup("bus/pci/drivers/vfio-pci/bind").mode == 0o200


def test_override_then_drivers_probe_binds_vfio_pci():
    k = se.Kernel(spec())
    dev = f"bus/pci/devices/{GPU}"
    k.write(f"{dev}/driver_override", "vfio-pci\n")
    assert bound(k, GPU) == "nvidia"  # an override binds nothing by itself
    assert k.read(f"{dev}/driver_override") == "vfio-pci\n"
    k.write("bus/pci/drivers_probe", GPU)  # bound: left alone
    assert bound(k, GPU) == "nvidia"
    k.write("bus/pci/drivers/nvidia/unbind", GPU + "\n")
    assert bound(k, GPU) is None
    assert GPU not in k.listdir("bus/pci/drivers/nvidia")
    assert "mdev_supported_types" not in k.listdir(dev)
    k.write("bus/pci/drivers_probe", GPU + "\n")
    assert bound(k, GPU) == "vfio-pci"
    assert k.readlink(f"{dev}/driver") == "../../../../bus/pci/drivers/vfio-pci"
    assert k.realpath(f"bus/pci/drivers/vfio-pci/{GPU}") == f"devices/pci0000:00/{BRIDGE}/{GPU}"
    assert "mdev_supported_types" not in k.listdir(dev)  # types belong to the vendor driver
    k.write(f"{dev}/driver_override", "\n")
    assert k.read(f"{dev}/driver_override") == "(null)\n"
    assert bound(k, GPU) == "vfio-pci"  # clearing it unbinds nothing either
    k.write("bus/pci/drivers/vfio-pci/unbind", GPU)
    k.write("bus/pci/drivers_probe", GPU)  # no override: the id table decides again
    assert bound(k, GPU) == "nvidia"
    k.write(f"{dev}/driver_override", "nvidia\0garbage")
    assert k.read(f"{dev}/driver_override") == "nvidia\n"
    assert code(k.write, f"{dev}/driver_override", "x" * 4095) == "EINVAL"


def test_bind_and_unbind_errors():
    k = se.Kernel(spec())
    assert code(k.write, "bus/pci/drivers/vfio-pci/unbind", GPU) == "ENODEV"  # bound to nvidia, not vfio-pci
    assert code(k.write, "bus/pci/drivers/nvidia/unbind", "0000:09:00.0") == "ENODEV"
    assert code(k.write, "bus/pci/drivers/nvidia/unbind", GPU + " ") == "ENODEV"  # only one newline is forgiven
    assert code(k.write, "bus/pci/drivers/nvidia/bind", GPU) == "EBUSY"
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", GPU) == "ENODEV"  # vfio-pci has no id for it
    assert code(k.write, "bus/pci/drivers/nvidia/bind", "0000:09:00.0") == "ENODEV"
    k.write(f"bus/pci/devices/{GPU}/driver_override", "vfio-pci")
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", GPU) == "EBUSY"  # matches now, but bound
    k.write("bus/pci/drivers/nvidia/unbind", GPU)
    assert code(k.write, "bus/pci/drivers/nvidia/bind", GPU) == "ENODEV"  # the override excludes every other driver
    k.write("bus/pci/drivers/vfio-pci/bind", GPU)
    assert bound(k, GPU) == "vfio-pci"
    assert code(k.write, "bus/pci/drivers_probe", "0000:09:00.0") == "ENODEV"
    assert [entry[2] for entry in k.log].count(errno.ENODEV) == 7


def test_probe_error_reported_by_bind_swallowed_by_drivers_probe():
    k = se.Kernel(spec())
    k.write("bus/pci/drivers/snd_hda_intel/unbind", AUDIO)
    k.write(f"bus/pci/devices/{AUDIO}/driver_override", "vfio-pci")
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", AUDIO) == "EIO"
    assert bound(k, AUDIO) is None
    k.write("bus/pci/drivers_probe", AUDIO)
    assert bound(k, AUDIO) is None
    assert k.log[-2:] == [("bus/pci/drivers/vfio-pci/bind", AUDIO, errno.EIO), ("bus/pci/drivers_probe", AUDIO, 0)]
    # a failing probe makes device_attach go on to the next matching driver
    other = spec(drivers={**SPEC["drivers"], "a_any_intel": {"ids": ["8086:*"]}})
    other["devices"][5]["probe_errors"] = {"a_any_intel": "ENXIO"}
    k = se.Kernel(other)
    k.write("bus/pci/drivers_probe", NIC)
    assert bound(k, NIC) == "igb"


def test_vfio_pci_refuses_bridges():
    k = se.Kernel(spec())
    k.write("bus/pci/drivers/pcieport/unbind", BRIDGE2)
    k.write(f"bus/pci/devices/{BRIDGE2}/driver_override", "vfio-pci")
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", BRIDGE2) == "EINVAL"


def test_suppress_bind_attrs():
    k = se.Kernel(spec())
    assert k.listdir("bus/pci/drivers/xhci_hcd") == [USB, "module", "new_id", "remove_id"]
    assert code(k.write, "bus/pci/drivers/xhci_hcd/unbind", USB) == "ENOENT"
    assert bound(k, USB) == "xhci_hcd"


def test_new_id_and_remove_id():
    k = se.Kernel(spec())
    assert code(k.write, "bus/pci/drivers/vfio-pci/new_id", "8086") == "EINVAL"
    assert code(k.write, "bus/pci/drivers/vfio-pci/new_id", "zz 1533") == "EINVAL"
    k.write("bus/pci/drivers/vfio-pci/new_id", "8086 1533\n")  # probes the unbound NIC at once
    assert bound(k, NIC) == "vfio-pci"
    assert code(k.write, "bus/pci/drivers/vfio-pci/new_id", "8086 1533") == "EEXIST"
    assert code(k.write, "bus/pci/drivers/nvidia/new_id", "10de 2684") == "EEXIST"  # in the static table
    k.write("bus/pci/drivers/vfio-pci/new_id", "10de 2684")  # the GPU is bound to nvidia: stays there
    assert bound(k, GPU) == "nvidia"
    k.write("bus/pci/drivers/nvidia/unbind", GPU)
    k.write("bus/pci/drivers/vfio-pci/bind", GPU)  # matches through the dynamic id now
    assert bound(k, GPU) == "vfio-pci"
    k.write("bus/pci/drivers/vfio-pci/remove_id", "10de 2684")
    assert bound(k, GPU) == "vfio-pci"  # removing an id unbinds nothing
    assert code(k.write, "bus/pci/drivers/vfio-pci/remove_id", "10de 2684") == "ENODEV"
    assert code(k.write, "bus/pci/drivers/vfio-pci/remove_id", "10de") == "EINVAL"
    k.write("bus/pci/drivers/vfio-pci/unbind", GPU)
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", GPU) == "ENODEV"
    k.write("bus/pci/drivers/vfio-pci/new_id", "10de 2684")  # the override-free GPU is taken by the new id
    assert bound(k, GPU) == "vfio-pci"


def test_mdev_create_and_remove():
    k = se.Kernel(spec())
    assert k.listdir(TYPE) == ["available_instances", "create", "description", "device_api", "devices", "name"]
    assert [k.read(f"{TYPE}/{n}") for n in ("name", "available_instances", "device_api", "description")] == \
        ["GRID A100-4C\n", "2\n", "vfio-pci\n", "4 GB\n"]
    k.write(f"{TYPE}/create", UUID1 + "\n")
    assert k.read(f"{TYPE}/available_instances") == "1\n"
    mdev = f"devices/pci0000:00/{BRIDGE}/{GPU}/{UUID1}"
    assert k.realpath(f"bus/mdev/devices/{UUID1}") == mdev
    assert k.realpath(f"{TYPE}/devices/{UUID1}") == mdev
    assert k.listdir(mdev) == ["driver", "iommu_group", "mdev_type", "remove", "subsystem"]
    assert k.readlink(f"{mdev}/mdev_type") == "../mdev_supported_types/nvidia-500"
    assert k.realpath(f"{mdev}/driver") == "bus/mdev/drivers/vfio_mdev"
    assert k.realpath(f"bus/mdev/drivers/vfio_mdev/{UUID1}") == mdev
    assert k.realpath(f"{mdev}/iommu_group") == "kernel/iommu_groups/17"  # a new group, after the highest in use
    assert k.listdir("kernel/iommu_groups/17/devices") == [UUID1]
    assert k.read("kernel/iommu_groups/17/type") == "unknown\n"
    k.write(f"{TYPE}/create", UUID2.upper())  # guid_parse takes either case; the name is lower case
    assert k.listdir("bus/mdev/devices") == [UUID1, UUID2]
    assert k.realpath(f"bus/mdev/devices/{UUID2}/iommu_group") == "kernel/iommu_groups/18"
    assert k.read(f"{TYPE}/available_instances") == "0\n"
    k.write(f"{mdev}/remove", "0")  # zero: nothing
    assert UUID1 in k.listdir("bus/mdev/devices")
    k.write(f"{mdev}/remove", "1\n")
    assert k.listdir("bus/mdev/devices") == [UUID2]
    assert k.listdir(f"{TYPE}/devices") == [UUID2]
    assert "17" not in k.listdir("kernel/iommu_groups")
    assert k.read(f"{TYPE}/available_instances") == "1\n"


def test_mdev_errors():
    k = se.Kernel(spec())
    for bad in ("not-a-uuid", UUID1[:-1], UUID1 + "\n\n", UUID1.replace("-", "_")):
        assert code(k.write, f"{TYPE}/create", bad) == "EINVAL", bad
    k.write(f"{TYPE}/create", UUID1)
    assert code(k.write, f"{TYPE}/create", UUID1 + "\n") == "EEXIST"
    k.write(f"{TYPE}/create", UUID2)
    assert code(k.write, f"{TYPE}/create", UUID3) == "EUSERS"
    assert code(k.write, f"bus/mdev/devices/{UUID1}/remove", "yes") == "EINVAL"
    assert k.read(f"{TYPE}/available_instances") == "0\n"
    assert [entry[2] for entry in k.log] == [errno.EINVAL] * 4 + [0, errno.EEXIST, 0, errno.EUSERS, errno.EINVAL]


def test_mdev_types_only_while_parent_driver_bound():
    k = se.Kernel(spec())
    k.write(f"{TYPE}/create", UUID1)
    k.write("bus/pci/drivers/nvidia/unbind", GPU)  # the parent goes: its types and mdevs go
    assert "mdev_supported_types" not in k.listdir(f"bus/pci/devices/{GPU}")
    assert k.listdir("bus/mdev/devices") == [] and k.listdir("class/mdev_bus") == []
    assert code(k.write, f"{TYPE}/create", UUID2) == "ENOENT"
    k.write("bus/pci/drivers/nvidia/bind", GPU)
    assert k.read(f"{TYPE}/available_instances") == "2\n"
    assert k.realpath(f"class/mdev_bus/{GPU}") == f"devices/pci0000:00/{BRIDGE}/{GPU}"


def test_iommu_off():
    k = se.Kernel(spec(iommu=None))
    assert k.listdir("kernel/iommu_groups") == []
    assert k.listdir("class/iommu") == []
    assert "iommu_group" not in k.listdir(f"bus/pci/devices/{GPU}")
    assert "iommu" not in k.listdir(f"bus/pci/devices/{GPU}")
    k.write(f"bus/pci/devices/{NIC}/driver_override", "vfio-pci")
    assert code(k.write, "bus/pci/drivers/vfio-pci/bind", NIC) == "EINVAL"  # vfio needs an IOMMU group
    k.write(f"{TYPE}/create", UUID1)  # mdevs bring emulated groups of their own
    assert k.listdir("kernel/iommu_groups") == ["0"]
    assert k.realpath(f"bus/mdev/devices/{UUID1}/iommu_group") == "kernel/iommu_groups/0"


def test_amd_iommu():
    k = se.Kernel(spec(iommu="amd"))
    assert k.listdir("class/iommu") == ["ivhd0"]
    assert k.realpath(f"bus/pci/devices/{GPU}/iommu") == "devices/virtual/iommu/ivhd0"


def test_open_permissions_and_missing_files():
    k = se.Kernel(spec())
    assert code(k.read, "bus/pci/drivers/vfio-pci/bind") == "EACCES"  # kernfs: 0200, even for root
    assert code(k.write, f"bus/pci/devices/{GPU}/vendor", "0x8086") == "EACCES"
    assert code(k.write, "bus/pci/drivers/nope/bind", GPU) == "ENOENT"
    assert code(k.write, "bus/pci/drivers", GPU) == "EISDIR"
    assert code(k.read, f"bus/pci/devices/{GPU}/vendor/x") == "ENOTDIR"
    assert k.write("bus/pci/drivers/nvidia/unbind", b"") == 0  # sysfs_kf_write: a zero-length write is no store
    assert bound(k, GPU) == "nvidia" and k.log == []
    assert code(k.write, "bus/pci/rescan", "x") == "EINVAL"
    k.write("bus/pci/rescan", "1")
    k.write("bus/pci/drivers_autoprobe", "0")
    assert k.read("bus/pci/drivers_autoprobe") == "0\n"


def test_spec_errors():
    bad = spec()
    bad["devices"][1]["parent"] = "0000:00:09.0"
    with pytest.raises(ValueError, match="parent"):
        se.Kernel(bad)
    bad = spec()
    bad["devices"][1]["driver"] = "nouveau"
    with pytest.raises(ValueError, match="nouveau"):
        se.Kernel(bad)
    with pytest.raises(ValueError, match="iommu"):
        se.Kernel(spec(iommu="arm"))


# ------------------------------------------------------------------------------------------------ mounted

# What an Ansible module does: plain os calls from a process of its own. Prints one JSON result per op.
RUNNER = r"""
import errno, json, os, sys
root, ops = sys.argv[1], json.loads(sys.argv[2])
out = []
for op, rel, *args in ops:
    path = os.path.join(root, rel)
    try:
        if op == "write":
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                out.append(os.write(fd, args[0].encode()))
            finally:
                os.close(fd)
        elif op == "read":
            fd = os.open(path, os.O_RDONLY)
            try:
                out.append(os.read(fd, 65536).decode())
            finally:
                os.close(fd)
        elif op == "create":
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            out.append(0)
        elif op == "readlink":
            out.append(os.readlink(path))
        elif op == "listdir":
            out.append(sorted(os.listdir(path)))
        elif op == "realpath":
            out.append(os.path.relpath(os.path.realpath(path), root))
        elif op == "stat":
            st = os.lstat(path)
            out.append([oct(st.st_mode), st.st_size])
        else:
            raise ValueError(op)
    except OSError as exc:
        out.append({"errno": errno.errorcode[exc.errno]})
print(json.dumps(out))
"""


def run_ops(root, *ops):
    done = subprocess.run([sys.executable, "-c", RUNNER, root, json.dumps(ops)], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


@pytest.fixture
def mount(tmp_path):
    """mount(spec) -> a live ``se.Mount`` at a fresh folder under tmp_path (a real path); unmounted after the test."""
    reason = se.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        count = []

        def make(the_spec):
            count.append(1)
            try:
                return stack.enter_context(se.mounted(the_spec, os.path.realpath(tmp_path) + f"/sys{len(count)}"))
            except se.MountError as exc:
                if any(word in exc.output for word in ("fuse:", "fusermount", "Operation not permitted", "Permission denied")):
                    pytest.skip(f"FUSE cannot be mounted here: {exc.output.strip()}")
                raise

        yield make


def test_mounted_vfio_flow_from_another_process(mount):
    live = mount(spec())
    root = live.path
    gpu = f"bus/pci/devices/{GPU}"
    assert run_ops(root, ("realpath", gpu), ("readlink", f"{gpu}/iommu_group"), ("listdir", "kernel/iommu_groups/14/devices"),
                   ("read", f"{gpu}/vendor"), ("read", f"{gpu}/driver_override"), ("realpath", f"{gpu}/driver")) == \
        [f"devices/pci0000:00/{BRIDGE}/{GPU}", "../../../../kernel/iommu_groups/14", [GPU, AUDIO], "0x10de\n", "(null)\n", "bus/pci/drivers/nvidia"]
    assert run_ops(root,
                   ("write", "bus/pci/drivers/vfio-pci/unbind", GPU),      # not bound there
                   ("write", "bus/pci/drivers/nvidia/bind", GPU),          # bound already
                   ("write", f"{gpu}/driver_override", "vfio-pci\n"),
                   ("write", "bus/pci/drivers/nvidia/unbind", GPU),
                   ("write", "bus/pci/drivers_probe", GPU),
                   ("realpath", f"{gpu}/driver"),
                   ("write", "bus/pci/drivers/snd_hda_intel/unbind", AUDIO),
                   ("write", f"bus/pci/devices/{AUDIO}/driver_override", "vfio-pci"),
                   ("write", "bus/pci/drivers/vfio-pci/bind", AUDIO),      # the spec's probe error
                   ("write", "bus/pci/drivers_probe", AUDIO),              # the same error, swallowed
                   ("listdir", f"bus/pci/devices/{AUDIO}"),
                   ("listdir", "bus/pci/drivers/vfio-pci")) == \
        [{"errno": "ENODEV"}, {"errno": "EBUSY"}, 9, 12, 12, "bus/pci/drivers/vfio-pci", 12, 8, {"errno": "EIO"}, 12,
         ["class", "device", "driver_override", "iommu", "iommu_group", "modalias", "numa_node", "subsystem", "subsystem_device",
          "subsystem_vendor", "vendor"],
         [GPU, "bind", "module", "new_id", "remove_id", "unbind"]]
    log = live.log()
    assert log[0] == ("bus/pci/drivers/vfio-pci/unbind", GPU, errno.ENODEV)
    assert log[2] == (f"devices/pci0000:00/{BRIDGE}/{GPU}/driver_override", "vfio-pci\n", 0)
    assert log[-2:] == [("bus/pci/drivers/vfio-pci/bind", AUDIO, errno.EIO), ("bus/pci/drivers_probe", AUDIO, 0)]
    assert len(log) == 9


def test_mounted_mdev_and_hot_reads(mount):
    root = mount(spec()).path
    assert run_ops(root, ("read", f"{TYPE}/available_instances"), ("write", f"{TYPE}/create", UUID1 + "\n"),
                   ("read", f"{TYPE}/available_instances"), ("write", f"{TYPE}/create", UUID1),
                   ("write", f"{TYPE}/create", UUID2), ("write", f"{TYPE}/create", UUID3), ("write", f"{TYPE}/create", "nope"),
                   ("listdir", "bus/mdev/devices"), ("realpath", f"bus/mdev/devices/{UUID1}/iommu_group"),
                   ("write", f"bus/mdev/devices/{UUID1}/remove", "1"), ("listdir", "bus/mdev/devices"),
                   ("read", f"{TYPE}/available_instances"), ("stat", f"bus/mdev/devices/{UUID1}")) == \
        ["2\n", 37, "1\n", {"errno": "EEXIST"}, 36, {"errno": "EUSERS"}, {"errno": "EINVAL"}, [UUID1, UUID2], "kernel/iommu_groups/17",
         1, [UUID2], "1\n", {"errno": "ENOENT"}]


def test_mounted_iommu_off_permissions_and_stat(mount):
    root = mount(spec(iommu=None)).path
    assert run_ops(root, ("listdir", "kernel/iommu_groups"), ("listdir", "class/iommu"), ("listdir", ""),
                   ("stat", f"bus/pci/devices/{GPU}/vendor"), ("stat", "bus/pci/drivers/vfio-pci/bind"), ("stat", f"bus/pci/devices/{GPU}"),
                   ("read", "bus/pci/drivers/vfio-pci/bind"), ("write", f"bus/pci/devices/{GPU}/vendor", "1"),
                   ("create", "bus/pci/drivers/xhci_hcd/unbind"), ("write", "bus/pci/drivers/xhci_hcd/unbind", USB),
                   ("read", ".emulator/log")) == \
        [[], [], ["bus", "class", "devices", "kernel", "module"], ["0o100444", 4096], ["0o100200", 4096],
         ["0o120777", len(f"../../../devices/pci0000:00/{BRIDGE}/{GPU}")],
         {"errno": "EACCES"}, {"errno": "EACCES"}, {"errno": "EACCES"}, {"errno": "ENOENT"}, ""]


def test_mounted_unmounts_on_failure_and_on_sigterm(mount, tmp_path):
    mount(spec())  # skips here when FUSE cannot be mounted
    where = str(tmp_path / "failing")
    with pytest.raises(RuntimeError, match="boom"):
        with se.mounted(spec(), where) as live:
            assert os.path.ismount(where)
            raise RuntimeError("boom")
    assert not os.path.ismount(where) and live.proc.returncode is not None
    with se.mounted(spec(), where) as live:
        live.proc.send_signal(signal.SIGTERM)  # libfuse's handler exits the loop and unmounts
        assert live.proc.wait(timeout=10) == 0
        assert not os.path.ismount(where)
    assert not os.path.ismount(where)
