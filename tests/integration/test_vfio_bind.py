# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.vfio_bind against an emulated PCI sysfs.

This machine has no PCI devices to pass through, so every test mounts a FUSE file system
(``sysfs_emulator.py``) that behaves as the kernel's /sys does for VFIO tooling: devices nested
under their bridges, drivers matching by id table or ``driver_override``, ``bind``/``unbind``/
``drivers_probe`` stores that bind, unbind and probe synchronously and fail with the kernel's
errno, IOMMU groups, and mediated device types with ``create``/``remove``. The module runs as
Ansible runs it (``ansible localhost -m``) with ``sysfs_root`` pointing at the mount. Where the
persistence files matter, Debian's own ``driverctl`` and ``mdevctl`` read them in a private mount
namespace where the emulated tree is /sys: what they would do at boot is done for real.

The tree: a GPU (10de:2684) and its audio function behind a root port, all three in IOMMU group
14; a second card of the same model (group 15); an NVMe drive (16); a USB controller whose
driver forbids unbinding (17); a two-port NIC on which vfio-pci's probe of port 0 fails (18); and
a vGPU-capable card offering mdev types (20).
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import sysfs_emulator  # pylint: disable=import-error
from conftest import run_module  # pylint: disable=import-error

MODULE = "replica.cloud.vfio_bind"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU, AUDIO, PORT = "0000:01:00.0", "0000:01:00.1", "0000:00:01.0"
GPU2, AUDIO2 = "0000:02:00.0", "0000:02:00.1"
NVME, USB, NIC0, NIC1, VGPU = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0", "0000:05:00.1", "0000:3b:00.0"
UUID1, UUID2, UUID3 = ("5b0a7b0e-7c8f-4a34-9ec2-2f8f3b0f5c11", "0f3c2d8e-1a52-4b63-8c47-6de5a0e0b9a2",
                       "c0ffee00-0000-4000-8000-000000000003")


def _dev(address, ids, klass, group, driver, parent=None, **extra):
    vendor, device = ids.split(":")
    return dict({"address": address, "vendor": f"0x{vendor}", "device": f"0x{device}", "class": klass,
                 "subsystem_vendor": f"0x{vendor}", "subsystem_device": "0x0001", "group": group, "driver": driver,
                 "parent": parent}, **extra)


SPEC = {
    "iommu": "intel",
    "drivers": {"nvidia": {"ids": ["10de:2684", "10de:20b5"]}, "snd_hda_intel": {"ids": ["10de:22ba"]},
                "pcieport": {"classes": ["0x0604"]}, "nvme": {"classes": ["0x0108"]},
                "xhci_hcd": {"classes": ["0x0c03"], "suppress_bind_attrs": True}, "igb": {"ids": ["8086:1521"]},
                "vfio-pci": {"ids": []}, "pci-stub": {"ids": []}},
    "devices": [
        _dev("0000:00:00.0", "8086:3e0f", "0x060000", 0, None),
        _dev(PORT, "8086:1901", "0x060400", 14, "pcieport"),
        _dev(GPU, "10de:2684", "0x030000", 14, "nvidia", PORT),
        _dev(AUDIO, "10de:22ba", "0x040300", 14, "snd_hda_intel", PORT),
        _dev("0000:00:02.0", "8086:1905", "0x060400", 15, "pcieport"),
        _dev(GPU2, "10de:2684", "0x030000", 15, "nvidia", "0000:00:02.0"),
        _dev(AUDIO2, "10de:22ba", "0x040300", 15, "snd_hda_intel", "0000:00:02.0"),
        _dev(NVME, "144d:a808", "0x010802", 16, "nvme"),
        _dev(USB, "1b21:2142", "0x0c0330", 17, "xhci_hcd"),
        _dev(NIC0, "8086:1521", "0x020000", 18, "igb", probe_errors={"vfio-pci": "EIO"}),
        _dev(NIC1, "8086:1521", "0x020000", 18, "igb"),
        _dev(VGPU, "10de:20b5", "0x030200", 20, "nvidia", mdev_types={
            "nvidia-558": {"name": "GRID A100-4C", "available_instances": 2, "device_api": "vfio-pci",
                           "description": "num_heads=1, frl_config=60, framebuffer=4096M"},
            "nvidia-559": {"name": "GRID A100-8C", "available_instances": 1, "device_api": "vfio-pci",
                           "description": "num_heads=1, frl_config=60, framebuffer=8192M"}}),
    ],
}

