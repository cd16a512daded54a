#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vfio_bind
short_description: Give PCI devices to vfio-pci (with their IOMMU group), and create mediated devices
version_added: "0.1.0"
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: the vfio-pci kernel module (kmod to load it); driverctl or mdevctl for O(persist)."
description:
  - Binds PCI devices to C(vfio-pci) for passthrough to VMs, and returns them to a host driver; or creates and
    removes mediated devices (vGPUs and the like) on a parent device.
  - Binding uses the kernel's C(driver_override) and C(drivers_probe), as C(driverctl) does - the device's
    C(driver_override) is set to C(vfio-pci), it is unbound from its driver, and the kernel probes it again, so no
    other device with the same ids is touched (no C(new_id) races). Returning it clears the override, unbinds it and
    probes it again; the kernel then binds the driver its ids match (the one it had), or O(driver) when named.
  - A device is passed through with its whole IOMMU group. O(iommu_group=strict) fails when another member of the
    group is bound to a host driver; O(iommu_group=whole) gives every member to C(vfio-pci). PCI bridges are left
    to their driver (the kernel does not count them against a group, and vfio-pci cannot take them).
  - A failure midway (a driver refusing the device, a probe failing) puts every device already moved back where it
    was, driver and override, before the module fails; persistence files are written only after the devices moved.
  - Killed at any point (C(kill -9)), a re-run converges and leaves no device stranded. A device is held for
    C(vfio-pci) by its override before it leaves its host driver, so a run killed between the unbind and the probe
    leaves it without a driver but with the override, which the re-run probes. Returning a device to the driver the
    kernel picks has no such hold, so the run notes the device in C(/run/replica/vfio-pending) (root's) before
    unbinding it and removes the note after the probe; a re-run probes a noted device. Persistence files are written
    whole (a sibling renamed over the file) after the devices moved; a mediated device created before a kill is found
    by the re-run.
  - One run at a time changes a sysfs tree's devices; another waits for it (a lock in C(/run/replica/locks), up to 10
    minutes, then fails naming the holder).
  - With O(mdev), the module creates (O(state=bound)) or removes (O(state=unbound)) mediated devices on O(device),
    which keeps its host driver (the parent driver provides the mdev types), by writing the uuid to
    C(mdev_supported_types/TYPE/create) and C(1) to the device's C(remove).
  - O(persist=true) keeps the result across reboots with the tools Debian packages for it. A bound device gets
    driverctl's definition C(/etc/driverctl.d/pci-ADDRESS) (containing C(vfio-pci)) - driverctl's udev rule starts
    C(driverctl@pci-ADDRESS.service) when the device appears at boot, which sets the override and reprobes it, as this
    module does. A mediated device gets mdevctl's definition C(/etc/mdevctl.d/PARENT/UUID), which mdevctl starts when
    the parent appears (C(start=auto)). O(state=unbound) removes those definitions whatever O(persist) says.
