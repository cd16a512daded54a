#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cow_snapshot
short_description: Snapshots, forks and retention over btrfs subvolumes, ZFS datasets and reflink folders
version_added: 0.1.0
description:
  - One interface over the three copy-on-write sources the design names. O(state=snapshot) takes a
    read-only, point-in-time snapshot; O(state=fork) makes a writable clone; O(state=absent) removes
    a snapshot or fork; O(state=pruned) applies a O(retention) policy to the existing snapshots of
    O(src).
  - "btrfs: a snapshot is C(btrfs subvolume snapshot -r), a fork a writable snapshot (atomic)."
  - "ZFS: a snapshot is C(zfs snapshot DATASET@NAME), a fork C(zfs clone) of a new snapshot of
    O(src) (or of O(src) itself when it is a snapshot)."
  - "reflink: a fork is C(cp -a --reflink=always) of a folder on xfs (made with C(reflink=1)) or
    btrfs, which shares all data and takes no space until written; a snapshot is the same copy made
    immutable (C(chattr +i) on every file and folder). Such copies are B(not atomic): stop or quiesce
    the writer first. Both carry the extended attribute C(user.replica.cow) naming their source."
  - A source without copy-on-write (ext4, tmpfs, ...) is refused; the module never silently
    falls back to a full copy.
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: btrfs-progs for btrfs subvolumes, zfsutils-linux for ZFS datasets; reflink folders need only a file system with reflinks (xfs, btrfs)."
options:
  src:
    description:
      - The copy-on-write source. A path for btrfs (a subvolume) and reflink (a folder); a dataset
        name (no leading C(/)) for ZFS, or a ZFS snapshot to fork from.
    type: str
    required: true
  dest:
    description:
      - The snapshot or fork to create (or remove with O(state=absent)). For btrfs and reflink a
        path next to O(src) on the same file system; for ZFS C(SRC@NAME) for a snapshot and a
        dataset name for a fork.
      - When omitted with O(state=snapshot), the snapshot is named after the UTC time it is taken,
        C(<snapshot_dir>/<name>@YYYYMMDDTHHMMSSZ) (btrfs, reflink) or C(<src>@YYYYMMDDTHHMMSSZ)
        (ZFS). Such a run takes a new snapshot every time (it always reports a change); these are
        the snapshots O(state=pruned) manages.
    type: str
  state:
    description:
      - V(snapshot) - a read-only point-in-time copy of O(src) exists at O(dest).
      - V(fork) - a writable clone of O(src) exists at O(dest).
      - V(absent) - O(dest), a snapshot or fork of O(src), is removed.
      - V(pruned) - of the timestamped snapshots of O(src), those O(retention) does not keep are deleted.
    type: str
    choices: [snapshot, fork, absent, pruned]
    default: snapshot
  retention:
    description:
      - The policy for O(state=pruned). Keys V(hourly), V(daily), V(weekly), V(monthly), V(yearly)
        (counts, or V(all)), V(latest) (default 1), V(min_age) (seconds, or C(90m), C(36h), C(7d),
        C(2w)), V(timezone) (IANA name, default V(UTC)).
      - "Semantics, as btrbk and sanoid: time is cut into calendar hours, days, ISO weeks (Monday
        first), months and years in the time zone; the first (oldest) snapshot of a period
        represents it; V(daily: 7) keeps the representatives of the 7 most recent days that have a
        snapshot (periods without one do not count; the running period counts); V(latest: N) keeps
        the N newest; V(min_age) keeps everything younger; a snapshot dated in the future is kept.
        Every snapshot no rule keeps is deleted. Names that are not C(<name>@YYYYMMDDTHHMMSSZ)
        are never touched."
    type: dict
    suboptions:
      hourly:
        description: Calendar hours to keep a snapshot of (a count, or V(all)).
        type: raw
      daily:
        description: Days to keep a snapshot of (a count, or V(all)).
        type: raw
      weekly:
        description: ISO weeks to keep a snapshot of (a count, or V(all)).
        type: raw
      monthly:
        description: Months to keep a snapshot of (a count, or V(all)).
        type: raw
      yearly:
        description: Years to keep a snapshot of (a count, or V(all)).
        type: raw
      latest:
        description: The newest snapshots kept whatever their age (default 1).
        type: raw
      min_age:
        description: Snapshots younger than this are kept (seconds, or C(90m), C(36h), C(7d), C(2w)).
        type: raw
      timezone:
        description: The IANA time zone the periods are cut in (default V(UTC)).
        type: str
  backend:
    description: V(auto) detects it from O(src).
    type: str
    choices: [auto, btrfs, zfs, reflink]
    default: auto
  snapshot_dir:
    description:
      - Folder of the timestamped snapshots (btrfs, reflink); created if missing. Defaults to
        C(.snapshots) next to O(src). Ignored for ZFS.
    type: path
  name:
    description:
      - Base of the timestamped snapshot names (btrfs, reflink). Defaults to the last part of O(src).
      - "1 to 100 of C(A-Z a-z 0-9 . _ + -), not starting with a dot (the one rule,
        C(_retention.check_base)): anything else is refused before anything is made."
    type: str
  lock_wait:
    description: Seconds to wait for another run holding the series' lock before failing.
    type: int
    default: 600
