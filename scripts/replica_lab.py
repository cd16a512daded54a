# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab hosts: systemd-booted nspawn machines that roles are converged and verified in.

The CI machine has no systemd as PID 1, so every role is tested inside a *lab host*: a Debian
root file system built once with mmdebstrap (cached, keyed by its package list), forked as a
btrfs snapshot from a storage pool on a loop image, and booted with systemd-nspawn as a full,
privileged systemd machine that can itself run nspawn machines, btrfs, loop devices and qemu.

Only the Python standard library is used, so this runs before any virtual environment exists.
Public entry points: :class:`Lab` (used by the pytest fixtures) and ``main`` (``scripts/lab``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time

# the image readers are shared with the machine_image module, the name rules with every module
# (standard library only)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins", "module_utils"))
import _image  # noqa: E402  pylint: disable=wrong-import-position,import-error
import _names  # noqa: E402  pylint: disable=wrong-import-position,import-error

#: Bump when the way images are built changes, so cached images are rebuilt.
IMAGE_FORMAT = 3
DEFAULT_SUITE = "bookworm"
#: What every lab host carries: a booting systemd, what Ansible needs (python3, python3-apt),
#: and what nested work needs (nspawn, machined, btrfs, iproute2).
#: inotify limits a host with many nested systemd instances needs (see Lab._ensure_limits)
INOTIFY_LIMITS = {"max_user_instances": 4096, "max_user_watches": 1048576}
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "systemd-container", "libnss-mymachines",
    "python3", "python3-apt", "iproute2", "iputils-ping", "procps", "sudo",
    "ca-certificates", "btrfs-progs", "util-linux", "kmod", "netbase", "less",
)
BRIDGE = os.environ.get("REPLICA_LAB_BRIDGE", "rlab0")
SUBNET = ipaddress.ip_network(os.environ.get("REPLICA_LAB_SUBNET", "10.213.0.0/24"))
#: Machine-wide registry of the labs running here (one file per lab: its bridge, subnet, NAT
#: table), shared by every lab so that they can check each other and share ip_forward.
LABS_DIR = "/run/replica-labs"
PATH_IN_MACHINE = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Devices a privileged lab host gets, where the CI machine has them.
CHAR_DEVICES = ("/dev/loop-control", "/dev/btrfs-control", "/dev/net/tun", "/dev/kvm",
                "/dev/fuse", "/dev/vhost-net", "/dev/vhost-vsock")
LOOP_DEVICES = 16


class LabError(RuntimeError):
    """A lab operation failed; the message says what to do."""


def run(argv, check=True, capture=True, env=None, stdin=None, timeout=None):
    """Run *argv* (a list, never a shell string) with LC_ALL=C."""
    full_env = dict(os.environ if env is None else env, LC_ALL="C")
    proc = subprocess.run(argv, check=False, text=True, env=full_env, timeout=timeout,
                          stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc={proc.returncode}): "
                       f"{(proc.stderr or '').strip() or (proc.stdout or '').strip()}")
    return proc


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit tested in tests/unit/scripts/test_replica_lab.py)
# ---------------------------------------------------------------------------------------------

def validate_name(name):
    """Return *name* if it is a valid lab host name, else raise LabError. A lab host's name is a
    machine name as the collection's modules have it (_names: a host name label, 1-63). Nothing
    here needs fewer: systemd-nspawn (247 and later) shortens its host-side veth ``vb-NAME`` with a
    digest of the whole name when it is too long for an interface, and a machine name may have 64."""
    try:
        return _names.check_machine_name(name)
    except _names.BadName as exc:
        raise LabError(f"invalid lab host name: {exc}") from None


def image_key(suite, packages, sources, aptopts=(), fmt=IMAGE_FORMAT):
    """Cache key of an image: a digest of everything that decides its content."""
    doc = json.dumps({"format": fmt, "suite": suite, "packages": sorted(set(packages)),
                      "sources": sources, "aptopts": list(aptopts)}, sort_keys=True)
    return f"{suite}-{hashlib.sha256(doc.encode()).hexdigest()[:16]}"


def lab_id(run_dir):
    """Short, stable identifier of the lab whose state lives in *run_dir*: it names the lab's NAT
    table and its entry in LABS_DIR, so that labs on one machine never touch each other's."""
    digest = hashlib.sha256(os.path.realpath(run_dir).encode()).digest()
    return base64.b32encode(digest).decode().lower()[:10]


