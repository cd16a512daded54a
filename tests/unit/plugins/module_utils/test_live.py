# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge means live: the comparisons nft_table and service_config decide by."""

from __future__ import annotations

import json
import os

from ansible_collections.replica.cloud.plugins.module_utils import _live as live


def listing(elements, handle=3, rule_port=22):
    return json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "replica", "handle": handle}},
        {"set": {"family": "inet", "name": "i4", "table": "replica", "type": "ipv4_addr", "handle": handle + 1,
                 "elem": elements}},
        {"rule": {"family": "inet", "table": "replica", "chain": "input", "handle": handle + 2,
                  "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                      "right": rule_port}}, {"accept": None}]}},
    ]})


def test_handles_metainfo_and_element_order_do_not_count():
    assert live.nft_normalize(listing(["10.0.0.2", "10.0.0.1"], handle=3)) == \
        live.nft_normalize(listing(["10.0.0.1", "10.0.0.2"], handle=40))


def test_a_rule_or_an_element_that_differs_counts():
    base = live.nft_normalize(listing(["10.0.0.1"]))
    assert live.nft_normalize(listing(["10.0.0.1"], rule_port=8080)) != base
    assert live.nft_normalize(listing(["10.0.0.1", "10.0.0.9"])) != base
    assert live.nft_normalize(listing([])) != base


def test_digest_sees_content_names_and_absence(tmp_path):
    conf = tmp_path / "a.conf"
    conf.write_text("x=1\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/b.conf").write_text("y\n")
    first, newest = live.digest([str(conf), str(tmp_path / "d"), str(tmp_path / "missing")])
    assert newest == max(os.stat(conf).st_mtime, os.stat(tmp_path / "d/b.conf").st_mtime)
    (tmp_path / "d/b.conf").write_text("z\n")
    assert live.digest([str(conf), str(tmp_path / "d"), str(tmp_path / "missing")])[0] != first
    (tmp_path / "missing").write_text("")
    assert live.digest([str(conf), str(tmp_path / "d"), str(tmp_path / "missing")])[0] != first


ACTIVE = {"ActiveState": "active", "InvocationID": "inv1", "NeedDaemonReload": "no"}


def test_a_unit_started_before_its_files_changed_is_stale():
    assert live.stale(ACTIVE, "d1", newest_mtime=200.0, stamp=None, started=100.0) == "its files changed after it started"
    assert live.stale(ACTIVE, "d1", newest_mtime=100.0, stamp=None, started=200.0) is None


def test_the_stamp_of_this_invocation_decides_after_a_reload():
    stamp = {"invocation": "inv1", "digest": "d1"}
    # reloaded after the files changed: same invocation, old start time, the stamp says it applied them
    assert live.stale(ACTIVE, "d1", newest_mtime=200.0, stamp=stamp, started=100.0) is None
    assert live.stale(ACTIVE, "d2", newest_mtime=200.0, stamp=stamp, started=100.0) == "its files changed since it applied them"
    # a stamp of an earlier invocation says nothing: the start time decides
    assert live.stale(dict(ACTIVE, InvocationID="inv2"), "d2", 200.0, stamp, started=300.0) is None


def test_not_running_or_an_unread_unit_file_is_stale():
    assert live.stale(dict(ACTIVE, ActiveState="failed"), "d", 0, None, 1.0) == "it is failed"
    assert live.stale(dict(ACTIVE, NeedDaemonReload="yes"), "d", 0, None, 1.0) == "its unit file changed since systemd read it"


def test_started_at_turns_monotonic_into_wall_clock():
    assert live.started_at(5_000_000, now_monotonic=10.0, now_realtime=1000.0) == 995.0
    assert live.started_at(0, 10.0, 1000.0) is None


def test_decide_restarts_or_reloads_a_stale_unit_after_reading_its_files():
    assert live.decide(ACTIVE, "restarted", "start", "d", 200.0, None, 100.0) == ("its files changed after it started", ["restart"])
    assert live.decide(dict(ACTIVE, NeedDaemonReload="yes"), "reloaded", "start", "d", 0, None, 1.0) == \
        ("its unit file changed since systemd read it", ["daemon-reload", "reload-or-restart"])
    assert live.decide(ACTIVE, "restarted", "start", "d", 100.0, None, 200.0) == (None, [])


