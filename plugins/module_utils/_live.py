# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge means live: is what runs what is declared?

Handlers and ``when: x is changed`` apply a configuration only in the run that wrote it; a run
that fails (or is killed) between the write and the apply leaves the old configuration live, and
the next run, seeing the file unchanged, never applies it. These pure functions compare what is
live with what is declared instead, for the ``nft_table`` and ``service_config`` modules:

* an nftables table: the live table's JSON listing against the declared file's, loaded in a
  scratch network namespace (so nft itself normalises it), both with handles dropped and set
  elements sorted;
* a running unit: whether it was (re)started after its files last changed, or was applied by
  ``service_config`` with their current content (a stamp keyed by the unit's invocation ID, so a
  reload, which keeps the invocation, counts too)."""

from __future__ import annotations

import hashlib
import json
import os

#: where service_config records which content each unit's invocation has applied
STAMP_DIR = "/run/replica/live"


def nft_normalize(listing):
    """The comparable form of ``nft -j list table`` output (text or parsed): the objects in
    order, without handles and metainfo, each set's elements sorted."""
    data = json.loads(listing) if isinstance(listing, str) else listing
    objects = []
    for item in data.get("nftables", []):
        if "metainfo" in item:
            continue
        objects.append(_strip(item))
    return objects


def _strip(value):
    if isinstance(value, dict):
        out = {key: _strip(item) for key, item in value.items() if key != "handle"}
        for kind in ("set", "map"):
            body = out.get(kind)
            if isinstance(body, dict) and isinstance(body.get("elem"), list):
                body["elem"] = sorted(body["elem"], key=lambda elem: json.dumps(elem, sort_keys=True))
        return out
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def files_of(paths):
    """``[(path, kind)]`` of *paths*: each file, each file below a folder (sorted), or a path that
    does not exist (kind ``absent``): what a unit's configuration is made of."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                found.extend((os.path.join(folder, name), "file") for name in sorted(files))
        elif os.path.lexists(path):
            found.append((path, "file"))
        else:
            found.append((path, "absent"))
    return found


def digest(paths):
    """``(sha256, newest mtime)`` of the content of *paths* (see :func:`files_of`)."""
    hasher = hashlib.sha256()
    newest = 0.0
    for path, kind in files_of(paths):
        hasher.update(f"{path}\0{kind}\0".encode("utf-8", "surrogateescape"))
        if kind == "file":
            info = os.stat(path)
            newest = max(newest, info.st_mtime)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
            hasher.update(b"\0")
    return hasher.hexdigest(), newest


def started_at(active_enter_monotonic_usec, now_monotonic, now_realtime):
    """The wall-clock time of a unit's ``ActiveEnterTimestampMonotonic`` (µs), or None when it never entered."""
    if not active_enter_monotonic_usec:
        return None
    return now_realtime - (now_monotonic - active_enter_monotonic_usec / 1e6)


def stale(props, content_digest, newest_mtime, stamp, started):
    """Why the unit does not run its current configuration, or None when it does.

    *props*: ``systemctl show`` properties (ActiveState, InvocationID, NeedDaemonReload);
    *stamp*: what service_config recorded (``{"invocation", "digest"}``) or None; *started*: the
    wall-clock time of :func:`started_at`."""
    if props.get("ActiveState") not in ("active", "reloading"):
        return f"it is {props.get('ActiveState') or 'unknown'}"
    if props.get("NeedDaemonReload") == "yes":
        return "its unit file changed since systemd read it"
    if stamp and stamp.get("invocation") == props.get("InvocationID"):
        return None if stamp.get("digest") == content_digest else "its files changed since it applied them"
    if started is None or started < newest_mtime:
        return "its files changed after it started"
    return None


def stamp_path(unit, folder=STAMP_DIR):
    return os.path.join(folder, hashlib.sha256(unit.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json")
