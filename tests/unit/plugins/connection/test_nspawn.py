# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the pure parts of the replica.cloud.nspawn connection plugin.

They need neither root nor a running machine: argument lists are compared
as lists, and the namespace checks run against a fake /proc tree.
"""

from __future__ import annotations

import os

import pytest
import yaml

from ansible.errors import AnsibleConnectionFailure, AnsibleError

from ansible_collections.replica.cloud.plugins.connection import nspawn
from ansible_collections.replica.cloud.plugins.connection.nspawn import (
    DEFAULT_PATH,
    ENV_EXE,
    build_dd_argv,
    build_exec_argv,
    build_machinectl_argv,
    build_nsenter_prefix,
    check_target_namespaces,
    is_nsenter_failure,
    machine_env_args,
    normalize_remote_path,
    parse_machinectl_leader,
    remote_user_warning,
    resolve_exe,
    validate_leader_pid,
    validate_machine_name,
)

ENV_ARGS = [
    'PATH=' + DEFAULT_PATH,
    'HOME=/root',
    'USER=root',
    'LOGNAME=root',
    'LANG=C.UTF-8',
    'TERM=dumb',
]


# --- machine names -----------------------------------------------------------

@pytest.mark.parametrize('name', ['web1', 'db-bookworm', 'a', 'a.b_c', 'node_1.lab', 'x' * 64, '1234'])
def test_valid_machine_names(name):
    assert validate_machine_name(name) == name


@pytest.mark.parametrize('name', [
    '', None, 42,
    '-H',           # would be read as an option by machinectl
    '--value',
    '.host',        # machined's name for the host itself
    'a..b', 'a.', '.a',
    'a b', 'a/b', 'a;b', 'ä',
    'web1\n',      # "$" would accept a trailing newline
    'x' * 65,
])
def test_invalid_machine_names(name):
    with pytest.raises(AnsibleConnectionFailure) as e:
        validate_machine_name(name)
    # the message tells the user which variables to set
    assert 'ansible_nspawn_machine' in str(e.value)
    assert 'ansible_nspawn_leader_pid' in str(e.value)


# --- leader PID ---------------------------------------------------------------

@pytest.mark.parametrize('value, expected', [
    (1, 1), (12345, 12345), ('678', 678), (' 91\n', 91), (b'42', 42),
])
def test_valid_leader_pid(value, expected):
    assert validate_leader_pid(value) == expected


@pytest.mark.parametrize('value', [0, -1, '0', '-5', '', 'abc', '1.5', '12 34', None, True, False, 3.0, '\u0663'])
def test_invalid_leader_pid(value):
    with pytest.raises(AnsibleConnectionFailure) as e:
        validate_leader_pid(value)
    assert 'leader_pid must be a positive integer' in str(e.value)
    assert 'pgrep -P' in str(e.value)


# --- machinectl -----------------------------------------------------------------

def test_machinectl_argv():
    assert build_machinectl_argv('/usr/bin/machinectl', 'web1') == [
        '/usr/bin/machinectl', 'show', 'web1', '--property=Leader', '--value']


def test_machinectl_argv_rejects_option_like_name():
    with pytest.raises(AnsibleConnectionFailure):
        build_machinectl_argv('machinectl', '-H')


@pytest.mark.parametrize('output, expected', [(b'1234\n', 1234), ('99', 99), (b'  7  ', 7)])
def test_parse_machinectl_leader(output, expected):
    assert parse_machinectl_leader(output, 'web1') == expected


@pytest.mark.parametrize('output', [b'', b'\n', b'0\n', b'n/a', b'Leader=123', b'-1'])
def test_parse_machinectl_leader_errors(output):
    with pytest.raises(AnsibleConnectionFailure) as e:
        parse_machinectl_leader(output, 'web1')
    assert "'web1'" in str(e.value)
    assert 'machinectl status web1' in str(e.value)


# --- nsenter command lines ---------------------------------------------------------

def test_machine_env_is_clean_and_complete():
    assert machine_env_args() == ENV_ARGS
    assert machine_env_args((('A', '1'),)) == ['A=1']


def test_nsenter_prefix():
    assert build_nsenter_prefix('/usr/bin/nsenter', 4242) == [
        '/usr/bin/nsenter', '--target', '4242', '--all', '--', ENV_EXE, '-i'] + ENV_ARGS


def test_exec_argv_passes_command_as_one_argument():
    cmd = "/bin/sh -c 'echo \"$HOME\" && exit 3' ; rm -rf /nope"
    argv = build_exec_argv('nsenter', '17', cmd)
    assert argv == ['nsenter', '--target', '17', '--all', '--', '/usr/bin/env', '-i'] + ENV_ARGS + ['/bin/sh', '-c', cmd]
    assert argv.count(cmd) == 1


def test_exec_argv_custom_shell():
    argv = build_exec_argv('nsenter', 5, 'true', executable='/bin/bash')
    assert argv[-3:] == ['/bin/bash', '-c', 'true']


def test_exec_argv_errors():
    with pytest.raises(AnsibleConnectionFailure):
        build_exec_argv('nsenter', 0, 'true')
    with pytest.raises(AnsibleConnectionFailure):
        build_exec_argv('nsenter', 5, 'true', executable='')


# --- file transfer -----------------------------------------------------------------------

@pytest.mark.parametrize('path, expected', [
    ('/root/x', '/root/x'),
    ('root/x', '/root/x'),
    ('/a/./b/../c', '/a/c'),
    ('//etc//passwd', '/etc/passwd'),
    ('/dir with space/it\'s "q".bin', '/dir with space/it\'s "q".bin'),
    (b'/tmp/bytes', '/tmp/bytes'),
])
def test_normalize_remote_path(path, expected):
    assert normalize_remote_path(path) == expected


@pytest.mark.parametrize('path', ['', '/tmp/a\x00b'])
def test_normalize_remote_path_errors(path):
    with pytest.raises(AnsibleError):
        normalize_remote_path(path)


def test_dd_put_argv():
    argv = build_dd_argv('nsenter', 99, 'put', "/root/dir with space/it's.bin")
    assert argv == build_nsenter_prefix('nsenter', 99) + ['dd', "of=/root/dir with space/it's.bin", 'bs=65536']


def test_dd_fetch_argv_relative_path_and_bufsize():
    argv = build_dd_argv('nsenter', 99, 'fetch', 'etc/hostname', bufsize=4096)
    assert argv[-3:] == ['dd', 'if=/etc/hostname', 'bs=4096']
    # no shell is involved in transfers
    assert '/bin/sh' not in argv


def test_dd_bad_direction():
    with pytest.raises(ValueError):
        build_dd_argv('nsenter', 99, 'sideways', '/x')


# --- remote_user / nsenter errors ------------------------------------------------------------

@pytest.mark.parametrize('user', [None, '', 'root'])
def test_no_warning_for_root(user):
    assert remote_user_warning(user, 'web1') is None


def test_warning_for_other_user():
    msg = remote_user_warning('alice', 'web1')
    assert 'web1' in msg
    assert "'alice' is ignored" in msg
    assert 'become_user: alice' in msg


@pytest.mark.parametrize('rc, stderr, expected', [
    (1, b"nsenter: reassociate to namespace 'ns/mnt' failed: Operation not permitted\n", True),
    (1, 'nsenter: failed to execute /usr/bin/env: No such file or directory', True),
    (0, b'nsenter: something harmless', False),
    (1, b'ls: cannot access x\n', False),
    (2, b'', False),
    (2, None, False),
])
def test_is_nsenter_failure(rc, stderr, expected):
    assert is_nsenter_failure(rc, stderr) is expected


# --- namespace safety checks against a fake /proc ---------------------------------------------

def _fake_proc(tmp_path, pid, comm='systemd', same_mnt=False):
    proc = tmp_path / 'proc'
    (proc / 'self' / 'ns').mkdir(parents=True)
    ours = proc / 'self' / 'ns' / 'mnt'
    ours.write_text('ours')
    target = proc / str(pid)
    (target / 'ns').mkdir(parents=True)
    (target / 'comm').write_text(comm + '\n')
    if same_mnt:
        os.link(ours, target / 'ns' / 'mnt')  # same inode = same namespace
    else:
        (target / 'ns' / 'mnt').write_text('theirs')
    return str(proc)


def test_namespace_check_accepts_other_namespace(tmp_path):
    proc = _fake_proc(tmp_path, 321)
    assert check_target_namespaces(321, 'web1', proc=proc) == 321
    assert check_target_namespaces('321', 'web1', proc=proc) == 321


def test_namespace_check_missing_pid(tmp_path):
    proc = _fake_proc(tmp_path, 321)
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(322, 'web1', proc=proc)
    assert 'process 322 does not exist' in str(e.value)
    assert 'ansible_nspawn_leader_pid' in str(e.value)


def test_namespace_check_refuses_host_mount_namespace(tmp_path):
    proc = _fake_proc(tmp_path, 321, comm='bash', same_mnt=True)
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(321, 'web1', proc=proc)
    msg = str(e.value)
    assert 'refusing to use process 321 (bash)' in msg
    assert 'would run on the host' in msg
    assert 'ansible_nspawn_leader_pid' in msg


def test_namespace_check_explains_nspawn_pid(tmp_path):
    proc = _fake_proc(tmp_path, 500, comm='systemd-nspawn', same_mnt=True)
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(500, 'web1', proc=proc)
    assert 'systemd-nspawn itself' in str(e.value)
    assert 'pgrep -P 500' in str(e.value)


def test_namespace_check_process_without_namespaces(tmp_path):
    proc = _fake_proc(tmp_path, 321)
    os.unlink(os.path.join(proc, '321', 'ns', 'mnt'))
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(321, 'web1', proc=proc)
    assert 'has no namespaces' in str(e.value)


def test_namespace_check_permission_denied(tmp_path, monkeypatch):
    proc = _fake_proc(tmp_path, 1)
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):
        if str(path) == os.path.join(proc, '1', 'ns', 'mnt'):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(nspawn.os, 'stat', fake_stat)
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(1, 'web1', proc=proc)
    assert 'cannot inspect the namespaces of process 1' in str(e.value)
    assert 'must run as root' in str(e.value)


def test_namespace_check_validates_pid_first(tmp_path):
    with pytest.raises(AnsibleConnectionFailure) as e:
        check_target_namespaces(-3, 'web1', proc=str(tmp_path))
    assert 'positive integer' in str(e.value)


# --- program lookup ---------------------------------------------------------------------------

def test_resolve_exe_absolute(tmp_path):
    exe = tmp_path / 'nsenter'
    exe.write_text('#!/bin/sh\n')
    exe.chmod(0o755)
    assert resolve_exe(str(exe), 'nsenter', 'nsenter_exe') == str(exe)


def test_resolve_exe_absolute_not_executable(tmp_path):
    exe = tmp_path / 'nsenter'
    exe.write_text('')
    exe.chmod(0o644)
    if os.access(str(exe), os.X_OK):  # pragma: no cover - only when root on an odd filesystem
        pytest.skip('file is executable for this user anyway')
    with pytest.raises(AnsibleConnectionFailure) as e:
        resolve_exe(str(exe), 'nsenter', 'nsenter_exe')
    assert 'nsenter_exe' in str(e.value)


def test_resolve_exe_not_in_path(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))

    def not_found(name):
        raise ValueError(f'Failed to find required executable "{name}"')

    monkeypatch.setattr(nspawn, 'get_bin_path', not_found)
    with pytest.raises(AnsibleConnectionFailure) as e:
        resolve_exe('machinectl-does-not-exist', 'machinectl', 'machinectl_exe')
    assert "cannot find machinectl 'machinectl-does-not-exist'" in str(e.value)
    assert 'machinectl_exe' in str(e.value)


def test_resolve_exe_empty():
    with pytest.raises(AnsibleConnectionFailure):
        resolve_exe('', 'nsenter', 'nsenter_exe')


# --- documentation ----------------------------------------------------------------------------

def test_documentation_declares_the_options():
    doc = yaml.safe_load(nspawn.DOCUMENTATION)
    assert doc['name'] == 'nspawn'
    options = doc['options']
    for name in ('remote_addr', 'machine', 'leader_pid', 'remote_user', 'executable', 'nsenter_exe', 'machinectl_exe'):
        assert options[name]['description'], name
        assert options[name]['type'], name
    assert [v['name'] for v in options['machine']['vars']] == ['ansible_host', 'ansible_nspawn_machine']
    assert options['leader_pid']['type'] == 'int'
    assert options['leader_pid']['vars'] == [{'name': 'ansible_nspawn_leader_pid'}]
    assert options['leader_pid']['env'] == [{'name': 'ANSIBLE_NSPAWN_LEADER_PID'}]
    assert options['nsenter_exe']['default'] == 'nsenter'
    assert options['machinectl_exe']['default'] == 'machinectl'
    assert 'ansible.builtin.connection_pipelining' in doc['extends_documentation_fragment']


def test_examples_are_valid_yaml():
    docs = list(yaml.safe_load_all(nspawn.EXAMPLES))
    machined_inventory, pid_inventory, playbook = docs
    assert machined_inventory['all']['children']['containers']['vars']['ansible_connection'] == 'replica.cloud.nspawn'
    assert pid_inventory['all']['hosts']['conntest']['ansible_nspawn_leader_pid'] == 12345
    assert playbook[0]['tasks'][0]['become_user'] == 'nobody'


def test_connection_class_flags():
    assert nspawn.Connection.transport == 'replica.cloud.nspawn'
    assert nspawn.Connection.has_pipelining is True
    assert nspawn.Connection.default_user == 'root'
