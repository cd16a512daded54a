# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica-tools, the collection's host tools as a Debian package: built by the deb_build module
(run as Ansible runs it) with the pipeline's builder and real dpkg-deb, reproducible, versioned
by its contents, and whole: the commands run from the unpacked package alone."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import subprocess

import pytest

from conftest import run_module_process  # pylint: disable=import-error

from ansible_collections.replica.cloud.plugins.module_utils import _names, _tools

TOP = pathlib.Path(__file__).resolve().parents[4]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (the dpkg package)")


def read(relative):
    return (TOP / relative).read_text()


def deb_build(tmp_path, args, *flags):
    return run_module_process("deb_build", args, tmp_path, **{flag: True for flag in flags})


def digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_the_package_is_built_reproducibly_and_once(tmp_path):
    spec = _tools.package_spec(read, "0.1.0")
    out = tmp_path / "debs"
    checked = deb_build(tmp_path, {"spec": spec, "dest_dir": str(out)}, "_ansible_check_mode")
    assert checked["changed"] is True and not out.exists()
    built = deb_build(tmp_path, {"spec": spec, "dest_dir": str(out)})
    assert built["changed"] is True and built["deb"] == str(out / f"replica-tools_{spec['version']}_all.deb")
    first = digest(built["deb"])
    again = deb_build(tmp_path, {"spec": spec, "dest_dir": str(out)})
    assert again["changed"] is False and digest(again["deb"]) == first
    # the same spec elsewhere gives the same bytes
    other = deb_build(tmp_path, {"spec": spec, "dest_dir": str(tmp_path / "other")})
    assert digest(other["deb"]) == first
    fields = subprocess.run(["dpkg-deb", "--field", built["deb"], "Package", "Version", "Architecture", "Depends"],
                            capture_output=True, text=True, check=True).stdout
    assert fields.splitlines() == ["Package: replica-tools", f"Version: {spec['version']}", "Architecture: all",
                                   "Depends: python3 (>= 3.11), systemd"]
    listing = subprocess.run(["dpkg-deb", "--contents", built["deb"]], capture_output=True, text=True, check=True).stdout
    assert "-rwxr-xr-x root/root" in next(line for line in listing.splitlines() if line.endswith("/usr/sbin/replica-machine"))
    assert all(" root/root " in line for line in listing.splitlines())


def test_other_contents_are_another_version():
    spec = _tools.package_spec(read, "0.1.0")
    changed = _tools.package_spec(lambda r: read(r) + ("# changed\n" if r.endswith("_names.py") else ""), "0.1.0")
    assert spec["version"].startswith("0.1.0+") and changed["version"] != spec["version"]
    assert _tools.package_spec(read, "0.1.0") == spec   # the same files: the same spec


def test_the_unpacked_package_alone_runs_its_commands(tmp_path):
    """Nothing outside the package is needed: unpacked, replica-machine applies the collection's
    name rule (a 64-character name is refused with the rule's message) and replica-snapshot
    reads its policies."""
    built = deb_build(tmp_path, {"spec": _tools.package_spec(read, "0.1.0"), "dest_dir": str(tmp_path / "debs")})
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", built["deb"], str(root)], check=True)
    python_dir = root / _tools.PYTHON_DIR.lstrip("/")
    # -I: no site packages and no PYTHONPATH but the package's own folder
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(python_dir)}
    name = "a" * 64
    machine = subprocess.run(["/usr/bin/python3", "-S", str(python_dir / "replica_machine.py"), "prepare", name],
                             capture_output=True, text=True, env=env, check=False)
    assert machine.returncode == 1
    assert machine.stderr.strip() == f"replica-machine {name}: machine name {name!r} must be a host name label: " \
                                     f"{_names.MACHINE_NAME_RULE}"
    snapshot = subprocess.run(["/usr/bin/python3", "-S", str(python_dir / "replica_snapshot.py"), "--policies",
                               str(tmp_path), "nothing"], capture_output=True, text=True, env=env, check=False)
    assert snapshot.returncode != 0 and "Traceback" not in snapshot.stderr and "nothing" in snapshot.stderr
    wrapper = (root / "usr/sbin/replica-machine").read_text()
    assert wrapper.endswith(f"exec /usr/bin/python3 {_tools.PYTHON_DIR}/replica_machine.py \"$@\"\n")
