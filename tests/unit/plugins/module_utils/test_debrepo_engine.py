# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""deb_repo's publishing engine (``_debrepo_publish``) driven without Ansible, as the package
pipeline drives it: a ``_runner.Runner()`` (subprocess), real ``.deb`` files built with
``dpkg-deb``, a real GnuPG key (a short-path GNUPGHOME under /tmp, its agent killed afterwards),
``apt-ftparchive`` and ``gpg`` writing and signing the index in a ``tmp_path``. Publication, a
second run that changes nothing, a newer version, keep_versions, removal, check mode (nothing on
disk changes), failures that take back what they made (a command's failure keeps its fields), and
the package pipeline itself run with ``python -S`` (no site packages: no Ansible) from a program
folder laid out as the apt_repo role installs it."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _debrepo_publish as engine
from ansible_collections.replica.cloud.plugins.module_utils import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SUITE = "bookworm"
TOOLS = ("dpkg-deb", "apt-ftparchive", "gpg", "gpgconf")
MISSING = next((tool for tool in TOOLS if not shutil.which(tool)), None)
REASON = f"{MISSING} is not installed (scripts/setup installs dpkg, apt-utils and gnupg)" if MISSING else ""
NATIVE = (subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False).stdout.strip()
          if shutil.which("dpkg") else "") or "amd64"

pytestmark = pytest.mark.skipif(MISSING is not None, reason=REASON)
if MISSING:  # said in the warnings summary too, not only with -rs
    warnings.warn(f"test_debrepo_engine is skipped: {REASON}", stacklevel=1)


class Key:
    """A GnuPG home (a short path under /tmp: gpg-agent's socket) with one ed25519 signing key."""

    def __init__(self, uid, passphrase=""):
        self.home = tempfile.mkdtemp(prefix="dre-", dir="/tmp")
        subprocess.run(["gpg", "--homedir", self.home, "--batch", "--pinentry-mode", "loopback", "--passphrase",
                        passphrase, "--quick-gen-key", uid, "ed25519", "sign", "never"], check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--with-colons", "--list-secret-keys"],
                                 check=True, capture_output=True, text=True).stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def verify(self, signature, *data):
        """gpg's verdict on *signature* (of *data*, when detached): its exit status."""
        return subprocess.run(["gpg", "--homedir", self.home, "--batch", "--verify", str(signature), *map(str, data)],
                              capture_output=True, check=False).returncode

    def close(self):
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def key():
    made = Key("deb_repo engine test <engine@test.invalid>")
    yield made
    made.close()


