# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's offline internet: one lab host, ``lab-internet``, that stands in for the public
services the roles talk to, with real software: a lab certificate authority, DNS (dnsmasq)
answering the public names with the fixture's address and forwarding the rest, Let's Encrypt
(pebble), AWS S3 and Route53 (moto's server behind an nginx TLS front) and a mail server
(postfix, delivering every message to one IMAP mailbox of dovecot).

A service is one entry of SERVICES: its Debian packages (pre-baked into the fixture's image),
the DNS names it owns, the routes of the TLS front on port 443, the files and units written
into the fixture before it boots, an optional process run from the CI machine inside the
fixture's network and PID namespaces (moto, which Debian does not package), readiness probes
and endpoints. Only the Python standard library is used, like replica_lab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replica_lab  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "lab-internet"
#: the mail server's name (SMTP on 25, IMAP on 143)
MAIL_NAME = "mail.replica-lab.example"
MAIL_USER = "alerts"
MAIL_PASSWORD = "replica-lab"
#: where the fixture keeps its configuration (inside it)
CONF = "/etc/replica-internet"
HOSTS_DIR = f"{CONF}/hosts"
TLS_CERT = f"{CONF}/tls/front.crt"
TLS_KEY = f"{CONF}/tls/front.key"
#: where a client lab host finds the lab CA (update-ca-certificates adds it to the system store)
CLIENT_CA = "/usr/local/share/ca-certificates/replica-lab-ca.crt"
MOTO_PORT = 5000
PEBBLE_PORT = 14000
PEBBLE_MANAGEMENT_PORT = 15000
ACME_NAME = "acme-v02.api.letsencrypt.org"
ACME_STAGING_NAME = "acme-staging-v02.api.letsencrypt.org"


@dataclasses.dataclass(frozen=True)
class Route:
    """A route of the TLS front on port 443, chosen by the client's SNI: *passthrough* hands
    the TLS connection to *backend* as it is (the backend has its own certificate), otherwise
    nginx terminates TLS with the front certificate and proxies to *backend* (over HTTPS with
    *backend_tls*), *paths* mapping request paths to the backend's. *names* are nginx host
    names: ``.example.com`` is example.com and all its subdomains."""
    names: tuple
    backend: str
    passthrough: bool = False
    backend_tls: bool = False
    paths: tuple = ()


@dataclasses.dataclass(frozen=True)
class Service:
    """One service of the fixture. *names*: DNS names answered with the fixture's address (each
    with all its subdomains); *tls_names*: more names of the front certificate (wildcards);
    *files*: ``ctx -> {path: text}`` written into the fixture before it boots; *units*:
    ``{name: text}`` systemd units written there and enabled; *links*: ``{path: target}``
    symbolic links made there; *outside*: ``ctx -> argv`` run
    from the CI machine in the fixture's network and PID namespaces; *probes*: ``("tcp", port)``,
    ``("dns", name)`` or ``("https", port, host, path)``, all passing when it is ready;
    *endpoints*: ``ctx -> {name: value}``."""
    packages: tuple = ()
    names: tuple = ()
    tls_names: tuple = ()
    routes: tuple = ()
    files: object = None
    units: dict = dataclasses.field(default_factory=dict)
    links: dict = dataclasses.field(default_factory=dict)
    outside: object = None
    probes: tuple = ()
    endpoints: object = None


# ---------------------------------------------------------------------------------------------
# Configuration texts (pure; unit tested in tests/unit/scripts/test_replica_internet.py)
# ---------------------------------------------------------------------------------------------

def dnsmasq_conf(address, names):
    """dnsmasq: *names* (and their subdomains) are the fixture (never forwarded, not even their
    AAAA queries), names in HOSTS_DIR are what tests add, anything else goes to the fixture's
    own upstream (its /etc/resolv.conf, the CI machine's)."""
    lines = ["# written by scripts/replica_internet.py", f"hostsdir={HOSTS_DIR}", "cache-size=1000",
             "no-negcache"]
    for name in sorted(set(names)):
        lines += [f"address=/{name}/{address}", f"local=/{name}/"]
    return "\n".join(lines) + "\n"


def nginx_conf(routes, cert=TLS_CERT, key=TLS_KEY, internal_port=8443):
    """nginx: port 443 picks a route by SNI (``ssl_preread``); terminated routes are served on
    127.0.0.1:*internal_port*, the first one also for a client without SNI."""
    passthrough = [r for r in routes if r.passthrough]
    terminated = [r for r in routes if not r.passthrough]
    out = ["# written by scripts/replica_internet.py", "user www-data;", "worker_processes 2;",
           "pid /run/nginx.pid;", "error_log /var/log/nginx/error.log;",
           "include /etc/nginx/modules-enabled/*.conf;", "events { worker_connections 512; }",
           "stream {", "  map $ssl_preread_server_name $replica_backend {", "    hostnames;"]
    out += [f"    {name} {route.backend};" for route in passthrough for name in route.names]
    out += [f"    default 127.0.0.1:{internal_port};", "  }",
            "  server { listen 443; ssl_preread on; proxy_pass $replica_backend; }", "}",
            "http {", "  access_log /var/log/nginx/access.log;", "  client_max_body_size 0;",
            "  proxy_buffering off;", "  proxy_request_buffering off;", "  proxy_http_version 1.1;",
            f"  ssl_certificate {cert};", f"  ssl_certificate_key {key};"]
    for number, route in enumerate(terminated):
        default = " default_server" if number == 0 else ""
        scheme = "https" if route.backend_tls else "http"
        out += ["  server {", f"    listen 127.0.0.1:{internal_port} ssl{default};",
                f"    server_name {' '.join(route.names)};", "    proxy_set_header Host $host;"]
        out += [f"    location = {path} {{ proxy_pass {scheme}://{route.backend}{to}; }}"
                for path, to in route.paths]
        out += [f"    location / {{ proxy_pass {scheme}://{route.backend}; }}", "  }"]
    out.append("}")
    return "\n".join(out) + "\n"


def front_names(services):
    """The names of the front certificate: every owned name, its wildcard, and the extras."""
    names = []
    for service in services:
        for name in service.names:
            names += [name, f"*.{name}"]
        names += list(service.tls_names)
    return list(dict.fromkeys(names))


PEBBLE_UNIT = f"""[Unit]
Description=pebble, the lab's Let's Encrypt (ACME) server
After=network.target dnsmasq.service
[Service]
Environment=PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0
ExecStart=/usr/bin/pebble -config {CONF}/pebble.json -dnsserver 127.0.0.1:53
Restart=on-failure
RestartSec=1
[Install]
WantedBy=multi-user.target
"""


def pebble_conf(_ctx):
    return {f"{CONF}/pebble.json": json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{PEBBLE_PORT}",
        "managementListenAddress": f"0.0.0.0:{PEBBLE_MANAGEMENT_PORT}",
        "certificate": TLS_CERT, "privateKey": TLS_KEY,
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}, indent=2) + "\n"}


