# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of deb_repo: Debian version order (checked against ``dpkg --compare-versions``
on every pair of a list of tricky versions), control paragraphs, pool paths, the plan (add, no
change, conflict; removal; keep_versions), the index lists, Release settings and GnuPG listings."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _debrepo as dr
from ansible_collections.replica.cloud.plugins.module_utils._debrepo import DebRepoError

VERSIONS = [
    "0", "0.0", "0.1", "1", "1.0", "1.0-0", "1.0-1", "1.0-1.1", "1.0-1+b1", "1.0-1~bpo11+1", "1.0-1ubuntu1",
    "1.0-10", "1.0-2", "1.0-a", "1.0-+", "1.0-~", "1.0.0", "1.00", "1.0a", "1.0A", "1.0+", "1.0+dfsg-1", "1.0~",
    "1.0~~", "1.0~~a", "1.0~a", "1.0~rc1", "1.0~rc1-1", "1.0~rc2", "1.0~rc10", "1.0a~", "1.0.1", "1.1", "1.01",
    "1.10", "1.9", "1:0", "1:0.1", "1:1.0", "0:1.0", "0:1.0-1", "2:0.1", "10:0", "7.6p2-4", "7.6-0", "1.2.3-10",
    "1.2.3-9", "1a", "1a1", "1.", "1.-1", "1.0.", "2.4.7-1", "2.4.7-z", "2.4.7-Z", "1:1.0:2-1", "1:1.0-2-1",
    "1.2-3-4", "3.0~beta1+git20240101.abc-1", "0.9.9999", "1.0+really0.9-1", "000", "0001", "1.0-001", "1.0-1.0",
    "2.30-0+deb12u1", "2.30-0+deb12u10", "2.30-0+deb12u2", "9", "9.0000000000000000000001", "1.0+~", "1.0+a",
]


def dpkg_verdicts(pairs):
    """``dpkg --compare-versions`` on each pair: -1, 0 or 1 (one shell for them all)."""
    script = ('while read a b; do if dpkg --compare-versions "$a" lt "$b"; then echo -1; '
              'elif dpkg --compare-versions "$a" eq "$b"; then echo 0; else echo 1; fi; done')
    out = subprocess.run(["sh", "-c", script], input="".join(f"{a} {b}\n" for a, b in pairs),
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}).stdout
    return [int(v) for v in out.split()]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed (not a Debian system)")
def test_version_order_is_dpkgs_on_every_pair():
    pairs = list(itertools.combinations(VERSIONS, 2))
    verdicts = dpkg_verdicts(pairs)
    assert len(verdicts) == len(pairs) > 2000
    wrong = [(a, b, want, dr.compare_versions(a, b)) for (a, b), want in zip(pairs, verdicts)
             if dr.compare_versions(a, b) != want]
    assert wrong == []
    # and the sorted list agrees with dpkg pair by pair
    ordered = dr.sort_versions(VERSIONS)
    assert all(v <= 0 for v in dpkg_verdicts(list(zip(ordered, ordered[1:]))))


@pytest.mark.parametrize("first, op, second", [
    ("1.0~rc1", "<", "1.0"), ("1.0~~", "<", "1.0~"), ("1.0~", "<", "1.0"), ("1.0", "<", "1.0+"),
    ("1.0", "<", "1.0a"), ("1.0a", "<", "1.0+"), ("1.0", "=", "1.00"), ("1.0", "=", "0:1.0"),
    ("1.0-0", "=", "1.0"), ("1:0.1", ">", "9.9"), ("1.0-1", "<", "1.0-1+b1"),
    ("1.0-1~bpo11+1", "<", "1.0-1"), ("1.9", "<", "1.10"), ("1.01", "=", "1.1"), ("2.30-0+deb12u2", "<", "2.30-0+deb12u10"),
    ("1.0-a", "<", "1.0-+"), ("1.0A", "<", "1.0a"),
])
def test_known_orders(first, op, second):
    want = {"<": -1, "=": 0, ">": 1}[op]
    assert dr.compare_versions(first, second) == want
    assert dr.compare_versions(second, first) == -want


