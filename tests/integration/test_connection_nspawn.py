# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.nspawn against a real lab host: tasks, file transfer, become, failures."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys

from conftest import ROOT, start_nested

PLAYBOOK = """
- name: Exercise the nspawn connection
  hosts: all
  gather_facts: true
  tasks:
    - name: Facts come from inside the machine
      ansible.builtin.assert:
        that:
          - ansible_facts.hostname == inventory_hostname
          - ansible_facts.virtualization_role == 'guest'
    - name: Copy a binary file in
      ansible.builtin.copy:
        src: "{{ payload }}"
        dest: /var/tmp/payload.bin
        mode: "0600"
    - name: Fetch it back
      ansible.builtin.fetch:
        src: /var/tmp/payload.bin
        dest: "{{ fetched }}"
        flat: true
    - name: Become another user
      ansible.builtin.command: whoami
      become: true
      become_user: nobody
      become_method: ansible.builtin.su
      become_flags: -s /bin/sh
      register: who
      changed_when: false
    - name: Show who
      ansible.builtin.assert:
        that: who.stdout == 'nobody'
"""


def test_playbook_runs_inside_lab_host(lab_host, ansible, tmp_path):
    machine = lab_host("it-conn")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024))
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {machine.name: {
        "ansible_connection": "replica.cloud.nspawn",
        "ansible_nspawn_leader_pid": machine.leader}}}}))
    fetched = tmp_path / "fetched.bin"
    proc = ansible("ansible-playbook", "-i", str(inventory), str(playbook),
                   "-e", f"payload={payload}", "-e", f"fetched={fetched}")
    assert "failed=0" in proc.stdout
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest
    # the file really is inside the machine's fork, not on the CI machine's /var/tmp
    inside = os.path.join(machine.directory, "var/tmp/payload.bin")
    with open(inside, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_failures_are_reported(lab_host, ansible):
    machine = lab_host("it-connfail")
    args = ["-i", f"{machine.name},", "-c", "replica.cloud.nspawn",
            "-e", f"ansible_nspawn_leader_pid={machine.leader}"]
    proc = ansible("ansible", "all", *args, "-m", "ansible.builtin.raw", "-a", "exit 42", check=False)
    assert proc.returncode != 0 and "rc=42" in proc.stdout + proc.stderr
    # a PID on the CI machine itself is refused rather than run on the wrong host
    proc = ansible("ansible", "all", "-i", "x,", "-c", "replica.cloud.nspawn",
                   "-e", f"ansible_nspawn_leader_pid={os.getpid()}", "-m", "ansible.builtin.raw",
                   "-a", "true", check=False)
    assert proc.returncode != 0
    assert "host" in (proc.stdout + proc.stderr).lower()


ANSIBLE_PACKAGES = ("ansible", "ansible_core-*.dist-info", "jinja2", "jinja2-*.dist-info",
                    "markupsafe", "markupsafe-*.dist-info", "yaml", "_yaml", "pyyaml-*.dist-info",
                    "PyYAML-*.dist-info", "packaging", "packaging-*.dist-info", "resolvelib",
                    "resolvelib-*.dist-info", "cryptography", "cryptography-*.dist-info", "cffi",
                    "cffi-*.dist-info", "_cffi_backend*.so", "pycparser", "pycparser-*.dist-info")


def test_by_machine_name_through_machined(lab, lab_host):
    """As on a real host: machined knows the machine, the connection finds its leader by name.
    The CI machine has no machined, so ansible-core runs inside a lab host (which has one)
    against a nested machine there."""
    machine = lab_host("it-machined")
    start_nested(lab, machine, "inner")
    # ansible-core and the collection's plugin, copied from this checkout's controller venv
    # (same Python minor version as the lab image's python3)
    site = next(p for p in sys.path if p.endswith("site-packages") and
                os.path.isdir(os.path.join(p, "ansible")))
    target = os.path.join(machine.directory, "opt/ansible-site")
    os.makedirs(target)
    for pattern in ANSIBLE_PACKAGES:
        for path in glob.glob(os.path.join(site, pattern)):
            dest = os.path.join(target, os.path.basename(path))
            if os.path.isdir(path):
                shutil.copytree(path, dest, symlinks=True)
            else:
                shutil.copy2(path, dest)
    collection = os.path.join(machine.directory, "opt/collections/ansible_collections/replica/cloud")
    shutil.copytree(os.path.join(ROOT, "plugins/connection"), os.path.join(collection, "plugins/connection"))
    shutil.copytree(os.path.join(ROOT, "meta"), os.path.join(collection, "meta"))
    proc = lab.exec(machine, [
        "env", "PYTHONPATH=/opt/ansible-site", "ANSIBLE_COLLECTIONS_PATH=/opt/collections",
        "ANSIBLE_HOST_KEY_CHECKING=0", "ANSIBLE_NOCOLOR=1", "LC_ALL=C.UTF-8",
        "python3", "-m", "ansible", "adhoc", "-i", "inner,", "-c", "replica.cloud.nspawn",
        "inner", "-m", "ansible.builtin.setup", "-a", "filter=ansible_hostname"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"ansible_hostname": "inner"' in proc.stdout
