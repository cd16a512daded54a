# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.apt_client in a lab host, against the apt_repo lab host: it installed the
pipeline's package through apt with Signed-By; a tampered Packages file and a Release signed by
another key are refused by apt; background updates follow the repository's origin."""

from __future__ import annotations

import re

import pytest
import testinfra

testinfra_hosts = ["lab://mol-apt-client"]


@pytest.fixture(name="server", scope="module")
def server_fixture():
    return testinfra.get_host("lab://mol-apt-repo")


def repo_uri(host):
    return re.search(r"^URIs: (\S+)", host.file("/etc/apt/sources.list.d/replica-lab.sources").content_string, re.M).group(1)


def private_update(host, uri):
    """apt-get update of one repository with lists of its own (the system's lists stay as they are)."""
    host.check_output("rm -rf /tmp/apt-probe && mkdir -p /tmp/apt-probe/lists/partial")
    host.check_output(f"sh -c 'echo \"deb [signed-by=/etc/apt/keyrings/replica-lab.asc] {uri} lab main\" > /tmp/apt-probe/probe.list'")
    return host.run("apt-get update -o Dir::Etc::SourceList=/tmp/apt-probe/probe.list -o Dir::Etc::SourceParts=/nonexistent "
                    "-o Dir::State::Lists=/tmp/apt-probe/lists -o APT::Update::Error-Mode=any")


def test_the_package_came_from_the_repository(host):
    assert host.check_output("hello-replica") == "hello 1.0-1"
    policy = host.check_output("apt-cache policy hello-replica")
    assert f"{repo_uri(host).rstrip('/')} lab/main amd64 Packages" in policy   # arch all is listed in binary-amd64 too
    assert "o=mol-apt" in host.check_output("apt-cache policy")


def test_the_source_trees_package_came_from_the_repository(host):
    assert host.file("/etc/replica-motd").content_string.strip() == "built from a source tree by the package pipeline"
    assert host.check_output("dpkg-query -W -f='${Version}' replica-motd") == "1.0"


def test_the_collections_tools_came_from_the_repository(host):
    """replica-tools, built by the server's pipeline from the collection's own files and
    installed with apt from the signed repository: its commands run."""
    policy = host.check_output("apt-cache policy replica-tools")
    assert f"{repo_uri(host).rstrip('/')} lab/main amd64 Packages" in policy
    installed = host.check_output("dpkg-query -W -f='${Version}' replica-tools")
    assert "+" in installed and f"*** {installed} 500" in policy   # the one installed is the repository's
    assert host.check_output("dpkg -S /usr/sbin/replica-machine") == "replica-tools: /usr/sbin/replica-machine"
    refused = host.run("replica-machine prepare Bad_Name")
    assert refused.rc == 1 and "machine name 'Bad_Name' must be a host name label" in refused.stderr


def test_the_source_trusts_the_repository_key_only(host):
    sources = host.file("/etc/apt/sources.list.d/replica-lab.sources").content_string
    assert "Signed-By: /etc/apt/keyrings/replica-lab.asc" in sources
    assert host.run("apt-key list 2>/dev/null | grep -q replica").rc != 0   # not in the global keyring


def test_background_updates_follow_the_origin(host):
    config = host.check_output("apt-config dump")
    assert 'Unattended-Upgrade::Origins-Pattern:: "origin=mol-apt";' in config
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert host.service("apt-daily-upgrade.timer").is_enabled
    assert "OnCalendar=*-*-* 06:00" in host.check_output("systemctl cat apt-daily-upgrade.timer")
    # unattended-upgrades' own dry run sees the repository as allowed
    out = host.run("unattended-upgrade --dry-run --debug 2>&1")
    assert "o=mol-apt" in out.stdout or "origin=mol-apt" in out.stdout


def test_a_tampered_packages_file_is_refused(host, server):
    server.check_output("rm -rf /srv/apt/tampered && mkdir /srv/apt/tampered && cp -rL /srv/apt/dists /srv/apt/tampered/"
                        " && ln -s ../pool /srv/apt/tampered/pool")
    for directory in server.check_output("ls -d /srv/apt/tampered/dists/lab/main/binary-*").split():
        server.check_output(f"sh -c 'cd {directory} && sed -i s/^Version:.*/Version:\\ 9.9-1/ Packages && gzip -9nc Packages > Packages.gz"
                            f" && xz -c Packages > Packages.xz && for f in by-hash/*/*; do [ -f $f ] && cp Packages.xz $f; done; true'")
    out = private_update(host, repo_uri(host) + "tampered/")
    assert out.rc != 0
    assert re.search(r"Hash Sum mismatch|File has unexpected size|Hashes of expected file", out.stdout + out.stderr), out.stdout + out.stderr
    assert "9.9-1" not in host.run("apt-cache -o Dir::State::Lists=/tmp/apt-probe/lists -o Dir::Etc::SourceList=/tmp/apt-probe/probe.list "
                                   "-o Dir::Etc::SourceParts=/nonexistent policy hello-replica").stdout
    server.run("rm -rf /srv/apt/tampered")


def test_a_repository_signed_by_another_key_is_refused(host, server):
    server.check_output("rm -rf /srv/apt/otherkey /tmp/otherkey && mkdir -m 700 /tmp/otherkey && mkdir /srv/apt/otherkey"
                        " && cp -rL /srv/apt/dists /srv/apt/otherkey/ && ln -s ../pool /srv/apt/otherkey/pool")
    gpg = "gpg --homedir /tmp/otherkey --batch --yes --passphrase ''"
    server.check_output(f"{gpg} --quick-gen-key 'someone else <x@example.org>' ed25519 sign never")
    server.check_output(f"sh -c 'cd /srv/apt/otherkey/dists/lab && {gpg} --clearsign -o InRelease Release && {gpg} -abs -o Release.gpg Release'")
    out = private_update(host, repo_uri(host) + "otherkey/")
    assert out.rc != 0
    assert re.search(r"NO_PUBKEY|is not signed|not signed by", out.stdout + out.stderr), out.stdout + out.stderr
    server.run("gpgconf --homedir /tmp/otherkey --kill all; rm -rf /srv/apt/otherkey /tmp/otherkey")
