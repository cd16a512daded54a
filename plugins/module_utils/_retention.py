# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshot names and the retention policy: which snapshots to keep, which to delete.

Pure functions, standard library only: the ``replica.cloud.cow_snapshot`` module and the
``replica-snapshot`` command the storage role installs for its timers both use this file, so
there is one implementation of the policy.

Semantics (the same idea as btrbk's ``preserve`` and sanoid's counts):

* A snapshot of ``NAME`` is called ``NAME@YYYYMMDDTHHMMSSZ``, the UTC time it was taken. Names
  that do not parse this way are not snapshots of ``NAME``: the policy never touches them.
* Time is bucketed into calendar periods in ``timezone`` (an IANA name, default ``UTC``):
  hours, days, ISO weeks (Monday to Sunday), months, years. The period that is still running
  counts like any other. When clocks go back, the repeated wall-clock hour is two hours.
* A period is represented by its **first** (oldest) snapshot: that is the one kept.
* ``hourly: N`` keeps the representatives of the N most recent hours that have a snapshot;
  likewise ``daily``, ``weekly``, ``monthly``, ``yearly``. ``all`` keeps every period's; 0
  (the default) keeps none for that period kind. Periods without snapshots do not count, so N
  kept per kind is exact whenever N such periods exist.
* ``latest: N`` (default 1) always keeps the N newest snapshots: the newest is never deleted.
* ``min_age`` (seconds, or a number with ``m``, ``h``, ``d``, ``w``) keeps everything taken less
  than that long ago.
* A snapshot dated after ``now`` (a clock that went back) is kept.
* Every other snapshot, one that no rule keeps, is deleted.