options:
  device:
    description:
      - The device, a PCI address (C(0000:01:00.0) or C(01:00.0), as C(lspci -D) prints), or vendor and device ids
        (C(10de:2684), as C(lspci -nn) prints) for every device with those ids.
      - With O(mdev), the parent device's address.
    type: str
    required: true
  state:
    description:
      - C(bound) gives the devices to C(vfio-pci) (with O(mdev), creates the mediated devices).
      - C(unbound) returns them to a host driver (with O(mdev), removes the mediated devices) and removes their
        persistence files. Ids that match no device are no change.
    type: str
    choices: [bound, unbound]
    default: bound
  iommu_group:
    description:
      - C(strict) fails when another member of a device's IOMMU group (bridges excepted) is bound to a host driver, and
        only moves the devices asked for.
      - C(whole) moves every member of the group (bridges excepted) too - to C(vfio-pci) with O(state=bound), and the
        members on C(vfio-pci) back with O(state=unbound).
    type: str
    choices: [strict, whole]
    default: strict
  driver:
    description:
      - With O(state=unbound), the driver to bind the devices to (set as their override while they are probed, then
        cleared). Without it, the kernel binds the driver the devices' ids match, which is the one they had.
    type: str
  persist:
    description:
      - Keep the binding (or the mediated devices) across reboots with driverctl's (mdevctl's) definitions; needs
        C(driverctl) (C(mdevctl)) installed on a live system.
      - False leaves existing definitions as they are; O(state=unbound) always removes them.
    type: bool
    default: false
  mdev:
    description:
      - Mediated devices to create on O(device) (O(state=bound)) or remove (O(state=unbound)); C(mdevctl types) lists
        the types a parent offers.
    type: list
    elements: dict
    suboptions:
      type:
        description: The mdev type (a folder of the parent's C(mdev_supported_types), e.g. C(nvidia-558), C(i915-GVTg_V5_4)).
        type: str
        required: true
      uuid:
        description: The device's uuid (its name; C(uuidgen) makes one). Required so that a second run finds it.
        type: str
        required: true
      start:
        description: mdevctl's start mode in the definition written by O(persist=true).
        type: str
        choices: [auto, manual]
        default: auto
  sysfs_root:
    description:
      - Where sysfs is mounted. Another tree (a chroot's, or a test's emulated one) is acted on the same way; then the
        module loads no kernel module (C(vfio-pci) must be there) and does not require driverctl or mdevctl.
    type: path
    default: /sys
  driverctl_dir:
    description: Where driverctl's definitions are (give a chroot's or a test's).
    type: path
    default: /etc/driverctl.d
  mdevctl_dir:
    description: Where mdevctl's definitions are (give a chroot's or a test's).
    type: path
    default: /etc/mdevctl.d
notes:
  - Passthrough needs the IOMMU on; when C(SYSFS/kernel/iommu_groups) is empty the module fails and says what to add to
    the kernel command line (C(intel_iommu=on iommu=pt) on Intel, C(iommu=pt) on AMD); the C(replica.cloud.gpu) role
    sets it. Mediated devices do not need it.
  - A driver that forbids unbinding at run time (no C(unbind) file) cannot give its device up while the host runs; the
    module fails before touching anything. Give such a device to vfio-pci at boot (C(vfio-pci.ids=) on the kernel
    command line, which the gpu role sets for the devices it binds).
  - Binding moves the device away from its host driver at once - whatever used it (a display, a CUDA program) loses it.
  - The module does not record the driver a device had; C(state=unbound) relies on the kernel choosing it again by
    the device's ids (or on O(driver)). A driver that is not loaded binds nothing; the result then says C(driver=null).
attributes:
  check_mode:
    description: Reads the devices and reports what would move (and the files that would be written), writing nothing.
    support: full
  diff_mode:
    description: Shows each device's driver and override (or the parent's mediated devices) before and after.
    support: full
  platform:
    description: Linux with sysfs; persistence with Debian's driverctl and mdevctl.
    support: full
    platforms: debian
"""

EXAMPLES = r"""
- name: Pass the GPU and its audio function (one IOMMU group) through, at every boot too
  replica.cloud.vfio_bind:
    device: "0000:01:00.0"
    iommu_group: whole
    persist: true

- name: Every card of this model
  replica.cloud.vfio_bind:
    device: "10de:2684"
    iommu_group: whole

- name: Give it back to the host's driver
  replica.cloud.vfio_bind:
    device: "0000:01:00.0"
    iommu_group: whole
    state: unbound

- name: Two vGPUs on a card whose host driver offers mdev types
  replica.cloud.vfio_bind:
    device: "0000:3b:00.0"
    mdev:
      - {type: nvidia-558, uuid: 5b0a7b0e-7c8f-4a34-9ec2-2f8f3b0f5c11}
      - {type: nvidia-558, uuid: 0f3c2d8e-1a52-4b63-8c47-6de5a0e0b9a2}
    persist: true
"""

RETURN = r"""
devices:
  description: The devices acted on (asked for, and the group members O(iommu_group=whole) added), after the run.
  returned: when not O(mdev)
  type: list
  elements: dict
  contains:
    address: {description: The PCI address., type: str}
    ids: {description: Vendor and device ids (C(10de:2684))., type: str}
    iommu_group: {description: Its IOMMU group., type: str}
    previous_driver: {description: The driver it had before the run (null for none)., type: str}
    driver: {description: "The driver it has now (what it would have, in check mode).", type: str}
  sample: [{address: "0000:01:00.0", ids: "10de:2684", iommu_group: "14", previous_driver: nvidia, driver: vfio-pci}]
iommu_groups:
  description: The members of each IOMMU group of the devices (bridges included).
  returned: when not O(mdev)
  type: dict
  sample: {"14": ["0000:01:00.0", "0000:01:00.1"]}
