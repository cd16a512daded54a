# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Containers: the files that define an nspawn machine, rendered from its spec.

Pure functions only: ``replica.cloud.nspawn_machine`` writes what these return, unit tests check
it. A machine is the stock ``systemd-nspawn@<name>.service`` with ``/etc/systemd/nspawn/<name>.nspawn``
and a drop-in for resource limits and devices; first-boot settings are files written into the
machine's own fork before it first boots.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import namedtuple

from ansible_collections.replica.cloud.plugins.module_utils import _names, _params
from ansible_collections.replica.cloud.plugins.module_utils._sandbox import escape_path

HEADER = "# Managed by replica.cloud.nspawn_machine"
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
ADDRESS_RE = re.compile(r"^[0-9a-fA-F:.]+/[0-9]{1,3}\Z")
IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z")
NETWORK_TYPES = ("veth", "bridge", "macvlan", "ipvlan", "none", "host")
#: where the machines' shared hosts file lives on the host (bind-mounted read-only as /etc/hosts
#: into every machine, rewritten in place so that running machines see new names at once)
HOSTS_FILE = "/etc/replica/machines/hosts"
HOSTS_DIR = "/etc/replica/machines/hosts.d"
#: the machines' records (which image each came from, its first-boot digest) and defaults
STATE_DIR = "/etc/replica/machines"
DEFAULTS = "/etc/replica/machines/defaults.json"
MACHINES_DIR = "/var/lib/machines"
IMAGES_DIR = "/var/lib/machines/.images"
NSPAWN_DIR = "/etc/systemd/nspawn"
SYSTEMD_DIR = "/etc/systemd/system"


#: nspawn_machine's options (its argument spec), which the containers role checks its entries against
NETWORK_OPTIONS = {
    "type": {"type": "str", "choices": list(NETWORK_TYPES)},
    "bridge": {"type": "str"},
    "interface": {"type": "str"},
    "addresses": {"type": "list", "elements": "str"},
    "gateway": {"type": "raw"},
    "dns": {"type": "list", "elements": "str"},
}
USER_OPTIONS = {
    "name": {"type": "str", "required": True},
    "uid": {"type": "int"},
    "groups": {"type": "list", "elements": "str"},
    "shell": {"type": "str"},
    "gecos": {"type": "str"},
    "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
}
FILE_OPTIONS = {
    "path": {"type": "str", "required": True},
    "content": {"type": "str"},
    "link": {"type": "str"},
    "mode": {"type": "raw"},
    "uid": {"type": "int"},
    "gid": {"type": "int"},
}
NFS_OPTIONS = {
    "what": {"type": "str", "required": True},
    "where": {"type": "str", "required": True},
    "options": {"type": "str"},
    "idle": {"type": "str"},
}
ARGUMENT_SPEC = dict(_params.instance_options(timeout=60), **{
    "image": {"type": "str"},
    "images_dir": {"type": "path", "default": IMAGES_DIR},
    "machines_dir": {"type": "path", "default": MACHINES_DIR},
    "hostname": {"type": "str"},
    "domain": {"type": "str"},
    "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
    "users": {"type": "list", "elements": "dict", "options": USER_OPTIONS},
    "timezone": {"type": "str"},
    "files": {"type": "list", "elements": "dict", "options": FILE_OPTIONS,
              "mutually_exclusive": [("content", "link")]},
    "network": {"type": "dict", "options": NETWORK_OPTIONS},
    "binds": {"type": "list", "elements": "raw"},
    "binds_ro": {"type": "list", "elements": "raw"},
    "nfs": {"type": "list", "elements": "dict", "options": NFS_OPTIONS},
    "gpu": {"type": "bool", "default": False},
    "memory_max": {"type": "str"},
    "cpu_weight": {"type": "int"},
    "tasks_max": {"type": "int"},
    "capabilities": {"type": "list", "elements": "str"},
    "private_users": {"type": "str"},
    "settings": {"type": "dict"},
    "stop_when_unneeded": {"type": "bool", "default": False},
    "enabled": {"type": "bool", "default": True},
    "restart_on_change": {"type": "bool", "default": False},
})


