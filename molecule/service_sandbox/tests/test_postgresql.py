# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL inside replica.cloud.service_sandbox: its state lives on a btrfs subvolume of its
own, keeps the data written before the shift, survives a restart, and a snapshot taken while it
runs opens in a copy."""

from __future__ import annotations

import re
import time

UNIT = "postgresql@15-main.service"
SUBVOLUME = "/var/lib/replica/state/postgresql"


def psql(host, sql, extra=""):
    return host.check_output(f"runuser -u postgres -- psql {extra} -v ON_ERROR_STOP=1 -Atc \"{sql}\"")


def wait_ready(host, extra="", timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(f"runuser -u postgres -- pg_isready -q {extra}").rc == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"PostgreSQL {extra} did not accept connections in {timeout} s")


def test_state_is_mounted_from_its_subvolume(host):
    source = host.check_output("findmnt --noheadings --output SOURCE,FSTYPE /var/lib/postgresql")
    assert SUBVOLUME in source and "btrfs" in source
    assert "Name:" in host.check_output(f"btrfs subvolume show {SUBVOLUME}")
    # the packaged path underneath the mount is empty: the state was moved, not copied
    assert host.check_output("systemctl is-enabled var-lib-postgresql.mount") == "enabled"


def test_data_written_before_the_shift_survives_a_restart(host):
    assert psql(host, "SELECT count(*) FROM probe WHERE note = 'written before the state shift'") == "10000"
    host.check_output(f"systemctl restart {UNIT}")
    wait_ready(host)
    assert psql(host, "SELECT count(*) FROM probe") == "10000"
    assert host.check_output("findmnt --noheadings --output SOURCE /var/lib/postgresql").find(SUBVOLUME) >= 0


def test_a_snapshot_taken_while_running_opens_in_a_copy(host):
    snap = "/var/lib/replica/snapshots/postgresql@verify"
    fork = "/var/lib/replica/forks/postgresql-verify"
    psql(host, "INSERT INTO probe VALUES (20001, 'before the snapshot')")
    host.check_output("mkdir -p /var/lib/replica/snapshots /var/lib/replica/forks")
    # atomic and read-only, while the server runs and is writing
    host.check_output(f"btrfs subvolume snapshot -r {SUBVOLUME} {snap}")
    psql(host, "INSERT INTO probe VALUES (20002, 'after the snapshot')")
    try:
        # a writable fork of the snapshot; its postmaster.pid names the running server
        host.check_output(f"btrfs subvolume snapshot {snap} {fork}")
        host.check_output(f"rm -f {fork}/15/main/postmaster.pid")
        host.check_output("install -d -o postgres -g postgres /run/pg-fork")
        host.check_output(
            "systemd-run --unit pg-fork -p User=postgres /usr/lib/postgresql/15/bin/postgres "
            f"-D /etc/postgresql/15/main -c data_directory={fork}/15/main -c port=5433 "
            "-c listen_addresses= -c unix_socket_directories=/run/pg-fork "
            "-c external_pid_file=/run/pg-fork/pid -c cluster_name=fork")
        wait_ready(host, "-h /run/pg-fork -p 5433")
        extra = "-h /run/pg-fork -p 5433"
        notes = psql(host, "SELECT string_agg(note, ',' ORDER BY id) FROM probe WHERE id > 10000", extra)
        assert notes == "before the snapshot"
        assert psql(host, "SELECT count(*) FROM probe", extra) == "10001"
        # the copy is independent: writing to it leaves the running server's data alone
        psql(host, "INSERT INTO probe VALUES (30001, 'only in the copy')", extra)
        assert psql(host, "SELECT count(*) FROM probe WHERE id = 30001") == "0"
        # the copy recovered from the crash-consistent snapshot
        log = host.check_output("journalctl -u pg-fork --no-pager")
        assert "database system is ready to accept connections" in log
    finally:
        host.run("systemctl stop pg-fork")
        host.run(f"btrfs subvolume delete {fork} {snap}")
        host.run("rm -rf /run/pg-fork")
        psql(host, "DELETE FROM probe WHERE id > 10000")


def test_exposure_at_most_2_5(host):
    out = host.check_output(f"systemd-analyze security --no-pager {UNIT}")
    exposure = float(re.search(r"exposure level for postgresql@15-main\.service: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out


def test_runs_as_its_owner_without_capabilities(host):
    show = host.check_output(
        f"systemctl show {UNIT} --property=User,ProtectSystem,CapabilityBoundingSet,RequiresMountsFor")
    props = dict(line.split("=", 1) for line in show.splitlines())
    assert props["User"] == "postgres"
    assert props["ProtectSystem"] == "strict"
    assert props["CapabilityBoundingSet"] == ""
    assert "/var/lib/postgresql" in props["RequiresMountsFor"].split()
    pid = host.check_output(f"systemctl show --property=MainPID --value {UNIT}")
    assert host.run(f"nsenter -t {pid} -m touch /etc/replica-probe").rc != 0


def test_server_messages_reach_the_journal(host):
    log = host.check_output(f"journalctl -u {UNIT} -t postgresql@15-main --no-pager -n 200")
    assert "database system is ready to accept connections" in log