The result does not change when the policy is applied again to what it kept (same ``now``).
"""

from __future__ import annotations

import datetime as _dt
import re

PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
KEYS = PERIODS + ("latest", "min_age", "timezone")
STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z\Z")
_DURATION_RE = re.compile(r"^([0-9]+)\s*([smhdw]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
UTC = _dt.timezone.utc
#: the rule for a snapshot series' base name (``name``, or the source folder's name): ASCII
#: letters, digits, ``.``, ``_``, ``+``, ``-``, not starting with a dot (hidden names are
#: the backends' own: ``.NAME.partial``), at most 100 characters
BASE_RE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")
#: the most a count or ``min_age`` may be: beyond it a value is a typo, not a policy
MAX_COUNT = 1000000
MAX_AGE = 100 * 366 * 86400


class RetentionError(ValueError):
    """A retention policy or snapshot name that cannot be used; the message says why."""


def snapshot_name(base, when):
    """``base@YYYYMMDDTHHMMSSZ`` for an aware datetime *when*."""
    check_base(base)
    if when.tzinfo is None:
        raise RetentionError("snapshot time must carry a time zone")
    return f"{base}@{when.astimezone(UTC).strftime(STAMP)}"


def check_base(base):
    """*base* if it is a valid snapshot base name, else :class:`RetentionError` saying the rule."""
    if not isinstance(base, str) or not BASE_RE.fullmatch(base):
        raise RetentionError(f"snapshot name {base!r} must be 1 to 100 of A-Z a-z 0-9 . _ + - (not starting "
                             f"with '.'): give the series a name that follows this rule")
    return base


def parse_snapshot_name(base, name):
    """The UTC time in *name* if it is a snapshot of *base*, else None."""
    prefix = f"{base}@"
    if not name.startswith(prefix):
        return None
    stamp = name[len(prefix):]
    if not _STAMP_RE.match(stamp):
        return None
    try:
        return _dt.datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_duration(value):
    """Seconds in ``min_age``: an int, or ``90m``, ``36h``, ``7d``, ``2w``."""
    if isinstance(value, bool):
        raise RetentionError(f"min_age {value!r} is not a duration")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(str(value).strip())
        if not match:
            raise RetentionError(f"min_age {value!r} is not a duration like 3600, 90m, 36h, 7d or 2w")
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise RetentionError(f"min_age {value!r} must not be negative")
    if seconds > MAX_AGE:
        raise RetentionError(f"min_age {value!r} is more than 100 years: give a shorter duration")
    return seconds


def _zone(name):
    if not isinstance(name, str) and name is not None:
        raise RetentionError(f"timezone {name!r} must be an IANA time zone name such as UTC or Europe/Berlin")
    if name in (None, "", "UTC", "Etc/UTC"):
        return UTC
    try:
        import zoneinfo  # pylint: disable=import-outside-toplevel
        return zoneinfo.ZoneInfo(name)
    except (ImportError, ValueError, OSError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise RetentionError(f"timezone {name!r} is not a known IANA time zone (install tzdata?)") from exc


def normalize(retention):
    """The policy with defaults filled in and every value checked."""
    if retention is not None and not isinstance(retention, dict):
        raise RetentionError(f"retention must be a mapping such as {{daily: 7, weekly: 4}}, got {retention!r}")
    retention = dict(retention or {})
    unknown = sorted(set(retention) - set(KEYS))
    if unknown:
        raise RetentionError(f"unknown retention keys: {', '.join(unknown)} (known: {', '.join(KEYS)})")
    policy = {}
    for kind in PERIODS:
        value = retention.get(kind, 0)
        if value in (None, ""):
            value = 0
        if value == "all":
            policy[kind] = "all"
            continue
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = -1
        if isinstance(value, bool) or not 0 <= count <= MAX_COUNT or not re.fullmatch(r"[0-9]+", str(value).strip()):
            raise RetentionError(f"retention {kind} must be a count (0 to {MAX_COUNT}) or 'all', got {value!r}")
        policy[kind] = count
    latest = retention.get("latest", 1)
    if isinstance(latest, bool) or not re.fullmatch(r"[0-9]+", str(latest)) or not 1 <= int(latest) <= MAX_COUNT:
        raise RetentionError(f"retention latest must be 1 to {MAX_COUNT} (the newest is always kept), got {latest!r}")
    policy["latest"] = int(latest)
    policy["min_age"] = parse_duration(retention.get("min_age", 0))
    policy["timezone"] = retention.get("timezone", "UTC")
    if policy["timezone"] in (None, ""):
        policy["timezone"] = "UTC"
    _zone(policy["timezone"])
    return policy


def _period_key(kind, local):
    if kind == "hourly":
        # the offset tells apart the two hours that share a wall-clock time when clocks go back
        return (local.year, local.month, local.day, local.hour, local.utcoffset())
    if kind == "daily":
        return (local.year, local.month, local.day)
    if kind == "weekly":
        iso = local.isocalendar()
        return (iso[0], iso[1])
    if kind == "monthly":
        return (local.year, local.month)
    return (local.year,)


def select(snapshots, retention, now):
    """Apply *retention* to *snapshots*, an iterable of ``(id, aware datetime)``.

    Returns ``(keep, delete, reasons)``: ids oldest first, and for each kept id the rules that
    keep it (``hourly``, ``daily``, ..., ``latest``, ``min_age``, ``future``)."""
    policy = normalize(retention)
    zone = _zone(policy["timezone"])
    ordered = sorted(snapshots, key=lambda item: (item[1], str(item[0])))
    reasons = {}

    def keep(ident, why):
        reasons.setdefault(ident, []).append(why)

    for ident, when in ordered[-policy["latest"]:]:
        keep(ident, "latest")
    cutoff = now - _dt.timedelta(seconds=policy["min_age"])
    for ident, when in ordered:
        if when > now:
            keep(ident, "future")
        elif policy["min_age"] and when > cutoff:
            keep(ident, "min_age")
    locals_ = [(ident, when.astimezone(zone)) for ident, when in ordered]
    for kind in PERIODS:
        count = policy[kind]
        if count == 0:
            continue
        first = {}
        for ident, local in locals_:  # oldest first: the first seen represents its period
            first.setdefault(_period_key(kind, local), ident)
        periods = sorted(first)
        chosen = periods if count == "all" else periods[-count:]
        for period in chosen:
            keep(first[period], kind)
    keep_ids = [item[0] for item in ordered if item[0] in reasons]
    delete_ids = [item[0] for item in ordered if item[0] not in reasons]
    return keep_ids, delete_ids, reasons
