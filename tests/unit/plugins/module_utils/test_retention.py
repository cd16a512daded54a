# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention policy, on hand-made and generated snapshot histories."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _retention as r

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 25, 12, 30, tzinfo=UTC)


def every(step, count, end=NOW):
    return [(f"s{i}", end - step * i) for i in range(count)][::-1]


def test_names_round_trip():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    name = r.snapshot_name("postgresql", when)
    assert name == "postgresql@20260102T030405Z"
    assert r.parse_snapshot_name("postgresql", name) == when
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert r.snapshot_name("db", when.astimezone(berlin)) == "db@20260102T030405Z"
    for other in ("postgresql@2026", "postgresql@20261302T030405Z", "postgres@20260102T030405Z",
                  "postgresql-20260102T030405Z", "postgresql@20260102T030405Z.tmp"):
        assert r.parse_snapshot_name("postgresql", other) is None
    for bad in ("", "a@b", "a/b"):
        with pytest.raises(r.RetentionError):
            r.snapshot_name(bad, when)
    with pytest.raises(r.RetentionError):
        r.snapshot_name("db", dt.datetime(2026, 1, 1))


def test_hourly_keeps_the_first_of_each_recent_hour():
    snaps = every(dt.timedelta(minutes=10), 30)  # 5 hours, every 10 minutes, newest 12:30
    keep, delete, reasons = r.select(snaps, {"hourly": 3}, NOW)
    kept_times = [dict(snaps)[k].strftime("%H:%M") for k in keep]
    # first of 10:xx, 11:xx, 12:xx, plus the newest
    assert kept_times == ["10:00", "11:00", "12:00", "12:30"]
    assert reasons[keep[-1]] == ["latest"]
    assert len(keep) + len(delete) == 30


def test_daily_weekly_monthly_yearly():
    snaps = every(dt.timedelta(hours=6), 4 * 800)  # 800 days, four a day
    keep, dummy, reasons = r.select(snaps, {"daily": 7, "weekly": 4, "monthly": 6, "yearly": "all"}, NOW)
    by_kind = {kind: [k for k in keep if kind in reasons[k]] for kind in r.PERIODS}
    assert len(by_kind["daily"]) == 7 and len(by_kind["weekly"]) == 4 and len(by_kind["monthly"]) == 6
    years = {dict(snaps)[k].year for k in keep}
    assert len(by_kind["yearly"]) == len(years) == 3
    for k in by_kind["weekly"]:  # weeks start on Monday: the first snapshot of a full week is Monday 00:00
        when = dict(snaps)[k]
        assert when.weekday() == 0 and when.hour == 0 or k == by_kind["weekly"][0]
    for k in by_kind["monthly"]:
        assert dict(snaps)[k].day == 1 or k == by_kind["monthly"][0]


def test_timezone_moves_the_day_boundary():
    # 22:30 and 23:30 UTC on 24 Nov are 23:30 and 00:30 on 24/25 Nov in Berlin (UTC+1)
    snaps = [("a", dt.datetime(2026, 11, 24, 22, 30, tzinfo=UTC)),
             ("b", dt.datetime(2026, 11, 24, 23, 30, tzinfo=UTC)),
             ("c", dt.datetime(2026, 11, 25, 0, 30, tzinfo=UTC))]
    assert r.select(snaps, {"daily": 5, "latest": 1}, NOW)[0] == ["a", "c"]
    assert r.select(snaps, {"daily": 5, "timezone": "Europe/Berlin"}, NOW)[0] == ["a", "b", "c"]


def test_min_age_latest_and_future():
    snaps = every(dt.timedelta(hours=1), 48)
    keep, dummy, reasons = r.select(snaps, {"min_age": "6h"}, NOW)
    assert len(keep) == 6 and all("min_age" in reasons[k] or "latest" in reasons[k] for k in keep)
    assert len(r.select(snaps, {"latest": 5}, NOW)[0]) == 5
    ahead = snaps + [("later", NOW + dt.timedelta(days=1))]
    keep, dummy, reasons = r.select(ahead, {}, NOW)
    assert keep == ["later"] and reasons["later"] == ["latest", "future"]
    skewed = snaps + [("skew", NOW + dt.timedelta(minutes=5)), ("skew2", NOW + dt.timedelta(minutes=1))]
    keep = r.select(skewed, {}, NOW)[0]
    assert set(keep) == {"skew", "skew2"}


def test_empty_history():
    assert r.select([], {"daily": 3}, NOW) == ([], [], {})


@pytest.mark.parametrize("policy,message", [
    ({"hourly": -1}, "hourly"), ({"daily": "x"}, "daily"), ({"weekly": True}, "weekly"),
    ({"latest": 0}, "latest"), ({"min_age": "soon"}, "min_age"), ({"min_age": -5}, "negative"),
    ({"timezone": "Mars/Olympus"}, "timezone"), ({"dayly": 3}, "unknown"), ({"monthly": 1.5}, "monthly"),
])
def test_bad_policies(policy, message):
    with pytest.raises(r.RetentionError, match=message):
        r.normalize(policy)


