#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: state_shift
short_description: Move a service's state directory onto a btrfs subvolume of its own, and back
version_added: 0.1.0
description:
  - Moves the contents of a service's state directory (for example C(/var/lib/postgresql)) into
    a btrfs subvolume dedicated to that service, so that snapshot policies cover it and a
    snapshot taken while the service runs is atomic (crash consistent). The directory is left
    empty, with its owner and mode, as the mount point; the subvolume's root gets the same owner
    and mode. Mounting the subvolume over the directory is the caller's job (the
    M(replica.cloud.service_sandbox) role writes a systemd mount unit).
  - The copy keeps owners, modes, ACLs, extended attributes, hard links and times
    (C(cp -a --reflink=auto)) and is compared file by file with the original before the original
    is removed; a failed or interrupted move leaves the state where it was.
  - With O(state=absent) the state is moved back into the directory and the subvolume is deleted.
  - The service must be stopped and the directory unmounted; the module refuses to move a
    directory that a running process uses.
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: btrfs-progs and a btrfs (or reflink) file system for the state; systemd to stop and start the service."
options:
  path:
    description: The service's state directory. It must exist.
    type: path
    required: true
  subvolume:
    description:
      - The btrfs subvolume that holds the state. Created on the first move, with any missing
        parent folders; it may also exist already, empty. Its location must be on btrfs.
    type: path
    required: true
  state:
    description:
      - V(present) - the state lives in O(subvolume); the directory is empty (or shows the
        subvolume through a mount).
      - V(absent) - the state lives in O(path) again; the subvolume is deleted.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Only btrfs is supported as the subvolume's file system; anything else fails with a message
    and changes nothing. Snapshots of the subvolume are not touched by O(state=absent).
  - Needs C(btrfs) (btrfs-progs) and GNU C(cp) on the target.
  - "Crash consistency of a move in: killed at any point (C(kill -9)), a re-run converges and nothing
    is lost. The subvolume carries the mark C(user.replica.state_shift) ({from, complete}) while the
    state is copied into it: an incomplete copy is made again; a complete one is compared with the
    directory again and the move finished (action V(finish)). The directory is emptied by swapping
    it with an empty one in one step (C(renameat2(RENAME_EXCHANGE))), so it is never missing."
attributes:
  check_mode:
    description: Reports the move it would make, and the processes that still use the state.
    support: full
  diff_mode:
    description: Shows where the state lives before and after.
    support: full
"""

EXAMPLES = r"""
- name: Move PostgreSQL's state onto its own subvolume (the service is stopped)
  replica.cloud.state_shift:
    path: /var/lib/postgresql
    subvolume: /srv/cow/state/postgresql

- name: Move it back into /var/lib/postgresql (unmounted first)
  replica.cloud.state_shift:
    path: /var/lib/postgresql
    subvolume: /srv/cow/state/postgresql
    state: absent
"""

RETURN = r"""
path:
  description: The state directory.
  returned: always
  type: str
  sample: /var/lib/postgresql
subvolume:
  description: The subvolume.
  returned: always
  type: str
  sample: /srv/cow/state/postgresql
action:
  description: What was done (or would be in check mode)
  returned: always
  type: str
  choices: [nothing, move-in, move-out, remove, finish]
location:
  description: Where the state lives after the run, V(subvolume) or V(path).
  returned: always
  type: str
mounted:
  description: Whether O(path) shows the subvolume through a mount now.
  returned: always
  type: bool
users:
  description:
    - PIDs of processes that use the state; a move refuses to start while there are any. In
      check mode they are only reported, so that a play can check before it stops the service.
  returned: when a move is planned
  type: list
  elements: int
files:
  description: Number of files, folders and links moved.
  returned: always
  type: int
  sample: 1042
