# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sandbox drop-in renderer: defaults, overlays, validation."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _sandbox as sb


def settings(text):
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert lines[0] == "[Service]"
    return [tuple(l.split("=", 1)) for l in lines[1:]]


def test_defaults_harden_everything():
    got = settings(sb.render_dropin({}))
    keys = dict(got)
    assert keys["ProtectSystem"] == "strict" and keys["PrivateTmp"] == "yes"
    assert keys["NoNewPrivileges"] == "yes" and keys["MemoryDenyWriteExecute"] == "yes"
    assert keys["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    # capabilities: reset, then an empty set (none kept)
    assert [v for k, v in got if k == "CapabilityBoundingSet"] == ["", ""]
    assert [v for k, v in got if k == "SystemCallFilter"] == ["@system-service", "~@resources"]
    assert "PrivateNetwork" not in keys and "ReadWritePaths" not in keys


def test_profile_and_overlays():
    text = sb.render_dropin(
        {"writable": ["/var/log/nginx"], "capabilities": ["CAP_NET_BIND_SERVICE"],
         "private_network": True, "memory_deny_write_execute": False},
        name="nginx", config=[{"dest": "/etc/nginx/nginx.conf", "content": "x"}])
    got = settings(text)
    keys = dict(got)
    assert keys["ReadWritePaths"] == "/var/log/nginx"
    assert keys["PrivateNetwork"] == "yes" and keys["MemoryDenyWriteExecute"] == "no"
    assert ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE") in got
    assert ("BindReadOnlyPaths", "/etc/replica/nginx/etc/nginx/nginx.conf:/etc/nginx/nginx.conf") in got


def test_extra_settings_win_and_come_last():
    extra = {"PrivateTmp": False, "User": "www-data", "ReadOnlyPaths": ["/a", "/b"]}
    got = settings(sb.render_dropin({"extra": extra}))
    assert ("PrivateTmp", "yes") not in got
    assert got[-3:] == [("PrivateTmp", "no"), ("ReadOnlyPaths", "/a /b"), ("User", "www-data")]


def test_overlay_source():
    assert sb.overlay_source("unbound", "/etc/unbound/unbound.conf") == \
        "/etc/replica/unbound/etc/unbound/unbound.conf"


@pytest.mark.parametrize("profile, message", [
    ({"bogus": 1}, "unknown sandbox profile keys: bogus"),
    ({"writable": ["relative/path"]}, "writable path must be an absolute path"),
    ({"capabilities": ["NET_ADMIN"]}, "is not a CAP_"),
    ({"address_families": ["INET"]}, "is not an AF_"),
    ({"overlays": [{"src": "/a"}]}, "must have exactly src and dest"),
    ({"private_network": True, "network_namespace_path": "/run/netns/x"}, "exclude each other"),
    ({"extra": {"bad key": 1}}, "is not a systemd"),
])
def test_bad_profiles_are_refused(profile, message):
    with pytest.raises(sb.SandboxError, match=message):
        sb.render_dropin(profile)


@pytest.mark.parametrize("name", ["", "Nginx", "../etc", "a/b"])
def test_bad_service_names(name):
    with pytest.raises(sb.SandboxError):
        sb.overlay_source(name, "/etc/x")


def test_proxies_put_the_service_in_its_own_network():
    got = dict(settings(sb.render_dropin({}, name="unbound",
                                         proxies=[{"listen": "127.0.0.1:53", "target": "127.0.0.1:53"}])))
    assert got["PrivateNetwork"] == "yes"
    with pytest.raises(sb.SandboxError, match="not network_namespace_path"):
        sb.render_dropin({"network_namespace_path": "/run/netns/x"}, proxies=[{"listen": "a:1", "target": "b:2"}])


def test_proxy_units():
    units = sb.proxy_units("unbound.service", "unbound", [
        {"listen": "127.0.0.1:53", "target": "127.0.0.1:53"},
        {"listen": "/run/replica/unbound.sock", "target": "[::1]:8953"}])
    assert sorted(units) == ["replica-proxy-unbound-0.service", "replica-proxy-unbound-0.socket",
                             "replica-proxy-unbound-1.service", "replica-proxy-unbound-1.socket"]
    assert "ListenStream=127.0.0.1:53" in units["replica-proxy-unbound-0.socket"]
    assert "WantedBy=sockets.target" in units["replica-proxy-unbound-0.socket"]
    service = units["replica-proxy-unbound-1.service"]
    assert "JoinsNamespaceOf=unbound.service" in service
    assert "PrivateNetwork=yes" in service and "CapabilityBoundingSet=\n" in service
    assert f"ExecStart={sb.SOCKET_PROXYD} [::1]:8953" in service
    assert "ListenStream=/run/replica/unbound.sock" in units["replica-proxy-unbound-1.socket"]


@pytest.mark.parametrize("proxy, message", [
    ({"listen": "53", "target": "127.0.0.1:53"}, "proxy listen"),
    ({"listen": "127.0.0.1:53", "target": "relative.sock"}, "proxy target"),
    ({"listen": "127.0.0.1:53"}, "exactly listen and target"),
    ({"listen": "127.0.0.1:53\nExecStart=/bin/sh", "target": "127.0.0.1:53"}, "proxy listen"),
])
def test_bad_proxies(proxy, message):
    with pytest.raises(sb.SandboxError, match=message):
        sb.proxy_units("unbound.service", "unbound", [proxy])


@pytest.mark.parametrize("path,escaped", [
    ("/var/lib/postgresql", "var-lib-postgresql"),
    ("/srv/my-data/x.y", "srv-my\\x2ddata-x.y"),
    ("//srv//cow/", "srv-cow"),
    ("/.hidden/a b", "\\x2ehidden-a\\x20b"),
    ("/var/lib/ä", "var-lib-\\xc3\\xa4"),
])
def test_escape_path_like_systemd_escape(path, escaped):
    if " " in path:
        with pytest.raises(sb.SandboxError):
            sb.escape_path(path)
        return
    assert sb.escape_path(path) == escaped


def test_escape_path_matches_systemd_escape_when_installed():
    import shutil
    import subprocess
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape is not installed here")
    for path in ("/var/lib/postgresql", "/srv/my-data/x.y", "/var/lib/a_b:c", "/.dot/x", "/var/lib/ä+b"):
        expected = subprocess.run([tool, "--path", path], check=True, text=True,
                                  capture_output=True).stdout.strip()
        assert sb.escape_path(path) == expected, path


def test_state_mount_unit():
    units = sb.state_mount_unit("postgresql@15-main.service", "/var/lib/postgresql",
                                "/srv/cow/state/postgresql")
    assert list(units) == ["var-lib-postgresql.mount"]
    text = units["var-lib-postgresql.mount"]
    assert "What=/srv/cow/state/postgresql\nWhere=/var/lib/postgresql\nType=none\nOptions=bind\n" in text
    assert "Before=postgresql@15-main.service" in text
    assert "RequiresMountsFor=/srv/cow/state/postgresql" in text
    assert "WantedBy=local-fs.target" in text
    for path, subvolume in (("relative", "/srv/x"), ("/var/lib/x", "/"), ("/", "/srv/x")):
        with pytest.raises(sb.SandboxError):
            sb.state_mount_unit("x.service", path, subvolume)


def test_dropin_with_a_shifted_state_path():
    text = sb.render_dropin({"writable": ["/run/postgresql"]}, name="postgresql",
                            state_path="/var/lib/postgresql")
    head, service = text.split("[Service]\n")
    assert "[Unit]\nRequiresMountsFor=/var/lib/postgresql\n" in head
    assert "ReadWritePaths=/run/postgresql /var/lib/postgresql\n" in service
    # declared writable already: not twice
    again = sb.render_dropin({"writable": ["/var/lib/postgresql"]}, state_path="/var/lib/postgresql")
    assert "ReadWritePaths=/var/lib/postgresql\n" in again
    assert "[Unit]" not in sb.render_dropin({})
    with pytest.raises(sb.SandboxError):
        sb.render_dropin({}, state_path="var/lib/x")