changes:
  description: The devices this run moved (or would), with driver and override before and after.
  returned: always
  type: list
  elements: dict
  sample: [{address: "0000:01:00.0", before: {driver: nvidia, override: null}, after: {driver: vfio-pci, override: vfio-pci}}]
mdevs:
  description: The mediated devices of O(mdev) after the run, each with C(uuid), C(type), C(parent) and C(present).
  returned: when O(mdev)
  type: list
  elements: dict
files:
  description: Persistence files written (C(written)) and removed (C(removed)) by this run (or that would be).
  returned: always
  type: dict
  sample: {written: [/etc/driverctl.d/pci-0000:01:00.0], removed: []}
"""

import errno
import functools
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _journal
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils import _runner
from ansible_collections.replica.cloud.plugins.module_utils import _vfio as vfio
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text, write_text

MESSAGES = {errno.EBUSY: "busy", errno.ENODEV: "the driver does not take this device", errno.EINVAL: "invalid",
            errno.EEXIST: "it exists already", errno.EUSERS: "no instance of this type is left"}


class Sysfs:
    """Reads and writes a sysfs tree (the live one, or another at *root*)."""

    def __init__(self, root):
        self.root = root
        self.real = os.path.realpath(root)
        self.live = self.real == "/sys"  # the running kernel's: modprobe, driverctl/mdevctl, the CPU

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def read(self, path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def write(self, path, text, what):
        """One store to a sysfs attribute; the kernel's refusal comes back as the write's errno."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise vfio.VfioError(f"{what}: cannot open {path}: {exc.strerror}") from exc
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            reason = MESSAGES.get(exc.errno, exc.strerror)
            raise vfio.VfioError(f"{what}: the kernel refused writing {text.strip()!r} to {path} "
                                 f"({errno.errorcode.get(exc.errno, exc.errno)}: {reason}; journalctl -k says more)") from exc
        finally:
            os.close(fd)

    @staticmethod
    def link_name(path):
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None

    def device_dir(self, address):
        return self.path("bus", "pci", "devices", address)

    def addresses(self):
        try:
            return sorted(os.listdir(self.path("bus", "pci", "devices")))
        except OSError as exc:
            raise vfio.VfioError(f"{self.path('bus', 'pci', 'devices')} cannot be read ({exc.strerror}): is sysfs_root "
                                 f"{self.root} a sysfs tree?") from exc

    def device(self, address):
        folder = self.device_dir(address)
        try:
            return {"address": address, "vendor": vfio.hex_id(self.read(os.path.join(folder, "vendor"))),
                    "device": vfio.hex_id(self.read(os.path.join(folder, "device"))),
                    "class": int(self.read(os.path.join(folder, "class")).strip(), 16),
                    "driver": self.link_name(os.path.join(folder, "driver")),
                    "override": vfio.parse_override(self.read(os.path.join(folder, "driver_override"))),
                    "group": self.link_name(os.path.join(folder, "iommu_group")),
                    "pending": os.path.exists(self.pending_path(address))}
        except (OSError, ValueError) as exc:
            raise vfio.VfioError(f"cannot read PCI device {address} in {folder}: {exc}") from exc

    def pending_path(self, address):
        """The note that a killed run left *address* between its unbind from vfio-pci and its probe."""
        return os.path.join(vfio.PENDING_DIR, vfio.pending_name(self.real, address))

    def iommu_on(self):
        try:
            return bool(os.listdir(self.path("kernel", "iommu_groups")))
        except OSError:
            return False

    def group_members(self, group):
        try:
            return sorted(os.listdir(self.path("kernel", "iommu_groups", group, "devices")))
        except OSError as exc:
            raise vfio.VfioError(f"cannot list IOMMU group {group}: {exc.strerror}") from exc

    def driver_dir(self, name):
        return self.path("bus", "pci", "drivers", name)

    def mdevs(self):
        """uuid -> {parent, type} of the host's mediated devices."""
        base = self.path("bus", "mdev", "devices")
        found = {}
        for uuid in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            real = os.path.realpath(os.path.join(base, uuid))
            found[uuid] = {"parent": os.path.basename(os.path.dirname(real)),
                           "type": self.link_name(os.path.join(real, "mdev_type"))}
        return found

    def mdev_types(self, parent):
        """type -> available instances, of *parent*'s ``mdev_supported_types`` (None: it has none)."""
        base = os.path.join(self.device_dir(parent), "mdev_supported_types")
        if not os.path.isdir(base):
            return None
        types = {}
        for name in sorted(os.listdir(base)):
            try:
                types[name] = int(self.read(os.path.join(base, name, "available_instances")).strip())
            except (OSError, ValueError):
                types[name] = 0
        return types