@pytest.mark.parametrize("text, parts", [
    ("1.0", (0, "1.0", "")), ("1.0-1", (0, "1.0", "1")), ("2:1.0-1", (2, "1.0", "1")),
    ("1:1.0-2-1", (1, "1.0-2", "1")), ("1:1.0:2-1", (1, "1.0:2", "1")), ("0:7", (0, "7", "")),
])
def test_parse_version(text, parts):
    assert dr.parse_version(text) == parts


@pytest.mark.parametrize("text", ["", " ", "a1.0", "1.0-", ":1.0", "x:1.0", "1:", "1.0 1", "1.0-1_2", "1.0/2", "1.0-1:2"])
def test_parse_version_refuses_what_dpkg_refuses(text):
    with pytest.raises(ValueError):
        dr.parse_version(text)


def test_sort_versions():
    assert dr.sort_versions(["1.0", "1.0~rc1", "1:0.1", "1.0-1"]) == ["1.0~rc1", "1.0", "1.0-1", "1:0.1"]
    assert dr.sort_versions(["1.0", "2.0"], newest_first=True) == ["2.0", "1.0"]


def test_parse_stanzas_and_control():
    text = ("Package: hello\nVersion: 1.0\nDescription: short\n long one\n .\n more\n\n\n"
            "Package: tool\nVersion: 2\n")
    stanzas = dr.parse_stanzas(text)
    assert [f["Package"] for f, dummy in stanzas] == ["hello", "tool"]
    assert stanzas[0][0]["Description"] == "short\n long one\n .\n more"
    assert stanzas[0][1] == "Package: hello\nVersion: 1.0\nDescription: short\n long one\n .\n more\n"
    assert dr.parse_control("Package: a\nVersion: 1\n") == {"Package": "a", "Version": "1"}
    with pytest.raises(DebRepoError):
        dr.parse_control(text)
    with pytest.raises(DebRepoError, match="continuation"):
        dr.parse_stanzas(" orphan\n")
    with pytest.raises(DebRepoError, match="not a control field"):
        dr.parse_stanzas("no colon here\n")


def test_set_field_and_no_support_for_all():
    raw = "Package: a\nFilename: /tmp/x.deb\nSize: 3\n"
    assert dr.set_field(raw, "Filename", "pool/main/a/a/a_1_all.deb") == \
        "Package: a\nFilename: pool/main/a/a/a_1_all.deb\nSize: 3\n"
    assert dr.set_field("Package: a\n", "Filename", "f") == "Package: a\nFilename: f\n"
    release = "Architectures: amd64 all\nComponents: main\n"
    assert dr.no_support_for_all(release) == \
        "Architectures: amd64 all\nNo-Support-for-Architecture-all: Packages\nComponents: main\n"


@pytest.mark.parametrize("source, name, version, arch, path", [
    ("hello", "hello", "2.10-3", "amd64", "pool/main/h/hello/hello_2.10-3_amd64.deb"),
    ("libxml2", "libxml2-dev", "2.9.14+dfsg-1.3", "amd64", "pool/main/libx/libxml2/libxml2-dev_2.9.14+dfsg-1.3_amd64.deb"),
    ("lib", "lib", "1", "all", "pool/main/lib/lib/lib_1_all.deb"),
    ("openssh", "openssh-client", "1:9.2p1-2", "arm64", "pool/main/o/openssh/openssh-client_9.2p1-2_arm64.deb"),
])
def test_pool_path(source, name, version, arch, path):
    assert dr.pool_path("main", source, name, version, arch) == path


