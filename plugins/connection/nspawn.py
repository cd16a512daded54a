# -*- coding: utf-8 -*-
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: nspawn
author: replica.cloud contributors (!UNKNOWN)
short_description: Run tasks inside a running systemd-nspawn machine
description:
  - Runs commands and transfers files inside a running systemd-nspawn machine (or inside the namespaces
    of any other process) on the Ansible controller, with C(nsenter). No SSH server, no Python on the
    host side and no agent inside the machine are needed; the machine needs C(/bin/sh), C(/usr/bin/env)
    and C(dd), and Python for normal modules (M(ansible.builtin.raw) works without it).
  - "The machine is found in one of two ways:"
  - "B(By name, through systemd-machined) (the default): the plugin runs
    C(machinectl show NAME --property=Leader --value) to learn the PID of the machine's leader (its
    init process). The name comes from O(machine), which defaults to the inventory host. Use this on
    hosts where systemd is PID 1 and the machine was started with registration on (the default of
    C(systemd-nspawn), C(machinectl start) and C(systemd-nspawn@.service))."
  - "B(By leader PID) (when O(leader_pid) is set): the given PID is used as is and machinectl is not run.
    Use this where there is no systemd-machined (a CI runner or a container without systemd as PID 1),
    or for machines started with C(--register=no). The leader is the B(child) of the C(systemd-nspawn)
    process (for example C(pgrep -P NSPAWN_PID)), not C(systemd-nspawn) itself. Any other process
    whose namespaces you want to enter works too."
  - Before each command the plugin checks that the PID exists and that its mount namespace differs
    from the controller's; otherwise it refuses to connect, so that a wrong or stale PID cannot make
    tasks run on the host by mistake.
  - Commands run through C(nsenter --target PID --all) as C(root) inside the machine with a clean
    environment (C(PATH), C(HOME=/root), C(LANG=C.UTF-8), C(TERM=dumb), C(USER) and C(LOGNAME)).
    Use the C(environment) keyword to set more variables.
  - Files are copied by streaming them through C(dd) inside the machine, so transfers are binary safe
    and not limited in size.
  - The controller must run Ansible as C(root) (entering another process's namespaces needs
    C(CAP_SYS_ADMIN)), and C(nsenter) from util-linux must be installed on it.
notes:
  - Commands always run as C(root) in the machine. O(remote_user) is ignored; setting it to another
    user only produces a warning. Use C(become) with C(become_user) to run as another user.
  - "C(become) works: C(become_method: ansible.builtin.su) (C(su) exists in nearly every image),
    C(ansible.builtin.sudo) when sudo is installed in the machine, and C(runuser) through
    C(become_method: ansible.builtin.su) with C(become_exe: runuser). As the connection is already
    C(root), no password is needed and B(password prompts are not supported): a become password is
    never sent, and the commands have no terminal to prompt on."
  - "C(su) and C(runuser) start the target user's login shell; for system users such as C(nobody)
    whose shell is C(nologin), add C(become_flags: -s /bin/sh)."
  - Commands entered with C(nsenter) are not children of the machine's init. They keep the controller
    process's capabilities, cgroup, seccomp and LSM context rather than the limits systemd-nspawn
    applies to the machine's own processes, and they do not open a PAM or logind session.
    Start long-running services through the machine's service manager, not as task children.
  - Machine names must be valid machine names (letters, digits, C(-), C(_), separated by dots, at most
    64 characters).
seealso:
  - name: systemd-nspawn(1)
    description: The container manager that starts the machines.
    link: https://www.freedesktop.org/software/systemd/man/latest/systemd-nspawn.html
  - name: machinectl(1)
    description: Looks up machines registered with systemd-machined.
    link: https://www.freedesktop.org/software/systemd/man/latest/machinectl.html
  - name: nsenter(1)
    description: Runs a program in the namespaces of another process.
    link: https://man7.org/linux/man-pages/man1/nsenter.1.html