_REASON = None if os.geteuid() == 0 else "mounting the emulated sysfs (FUSE) needs root"
_REASON = _REASON or sysfs_emulator.unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"no emulated sysfs: {_REASON}")


@pytest.fixture
def sysfs(tmp_path):
    with sysfs_emulator.mounted(SPEC, str(tmp_path / "sys")) as mount:
        yield mount


@pytest.fixture
def confdirs(tmp_path):
    paths = {"driverctl_dir": str(tmp_path / "driverctl.d"), "mdevctl_dir": str(tmp_path / "mdevctl.d")}
    for path in paths.values():
        os.makedirs(path)
    for folder in ("callouts", "notifiers"):  # as Debian's mdevctl package ships /etc/mdevctl.d
        os.makedirs(os.path.join(paths["mdevctl_dir"], "scripts.d", folder))
    return paths


def vfio_bind(sysfs, *extra, **args):
    """The module's result; ``failed`` is its exit status (the ad-hoc output leaves the key out)."""
    rc, result = run_module(MODULE, dict({"sysfs_root": sysfs.path}, **args), *extra, check=False)
    result["failed"] = rc != 0
    return result


def vfio_bind_env(sysfs, env, **args):
    """The module's result when run with *env* (a crash or pause point)."""
    rc, result = run_module(MODULE, dict({"sysfs_root": sysfs.path}, **args), check=False, env=env)
    result["failed"] = rc != 0
    return result


def killed_at(sysfs, point, **args):
    result = vfio_bind_env(sysfs, {"REPLICA_CRASH_AT": point}, **args)
    assert result["failed"] and "Killed" in result.get("module_stderr", ""), result
    return result


def notes(sysfs):
    """The module's notes of devices it left unprobed in this tree (see _vfio.pending_name)."""
    from ansible_collections.replica.cloud.plugins.module_utils import _vfio  # pylint: disable=import-outside-toplevel
    folder = _vfio.PENDING_DIR
    mine = _vfio.pending_name(os.path.realpath(sysfs.path), "")
    return sorted(n for n in os.listdir(folder) if n.startswith(mine)) if os.path.isdir(folder) else []


def vfio_bind_diff(sysfs, check_mode=False, **args):
    """The module run as Ansible's executor runs it (a process with its arguments), in diff mode:
    the ad-hoc command line prints the diff apart from the result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict({"sysfs_root": sysfs.path, "_ansible_diff": True,
                                                "_ansible_check_mode": check_mode}, **args)}, handle)
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "plugins", "modules", "vfio_bind.py"), handle.name],
                              env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections")),
                              capture_output=True, text=True, check=False)
    finally:
        os.unlink(handle.name)
    return json.loads(proc.stdout)


def state(sysfs, address):
    """(driver, driver_override) of *address*, read as any tool reads them."""
    folder = os.path.join(sysfs.path, "bus", "pci", "devices", address)
    driver = os.path.basename(os.readlink(os.path.join(folder, "driver"))) if os.path.lexists(os.path.join(folder, "driver")) else None
    with open(os.path.join(folder, "driver_override"), encoding="ascii") as handle:
        return driver, handle.read().strip()


def tree(sysfs):
    """Every device's driver and override, and the mediated devices."""
    base = os.path.join(sysfs.path, "bus", "pci", "devices")
    mdevs = os.path.join(sysfs.path, "bus", "mdev", "devices")
    return ({a: state(sysfs, a) for a in sorted(os.listdir(base))},
            sorted(os.listdir(mdevs)) if os.path.isdir(mdevs) else [])