notes:
  - "Crash consistency: killed at any point (C(kill -9) included), a re-run converges and nothing is
    lost. btrfs and ZFS snapshots are atomic. A reflink copy is made in C(.NAME.partial) and renamed
    into place; a leftover partial is discarded by the next run of the series, and a snapshot killed
    before it was made immutable is finished (its folder is made immutable last, so an immutable
    folder means a whole snapshot)."
  - "Concurrency: each series (its snapshot folder, or its ZFS dataset) has a lock in
    C(/run/replica/locks), root's alone; the listing, the plan and the change happen under it, so a
    timer and a playbook pruning at once each see the other's result. A run waits up to 600 s, then
    fails naming the holder (pid, what, since when)."
  - O(dest) and O(snapshot_dir) reached through a symlink are refused (a fork would land in whatever
    the link points to).
  - Needs C(btrfs) (btrfs-progs), C(zfs) (zfsutils-linux) or C(cp) and C(chattr) (coreutils,
    e2fsprogs) on the target, depending on the backend.
  - A btrfs snapshot does not descend into nested subvolumes.
attributes:
  check_mode:
    description: Reports what would be created or deleted.
    support: full
  diff_mode:
    description: Shows the list of snapshots, and O(dest), before and after.
    support: full
"""

EXAMPLES = r"""
- name: Snapshot PostgreSQL's state now (named after the time)
  replica.cloud.cow_snapshot:
    src: /srv/cow/state/postgresql
    state: snapshot

- name: Keep 24 hourly, 7 daily, 4 weekly and 12 monthly snapshots
  replica.cloud.cow_snapshot:
    src: /srv/cow/state/postgresql
    state: pruned
    retention: {hourly: 24, daily: 7, weekly: 4, monthly: 12, min_age: 1h, timezone: Europe/Berlin}

- name: A writable copy for a test instance
  replica.cloud.cow_snapshot:
    src: /srv/cow/state/postgresql
    dest: /srv/cow/state/postgresql-test
    state: fork

- name: Fork a ZFS dataset
  replica.cloud.cow_snapshot:
    src: tank/images/debian-12
    dest: tank/machines/web1
    state: fork

- name: Remove the copy again
  replica.cloud.cow_snapshot:
    src: /srv/cow/state/postgresql
    dest: /srv/cow/state/postgresql-test
    state: absent
"""

RETURN = r"""
backend:
  description: The backend used.
  returned: always
  type: str
  sample: btrfs
dest:
  description: The snapshot or fork created, found or removed.
  returned: when O(state) is not V(pruned)
  type: str
  sample: /srv/cow/state/.snapshots/postgresql@20261125T101500Z
snapshots:
  description: The timestamped snapshots of O(src) after the operation, oldest first.
  returned: always
  type: list
  elements: str
deleted:
  description: Snapshots deleted (or that would be, in check mode).
  returned: always
  type: list
  elements: str
kept:
  description: For O(state=pruned), each kept snapshot and the rules that keep it.
  returned: when O(state=pruned)
  type: dict
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow
from ansible_collections.replica.cloud.plugins.module_utils import _retention as retention
from ansible_collections.replica.cloud.plugins.module_utils import _runner

RETENTION_OPTIONS = dict({key: {"type": "raw"} for key in retention.PERIODS + ("latest", "min_age")},
                         timezone={"type": "str"})


def plan(backend, state, src, dest):
    """What to do for *state* (snapshot, fork, absent; pruned is planned by the caller), from
    what *dest* is now: the action, or None when it is already so."""
    if state in ("snapshot", "fork"):
        if not backend.exists(dest):
            return state
        kind, from_src = backend.describe(src, dest)
        if kind == "unsealed" and state == "snapshot" and from_src:
            return "seal"  # a run killed before its snapshot was made read-only: finish it
        if kind != state or not from_src:
            raise cow.CowError(
                f"dest {dest} exists and is not a {state} of {src} (it is {kind}"
                f"{'' if from_src else ', not made from src'}): remove it or choose another dest")
    elif state == "absent" and backend.exists(dest):
        kind, from_src = backend.describe(src, dest)
        if kind not in ("snapshot", "fork", "unsealed") or not from_src:
            raise cow.CowError(f"dest {dest} is not a snapshot or fork of {src}: not removed")
        return "absent"
    return None


