# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy-on-write backends: btrfs subvolumes, ZFS datasets, folders on reflink file systems.

Standard library only, and no Ansible imports: the ``replica.cloud.cow_snapshot`` module and the
``replica-snapshot`` command the storage role installs for its timers share this file. Commands
run through a *run* callable, ``run(argv) -> (rc, stdout, stderr)``, given by the caller (the
``_runner.Runner`` of the module, or :data:`subprocess_runner` for the host tools).

Each backend offers ``exists``, ``describe`` (what *dest* is: kind and source), ``snapshot``,
``fork``, ``remove`` and ``list_snapshots``; :func:`plan_dest` decides from ``describe`` whether
an existing *dest* is already what was asked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import tempfile

try:  # in a module, the collection's; in the host tools, the copy installed next to them
    from ansible_collections.replica.cloud.plugins.module_utils import _lock, _runner
except ImportError:  # pragma: no cover - the host tools' path
    import _lock  # pylint: disable=import-error
    import _runner  # pylint: disable=import-error

BTRFS_SUBVOLUME_INO = 256
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h: _IOR('f', 1, long)
FS_IMMUTABLE_FL = 0x00000010
MARK = "user.replica.cow"  # extended attribute on reflink snapshots and forks: {"src", "kind"}


class CowError(Exception):
    """Something the user has to fix; the message says what."""


#: ``run(argv) -> (rc, stdout, stderr)`` through subprocess, for the host tools (_runner's)
subprocess_runner = _runner.Runner()


def fstype(path):
    """The file system type of *path* as ``stat -f`` names it, from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            sep = fields.index("-")
            mount_point = fields[4].replace("\\040", " ")
            if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best, kind = mount_point, fields[sep + 1]
    return kind


def can_reflink(directory):
    """Whether files in *directory* can share extents (FICLONE), probed with two temporary
    files that are removed again."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".replica-reflink-") as src, \
                tempfile.NamedTemporaryFile(dir=directory, prefix=".replica-reflink-") as dst:
            src.write(b"replica")
            src.flush()
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            return False
        raise CowError(f"could not probe reflink support in {directory}: {exc}") from exc


def _check(run, argv, what):
    rc, out, err = run(argv)
    if rc != 0:
        raise CowError(f"{what} failed ({' '.join(argv)}): {(err or out).strip()}")
    return out


def existing_ancestor(path):
    """*path*, or the nearest of its parents that exists."""
    while not os.path.lexists(path) and path not in ("/", ""):
        path = os.path.dirname(path)
    return path or "/"


def check_path(what, path):
    """The rule for a path the caller gives: no NUL, no newline (they cut argv and records)."""
    for char, word in (("\0", "NUL"), ("\n", "newline"), ("\r", "carriage return")):
        if char in path:
            raise CowError(f"{what} {path!r} contains a {word}: give a path without one")
    return path


def check_dest_path(dest):
    """Refuse a dest (a fork, a snapshot folder) reached through a symlink: it would land inside
    whatever the link points to (another subvolume, /etc). *dest* is absolute and normalised."""
    check_path("dest", dest)
    folder = existing_ancestor(os.path.dirname(dest))
    real = os.path.realpath(folder)
    if real != folder:
        raise CowError(f"dest {dest} is reached through a symlink ({folder} is really {real}): give the "
                       f"real path, without symlinks")
    if os.path.lexists(dest) and os.path.islink(dest):
        raise CowError(f"dest {dest} is a symlink: give the real path, without symlinks")


def _scan(snapshot_dir, parse, is_snapshot):
    """``[(path, time)]`` of the folders in *snapshot_dir* whose names *parse* and that
    *is_snapshot* accepts."""
    found = []
    if not os.path.isdir(snapshot_dir):
        return found
    for entry in os.scandir(snapshot_dir):
        when = parse(entry.name)
        try:
            if when is not None and entry.is_dir(follow_symlinks=False) and is_snapshot(entry.path):
                found.append((entry.path, when))
        except FileNotFoundError:  # deleted since the folder was read (by a prune not holding our lock)
            continue
    return found