class Mover:
    """The sysfs writes of a run, journaled so that a failure puts everything back."""

    def __init__(self, sysfs):
        self.sysfs = sysfs
        self.journal = _journal.Journal()

    def set_override(self, address, value):
        self.sysfs.write(os.path.join(self.sysfs.device_dir(address), "driver_override"), f"{value or ''}\n",
                         f"setting the driver_override of {address}")

    def unbind(self, address, driver):
        self.sysfs.write(os.path.join(self.sysfs.driver_dir(driver), "unbind"), address,
                         f"unbinding {address} from {driver}")

    def probe(self, address):
        self.sysfs.write(self.sysfs.path("bus", "pci", "drivers_probe"), address, f"probing {address}")

    def note(self, address):
        """Note that *address* is about to be taken off vfio-pci without a driver to hold it for the
        probe (what a re-run after ``kill -9`` reads as "probe it", see ``_vfio.pending_name``)."""
        _lock.safe_folder(vfio.PENDING_DIR)
        with open(self.sysfs.pending_path(address), "w", encoding="utf-8") as handle:
            handle.write(f"{address} of {self.sysfs.real}: unbound from vfio-pci, to be probed\n")

    def done(self, address):
        """*address* is where the run wants it: its note, if any, goes."""
        try:
            os.unlink(self.sysfs.pending_path(address))
        except FileNotFoundError:
            pass

    def bind(self, dev):
        """Give *dev* to vfio-pci: override, unbind, probe; fails unless vfio-pci took it. The
        override comes first and holds the device for vfio-pci: killed after the unbind, a re-run
        finds it driverless with the override and probes it."""
        address = dev["address"]
        self.journal.record(f"binding {address} to vfio-pci", functools.partial(self.restore, address, dict(dev)))
        if dev["override"] != vfio.VFIO:
            self.set_override(address, vfio.VFIO)
        if dev["driver"] != vfio.VFIO:
            if dev["driver"] is not None:
                self.unbind(address, dev["driver"])
                _lock.crash_point("vfio-unbound")
            self.probe(address)
        now = self.sysfs.device(address)
        if now["driver"] != vfio.VFIO:
            raise vfio.VfioError(f"vfio-pci did not take {address} when probed (it is on {now['driver'] or 'no driver'}): "
                                 f"its probe failed; journalctl -k says why")
        self.done(address)
        return now

    def release(self, dev, driver):
        """Take *dev* off vfio-pci: clear its override (or set *driver*), unbind, probe. Without
        *driver* nothing holds the device between the unbind and the probe, so a note does."""
        address = dev["address"]
        self.journal.record(f"releasing {address}", functools.partial(self.restore, address, dict(dev)))
        move = vfio.is_vfio(dev["driver"]) or (driver is not None and dev["driver"] != driver)
        if dev["override"] != driver:
            self.set_override(address, driver)
        if move and dev["driver"] is not None:
            self.note(address)
            self.unbind(address, dev["driver"])
            _lock.crash_point("vfio-released")
        if move or dev["driver"] is None:
            self.probe(address)
        now = self.sysfs.device(address)
        if driver is not None:
            if now["driver"] != driver:
                raise vfio.VfioError(f"{driver} did not take {address} when probed (it is on {now['driver'] or 'no driver'}): "
                                     f"does {driver} drive this device? journalctl -k says more")
            self.set_override(address, None)
            now = self.sysfs.device(address)
        self.done(address)
        return now

    def restore(self, address, before):
        now = self.sysfs.device(address)
        if now["driver"] != before["driver"]:
            if now["driver"] is not None:
                self.unbind(address, now["driver"])
            if before["driver"] is not None:
                self.set_override(address, before["driver"])
                self.probe(address)
        if self.sysfs.device(address)["override"] != before["override"]:
            self.set_override(address, before["override"])
        now = self.sysfs.device(address)
        if (now["driver"], now["override"]) != (before["driver"], before["override"]):
            raise vfio.VfioError(f"{address} is on {now['driver']} (override {now['override']}), not back on "
                                 f"{before['driver']} (override {before['override']})")
        if not before.get("pending"):
            self.done(address)

    def _create(self, parent, item):
        path = os.path.join(self.sysfs.device_dir(parent), "mdev_supported_types", item["type"], "create")
        self.sysfs.write(path, item["uuid"], f"creating mediated device {item['uuid']} ({item['type']}) on {parent}")

    def _remove(self, item):
        path = self.sysfs.path("bus", "mdev", "devices", item["uuid"], "remove")
        self.sysfs.write(path, "1", f"removing mediated device {item['uuid']}")

    def create_mdev(self, parent, item):
        self._create(parent, item)
        self.journal.record(f"creating mediated device {item['uuid']}", functools.partial(self._remove, item))
        _lock.crash_point("vfio-mdev-created")

    def remove_mdev(self, parent, item):
        self._remove(item)
        self.journal.record(f"removing mediated device {item['uuid']}", functools.partial(self._create, parent, item))

    def rollback(self):
        """Undo the journal, newest first; returns what could not be undone."""
        return self.journal.rollback((vfio.VfioError, OSError))