def postfix_conf(ctx):
    """postfix: mail for any domain, from the lab subnet, goes to one Maildir (/var/mail/sink)."""
    return {"/etc/mailname": f"{MAIL_NAME}\n", "/etc/postfix/main.cf": f"""# written by scripts/replica_internet.py
compatibility_level = 3.6
myhostname = {MAIL_NAME}
myorigin = $myhostname
mydestination =
relay_domains =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 {ctx['subnet']}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = static:all
virtual_mailbox_base = /var/mail
virtual_mailbox_maps = static:sink/
virtual_minimum_uid = 8
virtual_uid_maps = static:8
virtual_gid_maps = static:8
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
append_dot_mydomain = no
"""}


def dovecot_conf(_ctx):
    """dovecot: IMAP (no TLS) of the catch-all Maildir, one user with a fixed password."""
    return {"/etc/dovecot/replica-users": f"{MAIL_USER}:{{PLAIN}}{MAIL_PASSWORD}\n",
            "/etc/dovecot/dovecot.conf": """# written by scripts/replica_internet.py
protocols = imap
listen = *
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:/var/mail/sink
first_valid_uid = 8
first_valid_gid = 8
passdb {
  driver = passwd-file
  args = scheme=PLAIN /etc/dovecot/replica-users
}
userdb {
  driver = static
  args = uid=8 gid=8 home=/var/mail/sink
}
"""}