class Btrfs:
    """Snapshots are read-only btrfs snapshots; forks writable ones."""

    name = "btrfs"

    def __init__(self, run, btrfs="btrfs"):
        self.run = run
        self.btrfs = btrfs

    @staticmethod
    def is_subvolume(path):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_ino == BTRFS_SUBVOLUME_INO and fstype(path) == "btrfs"

    def check_source(self, src):
        if not os.path.lexists(src):
            raise CowError(f"src {src} does not exist")
        if not self.is_subvolume(src):
            raise CowError(f"src {src} is not a btrfs subvolume (backend btrfs): make it one with "
                           f"'btrfs subvolume create', or use backend reflink for a plain folder on btrfs")

    def show(self, path):
        out = _check(self.run, [self.btrfs, "subvolume", "show", path], f"reading subvolume {path}")
        info = {}
        for line in out.splitlines():
            key, dummy, value = line.strip().partition(":")
            if value:
                info.setdefault(key.strip(), value.strip())
        return info

    def readonly(self, path):
        out = _check(self.run, [self.btrfs, "property", "get", "-ts", path, "ro"], f"reading {path}")
        return out.strip() == "ro=true"

    def exists(self, dest):
        return os.path.lexists(dest)

    @staticmethod
    def check_dest(src, dest):
        """btrfs itself refuses a dest on another file system, before making anything."""

    def describe(self, src, dest):
        """``(kind, from_src)`` of an existing *dest*: kind snapshot, fork or other."""
        if not self.is_subvolume(dest):
            return "other", False
        parent = self.show(dest).get("Parent UUID", "-")
        from_src = parent != "-" and parent == self.show(src).get("UUID")
        return ("snapshot" if self.readonly(dest) else "fork"), from_src

    def snapshot(self, src, dest):
        _check(self.run, [self.btrfs, "subvolume", "snapshot", "-r", src, dest], f"snapshot of {src}")

    def fork(self, src, dest):
        _check(self.run, [self.btrfs, "subvolume", "snapshot", src, dest], f"fork of {src}")

    def remove(self, paths):
        for start in range(0, len(paths), 100):
            if start:
                _lock.crash_point("btrfs-pruning")
            # --commit-after: the space is being given back when this returns, not at the next
            # periodic commit (up to 30 s later)
            _check(self.run, [self.btrfs, "subvolume", "delete", "--commit-after", *paths[start:start + 100]],
                   "deleting snapshots")

    def list_snapshots(self, snapshot_dir, parse):
        """``[(path, time)]`` of the snapshots in *snapshot_dir* whose names *parse*."""
        # a subvolume's entry in its parent carries the subvolume id, not its root inode: lstat
        return _scan(snapshot_dir, parse, lambda path: os.lstat(path).st_ino == BTRFS_SUBVOLUME_INO)


class Reflink:
    """Folders copied with ``cp -a --reflink=always`` (shared extents: fast, no extra space).
    Snapshots are made read-only with the immutable attribute (``chattr +i``) on every file and
    folder; both carry the extended attribute ``user.replica.cow`` naming their source and kind.
    Not atomic: the copy sees a folder that changes while it runs."""

    name = "reflink"

    def __init__(self, run):
        self.run = run

    def check_source(self, src):
        if not os.path.lexists(src):
            raise CowError(f"src {src} does not exist")
        if not os.path.isdir(src) or os.path.islink(src):
            raise CowError(f"src {src} is not a folder")
        if not can_reflink(src):
            raise CowError(f"src {src} is on {fstype(src) or 'a file system'} without reflink "
                           f"(copy-on-write) support, so a fork would be a full copy: use btrfs, or "
                           f"xfs made with reflink=1")

    @staticmethod
    def mark(path):
        try:
            return json.loads(os.getxattr(path, MARK, follow_symlinks=False))
        except (OSError, ValueError):
            return None

    def exists(self, dest):
        return os.path.lexists(dest)

    def describe(self, src, dest):
        mark = self.mark(dest) if os.path.isdir(dest) and not os.path.islink(dest) else None
        if not mark:
            return "other", False
        kind = mark.get("kind", "other")
        if kind == "snapshot" and not self.sealed(dest):
            kind = "unsealed"  # killed between rename and chattr +i: seal() finishes it
        return kind, mark.get("src") == src

    @staticmethod
    def sealed(path):
        """Whether the folder *path* carries the immutable attribute (set on it last)."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        except OSError:
            return False
        finally:
            os.close(fd)
        return bool(flags & FS_IMMUTABLE_FL)

    def seal(self, path):
        """Make every file and folder of the snapshot *path* immutable (again: idempotent)."""
        self._immutable(path, "+i")

    def _immutable(self, root, flag):
        """chattr *flag* on every file and folder of *root*; with +i the root comes last, so an
        immutable root (:meth:`sealed`) means a whole snapshot, even after a kill midway."""
        paths = []
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                full = os.path.join(directory, name)
                mode = os.lstat(full).st_mode
                if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                    paths.append(full)
        paths = paths + [root] if flag == "+i" else [root] + paths
        for start in range(0, len(paths), 500):
            if start:
                _lock.crash_point("reflink-sealing")
            _check(self.run, ["chattr", flag, "--", *paths[start:start + 500]], f"chattr {flag} in {root}")

    @staticmethod
    def check_dest(src, dest):
        """Refuse, before anything is made, a dest whose folder cannot share src's extents."""
        folder = existing_ancestor(os.path.dirname(dest))
        if os.stat(folder).st_dev != os.stat(src).st_dev or not can_reflink(folder):
            raise CowError(f"{os.path.dirname(dest)} cannot share extents with {src} (not the same "
                           f"reflink-capable file system): put dest next to src")

    def _copy(self, src, dest, kind):
        self.check_dest(src, dest)
        partial = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial")
        if os.path.lexists(partial):
            self.discard(partial)
        os.mkdir(partial, 0o700)
        try:
            _check(self.run, ["cp", "-a", "--reflink=always", "--", src + "/.", partial + "/"],
                   f"reflink copy of {src}")
            os.setxattr(partial, MARK, json.dumps({"src": src, "kind": kind}).encode())
            _lock.crash_point("reflink-copied")
            os.rename(partial, dest)  # an immutable folder cannot be renamed: chattr comes last
        except (CowError, OSError):
            self.discard(partial)
            raise
        _lock.crash_point("reflink-renamed")
        if kind == "snapshot":
            try:
                self._immutable(dest, "+i")
            except (CowError, OSError):
                self.discard(dest)
                raise

    def discard(self, path):
        self.run(["chattr", "-R", "-i", "--", path])  # symlinks make it complain: ignore rc
        shutil.rmtree(path)

    def snapshot(self, src, dest):
        self._copy(src, dest, "snapshot")

    def fork(self, src, dest):
        self._copy(src, dest, "fork")

    def remove(self, paths):
        for path in paths:
            if self.describe_kind(path) == "snapshot":
                self._immutable(path, "-i")
            shutil.rmtree(path)

    def describe_kind(self, path):
        mark = self.mark(path)
        return mark.get("kind") if mark else None

    def list_snapshots(self, snapshot_dir, parse):
        """``[(path, time)]`` of the snapshots in *snapshot_dir* whose names *parse*."""
        return _scan(snapshot_dir, parse, lambda path: self.describe_kind(path) == "snapshot")


