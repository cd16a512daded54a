# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's offline internet, used from another lab host as the roles will use it: pebble
issues a certificate to certbot, moto answers S3 and Route53 on their public names, a mail
reaches the IMAP mailbox, and the DNS answers the public names and forwards the rest."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

import replica_internet

#: one client for the whole module: certbot, boto3 (and python3's smtplib/imaplib)
CLIENT_PACKAGES = ["certbot", "python3-boto3"]


@pytest.fixture(scope="module")
def client(lab, internet):
    machine = lab.up("it-inet-client", packages=CLIENT_PACKAGES)
    try:
        internet.trust(machine)
        yield machine
    finally:
        lab.down(machine.name)


def sh(lab, machine, script, *args):
    return lab.exec(machine, ["/bin/sh", "-ec", script, "sh", *args]).stdout


def py(lab, machine, source, *args):
    return lab.exec(machine, ["python3", "-c", source, *args]).stdout


def test_pebble_issues_a_certificate_to_certbot(lab, internet, client):
    name = f"www.{client.name}.replica-lab.example"
    internet.add_name(name, client.address)
    sh(lab, client, "certbot certonly --standalone --server https://acme-v02.api.letsencrypt.org/directory "
                    '-d "$1" --register-unsafely-without-email --agree-tos --non-interactive --quiet', name)
    live = f"/etc/letsencrypt/live/{name}"
    san = sh(lab, client, 'openssl x509 -in "$1/cert.pem" -noout -ext subjectAltName', live)
    assert re.findall(r"DNS:([^,\s]+)", san) == [name]
    # the chain ends in pebble's own root, fetched from its management interface (TLS verified
    # against the lab CA the client now trusts)
    py(lab, client, "import sys, urllib.request\n"
                    "open('/tmp/pebble-root.pem', 'wb').write(urllib.request.urlopen(sys.argv[1]).read())\n",
       internet.endpoints["acme_roots"])
    verified = sh(lab, client, 'openssl verify -CAfile /tmp/pebble-root.pem -untrusted "$1/chain.pem" "$1/cert.pem"',
                  live)
    assert verified.strip().endswith(": OK")
    # and not to the lab CA: the certificate is pebble's, not the fixture's TLS front's
    assert lab.exec(client, ["openssl", "verify", "-CAfile", replica_internet.CLIENT_CA, f"{live}/cert.pem"],
                    check=False).returncode != 0


S3_SCRIPT = """
import json, boto3
session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                region_name="us-east-1")
s3 = session.client("s3")
s3.create_bucket(Bucket="replica-lab-test")
s3.put_object(Bucket="replica-lab-test", Key="hello.txt", Body=b"hello from the lab")
body = s3.get_object(Bucket="replica-lab-test", Key="hello.txt")["Body"].read().decode()
route53 = session.client("route53")
zone = route53.create_hosted_zone(Name="replica-lab.example.", CallerReference="it-inet")
zones = [z["Name"] for z in route53.list_hosted_zones()["HostedZones"]]
print(json.dumps({"endpoint": s3.meta.endpoint_url, "route53": route53.meta.endpoint_url, "body": body,
                  "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]], "zones": zones}))
"""


def test_moto_answers_s3_and_route53_on_their_public_names(lab, internet, client):
    result = json.loads(py(lab, client, S3_SCRIPT))
    # the default endpoints: no endpoint_url, the public names resolve to the fixture and TLS
    # verifies against the lab CA
    assert result["endpoint"] == "https://s3.amazonaws.com"
    assert result["route53"] == "https://route53.amazonaws.com"
    assert result["body"] == "hello from the lab"
    assert "replica-lab-test" in result["buckets"]
    assert "replica-lab.example." in result["zones"]
    # the bucket is in the fixture's moto: its own API, asked from the CI machine
    status, body = replica_internet.https_get(internet.address, 443, "s3.amazonaws.com", "/moto-api/data.json",
                                              internet.ca_cert)
    assert status == 200
    assert "replica-lab-test" in json.dumps(json.loads(body)["s3"])


MAIL_SCRIPT = """
import imaplib, smtplib, sys, time
from email.message import EmailMessage
host, user, password, token = sys.argv[1:5]
recipients = ["alerts@example.org", "oncall@another-domain.example"]
for rcpt in recipients:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alertmanager@client.example", rcpt, f"{token} {rcpt}"
    msg.set_content("disk almost full")
    with smtplib.SMTP(host, 25, timeout=10) as smtp:
        smtp.send_message(msg)
deadline, found = time.monotonic() + 20, []
while time.monotonic() < deadline:
    imap = imaplib.IMAP4(host, 143)
    imap.login(user, password)
    imap.select("INBOX")
    found = imap.search(None, "SUBJECT", token)[1][0].split()
    subjects = [imap.fetch(n, "(BODY[HEADER.FIELDS (SUBJECT TO)])")[1][0][1].decode() for n in found]
    imap.logout()
    if len(found) == len(recipients):
        break
    time.sleep(0.2)
print("\\n".join(subjects))
"""


def test_mail_from_a_client_arrives_in_the_imap_mailbox(lab, internet, client):
    token = f"replica-{secrets.token_hex(6)}"
    endpoints = internet.endpoints
    out = py(lab, client, MAIL_SCRIPT, replica_internet.MAIL_NAME, endpoints["imap_user"],
             endpoints["imap_password"], token)
    assert f"Subject: {token} alerts@example.org" in out
    assert f"Subject: {token} oncall@another-domain.example" in out  # every domain: one catch-all


def test_dns_answers_public_names_and_forwards_the_rest(lab, internet, client):
    fixture = internet.address
    assert sh(lab, client, "cat /etc/resolv.conf").split()[:2] == ["nameserver", fixture]
    public = [replica_internet.ACME_NAME, replica_internet.ACME_STAGING_NAME, "amazonaws.com",
              "s3.amazonaws.com", "s3.us-east-1.amazonaws.com", "replica-lab-test.s3.amazonaws.com",
              "route53.amazonaws.com", replica_internet.MAIL_NAME]
    for name in public:
        answers = {line.split()[0] for line in sh(lab, client, 'getent ahostsv4 "$1"', name).splitlines()}
        assert answers == {fixture}, name
        assert replica_internet.dns_query(fixture, name, qtype=28) == (0, [])  # no AAAA, not forwarded
    # a name it does not own, the client's own package source, goes to the upstream resolver
    sources = sh(lab, client, "cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true")
    upstream_name = re.search(r"(?:URIs:|deb)\s+\S*?https?://([^/\s:]+)", sources).group(1)
    answers = {line.split()[0] for line in sh(lab, client, 'getent ahostsv4 "$1"', upstream_name).splitlines()}
    assert answers and fixture not in answers
    rcode, _answers = replica_internet.dns_query(fixture, f"{secrets.token_hex(6)}.invalid")
    assert rcode == 3  # NXDOMAIN, from upstream
    # a name added at run time is answered at once, and goes again when removed
    internet.add_name("added.replica-lab.example", client.address)
    assert replica_internet.dns_query(fixture, "added.replica-lab.example")[1] == [client.address]
    internet.remove_name("added.replica-lab.example")
    deadline = time.monotonic() + 5
    while replica_internet.dns_query(fixture, "added.replica-lab.example")[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replica_internet.dns_query(fixture, "added.replica-lab.example")[1] == []
