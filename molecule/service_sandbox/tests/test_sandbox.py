# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nginx inside replica.cloud.service_sandbox: still serves, reads its overlay, is hardened."""

from __future__ import annotations

import re

DROPIN = "/etc/systemd/system/nginx.service.d/50-replica-sandbox.conf"


def test_serves_the_overlay_configuration(host):
    page = host.check_output("curl -fsS http://127.0.0.1/")
    assert page.strip() == "served by replica.cloud's sandboxed nginx"


def test_packaged_configuration_is_untouched(host):
    # the packaged file on disk is Debian's; only the service's mount namespace sees the overlay
    packaged = host.file("/etc/nginx/sites-available/default")
    assert "Default server configuration" in packaged.content_string
    overlay = host.file("/etc/replica/nginx/etc/nginx/sites-available/default")
    assert "sandboxed nginx" in overlay.content_string


def test_exposure_at_most_2_5(host):
    out = host.check_output("systemd-analyze security --no-pager nginx.service")
    exposure = float(re.search(r"exposure level for nginx\.service: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out


def test_root_is_read_only_for_the_service(host):
    pid = host.check_output("systemctl show --property=MainPID --value nginx.service")
    assert int(pid) > 0
    # writing /etc from inside the service's mount namespace fails; /var/log/nginx is allowed
    assert host.run(f"nsenter -t {pid} -m touch /etc/replica-probe").rc != 0
    assert host.run(f"nsenter -t {pid} -m touch /var/log/nginx/replica-probe").rc == 0
    assert host.run(f"nsenter -t {pid} -m rm /var/log/nginx/replica-probe").rc == 0


def test_hardening_settings_are_in_force(host):
    show = host.check_output(
        "systemctl show nginx.service --property=ProtectSystem,PrivateTmp,NoNewPrivileges,"
        "CapabilityBoundingSet,RestrictAddressFamilies")
    assert "ProtectSystem=strict" in show
    assert "PrivateTmp=yes" in show
    assert "NoNewPrivileges=yes" in show
    assert "cap_sys_admin" not in show.lower()
    assert host.file(DROPIN).contains("BindReadOnlyPaths=/etc/replica/nginx/etc/nginx/sites-available/default")


def test_logs_reach_the_journal(host):
    host.run("curl -fsS -o /dev/null http://127.0.0.1/missing-page")
    assert host.run("journalctl -u nginx.service --no-pager -n 50").rc == 0