class Files:
    """Persistence files, written atomically and put back on failure."""

    def __init__(self, check_mode):
        self.check_mode = check_mode
        self.written, self.removed = [], []
        self.undo = _journal.Journal()

    def put(self, path, text, same=None):
        old = read_text(path)
        if old is not None and (old == text or (same is not None and same(old))):
            return
        self.written.append(path)
        if self.check_mode:
            return
        self.undo.record(f"writing {path}", functools.partial(self._put_back, path, old))
        write_text(path, text)

    def drop(self, path, prune=False):
        """Remove *path*; with *prune*, its folder too when it is left empty."""
        old = read_text(path)
        if old is None:
            return
        self.removed.append(path)
        if self.check_mode:
            return
        self.undo.record(f"removing {path}", functools.partial(self._put_back, path, old))
        os.unlink(path)
        folder = os.path.dirname(path)
        if prune and not os.listdir(folder):
            os.rmdir(folder)

    @staticmethod
    def _put_back(path, old):
        if old is None:
            os.unlink(path)
        else:
            write_text(path, old)

    def rollback(self):
        return self.undo.rollback()


def live_checks(module, sysfs, params, need_vfio):
    """On the live system: vfio-pci loaded (modprobe), driverctl/mdevctl there for persist."""
    if need_vfio and not os.path.isdir(sysfs.driver_dir(vfio.VFIO)):
        if not sysfs.live:
            raise vfio.VfioError(f"vfio-pci is not loaded in sysfs_root {sysfs.root} (no bus/pci/drivers/vfio-pci)")
        if not module.check_mode:
            runner = _runner.Runner(module)
            rc, out, err = runner.run([runner.bin("modprobe"), "vfio-pci"], check=False)
            if rc != 0 or not os.path.isdir(sysfs.driver_dir(vfio.VFIO)):
                raise vfio.VfioError(f"modprobe vfio-pci failed (rc={rc}): {(err or out).strip()}: install the kernel's "
                                     f"modules (linux-image-*), or build vfio-pci in")
    if sysfs.live and params["persist"] and params["state"] == "bound":
        tool = "mdevctl" if params["mdev"] else "driverctl"
        if not _runner.Runner(module).bin(tool, required=False):
            raise vfio.VfioError(f"persist: true keeps this with {tool}'s definitions, loaded at boot by {tool}: install "
                                 f"the Debian package {tool}")


def cpu_vendor():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def resolve(sysfs, wanted, state):
    """The devices *wanted* names (an address, or every device with the ids), read: address -> device."""
    if "address" in wanted:
        if not os.path.isdir(sysfs.device_dir(wanted["address"])):
            raise vfio.VfioError(f"there is no PCI device {wanted['address']} (in {sysfs.path('bus', 'pci', 'devices')}; "
                                 f"lspci -D lists the host's)")
        return {wanted["address"]: sysfs.device(wanted["address"])}
    found = {a: dev for a, dev in ((a, sysfs.device(a)) for a in sysfs.addresses()) if vfio.matches(dev, wanted["ids"])}
    if not found and state == "bound":
        raise vfio.VfioError(f"no PCI device has the ids {':'.join(wanted['ids'])} (lspci -nn lists the host's)")
    return found