def stores(sysfs):
    return [(path, data.strip()) for path, data, dummy in sysfs.log()]


def in_namespace(sysfs, confdirs, *argv):
    """Run *argv* where the emulated tree is /sys and the definitions are /etc's (driverctl and
    mdevctl read fixed paths). Loading kernel modules is not part of the emulation (its vfio-pci
    is loaded), so there modprobe is ``true``: driverctl runs ``modprobe -q vfio-pci`` first."""
    script = ('mount --bind "$1" /sys && mkdir -p /etc/driverctl.d /etc/mdevctl.d && mount --bind "$2" /etc/driverctl.d '
              '&& mount --bind "$3" /etc/mdevctl.d && mount --bind /bin/true "$(readlink -f /sbin/modprobe)" && shift 3 '
              '&& exec "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", sysfs.path,
                           confdirs["driverctl_dir"], confdirs["mdevctl_dir"], *argv],
                          capture_output=True, text=True, check=False)


def test_whole_group_to_vfio_and_back(sysfs):
    before = tree(sysfs)
    result = vfio_bind(sysfs, device=GPU, iommu_group="whole")
    assert result["changed"]
    assert state(sysfs, GPU) == ("vfio-pci", "vfio-pci") and state(sysfs, AUDIO) == ("vfio-pci", "vfio-pci")
    assert state(sysfs, PORT) == ("pcieport", "(null)")  # the bridge stays with its driver
    assert [(d["address"], d["previous_driver"], d["driver"]) for d in result["devices"]] == [
        (GPU, "nvidia", "vfio-pci"), (AUDIO, "snd_hda_intel", "vfio-pci")]
    assert result["iommu_groups"] == {"14": [PORT, GPU, AUDIO]}
    # driver_override + unbind + drivers_probe, in that order, and never new_id
    assert stores(sysfs)[:3] == [(f"devices/pci0000:00/{PORT}/{GPU}/driver_override", "vfio-pci"),
                                 ("bus/pci/drivers/nvidia/unbind", GPU), ("bus/pci/drivers_probe", GPU)]
    assert not [p for p, dummy in stores(sysfs) if p.endswith("new_id")]
    assert tree(sysfs)[0][GPU2] == before[0][GPU2]  # the other card of the same model is not touched

    again = vfio_bind(sysfs, device=GPU, iommu_group="whole")
    assert not again["changed"] and again["changes"] == []

    back = vfio_bind(sysfs, device=GPU, iommu_group="whole", state="unbound")
    assert back["changed"] and {c["address"] for c in back["changes"]} == {GPU, AUDIO}
    assert tree(sysfs) == before  # each on the driver it had (chosen again by the kernel), overrides cleared
    assert not vfio_bind(sysfs, device=GPU, iommu_group="whole", state="unbound")["changed"]


def test_strict_refuses_a_group_with_host_drivers_and_touches_nothing(sysfs):
    before = tree(sysfs)
    result = vfio_bind(sysfs, device=GPU)
    assert result["failed"]
    assert "IOMMU group 14" in result["msg"] and AUDIO in result["msg"] and "snd_hda_intel" in result["msg"]
    assert "iommu_group=whole" in result["msg"]
    assert tree(sysfs) == before and stores(sysfs) == []


def test_strict_binds_a_device_alone_in_its_group(sysfs):
    result = vfio_bind(sysfs, device=NVME)
    assert result["changed"] and state(sysfs, NVME) == ("vfio-pci", "vfio-pci")
    assert result["iommu_groups"] == {"16": [NVME]}


