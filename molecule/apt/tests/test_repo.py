# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.apt_repo in a lab host: the key, the tree on its own subvolume, the pipeline's
signed publication, nginx serving it, both services hardened."""

from __future__ import annotations

import json
import re
import shlex

import pytest

testinfra_hosts = ["lab://mol-apt-repo"]


def exposure(host, unit):
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


def test_the_tree_is_a_subvolume_of_its_own(host):
    assert host.run("btrfs subvolume show /srv/apt").rc == 0
    assert host.file("/srv/apt").user == "_replica-apt"


def test_the_release_is_signed_by_the_exported_key(host):
    host.check_output("gpg --batch --yes --dearmor -o /tmp/archive-key.gpg /srv/apt/archive-key.asc")
    assert host.run("gpgv --keyring /tmp/archive-key.gpg /srv/apt/dists/lab/InRelease").rc == 0
    assert host.run("gpgv --keyring /tmp/archive-key.gpg /srv/apt/dists/lab/Release.gpg /srv/apt/dists/lab/Release").rc == 0
    release = host.file("/srv/apt/dists/lab/Release").content_string
    assert "Origin: mol-apt" in release and ("Suite: lab" in release or "Codename: lab" in release)
    # the key stays private to the pipeline's user
    assert host.file("/var/lib/replica-apt/gnupg").mode == 0o700


def test_the_pipeline_built_and_published_the_spec(host):
    packages = host.check_output("cat /srv/apt/dists/lab/main/binary-all/Packages")
    assert "Package: hello-replica\n" in packages and "Version: 1.0-1\n" in packages
    assert host.file("/srv/apt/pool/main/h/hello-replica/hello-replica_1.0-1_all.deb").exists
    assert host.service("replica-apt-pipeline.timer").is_enabled
    assert host.check_output("systemctl show -p Result --value replica-apt-pipeline.service") == "success"
    journal = host.check_output("journalctl -u replica-apt-pipeline.service --no-pager -o cat")
    assert "published" in journal and "built replica-motd 1.0: replica-motd_1.0_all.deb" in journal
    assert host.file("/srv/apt/pool/main/r/replica-motd/replica-motd_1.0_all.deb").exists


def test_nginx_serves_the_repository(host):
    assert host.check_output("curl -sS -o /dev/null -w %{http_code} http://127.0.0.1/dists/lab/InRelease") == "200"
    assert "BEGIN PGP PUBLIC KEY BLOCK" in host.check_output("curl -sS http://127.0.0.1/archive-key.asc")
    # the pipeline's lock and the index generations beside dists/lab are not served
    assert host.check_output("curl -sS -o /dev/null -w %{http_code} http://127.0.0.1/dists/") in ("200", "403")
    hidden = host.check_output("ls -a /srv/apt/dists | grep '^\\.lab' | head -1")
    assert host.check_output(f"curl -sS -o /dev/null -w %{{http_code}} http://127.0.0.1/dists/{hidden}/Release") == "403"


@pytest.mark.parametrize("unit,limit", [("nginx.service", 3.5), ("replica-apt-pipeline.service", 3.0)])
def test_services_are_hardened(host, unit, limit):
    assert exposure(host, unit) <= limit


#: boto3 on the repository host, against the default endpoint (AWS S3's public name, which the
#: lab's offline internet answers with moto's server): the keys of the bucket and InRelease's body
READ_MIRROR = """
import json, boto3
s3 = boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lab-apt")["Contents"]]
body = s3.get_object(Bucket="lab-apt", Key="debian/dists/lab/InRelease")["Body"].read().decode()
print(json.dumps({"endpoint": s3.meta.endpoint_url, "keys": keys, "inrelease": body}))
"""


def test_the_tree_is_mirrored_to_s3(host):
    """What the pipeline's run triggers (OnSuccess=replica-apt-mirror.service), started again."""
    assert host.run("systemctl start replica-apt-mirror.service").rc == 0, \
        host.run("journalctl -u replica-apt-mirror.service --no-pager -o cat -n 20").stdout
    mirror = json.loads(host.check_output(f"python3 -c {shlex.quote(READ_MIRROR)}"))
    assert mirror["endpoint"] == "https://s3.amazonaws.com"
    keys = set(mirror["keys"])
    for key in ("debian/dists/lab/InRelease", "debian/dists/lab/Release.gpg", "debian/dists/lab/main/binary-all/Packages.xz",
                "debian/pool/main/h/hello-replica/hello-replica_1.0-1_all.deb", "debian/archive-key.asc"):
        assert key in keys
    assert not [k for k in keys if "/." in k]       # the lock and the index generations stay home
    body = mirror["inrelease"]
    assert body == host.file("/srv/apt/dists/lab/InRelease").content_string + "\n" or \
        body.rstrip("\n") == host.file("/srv/apt/dists/lab/InRelease").content_string.rstrip("\n")
    assert "OnSuccess=replica-apt-mirror.service" in host.check_output("systemctl cat replica-apt-pipeline.service")
