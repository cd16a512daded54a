# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every entry point that takes a machine name refuses a 64-character one with the same message,
and a misspelled suboption fails before anything is written: the modules run as Ansible runs them
(a process with its arguments), the replica-machine command as its unit runs it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _names, _network

TOP = pathlib.Path(__file__).resolve().parents[4]
sys.path.insert(0, str(TOP / "scripts"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position,import-error
from conftest import run_module_process  # noqa: E402  pylint: disable=wrong-import-position,import-error

LONG = "a" * 64
MESSAGE = f"machine name {LONG!r} must be a host name label: {_names.MACHINE_NAME_RULE}"


def run_module(tmp_path, module, args):
    return run_module_process(module, args, tmp_path)


def tree(root):
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*"))


def test_a_64_character_name_is_refused_everywhere_with_the_same_message(tmp_path):
    messages = {}
    for module, args in (("nspawn_machine", {"machines_dir": str(tmp_path / "m"), "image": "/nonexistent"}),
                         ("qemu_vm", {"vms_dir": str(tmp_path / "v"), "kernel": "/k"}),
                         ("instance_address", {"segment": "lan", "config_dir": str(tmp_path / "net")})):
        out = run_module(tmp_path, module, dict(args, name=LONG))
        assert out.get("failed"), (module, out)
        messages[module] = out["msg"]
    # the command replica-machine@NAME.service runs, as installed (module_utils beside it)
    command = subprocess.run([sys.executable, str(TOP / "tools/replica_machine.py"), "prepare", LONG],
                             capture_output=True, text=True, check=False,
                             env=dict(os.environ, PYTHONPATH=str(TOP / ".collections")))
    assert command.returncode == 1 and command.stderr.startswith(f"replica-machine {LONG}: ")
    messages["replica-machine"] = command.stderr.split(": ", 1)[1].strip()
    with pytest.raises(replica_lab.LabError) as lab:
        replica_lab.validate_name(LONG)
    messages["lab"] = str(lab.value).split(": ", 1)[1]
    with pytest.raises(_network.NetworkError) as rule:
        _network.check_topology([{"name": "lan", "ipv4": "10.20.1.0/29"}, {"name": "wan", "ipv4": "10.20.2.0/29"}],
                                [{"from": f"lan/{LONG}", "to": "wan", "port": 443}], [], "h1.home.arpa")
    assert _names.MACHINE_NAME_RULE in str(rule.value)
    assert messages == dict.fromkeys(messages, MESSAGE), messages
    assert not (tmp_path / "m").exists() and not (tmp_path / "v").exists()
    # 63 is the longest the rule takes
    assert _names.check_machine_name(LONG[:63]) == LONG[:63]


@pytest.mark.parametrize("module, args, wrong", [
    ("nspawn_machine", {"name": "web1", "image": "/nonexistent", "network": {"type": "bridge", "brige": "br0"}},
     "network.brige"),
    ("nspawn_machine", {"name": "web1", "image": "/nonexistent", "users": [{"name": "ann", "shel": "/bin/sh"}]},
     "users.shel"),
    ("nspawn_machine", {"name": "web1", "image": "/nonexistent", "files": [{"path": "/etc/x", "contents": "x"}]},
     "files.contents"),
    ("nspawn_machine", {"name": "web1", "image": "/nonexistent", "nfs": [{"what": "s:/e", "where": "/mnt", "optons": "ro"}]},
     "nfs.optons"),
    ("qemu_vm", {"name": "vm1", "kernel": "/k", "disks": [{"path": "/d.raw", "formt": "raw"}]}, "disks.formt"),
    ("qemu_vm", {"name": "vm1", "kernel": "/k", "cloud_init": {"hostnme": "x"}}, "cloud_init.hostnme"),
    ("qemu_vm", {"name": "vm1", "kernel": "/k", "network": {"type": "tap", "bridg": "br0"}}, "network.bridg"),
    ("cow_snapshot", {"src": "/srv/x", "state": "pruned", "retention": {"daly": 7}}, "retention.daly"),
])
def test_a_misspelled_suboption_fails_before_anything_is_written(tmp_path, module, args, wrong):
    where = {"nspawn_machine": "machines_dir", "qemu_vm": "vms_dir", "cow_snapshot": "snapshot_dir"}[module]
    (tmp_path / "place").mkdir()
    args = dict(args, **{where: str(tmp_path / "place")})
    before = tree(tmp_path) + [f"{module}.args.json"]
    out = run_module(tmp_path, module, args)
    assert out.get("failed"), out
    # run outside Ansible the module is called "basic.py" in the message
    assert f") module: {wrong}. Supported parameters include: " in out["msg"], out["msg"]
    assert tree(tmp_path) == sorted(before)   # nothing but the arguments' file
