# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of ``replica.cloud.vfio_bind``: PCI addresses and ids, which devices of an IOMMU
group must move, the plan of a run, and the persistence files (driverctl's and mdevctl's). No
I/O: the module reads sysfs and writes it; everything it decides is decided here.

A *device* is a dict read from sysfs: ``address`` (``0000:01:00.0``), ``vendor`` and ``device``
(four hex digits), ``class`` (an int, ``0x030000``), ``driver`` (the bound driver's name or
None), ``override`` (``driver_override``, None when unset: sysfs reads ``(null)``) and ``group``
(the IOMMU group's number as a string, or None), and ``pending`` (True when a run that was
returning it to a host driver was killed after unbinding it from vfio-pci and before the probe:
see :func:`pending_name`).
"""

from __future__ import annotations

import hashlib
import json
import re

VFIO = "vfio-pci"
#: drivers a device of a viable group may keep besides vfio ones (the kernel's vfio_driver_allowed)
ALLOWED = frozenset({"pci-stub"})
#: PCI-to-PCI, CardBus and semi-transparent bridges: header types other than "normal", which
#: vfio-pci cannot take and the kernel does not count against a group's viability
BRIDGE_CLASSES = frozenset({0x0604, 0x0607, 0x0609})

_ADDRESS_RE = re.compile(r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-1][0-9a-fA-F])\.(?P<fn>[0-7])\Z")
_IDS_RE = re.compile(r"^(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\Z")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_MDEV_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
#: where a run notes the devices it has taken off vfio-pci and not yet probed (root's, under /run:
#: a reboot probes every device anyway)
PENDING_DIR = "/run/replica/vfio-pending"


class VfioError(Exception):
    """Something the user has to fix; the message says what."""


def normalize_address(text):
    """``0000:01:00.0`` for ``0000:01:00.0`` or ``01:00.0`` (domain 0000), lower case; None if
    *text* is not a PCI address."""
    match = _ADDRESS_RE.match(text.strip())
    if not match:
        return None
    domain = match.group("domain") or "0000"
    return f"{domain}:{match.group('bus')}:{match.group('slot')}.{match.group('fn')}".lower()


def parse_device(text):
    """``{"address": ...}`` or ``{"ids": (vendor, device)}`` for the module's ``device``."""
    if not isinstance(text, str) or not text.strip():
        raise VfioError("device is empty: give a PCI address (0000:01:00.0) or vendor:device ids (10de:2684)")
    address = normalize_address(text)
    if address:
        return {"address": address}
    match = _IDS_RE.match(text.strip())
    if match:
        return {"ids": (match.group("vendor").lower(), match.group("device").lower())}
    raise VfioError(f"device {text!r} is neither a PCI address (0000:01:00.0, as lspci -D prints) nor "
                    f"vendor:device ids (10de:2684, as lspci -nn prints)")


def hex_id(text):
    """``10de`` for sysfs's ``0x10de\\n``."""
    value = text.strip().lower()
    return value[2:] if value.startswith("0x") else value


def parse_override(text):
    """``driver_override`` as read: None when unset (the kernel prints ``(null)``)."""
    value = text.strip()
    return None if value in ("", "(null)") else value


def is_bridge(dev):
    return (dev["class"] >> 8) in BRIDGE_CLASSES


def is_vfio(driver):
    """vfio-pci, or one of its vendor variants (mlx5_vfio_pci, nvgrace_gpu_vfio_pci...)."""
    return driver is not None and (driver == VFIO or driver.replace("-", "_").endswith("vfio_pci"))


def label(dev):
    return f"{dev['address']} ({dev['vendor']}:{dev['device']}, {dev['driver'] or 'no driver'})"