def test_source_name_and_candidate():
    fields = {"Package": "libfoo1", "Version": "1:1.2-1", "Architecture": "amd64", "Source": "foo (1.2-1)"}
    assert dr.source_name(fields) == "foo"
    assert dr.source_name({"Package": "bar"}) == "bar"
    item = dr.candidate(fields, "contrib", "ab" * 32, "/tmp/libfoo1.deb")
    assert item == {"name": "libfoo1", "version": "1:1.2-1", "architecture": "amd64", "component": "contrib",
                    "filename": "pool/contrib/f/foo/libfoo1_1.2-1_amd64.deb", "sha256": "ab" * 32,
                    "source": "/tmp/libfoo1.deb"}
    for bad, message in ((dict(fields, Package="Foo"), "not a valid Debian package name"),
                         (dict(fields, Version="x"), "does not start with a digit"),
                         (dict(fields, Architecture=""), "invalid architecture"),
                         ({"Version": "1"}, "not a valid Debian package name")):
        with pytest.raises(DebRepoError, match=message):
            dr.candidate(bad, "main", "00", "/x.deb")


def rec(name, version, arch="all", component="main", sha=None):
    return {"name": name, "version": version, "architecture": arch, "component": component,
            "filename": dr.pool_path(component, name, name, version, arch), "sha256": sha or f"sha-{name}-{version}-{arch}",
            "stanza": f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n", "source": f"/in/{name}_{version}.deb"}


def test_decide():
    current = [rec("hello", "1.0"), rec("tool", "1.0", "amd64", component="contrib")]
    assert dr.decide(current, rec("hello", "2.0")) == ("add", None)
    assert dr.decide(current, rec("hello", "1.0", "amd64")) == ("add", None)
    verdict, same = dr.decide(current, rec("hello", "1.0"))
    assert verdict == "same" and same is current[0]
    verdict, message = dr.decide(current, rec("hello", "1.0", sha="other"))
    assert verdict == "conflict" and "different contents" in message and "1.0+1" in message
    verdict, message = dr.decide(current, rec("tool", "1.0", "amd64", component="main", sha="sha-tool-1.0-amd64"))
    assert verdict == "conflict" and "already in component contrib" in message


def test_plan_present():
    current = [rec("hello", "1.0")]
    result = dr.plan(current, "present", [rec("hello", "1.0"), rec("hello", "2.0"), rec("hello", "2.0")])
    assert [r["version"] for r in result["after"]] == ["1.0", "2.0"]
    assert [r["version"] for r in result["added"]] == ["2.0"] and result["removed"] == []
    assert len(result["same"]) == 1
    with pytest.raises(DebRepoError, match="given twice with different contents"):
        dr.plan(current, "present", [rec("new", "1"), rec("new", "1", sha="x")])
    with pytest.raises(DebRepoError, match="different contents"):
        dr.plan(current, "present", [rec("hello", "1.0", sha="x")])
    # 1:1.0 and 1.0 would share a file name in the pool
    with pytest.raises(DebRepoError, match="differ only by the epoch"):
        dr.plan(current, "present", [rec("hello", "1:1.0")])
    unchanged = dr.plan(current, "present", [])
    assert unchanged["added"] == [] and unchanged["removed"] == [] and unchanged["after"] == current


def test_plan_keep_versions_prunes_per_name_arch_component():
    current = [rec("hello", v) for v in ("1.0~rc1", "1.0", "1.0-1")] + [rec("hello", "0.1", "amd64"),
                                                                        rec("hello", "0.5", component="contrib")]
    result = dr.plan(current, "present", [rec("hello", "1.0-1+b1")], keep=2)
    assert [(r["version"], r["architecture"], r["component"]) for r in result["after"]] == [
        ("0.5", "all", "contrib"), ("1.0-1", "all", "main"), ("1.0-1+b1", "all", "main"), ("0.1", "amd64", "main")]
    assert [r["version"] for r in result["removed"]] == ["1.0~rc1", "1.0"]
    assert [r["version"] for r in result["added"]] == ["1.0-1+b1"]
    # an added version older than those kept is skipped, not added
    old = dr.plan(result["after"], "present", [rec("hello", "0.9")], keep=2)
    assert old["added"] == [] and old["removed"] == [] and [r["version"] for r in old["skipped"]] == ["0.9"]


def test_prune():
    records = [rec("a", v) for v in ("1:0.1", "2.0", "10.0", "9.0")]
    kept, pruned = dr.prune(records, 2)
    assert [r["version"] for r in kept] == ["1:0.1", "10.0"] and [r["version"] for r in pruned] == ["2.0", "9.0"]
    assert dr.prune(records, None) == (records, [])
    assert dr.prune(records, 10) == (records, [])


def test_parse_spec_and_matches():
    assert dr.parse_spec("hello") == {"name": "hello", "architecture": None, "version": None}
    assert dr.parse_spec("hello=1:2.0-1") == {"name": "hello", "architecture": None, "version": "1:2.0-1"}
    assert dr.parse_spec("hello:amd64=2.0") == {"name": "hello", "architecture": "amd64", "version": "2.0"}
    assert dr.parse_spec({"name": "hello", "version": 2}) == {"name": "hello", "architecture": None, "version": "2"}
    for bad in ("", "Hello", "hello=", "hello=x1", "hello:AMD=1", "a b", {"version": "1"}, {"name": "a", "arch": "all"}):
        with pytest.raises(DebRepoError):
            dr.parse_spec(bad)
    spec = dr.parse_spec("hello=1.0")
    assert dr.matches(spec, rec("hello", "0:1.0")) and dr.matches(spec, rec("hello", "1.00"))
    assert not dr.matches(spec, rec("hello", "1:1.0")) and not dr.matches(spec, rec("hellox", "1.0"))
    assert not dr.matches(dr.parse_spec("hello:amd64"), rec("hello", "1.0", "all"))


def test_plan_absent():
    current = [rec("hello", "1.0"), rec("hello", "2.0"), rec("hello", "2.0", "amd64"), rec("hello", "3.0", component="c2")]
    result = dr.plan(current, "absent", specs=[dr.parse_spec("hello=2.0")])
    assert [(r["version"], r["architecture"]) for r in result["removed"]] == [("2.0", "all"), ("2.0", "amd64")]
    result = dr.plan(current, "absent", specs=[dr.parse_spec("hello")], components=["main"])
    assert [r["component"] for r in result["after"]] == ["c2"]
    assert dr.plan(current, "absent", specs=[dr.parse_spec("nothing")])["removed"] == []


def test_index_lists_put_arch_all_everywhere():
    records = [rec("doc", "1"), rec("tool", "1", "amd64"), rec("tool", "1", "arm64"), rec("x", "1", component="contrib")]
    lists = dr.index_lists(records, ["main", "contrib"], ["amd64", "arm64", "all"])
    assert {k: [r["name"] for r in v] for k, v in lists.items()} == {
        ("main", "amd64"): ["doc", "tool"], ("main", "arm64"): ["doc", "tool"], ("main", "all"): ["doc"],
        ("contrib", "amd64"): ["x"], ("contrib", "arm64"): ["x"], ("contrib", "all"): ["x"]}
    lists = dr.index_lists(records[:2], ["main"], ["amd64"])
    assert list(lists) == [("main", "amd64")] and [r["name"] for r in lists[("main", "amd64")]] == ["doc", "tool"]
    text = dr.packages_text(lists[("main", "amd64")])
    assert text == "Package: doc\nVersion: 1\nArchitecture: all\n\nPackage: tool\nVersion: 1\nArchitecture: amd64\n\n"
    assert dr.packages_text([]) == ""


def test_check_layout():
    dr.check_layout([rec("a", "1"), rec("b", "1", "amd64")], ["main"], ["amd64"])
    with pytest.raises(DebRepoError, match="architecture arm64 is not in architectures"):
        dr.check_layout([rec("b", "1", "arm64")], ["main"], ["amd64", "all"])
    with pytest.raises(DebRepoError, match="component contrib, which is not in components"):
        dr.check_layout([rec("b", "1", component="contrib")], ["main"], ["amd64"])


def test_listing_and_public():
    records = [rec("b", "1"), rec("a", "2"), rec("a", "1~")]
    assert dr.listing(records) == "main a 1~ all\nmain a 2 all\nmain b 1 all\n"
    assert set(dr.public(records[0])) == {"name", "version", "architecture", "component", "filename", "sha256"}


RELEASE = """Origin: replica
Label: tests
Suite: bookworm
Codename: bookworm
Date: Wed, 02 Dec 2026 01:43:51 +0000
Acquire-By-Hash: yes
Architectures: amd64 all
No-Support-for-Architecture-all: Packages
Components: main
MD5Sum:
 ebc1c38bd295e4a15e347332edf67467              450 main/binary-amd64/Packages
SHA256:
 a519aec2bb1eaaf90c22dbe6b30eed00c1b5750e285732ffa05c5835af299f18              450 main/binary-amd64/Packages
 26893f7529f28de0b4c1c94cc236f1dc8e64e1dd0beb53a428828b2b88a43945              341 main/binary-amd64/Packages.gz
"""


def test_release_settings():
    fields, sums = dr.parse_release(RELEASE)
    assert sums["SHA256"]["main/binary-amd64/Packages.gz"] == ("26893f7529f28de0b4c1c94cc236f1dc8e64e1dd0beb53a428828b2b88a43945", 341)
    assert set(sums) == {"MD5Sum", "SHA256"} and "SHA256" not in fields
    wanted = dr.wanted_settings("bookworm", ["main"], ["all", "amd64"], "replica", "tests", True)
    assert dr.release_settings(fields) == wanted
    assert dr.release_settings(fields) != dr.wanted_settings("bookworm", ["main"], ["all", "amd64"], "replica", "tests", False)
    assert dr.release_settings(fields) != dr.wanted_settings("bookworm", ["main", "contrib"], ["all", "amd64"], "replica",
                                                             "tests", True)
    with pytest.raises(DebRepoError):
        dr.parse_release("")


#: Release.gpg made by gpg 2.2 with an ed25519 key (fingerprint 6B26CABF...5E5B)
SIGNATURE = b"""-----BEGIN PGP SIGNATURE-----

iHUEABYKAB0WIQRrJsq/bAEbqiz1JNrT7/XGrhBeWwUCaw936QAKCRDT7/XGrhBe
W3mGAP9aji5mc2YTwLqrF+D9woR7GnBKM3CR6vqQdBUvDfSKIQD/Zeerl2A7ZWxa
1fMXuNzjJceDwso81E8+mL+ZSEhXUQI=
=58hn
-----END PGP SIGNATURE-----
"""
ISSUERS = {"6B26CABF6C011BAA2CF524DAD3EFF5C6AE105E5B", "D3EFF5C6AE105E5B"}


def test_signature_issuers_and_signed_by():
    assert dr.signature_issuers(SIGNATURE) == ISSUERS
    binary = dr.dearmor(SIGNATURE)
    assert binary[0] == 0x88 and dr.signature_issuers(binary) == ISSUERS  # old-format packet, not armored
    new_format = bytes([0xC2, binary[1]]) + binary[2:]
    assert dr.signature_issuers(new_format) == ISSUERS
    assert dr.signature_issuers(binary + new_format) == ISSUERS  # two signatures
    # an armored block with a header line
    with_header = SIGNATURE.replace(b"-----\n\n", b"-----\nComment: x\n\n")
    assert dr.signature_issuers(with_header) == ISSUERS
    for junk in (b"", b"not a signature", b"-----BEGIN PGP SIGNATURE-----\n\n!!!\n-----END PGP SIGNATURE-----\n",
                 binary[:20]):
        assert dr.signature_issuers(junk) <= ISSUERS
    assert dr.signature_issuers(b"not a signature") == set()
    assert dr.signed_by(ISSUERS, ["6b26cabf6c011baa2cf524dad3eff5c6ae105e5b"])
    assert dr.signed_by({"D3EFF5C6AE105E5B"}, ["6B26CABF6C011BAA2CF524DAD3EFF5C6AE105E5B"])
    assert not dr.signed_by(ISSUERS, ["0123456789ABCDEF0123456789ABCDEF01234567"])
    assert not dr.signed_by(set(), ["6B26CABF6C011BAA2CF524DAD3EFF5C6AE105E5B"])


def test_parse_packages_reads_the_fields_it_needs_and_keeps_the_paragraphs():
    text = ("Package: hello\nArchitecture: all\nVersion: 1.0\nDescription: x\n Filename: not this one\n"
            "Filename: pool/main/h/hello/hello_1.0_all.deb\nSHA256: ab\n\n \n"
            "Package: tool\nVersion: 2\nArchitecture: amd64\nFilename: pool/main/t/tool/tool_2_amd64.deb\nSHA256: cd\n\n")
    records = dr.parse_packages(text, "main")
    assert [dr.public(r) for r in records] == [
        {"name": "hello", "version": "1.0", "architecture": "all", "component": "main",
         "filename": "pool/main/h/hello/hello_1.0_all.deb", "sha256": "ab"},
        {"name": "tool", "version": "2", "architecture": "amd64", "component": "main",
         "filename": "pool/main/t/tool/tool_2_amd64.deb", "sha256": "cd"}]
    assert records[0]["stanza"].startswith("Package: hello\n") and records[0]["stanza"].endswith("SHA256: ab\n")
    assert dr.packages_text(records) == dr.packages_text([dict(r, stanza=raw) for r, (f, raw) in
                                                          zip(records, dr.parse_stanzas(text))])
    assert dr.parse_packages("", "main") == []
    with pytest.raises(DebRepoError, match="no Filename field"):
        dr.parse_packages("Package: a\nVersion: 1\nArchitecture: all\n", "main")


SECRET = """sec:u:255:22:D3EFF5C6AE105E5B:1796175789:::u:::scSC:::+::ed25519:::0:
fpr:::::::::6B26CABF6C011BAA2CF524DAD3EFF5C6AE105E5B:
grp:::::::::67AD37AA7EEFA85B9B523428988B616B716904DC:
uid:u::::1796175789::5BD555B88393852F7B16FEC6DE6D08EE4C729FB0::Test Repo <repo@test>::::::::::0:
"""
PUBLIC = SECRET.replace("sec:", "pub:")
# a primary key that only certifies (its secret is offline), and a signing subkey
SUBKEY = """sec:u:255:22:1111111111111111:1796175789:::u:::cSC:::#::ed25519:::0:
fpr:::::::::AAAA000000000000000000001111111111111111:
uid:u::::1796175789::X::Sub Key <sub@test>::::::::::0:
ssb:u:255:22:2222222222222222:1796175789::::::s:::+::ed25519::
fpr:::::::::BBBB000000000000000000002222222222222222:
"""


def test_signing_key():
    found = dr.signing_key(SECRET, "", "6B26CABF", "/tmp/gk")
    assert found["fingerprint"] == "6B26CABF6C011BAA2CF524DAD3EFF5C6AE105E5B"
    assert found["uids"] == ["Test Repo <repo@test>"]
    sub = dr.signing_key(SUBKEY, "", "sub@test", None)
    assert sub["fingerprint"] == "AAAA000000000000000000001111111111111111"
    assert sub["fingerprints"] == ["AAAA000000000000000000001111111111111111", "BBBB000000000000000000002222222222222222"]
    with pytest.raises(DebRepoError, match="its secret key is not"):
        dr.signing_key("", PUBLIC, "X", "/tmp/gk")
    with pytest.raises(DebRepoError, match="is not in GnuPG home /tmp/gk"):
        dr.signing_key("", "", "X", "/tmp/gk")
    with pytest.raises(DebRepoError, match="the default GnuPG home"):
        dr.signing_key("", "", "X", None)
    with pytest.raises(DebRepoError, match="matches 2 keys"):
        dr.signing_key(SECRET + SUBKEY, "", "test", None)
    with pytest.raises(DebRepoError, match="is expired"):
        dr.signing_key(SECRET.replace("sec:u:", "sec:e:"), "", "X", None)
    with pytest.raises(DebRepoError, match="no usable secret key that can sign"):
        dr.signing_key(SECRET.replace(":scSC:", ":cC:"), "", "X", None)
    with pytest.raises(DebRepoError, match="no usable secret key that can sign"):  # the signing subkey's secret is a stub
        dr.signing_key(SUBKEY.replace("::s:::+::", "::s:::#::"), "", "X", None)