def lab_conflicts(me, others):
    """Why lab *me* cannot run beside the labs *others* (dicts with ``id``, ``run_dir``,
    ``bridge``, ``subnet``): the same bridge, or overlapping subnets. A list of messages."""
    problems = []
    mine = ipaddress.ip_network(me["subnet"])
    for other in others:
        if other["id"] == me["id"]:
            continue
        if other["bridge"] == me["bridge"]:
            problems.append(f"the lab of {other['run_dir']} uses bridge {other['bridge']}")
        if ipaddress.ip_network(other["subnet"]).overlaps(mine):
            problems.append(f"the lab of {other['run_dir']} uses subnet {other['subnet']}")
    return problems


def forward_after(orig, holders_before, holders_after):
    """What to write to ``net.ipv4.ip_forward`` when the labs holding it change from
    *holders_before* to *holders_after*: "1" while any lab holds it, *orig* (the value before
    the first lab) when the last one lets go, None when nothing is to be written."""
    if holders_after:
        return "1"
    if holders_before and orig is not None:
        return orig
    return None


def nat_rules(table, subnet, bridge):
    """The lab's NAT table: its hosts reach the package registries through the CI machine."""
    return (f"table inet {table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {subnet} oifname != \"{bridge}\" masquerade\n"
            "  }\n}\n")


def prune_plan(names, last_used, in_use, now, keep_days):
    """Which cached images to delete: *names* are the entries of the image folder, *last_used*
    maps an image to the time of its last use (its record's mtime), *in_use* the images lab
    hosts run from. Unfinished builds (``.build-*``) and images without a record go; images in
    use stay; the others go when unused for more than *keep_days* days."""
    doomed = []
    for name in sorted(names):
        if name in in_use:
            continue
        if name.startswith(".build-") or name not in last_used:
            doomed.append(name)
        elif now - last_used[name] > keep_days * 86400:
            doomed.append(name)
    return doomed


def machine_address(index, subnet=SUBNET):
    """Address of lab host number *index*: the subnet's host addresses, counted from 0, where 0
    is the CI machine's end of the bridge."""
    hosts = list(subnet.hosts())
    if not 1 <= index < len(hosts):
        raise LabError(f"lab host index {index} outside {subnet}")
    return hosts[index]


def free_index(used, subnet=SUBNET):
    """Lowest host index not in *used*, starting at 1 (0 is the bridge)."""
    for index in range(1, subnet.num_addresses - 2):
        if index not in used:
            return index
    raise LabError(f"no free address left in {subnet}: remove lab hosts with 'scripts/lab down'")


def nspawn_argv(name, directory, devices, bridge=BRIDGE, binds=()):
    """The systemd-nspawn command line that boots a privileged lab host; *binds* are more
    ``SRC[:DST]`` folders of the CI machine to bind (recursively: a mount under SRC, such as a
    test's FUSE file system, is seen inside)."""
    argv = ["systemd-nspawn", "--quiet", "--boot", f"--machine={name}", f"--directory={directory}",
            # no systemd on the CI machine: do not ask it for a scope or machined registration
            "--register=no", "--keep-unit",
            # every capability but CAP_SYS_TIME: the clock is the host's. (On a machine whose
            # PID 1 is not systemd nothing has made the kernel's first settimeofday() call, and a
            # lab host's making it with its time zone warped the host's clock by that offset.)
            "--capability=all", "--drop-capability=CAP_SYS_TIME",
            f"--network-bridge={bridge}", "--resolv-conf=copy-host",
            "--timezone=off", "--console=read-only", "--kill-signal=SIGRTMIN+3"]
    argv += [f"--bind={dev}" for dev in devices]
    argv += [f"--bind={bind}" for bind in binds]
    return argv


NSPAWN_ENV = {
    # a lab host is a privileged test machine: nested nspawn, mounts and qemu need every
    # system call. /sys stays read-only: with it writable, systemd-networkd would wait for a
    # udev that a container must not run.
    "SYSTEMD_SECCOMP": "0",
}


def network_unit(address, gateway, prefixlen):
    """systemd-networkd configuration for the machine's end of the veth."""
    return ("[Match]\nName=host0\n\n[Network]\n"
            f"Address={address}/{prefixlen}\nGateway={gateway}\n"
            "LinkLocalAddressing=ipv6\nIPv6AcceptRA=no\n")