def run_pci(module, sysfs, params, result, files, mover):
    state = params["state"]
    devices = resolve(sysfs, vfio.parse_device(params["device"]), state)
    targets = list(devices)
    if state == "bound" and params["driver"]:
        raise vfio.VfioError("driver names the host driver to return devices to: it goes with state=unbound")
    if state == "bound" and not sysfs.iommu_on():
        raise vfio.VfioError(f"the IOMMU is off ({sysfs.path('kernel', 'iommu_groups')} is empty), so nothing can be "
                             f"passed through: {vfio.iommu_hint(cpu_vendor() if sysfs.live else None)}")  # another tree: both
    groups = {}
    for dev in list(devices.values()):
        if dev["group"] is not None and dev["group"] not in groups:
            groups[dev["group"]] = sysfs.group_members(dev["group"])
            for member in groups[dev["group"]]:
                devices.setdefault(member, sysfs.device(member))
    the_plan = vfio.plan(targets, devices, groups, state, params["iommu_group"], params["driver"])
    for change in the_plan["changes"]:  # before any write: a driver that cannot let go fails the run untouched
        driver = change["before"]["driver"]
        if driver is not None and driver != change["after"]["driver"] \
                and not os.path.exists(os.path.join(sysfs.driver_dir(driver), "unbind")):
            raise vfio.VfioError(f"{driver} does not let {change['address']} go at run time (it has no unbind): give the "
                                 f"device to vfio-pci at boot instead (vfio-pci.ids= on the kernel command line; the gpu "
                                 f"role's gpu_vfio_ids)")
    live_checks(module, sysfs, params, state == "bound" and bool(the_plan["changes"]))
    if state == "unbound" and params["driver"] and the_plan["changes"] \
            and not os.path.isdir(sysfs.driver_dir(params["driver"])):
        raise vfio.VfioError(f"driver {params['driver']} is not loaded (no {sysfs.driver_dir(params['driver'])}): "
                             f"modprobe it first")
    before = {a: dict(devices[a]) for a in the_plan["devices"]}
    planned = {c["address"]: c["after"] for c in the_plan["changes"]}
    _lock.pause_point("vfio-planned")
    after = {}
    for address in the_plan["devices"]:
        dev = devices[address]
        if address not in planned:
            after[address] = dict(dev)
        elif module.check_mode:
            after[address] = dict(dev, **planned[address])
        elif state == "bound":
            after[address] = mover.bind(dev)
        else:
            after[address] = mover.release(dev, params["driver"])
    if not module.check_mode and the_plan["changes"]:
        _lock.crash_point("vfio-moved")
    for address in the_plan["devices"]:
        path = os.path.join(params["driverctl_dir"], vfio.driverctl_file(address))
        if state == "unbound":
            files.drop(path)
        elif params["persist"]:
            files.put(path, vfio.driverctl_text())
    result["changes"] = [{"address": a, "before": {"driver": before[a]["driver"], "override": before[a]["override"]},
                          "after": {"driver": after[a]["driver"], "override": after[a]["override"]}}
                         for a in the_plan["devices"] if a in planned]
    result["devices"] = [{"address": a, "ids": f"{devices[a]['vendor']}:{devices[a]['device']}",
                          "iommu_group": devices[a]["group"], "previous_driver": before[a]["driver"],
                          "driver": after[a]["driver"]} for a in the_plan["devices"]]
    result["iommu_groups"] = the_plan["members"]
    if module._diff:
        result["diff"] = {"before": vfio.listing(before, the_plan["devices"]),
                          "after": vfio.listing(after, the_plan["devices"]),
                          "before_header": "PCI devices", "after_header": "PCI devices"}