def test_ids_bind_every_matching_card(sysfs):
    result = vfio_bind(sysfs, device="10de:2684", iommu_group="whole")
    assert [d["address"] for d in result["devices"]] == [GPU, GPU2, AUDIO, AUDIO2]
    assert all(state(sysfs, a)[0] == "vfio-pci" for a in (GPU, GPU2, AUDIO, AUDIO2))
    assert state(sysfs, VGPU)[0] == "nvidia"  # another model of the same vendor
    back = vfio_bind(sysfs, device="10de:2684", iommu_group="whole", state="unbound")
    assert len(back["changes"]) == 4 and state(sysfs, GPU2) == ("nvidia", "(null)")
    # ids that match nothing: an error to bind, no change to unbind
    assert "no PCI device has the ids 1234:5678" in vfio_bind(sysfs, device="1234:5678")["msg"]
    assert not vfio_bind(sysfs, device="1234:5678", state="unbound")["changed"]


def test_check_mode_and_diff_change_nothing(sysfs):
    before = tree(sysfs)
    result = vfio_bind_diff(sysfs, check_mode=True, device=GPU, iommu_group="whole")
    assert result["changed"]
    assert result["diff"]["before"] == f"{GPU} nvidia\n{AUDIO} snd_hda_intel\n"
    assert result["diff"]["after"] == f"{GPU} vfio-pci [driver_override=vfio-pci]\n{AUDIO} vfio-pci [driver_override=vfio-pci]\n"
    assert [d["driver"] for d in result["devices"]] == ["vfio-pci", "vfio-pci"]
    assert tree(sysfs) == before and stores(sysfs) == []


def test_a_driver_that_cannot_unbind_fails_before_any_write(sysfs):
    result = vfio_bind(sysfs, device=USB)
    assert "xhci_hcd does not let 0000:04:00.0 go at run time" in result["msg"] and "vfio-pci.ids=" in result["msg"]
    assert state(sysfs, USB) == ("xhci_hcd", "(null)") and stores(sysfs) == []


def test_a_probe_failing_midway_puts_the_group_back(sysfs):
    before = tree(sysfs)
    result = vfio_bind(sysfs, device=NIC1, iommu_group="whole")
    assert result["failed"] and "vfio-pci did not take 0000:05:00.0" in result["msg"]
    assert "put back as it was" in result["msg"] and result["changes"] == []
    assert tree(sysfs) == before
    written = stores(sysfs)
    # NIC1 really was on vfio-pci before NIC0's probe failed, and was returned to igb
    assert ("bus/pci/drivers/vfio-pci/unbind", NIC1) in written
    assert written.index(("bus/pci/drivers/igb/unbind", NIC0)) < written.index(("bus/pci/drivers/vfio-pci/unbind", NIC1))


def test_iommu_off_says_what_to_put_on_the_command_line(tmp_path):
    spec = copy.deepcopy(SPEC)
    spec["iommu"] = None
    with sysfs_emulator.mounted(spec, str(tmp_path / "sys")) as mount:
        result = vfio_bind(mount, device=NVME)
        assert result["failed"] and "the IOMMU is off" in result["msg"]
        # another tree than the live /sys: its CPU is unknown, so both vendors' options
        assert "intel_iommu=on iommu=pt on Intel" in result["msg"] and "iommu=pt (AMD-Vi" in result["msg"]
        assert "reboot" in result["msg"]
        assert stores(mount) == []


def test_bad_devices(sysfs):
    assert "there is no PCI device 0000:09:00.0" in vfio_bind(sysfs, device="09:00.0")["msg"]
    assert "neither a PCI address" in vfio_bind(sysfs, device="gpu0")["msg"]
    assert "is a PCI bridge" in vfio_bind(sysfs, device=PORT, iommu_group="whole")["msg"]
    assert "goes with state=unbound" in vfio_bind(sysfs, device=NVME, driver="nvme")["msg"]
    assert stores(sysfs) == []


def test_unbound_to_a_named_driver(sysfs):
    vfio_bind(sysfs, device=NVME)
    result = vfio_bind(sysfs, device=NVME, state="unbound", driver="pci-stub")
    assert result["changed"] and state(sysfs, NVME) == ("pci-stub", "(null)")
    assert not vfio_bind(sysfs, device=NVME, state="unbound", driver="pci-stub")["changed"]
    back = vfio_bind(sysfs, device=NVME, state="unbound", driver="nvme")
    assert back["changed"] and state(sysfs, NVME) == ("nvme", "(null)")
    assert "is not loaded" in vfio_bind(sysfs, device=NVME, state="unbound", driver="nouveau")["msg"]