def pending_name(sysfs_root, address):
    """The file name, in :data:`PENDING_DIR`, of the note that *address* of the sysfs tree at
    *sysfs_root* (a real path) is between its unbind from vfio-pci and its probe. Returning a device
    to "the driver the kernel picks" leaves it without a driver for that moment, which reads the
    same as a device no loaded driver takes; the note tells a re-run after ``kill -9`` to probe it."""
    tree = hashlib.sha256(sysfs_root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{tree}-{address}"


def matches(dev, ids):
    return (dev["vendor"], dev["device"]) == tuple(ids)


def bound_wanted(dev):
    """Whether *dev* is where ``state=bound`` wants it: on vfio-pci, and kept there by its override."""
    return dev["driver"] == VFIO and dev["override"] == VFIO


def unbound_wanted(dev, driver):
    """Whether *dev* is where ``state=unbound`` wants it: off vfio-pci, not kept for it by an
    override and not left unprobed by a killed run; on *driver*, without an override, when one is
    named."""
    if dev["override"] == VFIO or dev.get("pending"):
        return False
    if driver:
        return dev["driver"] == driver and dev["override"] is None
    return not is_vfio(dev["driver"])


def plan(targets, devices, groups, state, mode, driver=None):
    """What a run does.

    *targets*: the addresses asked for, in order. *devices*: address -> device, for the targets
    and every member of their groups. *groups*: group -> member addresses. *state*: ``bound`` or
    ``unbound``; *mode*: ``whole`` or ``strict``; *driver*: the driver to return the devices to
    (``unbound``; None: the one the kernel picks).

    Returns ``{"devices": [addresses acted on, in order], "changes": [{address, before, after}],
    "members": {group: [addresses]}}`` or raises :class:`VfioError` (a bridge asked for, a group
    member on a host driver in strict mode, a device without an IOMMU group).
    """
    chosen = []
    for address in targets:
        dev = devices[address]
        if state == "bound" and is_bridge(dev):
            raise VfioError(f"{label(dev)} is a PCI bridge: vfio-pci cannot take bridges (pass through the devices behind it)")
        if state == "bound" and dev["group"] is None:
            raise VfioError(f"{label(dev)} has no IOMMU group: the IOMMU does not cover it, so it cannot be passed "
                            f"through")
        if address not in chosen:
            chosen.append(address)
    members = {}
    for address in list(chosen):
        group = devices[address]["group"]
        if group is None or group in members:
            continue
        members[group] = sorted(groups.get(group, [address]))
        others = [devices[a] for a in members[group] if a not in chosen and not is_bridge(devices[a])]
        if mode == "whole":
            chosen += [d["address"] for d in others
                       if state == "bound" or is_vfio(d["driver"]) or d["override"] == VFIO or d.get("pending")]
        elif state == "bound":
            busy = [d for d in others if d["driver"] is not None and not is_vfio(d["driver"]) and d["driver"] not in ALLOWED]
            if busy:
                raise VfioError(
                    f"IOMMU group {group} of {address} also holds {', '.join(label(d) for d in busy)}, bound to host "
                    f"drivers: a group is passed through whole. Use iommu_group=whole to give them to vfio-pci too, or "
                    f"unbind them first")
    changes = []
    for address in chosen:
        dev = devices[address]
        done = bound_wanted(dev) if state == "bound" else unbound_wanted(dev, driver)
        if not done:
            after = {"driver": VFIO, "override": VFIO} if state == "bound" else {"driver": driver, "override": None}
            changes.append({"address": address, "before": {"driver": dev["driver"], "override": dev["override"]},
                            "after": after})
    return {"devices": chosen, "changes": changes, "members": members}


def listing(devices, addresses):
    """The diff's text: one line per device, its driver and override."""
    lines = []
    for address in addresses:
        dev = devices[address]
        line = f"{address} {dev['driver'] or '(no driver)'}"
        if dev["override"]:
            line += f" [driver_override={dev['override']}]"
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def driverctl_file(address):
    """The name of driverctl's definition for *address* (in /etc/driverctl.d)."""
    return f"pci-{address}"


def driverctl_text(driver=VFIO):
    """What ``driverctl set-override`` saves: the driver's name on one line."""
    return f"{driver}\n"


def check_mdevs(mdevs):
    """The ``mdev`` option, checked: a list of ``{type, uuid, start}`` with lower-case uuids."""
    out, seen = [], set()
    for index, item in enumerate(mdevs):
        if not isinstance(item, dict):
            raise VfioError(f"mdev[{index}] is not a dict: give {{type: TYPE, uuid: UUID}}")
        unknown = set(item) - {"type", "uuid", "start"}
        if unknown:
            raise VfioError(f"mdev[{index}] has unknown keys {sorted(unknown)}: it takes type, uuid and start")
        uuid = str(item.get("uuid") or "").strip().lower()
        if not UUID_RE.match(uuid):
            raise VfioError(f"mdev[{index}]: uuid {item.get('uuid')!r} is not a UUID (uuidgen makes one); it names the "
                            f"device, so it must be given for the run to be repeatable")
        if uuid in seen:
            raise VfioError(f"mdev: uuid {uuid} is listed twice")
        seen.add(uuid)
        kind = str(item.get("type") or "")
        if not _MDEV_TYPE_RE.match(kind):
            raise VfioError(f"mdev[{index}]: type {item.get('type')!r} is not an mdev type name (mdevctl types lists them)")
        start = item.get("start", "auto")
        if start not in ("auto", "manual"):
            raise VfioError(f"mdev[{index}]: start must be auto or manual (mdevctl's start modes), not {start!r}")
        out.append({"type": kind, "uuid": uuid, "start": start})
    return out


def mdev_plan(parent, wanted, existing, state):
    """Mediated devices to create or remove on *parent*.

    *wanted*: checked ``mdev`` items; *existing*: uuid -> ``{parent, type}`` of the mediated
    devices the host has. Returns ``{"create": [items], "remove": [items]}``; a uuid that exists
    with another type or parent is an error (a uuid names one device).
    """
    create, remove = [], []
    for item in wanted:
        have = existing.get(item["uuid"])
        if have is not None and (have["parent"] != parent or have["type"] != item["type"]):
            raise VfioError(f"mediated device {item['uuid']} exists as {have['type']} on {have['parent']}, not "
                            f"{item['type']} on {parent}: remove it first (state=unbound with its parent and type) "
                            f"or give another uuid")
        if state == "bound" and have is None:
            create.append(item)
        elif state == "unbound" and have is not None:
            remove.append(item)
    return {"create": create, "remove": remove}


def mdevctl_definition(item):
    """mdevctl's definition of *item* (``/etc/mdevctl.d/PARENT/UUID``), as ``mdevctl define``
    writes it."""
    return json.dumps({"mdev_type": item["type"], "start": item["start"], "attrs": []}, indent=2) + "\n"


def same_mdevctl_definition(text, item):
    """Whether the definition *text* (mdevctl's JSON, however formatted) is *item*'s."""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("mdev_type") == item["type"] and data.get("start") == item["start"] \
        and not data.get("attrs")


def iommu_hint(cpu_vendor):
    """What to do when the IOMMU is off: the kernel command line for the CPU's vendor."""
    intel = "intel_iommu=on iommu=pt"
    amd = "iommu=pt (AMD-Vi is on wherever the firmware enables it)"
    if cpu_vendor == "GenuineIntel":
        options = intel
    elif cpu_vendor == "AuthenticAMD":
        options = amd
    else:
        options = f"{intel} on Intel, {amd} on AMD"
    return (f"enable VT-d / AMD-Vi (IOMMU) in the firmware and add {options} to the kernel command line "
            f"(the replica.cloud.gpu role does it with gpu_iommu: true), then reboot")
