# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.instance_address on this machine, over a segments file of its own: two runs at
once never hand out one address, a run killed after choosing converges, and hostile MACs and
names are refused before anything is written."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest
from conftest import run_module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the segment's lock is root's (/run/replica/locks)")

SEGMENT = {"name": "tiny", "kind": "bridge", "link": "br-tiny", "uplink": None, "bridge": "br-tiny",
           "zone": "tiny.test", "ipv4": "10.99.0.0/28", "ipv6": None, "gateway4": "10.99.0.1", "gateway6": None,
           "prefixlen4": 28, "prefixlen6": None, "dhcp": True, "mdns": False}


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "tiny/hosts").mkdir(parents=True)
    (tmp_path / "tiny/dhcp-hosts").mkdir()
    (tmp_path / "segments.json").write_text(json.dumps({"domain": "test", "segments": {"tiny": SEGMENT}}))
    return tmp_path


def address(config_dir, name, check=True, env=None, **extra):
    return run_module("replica.cloud.instance_address", {"name": name, "segment": "tiny", "config_dir": str(config_dir),
                                                         **extra}, check=check, env=env)


def colliding_names():
    """Two names whose addresses in the empty segment are the same (the second must move on)."""
    import sys  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../.collections"))
    from ansible_collections.replica.cloud.plugins.module_utils import _addressing  # pylint: disable=import-outside-toplevel
    first = {}
    for i in range(200):
        name = f"vm{i}"
        picked = _addressing.ipv4_for(name, SEGMENT["ipv4"])
        if picked in first:
            return first[picked], name
        first[picked] = name
    raise AssertionError("no two names share an address in a /28")


def test_two_runs_at_once_get_two_addresses(config_dir):
    """The first run is held (a pause point) after choosing its address and before writing it; the
    second starts meanwhile. Without the segment's lock both wrote the same address."""
    one, two = colliding_names()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(address, config_dir, one, env={"REPLICA_PAUSE_AT": "address-chosen", "REPLICA_PAUSE_SECONDS": "3"})
        time.sleep(1.5)
        second = pool.submit(address, config_dir, two)
        (rc1, first), (rc2, other) = held.result(), second.result()
    assert rc1 == 0 and rc2 == 0
    assert first["ipv4"] != other["ipv4"], (first["ipv4"], other["ipv4"])


def test_killed_after_choosing_then_converges(config_dir):
    rc, result = address(config_dir, "web1", check=False, env={"REPLICA_CRASH_AT": "address-chosen"})
    assert rc != 0 and "Killed" in result.get("module_stderr", "")
    assert os.listdir(config_dir / "tiny/hosts") == []  # nothing half-written
    rc, made = address(config_dir, "web1")
    assert rc == 0 and made["changed"]
    rc, again = address(config_dir, "web1")
    assert rc == 0 and not again["changed"] and again["ipv4"] == made["ipv4"]


@pytest.mark.parametrize("mac", ["52:54:00:12:34:56\n10.99.0.2,evil", "52:54:00:12:34:56,10.99.0.3", "%n", "52;54:00:12:34:56",
                                 "../../etc", "5" * 200, "52:54:00:12:34:5\u00e9", "52:54:00:12:34:56\u0000", "01:00:5e:00:00:01"])
def test_hostile_macs_are_refused_before_anything(config_dir, mac):
    rc, result = address(config_dir, "web2", check=False, mac=mac)
    assert rc != 0 and "mac" in result["msg"] and "Traceback" not in result.get("module_stderr", ""), result
    assert os.listdir(config_dir / "tiny/hosts") == [] and os.listdir(config_dir / "tiny/dhcp-hosts") == []


@pytest.mark.parametrize("name", ["a\nb", "a,b", "%n", "a;b", "..", "x" * 200, "\u00e9t\u00e9", "a\u0000b"])
def test_hostile_names_are_refused_before_anything(config_dir, name):
    rc, result = address(config_dir, name, check=False)
    assert rc != 0 and "must be a host name label" in result["msg"], result
    assert os.listdir(config_dir / "tiny/hosts") == []