#: what a containers_machines entry may say besides the module's options
ROLE_KEYS = {"segment": "the network segment the machine joins (instance_address)"}
#: nspawn_machine's options the containers role sets itself, which an entry may not say
ROLE_OWNED = {"images_dir": "containers_images_dir sets it for all machines",
              "machines_dir": "systemd-nspawn@.service looks in /var/lib/machines",
              "stop_when_unneeded": "containers_lambdas are the machines that stop when unneeded"}


class MachineError(ValueError):
    """A spec that cannot become a machine; the message says what to fix."""


def check_name(name):
    """A machine's name is also its host name and its DNS label: _names' machine-name rule."""
    return _names.check_machine_name(name, "machine name", MachineError)


class Layout(namedtuple("Layout", "name unit nspawn dropin record fork partial hosts_entry lambda_socket lambda_proxy")):
    """Where everything of machine *name* lives on the host: the one owner of these paths and
    unit names (the module, the ``replica-machine`` command, the containers role through the
    ``machine_layout`` filter)."""

    __slots__ = ()

    def units(self):
        """The files of the machine's own units (what ``state: absent`` removes)."""
        return [self.nspawn, self.dropin]

    def lambda_units(self):
        """The lambda's socket and proxy unit files."""
        return [os.path.join(SYSTEMD_DIR, self.lambda_socket), os.path.join(SYSTEMD_DIR, self.lambda_proxy)]


def layout(name, machines_dir=MACHINES_DIR):
    """The :class:`Layout` of machine *name* (checked against the name rule) under *machines_dir*."""
    check_name(name)
    unit = f"systemd-nspawn@{name}.service"
    return Layout(name=name, unit=unit, nspawn=os.path.join(NSPAWN_DIR, f"{name}.nspawn"),
                  dropin=os.path.join(SYSTEMD_DIR, f"{unit}.d", "50-replica.conf"),
                  record=os.path.join(STATE_DIR, f"{name}.json"), fork=os.path.join(machines_dir, name),
                  partial=os.path.join(machines_dir, f".{name}.partial"), hosts_entry=os.path.join(HOSTS_DIR, name),
                  lambda_socket=f"replica-lambda-{name}.socket", lambda_proxy=f"replica-lambda-{name}.service")


def record_text(image, firstboot, by="nspawn_machine"):
    """A machine's record (``Layout.record``): the image it was forked from, the digest of its
    first-boot settings (None: made by the ``replica-machine`` command, which applies none) and
    what made it."""
    return json.dumps({"image": image, "firstboot": firstboot, "by": by}, indent=1) + "\n"


def parse_record(text):
    """A record's fields, or None when there is no record (*text* None)."""
    if text is None:
        return None
    record = json.loads(text)
    if not isinstance(record, dict):
        raise MachineError("a machine record must be a JSON object: remove it and create the machine again")
    return record


def image_path(image, images_dir):
    """The folder of *image* (a name under *images_dir*, or an absolute path); None for no image.
    Raises MachineError naming the images there are when it is not there."""
    if not image:
        return None
    path = image if image.startswith("/") else os.path.join(images_dir, image)
    if not os.path.isdir(path):
        known = sorted(entry.name for entry in os.scandir(images_dir)
                       if entry.is_dir() and not entry.name.startswith(".")) if os.path.isdir(images_dir) else []
        raise MachineError(f"image {image} is not there ({path}); known images: {', '.join(known) or 'none'}")
    return path


def _path(value, what):
    if not isinstance(value, str) or not value.startswith("/") or "\n" in value or ":" in value:
        raise MachineError(f"{what} must be an absolute path without ':' or newlines, got {value!r}")
    return value


def _bind(entry, what):
    """``src[:dest]`` from a string or ``{src, dest}``."""
    if isinstance(entry, dict):
        src, dest = entry.get("src"), entry.get("dest", entry.get("src"))
    else:
        src, dummy, dest = str(entry).partition(":")
        dest = dest or src
    return f"{_path(src, what)}:{_path(dest, what)}" if src != dest else _path(src, what)