class Zfs:
    """Snapshots are ``dataset@name``; forks are ``zfs clone`` of a snapshot (a new one of *src*
    unless *src* is a snapshot itself)."""

    name = "zfs"

    def __init__(self, run, zfs="zfs"):
        self.run = run
        self.zfs = zfs

    def _get(self, dataset, prop):
        rc, out, dummy = self.run([self.zfs, "get", "-H", "-p", "-o", "value", prop, dataset])
        return out.strip() if rc == 0 else None

    def exists(self, dest):
        return self.run([self.zfs, "list", "-H", "-o", "name", "-t", "all", dest])[0] == 0

    @staticmethod
    def check_dest(src, dest):
        """zfs itself refuses a clone into another pool, before making anything."""

    def check_source(self, src):
        if not self.exists(src):
            raise CowError(f"src {src} is not an existing ZFS dataset or snapshot (zfs list {src} fails)")

    def describe(self, src, dest):
        if "@" in dest:
            return "snapshot", dest.split("@", 1)[0] == src
        origin = self._get(dest, "origin")
        if not origin or origin == "-":
            return "other", False
        return "fork", origin == src or origin.split("@", 1)[0] == src

    def snapshot(self, src, dest):
        if not dest.startswith(src + "@"):
            raise CowError(f"a ZFS snapshot of {src} is named {src}@NAME, not {dest}")
        _check(self.run, [self.zfs, "snapshot", dest], f"snapshot of {src}")

    def fork(self, src, dest, origin=None):
        if "@" not in src:
            if origin is None:
                raise CowError("a fork of a ZFS dataset needs a snapshot to clone")
            self.snapshot(src, origin)
            src = origin
        _check(self.run, [self.zfs, "clone", src, dest], f"clone of {src}")

    def remove(self, paths):
        for path in paths:
            _check(self.run, [self.zfs, "destroy", path], f"destroying {path}")

    def list_snapshots(self, src, parse):
        out = _check(self.run, [self.zfs, "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", src],
                     f"listing snapshots of {src}")
        found = []
        for name in out.split():
            when = parse(name)
            if when is not None:
                found.append((name, when))
        return found