def test_decide_loaded_only_makes_systemd_read_the_files():
    assert live.decide(dict(ACTIVE, NeedDaemonReload="yes"), "loaded", "start", "d", 200.0, None, 100.0) == \
        ("its unit file changed since systemd read it", ["daemon-reload"])
    # older than its files but loaded: a timer keeps running, nothing to do
    assert live.decide(ACTIVE, "loaded", "start", "d", 200.0, None, 100.0) == (None, [])


def test_decide_leaves_a_stopped_unit_stopped_when_asked():
    stopped = dict(ACTIVE, ActiveState="inactive")
    assert live.decide(stopped, "restarted", "start", "d", 0, None, None) == ("it is inactive", ["restart"])
    assert live.decide(stopped, "restarted", "leave", "d", 0, None, None) == (None, [])
    assert live.decide(dict(stopped, NeedDaemonReload="yes"), "restarted", "leave", "d", 0, None, None) == \
        ("its unit file changed since systemd read it", ["daemon-reload"])
    # running and stale, it is restarted even so
    assert live.decide(ACTIVE, "restarted", "leave", "d", 200.0, None, 100.0)[1] == ["restart"]


def test_unread_finds_a_drop_in_systemd_has_not_read():
    # systemd read the packaged timer only: the first run's drop-in folder did not exist then
    props = dict(ACTIVE, FragmentPath="/lib/systemd/system/apt-daily.timer", DropInPaths="")
    dropin = "/etc/systemd/system/apt-daily.timer.d/50-replica.conf"
    assert live.unread(props, "apt-daily.timer", [dropin]) == [dropin]
    assert live.unread(dict(props, DropInPaths=dropin), "apt-daily.timer", [dropin]) == []
    # the template's, the dash prefix's and the type's drop-ins and fragment are the unit's too
    for path in ("/etc/systemd/system/replica-dnsmasq@.service.d/x.conf",
                 "/etc/systemd/system/replica-.service.d/x.conf",
                 "/etc/systemd/system/service.d/x.conf",
                 "/etc/systemd/system/replica-dnsmasq@.service"):
        assert live.unread({"FragmentPath": "", "DropInPaths": ""}, "replica-dnsmasq@lan.service", [path]) == [path]
    # configuration files, other units' files and non-.conf files in a drop-in folder are not asked about
    others = ["/etc/replica/network/lan/dnsmasq.conf", "/etc/systemd/system/srv-state.mount",
              "/etc/systemd/system/other.service.d/x.conf", "/etc/systemd/system/apt-daily.timer.d/README"]
    assert live.unread(props, "apt-daily.timer", others) == []


def test_decide_reads_unread_files_first():
    dropin = ["/etc/systemd/system/apt-daily.timer.d/50-replica.conf"]
    assert live.decide(ACTIVE, "loaded", "start", "d", 0, None, 1.0, dropin) == \
        (f"systemd has not read {dropin[0]}", ["daemon-reload"])
    # a running service whose new drop-in systemd has not read is reloaded and restarted
    assert live.decide(ACTIVE, "restarted", "start", "d", 0, None, 1.0, dropin) == \
        (f"systemd has not read {dropin[0]}", ["daemon-reload", "restart"])


def test_a_template_is_asked_about_through_its_loaded_instances():
    assert live.template_pattern("systemd-nspawn@.service") == "systemd-nspawn@*.service"
    for unit in ("systemd-nspawn@web1.service", "apt-daily.timer", "@.service", "replica-machine-prepare@"):
        assert live.template_pattern(unit) is None
    listing = ("systemd-nspawn@web1.service loaded active running Container web1\n"
               "\u25cf systemd-nspawn@db1.service loaded failed failed Container db1\n\n")
    assert live.loaded_units(listing) == ["systemd-nspawn@web1.service", "systemd-nspawn@db1.service"]
    # an instance's files are the template's and its drop-ins: a new drop-in of the template is unread
    dropin = "/etc/systemd/system/systemd-nspawn@.service.d/50-replica-gpu.conf"
    props = {"FragmentPath": "/lib/systemd/system/systemd-nspawn@.service", "DropInPaths": ""}
    assert live.unread(props, "systemd-nspawn@web1.service", [dropin]) == [dropin]
    assert live.unread(dict(props, DropInPaths=dropin), "systemd-nspawn@web1.service", [dropin]) == []
