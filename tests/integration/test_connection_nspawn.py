# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.nspawn against a real lab host: tasks, file transfer, become, failures."""

from __future__ import annotations

import hashlib
import json
import os

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