def detect(src, run, requested="auto"):
    """The backend for *src*: a ZFS dataset name (no leading /), a btrfs subvolume, or a folder
    on a reflink-capable file system."""
    if requested == "zfs" or (requested == "auto" and not src.startswith("/")):
        return Zfs(run)
    if requested == "btrfs":
        return Btrfs(run)
    if requested == "reflink":
        return Reflink(run)
    if not os.path.lexists(src):
        raise CowError(f"src {src} does not exist")
    if Btrfs.is_subvolume(src):
        return Btrfs(run)
    if os.path.isdir(src) and can_reflink(src):
        return Reflink(run)
    raise CowError(f"src {src} is on {fstype(src) or 'a file system'} and is neither a btrfs subvolume "
                   f"nor a folder on a reflink-capable file system: it has no copy-on-write, and this "
                   f"module does not silently make full copies. Use btrfs, ZFS, or xfs with reflink=1")


class Series:
    """The timestamped snapshots of one source: where they live, how they are named.

    *names* is the ``_retention`` module (passed in, so that this file imports nothing of the
    collection and runs the same inside a module and in the ``replica-snapshot`` command)."""

    def __init__(self, backend, src, names, snapshot_dir=None, name=None):
        self.backend = backend
        self.names = names
        if name is not None:
            names.check_base(name)
        if backend.name == "zfs":
            self.location = self.base = src.split("@", 1)[0]
        else:
            self.base = name or os.path.basename(src.rstrip("/"))
            self.location = snapshot_dir or os.path.join(os.path.dirname(src.rstrip("/")), ".snapshots")

    def parse(self, item):
        return self.names.parse_snapshot_name(self.base, item)

    def dest_for(self, now):
        """Where a snapshot taken at *now* goes."""
        if self.backend.name == "zfs":
            return f"{self.location}@{now.astimezone(self.names.UTC).strftime(self.names.STAMP)}"
        return os.path.join(self.location, self.names.snapshot_name(self.base, now))

    def listing(self):
        """``[(name or path, time)]``, oldest first."""
        return sorted(self.backend.list_snapshots(self.location, self.parse),
                      key=lambda item: (item[1], item[0]))

    @contextlib.contextmanager
    def lock(self, what, wait=_lock.WAIT):
        """Hold the series' lock while the block reads and changes it (a timer and a playbook must
        not prune the same snapshots at once): ``_lock.held`` keyed by the snapshots' location."""
        try:
            with _lock.held("cow", self.location, f"{what} {self.base}", wait=wait):
                yield
        except _lock.LockError as exc:
            raise CowError(str(exc)) from None

    def make_room(self, dest):
        """Make dest's folder, and discard what a killed run of this series left half-copied
        (``.NAME@STAMP.partial``: each run picks a new stamp, so no run would redo it). Called
        under the lock, so no other run of the series is copying."""
        if self.backend.name == "zfs":
            return
        folder = os.path.dirname(dest)
        if not os.path.isdir(folder):
            os.makedirs(folder, 0o755)
        if self.backend.name != "reflink":  # only reflink copies leave partials or unsealed snapshots
            return
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".partial") and self.parse(name[1:-len(".partial")]):
                self.backend.discard(entry.path)
            elif self.parse(name) and self.backend.describe_kind(entry.path) == "snapshot" \
                    and not self.backend.sealed(entry.path):
                self.backend.seal(entry.path)


def nested_subvolumes(root):
    """The btrfs subvolumes below *root* (not *root* itself), deepest first: they must be
    deleted before the subvolume that holds them (systemd makes some, e.g. /var/lib/machines)."""
    found = []
    for directory, dirs, dummy in os.walk(root):
        for name in dirs:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_ino == BTRFS_SUBVOLUME_INO:
                found.append(path)
    return sorted(found, key=lambda path: path.count("/"), reverse=True)


def fork_whole(backend, src, dest, partial, run, fill=None):
    """Fork *src* to *dest* made whole beside it: forked to *partial* (what a killed run left
    there is removed first), given its files by ``fill(partial)``, then renamed to *dest*. Killed
    at any point, *dest* either does not exist or is whole; a failure removes the partial."""
    remove_tree(partial, run)
    backend.fork(src, partial)
    try:
        if fill is not None:
            fill(partial)
        os.rename(partial, dest)
    except (CowError, OSError, ValueError):
        remove_tree(partial, run)
        raise


def remove_tree(path, run):
    """Remove *path*: a btrfs subvolume with the subvolumes nested in it (read-only ones too),
    a plain folder, or a file."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    if Btrfs.is_subvolume(path):
        doomed = nested_subvolumes(path) + [path]
        for sub in doomed:
            run(["btrfs", "property", "set", "-ts", sub, "ro", "false"])
        Btrfs(run).remove(doomed)
    else:
        shutil.rmtree(path)
