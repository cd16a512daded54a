# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A testinfra backend for lab hosts: ``lab://NAME`` runs each command inside lab host NAME.

testinfra's ``ansible`` backend starts one ``ansible`` process per command (about 2 s each on the
CI machine). A lab host is a local nspawn machine, so this backend does what the
``replica.cloud.nspawn`` connection does, without Ansible: it reads the lab host's leader PID from
the lab's state (:class:`replica_lab.Lab`) and runs the command through ``nsenter --all`` with
the connection's own argument list (``build_exec_argv``: one owner for how a command enters a
machine). About 5 ms a command (``benchmarks/verifier.py``).

Load it as a pytest plugin (``-p replica_testinfra`` with ``scripts/`` on ``PYTHONPATH``; the
shared molecule config does so) and use testinfra's ordinary API:

    testinfra_hosts = ["lab://mol-hypervisor"]          # a test module's hosts
    testinfra.get_host("lab://mol-apt-repo")          # another lab host from a test
    pytest --connection=lab --ansible-inventory=INV   # every host of an inventory (molecule)

Without a host name (molecule runs pytest without ``--hosts``) the hosts are those of the
``--ansible-inventory`` (read once), or else every running lab host.
"""

from __future__ import annotations

import os
import subprocess
import sys

import testinfra.backend
from testinfra.backend import base

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, ".collections"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.replica.cloud.plugins.connection import nspawn  # noqa: E402  pylint: disable=wrong-import-position

NAME = "lab"


class LabBackend(base.BaseBackend):
    """Run commands in a lab host through nsenter, by the leader PID recorded by the lab."""

    NAME = NAME

    def __init__(self, hostname, *args, **kwargs):
        super().__init__(hostname, *args, **kwargs)
        self.lab = replica_lab.Lab()

    @classmethod
    def get_hosts(cls, host, **kwargs):
        if host:
            return [host]
        inventory = kwargs.get("ansible_inventory")
        if inventory:
            # pylint: disable-next=import-outside-toplevel
            from testinfra.utils.ansible_runner import AnsibleRunner
            return AnsibleRunner.get_runner(inventory).get_hosts("all")
        return [m.name for m in replica_lab.Lab().list() if m.alive()]

    def argv(self, command):
        """The argument list that runs the shell *command* in the lab host."""
        leader = self.lab.require(self.hostname).leader  # a state file read: the host may be new
        return nspawn.build_exec_argv("nsenter", leader, command)

    def run(self, command, *args, **kwargs):
        cmd = self.get_command(command, *args)
        proc = subprocess.run(self.argv(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False)
        return self.result(proc.returncode, self.encode(cmd), proc.stdout, proc.stderr)


testinfra.backend.BACKENDS[NAME] = f"{__name__}.LabBackend"
