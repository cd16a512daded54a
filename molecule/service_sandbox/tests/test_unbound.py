# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""unbound in its own network namespace, reached from the host through a socket proxy."""

from __future__ import annotations

import re


def test_answers_from_the_host_through_the_proxy(host):
    answer = host.check_output("dig +tcp +short +time=5 @127.0.0.1 probe.replica.test A")
    assert answer.strip() == "192.0.2.53"


def test_runs_in_a_network_namespace_of_its_own(host):
    pid = int(host.check_output("systemctl show --property=MainPID --value unbound.service"))
    assert pid > 0
    assert host.check_output(f"readlink /proc/{pid}/ns/net") != host.check_output("readlink /proc/1/ns/net")
    # inside, only loopback: no route out of the namespace
    links = host.check_output(f"nsenter -t {pid} -n ip -o link show")
    assert [l.split(":")[1].strip() for l in links.splitlines()] == ["lo"]
    # the host side is a socket unit owned by systemd, not unbound
    assert host.socket("tcp://127.0.0.1:53").is_listening
    assert host.service("replica-proxy-unbound-0.socket").is_running


def test_exposure_at_most_2_5(host):
    out = host.check_output("systemd-analyze security --no-pager unbound.service")
    exposure = float(re.search(r"exposure level for unbound\.service: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out
