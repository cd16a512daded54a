# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.deb_repo on this machine, and real apt reading what it publishes.

Real ``.deb`` files (``dpkg-deb --build``), real GnuPG keys (a temporary GNUPGHOME under /tmp,
its agent killed afterwards), the module run as Ansible runs it (``ansible localhost -m``), and
apt (``apt-get update``, ``apt-cache``, ``apt-get download``) with a private configuration and a
``deb [signed-by=KEY] file:REPO SUITE main`` source: idempotence, a newer version becoming the
candidate, keep_versions pruning, removal, errors that leave the tree byte for byte as it was,
check mode, a tampered index and a repository signed by another key refused by apt, by-hash
consistency across a publication, and two runs at once.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import ROOT, run_ansible, run_module  # pylint: disable=import-error

MODULE = "replica.cloud.deb_repo"
SUITE = "bookworm"
TOOLS = ("dpkg-deb", "apt-ftparchive", "gpg", "gpgconf", "apt-get", "apt-cache")


def _which(tool):
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def _skip_reason():
    if os.geteuid() != 0:
        return "apt-get with a private configuration and the module's pool need root"
    for tool in TOOLS:
        if not _which(tool):
            return f"{tool} is not installed (scripts/setup installs apt-utils, gnupg, dpkg-dev)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

NATIVE = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                        check=False).stdout.strip() or "amd64"


class Key:
    """A GnuPG home (a short path under /tmp: gpg-agent's socket) with one ed25519 signing key."""

    def __init__(self, uid, passphrase=""):
        self.home = tempfile.mkdtemp(prefix="drk-", dir="/tmp")
        subprocess.run(["gpg", "--homedir", self.home, "--batch", "--pinentry-mode", "loopback", "--passphrase",
                        passphrase, "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--with-colons", "--list-secret-keys"],
                                 check=True, capture_output=True, text=True).stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        self.public = os.path.join(self.home, "public.asc")
        with open(self.public, "wb") as handle:
            handle.write(subprocess.run(["gpg", "--homedir", self.home, "--batch", "--export", "--armor",
                                         self.fingerprint], check=True, capture_output=True).stdout)

    def close(self):
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def key():
    made = Key("deb_repo test archive <archive@test.invalid>")
    yield made
    made.close()


@pytest.fixture(scope="module")
def other_key():
    made = Key("someone else <else@test.invalid>")
    yield made
    made.close()


def build_deb(where, name, version, arch="all", payload="", source=None):
    """A real binary package, built with dpkg-deb."""
    tree = where / f"build-{name}-{version}-{arch}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "payload").write_text(f"{name} {version} {payload}\n")
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Test <test@test.invalid>\n"
               + (f"Source: {source}\n" if source else "")
               + f"Section: misc\nPriority: optional\nDescription: {name} for the deb_repo tests\n test package\n")
    (tree / "DEBIAN/control").write_text(control)
    out = where / f"{name}_{version.replace(':', '%3a')}_{arch}-{tree.name[-8:]}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return str(out)