def test_persist_is_driverctls_definition_and_driverctl_loads_it(sysfs, confdirs):
    if not shutil.which("driverctl") or not shutil.which("unshare"):
        pytest.skip("driverctl is not installed (scripts/setup installs it)")
    result = vfio_bind(sysfs, device=GPU, iommu_group="whole", persist=True, driverctl_dir=confdirs["driverctl_dir"])
    files = sorted(os.listdir(confdirs["driverctl_dir"]))
    assert files == [f"pci-{GPU}", f"pci-{AUDIO}"][::-1] or files == sorted([f"pci-{GPU}", f"pci-{AUDIO}"])
    assert result["files"]["written"] == [os.path.join(confdirs["driverctl_dir"], f"pci-{a}") for a in (GPU, AUDIO)]
    for name in files:
        with open(os.path.join(confdirs["driverctl_dir"], name), encoding="ascii") as handle:
            assert handle.read() == "vfio-pci\n"
    assert not vfio_bind(sysfs, device=GPU, iommu_group="whole", persist=True,
                         driverctl_dir=confdirs["driverctl_dir"])["changed"]
    listed = in_namespace(sysfs, confdirs, "driverctl", "list-overrides")
    assert listed.returncode == 0, listed.stderr
    assert f"{GPU} vfio-pci" in listed.stdout and f"{AUDIO} vfio-pci" in listed.stdout

    # a boot: the host drivers took the devices first (override gone with the reboot) ...
    for address, driver in ((GPU, "nvidia"), (AUDIO, "snd_hda_intel")):
        for path, text in ((f"bus/pci/devices/{address}/driver_override", "\n"), ("bus/pci/drivers/vfio-pci/unbind", address),
                           ("bus/pci/drivers_probe", address)):
            with open(os.path.join(sysfs.path, path), "w", encoding="ascii") as handle:
                handle.write(text)
        assert state(sysfs, address) == (driver, "(null)")
    # ... then driverctl@pci-ADDRESS.service runs what it runs at boot, from the module's definitions
    for address in (GPU, AUDIO):
        loaded = in_namespace(sysfs, confdirs, "driverctl", "load-override", address)
        assert loaded.returncode == 0, loaded.stderr
        assert state(sysfs, address) == ("vfio-pci", "vfio-pci")

    back = vfio_bind(sysfs, device=GPU, iommu_group="whole", state="unbound", driverctl_dir=confdirs["driverctl_dir"])
    assert sorted(back["files"]["removed"]) == sorted(os.path.join(confdirs["driverctl_dir"], f) for f in files)
    assert os.listdir(confdirs["driverctl_dir"]) == []
    assert state(sysfs, GPU) == ("nvidia", "(null)")