def network_settings(network):
    """The .nspawn ``[Network]`` lines for *network* ``{type, bridge, interface}``."""
    network = dict(network or {})
    kind = network.get("type", "veth")
    if kind not in NETWORK_TYPES:
        raise MachineError(f"network type {kind!r} must be one of {', '.join(NETWORK_TYPES)}")
    if kind == "bridge":
        bridge = network.get("bridge")
        if not bridge or not IFACE_RE.match(str(bridge)):
            raise MachineError("network type bridge needs network.bridge, the host bridge's name")
        return [("VirtualEthernet", "yes"), ("Bridge", bridge)]
    if kind in ("macvlan", "ipvlan"):
        iface = network.get("interface")
        if not iface or not IFACE_RE.match(str(iface)):
            raise MachineError(f"network type {kind} needs network.interface, a host interface")
        return [("VirtualEthernet", "no"), (kind.upper(), iface)]
    if kind == "veth":
        return [("VirtualEthernet", "yes")]
    if kind == "none":
        return [("Private", "yes"), ("VirtualEthernet", "no")]
    return [("Private", "no"), ("VirtualEthernet", "no")]


def guest_interface(network):
    """The interface name the machine sees for its network."""
    kind = (network or {}).get("type", "veth")
    if kind in ("veth", "bridge"):
        return "host0"
    if kind in ("macvlan", "ipvlan"):
        return f"{kind[0]}v-{network['interface']}"[:15]   # nspawn's names: mv-IFACE, iv-IFACE
    return None


def render_nspawn(spec):
    """The ``/etc/systemd/nspawn/<name>.nspawn`` text for *spec* (see the module's options)."""
    check_name(spec["name"])
    execs = [("Boot", "yes"), ("NotifyReady", "yes"), ("Hostname", spec.get("hostname") or spec["name"])]
    if spec.get("timezone"):
        execs.append(("Timezone", "off"))  # keep the machine's own zone (nspawn would copy the host's)
    if spec.get("private_users") is not None:
        execs.append(("PrivateUsers", spec["private_users"]))
    for cap in spec.get("capabilities") or []:
        if not re.match(r"^CAP_[A-Z_]+\Z", str(cap)):
            raise MachineError(f"capability {cap!r} is not a CAP_* name")
    if spec.get("capabilities"):
        execs.append(("Capability", " ".join(spec["capabilities"])))
    files = [("Bind", _bind(b, "bind")) for b in spec.get("binds") or []]
    files += [("BindReadOnly", _bind(b, "read-only bind")) for b in spec.get("binds_ro") or []]
    if spec.get("shared_hosts", True):
        files.append(("BindReadOnly", f"{HOSTS_FILE}:/etc/hosts"))
    files += gpu_binds(spec.get("gpu"))
    sections = {"Exec": execs, "Files": files, "Network": network_settings(spec.get("network"))}
    for section, values in (spec.get("settings") or {}).items():
        if section not in ("Exec", "Files", "Network"):
            raise MachineError(f"settings section {section!r} must be Exec, Files or Network")
        if not isinstance(values, dict):
            raise MachineError(f"settings.{section} must be a dict of .nspawn keys")
        for key, value in values.items():
            if not re.match(r"^[A-Z][A-Za-z]+\Z", str(key)):
                raise MachineError(f"settings.{section} key {key!r} is not a .nspawn key")
            sections[section] = [(k, v) for k, v in sections[section] if k != key]
            for item in value if isinstance(value, list) else [value]:
                sections[section].append((key, _value(item)))
    lines = [HEADER]
    for section in ("Exec", "Files", "Network"):
        if sections[section]:
            lines += ["", f"[{section}]"] + [f"{key}={value}" for key, value in sections[section]]
    return "\n".join(lines) + "\n"


def _value(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


#: the most MemoryMax= may say: beyond 1 PiB a value is a typo (999999T), not a machine
MEMORY_MAX = 1 << 50
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def check_limits(spec):
    """``[(systemd key, value)]`` of the machine's resource limits, each checked: memory_max a
    size up to 1P, a percentage up to 100% or infinity; cpu_weight 1-10000; tasks_max 1-4194304."""
    out = []
    value = spec.get("memory_max")
    if value not in (None, ""):
        match = re.fullmatch(r"([0-9]{1,20})([KMGTP%]?)|infinity", str(value))
        size = int(match.group(1)) * _UNITS.get(match.group(2), 1) if match and match.group(1) else 0
        if not match or (match.group(2) == "%" and int(match.group(1)) > 100) or \
                (match.group(1) and match.group(2) != "%" and not 0 < size <= MEMORY_MAX):
            raise MachineError(f"memory_max {value!r} must be a size from 1 to 1P (with K, M, G, T or P), a "
                               f"percentage up to 100%, or infinity")
        out.append(("MemoryMax", str(value)))
    for option, key, low, high in (("cpu_weight", "CPUWeight", 1, 10000), ("tasks_max", "TasksMax", 1, 4194304)):
        value = spec.get(option)
        if value in (None, ""):
            continue
        if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,8}", str(value)) or not low <= int(value) <= high:
            raise MachineError(f"{option} {value!r} must be a whole number from {low} to {high}")
        out.append((key, str(value)))
    return out