def tree_state(root):
    """Every path under *root* with its type, mode and contents (or link target): equal states
    mean byte-for-byte equal trees."""
    state = {}
    if not os.path.lexists(root):
        return state
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                state[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[rel] = ("dir", oct(info.st_mode))
            else:
                with open(path, "rb") as handle:
                    state[rel] = ("file", oct(info.st_mode), hashlib.sha256(handle.read()).hexdigest())
    return state


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class Apt:
    """apt with a configuration of its own: one source (the repository), its own lists, cache and
    an empty dpkg status, so that nothing of this machine's apt is read or changed."""

    def __init__(self, base, repo, public_key, suite=SUITE):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        for sub in ("lists/partial", "cache/archives/partial", "download"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "status").write_text("")
        (base / "sources.list").write_text(f"deb [signed-by={public_key}] file:{repo} {suite} main\n")
        self.options = []
        for name, value in (("Dir::Etc::SourceList", base / "sources.list"), ("Dir::Etc::SourceParts", "/dev/null"),
                            ("Dir::State::Lists", base / "lists"), ("Dir::Cache", base / "cache"),
                            ("Dir::State::Status", base / "status"), ("Dir::Etc::Preferences", "/dev/null"),
                            ("Dir::Etc::PreferencesParts", "/dev/null"), ("Dir::Etc::Trusted", "/dev/null"),
                            ("Dir::Etc::TrustedParts", "/dev/null"), ("APT::Architecture", NATIVE),
                            ("APT::Architectures", NATIVE), ("APT::Sandbox::User", "root"),
                            ("Debug::NoLocking", "1"), ("Acquire::Languages", "none")):
            self.options += ["-o", f"{name}={value}"]

    def run(self, tool, *args, cwd=None):
        env = dict(os.environ, LC_ALL="C")
        return subprocess.run([tool, *self.options, *args], capture_output=True, text=True, cwd=cwd, env=env, check=False)

    def update(self):
        proc = self.run("apt-get", "update")
        return proc.returncode, proc.stdout + proc.stderr

    def versions(self, name):
        out = self.run("apt-cache", "madison", name).stdout
        return [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]

    def candidate(self, name):
        out = self.run("apt-cache", "policy", name).stdout
        for line in out.splitlines():
            if line.strip().startswith("Candidate:"):
                return line.split(":", 1)[1].strip()
        return None

    def download(self, name):
        where = self.base / "download"
        proc = self.run("apt-get", "download", name, cwd=where)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [str(where / f) for f in os.listdir(where)]


def fresh_apt(tmp_path, repo, public_key, tag="apt"):
    index = len([p for p in tmp_path.iterdir() if p.name.startswith(tag)])
    return Apt(tmp_path / f"{tag}{index}", repo, public_key)


def publish(repo, key, packages=(), *extra, check=True, **args):
    args = {"path": str(repo), "suite": SUITE, "architectures": [NATIVE, "all"], "signing_key": key.fingerprint,
            "gnupg_home": key.home, "packages": list(packages), **args}
    rc, result = run_module(MODULE, args, *extra, check=check)
    if not check:
        return rc, result
    assert rc == 0 and not result.get("failed"), result
    return result


def names(result, field="packages"):
    return sorted((p["name"], p["version"], p["architecture"]) for p in result[field])


def test_publish_apt_fetches_it_and_a_second_run_changes_nothing(tmp_path, key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    tool = build_deb(tmp_path, "libtool-x", "2.3-1", arch=NATIVE, source="tool-src (2.3-1)")
    first = publish(repo, key, [hello, str(tmp_path / "libtool-x_*.deb")], origin="replica test", label="tests")
    assert first["changed"] is True
    assert names(first) == [("hello", "1.0-1", "all"), ("libtool-x", "2.3-1", NATIVE)]
    assert names(first, "added") == names(first) and first["removed"] == []
    assert first["fingerprint"] == key.fingerprint
    by_name = {p["name"]: p for p in first["packages"]}
    assert by_name["hello"]["filename"] == "pool/main/h/hello/hello_1.0-1_all.deb"
    assert by_name["libtool-x"]["filename"] == f"pool/main/t/tool-src/libtool-x_2.3-1_{NATIVE}.deb"
    assert by_name["hello"]["sha256"] == sha256(hello)
    assert sha256(repo / by_name["hello"]["filename"]) == sha256(hello)
    assert first["inrelease"] == str(repo / "dists" / SUITE / "InRelease")
    release = (repo / "dists" / SUITE / "Release").read_text()
    for field in ("Origin: replica test", "Label: tests", f"Suite: {SUITE}", f"Codename: {SUITE}", "Components: main",
                  f"Architectures: {NATIVE} all", "Acquire-By-Hash: yes", "MD5Sum:", "SHA1:", "SHA256:", "SHA512:"):
        assert field in release
    assert (repo / "dists" / SUITE / "InRelease").read_text().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    assert (repo / "dists" / SUITE / "Release.gpg").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    verify = subprocess.run(["gpg", "--homedir", key.home, "--batch", "--verify",
                             str(repo / "dists" / SUITE / "Release.gpg"), str(repo / "dists" / SUITE / "Release")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr

    apt = fresh_apt(tmp_path, repo, key.public)
    rc, out = apt.update()
    assert rc == 0 and "W:" not in out and "E:" not in out, out
    assert apt.candidate("hello") == "1.0-1" and apt.candidate("libtool-x") == "2.3-1"
    fetched = apt.download("hello")
    assert len(fetched) == 1 and sha256(fetched[0]) == sha256(hello)

    before = tree_state(repo)
    again = publish(repo, key, [hello, tool], origin="replica test", label="tests")
    assert again["changed"] is False and again["added"] == [] and again["removed"] == []
    assert names(again) == names(first)
    assert tree_state(repo) == before


def test_a_newer_version_is_the_candidate_and_keep_versions_prunes(tmp_path, key):
    repo = tmp_path / "repo"
    debs = {v: build_deb(tmp_path, "hello", v) for v in ("1.0~rc1-1", "1.0-1", "1.0-1+b1", "1:0.9-1")}
    publish(repo, key, [debs["1.0~rc1-1"]])
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("hello") == "1.0~rc1-1"

    result = publish(repo, key, [debs["1.0-1"]])
    assert names(result, "added") == [("hello", "1.0-1", "all")]
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0
    assert apt.candidate("hello") == "1.0-1" and sorted(apt.versions("hello")) == ["1.0-1", "1.0~rc1-1"]

    old_file = repo / "pool/main/h/hello/hello_1.0~rc1-1_all.deb"
    assert old_file.is_file()
    result = publish(repo, key, [debs["1.0-1+b1"]], keep_versions=2)
    assert names(result, "added") == [("hello", "1.0-1+b1", "all")]
    assert names(result, "removed") == [("hello", "1.0~rc1-1", "all")]
    assert names(result) == [("hello", "1.0-1", "all"), ("hello", "1.0-1+b1", "all")]
    assert not old_file.exists()
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0
    assert apt.candidate("hello") == "1.0-1+b1" and sorted(apt.versions("hello")) == ["1.0-1", "1.0-1+b1"]

    # an epoch outranks everything: 1:0.9-1 is the newest, and keep_versions=1 keeps it alone
    result = publish(repo, key, [debs["1:0.9-1"]], keep_versions=1)
    assert names(result) == [("hello", "1:0.9-1", "all")]
    assert sorted(p["version"] for p in result["removed"]) == ["1.0-1", "1.0-1+b1"]
    assert sorted(os.listdir(repo / "pool/main/h/hello")) == ["hello_0.9-1_all.deb"]
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("hello") == "1:0.9-1"

    # adding a version older than what keep_versions keeps adds nothing (and says so)
    proc, result = adhoc({"path": str(repo), "suite": SUITE, "architectures": [NATIVE, "all"],
                          "signing_key": key.fingerprint, "gnupg_home": key.home, "packages": [debs["1.0-1"]],
                          "keep_versions": 1})
    assert proc.returncode == 0 and result["changed"] is False and result["added"] == []
    assert "is not added: keep_versions=1 keeps newer versions" in proc.stdout + proc.stderr


def test_absent_removes_packages_by_name_version_and_architecture(tmp_path, key):
    repo = tmp_path / "repo"
    debs = [build_deb(tmp_path, "hello", "1.0-1"), build_deb(tmp_path, "hello", "2.0-1"),
            build_deb(tmp_path, "tool", "1.0", arch=NATIVE), build_deb(tmp_path, "keep", "1.0")]
    publish(repo, key, debs)
    result = publish(repo, key, ["hello=1.0-1", {"name": "tool", "architecture": NATIVE}], state="absent")
    assert result["changed"] is True
    assert names(result, "removed") == [("hello", "1.0-1", "all"), ("tool", "1.0", NATIVE)]
    assert names(result) == [("hello", "2.0-1", "all"), ("keep", "1.0", "all")]
    assert not (repo / "pool/main/h/hello/hello_1.0-1_all.deb").exists()
    assert not (repo / "pool/main/t").exists()  # emptied pool folders go too
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0
    assert apt.versions("hello") == ["2.0-1"] and apt.candidate("tool") is None

    before = tree_state(repo)
    again = publish(repo, key, ["hello=1.0-1", "tool", "nothing-like-this"], state="absent")
    assert again["changed"] is False and tree_state(repo) == before

    result = publish(repo, key, ["hello"], state="absent")
    assert names(result) == [("keep", "1.0", "all")]
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("hello") is None and apt.candidate("keep") == "1.0"


def test_a_conflicting_duplicate_fails_and_the_tree_is_unchanged(tmp_path, key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1", payload="first build")])
    before = tree_state(repo)
    rebuilt = build_deb(tmp_path, "hello", "1.0-1", payload="second build, other contents")
    newer = build_deb(tmp_path, "hello", "2.0-1")
    rc, result = publish(repo, key, [newer, rebuilt], check=False)
    assert rc != 0, result
    assert "already in the repository with different contents" in result["msg"] and "new version" in result["msg"]
    assert tree_state(repo) == before
    # the same identity twice in one run, with different contents
    other = build_deb(tmp_path, "fresh", "1.0", payload="a")
    other2 = build_deb(tmp_path, "fresh", "1.0", payload="b")
    rc, result = publish(repo, key, [other, other2], check=False)
    assert rc != 0 and "given twice with different contents" in result["msg"]
    assert tree_state(repo) == before


def test_not_a_deb_and_a_glob_matching_nothing_fail_unchanged(tmp_path, key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1")])
    before = tree_state(repo)
    junk = tmp_path / "junk.deb"
    junk.write_text("this is not an ar archive\n")
    rc, result = publish(repo, key, [build_deb(tmp_path, "hello", "2.0-1"), str(junk)], check=False)
    assert rc != 0 and f"{junk} is not a Debian package" in result["msg"] and "dpkg-deb" in result["msg"]
    assert tree_state(repo) == before
    rc, result = publish(repo, key, [str(tmp_path / "nothing-*.deb")], check=False)
    assert rc != 0 and "matches no file" in result["msg"]
    rc, result = publish(repo, key, [str(tmp_path / "missing.deb")], check=False)
    assert rc != 0 and "does not exist" in result["msg"]
    rc, result = publish(repo, key, ["hello_1.0-1_all.deb"], check=False)
    assert rc != 0 and "not an absolute path" in result["msg"]
    rc, result = publish(repo, key, [str(tmp_path)], check=False)
    assert rc != 0 and "is a folder" in result["msg"]
    wrong_arch = build_deb(tmp_path, "other", "1.0", arch="s390x" if NATIVE != "s390x" else "arm64")
    rc, result = publish(repo, key, [wrong_arch], check=False)
    assert rc != 0 and "not in architectures" in result["msg"]
    assert tree_state(repo) == before
    # a new repository that fails is not even created
    rc, result = publish(tmp_path / "never", key, [str(junk)], check=False)
    assert rc != 0 and not (tmp_path / "never").exists()


def test_a_missing_key_or_one_without_its_secret_key_fails_unchanged(tmp_path, key, other_key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1")])
    before = tree_state(repo)
    rc, result = run_module(MODULE, {"path": str(repo), "suite": SUITE, "signing_key": other_key.fingerprint,
                                     "gnupg_home": key.home, "architectures": [NATIVE, "all"]}, check=False)
    assert rc != 0 and f"signing_key {other_key.fingerprint} is not in GnuPG home {key.home}" in result["msg"]
    # only the public key: import it into a home of its own
    public_only = tempfile.mkdtemp(prefix="drp-", dir="/tmp")
    try:
        subprocess.run(["gpg", "--homedir", public_only, "--batch", "--import", key.public], check=True,
                       capture_output=True)
        rc, result = run_module(MODULE, {"path": str(repo), "suite": SUITE, "signing_key": key.fingerprint,
                                         "gnupg_home": public_only, "architectures": [NATIVE, "all"]}, check=False)
        assert rc != 0 and "its secret key is not" in result["msg"]
    finally:
        subprocess.run(["gpgconf", "--homedir", public_only, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(public_only, ignore_errors=True)
    rc, result = run_module(MODULE, {"path": str(repo), "suite": SUITE, "signing_key": key.fingerprint,
                                     "gnupg_home": str(tmp_path / "no-such-home")}, check=False)
    assert rc != 0 and "does not exist" in result["msg"]
    assert tree_state(repo) == before


def test_a_signing_failure_late_in_the_run_leaves_the_tree_as_it_was(tmp_path):
    locked_key = Key("protected <protected@test.invalid>", passphrase="s3cret")
    try:
        repo = tmp_path / "repo"
        args = {"path": str(repo), "suite": SUITE, "signing_key": locked_key.fingerprint, "gnupg_home": locked_key.home,
                "architectures": [NATIVE, "all"], "passphrase": "s3cret",
                "packages": [build_deb(tmp_path, "hello", "1.0-1")]}
        rc, result = run_module(MODULE, args)
        assert rc == 0 and result["changed"]
        before = tree_state(repo)
        subprocess.run(["gpgconf", "--homedir", locked_key.home, "--kill", "gpg-agent"], check=False)
        args.update(passphrase="wrong", packages=[build_deb(tmp_path, "hello", "2.0-1")])
        rc, result = run_module(MODULE, args, check=False)
        assert rc != 0 and "signing the Release" in result["msg"]
        assert tree_state(repo) == before  # the new pool file and the new index folder are gone
        assert not (repo / "pool/main/h/hello/hello_2.0-1_all.deb").exists()
    finally:
        locked_key.close()


def adhoc(args, *extra):
    """The module through ``ansible`` as run_module runs it, with its output: ``(proc, result)``."""
    proc = run_ansible("ansible", "localhost", "-c", "local", "-i", "localhost,", "-e",
                       "ansible_python_interpreter=/usr/bin/python3", "-m", MODULE, "-a", json.dumps(args), *extra,
                       check=False)
    return proc, json.loads(proc.stdout[proc.stdout.index(" => {") + 4:])


def test_check_mode_reports_and_changes_nothing(tmp_path, key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    args = {"path": str(repo), "suite": SUITE, "signing_key": key.fingerprint, "gnupg_home": key.home,
            "packages": [hello], "architectures": [NATIVE, "all"]}
    proc, result = adhoc(args, "--check", "--diff")
    assert proc.returncode == 0 and result["changed"] is True and names(result, "added") == [("hello", "1.0-1", "all")]
    assert f"--- before: {SUITE} packages" in proc.stdout and "\n+main hello 1.0-1 all\n" in proc.stdout
    assert not repo.exists()
    publish(repo, key, [hello])
    before = tree_state(repo)
    newer = build_deb(tmp_path, "hello", "2.0-1")
    proc, result = adhoc(dict(args, packages=[newer], keep_versions=1), "--check", "--diff")
    assert proc.returncode == 0 and result["changed"] is True
    assert names(result, "added") == [("hello", "2.0-1", "all")] and names(result, "removed") == [("hello", "1.0-1", "all")]
    assert names(result) == [("hello", "2.0-1", "all")]
    assert "\n-main hello 1.0-1 all\n+main hello 2.0-1 all\n" in proc.stdout
    assert tree_state(repo) == before
    proc, result = adhoc(dict(args, packages=["hello"], state="absent"), "--check")
    assert result["changed"] is True and names(result, "removed") == [("hello", "1.0-1", "all")]
    assert tree_state(repo) == before


def _tamper(path):
    """Rewrite an index file (plain, gzip or xz, found by its magic) with one changed byte of text."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        text = gzip.decompress(data)
        pack = gzip.compress
    elif data[:6] == b"\xfd7zXZ\x00":
        text = lzma.decompress(data)
        pack = lzma.compress
    else:
        text, pack = data, bytes
    with open(path, "wb") as handle:
        handle.write(pack(text.replace(b"test package", b"test packagE")))


def test_apt_refuses_a_tampered_packages_file(tmp_path, key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1"), build_deb(tmp_path, "tool", "1.0", arch=NATIVE)])
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0  # untouched: fine
    binary = repo / "dists" / SUITE / "main" / f"binary-{NATIVE}"
    tampered = 0
    for folder, dummy, files in os.walk(binary):
        for name in files:
            _tamper(os.path.join(folder, name))
            tampered += 1
    assert tampered >= 3  # Packages, .gz, .xz and their by-hash copies
    apt = fresh_apt(tmp_path, repo, key.public)
    rc, out = apt.update()
    assert rc != 0 and ("Hash Sum mismatch" in out or "unexpected size" in out), out
    assert apt.candidate("hello") is None


def test_apt_refuses_a_repository_signed_by_another_key(tmp_path, key, other_key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    publish(repo, key, [hello])
    resigned = publish(repo, other_key, [hello])
    assert resigned["changed"] is True and resigned["added"] == []  # only signed again
    assert resigned["fingerprint"] == other_key.fingerprint
    apt = fresh_apt(tmp_path, repo, key.public)  # the source still trusts the first key only
    rc, out = apt.update()
    assert rc != 0 and ("NO_PUBKEY" in out or "not signed" in out), out
    assert apt.candidate("hello") is None
    apt = fresh_apt(tmp_path, repo, other_key.public)
    assert apt.update()[0] == 0 and apt.candidate("hello") == "1.0-1"
    assert publish(repo, other_key, [hello])["changed"] is False


def test_publication_switches_one_link_and_keeps_the_old_indexes_by_hash(tmp_path, key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1")])
    link = repo / "dists" / SUITE
    assert link.is_symlink() and os.readlink(link) == f".{SUITE}.1"
    old_release = (link / "Release").read_text()
    old_sums = [line.split() for line in old_release.split("SHA256:\n")[1].split("SHA512:")[0].splitlines()]
    publish(repo, key, [build_deb(tmp_path, "tool", "1.0", arch=NATIVE)])
    assert os.readlink(link) == f".{SUITE}.2"
    assert sorted(os.listdir(repo / "dists")) == [f".{SUITE}.2", SUITE]  # the old folder is gone
    # a client that read the old InRelease just before the switch still gets what it lists, by hash
    for digest, size, path in old_sums:
        old = link / os.path.dirname(path) / "by-hash" / "SHA256" / digest
        assert old.is_file() and old.stat().st_size == int(size) and sha256(old) == digest, path
    new_release = (link / "Release").read_text()
    assert f"main/binary-{NATIVE}/Packages" in new_release and new_release != old_release
    # and without by_hash, no by-hash folders and no Acquire-By-Hash
    publish(repo, key, by_hash=False)
    assert "Acquire-By-Hash" not in (link / "Release").read_text()
    assert not any("by-hash" in dirs for dummy, dirs, dummy2 in os.walk(link))
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("tool") == "1.0"


def publish_at_once(repo, key, debs):
    """Publish each of *debs* in its own run, all at once; each must land."""
    results = [None] * len(debs)

    def one(index):
        results[index] = publish(repo, key, [debs[index]], check=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(debs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rc, result in results:
        assert rc == 0 and result["changed"], result


def test_two_runs_at_once_both_land(tmp_path, key):
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "base", "1.0")])
    publish_at_once(repo, key, [build_deb(tmp_path, f"pkg{i}", "1.0") for i in range(2)])
    final = publish(repo, key)
    assert final["changed"] is False
    assert names(final) == [("base", "1.0", "all"), ("pkg0", "1.0", "all"), ("pkg1", "1.0", "all")]
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("pkg0") == "1.0" and apt.candidate("pkg1") == "1.0"


def test_two_first_runs_at_once_both_land(tmp_path, key):
    """The first run of a repository had a race on its lock file (O_EXCL: the loser failed with
    FileExistsError) and a failed first run's rollback deleted the lock another run waited on."""
    repo = tmp_path / "repo"
    publish_at_once(repo, key, [build_deb(tmp_path, f"first{i}", "1.0") for i in range(2)])
    assert ".deb_repo.lock" in os.listdir(repo)  # kept: a later run locks the same file
    final = publish(repo, key)
    assert names(final) == [("first0", "1.0", "all"), ("first1", "1.0", "all")]


@pytest.mark.parametrize("point", ["debrepo-written", "debrepo-switched"])
def test_killed_before_or_after_the_switch_then_a_rerun_converges(tmp_path, key, point):
    """Version 2.0 replaces 1.0 (keep_versions 1), killed with the new index written but not
    switched to, or switched to but not cleaned up after: apt sees the old or the new suite whole;
    the re-run publishes what is missing, or removes the old index folder and 1.0's pool file;
    the run after it changes nothing, and the tree is that of a run that was not killed."""
    repo, clean = tmp_path / "repo", tmp_path / "clean"
    old, new = build_deb(tmp_path, "hello", "1.0-1"), build_deb(tmp_path, "hello", "2.0-1")
    for where in (repo, clean):
        publish(where, key, [old])
    publish(clean, key, [new], keep_versions=1)
    args = {"path": str(repo), "suite": SUITE, "architectures": [NATIVE, "all"], "signing_key": key.fingerprint,
            "gnupg_home": key.home, "packages": [new], "keep_versions": 1}
    rc, result = run_module(MODULE, args, check=False, env={"REPLICA_CRASH_AT": point})
    assert rc != 0 and "Killed" in result.get("module_stderr", ""), result
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0
    assert apt.candidate("hello") == ("1.0-1" if point == "debrepo-written" else "2.0-1")
    assert len([n for n in os.listdir(repo / "dists") if n.startswith(f".{SUITE}.")]) == 2  # a folder left

    again = publish(repo, key, [new], keep_versions=1)
    assert again["changed"] is True
    if point == "debrepo-written":
        assert names(again, "added") == [("hello", "2.0-1", "all")] and "leftovers" not in again
    else:
        assert again["added"] == [] and "pool/main/h/hello/hello_1.0-1_all.deb" in again["leftovers"], again
    assert publish(repo, key, [new], keep_versions=1)["changed"] is False

    def files(root):
        return sorted(p for p in tree_state(root) if p.startswith("pool/") or "/" not in p)
    assert files(repo) == files(clean)
    assert len([n for n in os.listdir(repo / "dists") if n.startswith(f".{SUITE}.")]) == 1
    apt = fresh_apt(tmp_path, repo, key.public)
    assert apt.update()[0] == 0 and apt.candidate("hello") == "2.0-1"


def test_two_suites_share_the_pool(tmp_path, key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    publish(repo, key, [hello])
    publish(repo, key, [hello], suite="trixie", components=["main", "contrib"])
    assert (repo / "dists/trixie").is_symlink()
    publish(repo, key, ["hello"], state="absent")  # gone from bookworm, still listed by trixie
    assert (repo / "pool/main/h/hello/hello_1.0-1_all.deb").is_file()
    apt = Apt(tmp_path / "apt-trixie", repo, key.public, suite="trixie")
    assert apt.update()[0] == 0 and apt.candidate("hello") == "1.0-1"
    # a component that still holds packages cannot be dropped
    rc, result = publish(repo, key, suite="trixie", components=["contrib"], check=False)
    assert rc != 0 and "not in components" in result["msg"]


def build_hostile_deb(where, name, source=None):
    """A .deb whose control file breaks the rules (``dpkg-deb --nocheck`` builds what dpkg would
    refuse to): the module must refuse it, not lay it out in the pool."""
    tree = where / f"build-hostile-{hashlib.sha256((name + str(source)).encode()).hexdigest()[:8]}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\n"
                                         + (f"Source: {source}\n" if source else "")
                                         + "Maintainer: Test <test@test.invalid>\nDescription: hostile\n test\n")
    out = where / f"{tree.name}.deb"
    subprocess.run(["dpkg-deb", "--nocheck", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return str(out)


HOSTILE_OPTIONS = [
    {"suite": "bookworm\n"}, {"suite": "bookworm\nLabel: evil"}, {"suite": "../bookworm"}, {"suite": "book/worm"},
    {"suite": ".."}, {"suite": ""}, {"suite": "w\u00e9b"}, {"suite": "%n"},
    {"components": ["main\n"]}, {"components": ["main", "../x"]}, {"components": ["ma,in"]}, {"components": ["Main"]},
    {"components": ["main", "contrib\x00"]},
    {"architectures": [NATIVE + "\n", "all"]}, {"architectures": ["all", "a/b"]}, {"architectures": ["%n"]},
    {"architectures": ["all", "\uff41\uff4d\uff44\uff16\uff14"]},
    {"origin": "me\nSuite: evil"}, {"label": "x\x00"}, {"origin": " leading"},
]
HOSTILE_REMOVALS = [
    "hello\n", "hello\nother", "\nhello", "hello:../x", "hello:all\n", "hello=1.0-1\nx", "hello=1.0;rm", "../hello",
    "Hello", "hello,world", "%n", "hel\x00lo", {"name": "hello", "version": "1.0-1\n"},
    {"name": "hello", "architecture": "all\n"}, {"name": "hello\n"},
]


def publish_direct(repo, key, packages=(), **args):
    """The module run as the package pipeline runs it (its file with its arguments, no Ansible
    around it): a tenth of an ad-hoc run, for the many runs of the hostile-input test."""
    args = {"path": str(repo), "suite": SUITE, "architectures": [NATIVE, "all"], "signing_key": key.fingerprint,
            "gnupg_home": key.home, "packages": list(packages), **args}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "plugins/modules/deb_repo.py"), handle.name],
                              capture_output=True, text=True, check=False,
                              env=dict(os.environ, LC_ALL="C", PYTHONPATH=os.path.join(ROOT, ".collections")))
    finally:
        os.unlink(handle.name)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _clean_failure(rc, result):
    assert rc != 0 and result.get("msg"), result
    assert "exception" not in result and "module_stderr" not in result and "Traceback" not in result["msg"], result


def test_hostile_names_fail_cleanly_and_change_nothing(tmp_path, key):
    """suite, components, architectures, origin and label, packages to remove, and the control
    fields of a .deb: each hostile value fails with a message saying what is wrong, no traceback,
    and the repository is byte for byte as it was (a new one is not even made)."""
    repo = tmp_path / "repo"
    publish(repo, key, [build_deb(tmp_path, "hello", "1.0-1")])
    before = tree_state(repo)
    refused = []
    for index, option in enumerate(HOSTILE_OPTIONS):
        (field, value), = option.items()
        run = functools.partial(publish, check=False) if index == 0 else publish_direct   # one through Ansible
        rc, result = run(repo, key, [], **option)
        _clean_failure(rc, result)
        assert repr(value if isinstance(value, str) else next(v for v in value if v not in (NATIVE, "all", "main")))[1:-1] \
            in result["msg"], (option, result["msg"])
        refused.append(field)
    for spec in HOSTILE_REMOVALS:
        rc, result = publish_direct(repo, key, [spec], state="absent")
        _clean_failure(rc, result)
        assert "package to remove" in result["msg"], (spec, result["msg"])
        refused.append("remove")
    for name, source, words in (("Hello", None, "package name 'Hello'"), ("hello", "../../etc", "source package name '../../etc'"),
                                ("hello_world", None, "package name 'hello_world'")):
        rc, result = publish_direct(repo, key, [build_hostile_deb(tmp_path, name, source)])
        _clean_failure(rc, result)
        assert words in result["msg"] and "not a valid Debian package name" in result["msg"], result["msg"]
        refused.append("deb")
    assert len(refused) == len(HOSTILE_OPTIONS) + len(HOSTILE_REMOVALS) + 3
    assert tree_state(repo) == before
    rc, result = publish_direct(tmp_path / "never", key, [build_deb(tmp_path, "hello", "1.0-1")], suite="x\ny")
    _clean_failure(rc, result)
    assert not (tmp_path / "never").exists()
