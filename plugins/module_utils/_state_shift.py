# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""State shift: which way a service's state moves between its directory and its CoW subvolume.

Pure functions only. The ``replica.cloud.state_shift`` module gathers the facts (does the
subvolume exist, is either side empty, does the directory show the subvolume) and acts on the
plan these functions return; unit tests check every combination.
"""

from __future__ import annotations

import os
import stat

#: File systems whose subvolumes can be snapshotted atomically while the service runs.
COW_FILESYSTEMS = ("btrfs",)

# plan() results
NOTHING = "nothing"        # already where it should be
MOVE_IN = "move-in"        # copy the directory into a new (or empty) subvolume, empty the directory
MOVE_OUT = "move-out"      # copy the subvolume back into the directory, delete the subvolume
REMOVE = "remove"          # delete an empty subvolume; the state is in the directory already
FINISH = "finish"          # a killed move-in's copy is whole (its mark says so): check it, empty the directory

#: extended attribute on a subvolume while the state is copied into it: {"from": PATH, "complete": bool}
MARK = "user.replica.state_shift"


class ShiftError(ValueError):
    """A situation the module refuses to act on; the message says what to fix."""


def plan(state, path, subvolume, *, subvolume_exists, subvolume_empty, path_empty, mounted, mark=None):
    """What to do for *state* (``present``: the state lives in *subvolume*, mounted over
    *path*; ``absent``: it lives in *path* again).

    ``mounted`` means *path* currently shows *subvolume* (a bind mount of it); *mark* is the
    subvolume's :data:`MARK` (a move-in of *path* was killed midway: its copy is ``complete`` or not)."""
    ours = bool(mark) and mark.get("from") == path
    if state == "present":
        if mounted:
            return NOTHING
        if ours:  # a move-in of this path was killed: finish it, or make its copy again
            return FINISH if mark.get("complete") else MOVE_IN
        if not subvolume_exists or subvolume_empty:
            return MOVE_IN
        if path_empty:
            return NOTHING  # moved already; the mount puts it back in place
        raise ShiftError(
            f"both {path} and {subvolume} hold data, so it is not clear which is the service's "
            f"state: keep the one you want and empty or delete the other, then run again")
    if state == "absent":
        if not subvolume_exists:
            return NOTHING
        if mounted:
            raise ShiftError(
                f"{path} still shows {subvolume} (a bind mount): stop the service and unmount it "
                f"first (the service_sandbox role does both)")
        if subvolume_empty:
            return REMOVE
        if not path_empty:
            raise ShiftError(
                f"both {path} and {subvolume} hold data, so it is not clear which is the service's "
                f"state: keep the one you want and empty or delete the other, then run again")
        return MOVE_OUT
    raise ShiftError(f"state must be present or absent, got {state!r}")


def nearest_existing(path, exists=os.path.lexists):
    """*path* or its closest ancestor that exists (where a new subvolume would be created)."""
    path = os.path.normpath(path)
    while not exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


def check_paths(path, subvolume):
    """Refuse a pair of paths that cannot work, before anything is looked at on disk."""
    for what, value in (("path", path), ("subvolume", subvolume)):
        if not os.path.isabs(value) or os.path.normpath(value) in ("/", ""):
            raise ShiftError(f"{what} must be an absolute path below /, got {value!r}")
    path, subvolume = os.path.normpath(path), os.path.normpath(subvolume)
    if path == subvolume or subvolume.startswith(path + "/") or path.startswith(subvolume + "/"):
        raise ShiftError(f"path {path} and subvolume {subvolume} must not contain each other")
    return path, subvolume


def refuse_filesystem(fstype, where, role_hint="service_sandbox_state_pool"):
    """The message for a subvolume location on a file system without atomic snapshots, or
    None when *fstype* is fine."""
    if fstype in COW_FILESYSTEMS:
        return None
    return (f"{where} is on {fstype or 'an unknown file system'}, which has no copy-on-write "
            f"subvolumes: a state shift needs btrfs, so that a snapshot taken while the service "
            f"runs is atomic. Put the subvolume ({role_hint}) on a btrfs file system. "
            f"Nothing was changed")


def entry(relative, st, link_target=None):
    """What must survive a copy of one file: type, permissions, owner, size, symlink target and,
    for regular files, the modification time."""
    mode = st.st_mode
    kind = stat.S_IFMT(mode)
    return (relative, kind, stat.S_IMODE(mode), st.st_uid, st.st_gid,
            st.st_size if stat.S_ISREG(mode) else 0,
            st.st_mtime_ns if stat.S_ISREG(mode) else 0,
            link_target)


def tree_differences(before, after, limit=5):
    """The first *limit* relative paths whose entries differ between two listings made of
    :func:`entry` tuples; the copy is good when this is empty."""
    left = {item[0]: item for item in before}
    right = {item[0]: item for item in after}
    differing = sorted(name for name in set(left) | set(right) if left.get(name) != right.get(name))
    return differing[:limit]
