# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The containers role passes every nspawn_machine option through (none silently dropped), and a
misspelled key in an entry, or in one of its dict options, fails before anything is made."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from ansible_collections.replica.cloud.plugins.module_utils import _nspawn

TOP = pathlib.Path(__file__).resolve().parents[4]
IMAGES = [{"name": "debian-13"}]


def converge_task():
    tasks = yaml.safe_load((TOP / "roles/containers/tasks/main.yml").read_text())
    return next(t for t in tasks if t.get("name") == "Converge the machines")["replica.cloud.nspawn_machine"]


def test_the_role_maps_every_option_of_the_module():
    mapped = set(converge_task())
    assert mapped | set(_nspawn.ROLE_OWNED) == set(_nspawn.ARGUMENT_SPEC), \
        (set(_nspawn.ARGUMENT_SPEC) - mapped - set(_nspawn.ROLE_OWNED), mapped - set(_nspawn.ARGUMENT_SPEC))
    for key, template in converge_task().items():   # each from the entry (or the role's own default)
        if key not in ("images_dir",):
            assert f"item.{key}" in str(template), (key, template)


@pytest.mark.parametrize("entry, message", [
    ({"name": "web1", "memory": "1G"}, "machine 'web1': unknown key memory (known: "),
    ({"name": "web1", "network": {"type": "bridge", "brige": "br0"}}, "machine 'web1': network: unknown key brige (known: "),
    ({"name": "web1", "users": [{"name": "ann", "shel": "/bin/sh"}]}, "machine 'web1': users[0]: unknown key shel"),
    ({"name": "web1", "files": [{"path": "/x", "contents": "x"}]}, "machine 'web1': files[0]: unknown key contents"),
    ({"name": "web1", "nfs": [{"what": "s:/e", "where": "/m", "optons": "ro"}]}, "machine 'web1': nfs[0]: unknown key optons"),
    ({"name": "web1", "files": ["/etc/motd"]}, "machine 'web1': files must be a list of mappings, got '/etc/motd'"),
    ({"name": "web1", "images_dir": "/srv"}, "machine 'web1': images_dir is not set per machine (containers_images_dir"),
    ({"name": "web1", "state": "absent", "segmnet": "lan"}, "machine 'web1': unknown key segmnet"),
])
def test_a_misspelled_key_is_refused_naming_it(entry, message):
    with pytest.raises(_nspawn.MachineError) as caught:
        _nspawn.check_inventory([entry], IMAGES, default_image="debian-13")
    assert message in str(caught.value)


def test_what_the_role_documents_passes():
    machines = [{"name": "web1", "segment": "lan", "files": [{"path": "/etc/motd", "content": "hi\n"}],
                 "memory_max": "1G", "wait": False, "timeout": 30},
                {"name": "db1", "network": {"type": "bridge", "bridge": "br0", "addresses": ["10.0.0.2/24"]},
                 "users": [{"name": "ann", "ssh_authorized_keys": ["ssh-ed25519 AAAA ann"]}]}]
    assert _nspawn.check_inventory(machines, IMAGES, default_image="debian-13") == machines


@pytest.mark.parametrize("lambdas, message", [
    ([{"name": "hello", "listen": "127.0.0.1:8081", "address": "10.0.0.5/24", "port": 80, "idel": "5s"}],
     "lambda 'hello': unknown key idel"),
    ([{"name": "hello", "address": "10.0.0.5/24", "port": 80}], "lambda 'hello' needs listen"),
    ([{"name": "Hello"}], "containers_lambdas #1: machine name 'Hello' must be a host name label"),
    ([{"name": "a", "state": "absent"}, {"name": "a", "state": "absent"}], "lambda 'a' is declared twice"),
    ("hello", "containers_lambdas must be a list of mappings"),
])
def test_lambdas_are_checked(lambdas, message):
    with pytest.raises(_nspawn.MachineError, match=message):
        _nspawn.check_lambdas(lambdas)
    assert _nspawn.check_lambdas([{"name": "gone", "state": "absent"}]) == [{"name": "gone", "state": "absent"}]