def check_keys(entry, what, spec=None, role_keys=None):
    """A misspelled key in an entry fails here, before anything is made, naming the keys known:
    the module's options (and the role's own *role_keys*), and in each dict option its suboptions."""
    spec = ARGUMENT_SPEC if spec is None else spec
    role_keys = ROLE_KEYS if role_keys is None else role_keys
    unknown = sorted(set(entry) - set(spec) - set(role_keys))
    if unknown:
        raise MachineError(f"{what}: unknown {'keys' if len(unknown) > 1 else 'key'} {', '.join(unknown)} (known: "
                           f"{', '.join(sorted(set(spec) | set(role_keys)))})")
    for key, option in spec.items():
        value, suboptions = entry.get(key), option.get("options")
        if not suboptions or value is None:
            continue
        for index, item in enumerate(value if option["type"] == "list" else [value]):
            if not isinstance(item, dict):
                raise MachineError(f"{what}: {key} must be {'a list of mappings' if option['type'] == 'list' else 'a mapping'}"
                                   f", got {item!r:.60}")
            where = f"{key}[{index}]" if option["type"] == "list" else key
            check_keys(item, f"{what}: {where}", suboptions, {})


#: what a containers_lambdas entry says
LAMBDA_KEYS = {key: ARGUMENT_SPEC[key] for key in ("name", "image", "files", "memory_max", "keep_data")}
LAMBDA_KEYS.update({key: {"type": "str"} for key in ("listen", "address", "port", "idle", "bridge", "state")})


def check_lambdas(lambdas):
    """The containers role's lambdas, checked like its machines: a list of mappings, the name
    rule, no name twice, no unknown key. Returns them."""
    if not isinstance(lambdas, (list, tuple)) or not all(isinstance(item, dict) for item in lambdas):
        raise MachineError(f"containers_lambdas must be a list of mappings, got {type(lambdas).__name__} {lambdas!r:.60}")
    names = []
    for index, entry in enumerate(lambdas):
        try:
            name = check_name(entry.get("name"))
        except MachineError as exc:
            raise MachineError(f"containers_lambdas #{index + 1}: {exc}") from None
        if name in names:
            raise MachineError(f"containers_lambdas: lambda {name!r} is declared twice")
        names.append(name)
        check_keys(entry, f"lambda {name!r}", LAMBDA_KEYS, {})
        if entry.get("state", "present") not in ("present", "absent"):
            raise MachineError(f"lambda {name!r}: state {entry['state']!r} must be present or absent")
        missing = [key for key in ("listen", "address", "port") if entry.get("state", "present") != "absent" and key not in entry]
        if missing:
            raise MachineError(f"lambda {name!r} needs {', '.join(missing)}")
    return lambdas


