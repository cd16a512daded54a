# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The offline internet's pure parts: its service table, the configuration it writes, its DNS client."""

from __future__ import annotations

import os
import socket
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts"))

import replica_internet as ri  # noqa: E402  pylint: disable=wrong-import-position


def test_the_table_names_the_public_services():
    names = [n for s in ri.SERVICES.values() for n in s.names]
    for name in ("acme-v02.api.letsencrypt.org", "acme-staging-v02.api.letsencrypt.org", "amazonaws.com",
                 ri.MAIL_NAME):
        assert name in names
    packages = ri.Internet.packages(type("I", (), {"services": ri.SERVICES})())
    assert {"dnsmasq", "pebble", "nginx", "libnginx-mod-stream", "postfix", "dovecot-imapd"} <= set(packages)
    for service in ri.SERVICES.values():
        for probe in service.probes:
            assert probe[0] in ("tcp", "dns", "https")


def test_dnsmasq_answers_owned_names_and_reads_added_ones():
    conf = ri.dnsmasq_conf("10.0.0.5", ["amazonaws.com", "acme-v02.api.letsencrypt.org"])
    assert "address=/amazonaws.com/10.0.0.5" in conf.splitlines()
    assert "local=/amazonaws.com/" in conf.splitlines()  # AAAA is not forwarded either
    assert f"hostsdir={ri.HOSTS_DIR}" in conf
    assert "no-resolv" not in conf  # the rest is forwarded to the fixture's upstream


def test_front_certificate_covers_names_subdomains_and_buckets():
    names = ri.front_names(ri.SERVICES.values())
    for name in ("amazonaws.com", "*.amazonaws.com", "*.s3.amazonaws.com", "acme-v02.api.letsencrypt.org"):
        assert name in names
    assert len(names) == len(set(names))


def test_nginx_routes_by_sni():
    routes = [ri.Route(("a.example",), "127.0.0.1:1", passthrough=True),
              ri.Route((".aws.example",), "127.0.0.1:2"),
              ri.Route(("acme.example",), "127.0.0.1:3", backend_tls=True, paths=(("/directory", "/dir"),))]
    conf = ri.nginx_conf(routes)
    assert "a.example 127.0.0.1:1;" in conf
    assert "default 127.0.0.1:8443;" in conf
    assert "listen 127.0.0.1:8443 ssl default_server;" in conf  # the first terminated route
    assert "proxy_pass http://127.0.0.1:2;" in conf
    assert "location = /directory { proxy_pass https://127.0.0.1:3/dir; }" in conf
    assert conf.count("{") == conf.count("}")


def test_acme_directory_is_lets_encrypts_path():
    route = ri.SERVICES["acme"].routes[0]
    assert ("/directory", "/dir") in route.paths and ri.ACME_NAME in route.names


def test_dns_packet_and_answers():
    query = ri.dns_packet("s3.amazonaws.com", 1, ident=0x1234)
    assert query[:2] == b"\x12\x34" and query.endswith(b"\x02s3\x09amazonaws\x03com\x00\x00\x01\x00\x01")
    # a response: the question, then one A answer naming it by a compression pointer
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("10.213.0.9")
    assert ri.dns_answers(header + query[12:] + answer) == (0x1234, 0, ["10.213.0.9"])
    nxdomain = struct.pack("!HHHHHH", 7, 0x8183, 1, 0, 0, 0) + query[12:]
    assert ri.dns_answers(nxdomain) == (7, 3, [])


def test_postfix_takes_mail_for_any_domain_from_the_lab():
    main = ri.postfix_conf({"subnet": "10.213.0.0/24"})["/etc/postfix/main.cf"]
    assert "virtual_mailbox_domains = static:all" in main
    assert "mynetworks = 127.0.0.0/8 10.213.0.0/24" in main
    dovecot = ri.dovecot_conf({})
    assert dovecot["/etc/dovecot/replica-users"] == f"{ri.MAIL_USER}:{{PLAIN}}{ri.MAIL_PASSWORD}\n"