def moto_argv(ctx):
    return [ctx["moto_server"], "-H", "127.0.0.1", "-p", str(MOTO_PORT)]


#: The fixture's services. Adding one: its packages, names, routes, files/units and probes.
SERVICES = {
    "dns": Service(
        packages=("dnsmasq",),
        files=lambda ctx: {"/etc/dnsmasq.d/replica-internet.conf": dnsmasq_conf(ctx["address"], ctx["names"])},
        probes=(("dns", ACME_NAME),),
        endpoints=lambda ctx: {"dns": f"{ctx['address']}:53"}),
    "front": Service(
        packages=("nginx", "libnginx-mod-stream", "openssl"),
        files=lambda ctx: {"/etc/nginx/nginx.conf": nginx_conf(ctx["routes"])},
        probes=(("tcp", 443),)),
    "acme": Service(
        packages=("pebble",),
        names=(ACME_NAME, ACME_STAGING_NAME),
        # terminated by the front: Let's Encrypt's directory is /directory, pebble's /dir
        routes=(Route((ACME_NAME, ACME_STAGING_NAME), f"127.0.0.1:{PEBBLE_PORT}", backend_tls=True,
                      paths=(("/directory", "/dir"),)),),
        files=pebble_conf,
        units={"replica-pebble.service": PEBBLE_UNIT},
        probes=(("https", 443, ACME_NAME, "/directory"),
                ("https", PEBBLE_MANAGEMENT_PORT, ACME_NAME, "/roots/0")),
        endpoints=lambda ctx: {"acme_directory": f"https://{ACME_NAME}/directory",
                               "acme_staging_directory": f"https://{ACME_STAGING_NAME}/directory",
                               "acme_roots": f"https://{ACME_NAME}:{PEBBLE_MANAGEMENT_PORT}/roots/0",
                               "acme_intermediates": f"https://{ACME_NAME}:{PEBBLE_MANAGEMENT_PORT}"
                                                     "/intermediates/0"}),
    "aws": Service(
        names=("amazonaws.com",),
        tls_names=("*.s3.amazonaws.com", "*.s3.us-east-1.amazonaws.com"),
        routes=(Route((".amazonaws.com",), f"127.0.0.1:{MOTO_PORT}"),),
        outside=moto_argv,
        probes=(("https", 443, "s3.amazonaws.com", "/"),),
        endpoints=lambda ctx: {"s3": "https://s3.amazonaws.com", "route53": "https://route53.amazonaws.com"}),
    "mail": Service(
        packages=("postfix", "dovecot-imapd"),
        names=(MAIL_NAME,),
        files=lambda ctx: dict(postfix_conf(ctx), **dovecot_conf(ctx)),
        # what postfix's generator makes, made here: with this main.cf its postconf call makes
        # systemd wait ~1.8 s before it starts anything
        links={"/etc/systemd/system-generators/postfix-instance-generator": "/dev/null",
               "/etc/systemd/system/postfix.service.wants/postfix@-.service": "/lib/systemd/system/postfix@.service"},
        probes=(("tcp", 25), ("tcp", 143)),
        endpoints=lambda ctx: {"smtp": f"{MAIL_NAME}:25", "imap": f"{MAIL_NAME}:143",
                               "imap_user": MAIL_USER, "imap_password": MAIL_PASSWORD}),
}