def check_inventory(machines, images, known_images=None, default_image=None):
    """Check the containers role's inventory before anything is made: lists of mappings (not a
    string from the command line), one rule for names, no name twice, every machine's image
    declared (or built earlier: *known_images*; None skips this check), limits in range.
    Returns the machines."""
    for what, value in (("containers_machines", machines), ("containers_images", images)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, dict) for item in value):
            raise MachineError(f"{what} must be a list of mappings, got {type(value).__name__} {value!r:.60}: on the "
                               f"command line give it as JSON, for example -e '{{\"{what}\": []}}'")
    declared = []
    for index, image in enumerate(images):
        name = image.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise MachineError(f"containers_images #{index + 1}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - ")
        if name in declared:
            raise MachineError(f"containers_images: image {name!r} is declared twice")
        if image.get("state", "present") != "absent":
            declared.append(name)
    seen = {}
    for index, machine in enumerate(machines):
        name = machine.get("name")
        try:
            check_name(name)
        except MachineError as exc:
            raise MachineError(f"containers_machines #{index + 1}: {exc}") from None
        if name in seen:
            raise MachineError(f"containers_machines: machine {name!r} is declared twice (#{seen[name] + 1} and "
                               f"#{index + 1}): each run would flip between the two; keep one")
        seen[name] = index
        owned = sorted(set(machine) & set(ROLE_OWNED))
        if owned:
            raise MachineError(f"machine {name!r}: {owned[0]} is not set per machine ({ROLE_OWNED[owned[0]]})")
        check_keys(machine, f"machine {name!r}")
        if machine.get("state", "started") == "absent":
            continue
        try:
            check_limits(machine)
        except MachineError as exc:
            raise MachineError(f"machine {name!r}: {exc}") from None
        image = machine.get("image") or default_image
        if known_images is not None and image and not str(image).startswith("/") and image not in declared and image not in known_images:
            raise MachineError(f"machine {name!r}: image {image!r} is not declared in containers_images "
                               f"(declared: {', '.join(declared) or 'none'}) and not built on the host (built: "
                               f"{', '.join(sorted(known_images)) or 'none'}): declare it, or choose one of those")
    return machines


def render_dropin(spec):
    """The ``systemd-nspawn@<name>.service.d/50-replica.conf`` text: resource limits, the
    devices a GPU needs and, for a lambda, ``StopWhenUnneeded=yes``; None when there is nothing
    to say."""
    lines = [f"{key}={value}" for key, value in check_limits(spec)]
    if spec.get("gpu"):
        lines += [f"DeviceAllow={node} rwm" for node in spec["gpu"].get("devices", [])]
    unit = ["[Unit]", "StopWhenUnneeded=yes"] if spec.get("stop_when_unneeded") else []
    if not lines and not unit:
        return None
    return "\n".join([HEADER] + unit + (["[Service]"] + lines if lines else [])) + "\n"


def gpu_binds(gpu):
    """``Bind``/``BindReadOnly`` lines that give a machine the host's NVIDIA GPU: the device
    nodes read-write, the driver's libraries and tools read-only at the same paths.
    *gpu* is ``{devices: [/dev/nvidia0, ...], libraries: [...], binaries: [...]}`` as found on
    the host (the module looks them up)."""
    if not gpu:
        return []
    out = [("Bind", _path(node, "GPU device")) for node in gpu.get("devices", [])]
    out += [("BindReadOnly", _path(lib, "GPU library")) for lib in gpu.get("libraries", [])]
    out += [("BindReadOnly", _path(tool, "GPU tool")) for tool in gpu.get("binaries", [])]
    return out


def network_file(spec):
    """A systemd-networkd file for static addresses in the machine, or None for DHCP (the
    image's own ``80-container-host0.network``)."""
    network = spec.get("network") or {}
    addresses = network.get("addresses") or []
    iface = guest_interface(network)
    if not addresses or iface is None:
        return None
    for address in addresses:
        if not ADDRESS_RE.match(str(address)):
            raise MachineError(f"address {address!r} must be ADDRESS/PREFIX, e.g. 10.0.0.5/24")
    lines = ["# Managed by replica.cloud.nspawn_machine (first boot)", "[Match]", f"Name={iface}", "",
             "[Network]"]
    lines += [f"Address={a}" for a in addresses]
    gateways = network.get("gateway") or []
    lines += [f"Gateway={g}" for g in ([gateways] if isinstance(gateways, str) else gateways)]
    lines += [f"DNS={d}" for d in network.get("dns") or []]
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
    return "\n".join(lines) + "\n"