def test_persist_rolls_back_with_the_devices(sysfs, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where driverctl.d should be\n")
    before = tree(sysfs)
    result = vfio_bind(sysfs, device=NVME, persist=True, driverctl_dir=str(blocked))
    assert result["failed"] and "put back as it was" in result["msg"]
    assert tree(sysfs) == before


def test_mediated_devices_with_mdevctl(sysfs, confdirs):
    items = [{"type": "nvidia-558", "uuid": UUID1}, {"type": "nvidia-558", "uuid": UUID2}]
    types = os.path.join(sysfs.path, "bus", "pci", "devices", VGPU, "mdev_supported_types")
    result = vfio_bind_diff(sysfs, device=VGPU, mdev=items, persist=True, mdevctl_dir=confdirs["mdevctl_dir"])
    assert result["changed"] and [c["action"] for c in result["changes"]] == ["create", "create"]
    assert result["diff"]["after"] == f"{UUID1} nvidia-558 on {VGPU}\n{UUID2} nvidia-558 on {VGPU}\n"
    assert tree(sysfs)[1] == sorted([UUID1, UUID2])
    with open(os.path.join(types, "nvidia-558", "available_instances"), encoding="ascii") as handle:
        assert handle.read().strip() == "0"
    assert state(sysfs, VGPU) == ("nvidia", "(null)")  # the parent keeps its host driver
    assert not vfio_bind(sysfs, device=VGPU, mdev=items, persist=True, mdevctl_dir=confdirs["mdevctl_dir"])["changed"]

    # no instance left: refused before anything is created
    count = len(stores(sysfs))
    full = vfio_bind(sysfs, device=VGPU, mdev=[{"type": "nvidia-558", "uuid": UUID3}])
    assert "0 instance(s) of nvidia-558 left" in full["msg"] and len(stores(sysfs)) == count
    assert "offers nvidia-558, nvidia-559" in vfio_bind(sysfs, device=VGPU, mdev=[{"type": "nvidia-1", "uuid": UUID3}])["msg"]
    assert "offers no mediated device types" in vfio_bind(sysfs, device=NVME, mdev=[{"type": "nvidia-558", "uuid": UUID3}])["msg"]
    other = vfio_bind(sysfs, device=VGPU, mdev=[{"type": "nvidia-559", "uuid": UUID1}])
    assert f"{UUID1} exists as nvidia-558" in other["msg"]

    if shutil.which("mdevctl") and shutil.which("unshare"):
        defined = in_namespace(sysfs, confdirs, "mdevctl", "list", "--defined", "--dumpjson")
        assert defined.returncode == 0, defined.stderr
        listing = json.loads(defined.stdout)  # [{PARENT: [{UUID: {mdev_type, start, attrs}}]}]
        found = {(parent, uuid, d["mdev_type"], d["start"]) for group in listing for parent, entries in group.items()
                 for entry in entries for uuid, d in entry.items()}
        assert found == {(VGPU, UUID1, "nvidia-558", "auto"), (VGPU, UUID2, "nvidia-558", "auto")}
        active = in_namespace(sysfs, confdirs, "mdevctl", "list")
        assert f"{UUID1} {VGPU} nvidia-558 auto (defined)" in active.stdout, active.stdout + active.stderr
        # mdevctl starts the module's definition, as its udev rule does when the parent appears
        with open(os.path.join(sysfs.path, "bus", "mdev", "devices", UUID2, "remove"), "w", encoding="ascii") as handle:
            handle.write("1")
        started = in_namespace(sysfs, confdirs, "mdevctl", "start", "--uuid", UUID2)
        assert started.returncode == 0, started.stderr
        assert UUID2 in tree(sysfs)[1]
    else:
        print("mdevctl is not installed: its reading of the definitions is not checked")

    gone = vfio_bind(sysfs, device=VGPU, mdev=items, state="unbound", mdevctl_dir=confdirs["mdevctl_dir"])
    assert gone["changed"] and [c["action"] for c in gone["changes"]] == ["remove", "remove"]
    assert tree(sysfs)[1] == [] and os.listdir(confdirs["mdevctl_dir"]) == ["scripts.d"]  # VGPU's folder went too
    with open(os.path.join(types, "nvidia-558", "available_instances"), encoding="ascii") as handle:
        assert handle.read().strip() == "2"
    assert not vfio_bind(sysfs, device=VGPU, mdev=items, state="unbound", mdevctl_dir=confdirs["mdevctl_dir"])["changed"]


def test_mdev_check_mode(sysfs):
    result = vfio_bind(sysfs, "--check", device=VGPU, mdev=[{"type": "nvidia-559", "uuid": UUID3}])
    assert result["changed"] and tree(sysfs)[1] == [] and stores(sysfs) == []


def test_sysfs_root_that_is_not_sysfs():
    with tempfile.TemporaryDirectory() as empty:
        rc, result = run_module(MODULE, {"device": "10de:2684", "sysfs_root": empty}, check=False)
        assert rc != 0 and "is sysfs_root" in result["msg"]


@pytest.mark.parametrize("point", ["vfio-unbound", "vfio-moved"])
def test_killed_while_binding_then_converges(sysfs, confdirs, point):
    """Killed after the GPU left its host driver (before the probe), or after the group moved
    (before the driverctl definitions): the re-run finishes, the one after changes nothing."""
    args = {"device": GPU, "iommu_group": "whole", "persist": True, "driverctl_dir": confdirs["driverctl_dir"]}
    killed_at(sysfs, point, **args)
    if point == "vfio-unbound":
        assert state(sysfs, GPU) == (None, "vfio-pci") and os.listdir(confdirs["driverctl_dir"]) == []
    else:
        assert state(sysfs, AUDIO) == ("vfio-pci", "vfio-pci") and os.listdir(confdirs["driverctl_dir"]) == []
    result = vfio_bind(sysfs, **args)
    assert not result["failed"] and result["changed"], result
    assert state(sysfs, GPU) == state(sysfs, AUDIO) == ("vfio-pci", "vfio-pci")
    assert sorted(os.listdir(confdirs["driverctl_dir"])) == [f"pci-{GPU}", f"pci-{AUDIO}"]
    assert not vfio_bind(sysfs, **args)["changed"]


def test_killed_while_returning_a_device_then_converges(sysfs):
    """Killed between the GPU's unbind from vfio-pci and its probe: it has no driver and no
    override, which reads as "no driver takes it"; the run's note makes the re-run probe it (before
    the note, the re-run said ok and the GPU stayed without a driver)."""
    before = tree(sysfs)
    vfio_bind(sysfs, device=GPU, iommu_group="whole")
    killed_at(sysfs, "vfio-released", device=GPU, iommu_group="whole", state="unbound")
    assert state(sysfs, GPU) == (None, "(null)") and len(notes(sysfs)) == 1
    result = vfio_bind(sysfs, device=GPU, iommu_group="whole", state="unbound")
    assert not result["failed"] and {c["address"] for c in result["changes"]} == {GPU, AUDIO}, result
    assert tree(sysfs) == before and notes(sysfs) == []
    assert not vfio_bind(sysfs, device=GPU, iommu_group="whole", state="unbound")["changed"]


def test_killed_between_two_mediated_devices_then_converges(sysfs, confdirs):
    items = [{"type": "nvidia-558", "uuid": UUID1}, {"type": "nvidia-558", "uuid": UUID2}]
    args = {"device": VGPU, "mdev": items, "persist": True, "mdevctl_dir": confdirs["mdevctl_dir"]}
    killed_at(sysfs, "vfio-mdev-created", **args)
    assert tree(sysfs)[1] == [UUID1]
    result = vfio_bind(sysfs, **args)
    assert not result["failed"] and [c["uuid"] for c in result["changes"]] == [UUID2], result
    assert tree(sysfs)[1] == sorted([UUID1, UUID2])
    assert sorted(os.listdir(os.path.join(confdirs["mdevctl_dir"], VGPU))) == sorted([UUID1, UUID2])
    assert not vfio_bind(sysfs, **args)["changed"]


def test_two_runs_at_once_one_moves_and_the_other_waits(sysfs):
    """The first run is held (a pause point) after planning and before moving; the second starts
    meanwhile. Without the lock the second moved the group first and the first, unbinding the GPU
    from a driver it had left, failed."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(vfio_bind_env, sysfs, {"REPLICA_PAUSE_AT": "vfio-planned", "REPLICA_PAUSE_SECONDS": "3"},
                           device=GPU, iommu_group="whole")
        time.sleep(1.5)
        second = pool.submit(vfio_bind_env, sysfs, {}, device=GPU, iommu_group="whole")
        first, other = held.result(), second.result()
    assert not first["failed"] and not other["failed"], (first, other)
    assert first["changed"] and not other["changed"]
    assert state(sysfs, GPU) == state(sysfs, AUDIO) == ("vfio-pci", "vfio-pci")
