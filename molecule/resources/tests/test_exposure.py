# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exposure gate, shared by the scenarios (each links this file into its tests/): every unit a
role of the collection hardens scores at most 2.5 in ``systemd-analyze security``. Hardened
units are found, not listed: the collection's own services (loaded, their unit file says
``# Managed by replica.cloud``; a scenario's own helpers do not) and every service with the
service_sandbox drop-in (``50-replica-sandbox.conf``)."""

from __future__ import annotations

import re

import pytest

LIMIT = 2.5
DROPIN = "50-replica-sandbox.conf"
MARK = "# Managed by replica.cloud"


def hardened_units(host):
    listed = host.check_output("systemctl list-units --all --no-legend --plain --type=service")
    units = []
    for line in listed.splitlines():
        unit = line.split()[0] if line.split() else ""
        if not unit.endswith(".service") or "@." in unit:
            continue
        dropins = host.check_output(f"systemctl show --property=DropInPaths --value -- {unit}")
        fragment = host.check_output(f"systemctl show --property=FragmentPath --value -- {unit}")
        ours = bool(fragment) and MARK in host.run(f"head -n 3 -- {fragment}").stdout
        if ours or DROPIN in dropins:
            units.append(unit)
    return sorted(units)


def test_every_hardened_unit_scores_at_most_the_limit(host):
    units = hardened_units(host)
    if not units:
        pytest.skip("this host runs no unit that the collection's roles harden")
    scores = {}
    for unit in units:
        out = host.check_output(f"systemd-analyze security --no-pager -- {unit}")
        scores[unit] = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    over = {unit: score for unit, score in scores.items() if score > LIMIT}
    table = "\n".join(f"{score:4.1f}  {unit}" for unit, score in sorted(scores.items()))
    print(f"exposure of the hardened units (limit {LIMIT}):\n{table}")
    assert not over, f"units above exposure {LIMIT}:\n{table}"
