# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one command runner of the collection's modules and host tools.

Every command runs from an argument list (never a shell string) with ``LC_ALL=C`` and
``LANG=C``, so that its output parses the same on every host. A failed command raises
:class:`CommandError`, which carries ``cmd``, ``rc``, ``stdout`` and ``stderr`` as fields: a module
passes :meth:`CommandError.fields` to ``fail_json`` next to its message. A missing tool raises
:class:`ToolMissing`, whose message names the Debian package that installs it.

A :class:`Runner` wraps an ``AnsibleModule`` (its ``run_command`` and ``get_bin_path``) or, with no
module, :mod:`subprocess` (the host tools). It knows check mode: :meth:`Runner.change` refuses to
run a command that changes the host while the module runs in check mode, so a check run can only
read. A runner is also the ``run(argv) -> (rc, stdout, stderr)`` callable that ``_cow`` takes.

Standard library only, and no Ansible imports: the host tools import this file beside the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess

#: the environment every command runs with
ENV = {"LC_ALL": "C", "LANG": "C"}
#: the Debian package that installs each tool a module or host tool runs
PACKAGES = {
    "apt-ftparchive": "apt-utils", "btrfs": "btrfs-progs", "cp": "coreutils", "dpkg-deb": "dpkg",
    "genisoimage": "genisoimage", "gpg": "gpg", "gpgconf": "gpgconf", "journalctl": "systemd",
    "ldconfig": "libc-bin", "machinectl": "systemd-container", "mmdebstrap": "mmdebstrap",
    "modprobe": "kmod", "nft": "nftables", "nsenter": "util-linux", "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86", "swtpm": "swtpm", "swtpm_setup": "swtpm-tools",
    "systemctl": "systemd", "systemd-nspawn": "systemd-container", "timeout": "coreutils",
    "unshare": "util-linux", "websockify": "websockify", "xfs_io": "xfsprogs", "xz": "xz-utils",
    "zfs": "zfsutils-linux", "mount": "mount", "umount": "mount", "avahi-daemon": "avahi-daemon",
    "dpkg-buildpackage": "dpkg-dev", "dpkg-parsechangelog": "dpkg-dev",
}
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(Exception):
    """A command that failed; its message says what failed and what it printed."""

    def __init__(self, argv, rc, stdout="", stderr="", what=None, hint=None):
        self.argv, self.rc, self.stdout, self.stderr = list(argv), rc, stdout or "", stderr or ""
        said = (self.stderr or self.stdout).strip()
        message = f"{what or ' '.join(self.argv[:4])} failed (exit {rc})"
        if said:
            message += f": {said[-2000:]}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def fields(self):
        """``cmd``, ``rc``, ``stdout`` and ``stderr``, for ``fail_json``."""
        return {"cmd": self.argv, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr}


class ToolMissing(CommandError):
    """A tool the command needs is not installed; the message names its package."""

    def __init__(self, tool, package=None, why=None):
        super().__init__([tool], 127)
        self.tool = tool
        package = package or PACKAGES.get(tool)
        self.args = (f"{tool} is not installed on the target{f' ({why})' if why else ''}: install the "
                     f"{package or tool} package",)


class CheckModeViolation(RuntimeError):
    """A bug: a command that changes the host was asked for in check mode."""


class Runner:
    """Runs commands for *module* (an AnsibleModule) or, with none, through subprocess."""

    def __init__(self, module=None, check_mode=None):
        self.module = module
        self.check_mode = bool(module.check_mode if check_mode is None and module is not None else check_mode)

    def bin(self, tool, package=None, why=None, required=True):
        """The path of *tool*; raises ToolMissing (naming its package) when it is not there and
        *required*, else returns None."""
        if self.module is not None:
            found = self.module.get_bin_path(tool, required=False)
        else:
            found = shutil.which(tool, path=os.environ.get("PATH", "") + ":" + SBIN_PATH)
        if not found and required:
            raise ToolMissing(tool, package, why)
        return found

    def run(self, argv, what=None, check=True, data=None, cwd=None, binary=False, env=None, hint=None):
        """Run *argv*; returns ``(rc, stdout, stderr)``. With *check*, a non-zero exit raises
        CommandError (*what* names the step in its message, *hint* says what to do). *data* is
        fed to its standard input (bytes when *binary*, then stdout is bytes too)."""
        argv = [str(arg) for arg in argv]
        environ = dict(ENV, **(env or {}))
        if self.module is not None:
            kwargs = {"environ_update": environ, "cwd": cwd, "data": data, "binary_data": data is not None}
            if binary:
                kwargs["encoding"] = None
            rc, out, err = self.module.run_command(argv, **kwargs)
        else:
            try:
                proc = subprocess.run(argv, env=dict(os.environ, **environ), cwd=cwd, input=data,
                                      capture_output=True, text=not binary, check=False)
            except FileNotFoundError as exc:
                raise ToolMissing(argv[0]) from exc
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        if check and rc != 0:
            if isinstance(err, bytes):
                err = err.decode("utf-8", "replace")
            if isinstance(out, bytes):
                out = out.decode("utf-8", "replace")
            raise CommandError(argv, rc, out, err, what, hint)
        return rc, out, err

    def change(self, argv, what=None, **kwargs):
        """Run *argv*, a command that changes the host: never in check mode."""
        if self.check_mode:
            raise CheckModeViolation(f"{' '.join(map(str, argv))} changes the host and was asked for in check mode")
        return self.run(argv, what, **kwargs)

    def __call__(self, argv):
        """``run(argv) -> (rc, stdout, stderr)`` without raising: the callable ``_cow`` takes."""
        return self.run(argv, check=False)


def fail(module, exc, **result):
    """``fail_json`` for *exc*: its message, and its command's fields when it is a CommandError."""
    fields = exc.fields() if isinstance(exc, CommandError) else {}
    module.fail_json(msg=str(exc), **fields, **result)