def run_mdev(module, sysfs, params, result, files, mover):
    wanted = vfio.parse_device(params["device"])
    if "address" not in wanted:
        raise vfio.VfioError("with mdev, device is the parent's PCI address (0000:3b:00.0), not ids")
    parent, parent_dev = next(iter(resolve(sysfs, wanted, "bound").items()))
    items = vfio.check_mdevs(params["mdev"])
    existing = sysfs.mdevs()
    the_plan = vfio.mdev_plan(parent, items, existing, params["state"])
    if the_plan["create"]:
        types = sysfs.mdev_types(parent)
        if types is None:
            raise vfio.VfioError(f"{vfio.label(parent_dev)} offers no mediated device types (no mdev_supported_types): its "
                                 f"driver must be one that supports mdev (a vGPU host driver, i915 with GVT-g...) and "
                                 f"be bound to it")
        for kind in sorted({i["type"] for i in the_plan["create"]}):
            if kind not in types:
                raise vfio.VfioError(f"{parent} has no mdev type {kind}; it offers {', '.join(types) or 'none'}")
            need = sum(1 for i in the_plan["create"] if i["type"] == kind)
            if types[kind] < need:
                raise vfio.VfioError(f"{parent} has {types[kind]} instance(s) of {kind} left, {need} asked for: remove "
                                     f"other {kind} devices, or pick another type")
    if not module.check_mode:
        for item in the_plan["create"]:
            mover.create_mdev(parent, item)
        for item in the_plan["remove"]:
            mover.remove_mdev(parent, item)
    for item in items:
        path = os.path.join(params["mdevctl_dir"], parent, item["uuid"])
        if params["state"] == "unbound":
            files.drop(path, prune=True)  # and mdevctl.d/PARENT with its last definition
        elif params["persist"]:
            files.put(path, vfio.mdevctl_definition(item), same=lambda text, i=item: vfio.same_mdevctl_definition(text, i))
    created = {i["uuid"] for i in the_plan["create"]}
    result["changes"] = [{"uuid": i["uuid"], "type": i["type"], "parent": parent,
                          "action": "create" if i["uuid"] in created else "remove"}
                         for i in the_plan["create"] + the_plan["remove"]]
    result["mdevs"] = [{"uuid": i["uuid"], "type": i["type"], "parent": parent, "present": params["state"] == "bound"}
                       for i in items]
    if module._diff:
        lines = {"before": [f"{u} {e['type']} on {e['parent']}" for u, e in existing.items() if e["parent"] == parent]}
        gone = {i["uuid"] for i in the_plan["remove"]}
        lines["after"] = [line for line in lines["before"] if line.split()[0] not in gone]
        lines["after"] += [f"{i['uuid']} {i['type']} on {parent}" for i in the_plan["create"]]
        result["diff"] = {k: "\n".join(v) + ("\n" if v else "") for k, v in lines.items()}


def main():
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["bound", "unbound"], "default": "bound"},
            "iommu_group": {"type": "str", "choices": ["strict", "whole"], "default": "strict"},
            "driver": {"type": "str"},
            "persist": {"type": "bool", "default": False},
            "mdev": {"type": "list", "elements": "dict", "options": {
                "type": {"type": "str", "required": True},
                "uuid": {"type": "str", "required": True},
                "start": {"type": "str", "choices": ["auto", "manual"], "default": "auto"}}},
            "sysfs_root": {"type": "path", "default": "/sys"},
            "driverctl_dir": {"type": "path", "default": "/etc/driverctl.d"},
            "mdevctl_dir": {"type": "path", "default": "/etc/mdevctl.d"},
        },
        mutually_exclusive=[("mdev", "driver")],
        supports_check_mode=True,
    )
    params = module.params
    sysfs = Sysfs(params["sysfs_root"])
    files = Files(module.check_mode)
    mover = Mover(sysfs)
    result = {"changed": False, "changes": [], "files": {"written": [], "removed": []}}
    try:
        # one run at a time per sysfs tree: two reading the same devices would both move them
        with _lock.held("vfio", sysfs.real, f"vfio_bind {params['device']} {params['state']}"):
            if params["mdev"]:
                live_checks(module, sysfs, params, False)
                run_mdev(module, sysfs, params, result, files, mover)
            else:
                run_pci(module, sysfs, params, result, files, mover)
    except (vfio.VfioError, _lock.LockError, _runner.CommandError, OSError) as exc:
        moved = bool(mover.journal)
        left = files.rollback()
        left += mover.rollback()
        msg = str(exc)
        if left:
            msg += "; putting things back also failed: " + "; ".join(left)
        elif moved:
            msg += "; what this run had changed was put back as it was"
        result["changes"] = []
        result["files"] = {"written": [], "removed": []}
        module.fail_json(msg=msg, **result)
    result["files"] = {"written": files.written, "removed": files.removed}
    result["changed"] = bool(result["changes"] or files.written or files.removed)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
