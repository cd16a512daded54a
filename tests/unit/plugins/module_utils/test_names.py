# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule per kind of name (_names): hostile values refused by the rule and by every place
that takes a machine name (nspawn machines, VMs, network rules, instance_address, lab hosts), or
a package name (deb_repo, machine images, the package pipeline); interface names derived from
machine names stay distinct."""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _debrepo, _image, _names, _network, _nspawn, _qemu, _tools

TOP = pathlib.Path(__file__).resolve().parents[4]
sys.path.insert(0, str(TOP / "scripts"))
sys.path.insert(0, str(TOP / "tools"))

import replica_apt_pipeline  # noqa: E402  pylint: disable=wrong-import-position,import-error
import replica_lab  # noqa: E402  pylint: disable=wrong-import-position,import-error
from conftest import run_module_process  # noqa: E402  pylint: disable=wrong-import-position,import-error

#: strings no name of any kind may be: newlines (a second line in a unit file, a DHCP record),
#: list and field separators, systemd specifiers, shell and path syntax, Unicode look-alikes
HOSTILE_STRINGS = [
    "web1\n", "\nweb1", "we\nb1", "web1\r", "web1\t", "web 1", "web1,web2", "web%i", "%n", "web1;reboot",
    "..", "../web1", "web/1", "/web1", "web1\x00", "\x00", "", "wéb", "\uff57\uff45\uff42\uff11", "web\uff11",
    "web\u00b2", "\u0130stanbul", "web1\u200b",
]
HOSTILE_MACHINE = HOSTILE_STRINGS + [
    "x" * 64, "x" * 200, "-web", "web-", "-", "Web1", "WEB1", "web_1", "web.1", "web:1", "web=1", "web1$", "$(id)",
]
NOT_STRINGS = [None, 5, 1.5, True, ["web1"], {"name": "web1"}, b"web1"]
GOOD_MACHINE = ["a", "7", "web1", "w-1", "a-b-c", "0web", "x" * 63, "a" + "-" * 61 + "b"]

HOSTILE_PACKAGE = HOSTILE_STRINGS + ["a", "-hello", ".hello", "+hello", "Hello", "hello_world", "hello:amd64",
                                     "hello=1.0", "hello*", "hel lo"]
GOOD_PACKAGE = ["hello", "g++", "libc6", "lib32z1-dev", "0ad", "python3.11", "x" * 64, "x" * 200]


@pytest.mark.parametrize("name", HOSTILE_MACHINE + NOT_STRINGS, ids=ascii)
def test_the_machine_name_rule_refuses(name):
    assert not _names.is_machine_name(name)
    assert "must be a host name label: 1-63" in _names.machine_name_problem(name)
    with pytest.raises(_names.BadName, match="host name label"):
        _names.check_machine_name(name)
    with pytest.raises(_nspawn.MachineError):    # the caller's own class, a ValueError too
        _names.check_machine_name(name, "machine name", _nspawn.MachineError)


@pytest.mark.parametrize("name", GOOD_MACHINE)
def test_the_machine_name_rule_accepts(name):
    assert _names.check_machine_name(name) == name and _names.machine_name_problem(name) is None


@pytest.mark.parametrize("name", HOSTILE_PACKAGE + NOT_STRINGS, ids=ascii)
def test_the_package_name_rule_refuses(name):
    assert not _names.is_package_name(name)
    with pytest.raises(_names.BadName, match="not a valid Debian package name"):
        _names.check_package_name(name)


@pytest.mark.parametrize("name", GOOD_PACKAGE)
def test_the_package_name_rule_accepts(name):
    """Debian Policy 5.6.1 sets no length: a long name is refused, if ever, by the file system."""
    assert _names.check_package_name(name) == name


# --- the five places a machine name is taken ---------------------------------------------------

def _nspawn_refuses(name):
    with pytest.raises(_nspawn.MachineError, match="host name label"):
        _nspawn.check_name(name)
    with pytest.raises(_nspawn.MachineError, match="host name label"):
        _nspawn.check_inventory([{"name": name}], [{"name": "debian-13"}], default_image="debian-13")


def _qemu_refuses(name):
    with pytest.raises(_qemu.VmError, match="machine name .* host name label"):
        _qemu.check_name(name)
    with pytest.raises(_qemu.VmError, match="machine name .* host name label"):
        _qemu.validate({"name": name, "kernel": "/k"})


def _network_refuses(name):
    with pytest.raises(_network.NetworkError, match="the instance a host name label"):
        _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29"}, {"name": "wan", "ipv4": "10.20.2.0/29"}],
                                [{"from": f"lan/{name}", "to": "wan", "port": 443}], [], "h1.home.arpa")


def _lab_refuses(name):
    with pytest.raises(replica_lab.LabError, match="invalid lab host name"):
        replica_lab.validate_name(name)


REFUSERS = {"nspawn": _nspawn_refuses, "qemu": _qemu_refuses, "network": _network_refuses, "lab": _lab_refuses}


@pytest.mark.parametrize("caller", sorted(REFUSERS))
def test_every_caller_refuses_what_the_rule_refuses(caller):
    values = HOSTILE_MACHINE + (NOT_STRINGS if caller != "network" else [])   # a rule's ends are text
    for name in values:
        REFUSERS[caller](name)
    assert len(values) >= 36


def _network_folder(tmp_path):
    topology = _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29"}], [], [], "h1.home.arpa")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "segments.json").write_text(_network.segments_json(topology))
    (tmp_path / "avahi-hosts").write_text("# avahi\n")


def run_instance_address(tmp_path, name):
    """instance_address run as Ansible runs it (a process with its arguments)."""
    return run_module_process("instance_address", {"name": name, "segment": "lan", "config_dir": str(tmp_path / "net"),
                                                   "avahi_hosts": str(tmp_path / "avahi-hosts")}, tmp_path)


def test_every_caller_accepts_a_63_character_name(tmp_path):
    name = "a" * 62 + "1"
    assert _nspawn.check_name(name) == name
    assert _qemu.check_name(name) == name and _qemu.validate({"name": name, "kernel": "/k"})
    topology = _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29"}, {"name": "wan", "ipv4": "10.20.2.0/29"}],
                                       [{"from": f"lan/{name}", "to": "wan", "port": 443}], [], "h1.home.arpa")
    assert topology["rules"][0]["from_instance"] == name
    assert replica_lab.validate_name(name) == name
    _network_folder(tmp_path)
    out = run_instance_address(tmp_path, name)
    assert out["changed"] is True and out["fqdn"].startswith(f"{name}.")


def test_instance_address_refuses_them_before_anything_is_written(tmp_path):
    """The module on a real network folder: each hostile name fails with the rule, and the
    folder is as it was."""
    _network_folder(tmp_path)
    before = {str(p): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    refused = 0
    for name in HOSTILE_MACHINE:
        out = run_instance_address(tmp_path, name)
        assert out.get("failed") and "must be a host name label: 1-63" in out["msg"], (name, out)
        refused += 1
    assert refused == len(HOSTILE_MACHINE)
    after = {str(p): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*") if p.name != "instance_address.args.json"}
    assert after == before


def test_the_lab_uses_the_collections_rule():
    """The lab lives outside the collection and imports _names from plugins/module_utils (as it
    does _image): one file, one rule."""
    assert os.path.samefile(replica_lab._names.__file__, _names.__file__)  # pylint: disable=protected-access
    for name in HOSTILE_MACHINE + NOT_STRINGS + GOOD_MACHINE:
        lab_ok = True
        try:
            replica_lab.validate_name(name)
        except replica_lab.LabError:
            lab_ok = False
        assert lab_ok == _names.is_machine_name(name), name


# --- interface names ------------------------------------------------------------------------

def test_tap_names_fit_and_stay_distinct():
    assert _qemu.tap_name("win1") == "vm-win1"
    assert _qemu.tap_name("x" * 12) == "vm-" + "x" * 12          # fits in 15: kept as it is
    long_a, long_b = _qemu.tap_name("verylongname-a"), _qemu.tap_name("verylongname-b")
    assert long_a != long_b and len(long_a) == len(long_b) == 15
    assert long_a.startswith("vm-veryl_") and long_a == _qemu.tap_name("verylongname-a")   # stable
    names = [f"verylongname{i}" for i in range(2000)] + [f"{'x' * 12}{i}" for i in range(2000)] + ["x" * 63, "a" * 63]
    taps = {_qemu.tap_name(name) for name in names}
    assert len(taps) == len(names)
    assert all(len(tap) <= 15 and tap.isascii() and "/" not in tap for tap in taps)
    # a hashed name has '_', which no machine name has: it never meets a short one's vm-NAME
    assert all("_" in _qemu.tap_name(n) for n in names) and "_" not in _qemu.tap_name("abcde-1a2b3c")


def test_the_tap_is_named_one_way_everywhere():
    spec = {"name": "verylongname-a", "kernel": "/k", "network": {"type": "tap", "bridge": "br-lan"}}
    tap = _qemu.tap_name(spec["name"])
    argv = _qemu.build_argv(spec, "tcg")
    assert f"tap,id=n0,ifname={tap},script=no,downscript=no" in argv
    dropin = _qemu.render_dropin(spec, argv)
    assert f"ExecStartPre=+/sbin/ip tuntap add dev {tap} mode tap" in dropin
    assert f"ExecStopPost=+-/sbin/ip link delete {tap}" in dropin


def test_ifname_refuses_what_is_not_a_machine_name():
    for name in ("web1\n", "a/b", "x" * 64):
        with pytest.raises(_names.BadName):
            _names.ifname("vm-", name)
    with pytest.raises(_names.BadName, match="too long"):
        _names.ifname("a-very-long-prefix-", "x" * 20)


# --- package names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE_PACKAGE, ids=ascii)
def test_package_names_are_refused_by_every_taker(name):
    with pytest.raises(_image.ImageError, match="not a valid Debian package name"):
        _image.packages_for([name])
    fields = {"Package": name, "Version": "1.0-1", "Architecture": "all"}
    with pytest.raises(_debrepo.DebRepoError):
        _debrepo.candidate(fields, "main", "0" * 64)
    with pytest.raises(_debrepo.DebRepoError, match="package to remove"):
        _debrepo.parse_spec({"name": name})
    with pytest.raises(ValueError, match="spec name"):
        replica_apt_pipeline.check_spec({"name": name, "version": "1.0"})


@pytest.mark.parametrize("text", [
    "hello\n", "\nhello", "hel\nlo", "hello:amd64\n", "hello=1.0\n", "hello=1.0 x", "hello:am\nd64", "hello:AMD64",
    "hello:../x", "hello=", "hello=a1", "hello=1.0;rm", "../x", "hello,world", "%n", "hello\x00", "", ":amd64", "=1.0",
    {"name": "hello", "version": "1.0\n"}, {"name": "hello", "version": " 1.0"}, {"name": "hello", "architecture": "all\n"},
    {"name": "hello\n"}, {"name": "hello", "version": "1.0", "evil": "x"}, {"name": ""},
], ids=ascii)
def test_packages_to_remove_refuse_hostile_specs(text):
    with pytest.raises(_debrepo.DebRepoError, match="package to remove"):
        _debrepo.parse_spec(text)


@pytest.mark.parametrize("spec,words", [
    ({"name": "hello", "version": "1.0\n"}, "version"),
    ({"name": "hello", "version": "1.0\nDepends: evil"}, "version"),
    ({"name": "hello", "version": None}, "version"),
    ({"name": "hello", "version": "1.0", "architecture": "all\nDepends: evil"}, "architecture"),
    ({"name": "hello", "version": "1.0", "architecture": "../x"}, "architecture"),
    ({"name": "hello", "version": "1.0", "maintainer": "me\nDepends: evil"}, "maintainer"),
    ({"name": "hello", "version": "1.0", "depends": ["a", "b\nConflicts: c"]}, "depends"),
    ({"name": "hello", "version": "1.0", "files": [{"dest": "/etc/../../x"}]}, "file dest"),
    ({"name": "hello", "version": "1.0", "files": [{"dest": "etc/x"}]}, "file dest"),
    ({"name": "hello", "version": "1.0", "files": [{"dest": "/etc/x\n"}]}, "file dest"),
    ("hello", "must be a mapping"),
])
def test_the_pipeline_checks_its_specs(spec, words):
    with pytest.raises(ValueError, match=words):
        replica_apt_pipeline.check_spec(spec)


def test_the_pipeline_takes_good_specs():
    spec = {"name": "hello", "version": "1:1.0-1", "architecture": "amd64", "depends": ["libc6"],
            "files": [{"dest": "/usr/share/hello/README", "content": "hi\n"}], "description": "two\nlines"}
    assert replica_apt_pipeline.check_spec(spec) is spec


# --- the roles that install module_utils on the target -----------------------------------------

def _imports(path):
    """The collection's module_utils a file imports (``from ...module_utils import _a, _b`` and
    ``from ...module_utils._a import x``)."""
    text = path.read_text()
    found = set()
    for grouped, plain in re.findall(r"plugins\.module_utils import (?:\(([^)]*)\)|([\w, ]+))", text):
        names = re.sub(r"#.*", "", grouped) if grouped else plain
        found |= {f"{n.split(' as ')[0].strip()}.py" for n in names.replace("\n", " ").split(",") if n.strip()}
    found |= {f"{n}.py" for n in re.findall(r"plugins\.module_utils\.(_\w+) import", text)}
    return found


def _closure(files):
    utils = TOP / "plugins" / "module_utils"
    needed, todo = set(), list(files)
    while todo:
        for name in _imports(todo.pop()):
            if name not in needed:
                needed.add(name)
                todo.append(utils / name)
    return needed


def test_the_roles_install_every_module_util_their_code_imports():
    """The replica-tools package holds its commands (replica-machine, replica-snapshot, the
    package pipeline with the deb_repo engine) with every module_util their code imports (_names
    among them)."""
    spec = _tools.package_spec(lambda relative: (TOP / relative).read_text(), "0.1.0")
    packaged = {os.path.basename(f["dest"]) for f in spec["files"] if "/module_utils/" in f["dest"]}
    assert _closure([TOP / f"tools/{script}" for script in _tools.COMMANDS.values()]) == packaged, packaged
    assert {"_debrepo_publish.py", "_names.py", "_nspawn.py", "_retention.py"} <= packaged