def act(action, backend, series, src, dest, doomed, now):
    """Carry out the planned *action*."""
    if action in ("snapshot", "fork"):
        series.make_room(dest)
    if action == "seal":
        backend.seal(dest)
    elif action == "snapshot":
        backend.snapshot(src, dest)
    elif action == "fork":
        if backend.name == "zfs":
            backend.fork(src, dest, origin=series.dest_for(now))
        else:
            backend.fork(src, dest)
    elif action == "absent":
        backend.remove([dest])
    elif doomed:
        backend.remove(doomed)


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "str", "required": True},
            "dest": {"type": "str"},
            "state": {"type": "str", "choices": ["snapshot", "fork", "absent", "pruned"], "default": "snapshot"},
            "retention": {"type": "dict", "options": RETENTION_OPTIONS},
            "backend": {"type": "str", "choices": ["auto", "btrfs", "zfs", "reflink"], "default": "auto"},
            "snapshot_dir": {"type": "path"},
            "name": {"type": "str"},
            "lock_wait": {"type": "int", "default": 600},
        },
        required_if=[("state", "fork", ["dest"]), ("state", "absent", ["dest"]),
                     ("state", "pruned", ["retention"])],
        supports_check_mode=True,
    )
    params = module.params
    state = params["state"]

    run = _runner.Runner(module)
    if params["retention"] is not None:  # the keys given (suboptions fill the others with None)
        params["retention"] = {key: value for key, value in params["retention"].items() if value is not None}
    result = {"changed": False, "deleted": [], "snapshots": []}
    try:
        src = cow.check_path("src", params["src"].rstrip("/") or "/")
        for what in ("dest", "snapshot_dir"):
            if params[what]:
                cow.check_path(what, params[what])
        backend = cow.detect(src, run, params["backend"])
        result["backend"] = backend.name
        if backend.name in ("btrfs", "zfs"):
            tool = run.bin(backend.name)
            if backend.name == "btrfs":
                backend.btrfs = tool
            else:
                backend.zfs = tool
        if backend.name != "zfs" and not src.startswith("/"):
            raise cow.CowError(f"src {src} must be an absolute path for backend {backend.name}")
        backend.check_source(src)
        series = cow.Series(backend, src, retention, params["snapshot_dir"], params["name"])
        if state == "pruned":
            retention.normalize(params["retention"])  # bad policy: fail before anything
        now = datetime.datetime.now(datetime.timezone.utc)
        dest = params["dest"]
        if state == "snapshot" and not dest:
            dest = series.dest_for(now)
        if dest and backend.name != "zfs":
            dest = os.path.normpath(dest)
            if not dest.startswith("/"):
                raise cow.CowError(f"dest {dest} must be an absolute path for backend {backend.name}")
            cow.check_dest_path(dest)
        if dest:
            result["dest"] = dest
        # read, decide and act under the series' lock: a timer and a playbook pruning the same
        # snapshots see each other's result, never a half-deleted listing
        with series.lock(state, wait=params["lock_wait"]):
            before = series.listing()
            result["snapshots"] = [item[0] for item in before]
            action = plan(backend, state, src, dest)
            if state == "pruned":
                dummy, doomed, reasons = retention.select(before, params["retention"], now)
                result["deleted"] = list(doomed)
                result["kept"] = dict(reasons)
                action = "pruned" if doomed else None
            result["changed"] = action is not None
            if action and not module.check_mode:
                if action in ("snapshot", "fork"):
                    backend.check_dest(src, dest)  # before make_room: a refused run makes no folder
                try:
                    act(action, backend, series, src, dest, result["deleted"], now)
                finally:
                    after = series.listing()
                    if action == "pruned":  # say what is really gone
                        left = {item[0] for item in after}
                        result["deleted"] = [name for name in result["deleted"] if name not in left]
                    result["snapshots"] = [item[0] for item in after]
            elif action:
                names = [item[0] for item in before]
                if action == "pruned":
                    names = [n for n in names if n not in result["deleted"]]
                elif action == "snapshot" and series.parse(os.path.basename(dest) if backend.name != "zfs" else dest):
                    names.append(dest)
                elif action == "absent" and dest in names:
                    names.remove(dest)
                result["snapshots"] = names
    except (cow.CowError, retention.RetentionError, _runner.CommandError, OSError) as exc:
        _runner.fail(module, exc, **result)

    if module._diff:
        existed = dest if dest and ((action is None) != (state == "absent")) else None
        result["diff"] = {
            "before": {"dest": existed, "snapshots": [item[0] for item in before]},
            "after": {"dest": dest if state in ("snapshot", "fork") else None, "snapshots": result["snapshots"]},
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
