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


#: the unit types whose files systemd reads (a file of one of these names, or ``*.conf`` in a ``NAME.d`` folder)
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".automount", ".swap", ".target",
                 ".slice", ".scope", ".device")


def template_pattern(unit):
    """For a template unit (``a@.service``) the pattern of its instances (``a@*.service``), else
    None. systemd loads no template on its own: what it has read of one is what its loaded
    instances have read (an instance loaded later reads the template and its drop-ins from disk)."""
    stem, dot, suffix = unit.rpartition(".")
    if dot and stem.endswith("@") and len(stem) > 1:
        return f"{stem}*.{suffix}"
    return None


def loaded_units(listing):
    """The unit names of ``systemctl list-units --all --plain --no-legend --full`` output."""
    rows = (line.replace("\u25cf", " ").split() for line in listing.splitlines())
    return [row[0] for row in rows if row]


def _names_of(unit):
    """The names whose files and drop-in folders systemd reads for *unit*: itself, its template
    (``a@.service`` for ``a@b.service``), the dash prefixes (``a-.service`` for ``a-b.service``)
    and its type (``service``)."""
    stem, dot, suffix = unit.rpartition(".")
    names = {unit}
    if "@" in stem:
        names.add(stem.split("@", 1)[0] + "@." + suffix)
    parts = stem.split("@", 1)[0].split("-")
    names.update("-".join(parts[:count]) + "-." + suffix for count in range(1, len(parts)))
    return names, suffix if dot else ""


def unread(props, unit, present):
    """The unit files and drop-ins of *unit* among *present* (files that exist) that systemd has
    not read: neither its ``FragmentPath`` nor among its ``DropInPaths``.

    ``NeedDaemonReload`` misses a drop-in in a folder that did not exist when systemd last read its
    units (systemd only looks in the folders it found then): an ``apt-daily.timer.d`` made by the
    first run of a role. Files of other units, and configuration files, are not asked about."""
    names, suffix = _names_of(unit)
    read = {props.get("FragmentPath") or ""} | set((props.get("DropInPaths") or "").split())
    found = []
    for path in present:
        folder, base = os.path.split(path)
        parent = os.path.basename(folder)
        if parent.endswith(".d"):
            ours = base.endswith(".conf") and (parent[:-2] in names or parent[:-2] == suffix)
        else:
            ours = base in names and base.endswith(UNIT_SUFFIXES)
        if ours and path not in read:
            found.append(path)
    return found


def decide(props, state, inactive, content_digest, newest_mtime, stamp, started, unread_files=()):
    """``(reason, steps)`` for service_config: why the unit does not run (or systemd has not read)
    its current files, and the ``systemctl`` verbs that make it so (``daemon-reload``,
    ``restart``, ``reload-or-restart``); ``(None, [])`` when nothing is to do.

    *state* ``loaded`` asks only that systemd has read the unit's files (a timer's new schedule, a
    unit that starts later); *inactive* ``leave`` leaves a unit that is not running as it is (a
    socket-activated service starts with its current files on the next connection); *unread_files*
    (:func:`unread`) need a daemon-reload too."""
    unread_reason = f"systemd has not read {', '.join(unread_files)}" if unread_files else None
    reload = props.get("NeedDaemonReload") == "yes" or bool(unread_files)
    idle = props.get("ActiveState") not in ("active", "reloading")
    if state == "loaded" or (inactive == "leave" and idle):
        if not reload:
            return None, []
        return unread_reason or "its unit file changed since systemd read it", ["daemon-reload"]
    reason = stale(props, content_digest, newest_mtime, stamp, started)
    if unread_files and props.get("ActiveState") in ("active", "reloading"):
        reason = reason or unread_reason
    if not reason:
        return None, []
    return reason, (["daemon-reload"] if reload else []) + ["restart" if state == "restarted" else "reload-or-restart"]


def stamp_path(unit, folder=STAMP_DIR):
    return os.path.join(folder, hashlib.sha256(unit.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json")