def build_deb(where, name, version, arch="all", payload=""):
    """A real binary package, built with dpkg-deb."""
    tree = where / f"build-{name}-{version}-{arch}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "payload").write_text(f"{name} {version} {payload}\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Test <test@test.invalid>\n"
        f"Section: misc\nPriority: optional\nDescription: {name} for the engine tests\n test package\n")
    out = where / f"{tree.name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return str(out)


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def tree_state(root):
    """Every path under *root* with its type, mode and contents (or link target)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path):
                state[os.path.relpath(path, root)] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[os.path.relpath(path, root)] = ("dir", oct(info.st_mode))
            else:
                state[os.path.relpath(path, root)] = ("file", oct(info.st_mode), sha256(path))
    return state


def converge(repo, key, packages=(), check_mode=False, diff=False, **options):
    params = {"path": str(repo), "suite": SUITE, "architectures": [NATIVE, "all"], "signing_key": key.fingerprint,
              "gnupg_home": key.home, "packages": list(packages), **options}
    return engine.converge(params, _runner.Runner(check_mode=check_mode), diff=diff)


def names(result, field="packages"):
    return sorted((p["name"], p["version"], p["architecture"]) for p in result[field])


def packages_files(repo, arch):
    """The published Packages of main/binary-ARCH: plain, gz and xz, decompressed."""
    folder = repo / "dists" / SUITE / "main" / f"binary-{arch}"
    with gzip.open(folder / "Packages.gz", "rb") as gz, lzma.open(folder / "Packages.xz", "rb") as xz:
        return (folder / "Packages").read_bytes(), gz.read(), xz.read()


def listed(repo, arch):
    """``(Package, Version, Filename)`` of each paragraph of main/binary-ARCH/Packages."""
    plain, gz, xz = packages_files(repo, arch)
    assert plain == gz == xz
    found = []
    for paragraph in plain.decode().strip().split("\n\n") if plain.strip() else []:
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if not line.startswith(" "))
        found.append((fields["Package"], fields["Version"], fields["Filename"]))
    return sorted(found)


def test_publish_signs_an_index_and_a_second_run_changes_nothing(tmp_path, key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    tool = build_deb(tmp_path, "tool", "2.3-1", arch=NATIVE)
    first = converge(repo, key, [hello, tool], origin="engine test", label="tests")
    assert first["changed"] is True and "warnings" not in first and "leftovers" not in first
    assert names(first) == [("hello", "1.0-1", "all"), ("tool", "2.3-1", NATIVE)] == names(first, "added")
    assert first["removed"] == [] and first["fingerprint"] == key.fingerprint
    assert first["inrelease"] == str(repo / "dists" / SUITE / "InRelease")
    by_name = {p["name"]: p for p in first["packages"]}
    assert by_name["hello"]["filename"] == "pool/main/h/hello/hello_1.0-1_all.deb"
    assert by_name["tool"]["filename"] == f"pool/main/t/tool/tool_2.3-1_{NATIVE}.deb"
    for name, source in (("hello", hello), ("tool", tool)):
        assert by_name[name]["sha256"] == sha256(source) == sha256(repo / by_name[name]["filename"])

    link = repo / "dists" / SUITE
    assert link.is_symlink() and os.readlink(link) == f".{SUITE}.1"
    release = (link / "Release").read_text()
    for field in ("Origin: engine test", "Label: tests", f"Suite: {SUITE}", f"Codename: {SUITE}", "Components: main",
                  f"Architectures: {NATIVE} all", "Acquire-By-Hash: yes", "MD5Sum:", "SHA1:", "SHA256:", "SHA512:"):
        assert field in release, field
    assert key.verify(link / "Release.gpg", link / "Release") == 0
    assert key.verify(link / "InRelease") == 0
    assert (link / "InRelease").read_text().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    # an architecture-all package is listed for every architecture, the native one only for its own
    assert listed(repo, NATIVE) == [("hello", "1.0-1", "pool/main/h/hello/hello_1.0-1_all.deb"),
                                    ("tool", "2.3-1", f"pool/main/t/tool/tool_2.3-1_{NATIVE}.deb")]
    assert listed(repo, "all") == [("hello", "1.0-1", "pool/main/h/hello/hello_1.0-1_all.deb")]
    # each index file is reachable by its hash, as the Release says
    sums = [line.split() for line in release.split("SHA256:\n")[1].split("SHA512:")[0].splitlines()]
    assert sums
    for digest, size, path in sums:
        by_hash = link / os.path.dirname(path) / "by-hash" / "SHA256" / digest
        assert sha256(by_hash) == digest and by_hash.stat().st_size == int(size), path

    before = tree_state(repo)
    again = converge(repo, key, [hello, tool], origin="engine test", label="tests")
    assert again["changed"] is False and again["added"] == [] and again["removed"] == []
    assert names(again) == names(first) and again["fingerprint"] == key.fingerprint
    assert tree_state(repo) == before


def test_a_newer_version_is_added_and_keep_versions_prunes_the_oldest(tmp_path, key):
    repo = tmp_path / "repo"
    debs = {v: build_deb(tmp_path, "hello", v) for v in ("1.0-1", "2.0-1", "3.0-1")}
    converge(repo, key, [debs["1.0-1"]])
    result = converge(repo, key, [debs["2.0-1"]])
    assert result["changed"] is True and names(result, "added") == [("hello", "2.0-1", "all")]
    assert result["removed"] == [] and names(result) == [("hello", "1.0-1", "all"), ("hello", "2.0-1", "all")]
    assert [v for dummy, v, dummy2 in listed(repo, "all")] == ["1.0-1", "2.0-1"]
    assert os.readlink(repo / "dists" / SUITE) == f".{SUITE}.2"
    assert sorted(os.listdir(repo / "dists")) == [f".{SUITE}.2", SUITE]  # the old index folder is gone

    old_file = repo / "pool/main/h/hello/hello_1.0-1_all.deb"
    assert old_file.is_file()
    result = converge(repo, key, [debs["3.0-1"]], keep_versions=2)
    assert names(result, "added") == [("hello", "3.0-1", "all")]
    assert names(result, "removed") == [("hello", "1.0-1", "all")]
    assert names(result) == [("hello", "2.0-1", "all"), ("hello", "3.0-1", "all")]
    assert not old_file.exists()
    assert sorted(os.listdir(repo / "pool/main/h/hello")) == ["hello_2.0-1_all.deb", "hello_3.0-1_all.deb"]
    assert [v for dummy, v, dummy2 in listed(repo, NATIVE)] == ["2.0-1", "3.0-1"]

    # a version older than the ones kept is not added; without a warn callable the warning is
    # in the result
    before = tree_state(repo)
    result = converge(repo, key, [debs["1.0-1"]], keep_versions=2)
    assert result["changed"] is False and result["added"] == []
    assert len(result["warnings"]) == 1 and "is not added: keep_versions=2 keeps newer versions" in result["warnings"][0]
    assert tree_state(repo) == before


def test_absent_removes_packages_and_their_pool_files(tmp_path, key):
    repo = tmp_path / "repo"
    debs = [build_deb(tmp_path, "hello", "1.0-1"), build_deb(tmp_path, "hello", "2.0-1"),
            build_deb(tmp_path, "tool", "1.0", arch=NATIVE), build_deb(tmp_path, "keep", "1.0")]
    converge(repo, key, debs)
    result = converge(repo, key, ["hello=1.0-1", {"name": "tool", "architecture": NATIVE}], state="absent")
    assert result["changed"] is True
    assert names(result, "removed") == [("hello", "1.0-1", "all"), ("tool", "1.0", NATIVE)]
    assert names(result) == [("hello", "2.0-1", "all"), ("keep", "1.0", "all")]
    assert not (repo / "pool/main/h/hello/hello_1.0-1_all.deb").exists()
    assert not (repo / "pool/main/t").exists()  # emptied pool folders go too
    assert listed(repo, NATIVE) == [("hello", "2.0-1", "pool/main/h/hello/hello_2.0-1_all.deb"),
                                    ("keep", "1.0", "pool/main/k/keep/keep_1.0_all.deb")]
    assert key.verify(repo / "dists" / SUITE / "InRelease") == 0

    before = tree_state(repo)
    again = converge(repo, key, ["hello=1.0-1", "tool", "nothing-like-this"], state="absent")
    assert again["changed"] is False and again["removed"] == [] and tree_state(repo) == before

    result = converge(repo, key, ["hello", "keep"], state="absent")
    assert result["packages"] == [] and names(result, "removed") == [("hello", "2.0-1", "all"), ("keep", "1.0", "all")]
    assert listed(repo, NATIVE) == [] and listed(repo, "all") == []
    assert not (repo / "pool/main/h").exists() and not (repo / "pool/main/k").exists()
    assert [files for dummy, dummy2, files in os.walk(repo / "pool") if files] == []


def test_check_mode_reports_and_changes_nothing_on_disk(tmp_path, key):
    repo = tmp_path / "repo"
    hello = build_deb(tmp_path, "hello", "1.0-1")
    result = converge(repo, key, [hello], check_mode=True, diff=True)
    assert result["changed"] is True and names(result, "added") == [("hello", "1.0-1", "all")]
    assert result["diff"]["before"] == "" and "main hello 1.0-1 all" in result["diff"]["after"]
    assert result["diff"]["before_header"] == f"{SUITE} packages"
    assert not repo.exists()  # not even the folder, nor its lock

    converge(repo, key, [hello])
    before = tree_state(repo)
    newer = build_deb(tmp_path, "hello", "2.0-1")
    result = converge(repo, key, [newer], check_mode=True, diff=True, keep_versions=1)
    assert result["changed"] is True
    assert names(result, "added") == [("hello", "2.0-1", "all")]
    assert names(result, "removed") == [("hello", "1.0-1", "all")] and names(result) == [("hello", "2.0-1", "all")]
    assert "main hello 1.0-1 all" in result["diff"]["before"] and "main hello 2.0-1 all" in result["diff"]["after"]
    assert tree_state(repo) == before
    result = converge(repo, key, ["hello"], check_mode=True, state="absent")
    assert result["changed"] is True and names(result, "removed") == [("hello", "1.0-1", "all")]
    assert result["packages"] == [] and "diff" not in result
    result = converge(repo, key, [hello], check_mode=True, by_hash=False)  # a changed Release: republished
    assert result["changed"] is True and result["added"] == []
    assert tree_state(repo) == before


def test_failures_take_back_what_they_made_and_say_why(tmp_path, key):
    repo = tmp_path / "repo"
    converge(repo, key, [build_deb(tmp_path, "hello", "1.0-1", payload="first build")])
    before = tree_state(repo)
    rebuilt = build_deb(tmp_path, "hello", "1.0-1", payload="second build, other contents")
    with pytest.raises(engine.PublishFailed) as failed:
        converge(repo, key, [build_deb(tmp_path, "hello", "2.0-1"), rebuilt])
    assert isinstance(failed.value.cause, engine.DebRepoError)
    assert "already in the repository with different contents" in str(failed.value)
    assert failed.value.result["changed"] is False and failed.value.result["fingerprint"] == key.fingerprint
    junk = tmp_path / "junk.deb"
    junk.write_text("this is not an ar archive\n")
    with pytest.raises(engine.PublishFailed) as failed:
        converge(repo, key, [str(junk)])
    assert f"{junk} is not a Debian package" in str(failed.value) and "dpkg-deb" in str(failed.value)
    with pytest.raises(engine.PublishFailed, match="matches no file"):
        converge(repo, key, [str(tmp_path / "nothing-*.deb")])
    with pytest.raises(engine.PublishFailed, match="is not one of components"):
        converge(repo, key, [], component="contrib")
    assert tree_state(repo) == before
    with pytest.raises(engine.PublishFailed):  # a new repository that fails is not even created
        converge(tmp_path / "never", key, [str(junk)])
    assert not (tmp_path / "never").exists()


def test_a_failed_command_is_taken_back_and_keeps_its_fields(tmp_path):
    locked_key = Key("protected <protected@test.invalid>", passphrase="s3cret")
    try:
        repo = tmp_path / "repo"
        assert converge(repo, locked_key, [build_deb(tmp_path, "hello", "1.0-1")], passphrase="s3cret")["changed"]
        before = tree_state(repo)
        subprocess.run(["gpgconf", "--homedir", locked_key.home, "--kill", "gpg-agent"], check=False)
        with pytest.raises(engine.PublishFailed) as failed:
            converge(repo, locked_key, [build_deb(tmp_path, "hello", "2.0-1")], passphrase="wrong")
        cause = failed.value.cause
        assert isinstance(cause, _runner.CommandError) and str(failed.value) == str(cause)
        assert str(cause).startswith(f"signing the Release with {locked_key.fingerprint}: gpg failed (exit ")
        fields = cause.fields()
        assert fields["rc"] != 0 and fields["cmd"][0].endswith("gpg") and "--local-user" in fields["cmd"]
        assert failed.value.result["changed"] is False
        assert tree_state(repo) == before  # the new pool file and the new index folder are gone
    finally:
        locked_key.close()


def install_pipeline(root):
    """The pipeline as the replica-tools package lays it out (under a scratch root)."""
    from ansible_collections.replica.cloud.plugins.module_utils import _tools  # pylint: disable=import-outside-toplevel

    spec = _tools.package_spec(lambda relative: open(os.path.join(ROOT, relative), encoding="utf-8").read(), "0.1.0")
    for item in spec["files"]:
        dest = os.path.join(root, item["dest"].lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w", encoding="utf-8") as handle:
            handle.write(item["content"])
    assert not any("/modules/" in item["dest"] for item in spec["files"])  # no module file on the host
    return os.path.join(root, _tools.PYTHON_DIR.lstrip("/"), "replica_apt_pipeline.py")


def test_the_package_pipeline_publishes_with_the_engine_and_no_ansible(tmp_path, key):
    program = install_pipeline(tmp_path / "program")
    config = {"path": str(tmp_path / "repo"), "suite": SUITE, "components": ["main"], "architectures": [NATIVE, "all"],
              "origin": "pipeline test", "label": None, "signing_key": key.fingerprint, "gnupg_home": key.home,
              "keep_versions": 1, "work": str(tmp_path / "work"), "sources": [],
              "specs": [{"name": "hello-replica", "version": "1.0-1", "description": "a test\n more",
                         "files": [{"dest": "/usr/share/hello-replica/hello", "content": "hello\n"}]}]}
    declared = tmp_path / "pipeline.json"

    def pipeline():
        declared.write_text(json.dumps(config))
        # -S: no site packages, so no Ansible to import; -I: nothing of the caller's environment
        return subprocess.run([sys.executable, "-I", "-S", program], capture_output=True, text=True, check=False,
                              env=dict(os.environ, REPLICA_APT_PIPELINE_CONFIG=str(declared)))

    proc = pipeline()
    assert proc.returncode == 0, proc.stderr
    assert "built hello-replica_1.0-1_all.deb" in proc.stdout and "added hello-replica 1.0-1 all" in proc.stdout
    assert f"{SUITE}: 1 packages, published; signed by {key.fingerprint}" in proc.stdout
    repo = tmp_path / "repo"
    assert listed(repo, "all") == [("hello-replica", "1.0-1", "pool/main/h/hello-replica/hello-replica_1.0-1_all.deb")]
    assert key.verify(repo / "dists" / SUITE / "InRelease") == 0

    before = tree_state(repo)
    proc = pipeline()
    assert proc.returncode == 0 and f"{SUITE}: 1 packages, no change" in proc.stdout, proc.stdout + proc.stderr
    assert tree_state(repo) == before

    config["specs"][0]["version"] = "1.1-1"  # a new version replaces the old one (keep_versions 1)
    proc = pipeline()
    assert proc.returncode == 0, proc.stderr
    assert "added hello-replica 1.1-1 all" in proc.stdout and "removed hello-replica 1.0-1 all" in proc.stdout
    assert "pruned hello-replica_1.0-1_all.deb" in proc.stdout
    assert [v for dummy, v, dummy2 in listed(repo, NATIVE)] == ["1.1-1"]

    config["signing_key"] = "0" * 40  # a failure: said on stderr, exit status 1, the repository as it was
    before = tree_state(repo)
    proc = pipeline()
    assert proc.returncode == 1 and proc.stderr.startswith("replica-apt-pipeline: deb_repo: signing_key "), proc.stderr
    assert tree_state(repo) == before


def test_the_engine_defaults_are_the_modules():
    """What the pipeline leaves out is what the module's options default to."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("ansible")
    from ansible_collections.replica.cloud.plugins.modules import deb_repo  # pylint: disable=import-outside-toplevel

    options = yaml.safe_load(deb_repo.DOCUMENTATION)["options"]
    optional = {name: spec.get("default") for name, spec in options.items() if not spec.get("required")}
    assert engine.DEFAULTS == optional