def firstboot_files(spec):
    """The files written into the machine's fork before its first boot, as
    ``{path in the machine: (content, mode, uid, gid)}``; users come from a sysusers.d file."""
    name = check_name(spec["name"])
    hostname = spec.get("hostname") or name
    check_name(hostname.split(".")[0])
    files = {"/etc/hostname": (f"{hostname}\n", 0o644, 0, 0)}
    if spec.get("timezone"):
        if not re.match(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*\Z", spec["timezone"]):
            raise MachineError(f"timezone {spec['timezone']!r} is not an IANA name")
    keys = spec.get("ssh_authorized_keys") or []
    if keys:
        files["/root/.ssh/authorized_keys"] = ("".join(f"{k.strip()}\n" for k in keys), 0o600, 0, 0)
    sysusers = []
    for index, user in enumerate(spec.get("users") or []):
        uname = user.get("name") if isinstance(user, dict) else None
        if not uname or not USER_RE.match(uname) or uname == "root":
            raise MachineError(f"user {user!r} needs a name of lower-case letters, digits, '_' and '-' (not root)")
        uid = int(user.get("uid", 1000 + index))
        sysusers.append(f"u {uname} {uid} \"{user.get('gecos', uname)}\" /home/{uname} {user.get('shell', '/bin/bash')}")
        for group in user.get("groups") or []:
            sysusers.append(f"m {uname} {group}")
        files[f"/home/{uname}/.keep"] = ("", 0o600, uid, uid)
        ukeys = user.get("ssh_authorized_keys") or []
        if ukeys:
            files[f"/home/{uname}/.ssh/authorized_keys"] = ("".join(f"{k.strip()}\n" for k in ukeys), 0o600, uid, uid)
    if sysusers:
        files["/etc/sysusers.d/50-replica.conf"] = ("\n".join(sysusers) + "\n", 0o644, 0, 0)
    for item in spec.get("files") or []:
        path = _path(item.get("path"), "files[].path")
        if item.get("link"):  # a symlink, e.g. enabling a unit: {path: .../x.wants/a.service, link: ../a.service}
            files[path] = ("->", str(item["link"]))
            continue
        mode = item.get("mode", "0644")   # an int is the mode itself (YAML's 0644), a string its octal digits
        files[path] = (item.get("content", ""), mode if isinstance(mode, int) else int(str(mode), 8),
                       int(item.get("uid", 0)), int(item.get("gid", 0)))
    network = network_file(spec)
    if network:
        files["/etc/systemd/network/10-replica.network"] = (network, 0o644, 0, 0)
    files.update(nfs_units(spec.get("nfs")))
    return files


def nfs_units(mounts):
    """Automounted NFS shares in the machine: a ``.mount`` and an enabled ``.automount`` per
    ``{what: server:/export, where: /mnt/x, options}``. A symlink is ``("->", target)``."""
    files = {}
    for mount in mounts or []:
        what, where = mount.get("what", ""), _path(mount.get("where"), "nfs[].where")
        if not re.match(r"^[A-Za-z0-9.:\[\]-]+:/[^\s]*\Z", str(what)):
            raise MachineError(f"nfs what {what!r} must be SERVER:/EXPORT")
        unit = escape_path(where)
        options = mount.get("options") or "vers=4.2,soft,timeo=100"
        files[f"/etc/systemd/system/{unit}.mount"] = (
            f"# Managed by replica.cloud.nspawn_machine\n[Unit]\nDescription=NFS {what}\n\n"
            f"[Mount]\nWhat={what}\nWhere={where}\nType=nfs\nOptions={options}\n", 0o644, 0, 0)
        files[f"/etc/systemd/system/{unit}.automount"] = (
            f"# Managed by replica.cloud.nspawn_machine\n[Unit]\nDescription=Automount NFS {what}\n\n"
            f"[Automount]\nWhere={where}\nTimeoutIdleSec={mount.get('idle', '10min')}\n\n"
            "[Install]\nWantedBy=remote-fs.target\n", 0o644, 0, 0)
        files[f"/etc/systemd/system/remote-fs.target.wants/{unit}.automount"] = (
            "->", f"../{unit}.automount")
    return files


def firstboot_digest(spec):
    """A digest of the first-boot settings, kept in the fork to tell when they changed."""
    keys = ("hostname", "ssh_authorized_keys", "users", "timezone", "files", "network")
    data = {key: spec.get(key) for key in keys}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def render_hosts(entries):
    """The machines' shared hosts file from ``{name: [addresses]}``."""
    lines = [HEADER, "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for name in sorted(entries):
        for address in entries[name]:
            lines.append(f"{address.split('/')[0]}\t{name}")
    return "\n".join(lines) + "\n"