options:
  remote_addr:
    description:
      - The inventory address of the machine.
      - Used as the machine name when O(machine) is not set. You normally set O(machine) or
        C(ansible_host) rather than this option.
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  machine:
    description:
      - Name of the systemd-nspawn machine, as listed by C(machinectl list).
      - When not set, O(remote_addr) is used, that is C(ansible_host) if it is set, otherwise the
        inventory host name.
      - When O(leader_pid) is set the name is not looked up and only appears in messages.
    type: string
    vars:
      - name: ansible_host
      - name: ansible_nspawn_machine
  leader_pid:
    description:
      - PID (in the controller's PID namespace) of the machine's leader process, that is the init
        process of the machine, the child of the C(systemd-nspawn) process.
      - When set, the machine is not looked up with machinectl, which makes the plugin work without
        systemd-machined.
      - Any process may be given; the plugin enters all its namespaces. It refuses a PID that does not
        exist or that shares the controller's mount namespace.
      - The PID changes whenever the machine restarts. The option is read again for every task, so
        after restarting a machine in the middle of a play update the variable (for example with
        M(ansible.builtin.set_fact)) before the next task.
    type: int
    vars:
      - name: ansible_nspawn_leader_pid
    env:
      - name: ANSIBLE_NSPAWN_LEADER_PID
  remote_user:
    description:
      - Ignored. Commands always run as C(root) in the machine.
      - When set to anything other than C(root) a warning is shown and C(root) is used. Use
        C(become) and C(become_user) to run tasks as another user.
    type: string
    vars:
      - name: ansible_user
    env:
      - name: ANSIBLE_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
    keyword:
      - name: remote_user
  executable:
    description:
      - Shell that runs each command inside the machine, as C(EXECUTABLE -c COMMAND). It must be a
        POSIX shell that exists in the machine.
    type: string
    default: /bin/sh
    vars:
      - name: ansible_shell_executable
    env:
      - name: ANSIBLE_EXECUTABLE
    ini:
      - section: defaults
        key: executable
  nsenter_exe:
    description:
      - Path or name (looked up in C(PATH)) of the C(nsenter) program on the controller.
    type: string
    default: nsenter
    vars:
      - name: ansible_nspawn_nsenter_exe
    env:
      - name: ANSIBLE_NSPAWN_NSENTER_EXE
    ini:
      - section: nspawn_connection
        key: nsenter_exe
  machinectl_exe:
    description:
      - Path or name (looked up in C(PATH)) of the C(machinectl) program on the controller.
      - Only used when O(leader_pid) is not set.
    type: string
    default: machinectl
    vars:
      - name: ansible_nspawn_machinectl_exe
    env:
      - name: ANSIBLE_NSPAWN_MACHINECTL_EXE
    ini:
      - section: nspawn_connection
        key: machinectl_exe
extends_documentation_fragment:
  - ansible.builtin.connection_pipelining
"""

EXAMPLES = r"""
# Inventory (YAML) for a host where systemd-machined runs (systemd is PID 1):
# the machine is looked up by name with machinectl. By default the inventory
# host name is the machine name.
all:
  children:
    containers:
      vars:
        ansible_connection: replica.cloud.nspawn
        ansible_pipelining: true
      hosts:
        web1: {}                              # machine "web1"
        db:
          ansible_nspawn_machine: db-bookworm  # machine with another name

---
# Inventory (YAML) for a host without systemd-machined (CI runner, container
# without systemd as PID 1) or a machine started with --register=no: give the
# leader PID, the child of the systemd-nspawn process:
#   pgrep -P "$(pgrep -f -- '--machine=conntest')"
all:
  hosts:
    conntest:
      ansible_connection: replica.cloud.nspawn
      ansible_nspawn_leader_pid: 12345

# The same ad hoc, with the PID on the command line:
#   ansible all -i 'conntest,' -c replica.cloud.nspawn \
#     -e ansible_nspawn_leader_pid=12345 -m ansible.builtin.ping

---
# Playbook: become another user inside the machine. su needs no password as
# the connection is root; "-s /bin/sh" because the shell of nobody is nologin.
- name: Configure the machines
  hosts: containers
  gather_facts: false
  tasks:
    - name: Run as nobody with su
      ansible.builtin.command: whoami
      become: true
      become_method: ansible.builtin.su
      become_user: nobody
      become_flags: -s /bin/sh

    - name: Run as nobody with runuser (su-compatible command line)
      ansible.builtin.command: whoami
      become: true
      become_method: ansible.builtin.su
      become_exe: runuser
      become_user: nobody
      become_flags: -s /bin/sh
"""

import os
import re
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.process import get_bin_path
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase, BUFSIZE
from ansible.utils.display import Display

display = Display()

#: Program started by nsenter inside the machine; it replaces the environment.
ENV_EXE = '/usr/bin/env'

#: PATH inside the machine. Add directories with the ``environment`` keyword.
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

#: The whole environment of commands inside the machine.
MACHINE_ENV = (
    ('PATH', DEFAULT_PATH),
    ('HOME', '/root'),
    ('USER', 'root'),
    ('LOGNAME', 'root'),
    ('LANG', 'C.UTF-8'),
    ('TERM', 'dumb'),
)

#: Seconds to wait for ``machinectl show``.
MACHINECTL_TIMEOUT = 30

# systemd's machine_name_is_valid(): labels of [A-Za-z0-9_-] joined by dots,
# at most 64 characters. A leading "-" is refused as well so that a name can
# never be read as an option by machinectl.
_MACHINE_NAME_RE = re.compile(r'(?!-)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*')
_MACHINE_NAME_MAX = 64

_NSENTER_ERROR_PREFIX = b'nsenter: '


# ---------------------------------------------------------------------------
# Pure helpers: no root, no subprocesses (unit tested)
# ---------------------------------------------------------------------------

def validate_machine_name(name):
    """Return ``name`` if it is a valid systemd machine name, else raise AnsibleConnectionFailure."""
    if not isinstance(name, str) or not name:
        raise AnsibleConnectionFailure(
            'nspawn connection: no machine name. Set ansible_nspawn_machine (or ansible_host) to the '
            'machine name shown by "machinectl list", or set ansible_nspawn_leader_pid.')
    if len(name) > _MACHINE_NAME_MAX or not _MACHINE_NAME_RE.fullmatch(name):
        raise AnsibleConnectionFailure(
            f'nspawn connection: {name!r} is not a valid machine name (letters, digits, "-" and "_", '
            f'labels separated by dots, at most {_MACHINE_NAME_MAX} characters). Set ansible_nspawn_machine '
            'to the name shown by "machinectl list", or set ansible_nspawn_leader_pid.')
    return name


def validate_leader_pid(value):
    """Return ``value`` as a positive int PID, else raise AnsibleConnectionFailure."""
    pid = None
    if isinstance(value, int) and not isinstance(value, bool):
        pid = value
    elif isinstance(value, (str, bytes)):
        text = to_text(value).strip()
        if text.isdigit() and text.isascii():
            pid = int(text)
    if pid is None or pid < 1:
        raise AnsibleConnectionFailure(
            f'nspawn connection: leader_pid must be a positive integer, got {value!r}. Set '
            'ansible_nspawn_leader_pid to the PID of the machine\'s leader (the child of the '
            'systemd-nspawn process, e.g. "pgrep -P NSPAWN_PID").')
    return pid


def build_machinectl_argv(machinectl_exe, machine):
    """Argument list that prints the leader PID of ``machine``."""
    return [machinectl_exe, 'show', validate_machine_name(machine), '--property=Leader', '--value']


def parse_machinectl_leader(output, machine):
    """Parse the output of ``machinectl show NAME --property=Leader --value`` into a PID."""
    text = to_text(output, errors='surrogate_or_replace').strip()
    if not text.isdigit() or not text.isascii() or int(text) < 1:
        raise AnsibleConnectionFailure(
            f'nspawn connection: machinectl did not report a leader PID for machine {machine!r} '
            f'(got {text!r}); is the machine running? Check "machinectl status {machine}".')
    return int(text)


def machine_env_args(env=MACHINE_ENV):
    """``NAME=value`` arguments for ``env -i``."""
    return [f'{name}={value}' for name, value in env]


def build_nsenter_prefix(nsenter_exe, pid):
    """nsenter + env prefix: enter all namespaces of ``pid`` and start from an empty environment.

    ``--all`` enters every namespace of the target; nsenter skips the user
    namespace when it is the caller's, and re-entering any other namespace
    that the target shares with us is harmless.
    """
    pid = validate_leader_pid(pid)
    return [nsenter_exe, '--target', str(pid), '--all', '--', ENV_EXE, '-i'] + machine_env_args()


def build_exec_argv(nsenter_exe, pid, cmd, executable='/bin/sh'):
    """Argument list that runs the shell command ``cmd`` inside the machine."""
    if not executable:
        raise AnsibleConnectionFailure('nspawn connection: the shell executable must not be empty.')
    return build_nsenter_prefix(nsenter_exe, pid) + [executable, '-c', cmd]


def normalize_remote_path(path):
    """Absolute, normalized path inside the machine (relative paths are taken from ``/``)."""
    path = to_text(path, errors='surrogate_or_strict')
    if not path or '\x00' in path:
        raise AnsibleError(f'nspawn connection: invalid remote path {path!r}.')
    if not path.startswith('/'):
        path = '/' + path
    path = os.path.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it to be special); we do not want it.
    if path.startswith('//'):
        path = '/' + path.lstrip('/')
    return path


def build_dd_argv(nsenter_exe, pid, direction, remote_path, bufsize=BUFSIZE):
    """Argument list running ``dd`` in the machine: ``put`` writes stdin to ``remote_path``,
    ``fetch`` writes ``remote_path`` to stdout. No shell is involved, so any path is safe."""
    remote_path = normalize_remote_path(remote_path)
    if direction == 'put':
        operand = f'of={remote_path}'
    elif direction == 'fetch':
        operand = f'if={remote_path}'
    else:
        raise ValueError(f'direction must be "put" or "fetch", not {direction!r}')
    return build_nsenter_prefix(nsenter_exe, pid) + ['dd', operand, f'bs={int(bufsize)}']


def remote_user_warning(remote_user, machine):
    """Warning text for a remote_user other than root, or None."""
    if remote_user in (None, '', 'root'):
        return None
    return (f'nspawn connection to {machine}: remote_user {remote_user!r} is ignored, commands run as root '
            'in the machine. Remove ansible_user/remote_user for this host and use "become: true" with '
            f'"become_user: {remote_user}" to run tasks as that user.')


def is_nsenter_failure(returncode, stderr):
    """True when nsenter itself (not the command in the machine) failed."""
    return returncode != 0 and to_bytes(stderr or b'').startswith(_NSENTER_ERROR_PREFIX)


def _read_comm(pid, proc):
    try:
        with open(os.path.join(proc, str(pid), 'comm'), 'rb') as f:
            return to_text(f.read(), errors='surrogate_or_replace').strip()
    except OSError:
        return None


def check_target_namespaces(pid, machine, proc='/proc'):
    """Make sure ``pid`` exists and lives in another mount namespace than this process.

    Raises AnsibleConnectionFailure telling the user what to fix. ``proc`` is
    the procfs mount point (a parameter for the unit tests).
    """
    pid = validate_leader_pid(pid)
    target = os.path.join(proc, str(pid))
    if not os.path.isdir(target):
        raise AnsibleConnectionFailure(
            f'nspawn connection to {machine}: process {pid} does not exist. Is the machine running? The leader '
            'PID changes whenever the machine restarts: update ansible_nspawn_leader_pid to the child of the '
            'systemd-nspawn process ("pgrep -P NSPAWN_PID").')
    try:
        theirs = os.stat(os.path.join(target, 'ns', 'mnt'))
        ours = os.stat(os.path.join(proc, 'self', 'ns', 'mnt'))
    except FileNotFoundError:
        raise AnsibleConnectionFailure(
            f'nspawn connection to {machine}: process {pid} does not exist (any more) or has no namespaces '
            '(zombie or kernel thread). Check that the machine is running and update ansible_nspawn_leader_pid.')
    except PermissionError as e:
        raise AnsibleConnectionFailure(
            f'nspawn connection to {machine}: cannot inspect the namespaces of process {pid} ({e}). '
            'The nspawn connection must run as root on the controller, and the PID must belong to a process '
            'that root may enter: check that ansible_nspawn_leader_pid is the leader of the machine.')
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        comm = _read_comm(pid, proc)
        hint = ''
        if comm == 'systemd-nspawn':
            hint = (f' PID {pid} is systemd-nspawn itself, which stays on the host: use the PID of its child, '
                    f'the machine\'s init ("pgrep -P {pid}").')
        raise AnsibleConnectionFailure(
            f'nspawn connection to {machine}: refusing to use process {pid}'
            + (f' ({comm})' if comm else '')
            + ' because it shares the controller\'s mount namespace, so commands would run on the host, not in '
            f'the machine.{hint} Set ansible_nspawn_leader_pid to the leader PID of the machine (the child of '
            'the systemd-nspawn process), or unset it to look the machine up with machinectl.')
    return pid


def resolve_exe(name, what, option):
    """Absolute path of program ``name`` (searched in PATH unless it contains a slash)."""
    if not name:
        raise AnsibleConnectionFailure(f'nspawn connection: option {option} must not be empty.')
    if '/' in name:
        if not os.access(name, os.X_OK):
            raise AnsibleConnectionFailure(
                f'nspawn connection: {what} {name!r} (option {option}) is not an executable file.')
        return name
    try:
        return get_bin_path(name)
    except ValueError:
        raise AnsibleConnectionFailure(
            f'nspawn connection: cannot find {what} {name!r} in PATH on the controller. Install it '
            f'or set the {option} option to its full path.')


# ---------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------

class Connection(ConnectionBase):
    """Run tasks inside a systemd-nspawn machine via nsenter."""

    transport = 'replica.cloud.nspawn'
    has_pipelining = True
    # commands have no terminal; become plugins must not expect one
    has_tty = False
    default_user = 'root'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._machine = None
        self._leader_pid = None
        self._pid_from_machinectl = False
        self._nsenter = None

    # -- options -----------------------------------------------------------

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        # We are always root inside the machine: say so, and make the action
        # plugins (which ask for remote_user) agree.
        warning = remote_user_warning(self.get_option('remote_user'), self._machine_label())
        if warning:
            display.warning(warning)
        self.set_option('remote_user', 'root')
        self._play_context.remote_user = 'root'

    def _machine_label(self):
        try:
            return self.get_option('machine') or self.get_option('remote_addr') or '?'
        except KeyError:
            return '?'

    # -- connect -----------------------------------------------------------

    def _connect(self):
        if self._connected:
            return self
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure(
                'nspawn connection: Ansible must run as root on the controller to enter a machine\'s '
                'namespaces (nsenter needs CAP_SYS_ADMIN). Run ansible-playbook as root.')
        self._machine = self._machine_label()
        self._nsenter = resolve_exe(self.get_option('nsenter_exe'), 'nsenter', 'nsenter_exe')
        self._leader_pid = self._resolve_leader()
        check_target_namespaces(self._leader_pid, self._machine)
        display.vvv(
            f'ESTABLISH NSPAWN CONNECTION TO MACHINE {self._machine} (leader PID {self._leader_pid}) AS root',
            host=self._machine)
        self._connected = True
        return self

    def _resolve_leader(self):
        leader_pid = self.get_option('leader_pid')
        if leader_pid is not None and leader_pid != '':
            self._pid_from_machinectl = False
            return validate_leader_pid(leader_pid)
        self._pid_from_machinectl = True
        return self._machinectl_leader(self._machine)

    def _machinectl_leader(self, machine):
        argv = build_machinectl_argv(
            resolve_exe(self.get_option('machinectl_exe'), 'machinectl', 'machinectl_exe'), machine)
        display.vvv(f'LOOKUP {shlex.join(argv)}', host=machine)
        env = dict(os.environ)
        env['LC_ALL'] = 'C'
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, timeout=MACHINECTL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise AnsibleConnectionFailure(
                f'nspawn connection: "{shlex.join(argv)}" did not answer within {MACHINECTL_TIMEOUT} seconds. '
                'Is systemd-machined working? Set ansible_nspawn_leader_pid to bypass machinectl.')
        except OSError as e:
            raise AnsibleConnectionFailure(f'nspawn connection: cannot run machinectl: {e}')
        if p.returncode != 0:
            err = to_text(p.stderr, errors='surrogate_or_replace').strip()
            raise AnsibleConnectionFailure(
                f'nspawn connection: machinectl cannot find machine {machine!r}: {err or "rc=%d" % p.returncode}. '
                'Check the name with "machinectl list" and set ansible_nspawn_machine (or ansible_host) '
                'accordingly. Where systemd-machined does not run, or the machine was started with '
                '--register=no, set ansible_nspawn_leader_pid to the PID of the machine\'s leader instead.')
        return parse_machinectl_leader(p.stdout, machine)

    def _target_pid(self):
        """The leader PID, checked again before every command (the machine may be gone or restarted)."""
        try:
            return check_target_namespaces(self._leader_pid, self._machine)
        except AnsibleConnectionFailure:
            if not self._pid_from_machinectl:
                raise
        # The machine restarted (new leader) or stopped: ask machined again.
        self._leader_pid = self._machinectl_leader(self._machine)
        return check_target_namespaces(self._leader_pid, self._machine)

    # -- process helpers ---------------------------------------------------

    def _popen(self, argv, stdin, stdout=subprocess.PIPE):
        display.vvv(f'EXEC {shlex.join(argv)}', host=self._machine)
        b_argv = [to_bytes(a, errors='surrogate_or_strict') for a in argv]
        try:
            return subprocess.Popen(
                b_argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd='/',
                env={'PATH': os.environ.get('PATH', DEFAULT_PATH), 'LC_ALL': 'C'},
                # no controlling terminal: nothing in the machine can prompt on ours
                start_new_session=True)
        except OSError as e:
            raise AnsibleConnectionFailure(f'nspawn connection: cannot run {argv[0]}: {e}')

    # -- ConnectionBase API ------------------------------------------------

    def exec_command(self, cmd, in_data=None, sudoable=True):
        """Run ``cmd`` with the shell inside the machine; ``in_data`` goes to its stdin (pipelining)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)

        if sudoable and self.become and self.become.expect_prompt():
            display.warning(
                f'nspawn connection to {self._machine}: the become password is not used; the connection is '
                'already root and cannot answer password prompts.')

        argv = build_exec_argv(self._nsenter, self._target_pid(), to_text(cmd, errors='surrogate_or_strict'),
                               self.get_option('executable'))
        p = self._popen(argv, stdin=subprocess.PIPE if in_data is not None else subprocess.DEVNULL)
        stdout, stderr = p.communicate(in_data)
        if is_nsenter_failure(p.returncode, stderr):
            raise AnsibleConnectionFailure(
                f'nspawn connection to {self._machine}: nsenter failed to enter process {self._leader_pid}: '
                f'{to_text(stderr, errors="surrogate_or_replace").strip()}')
        return p.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        """Copy the local file ``in_path`` to ``out_path`` in the machine."""
        super().put_file(in_path, out_path)
        remote = normalize_remote_path(out_path)
        display.vvv(f'PUT {in_path} TO {remote}', host=self._machine)

        b_in_path = to_bytes(in_path, errors='surrogate_or_strict')
        if not os.path.exists(b_in_path):
            raise AnsibleFileNotFound(f'file or module does not exist: {in_path}')
        argv = build_dd_argv(self._nsenter, self._target_pid(), 'put', remote)
        try:
            in_file = open(b_in_path, 'rb')
        except OSError as e:
            raise AnsibleError(f'nspawn connection: cannot read {in_path}: {e}')
        with in_file:
            p = self._popen(argv, stdin=in_file)
            _stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise AnsibleError(
                f'nspawn connection: failed to transfer {in_path} to {remote} in machine {self._machine} '
                f'(rc={p.returncode}): {to_text(stderr, errors="surrogate_or_replace").strip()}')

    def fetch_file(self, in_path, out_path):
        """Copy ``in_path`` in the machine to the local file ``out_path``."""
        super().fetch_file(in_path, out_path)
        remote = normalize_remote_path(in_path)
        display.vvv(f'FETCH {remote} TO {out_path}', host=self._machine)

        argv = build_dd_argv(self._nsenter, self._target_pid(), 'fetch', remote)
        b_out_path = to_bytes(out_path, errors='surrogate_or_strict')
        existed = os.path.lexists(b_out_path)
        try:
            out_file = open(b_out_path, 'wb')
        except OSError as e:
            raise AnsibleError(f'nspawn connection: cannot write {out_path}: {e}')
        with out_file:
            p = self._popen(argv, stdin=subprocess.DEVNULL, stdout=out_file)
            _stdout, stderr = p.communicate()
        if p.returncode != 0:
            if not existed:
                try:
                    os.unlink(b_out_path)
                except OSError:
                    pass
            raise AnsibleError(
                f'nspawn connection: failed to transfer {remote} from machine {self._machine} to {out_path} '
                f'(rc={p.returncode}): {to_text(stderr, errors="surrogate_or_replace").strip()}')

    def reset(self):
        """Forget the leader PID; the next command looks the machine up again."""
        self.close()

    def close(self):
        """Nothing to tear down: every command is its own process."""
        super().close()
        self._connected = False