"""

import ctypes
import json
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils import _runner
from ansible_collections.replica.cloud.plugins.module_utils import _state_shift as shift

AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(first, second):
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``, glibc 2.28+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"exchanging {first} and {second}: {os.strerror(err)}")


class Mover:
    """The side effects; every step either completes or is undone before failing."""

    def __init__(self, module):
        self.module = module
        self.runner = _runner.Runner(module)
        self.btrfs = None

    def run(self, argv, what):
        """stdout of *argv*; a failure is a ShiftError, which the steps undo themselves on."""
        try:
            return self.runner.run(argv, what)[1]
        except _runner.CommandError as exc:
            raise shift.ShiftError(str(exc)) from exc

    def btrfs_bin(self):
        if self.btrfs is None:
            try:
                self.btrfs = self.runner.bin("btrfs")
            except _runner.ToolMissing as exc:
                raise shift.ShiftError(str(exc)) from exc
        return self.btrfs

    def fstype(self, path):
        return self.run(["stat", "-f", "-c", "%T", path], f"reading the file system of {path}").strip()

    def is_subvolume(self, path):
        return os.path.isdir(path) and not os.path.islink(path) \
            and os.lstat(path).st_ino == 256 and self.fstype(path) == "btrfs"

    def users(self, path):
        """PIDs whose working directory, root or an open file is at or below *path*."""
        found = set()
        prefix = path.rstrip("/") + "/"
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            links = [f"/proc/{pid}/cwd"]
            try:
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                pass
            for link in links:
                try:
                    target = os.readlink(link)
                except OSError:
                    continue
                if target == path or target.startswith(prefix):
                    found.add(int(pid))
                    break
        return sorted(found)

    @staticmethod
    def listing(root):
        items = []
        for directory, dirs, files in os.walk(root):
            for name in [None] + dirs + files:
                full = directory if name is None else os.path.join(directory, name)
                if name is None and directory != root:
                    continue  # listed by its parent
                st = os.lstat(full)
                relative = os.path.relpath(full, root)
                target = os.readlink(full) if os.path.islink(full) else None
                item = shift.entry(relative, st, target)
                if relative == ".":
                    item = item[:5] + (0, 0, None)  # the root's own size and times do not matter
                items.append(item)
        return items

    def copy(self, src, dest):
        """Copy the contents and the root's owner and mode of *src* into the existing *dest*,
        and check the copy."""
        self.run(["cp", "-a", "--reflink=auto", "--", src + "/.", dest + "/"], f"copying {src}")
        st = os.lstat(src)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, st.st_mode & 0o7777)
        before, after = self.listing(src), self.listing(dest)
        differing = shift.tree_differences(before, after)
        if differing:
            raise shift.ShiftError(f"the copy of {src} in {dest} differs from the original at "
                                   f"{', '.join(differing)}; nothing was moved")
        return len(before) - 1

    def delete_subvolume(self, path):
        self.run([self.btrfs_bin(), "subvolume", "delete", path], f"deleting subvolume {path}")

    @staticmethod
    def read_mark(path):
        try:
            return json.loads(os.getxattr(path, shift.MARK))
        except (OSError, ValueError):
            return None

    @staticmethod
    def write_mark(target, path, complete):
        os.setxattr(target, shift.MARK, json.dumps({"from": path, "complete": complete}).encode())

    @staticmethod
    def clear_mark(target):
        try:
            os.removexattr(target, shift.MARK)
        except OSError:
            pass

    def empty(self, path):
        """Leave *path* an empty directory with its owner and mode, in one step: an empty sibling
        is swapped with it (``renameat2(RENAME_EXCHANGE)``), so *path* is never missing, then the
        old contents, now in the sibling, are removed."""
        st = os.lstat(path)
        aside = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replica-moved")
        if os.path.lexists(aside):
            shutil.rmtree(aside)
        os.mkdir(aside, 0o700)
        os.chown(aside, st.st_uid, st.st_gid)
        os.chmod(aside, st.st_mode & 0o7777)
        exchange(aside, path)
        _lock.crash_point("state-emptied")
        try:
            shutil.rmtree(aside)
        except OSError as exc:
            self.module.warn(f"the old copy of the state, {aside}, could not be removed: {exc}")

    def finish(self, path, subvolume):
        """A killed move-in left a whole copy (marked complete): check it again, then empty *path*
        (or, where it was emptied already, remove what the kill left aside)."""
        if os.listdir(path):
            differing = shift.tree_differences(self.listing(path), self.listing(subvolume))
            if differing:
                raise shift.ShiftError(f"{subvolume} holds a copy of {path} from an interrupted run, but they differ "
                                       f"at {', '.join(differing)} (written since?): keep the one you want and empty "
                                       f"or delete the other, then run again")
            self.empty(path)
        aside = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replica-moved")
        if os.path.lexists(aside):
            shutil.rmtree(aside)
        self.clear_mark(subvolume)
        return len(self.listing(subvolume)) - 1

    def move_in(self, path, subvolume, subvolume_exists):
        created_parents = []
        parent = os.path.dirname(subvolume)
        missing = parent
        while not os.path.lexists(missing):
            created_parents.append(missing)
            missing = os.path.dirname(missing)
        target = subvolume if subvolume_exists else os.path.join(
            parent, f".{os.path.basename(subvolume)}.partial")
        made_target = False
        try:
            for folder in reversed(created_parents):
                os.mkdir(folder, 0o755)
            if not subvolume_exists:
                if os.path.lexists(target):  # left by an interrupted run: ours by its name
                    self.delete_subvolume(target)
                self.run([self.btrfs_bin(), "subvolume", "create", target], f"creating {target}")
                made_target = True
            else:
                self.clear_out(target)  # empty, or an unfinished copy of ours (plan() checked)
            self.write_mark(target, path, complete=False)
            _lock.crash_point("state-copying")
            files = self.copy(path, target)
            self.write_mark(target, path, complete=True)
            if not subvolume_exists:
                os.rename(target, subvolume)
                target = subvolume
            _lock.crash_point("state-copied")
        except (shift.ShiftError, OSError):
            if made_target:
                self.delete_subvolume(target)
            elif subvolume_exists:
                self.clear_out(subvolume)
                self.clear_mark(subvolume)
            for folder in created_parents:
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
            raise
        self.empty(path)
        self.clear_mark(subvolume)
        return files

    @staticmethod
    def clear_out(folder):
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)

    def move_out(self, path, subvolume):
        incoming = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replica-restore")
        if os.path.lexists(incoming):
            shutil.rmtree(incoming)
        os.mkdir(incoming, 0o700)
        try:
            files = self.copy(subvolume, incoming)
            os.rmdir(path)  # empty: plan() checked
            os.rename(incoming, path)
        except (shift.ShiftError, OSError):
            if os.path.isdir(incoming):
                shutil.rmtree(incoming)
            if not os.path.exists(path):
                os.mkdir(path, 0o700)
            raise
        self.delete_subvolume(subvolume)
        return files


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "subvolume": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    state = module.params["state"]
    mover = Mover(module)
    result = {"changed": False, "files": 0}
    try:
        path, subvolume = shift.check_paths(module.params["path"], module.params["subvolume"])
        result.update(path=path, subvolume=subvolume)
        if not os.path.isdir(path) or os.path.islink(path):
            raise shift.ShiftError(
                f"the state directory {path} does not exist (or is not a directory): install the "
                f"package that creates it, or fix the path")
        subvolume_exists = os.path.lexists(subvolume)
        if subvolume_exists and not mover.is_subvolume(subvolume):
            raise shift.ShiftError(f"{subvolume} exists and is not a btrfs subvolume: remove it or "
                                   f"choose another subvolume path")
        where = subvolume if subvolume_exists else shift.nearest_existing(os.path.dirname(subvolume))
        if state == "present":
            refusal = shift.refuse_filesystem(mover.fstype(where), where)
            if refusal:
                raise shift.ShiftError(refusal)
        path_st = os.stat(path)
        mounted = subvolume_exists and os.path.ismount(path) and path_st.st_ino == 256 \
            and path_st.st_dev == os.stat(subvolume).st_dev
        if state == "present" and not mounted and os.path.ismount(path):
            raise shift.ShiftError(f"{path} is a mount point of another file system: the state "
                                   f"shift moves a plain directory; unmount it first")
        action = shift.plan(
            state, path, subvolume, subvolume_exists=subvolume_exists,
            subvolume_empty=subvolume_exists and not os.listdir(subvolume),
            path_empty=not os.listdir(path), mounted=mounted,
            mark=mover.read_mark(subvolume) if subvolume_exists else None)
        users = []
        if action in (shift.MOVE_IN, shift.MOVE_OUT, shift.FINISH):
            users = mover.users(subvolume if action == shift.MOVE_OUT else path)
            result["users"] = users
            # in check mode a running service is expected (the role stops it before the move)
            if users and not module.check_mode:
                raise shift.ShiftError(
                    f"processes {', '.join(map(str, users))} use {path}: stop the service before "
                    f"its state is moved. Nothing was changed")
    except shift.ShiftError as exc:
        module.fail_json(msg=str(exc), **result)

    holds_data = subvolume_exists and bool(os.listdir(subvolume))
    before = "subvolume" if holds_data else "path"
    after = "subvolume" if state == "present" else "path"
    result.update(action=action, location=after, mounted=mounted,
                  changed=action != shift.NOTHING)
    if module._diff:
        result["diff"] = {"before": {"path": path, "state_in": before},
                          "after": {"path": path, "state_in": after}}
    if action == shift.NOTHING or module.check_mode:
        module.exit_json(**result)
    try:
        if action == shift.MOVE_IN:
            result["files"] = mover.move_in(path, subvolume, subvolume_exists)
        elif action == shift.FINISH:
            result["files"] = mover.finish(path, subvolume)
        elif action == shift.MOVE_OUT:
            result["files"] = mover.move_out(path, subvolume)
        else:
            mover.delete_subvolume(subvolume)
    except (shift.ShiftError, OSError) as exc:
        module.fail_json(msg=f"{exc}; the state was left in place", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