def test_durations():
    assert r.parse_duration(90) == 90
    assert [r.parse_duration(v) for v in ("90m", "36h", "7d", "2w", "15s", "5")] == [
        5400, 129600, 604800, 1209600, 15, 5]


def histories(count=300, seed=20261125):
    """Random histories: irregular gaps from seconds to weeks, bursts, duplicates."""
    rng = random.Random(seed)
    for case in range(count):
        size = rng.choice([0, 1, 2, 5, 30, 200])
        when = NOW - dt.timedelta(days=rng.randint(0, 900))
        snaps = []
        for i in range(size):
            snaps.append((f"c{case}-{i}", when))
            when += dt.timedelta(seconds=rng.choice([0, 1, 59, 600, 3600, 5000, 86400, 7 * 86400, 40 * 86400]))
        policy = {kind: rng.choice([0, 0, 1, 2, 3, 7, "all"]) for kind in r.PERIODS}
        policy["latest"] = rng.choice([1, 1, 2, 5])
        policy["min_age"] = rng.choice([0, 0, 3600, "2d"])
        policy["timezone"] = rng.choice(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
        yield snaps, policy


@pytest.mark.parametrize("snaps,policy", list(histories()))
def test_properties(snaps, policy):
    keep, delete, reasons = r.select(snaps, policy, NOW)
    ids = [item[0] for item in snaps]
    # a partition of the input, and every kept one has a reason
    assert sorted(keep + delete) == sorted(ids) and not set(keep) & set(delete)
    assert set(reasons) == set(keep)
    if snaps:
        newest = max(snaps, key=lambda s: (s[1], s[0]))[0]
        assert newest in keep  # never deletes the newest
    # exactly N per period kind (or every period when fewer exist)
    zone = r._zone(policy["timezone"])  # pylint: disable=protected-access
    for kind in r.PERIODS:
        periods = {r._period_key(kind, w.astimezone(zone)) for dummy, w in snaps}  # pylint: disable=protected-access
        count = policy[kind]
        expected = len(periods) if count == "all" else min(count, len(periods))
        assert sum(kind in why for why in reasons.values()) == expected
    # stable: applying the policy to what it kept keeps all of it, for the same reasons
    times = dict(snaps)
    again = r.select([(k, times[k]) for k in keep], policy, NOW)
    assert again[0] == keep and again[1] == []
    assert again[2] == {k: reasons[k] for k in keep}


def test_the_repeated_hour_when_clocks_go_back_is_two_hours():
    # Berlin leaves summer time on 26 Oct 2025: 00:xx and 01:xx UTC are both 02:xx local
    snaps = [(f"s{h}", dt.datetime(2025, 10, 26, h, 0, tzinfo=UTC)) for h in range(4)]
    keep = r.select(snaps, {"hourly": 4, "timezone": "Europe/Berlin"}, NOW)[0]
    assert keep == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("policy,words", [
    ({"min_age": "99999999999999w"}, "more than 100 years"),
    ({"min_age": 10 ** 30}, "more than 100 years"),
    ({"min_age": "7d\n"}, None),
    ({"daily": 10 ** 30}, "must be a count"),
    ({"daily": "\u00b2"}, "must be a count"),
    ({"latest": "\u00b2"}, "latest must be"),
    ({"latest": 10 ** 30}, "latest must be"),
    ({"timezone": 5}, "IANA time zone"),
    ({"timezone": ["UTC"]}, "IANA time zone"),
    ({"timezone": "Mars/Olympus"}, "not a known IANA"),
    (["daily", 7], "must be a mapping"),
])
def test_hostile_policies_are_refused_with_a_message(policy, words):
    if words is None:  # surrounding white space is not hostile
        assert r.normalize(policy)["min_age"] == 7 * 86400
        return
    with pytest.raises(r.RetentionError, match=words):
        r.normalize(policy)


@pytest.mark.parametrize("base", ["", "a\nb", "a b", "a,b", "%n", "a;b", "..", ".hidden", "x" * 101, "d\u00e9j\u00e0", "a\0b",
                                  "a/b", "a@b", 5])
def test_one_rule_for_snapshot_names(base):
    with pytest.raises(r.RetentionError, match="must be 1 to 100 of"):
        r.snapshot_name(base, NOW)


def test_snapshot_names_the_rule_accepts():
    for base in ("db", "postgresql-15", "var_lib.mysql", "a+b", "x" * 100):
        assert r.parse_snapshot_name(base, r.snapshot_name(base, NOW)) == NOW
