# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's pure helpers: names, cache keys, addressing, the nspawn command line."""

from __future__ import annotations

import ipaddress
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize("name", ["a", "lab1", "mol-default", "x" * 31, "x" * 63])
def test_valid_names(name):
    assert replica_lab.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "x" * 64, "a/b", "../x", "a\n", None])
def test_invalid_names(name):
    with pytest.raises(replica_lab.LabError, match="invalid lab host name"):
        replica_lab.validate_name(name)


def test_image_key_depends_on_content_not_order():
    a = replica_lab.image_key("bookworm", ["b", "a"], ["src"])
    assert a == replica_lab.image_key("bookworm", ["a", "b", "a"], ["src"])
    assert a.startswith("bookworm-")
    assert a != replica_lab.image_key("bookworm", ["a", "b", "c"], ["src"])
    assert a != replica_lab.image_key("trixie", ["a", "b"], ["src"])
    assert a != replica_lab.image_key("bookworm", ["a", "b"], ["other src"])
    assert a != replica_lab.image_key("bookworm", ["a", "b"], ["src"], fmt=999)


def test_addressing():
    net = ipaddress.ip_network("10.9.0.0/29")
    assert str(replica_lab.machine_address(1, net)) == "10.9.0.2"
    assert replica_lab.free_index(set(), net) == 1
    assert replica_lab.free_index({1, 2, 4}, net) == 3
    with pytest.raises(replica_lab.LabError, match="no free address"):
        replica_lab.free_index(set(range(1, 8)), net)
    with pytest.raises(replica_lab.LabError):
        replica_lab.machine_address(99, net)


def test_nspawn_argv_is_a_privileged_booting_machine():
    argv = replica_lab.nspawn_argv("lab1", "/pool/machines/lab1", ["/dev/loop-control"], "br9")
    assert argv[0] == "systemd-nspawn"
    assert "--boot" in argv and "--machine=lab1" in argv
    assert "--directory=/pool/machines/lab1" in argv
    assert "--network-bridge=br9" in argv and "--capability=all" in argv
    assert argv.index("--drop-capability=CAP_SYS_TIME") > argv.index("--capability=all")  # the clock is the host's
    assert "--bind=/dev/loop-control" in argv
    assert "--register=no" in argv  # the CI machine has no systemd to register with
    assert replica_lab.NSPAWN_ENV["SYSTEMD_SECCOMP"] == "0"
    with_binds = replica_lab.nspawn_argv("lab1", "/pool/machines/lab1", [], "br9", binds=["/tmp/sys:/run/sys"])
    assert with_binds[-1] == "--bind=/tmp/sys:/run/sys"


def test_network_unit():
    unit = replica_lab.network_unit("10.9.0.2", "10.9.0.1", 24)
    assert "Name=host0" in unit and "Address=10.9.0.2/24" in unit and "Gateway=10.9.0.1" in unit


def test_lab_id_is_stable_and_differs_per_run_dir():
    first = replica_lab.lab_id("/run/replica-lab")
    assert first == replica_lab.lab_id("/run/replica-lab/") and len(first) == 10
    assert first != replica_lab.lab_id("/run/replica-lab-2")
    # it names an nft table: letters and digits only
    assert first.isalnum()


def test_lab_conflicts_names_the_other_lab():
    me = {"id": "a", "run_dir": "/run/a", "bridge": "rlab0", "subnet": "10.213.0.0/24"}
    same = dict(me)
    clash = {"id": "b", "run_dir": "/run/b", "bridge": "rlab0", "subnet": "10.213.0.128/25"}
    apart = {"id": "c", "run_dir": "/run/c", "bridge": "rlab1", "subnet": "10.214.0.0/24"}
    assert replica_lab.lab_conflicts(me, [same, apart]) == []
    problems = replica_lab.lab_conflicts(me, [clash])
    assert problems == ["the lab of /run/b uses bridge rlab0", "the lab of /run/b uses subnet 10.213.0.128/25"]


@pytest.mark.parametrize("orig, before, after, value", [
    ("0", [], ["a"], "1"),         # the first lab turns it on
    ("0", ["a"], ["a", "b"], "1"),  # a second lab keeps it on
    ("0", ["a", "b"], ["b"], "1"),  # the first going leaves it on for the second
    ("0", ["b"], [], "0"),          # the last one restores the value before the first
    ("1", ["b"], [], "1"),
    (None, [], [], None),           # nothing held, nothing recorded: leave it alone
])
def test_forward_follows_the_labs_holding_it(orig, before, after, value):
    assert replica_lab.forward_after(orig, before, after) == value


def test_nat_rules_are_the_labs_own():
    rules = replica_lab.nat_rules("replica_lab_x", ipaddress.ip_network("10.214.0.0/24"), "rlab1")
    assert rules.startswith("table inet replica_lab_x {")
    assert 'ip saddr 10.214.0.0/24 oifname != "rlab1" masquerade' in rules


def test_prune_plan_keeps_what_runs_and_what_was_used_lately():
    day = 86400
    now = 100 * day
    names = ["bookworm-a", "bookworm-b", "trixie-c", "trixie-d", ".build-trixie-e", "stray"]
    last_used = {"bookworm-a": now - 30 * day, "bookworm-b": now - 30 * day, "trixie-c": now - 1 * day,
                 "trixie-d": now - 15 * day}
    doomed = replica_lab.prune_plan(names, last_used, {"bookworm-b"}, now, keep_days=14)
    # a (old, unused), d (old), the killed build and the image without a record; b runs a lab host
    assert doomed == [".build-trixie-e", "bookworm-a", "stray", "trixie-d"]
    assert replica_lab.prune_plan(names, last_used, {"bookworm-b"}, now, keep_days=0) == \
        [".build-trixie-e", "bookworm-a", "stray", "trixie-c", "trixie-d"]
