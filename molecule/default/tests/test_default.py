# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Verify the default scenario (converge.yml) on the lab host: behaviour, not only files.

Each test receives testinfra's ``host`` fixture: the lab host, reached by the lab backend
(``scripts/replica_testinfra.py``, nsenter by the leader PID). By hand, from the checkout:
``PYTHONPATH=scripts .venv/bin/pytest -p replica_testinfra --hosts=lab://HOST molecule/default/tests``.
"""

from __future__ import annotations

import re
import time
import uuid

# What converge.yml sets.
TIMEZONE = "Europe/Berlin"
LOCALES = ("en_US.UTF-8", "de_DE.UTF-8")
SYSTEM_MAX_USE = "100M"
# The role's defaults that converge.yml keeps.
RUNTIME_MAX_USE = "64M"
MAX_RETENTION_SEC = "1month"
DROP_IN = "/etc/systemd/journald.conf.d/50-replica-base.conf"


def _normalised(locale_name: str) -> str:
    """Name of a locale as ``locale -a`` prints it: de_DE.UTF-8 -> de_DE.utf8."""
    name, dot, codeset = locale_name.partition(".")
    return f"{name}{dot}{codeset.lower().replace('-', '')}"


# --- time zone ---------------------------------------------------------------------------------


def test_timedated_reports_the_time_zone(host):
    assert host.check_output("timedatectl show --property=Timezone --value") == TIMEZONE


def test_localtime_points_at_the_zone(host):
    assert host.check_output("readlink -f /etc/localtime") == f"/usr/share/zoneinfo/{TIMEZONE}"


def test_etc_timezone_agrees(host):
    # Debian 12 still has /etc/timezone (newer tzdata drops it); when present it must not name
    # the old zone.
    etc_timezone = host.file("/etc/timezone")
    if etc_timezone.exists:
        assert etc_timezone.content_string.strip() == TIMEZONE


def test_date_uses_central_european_time(host):
    # Ask for a winter and a summer date, so the answer does not depend on today's date.
    winter = host.check_output("date --date=2024-01-15T12:00:00Z '+%Z %z %H'")
    summer = host.check_output("date --date=2024-07-15T12:00:00Z '+%Z %z %H'")
    assert winter == "CET +0100 13"
    assert summer == "CEST +0200 14"
    assert host.check_output("date +%Z") in ("CET", "CEST")


# --- locales -----------------------------------------------------------------------------------


def test_locales_are_generated(host):
    available = set(host.check_output("locale -a").split())
    for name in LOCALES:
        assert (
            _normalised(name) in available
        ), f"{name} missing from `locale -a`: {sorted(available)}"


def test_german_locale_is_usable(host):
    # glibc's date prints German month and day names only if the locale really loads.
    month = host.check_output("LC_ALL=de_DE.UTF-8 date --date=2024-03-01 +%B")
    assert month == "März"
    day = host.check_output("LC_ALL=de_DE.UTF-8 date --date=2024-03-01 +%A")
    assert day == "Freitag"
    # ... and Python can switch to it (this raises locale.Error for a missing locale).
    cmd = host.run(
        "python3 -c \"import locale; print(locale.setlocale(locale.LC_ALL, 'de_DE.UTF-8'))\""
    )
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == "de_DE.UTF-8"


def test_default_locale(host):
    assert host.file("/etc/default/locale").contains("^LANG=C.UTF-8$")
    # systemd-localed reports it as the system locale (Debian 12 reads /etc/default/locale,
    # Debian 13 /etc/locale.conf, which /etc/default/locale links to)
    assert "LANG=C.UTF-8" in host.check_output("localectl status")


# --- journald ----------------------------------------------------------------------------------


def test_journald_drop_in_is_in_effect(host):
    drop_in = host.file(DROP_IN)
    assert drop_in.is_file
    assert drop_in.user == "root"
    assert drop_in.mode == 0o644
    # systemd-analyze shows the configuration journald reads: our drop-in must be part of it
    # and, being the last word on these keys, must carry the limits.
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert f"# {DROP_IN}" in merged
    section = merged.split(f"# {DROP_IN}", 1)[1]
    for line in (
        "Storage=persistent",
        f"SystemMaxUse={SYSTEM_MAX_USE}",
        f"RuntimeMaxUse={RUNTIME_MAX_USE}",
        f"MaxRetentionSec={MAX_RETENTION_SEC}",
    ):
        assert line in section.splitlines(), f"{line} not in {DROP_IN}"


def test_journald_is_running(host):
    journald = host.service("systemd-journald")
    assert journald.is_running
    assert (
        host.check_output("systemctl show systemd-journald --property=ActiveState --value")
        == "active"
    )


def test_journald_applied_the_size_limit(host):
    # When journald opens the persistent journal it logs its limits, e.g.
    # "System Journal (/var/log/journal/ID) is 8.0M, max 100.0M, 91.9M free."
    # The last such line comes from the journald that runs now, after the handler restarted it.
    cmd = host.run(
        "journalctl --boot --unit=systemd-journald.service --output=cat --no-pager"
        " --grep='^System Journal'"
    )
    assert cmd.rc == 0, f"journald logged no 'System Journal' line: {cmd.stderr}"
    last = cmd.stdout.strip().splitlines()[-1]
    assert "/var/log/journal/" in last, last
    # systemd 252 (Debian 12) prints "max 100.0M", systemd 257 (Debian 13) "max 100M"
    assert re.search(r", max 100(\.0)?M,", last), last


def test_journal_is_persistent(host):
    machine_id = host.file("/etc/machine-id").content_string.strip()
    journal_dir = host.file(f"/var/log/journal/{machine_id}")
    assert journal_dir.is_directory
    assert host.file(f"/var/log/journal/{machine_id}/system.journal").is_file


def test_journald_accepts_and_stores_messages(host):
    token = f"replica-probe-{uuid.uuid4()}"
    host.check_output(f"logger --tag replica-probe {token}")
    # Read back from the on-disk journal only, to prove messages land in persistent storage.
    found = ""
    for attempt in range(20):
        if attempt:
            time.sleep(0.5)
        host.run("journalctl --sync")
        found = host.run(
            "journalctl --directory=/var/log/journal --identifier=replica-probe"
            " --output=cat --no-pager"
        ).stdout
        if token in found:
            break
    assert token in found
