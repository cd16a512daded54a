# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An emulated Linux PCI sysfs (the parts VFIO tooling touches), for tests.

Two layers:

``Kernel``
    a pure-Python model of /sys built from a spec dict (format in ``Kernel``'s docstring): PCI devices nested
    under their bridges, drivers, IOMMU groups, mediated devices. ``write(path, data)`` is one sysfs
    "store" and reacts as the kernel does (drivers/base/bus.c, dd.c, drivers/pci/pci-driver.c,
    pci-sysfs.c, drivers/vfio/mdev/mdev_sysfs.c), raising ``OSError(errno)`` where the kernel's store
    returns an error. Every store is appended to ``Kernel.log`` as ``(path, data, errno_or_0)``.

``SysfsOperations`` / ``mounted()`` / the CLI
    the model served as a FUSE file system (mfusepy over libfuse3) with every cache off, so another
    process sees it through plain ``os.open/os.read/os.write/os.readlink/os.listdir``, synchronously,
    with ``write()`` failing with the kernel's errno. ``python sysfs_emulator.py MOUNTPOINT SPEC.json``
    mounts in the foreground until unmounted or sent SIGTERM; ``mounted(spec, mountpoint)`` runs that
    as a subprocess for the length of a ``with`` block.

The mount root stands for /sys. It has one entry real sysfs does not have, ``.emulator/log`` (left
out of the root's listing, but found by name): the model's log as JSON lines
``{"path": ..., "data": ..., "errno": N}``.

Where this follows the kernel rather than intuition: opening a write-only attribute (bind, new_id, create,
...) for reading, or a read-only one for writing, fails at open() with EACCES even for root (kernfs_fop_open);
a zero-length write is no store at all; drivers_probe for an unknown device is ENODEV; bind checks the match
(ENODEV) before the binding (EBUSY); vfio-pci's probe fails with EINVAL for a device without an IOMMU group or
for a bridge; unbinding an mdev parent removes its mdevs; mdevs get emulated IOMMU groups (type "unknown")
even with the IOMMU off.

Deliberately not emulated: config space, resources, reset, power/, uevent files, PCI hotplug
(``rescan`` and ``remove`` do nothing), ``vfio-dev/`` and /dev/vfio, driver registration order
(``drivers_probe`` tries drivers by name), vendor ``get_available`` mdev callbacks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

try:
    import mfusepy  # pylint: disable=import-error
    MFUSEPY_ERROR = None
except (ImportError, OSError) as _exc:  # OSError: mfusepy found no libfuse
    mfusepy = None
    MFUSEPY_ERROR = f"mfusepy is not usable: {_exc}"

PAGE_SIZE = 4096
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ULONG_RE = re.compile(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\n?")
IOMMU_NAMES = {"intel": "dmar0", "amd": "ivhd0"}
EMULATOR_DIR = ".emulator"


class Attr:
    """A sysfs attribute file: ``show()`` returns its text, ``store(text)`` applies a write."""

    __slots__ = ("mode", "show", "store")

    def __init__(self, mode, show=None, store=None):
        self.mode, self.show, self.store = mode, show, store


class Link:
    """A sysfs symlink with a relative target, as kernfs makes them."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target


def _fail(code):
    raise OSError(code, os.strerror(code))


def _cstr(text):
    """The store buffer as C string functions see it: kernfs NUL-terminates it, strlen stops at a NUL."""
    return text.split("\0", 1)[0]


def _streq(text):
    """The name userspace wrote, as ``sysfs_streq`` compares it: one trailing newline ignored."""
    text = _cstr(text)
    return text[:-1] if text.endswith("\n") else text


def _hex_fields(text, most):
    """``sscanf(buf, "%x %x ...")``: the leading hex fields of a new_id/remove_id write."""
    fields = []
    for word in _cstr(text).split()[:most]:
        match = re.match(r"(0[xX])?([0-9a-fA-F]+)", word)
        if not match:
            break
        fields.append(int(match.group(2), 16))
        if match.end() != len(word):
            break
    return fields


def _kstrtoul(text):
    """``kstrtoul(buf, 0, &val)``: an unsigned number (0x hex, 0 octal, decimal), one newline allowed; else EINVAL."""
    text = _cstr(text)
    if not ULONG_RE.fullmatch(text):
        _fail(errno.EINVAL)
    digits = text.strip().lstrip("+")
    if digits[:2].lower() == "0x":
        return int(digits, 16)
    return int(digits, 8) if digits.startswith("0") else int(digits)


def _errno(value):
    return value if isinstance(value, int) else getattr(errno, value)


class Device:  # pylint: disable=too-many-instance-attributes
    """A PCI function: its identity from the spec, its binding and driver_override as they stand."""

    def __init__(self, spec):
        self.address = spec["address"]
        self.vendor = int(spec["vendor"], 16)
        self.device = int(spec["device"], 16)
        self.pci_class = int(spec["class"], 16)
        self.subsystem_vendor = int(spec.get("subsystem_vendor", "0x0000"), 16)
        self.subsystem_device = int(spec.get("subsystem_device", "0x0000"), 16)
        self.group = spec.get("group")
        self.parent = spec.get("parent")
        self.spec_driver = spec.get("driver")
        self.driver = self.spec_driver
        self.override = None
        self.numa_node = -1
        self.probe_errors = {name: _errno(code) for name, code in (spec.get("probe_errors") or {}).items()}
        self.mdev_types = {name: dict(info) for name, info in (spec.get("mdev_types") or {}).items()}
        self.available = {name: int(info.get("available_instances", 1)) for name, info in self.mdev_types.items()}


class Driver:
    """A PCI driver: static ids ("vvvv:dddd", "vvvv:*"), classes (class >> 8) and ids added through new_id."""

    def __init__(self, name, spec):
        self.name = name
        self.ids = []
        for item in spec.get("ids", []):
            vendor, device = item.lower().split(":")
            self.ids.append((int(vendor, 16), None if device == "*" else int(device, 16)))
        self.classes = {int(item, 16) for item in spec.get("classes", [])}
        self.dynids = []
        self.suppress_bind_attrs = bool(spec.get("suppress_bind_attrs", False))

    def id_match(self, vendor, device, pci_class):
        """The id tables of ``pci_match_device``: dynamic ids first, then the static table."""
        for dyn_vendor, dyn_device in self.dynids:
            if dyn_vendor == vendor and dyn_device in (None, device):
                return True
        return any(v == vendor and d in (None, device) for v, d in self.ids) or (pci_class >> 8) in self.classes


class Mdev:
    """A mediated device created through ``mdev_supported_types/TYPE/create``."""

    def __init__(self, uuid, parent, mdev_type, group):
        self.uuid, self.parent, self.mdev_type, self.group = uuid, parent, mdev_type, group


class _Tree:
    """Builds the nested-dict tree: folders are dicts, links are relative as kernfs makes them."""

    def __init__(self):
        self.root = {}

    def folder(self, parts):
        node = self.root
        for part in parts:
            node = node.setdefault(part, {})
        return node

    def put(self, parts, node):
        self.folder(parts[:-1])[parts[-1]] = node

    def link(self, parts, to):
        self.put(parts, Link(posixpath.relpath("/" + "/".join(to), "/" + "/".join(parts[:-1]))))

    def ro(self, parts, show):
        self.put(parts, Attr(0o444, show))

    def wo(self, parts, store):
        self.put(parts, Attr(0o200, None, store))


class Kernel:  # pylint: disable=too-many-instance-attributes
    """The in-memory /sys. Paths are relative to the sysfs root ("bus/pci/drivers/vfio-pci/bind").

    Spec (a JSON-able dict)::

        {"iommu": "intel" | "amd" | None,
         "drivers": {"nvidia": {"ids": ["10de:*"], "suppress_bind_attrs": False},
                     "pcieport": {"classes": ["0x0604"]}, "vfio-pci": {"ids": []}},
         "devices": [{"address": "0000:01:00.0", "vendor": "0x10de", "device": "0x2684", "class": "0x030000",
                      "subsystem_vendor": "0x10de", "subsystem_device": "0x16f3", "group": 14,
                      "parent": "0000:00:01.0", "driver": "nvidia", "probe_errors": {"vfio-pci": "EIO"},
                      "mdev_types": {"nvidia-500": {"name": "GRID A100-4C", "available_instances": 2,
                                                    "device_api": "vfio-pci", "description": "..."}}}],
         "mdev_driver": "vfio_mdev"}
    """

    def __init__(self, spec):
        self.lock = threading.RLock()
        self.iommu = spec.get("iommu")
        if self.iommu not in (None, *IOMMU_NAMES):
            raise ValueError(f"iommu must be one of {sorted(IOMMU_NAMES)} or null, not {self.iommu!r}")
        self.drivers = {name: Driver(name, info or {}) for name, info in spec.get("drivers", {}).items()}
        self.devices = {}
        for item in spec.get("devices", []):
            dev = Device(item)
            self.devices[dev.address] = dev
        for dev in self.devices.values():
            if dev.parent is not None and dev.parent not in self.devices:
                raise ValueError(f"{dev.address}: parent {dev.parent} is not a device of the spec")
            for name in [dev.spec_driver, *dev.probe_errors]:
                if name is not None and name not in self.drivers:
                    raise ValueError(f"{dev.address}: driver {name} is not in the spec's drivers")
        has_mdev = any(dev.mdev_types for dev in self.devices.values())
        self.mdev_driver = spec.get("mdev_driver", "vfio_mdev" if has_mdev else None)
        self.mdevs = {}
        self.autoprobe = 1
        self.log = []
        self._tree = None
        self._dirs = {}
        for dev in self.devices.values():
            self._device_dir(dev)  # reject parent cycles now

    # ----------------------------------------------------------------- matching, probing, binding

    def _matches(self, drv, dev):
        """``pci_match_device``: a driver_override names the only driver that may bind; with it unset, the id tables."""
        if dev.override is not None:
            return dev.override == drv.name
        return drv.id_match(dev.vendor, dev.device, dev.pci_class)

    def _group(self, dev):
        return dev.group if self.iommu else None

    def _probe(self, drv, dev):
        """``__driver_probe_device``: EBUSY when bound, else the probe's result (0 binds).

        Probe failures: the spec's ``probe_errors``; vfio-pci fails with EINVAL for a device that has no
        IOMMU group (vfio_group_find_or_alloc) or is a bridge (vfio_pci_core_register_device wants a
        normal header).
        """
        if dev.driver is not None:
            return errno.EBUSY
        code = dev.probe_errors.get(drv.name, 0)
        if not code and drv.name == "vfio-pci" and (self._group(dev) is None or dev.pci_class >> 8 == 0x0604):
            code = errno.EINVAL
        if not code:
            dev.driver = drv.name
        return code

    def _unbind(self, dev):
        """``device_driver_detach``; a parent driver going away unregisters its mdev types and their mdevs."""
        if self._types_registered(dev):
            for uuid in [m.uuid for m in self.mdevs.values() if m.parent == dev.address]:
                self._remove_mdev(uuid)
        dev.driver = None

    def _types_registered(self, dev):
        """mdev types exist while the parent is bound to its own driver (mdev_register_parent in its probe)."""
        return bool(dev.mdev_types) and dev.driver is not None and dev.driver == dev.spec_driver

    def _find(self, text):
        """``bus_find_device_by_name``."""
        return self.devices.get(_streq(text))

    # ----------------------------------------------------------------- stores

    def _bind_store(self, drv, text):
        """drivers/base/bus.c bind_store: ENODEV unless the device exists and the driver matches it;
        then device_driver_attach: EBUSY when bound, else the probe's errno."""
        dev = self._find(text)
        if dev is None or not self._matches(drv, dev):
            _fail(errno.ENODEV)
        code = self._probe(drv, dev)
        if code:
            _fail(code)

    def _unbind_store(self, drv, text):
        """bus.c unbind_store: ENODEV unless the device is bound to this driver."""
        dev = self._find(text)
        if dev is None or dev.driver != drv.name:
            _fail(errno.ENODEV)
        self._unbind(dev)

    def _drivers_probe_store(self, text):
        """bus.c drivers_probe_store: ENODEV for an unknown device; a bound device is left alone; else
        device_attach tries each matching driver until one probes; probe failures are not reported."""
        dev = self._find(text)
        if dev is None:
            _fail(errno.ENODEV)
        if dev.driver is None:
            for name in sorted(self.drivers):
                if self._matches(self.drivers[name], dev) and self._probe(self.drivers[name], dev) == 0:
                    break

    def _new_id_store(self, drv, text):
        """pci-driver.c new_id_store: "vendor device [...]"; EINVAL under two fields; EEXIST when the driver
        already matches that id; else pci_add_dynid and driver_attach (probe every unbound match, errors ignored)."""
        fields = _hex_fields(text, 7)
        if len(fields) < 2:
            _fail(errno.EINVAL)
        vendor, device = fields[0], (None if fields[1] == 0xFFFFFFFF else fields[1])
        pci_class = fields[4] if len(fields) > 4 else 0
        if len(fields) != 7 and device is not None and drv.id_match(vendor, device, pci_class):
            _fail(errno.EEXIST)
        drv.dynids.append((vendor, device))
        for address in sorted(self.devices):
            dev = self.devices[address]
            if dev.driver is None and self._matches(drv, dev):
                self._probe(drv, dev)

    def _remove_id_store(self, drv, text):
        """pci-driver.c remove_id_store: EINVAL under two fields, ENODEV when no dynamic id matches; bound
        devices stay bound."""
        fields = _hex_fields(text, 6)
        if len(fields) < 2:
            _fail(errno.EINVAL)
        wanted = (fields[0], None if fields[1] == 0xFFFFFFFF else fields[1])
        if wanted not in drv.dynids:
            _fail(errno.ENODEV)
        drv.dynids.remove(wanted)

    def _override_store(self, dev, text):
        """driver_set_override: EINVAL from PAGE_SIZE - 1 bytes; up to the first newline is the driver;
        "\\n" (or a leading NUL) clears it. Binds nothing by itself."""
        if len(text.encode("utf-8", "surrogateescape")) >= PAGE_SIZE - 1:
            _fail(errno.EINVAL)
        value = _cstr(text).split("\n", 1)[0]
        dev.override = value or None

    def _numa_store(self, dev, text):
        """pci-sysfs.c numa_node_store: a node that is not online is EINVAL (node 0 is, -1 means none)."""
        try:
            node = int(_cstr(text).strip())
        except ValueError:
            _fail(errno.EINVAL)
        if node not in (-1, 0):
            _fail(errno.EINVAL)
        dev.numa_node = node

    def _autoprobe_store(self, text):
        """bus.c drivers_autoprobe_store: "0..." turns it off, anything else on."""
        self.autoprobe = 0 if text[:1] == "0" else 1

    def _rescan_store(self, text):
        """pci-sysfs.c rescan_store: EINVAL unless a number; no new devices appear here."""
        _kstrtoul(text)

    def _create_store(self, dev, type_name, text):
        """mdev_sysfs.c create_store / mdev_device_create: EINVAL unless 36 or 37 bytes starting with a UUID;
        EEXIST for a UUID in use on any parent; EUSERS when no instance is available."""
        if len(text.encode("utf-8", "surrogateescape")) not in (36, 37) or not UUID_RE.fullmatch(text[:36]):
            _fail(errno.EINVAL)
        uuid = text[:36].lower()
        if uuid in self.mdevs:
            _fail(errno.EEXIST)
        if dev.available[type_name] <= 0:
            _fail(errno.EUSERS)
        dev.available[type_name] -= 1
        used = {m.group for m in self.mdevs.values()} | {self._group(d) for d in self.devices.values()}
        used.discard(None)
        self.mdevs[uuid] = Mdev(uuid, dev.address, type_name, max(used, default=-1) + 1)

    def _remove_store(self, mdev, text):
        """mdev_sysfs.c remove_store: EINVAL unless a number; a non-zero number removes the mdev, 0 does nothing."""
        if _kstrtoul(text):
            self._remove_mdev(mdev.uuid)

    def _remove_mdev(self, uuid):
        mdev = self.mdevs.pop(uuid)
        self.devices[mdev.parent].available[mdev.mdev_type] += 1

    # ----------------------------------------------------------------- the tree

    def _device_dir(self, dev, depth=0):
        """devices/pciDDDD:BB/<bridge>/.../<address>: a device sits in its parent bridge's folder."""
        if dev.address not in self._dirs:
            if depth > len(self.devices):
                raise ValueError(f"{dev.address}: the parent chain is a cycle")
            if dev.parent is None:
                base = ("devices", "pci" + dev.address[:7])
            else:
                base = self._device_dir(self.devices[dev.parent], depth + 1)
            self._dirs[dev.address] = base + (dev.address,)
        return self._dirs[dev.address]

    def _build(self):  # pylint: disable=too-many-locals
        tree = _Tree()
        pci = ("bus", "pci")
        tree.folder(pci + ("devices",))
        tree.folder(("class", "iommu"))
        tree.folder(("kernel", "iommu_groups"))
        tree.wo(pci + ("drivers_probe",), self._drivers_probe_store)
        tree.put(pci + ("drivers_autoprobe",), Attr(0o644, lambda: f"{self.autoprobe}\n", self._autoprobe_store))
        tree.wo(pci + ("rescan",), self._rescan_store)
        for drv in self.drivers.values():
            self._build_driver(tree, drv)
        groups = {}
        iommu_dir = ("devices", "virtual", "iommu", IOMMU_NAMES[self.iommu]) if self.iommu else None
        if iommu_dir:
            tree.folder(iommu_dir + ("devices",))
            tree.link(("class", "iommu", iommu_dir[-1]), iommu_dir)
        for dev in self.devices.values():
            here = self._device_dir(dev)
            self._build_device(tree, dev, here)
            if self._group(dev) is not None:
                groups.setdefault(self._group(dev), ("DMA", []))[1].append(here)
                tree.link(iommu_dir + ("devices", dev.address), here)
                tree.link(here + ("iommu",), iommu_dir)
        if self.mdev_driver:
            module = ("module", self.mdev_driver.replace("-", "_"))
            tree.folder(("bus", "mdev", "devices"))
            tree.folder(("class", "mdev_bus"))
            tree.link(("bus", "mdev", "drivers", self.mdev_driver, "module"), module)
            tree.link(module + ("drivers", "mdev:" + self.mdev_driver), ("bus", "mdev", "drivers", self.mdev_driver))
        for mdev in self.mdevs.values():
            here = self._device_dir(self.devices[mdev.parent]) + (mdev.uuid,)
            type_dir = here[:-1] + ("mdev_supported_types", mdev.mdev_type)
            tree.link(here + ("mdev_type",), type_dir)
            tree.wo(here + ("remove",), lambda text, m=mdev: self._remove_store(m, text))
            tree.link(here + ("subsystem",), ("bus", "mdev"))
            tree.link(here + ("driver",), ("bus", "mdev", "drivers", self.mdev_driver))
            tree.link(("bus", "mdev", "drivers", self.mdev_driver, mdev.uuid), here)
            tree.link(("bus", "mdev", "devices", mdev.uuid), here)
            tree.link(type_dir + ("devices", mdev.uuid), here)
            groups[mdev.group] = ("unknown", [here])  # an emulated group (mdev_attach_iommu): no default domain
        for number, (kind, members) in groups.items():
            group_dir = ("kernel", "iommu_groups", str(number))
            tree.ro(group_dir + ("type",), lambda k=kind: f"{k}\n")
            tree.folder(group_dir + ("devices",))
            for member in members:
                tree.link(group_dir + ("devices", member[-1]), member)
                tree.link(member + ("iommu_group",), group_dir)
        return tree.root

    def _build_device(self, tree, dev, here):
        """A PCI device folder: ids, driver_override, numa_node, modalias, subsystem/driver links, mdev types."""
        tree.folder(here)
        for name in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            tree.ro(here + (name,), lambda n=name: f"0x{getattr(dev, n):04x}\n")
        tree.ro(here + ("class",), lambda: f"0x{dev.pci_class:06x}\n")
        tree.ro(here + ("modalias",), lambda: (f"pci:v{dev.vendor:08X}d{dev.device:08X}sv{dev.subsystem_vendor:08X}sd{dev.subsystem_device:08X}"
                                               f"bc{dev.pci_class >> 16:02X}sc{(dev.pci_class >> 8) & 0xFF:02X}i{dev.pci_class & 0xFF:02X}\n"))
        tree.put(here + ("driver_override",), Attr(0o644, lambda: f"{dev.override or '(null)'}\n", lambda text: self._override_store(dev, text)))
        tree.put(here + ("numa_node",), Attr(0o644, lambda: f"{dev.numa_node}\n", lambda text: self._numa_store(dev, text)))
        tree.link(here + ("subsystem",), ("bus", "pci"))
        tree.link(("bus", "pci", "devices", dev.address), here)
        if dev.driver:
            tree.link(here + ("driver",), ("bus", "pci", "drivers", dev.driver))
            tree.link(("bus", "pci", "drivers", dev.driver, dev.address), here)
        if self._types_registered(dev):
            tree.link(("class", "mdev_bus", dev.address), here)
            for type_name, info in dev.mdev_types.items():
                at = here + ("mdev_supported_types", type_name)
                tree.ro(at + ("name",), lambda i=info, t=type_name: f"{i.get('name', t)}\n")
                tree.ro(at + ("available_instances",), lambda t=type_name: f"{dev.available[t]}\n")
                tree.ro(at + ("device_api",), lambda i=info: f"{i.get('device_api', 'vfio-pci')}\n")
                tree.ro(at + ("description",), lambda i=info: f"{i.get('description', '')}\n")
                tree.wo(at + ("create",), lambda text, t=type_name: self._create_store(dev, t, text))
                tree.folder(at + ("devices",))

    def _build_driver(self, tree, drv):
        """bus/pci/drivers/NAME: bind/unbind (not with suppress_bind_attrs), new_id, remove_id, module; module/NAME."""
        here = ("bus", "pci", "drivers", drv.name)
        module = ("module", drv.name.replace("-", "_"))
        tree.folder(here)
        if not drv.suppress_bind_attrs:
            tree.wo(here + ("bind",), lambda text: self._bind_store(drv, text))
            tree.wo(here + ("unbind",), lambda text: self._unbind_store(drv, text))
        tree.wo(here + ("new_id",), lambda text: self._new_id_store(drv, text))
        tree.wo(here + ("remove_id",), lambda text: self._remove_id_store(drv, text))
        tree.link(here + ("module",), module)
        tree.link(module + ("drivers", "pci:" + drv.name), here)

    # ----------------------------------------------------------------- public API

    def tree(self):
        """The whole tree as nested dicts of ``Attr``/``Link``; rebuilt after every store."""
        with self.lock:
            if self._tree is None:
                self._tree = self._build()
            return self._tree

    def lookup(self, path, follow=False):
        """The node at ``path`` (a dict for a folder, ``Attr``, ``Link``); symlinks on the way are followed, the
        last one only with ``follow``. OSError(ENOENT) when there is none, ENOTDIR through a file."""
        parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
        with self.lock:
            return self._walk(parts, follow, 0)[1]

    def _walk(self, parts, follow, hops):
        node, at = self.tree(), []
        for index, part in enumerate(parts):
            if part == "..":
                at = at[:-1]
                node = self._walk(at, True, hops)[1]
                continue
            if not isinstance(node, dict):
                _fail(errno.ENOTDIR)
            if part not in node:
                _fail(errno.ENOENT)
            node = node[part]
            at.append(part)
            if isinstance(node, Link) and (follow or index < len(parts) - 1):
                if hops > 40:
                    _fail(errno.ELOOP)
                target = posixpath.normpath(posixpath.join("/" + "/".join(at[:-1]), node.target)).strip("/")
                at, node = self._walk([p for p in target.split("/") if p], True, hops + 1)
        return at, node

    def realpath(self, path):
        """``os.path.realpath`` relative to the root."""
        with self.lock:
            return "/".join(self._walk([p for p in path.strip("/").split("/") if p not in ("", ".")], True, 0)[0])

    def kind(self, path):
        """"dir", "file" or "link" (the last component not followed)."""
        node = self.lookup(path)
        return "dir" if isinstance(node, dict) else "link" if isinstance(node, Link) else "file"

    def listdir(self, path=""):
        node = self.lookup(path, follow=True)
        if not isinstance(node, dict):
            _fail(errno.ENOTDIR)
        return sorted(node)

    def readlink(self, path):
        node = self.lookup(path)
        if not isinstance(node, Link):
            _fail(errno.EINVAL)
        return node.target

    def check_open(self, path, flags):
        """kernfs_fop_open: EACCES when opening for writing a file without store (or write bit), or for reading one
        without show; even for root."""
        node = self.lookup(path, follow=True)
        if isinstance(node, dict):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                _fail(errno.EISDIR)
            return node
        accmode = flags & os.O_ACCMODE
        if accmode in (os.O_WRONLY, os.O_RDWR) and (node.store is None or not node.mode & 0o222):
            _fail(errno.EACCES)
        if accmode in (os.O_RDONLY, os.O_RDWR) and (node.show is None or not node.mode & 0o444):
            _fail(errno.EACCES)
        return node

    def read(self, path):
        """The attribute's current text (computed now, as each sysfs show is)."""
        with self.lock:
            node = self.check_open(path, os.O_RDONLY)
            if isinstance(node, dict):
                _fail(errno.EISDIR)
            return node.show()

    def write(self, path, data):
        """One sysfs store of the whole buffer (``data``: bytes or str); raises OSError(errno) as the store does.
        A zero-length write does nothing (sysfs_kf_write); E2BIG over PAGE_SIZE (kernfs atomic_write_len)."""
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        text = raw.decode("utf-8", "surrogateescape")
        with self.lock:
            node = self.check_open(path, os.O_WRONLY)
            if not raw:
                return 0
            real = self.realpath(path)
            code = 0
            try:
                if len(raw) > PAGE_SIZE:
                    _fail(errno.E2BIG)
                node.store(text)
            except OSError as exc:
                code = exc.errno
                raise
            finally:
                self.log.append((real, raw.decode("utf-8", "replace"), code))
                self._tree = None
            return len(raw)


# --------------------------------------------------------------------- FUSE


def _fuse_error(exc):
    return mfusepy.FuseOSError(exc.errno or errno.EIO)


class SysfsOperations(mfusepy.Operations if mfusepy is not None else object):
    """mfusepy operations over a ``Kernel``: each FUSE call asks the model afresh (the mount has every cache off),
    each write() is one store whose errno goes back to the writer. Adds ``/.emulator/log`` (JSON lines)."""

    use_ns = True

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel
        self.started = time.time_ns()
        self.served = False

    def init(self, path):
        self.served = True

    def _emulator(self, path):
        """None, or the emulator's own node: its folder (a dict) or its log (an Attr)."""
        parts = path.strip("/").split("/")
        if parts[0] != EMULATOR_DIR:
            return None
        if parts == [EMULATOR_DIR]:
            return {"log": None}
        if parts == [EMULATOR_DIR, "log"]:
            return Attr(0o444, lambda: "".join(json.dumps({"path": p, "data": d, "errno": c}) + "\n" for p, d, c in self.kernel.log))
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _node(self, path, follow=False):
        node = self._emulator(path)
        if node is not None:
            return node
        try:
            return self.kernel.lookup(path, follow)
        except OSError as exc:
            raise _fuse_error(exc) from None

    def getattr(self, path, fh=None):
        node = self._node(path)
        times = {"st_atime": self.started, "st_mtime": self.started, "st_ctime": self.started, "st_uid": 0, "st_gid": 0}
        if isinstance(node, dict):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0, **times}
        if isinstance(node, Link):
            return {"st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_size": len(node.target), **times}
        return {"st_mode": stat.S_IFREG | node.mode, "st_nlink": 1, "st_size": PAGE_SIZE, **times}

    def readdir(self, path, fh):
        node = self._node(path)
        if not isinstance(node, dict):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", *sorted(node)]

    def readlink(self, path):
        node = self._node(path)
        if not isinstance(node, Link):
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.target

    def open(self, path, flags):
        if self._emulator(path) is not None:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0
        try:
            with self.kernel.lock:
                self.kernel.check_open(path, flags)
        except OSError as exc:
            raise _fuse_error(exc) from None
        return 0

    def read(self, path, size, offset, fh):
        node = self._emulator(path)
        try:
            text = node.show() if node is not None else self.kernel.read(path)
        except OSError as exc:
            raise _fuse_error(exc) from None
        return text.encode("utf-8", "surrogateescape")[offset:offset + size]

    def write(self, path, data, offset, fh):
        if self._emulator(path) is not None:
            raise mfusepy.FuseOSError(errno.EACCES)
        try:
            return self.kernel.write(path, data)
        except OSError as exc:
            raise _fuse_error(exc) from None

    def truncate(self, path, length, fh=None):
        """O_TRUNC on a sysfs attribute does nothing."""
        self._node(path)
        return 0

    def release(self, path, fh):
        return 0

    def create(self, path, mode, fi=None):
        """sysfs folders cannot create files: open(O_CREAT) of a missing name is EACCES (lookup_open)."""
        raise mfusepy.FuseOSError(errno.EACCES)

    def mkdir(self, path, mode):
        raise mfusepy.FuseOSError(errno.EPERM)

    def unlink(self, path):
        raise mfusepy.FuseOSError(errno.EPERM)

    def rmdir(self, path):
        raise mfusepy.FuseOSError(errno.EPERM)


def serve(kernel, mountpoint):
    """Mount ``kernel`` at ``mountpoint`` in the foreground, single-threaded, until unmounted or SIGTERM/SIGINT."""
    if mfusepy is None:
        raise RuntimeError(MFUSEPY_ERROR)
    operations = SysfsOperations(kernel)
    try:
        mfusepy.FUSE(operations, mountpoint, foreground=True, nothreads=True, fsname="sysfs-emulator",
                     attr_timeout=0, entry_timeout=0, negative_timeout=0, direct_io=True, allow_other=os.geteuid() == 0)
    except RuntimeError:
        if not operations.served:
            raise
        # fuse_main reports a loop ended by SIGTERM/SIGINT/SIGHUP as an error; libfuse has unmounted by then


def unavailable_reason():
    """Why a FUSE mount cannot be made here, or None."""
    if MFUSEPY_ERROR:
        return MFUSEPY_ERROR
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: fuse3)"
    return None


class MountError(RuntimeError):
    """The emulator did not come up; ``output`` is what it printed."""

    def __init__(self, message, output):
        super().__init__(f"{message}\n{output}")
        self.output = output


def _mounted(mountpoint):
    """Whether ``mountpoint`` is in the mount table (also true for a dead FUSE server's stale mount)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == target:
                return True
    return False


class Mount:
    """A live emulator mount: ``path`` (the /sys stand-in), ``log()`` (the stores the kernel received), ``proc``."""

    def __init__(self, path, proc):
        self.path, self.proc = path, proc

    def log(self):
        """The model's log read through the mount: a list of (path, data, errno_or_0)."""
        return read_log(self.path)


def read_log(mountpoint):
    with open(os.path.join(mountpoint, EMULATOR_DIR, "log"), encoding="utf-8") as handle:
        return [(e["path"], e["data"], e["errno"]) for e in map(json.loads, handle)]


def _unmount(proc, mountpoint):
    if _mounted(mountpoint):
        if subprocess.run(["fusermount3", "-u", mountpoint], check=False, capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if _mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)


def _wait_mounted(proc, mountpoint, timeout, output):
    """Wait until the server *proc* has mounted *mountpoint*; MountError (with what it printed to the file
    *output*) when it exits or does not within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not (os.path.ismount(mountpoint) and os.path.isdir(os.path.join(mountpoint, "bus", "pci"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not mounted after {timeout}s"
            with open(output, "rb") as handle:
                raise MountError(f"sysfs emulator at {mountpoint} {why}", handle.read().decode("utf-8", "replace"))
        time.sleep(0.01)


@contextlib.contextmanager
def mounted(spec, mountpoint, timeout=20.0):
    """Serve ``spec`` at ``mountpoint`` (created if missing) from a subprocess running this file's CLI for the
    length of the ``with`` block; yields a ``Mount``. Unmounts (and reaps the server) however the block ends.
    Raises ``MountError`` when the mount does not come up within ``timeout`` seconds."""
    os.makedirs(mountpoint, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sysfs-emulator-") as scratch:
        spec_path = os.path.join(scratch, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as handle:
            json.dump(spec, handle)
        output = os.path.join(scratch, "output")
        with open(output, "wb") as out:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), mountpoint, spec_path],  # pylint: disable=consider-using-with
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_mounted(proc, mountpoint, timeout, output)
            yield Mount(mountpoint, proc)
        finally:
            _unmount(proc, mountpoint)


def main(argv=None):
    """``MOUNTPOINT SPEC.json``: serve in the foreground. ``--background MOUNTPOINT SPEC.json``: start the
    server in a session of its own (its output in ``MOUNTPOINT.log``), return once the tree is mounted (for a
    molecule scenario, whose lab host binds it; ``fusermount3 -u MOUNTPOINT`` stops it)."""
    argv = sys.argv[1:] if argv is None else argv
    background = argv[:1] == ["--background"]
    argv = argv[1:] if background else argv
    if len(argv) != 2:
        print("usage: python sysfs_emulator.py [--background] MOUNTPOINT SPEC.json", file=sys.stderr)
        return 2
    if background:
        mountpoint = os.path.abspath(argv[0])
        os.makedirs(mountpoint, exist_ok=True)
        output = mountpoint.rstrip("/") + ".log"
        with open(output, "wb") as out:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), mountpoint, os.path.abspath(argv[1])],  # pylint: disable=consider-using-with
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_mounted(proc, mountpoint, 20.0, output)
        except MountError as exc:
            print(exc, file=sys.stderr)
            _unmount(proc, mountpoint)
            return 1
        print(f"serving {argv[1]} at {mountpoint} (pid {proc.pid})")
        return 0
    with open(argv[1], encoding="utf-8") as handle:
        kernel = Kernel(json.load(handle))
    serve(kernel, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