# ---------------------------------------------------------------------------------------------
# DNS and HTTPS clients for the probes (standard library only)
# ---------------------------------------------------------------------------------------------

def dns_packet(name, qtype=1, ident=0):
    """A DNS query for *name* (type *qtype*: 1 A, 28 AAAA), recursion desired."""
    labels = b"".join(bytes([len(part)]) + part.encode("ascii") for part in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(packet, offset):
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def dns_answers(packet):
    """``(ident, rcode, [IPv4 addresses])`` of a DNS response."""
    ident, flags, qdcount, ancount, _ns, _ar = struct.unpack("!HHHHHH", packet[:12])
    offset = 12
    for _question in range(qdcount):
        offset = _skip_name(packet, offset) + 4
    addresses = []
    for _answer in range(ancount):
        offset = _skip_name(packet, offset)
        rtype, _rclass, _ttl, length = struct.unpack("!HHIH", packet[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(packet[offset:offset + 4]))
        offset += length
    return ident, flags & 0xF, addresses


def dns_query(server, name, qtype=1, timeout=1.0):
    """Ask *server* (port 53, UDP) for *name*: ``(rcode, [IPv4 addresses])``."""
    ident = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(dns_packet(name, qtype, ident), (server, 53))
        while True:
            got, rcode, addresses = dns_answers(sock.recv(4096))
            if got == ident:
                return rcode, addresses


def https_get(address, port, host, path, cafile, timeout=2.0):
    """GET https://*host*:*port*/*path* from *address* (SNI and Host *host*, verified against
    *cafile*): ``(status, body)``."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((address, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def probe(kind, address, cafile, *args):
    """Whether one probe passes now."""
    try:
        if kind == "tcp":
            with socket.create_connection((address, args[0]), timeout=0.5):
                return True
        if kind == "dns":
            return dns_query(address, args[0], timeout=0.5)[1] == [address]
        if kind == "https":
            return https_get(address, args[0], args[1], args[2], cafile, timeout=1.0)[0] == 200
    except (OSError, ValueError, IndexError, struct.error):
        return False
    raise replica_lab.LabError(f"unknown probe kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------------------------

def _openssl(*argv):
    replica_lab.run(["openssl", *argv])


def _write_into(directory, path, text, mode=0o644):
    """Write *path* (absolute inside the machine) into the machine's root *directory*, refusing
    a path that leaves it through a symbolic link."""
    target = os.path.join(directory, path.lstrip("/"))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    real_dir = os.path.realpath(directory)
    if not os.path.realpath(parent).startswith(real_dir + os.sep):
        raise replica_lab.LabError(f"{path} leaves the machine's root")
    if os.path.islink(target):
        os.unlink(target)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(target, mode)


class Internet:
    """The offline internet of *lab*: ``up()`` (idempotent), ``down()``, ``trust(machine)``,
    ``add_name(name, address)``, ``endpoints``."""

    def __init__(self, lab=None, services=None):
        self.lab = lab or replica_lab.Lab()
        self.services = dict(services or SERVICES)
        self.state_dir = os.path.join(self.lab.run_dir, "internet")
        self.ca_dir = os.path.join(self.lab.root, "internet")
        self.ca_cert = os.path.join(self.ca_dir, "ca.crt")
        self.ca_key = os.path.join(self.ca_dir, "ca.key")
        self.state_path = os.path.join(self.state_dir, "state.json")
        #: whether up() started the fixture (False: it reused a running one)
        self.started = False
        self._early_error = None

    # -- the table ----------------------------------------------------------------------
    def packages(self):
        return sorted({p for s in self.services.values() for p in s.packages})

    def _ctx(self, address):
        services = list(self.services.values())
        return {"address": address, "subnet": str(self.lab.subnet), "ca": self.ca_cert,
                "names": [n for s in services for n in s.names],
                "routes": [r for s in services for r in s.routes],
                "moto_server": moto_server()}

    @property
    def address(self):
        return self.state()["address"]

    @property
    def endpoints(self):
        return self.state()["endpoints"]

    def state(self):
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            raise replica_lab.LabError("the lab's internet is not up: 'scripts/lab internet up'") from None

    # -- certificates -------------------------------------------------------------------
    def ensure_ca(self):
        """The lab CA (kept in the lab's root): created once, reused by every fixture start."""
        os.makedirs(self.ca_dir, mode=0o700, exist_ok=True)
        with self.lab.lock("internet-ca"):
            if os.path.exists(self.ca_cert) and os.path.exists(self.ca_key):
                return self.ca_cert
            with tempfile.TemporaryDirectory() as tmp:
                cnf = os.path.join(tmp, "ca.cnf")
                with open(cnf, "w", encoding="ascii") as handle:
                    handle.write("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
                                 "[dn]\nO = replica.cloud lab\nCN = replica.cloud lab CA\n"
                                 "[ext]\nbasicConstraints = critical,CA:TRUE\n"
                                 "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n")
                key, cert = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.crt")
                _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                         "-nodes", "-keyout", key, "-out", cert, "-days", "3650", "-config", cnf)
                os.chmod(key, 0o600)
                os.replace(key, self.ca_key)
                os.replace(cert, self.ca_cert)
        return self.ca_cert

    def issue(self, names, ips=(), days=825):
        """A key and certificate for *names* (and IP addresses *ips*) signed by the lab CA:
        ``(key_pem, cert_pem)``."""
        self.ensure_ca()
        with tempfile.TemporaryDirectory() as tmp:
            key, csr, cert, ext = (os.path.join(tmp, f) for f in ("k.pem", "r.csr", "c.pem", "ext.cnf"))
            san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
            with open(ext, "w", encoding="ascii") as handle:
                handle.write("[ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
                             f"extendedKeyUsage = serverAuth\nsubjectAltName = {san}\n"
                             "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
            _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}")
            _openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                     "-set_serial", f"0x{secrets.token_hex(12)}", "-days", str(days), "-out", cert,
                     "-extfile", ext, "-extensions", "ext")
            return replica_lab._read(key), replica_lab._read(cert)  # pylint: disable=protected-access

    # -- up / down ------------------------------------------------------------------------
    def _prepare(self, directory, address):
        """Everything the fixture's services need, written into its fork before it boots."""
        ctx = self._ctx(address)
        key, cert = self.issue(front_names(self.services.values()), ips=[address])
        _write_into(directory, TLS_KEY, key, 0o600)
        _write_into(directory, TLS_CERT, cert)
        os.makedirs(os.path.join(directory, HOSTS_DIR.lstrip("/")), exist_ok=True)
        wants = os.path.join(directory, "etc/systemd/system/multi-user.target.wants")
        for service in self.services.values():
            for path, text in (service.files(ctx) if service.files else {}).items():
                _write_into(directory, path, text)
            for unit, text in service.units.items():
                _write_into(directory, f"/etc/systemd/system/{unit}", text)
                os.makedirs(wants, exist_ok=True)
                link = os.path.join(wants, unit)
                if not os.path.lexists(link):
                    os.symlink(f"/etc/systemd/system/{unit}", link)
            for path, target in service.links.items():
                _write_into(directory, path, "")
                link = os.path.join(directory, path.lstrip("/"))
                os.unlink(link)
                os.symlink(target, link)

    def up(self, timeout=120):
        """Start the fixture, or reuse the running one; wait until every service answers.
        Returns the state (address, endpoints, timings)."""
        with self.lab.lock("internet"):
            started = time.monotonic()
            image = os.path.basename(self.lab.image(self.packages()))
            image_seconds = time.monotonic() - started
            machine = self.lab.get(NAME)
            if machine and machine.alive() and machine.image == image and os.path.exists(self.state_path):
                state = self.state()
                if state.get("leader") == machine.leader:
                    self._start_outside(machine, only_dead=True)
                    self._wait_ready(machine.address, time.monotonic() + 30)
                    self.started = False
                    return state
            if machine:
                self.lab.down(NAME)
            # the services run from outside start while the fixture boots
            early = threading.Thread(target=self._start_outside_early, args=(started + timeout,), daemon=True)
            early.start()
            machine = self.lab.up(NAME, packages=self.packages(), prepare=self._prepare, timeout=timeout)
            booted = time.monotonic()
            try:
                early.join(timeout=30)
                if self._early_error:
                    raise self._early_error
                self._wait_ready(machine.address, started + timeout)
            except BaseException as exc:
                journal = self.lab.exec(machine, ["journalctl", "-b", "--no-pager", "-q", "-n", "40",
                                                  "-p", "warning"], check=False).stdout
                if not os.environ.get("REPLICA_INTERNET_KEEP_FAILED"):
                    self.lab.down(NAME)
                if isinstance(exc, replica_lab.LabError):
                    raise replica_lab.LabError(f"{exc}\n{journal}") from exc
                raise
            ready = time.monotonic()
            ctx = self._ctx(machine.address)
            endpoints = {"address": machine.address, "ca_cert": self.ca_cert}
            for service in self.services.values():
                endpoints.update(service.endpoints(ctx) if service.endpoints else {})
            state = {"address": machine.address, "leader": machine.leader, "endpoints": endpoints,
                     "image_seconds": round(image_seconds, 3),
                     "boot_seconds": machine.boot_seconds,
                     "ready_seconds": round(ready - booted + machine.boot_seconds, 3)}
            os.makedirs(self.state_dir, exist_ok=True)
            with open(self.state_path + ".tmp", "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=2)
            os.replace(self.state_path + ".tmp", self.state_path)
            self.started = True
            return state

    def _start_outside_early(self, deadline):
        self._early_error = None
        while time.monotonic() < deadline:
            machine = self.lab.get(NAME)
            if machine and machine.leader and machine.pidns:
                try:
                    self._start_outside(machine)
                except Exception as exc:  # pylint: disable=broad-except
                    self._early_error = exc
                return
            time.sleep(0.02)

    def _start_outside(self, machine, only_dead=False):
        """Start the services that run from the CI machine (their files are this machine's) in
        the fixture's network namespace (they serve its addresses) and PID namespace, as
        orphans (``setsid --fork``) that the fixture's init adopts: they die with it and it
        reaps them, so Lab.down of the fixture ends them like its own processes. (A parent
        outside, such as nsenter waiting on it, would be stopped by systemd-shutdown's SIGSTOP
        sweep and never reap it, and the fixture's init would wait for it for ever.)"""
        ctx = self._ctx(machine.address)
        os.makedirs(self.state_dir, exist_ok=True)
        for name, service in self.services.items():
            if not service.outside:
                continue
            argv = service.outside(ctx)
            if only_dead and outside_pids(machine, argv[0]):
                continue
            env = {"PATH": os.environ.get("PATH", replica_lab.PATH_IN_MACHINE), "HOME": "/root",
                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            with open(os.path.join(self.state_dir, f"{name}.log"), "a", encoding="utf-8") as log:
                subprocess.run(["nsenter", f"--target={machine.leader}", "--net", "--pid", "--",
                                "setsid", "--fork", *argv], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, env=env, check=True, timeout=30)

    def _wait_ready(self, address, deadline):
        pending = [p for s in self.services.values() for p in s.probes]
        while pending:
            pending = [p for p in pending if not probe(p[0], address, self.ca_cert, *p[1:])]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise replica_lab.LabError(f"{NAME}: not ready, failing probes {pending}; see "
                                           f"'scripts/lab shell {NAME} journalctl -b' and {self.state_dir}")
            time.sleep(0.05)

    def status(self):
        """``{probe: passes}`` of the running fixture."""
        address = self.address
        return {" ".join(map(str, p)): probe(p[0], address, self.ca_cert, *p[1:])
                for s in self.services.values() for p in s.probes}

    def down(self):
        with self.lab.lock("internet"):
            self.lab.down(NAME)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)

    # -- clients --------------------------------------------------------------------------
    def trust(self, machine):
        """Make lab host *machine* a client: it trusts the lab CA (system store) and resolves
        through the fixture (its /etc/resolv.conf; nspawn copied the CI machine's at boot)."""
        if isinstance(machine, str):
            machine = self.lab.require(machine)
        script = (f'printf "%s" "$1" > {CLIENT_CA} && update-ca-certificates >/dev/null && '
                  f'rm -f /etc/resolv.conf && printf "nameserver %s\\noptions timeout:2\\n" "$2" > /etc/resolv.conf')
        self.lab.exec(machine, ["/bin/sh", "-ec", script, "sh", replica_lab._read(self.ca_cert),  # pylint: disable=protected-access
                                self.address])

    def add_name(self, name, address, timeout=10):
        """Make the fixture's DNS answer *name* with *address* (dnsmasq rereads HOSTS_DIR); returns
        once it does."""
        if not all(c.isalnum() or c in "-." for c in name):
            raise replica_lab.LabError(f"invalid DNS name {name!r}")
        self.lab.exec(NAME, ["/bin/sh", "-ec", f'printf "%s %s\\n" "$1" "$2" > {HOSTS_DIR}/"$2"',
                             "sh", str(address), name])
        deadline = time.monotonic() + timeout
        while dns_query(self.address, name)[1] != [str(address)]:
            if time.monotonic() > deadline:
                raise replica_lab.LabError(f"{NAME}: DNS does not answer {name} with {address}")
            time.sleep(0.05)

    def remove_name(self, name):
        self.lab.exec(NAME, ["rm", "-f", f"{HOSTS_DIR}/{name}"])


def outside_pids(machine, program):
    """Processes of *program* (a path) running in *machine*'s PID namespace."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if replica_lab._pidns(int(entry)) == machine.pidns and program.encode() in argv[:2]:  # pylint: disable=protected-access
                found.append(int(entry))
        except OSError:
            continue
    return found


def moto_server():
    """moto's server: REPLICA_MOTO_SERVER, the checkout's .venv (requirements.txt), or next to
    this Python."""
    for candidate in (os.environ.get("REPLICA_MOTO_SERVER"),
                      os.path.join(ROOT, ".venv", "bin", "moto_server"),
                      os.path.join(os.path.dirname(sys.executable), "moto_server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise replica_lab.LabError("moto_server not found: run scripts/setup (moto[server] is in requirements.txt)")


def cli(lab, action, names=()):
    """``scripts/lab internet up|down|status|trust NAME...``."""
    net = Internet(lab)
    if action == "trust":
        for name in names:
            net.trust(name)
            print(f"{name}\ttrusts {NAME} (CA, resolver {net.address})")
    elif action == "up":
        state = net.up()
        print(f"{NAME}\taddress={state['address']}\t{'started' if net.started else 'reused'}"
              f"\tboot={state['boot_seconds']}s\tready={state['ready_seconds']}s")
        for key, value in state["endpoints"].items():
            print(f"{key}\t{value}")
    elif action == "down":
        net.down()
        print(f"{NAME}\tremoved")
    else:
        machine = lab.get(NAME)
        if not machine or not machine.alive():
            print(f"{NAME}\tdown")
            return 1
        state = net.state()
        print(f"{NAME}\taddress={state['address']}\tleader={machine.leader}")
        for key, value in state["endpoints"].items():
            print(f"{key}\t{value}")
        results = net.status()
        for name, passes in results.items():
            print(f"probe {name}\t{'ok' if passes else 'FAILING'}")
        return 0 if all(results.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(replica_lab.Lab(), sys.argv[1] if len(sys.argv) > 1 else "status"))