# ---------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Machine:
    """A lab host as recorded in its state file."""
    name: str
    nspawn_pid: int
    leader: int
    index: int
    address: str
    directory: str
    image: str
    log: str
    boot_seconds: float = 0.0
    fork_seconds: float = 0.0
    pidns: str = ""

    def alive(self):
        return _pid_alive(self.nspawn_pid)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Lab:
    """The lab: a btrfs pool on a loop image, an image cache and the lab hosts forked from it."""

    def __init__(self, root=None, pool_size=None, run_dir=None, suite=None, bridge=None, subnet=None):
        self.root = root or os.environ.get("REPLICA_LAB_DIR", "/var/lib/replica-lab")
        self.pool_size = pool_size or os.environ.get("REPLICA_LAB_POOL_SIZE", "40G")
        self.run_dir = run_dir or os.environ.get("REPLICA_LAB_RUN", "/run/replica-lab")
        self.suite = suite or os.environ.get("REPLICA_LAB_SUITE", DEFAULT_SUITE)
        self.bridge = bridge or BRIDGE
        self.subnet = ipaddress.ip_network(subnet) if subnet else SUBNET
        self.id = lab_id(self.run_dir)
        #: the lab's own NAT table (two labs on one machine each have theirs)
        self.nft_table = f"replica_lab_{self.id}"
        self.image_file = os.path.join(self.root, "pool.img")
        self.pool = os.path.join(self.root, "pool")
        self.images = os.path.join(self.pool, "images")
        self.machines = os.path.join(self.pool, "machines")

    # -- locking and state ----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, what="lab"):
        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.run_dir, f"{what}.lock"), "w", encoding="ascii") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _state_path(self, name):
        return os.path.join(self.run_dir, f"{name}.json")

    def get(self, name):
        """The recorded lab host *name*, or None."""
        try:
            with open(self._state_path(validate_name(name)), encoding="utf-8") as handle:
                return Machine(**json.load(handle))
        except FileNotFoundError:
            return None

    def list(self):
        """All recorded lab hosts."""
        if not os.path.isdir(self.run_dir):
            return []
        names = sorted(f[:-5] for f in os.listdir(self.run_dir) if f.endswith(".json"))
        return [m for m in (self.get(n) for n in names if _names.is_machine_name(n)) if m]

    # -- pool ------------------------------------------------------------------------------
    def ensure_pool(self):
        """Create and mount the btrfs pool (idempotent)."""
        os.makedirs(self.pool, exist_ok=True)
        if not os.path.ismount(self.pool):
            if not os.path.exists(self.image_file):
                run(["truncate", "-s", self.pool_size, self.image_file])
                run(["mkfs.btrfs", "-q", "-L", "replica-lab", self.image_file])
            run(["mount", "-o", "loop,compress=zstd:1,noatime", self.image_file, self.pool])
        for sub in (self.images, self.machines):
            if not os.path.isdir(sub):
                run(["btrfs", "subvolume", "create", sub])

    # -- images ----------------------------------------------------------------------------
    @staticmethod
    def host_sources():
        """The CI machine's own APT sources (deb822 or one-line), reused for the images."""
        return _image.read_host_sources()

    @staticmethod
    def host_aptopts():
        """The CI machine's APT ``Acquire::`` settings files, so images fetch as the host does."""
        return [path for path, dummy in _image.read_host_aptopts()]

    def image(self, packages=(), suite=None, rebuild=False):
        """Path of the cached, read-only image with *packages* pre-baked; built if missing."""
        suite = suite or self.suite
        for package in packages:
            _names.check_package_name(package, "package", LabError)
        wanted = sorted(set(BASE_PACKAGES) | set(packages))
        sources = self.host_sources()
        deb822 = [text for path, text in sources if path.endswith(".sources")]
        one_line = [text for path, text in sources if path.endswith(".list")]
        if not sources:
            raise LabError("the CI machine has no APT sources: configure /etc/apt/sources.list(.d)")
        aptopts = self.host_aptopts()
        key = image_key(suite, wanted, [text for _path, text in sources], [_read(p) for p in aptopts])
        self.ensure_pool()
        path = os.path.join(self.images, key)
        with self.lock("images"):
            if os.path.isdir(path) and not rebuild:
                with contextlib.suppress(OSError):
                    os.utime(f"{path}.json")  # its last use, for prune
                return path
            if os.path.isdir(path):
                self._delete_subvolume(path)
            tmp = os.path.join(self.images, f".build-{key}")
            if os.path.isdir(tmp):
                self._delete_subvolume(tmp)
            run(["btrfs", "subvolume", "create", tmp])
            started = time.monotonic()
            # mmdebstrap reads the sources from standard input (mirror "-"): deb822 and
            # one-line formats cannot be mixed there, so prefer deb822 when the host uses it.
            stdin_text = "\n".join(deb822) if deb822 else "\n".join(one_line)
            host_suite = self._host_codename()
            if suite != host_suite:
                stdin_text = stdin_text.replace(host_suite, suite)
            argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
                    f"--include={','.join(wanted)}",
                    "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd",
                    "--customize-hook=chroot \"$1\" systemctl mask systemd-networkd-wait-online",
                    "--customize-hook=rm -f \"$1\"/etc/machine-id && touch \"$1\"/etc/machine-id",
                    ]
            argv += [f"--aptopt={p}" for p in aptopts]
            argv += [suite, tmp, "-"]
            with open(os.path.join(self.root, f"{key}.build.log"), "w", encoding="utf-8") as log:
                proc = subprocess.run(argv, input=stdin_text, text=True, stdout=log,
                                      stderr=subprocess.STDOUT, check=False,
                                      env=dict(os.environ, LC_ALL="C"))
            try:
                if proc.returncode != 0:
                    raise LabError(f"mmdebstrap failed (rc={proc.returncode}); see {log.name}")
                self._flatten_subvolumes(tmp)
                # mmdebstrap empties the package lists; date them to the epoch so apt (and
                # Ansible's cache_valid_time) see them as stale rather than freshly updated
                lists = os.path.join(tmp, "var/lib/apt/lists")
                if os.path.isdir(lists):
                    os.utime(lists, (0, 0))
                run(["btrfs", "property", "set", "-ts", tmp, "ro", "true"])
            except BaseException:
                self._delete_subvolume(tmp)  # no half-built image is ever left under its key
                raise
            with open(f"{path}.json", "w", encoding="utf-8") as handle:
                json.dump({"key": key, "suite": suite, "packages": wanted,
                           "build_seconds": round(time.monotonic() - started, 2),
                           "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                          handle, indent=2)
            os.rename(tmp, path)
            return path

    def _flatten_subvolumes(self, tree):
        """Turn subvolumes nested in *tree* (tmpfiles makes /var/lib/machines one) into plain
        folders: a snapshot shows a nested subvolume as an empty stub nothing can be written in."""
        for sub in self._nested_subvolumes(tree):
            mode = os.stat(sub).st_mode & 0o7777
            listing = os.listdir(sub)
            if listing:
                raise LabError(f"{sub}: nested subvolume is not empty ({listing[:3]}): "
                               "cannot flatten it into the image")
            run(["btrfs", "subvolume", "delete", sub])
            os.mkdir(sub, mode)

    def _nested_subvolumes(self, path):
        """Subvolumes below *path* in the pool, deepest first."""
        rel = os.path.relpath(path, self.pool)
        nested = []
        for line in run(["btrfs", "subvolume", "list", self.pool]).stdout.splitlines():
            sub = line.split(" path ", 1)[1].strip()
            if sub.startswith(rel + "/"):
                nested.append(os.path.join(self.pool, sub))
        return sorted(nested, key=len, reverse=True)

    def prune(self, keep_days=14, dry_run=False):
        """Delete cached images no lab host was forked from and no build used for *keep_days*
        (a build's use touches its record), and builds a killed run left; return their names
        (with *dry_run*, what would go)."""
        if not os.path.isdir(self.images):
            return []
        with self.lock("images"):
            in_use = {m.image for m in self.list()}
            records, names = {}, []
            for entry in os.listdir(self.images):
                if not entry.endswith(".json"):
                    names.append(entry)
                    continue
                with contextlib.suppress(OSError):
                    records[entry[:-5]] = os.stat(os.path.join(self.images, entry)).st_mtime
            doomed = prune_plan(names, records, in_use, time.time(), keep_days)
            for name in doomed:
                if not dry_run:
                    self._delete_subvolume(os.path.join(self.images, name))
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.images, f"{name}.json"))
            return doomed

    def image_info(self, path):
        with open(f"{path}.json", encoding="utf-8") as handle:
            return json.load(handle)

    @staticmethod
    def _host_codename():
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VERSION_CODENAME="):
                    return line.split("=", 1)[1].strip().strip('"')
        return DEFAULT_SUITE

    @staticmethod
    def _ensure_limits():
        """Every lab host, and every machine nested in one, runs a systemd that takes inotify
        instances of the same (root) user: the kernel's default of 128 runs out after a few
        dozen. Raise the limits (never lower them); they stay raised, which is harmless."""
        for name, wanted in INOTIFY_LIMITS.items():
            path = f"/proc/sys/fs/inotify/{name}"
            with open(path, encoding="ascii") as handle:
                current = int(handle.read().strip())
            if current < wanted:
                with open(path, "w", encoding="ascii") as handle:
                    handle.write(str(wanted))

    # -- host network ------------------------------------------------------------------------
    def _ensure_network(self):
        """Bridge, address and NAT towards the package registries, made once, removed by down.
        Called under the lab lock. The lab registers in LABS_DIR first: a lab whose bridge or
        subnet another running lab uses is refused, and ip_forward is turned on while any lab on
        the machine holds it and restored by the last one (see _teardown_network)."""
        gateway = next(self.subnet.hosts())
        with self._labs_lock():
            others = self._running_labs()
            problems = lab_conflicts(self._entry(), others)
            if problems:
                raise LabError("; ".join(problems) + ": give this lab a bridge and subnet of its own "
                               "(REPLICA_LAB_BRIDGE, REPLICA_LAB_SUBNET)")
            orig_path = os.path.join(LABS_DIR, "ip_forward.orig")
            if not others and not os.path.exists(orig_path):
                with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as handle:
                    orig = handle.read().strip()
                with open(orig_path, "w", encoding="ascii") as handle:
                    handle.write(orig)
            with open(self._entry_path(), "w", encoding="utf-8") as handle:
                json.dump(self._entry(), handle)
            with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as handle:
                handle.write("1")
        if run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        if run(["nft", "list", "table", "inet", self.nft_table], check=False).returncode != 0:
            subprocess.run(["nft", "-f", "-"], input=nat_rules(self.nft_table, self.subnet, self.bridge),
                           text=True, check=True)
        return gateway

    def _teardown_network(self):
        """Remove the bridge, the NAT table and the lab's registration once no lab host of this
        lab is left; the last lab on the machine restores ip_forward."""
        if self.list():
            return
        run(["nft", "delete", "table", "inet", self.nft_table], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        with self._labs_lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._entry_path())
            after = [lab["id"] for lab in self._running_labs()]
            orig_path = os.path.join(LABS_DIR, "ip_forward.orig")
            orig = _read(orig_path).strip() if os.path.exists(orig_path) else None
            value = forward_after(orig, [self.id], after)
            if value is not None:
                with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as handle:
                    handle.write(value)
            if not after and orig is not None:
                os.unlink(orig_path)

    def _entry(self):
        return {"id": self.id, "root": self.root, "run_dir": self.run_dir, "bridge": self.bridge,
                "subnet": str(self.subnet), "nft_table": self.nft_table}

    def _entry_path(self):
        return os.path.join(LABS_DIR, f"{self.id}.json")

    @contextlib.contextmanager
    def _labs_lock(self):
        os.makedirs(LABS_DIR, exist_ok=True)
        with open(os.path.join(LABS_DIR, ".lock"), "w", encoding="ascii") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _running_labs():
        """The labs registered in LABS_DIR that still have a live lab host (a lab killed
        without its teardown is forgotten here)."""
        labs = []
        for entry in sorted(os.listdir(LABS_DIR)) if os.path.isdir(LABS_DIR) else []:
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(LABS_DIR, entry), encoding="utf-8") as handle:
                    lab = json.load(handle)
            except (OSError, ValueError):
                continue
            if any(m.alive() for m in Lab(root=lab["root"], run_dir=lab["run_dir"]).list()):
                labs.append(lab)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(LABS_DIR, entry))
        return labs

    # -- machines --------------------------------------------------------------------------
    @staticmethod
    def _devices():
        """Device nodes to pass in: loop devices (created on the host if missing) and friends."""
        devices = [d for d in CHAR_DEVICES if os.path.exists(d)]
        for index in range(LOOP_DEVICES):
            node = f"/dev/loop{index}"
            if not os.path.exists(node):
                os.mknod(node, 0o660 | 0o060000, os.makedev(7, index))
            devices.append(node)
        return devices

    def up(self, name, packages=(), timeout=180, binds=(), suite=None, prepare=None):
        """Fork, boot and wait for lab host *name*; return its Machine. Idempotent. *binds*:
        ``SRC[:DST]`` folders of the CI machine the host sees (read-write); *suite*: the Debian
        release of its image (default: the lab's, REPLICA_LAB_SUITE); *prepare*: called as
        ``prepare(directory, address)`` on the fork before it boots (configuration, units)."""
        validate_name(name)
        existing = self.get(name)
        if existing and existing.alive():
            return existing
        if existing:
            self.down(name)
        image = self.image(packages, suite=suite)
        with self.lock():
            used = {m.index for m in self.list()}
            index = free_index(used, self.subnet)
            address = machine_address(index, self.subnet)
            directory = os.path.join(self.machines, name)
            if os.path.exists(directory):
                self._delete_subvolume(directory)
            self._ensure_limits()
            gateway = self._ensure_network()
            started = time.monotonic()
            run(["btrfs", "subvolume", "snapshot", image, directory])
            fork_seconds = time.monotonic() - started
            self._personalise(directory, name, address, gateway, self.subnet.prefixlen)
            if prepare:
                prepare(directory, str(address))
            log = os.path.join(self.run_dir, f"{name}.log")
            with open(log, "w", encoding="utf-8") as handle:
                proc = subprocess.Popen(  # pylint: disable=consider-using-with
                    nspawn_argv(name, directory, self._devices(), bridge=self.bridge, binds=binds),
                    stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                    start_new_session=True, env=dict(os.environ, **NSPAWN_ENV))
            machine = Machine(name=name, nspawn_pid=proc.pid, leader=0, index=index,
                              address=str(address), directory=directory,
                              image=os.path.basename(image), log=log,
                              fork_seconds=round(fork_seconds, 3))
            self._save(machine)
        try:
            machine.leader = self._wait_leader(proc, machine, timeout)
            machine.pidns = os.readlink(f"/proc/{machine.leader}/ns/pid")
            self._save(machine)
            self._wait_running(proc, machine, started + timeout)
        except BaseException:
            self.down(name)
            raise
        machine.boot_seconds = round(time.monotonic() - started, 3)
        self._save(machine)
        return machine

    @contextlib.contextmanager
    def host(self, name, packages=(), timeout=180):
        """A lab host for the duration of a ``with`` block: removed however the block ends."""
        try:
            yield self.up(name, packages=packages, timeout=timeout)
        finally:
            self.down(name)

    def _save(self, machine):
        path = self._state_path(machine.name)
        with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(machine), handle, indent=2)
        os.replace(f"{path}.tmp", path)

    @staticmethod
    def _personalise(directory, name, address, gateway, prefixlen):
        """Per-machine settings written into the fork before it boots (never into the image)."""
        with open(os.path.join(directory, "etc/hostname"), "w", encoding="ascii") as handle:
            handle.write(f"{name}\n")
        netdir = os.path.join(directory, "etc/systemd/network")
        os.makedirs(netdir, exist_ok=True)
        with open(os.path.join(netdir, "10-replica-lab.network"), "w", encoding="ascii") as handle:
            handle.write(network_unit(address, gateway, prefixlen))

    @staticmethod
    def _wait_leader(proc, machine, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"systemd-nspawn for {machine.name} exited with {proc.returncode}:\n"
                               + _tail(machine.log))
            for child in _children(proc.pid):
                try:
                    with open(f"/proc/{child}/status", encoding="ascii") as handle:
                        nspid = [l for l in handle if l.startswith("NSpid:")]
                except OSError:
                    continue
                if nspid and nspid[0].split()[1:] == [str(child), "1"]:
                    return child
            time.sleep(0.02)
        raise LabError(f"{machine.name}: no init process after {timeout}s:\n" + _tail(machine.log))

    def _wait_running(self, proc, machine, deadline):
        state = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"{machine.name} stopped while booting (rc={proc.returncode}):\n"
                               + _tail(machine.log))
            state = self.exec(machine, ["systemctl", "is-system-running"], check=False).stdout.strip()
            if state == "running":
                return state
            if state == "degraded":
                failed = self.exec(machine, ["systemctl", "--failed", "--no-legend", "--plain"],
                                   check=False).stdout.strip()
                sys.stderr.write(f"lab host {machine.name} is degraded; failed units:\n{failed}\n")
                return state
            time.sleep(0.05)
        raise LabError(f"{machine.name} did not reach 'running' (last state {state!r}):\n"
                       + _tail(machine.log))

    def exec(self, machine, argv, check=True, stdin=None, capture=True):
        """Run *argv* inside *machine* (all of its namespaces), with a clean environment."""
        if isinstance(machine, str):
            machine = self.require(machine)
        full = ["nsenter", f"--target={machine.leader}", "--all", "--",
                "/usr/bin/env", "-i", f"PATH={PATH_IN_MACHINE}", "HOME=/root", "LANG=C.UTF-8",
                "TERM=" + os.environ.get("TERM", "dumb")] + list(argv)
        return run(full, check=check, stdin=stdin, capture=capture)

    def require(self, name):
        machine = self.get(name)
        if not machine or not machine.alive():
            raise LabError(f"lab host {name!r} is not running: start it with 'scripts/lab up {name}'")
        return machine

    # -- teardown --------------------------------------------------------------------------
    def down(self, name, grace=20):
        """Stop lab host *name* and remove everything it left: idempotent, safe after failures."""
        validate_name(name)
        machine = self.get(name)
        directory = machine.directory if machine else os.path.join(self.machines, name)
        pidns = machine.pidns if machine else ""
        if machine and machine.alive():
            os.kill(machine.nspawn_pid, signal.SIGTERM)  # nspawn powers the machine off
            deadline = time.monotonic() + grace
            while machine.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if machine:
            # the machine's init dying takes every process of its PID namespace with it
            if _pid_alive(machine.leader) and _pidns(machine.leader) == pidns:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(machine.leader, signal.SIGKILL)
            if machine.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(machine.nspawn_pid, signal.SIGKILL)
            _reap(machine.nspawn_pid)
        self._kill_machine_processes(directory, pidns)
        self._detach_loops(directory)
        self._unmount_below(directory)
        if os.path.lexists(directory):
            self._delete_subvolume(directory)
        with self.lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._state_path(name))
            self._teardown_network()
        with contextlib.suppress(OSError):
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}")

    def leftovers(self, name):
        """What of lab host *name* is still on the CI machine (all empty after down)."""
        machine = self.get(name)
        directory = os.path.join(self.machines, name)
        return {
            "processes": _machine_pids(directory, machine.pidns if machine else ""),
            "mounts": _mounts_below(directory),
            "loops": _loops_below(directory),
            "links": [l for l in _links() if name[:11] in l and l.startswith("vb-")],
            "directory": [directory] if os.path.lexists(directory) else [],
            "state": [self._state_path(name)] if os.path.exists(self._state_path(name)) else [],
        }

    @staticmethod
    def _kill_machine_processes(directory, pidns):
        pids = []
        for _attempt in range(50):
            pids = _machine_pids(directory, pidns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise LabError(f"processes {pids} under {directory} survive SIGKILL")

    @staticmethod
    def _detach_loops(directory):
        for dev in _loops_below(directory):
            run(["losetup", "-d", dev], check=False)

    @staticmethod
    def _unmount_below(directory):
        for target in sorted(_mounts_below(directory), key=len, reverse=True):
            run(["umount", "-l", target], check=False)

    def _delete_subvolume(self, path):
        """Delete a subvolume and every subvolume nested inside it (nested work creates some)."""
        for sub in self._nested_subvolumes(path):
            run(["btrfs", "property", "set", "-ts", sub, "ro", "false"], check=False)
            run(["btrfs", "subvolume", "delete", sub])
        if _is_subvolume(path):
            run(["btrfs", "property", "set", "-ts", path, "ro", "false"], check=False)
            run(["btrfs", "subvolume", "delete", path])
        elif os.path.lexists(path):
            shutil.rmtree(path)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _is_subvolume(path):
    try:
        return os.stat(path).st_ino == 256 and os.path.isdir(path)
    except OSError:
        return False


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _reap(pid):
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pidns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _machine_pids(directory, pidns):
    """Processes of a machine: in its PID namespace, or with a root on its subvolume (nested
    machines have PID namespaces of their own, but their roots live on the lab host's fork)."""
    try:
        device = os.stat(directory).st_dev
    except OSError:
        device = None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            mine = (pidns and _pidns(pid) == pidns) or (
                device is not None and os.stat(f"/proc/{pid}/root").st_dev == device)
        except OSError:
            continue
        if mine and not _is_zombie(pid):
            found.append(pid)
    return found


def _mounts_below(directory):
    real = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            target = line.split()[4].replace("\\040", " ")
            if target == real or target.startswith(real + "/"):
                found.append(target)
    return found


def _loops_below(directory):
    """Loop devices backed by a file of the machine: by path as the CI machine sees it, or by
    the device of the machine's subvolume (a loop set up inside reports its in-machine path)."""
    real = os.path.realpath(directory)
    devices = set()
    with contextlib.suppress(OSError):
        st_dev = os.stat(real).st_dev
        devices.add(f"{os.major(st_dev)}:{os.minor(st_dev)}")
    listing = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,BACK-MAJ:MIN"],
                  check=False).stdout
    found = []
    for loop in json.loads(listing or '{"loopdevices": []}').get("loopdevices", []):
        back = (loop.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(real + "/") or (loop.get("back-maj:min") or "").strip() in devices:
            found.append(loop["name"])
    return found


def _links():
    return [l.split(":")[1].strip().split("@")[0]
            for l in run(["ip", "-o", "link", "show"]).stdout.splitlines()]


def _tail(path, lines=30):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Command line: scripts/lab
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="create and boot lab hosts (idempotent)")
    p_up.add_argument("names", nargs="+")
    p_up.add_argument("--package", "-p", action="append", default=[],
                      help="pre-bake this package into the image (repeatable)")
    p_up.add_argument("--timeout", type=float, default=180)
    p_up.add_argument("--suite", help=f"Debian release of its image (default {DEFAULT_SUITE}, "
                                      "or REPLICA_LAB_SUITE)")
    p_up.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                      help="a folder of this machine the lab host sees at DST (default SRC); repeatable")
    p_down = sub.add_parser("down", help="stop lab hosts and remove all they left")
    p_down.add_argument("names", nargs="*")
    p_down.add_argument("--all", action="store_true", help="every recorded lab host")
    sub.add_parser("list", help="list lab hosts")
    p_prune = sub.add_parser("prune", help="delete cached images unused for some days, and killed builds")
    p_prune.add_argument("--keep-days", type=float, default=14,
                         help="keep images used within this many days (default 14; 0: all not in use)")
    p_prune.add_argument("--dry-run", action="store_true", help="only print what would go")
    p_image = sub.add_parser("image", help="build (or show) the cached image")
    p_image.add_argument("--package", "-p", action="append", default=[])
    p_image.add_argument("--rebuild", action="store_true")
    p_image.add_argument("--suite")
    p_shell = sub.add_parser("shell", help="a shell, or a command, inside a lab host")
    p_shell.add_argument("name")
    p_shell.add_argument("cmd", nargs=argparse.REMAINDER)
    p_leader = sub.add_parser("leader", help="print the leader PID of a lab host")
    p_leader.add_argument("name")
    sub.add_parser("destroy-pool", help="down every lab host, unmount and delete the pool")
    p_inet = sub.add_parser("internet", help="the lab's offline internet (lab-internet): up, down, status, "
                                             "trust NAME... (a lab host trusts its CA and resolves through it)")
    p_inet.add_argument("action", choices=("up", "down", "status", "trust"))
    p_inet.add_argument("names", nargs="*", help="lab hosts (trust)")
    args = parser.parse_args(argv)
    lab = Lab()
    try:
        if os.geteuid() != 0:
            raise LabError("lab hosts need root (loop devices, btrfs, nspawn): run as root")
        if args.command == "up":
            for name in args.names:
                machine = lab.up(name, packages=args.package, timeout=args.timeout, binds=args.bind,
                                 suite=args.suite)
                print(f"{machine.name}\tleader={machine.leader}\taddress={machine.address}"
                      f"\tfork={machine.fork_seconds}s\tready={machine.boot_seconds}s")
        elif args.command == "down":
            names = [m.name for m in lab.list()] if args.all else args.names
            for name in names:
                lab.down(name)
                print(f"{name}\tremoved")
        elif args.command == "prune":
            for name in lab.prune(keep_days=args.keep_days, dry_run=args.dry_run):
                print(f"{name}\t{'would be removed' if args.dry_run else 'removed'}")
        elif args.command == "list":
            print("NAME\tSTATE\tLEADER\tADDRESS\tIMAGE")
            for m in lab.list():
                print(f"{m.name}\t{'running' if m.alive() else 'dead'}\t{m.leader}\t{m.address}\t"
                      f"{m.image}")
        elif args.command == "image":
            path = lab.image(args.package, suite=args.suite, rebuild=args.rebuild)
            print(json.dumps(dict(lab.image_info(path), path=path), indent=2))
        elif args.command == "leader":
            print(lab.require(args.name).leader)
        elif args.command == "shell":
            machine = lab.require(args.name)
            cmd = args.cmd or ["/bin/bash", "-l"]
            tty = sys.stdin.isatty()
            proc = lab.exec(machine, cmd, check=False, stdin=None if not tty else sys.stdin,
                            capture=False)
            return proc.returncode
        elif args.command == "internet":
            sys.modules.setdefault("replica_lab", sys.modules[__name__])  # one LabError
            import replica_internet  # pylint: disable=import-outside-toplevel
            return replica_internet.cli(lab, args.action, args.names)
        elif args.command == "destroy-pool":
            for m in lab.list():
                lab.down(m.name)
            if os.path.ismount(lab.pool):
                run(["umount", lab.pool])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lab.image_file)
            with contextlib.suppress(OSError):
                os.rmdir(lab.pool)
            print(f"removed {lab.image_file}")
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
