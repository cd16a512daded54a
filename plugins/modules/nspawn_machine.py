#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nspawn_machine
short_description: systemd-nspawn containers forked from a copy-on-write image, ready in under a second
version_added: 0.1.0
description:
  - A machine is the stock C(systemd-nspawn@<name>.service) with C(/etc/systemd/nspawn/<name>.nspawn)
    (C(Boot=yes), C(NotifyReady=yes), so C(systemctl start) returns when the machine's own systemd
    says it is ready) and a drop-in for resource limits and devices. C(machinectl), C(systemctl)
    and the journal work as usual.
  - Its root is a fork of O(image) at C(<machines_dir>/<name>), made by the M(replica.cloud.cow_snapshot)
    code (a btrfs snapshot, or a reflink copy); a source without copy-on-write is refused rather
    than copied in full. The image itself is never written.
  - "First boot: before the fork first boots, the module writes into it (never into the image):
    C(/etc/hostname), C(/etc/localtime), C(/root/.ssh/authorized_keys), users as a
    C(/etc/sysusers.d) file with their keys, O(files), a systemd-networkd file for static
    addresses and NFS automount units. Later changes to these are not applied to a machine that
    has booted (O(state=absent) and create it again); the module warns."
  - "Names: every machine's C(/etc/hosts) is a read-only bind of the host's
    C(/etc/replica/machines/hosts), which the module keeps up to date (in place, so running
    machines see new names at once) from C(/etc/replica/machines/hosts.d/<name>): machines reach
    each other by name. This registry is what a DNS zone can be fed from."
author: replica.cloud contributors (@replica-cloud)
options:
  name:
    description: Machine name, also its host name (1-63 of C([a-z0-9-])).
    type: str
    required: true
  state:
    description:
      - V(present) - defined; the module does not start it (a running machine keeps running).
      - V(started), V(stopped), V(restarted) - defined and in that state.
      - V(absent) - stopped, unit settings removed, its fork deleted unless O(keep_data).
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: started
  image:
    description:
      - The image to fork, an absolute path (a btrfs subvolume, or a folder on a reflink file
        system) or a name under O(images_dir). Needed to create the machine.
    type: str
  images_dir:
    description: Where image names are looked up.
    type: path
    default: /var/lib/machines/.images
  machines_dir:
    description: Where forks live; C(systemd-nspawn@.service) looks in C(/var/lib/machines).
    type: path
    default: /var/lib/machines
  hostname:
    description: Host name inside, if not O(name).
    type: str
  domain:
    description: DNS domain of the machines, for RV(dns_name).
    type: str
  ssh_authorized_keys:
    description: Keys for root.
    type: list
    elements: str
  users:
    description: Users to create at first boot, each C({name, uid, groups, shell, gecos, ssh_authorized_keys}).
    type: list
    elements: dict
  timezone:
    description: IANA time zone.
    type: str
  files:
    description:
      - Small files to place at first boot, each C({path, content, mode, uid, gid}), or a symlink
        C({path, link}) (for example to enable a unit).
    type: list
    elements: dict
  network:
    description:
      - C(type) V(veth) (private veth pair, default), V(bridge) (with C(bridge)), V(macvlan) or V(ipvlan)
        (with C(interface), a host interface; the machine sees C(mv-IFACE) or C(iv-IFACE)), V(none), V(host).
      - C(addresses) (static, C(ADDRESS/PREFIX)), C(gateway) (one address or a list, e.g. an IPv4 and an IPv6 gateway), C(dns); DHCP when no addresses.
    type: dict
  binds:
    description: Host paths bound read-write, C(SRC) or C(SRC:DEST) or C({src, dest}).
    type: list
    elements: raw
  binds_ro:
    description: Host paths bound read-only.
    type: list
    elements: raw
  nfs:
    description: "NFS shares automounted inside, each C({what: SERVER:/EXPORT, where, options, idle})."
    type: list
    elements: dict
  gpu:
    description:
      - Give the machine the host's NVIDIA GPUs, for CUDA inside - the C(/dev/nvidia*) device nodes
        (bound, and allowed in the unit's device policy) and the driver's libraries
        (C(libcuda), C(libnvidia-*), found with C(ldconfig -p)) and tools (C(nvidia-smi)) read-only.
    type: bool
    default: false
  memory_max:
    description: C(MemoryMax=) of the machine's unit, e.g. C(2G).
    type: str
  cpu_weight:
    description: C(CPUWeight=) (1-10000).
    type: int
  tasks_max:
    description: C(TasksMax=).
    type: int
  capabilities:
    description: Extra capabilities (C(Capability=) in C([Exec])).
    type: list
    elements: str
  private_users:
    description: C(PrivateUsers=) (the stock unit uses C(pick), a user namespace per machine).
    type: str
  settings:
    description: "Any other C(.nspawn) keys, C({Exec|Files|Network: {Key: value or [values]}}); they win."
    type: dict
  enabled:
    description: Start the machine at boot (C(machines.target)).
    type: bool
    default: true
  wait:
    description: Return only when the machine reports READY.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for READY.
    type: int
    default: 60
  restart_on_change:
    description: Restart a running machine whose settings changed (else RV(restart_required) says so).
    type: bool
    default: false
  keep_data:
    description: With O(state=absent), keep the fork.
    type: bool
    default: false
notes:
  - Needs systemd-container (systemd-nspawn, machinectl) on the host, and btrfs-progs for btrfs images.
  - "Crash consistency: a new machine is forked and given its first-boot files in
    C(MACHINES_DIR/.NAME.partial), then renamed into place, so killed at any point (C(kill -9)) it
    either does not exist (the re-run makes it, discarding the partial) or is whole; its settings
    files are each written whole (a rename) and rewritten by every run."
attributes:
  check_mode:
    description: Reports what would be created, changed, started or removed.
    support: full
  diff_mode:
    description: Shows the C(.nspawn) file before and after.
    support: full
"""

EXAMPLES = r"""
- name: A container from the cached Debian image, on the bridge, with a static address
  replica.cloud.nspawn_machine:
    name: web1
    image: debian-12
    network: {type: bridge, bridge: br0, addresses: [10.0.0.11/24], gateway: 10.0.0.1}
    ssh_authorized_keys: ["{{ lookup('ansible.builtin.file', 'id_ed25519.pub') }}"]
    memory_max: 1G

- name: Remove it, keeping its data
  replica.cloud.nspawn_machine:
    name: web1
    state: absent
    keep_data: true
"""

RETURN = r"""
state:
  description: V(running), V(stopped) or V(absent).
  returned: always
  type: str
leader:
  description: PID of the machine's init on the host (0 when not running).
  returned: always
  type: int
addresses:
  description: The machine's IP addresses (when running).
  returned: always
  type: list
  elements: str
dns_name:
  description: The machine's name in the hosts registry (with O(domain) when given).
  returned: always
  type: str
ready_seconds:
  description: Seconds from the start request to READY (when the module started it).
  returned: when started
  type: float
restart_required:
  description: The settings changed while the machine runs; a restart applies them.
  returned: always
  type: bool
fork:
  description: The machine's root.
  returned: always
  type: str
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow
from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text as read, write_text as write_file

ENV = {"LC_ALL": "C", "LANG": "C"}
STATE_DIR = "/etc/replica/machines"


class Host:
    """The side effects, on the host."""

    def __init__(self, module):
        self.module = module

    def run(self, argv, check=True):
        rc, out, err = self.module.run_command(argv, environ_update=ENV)
        if check and rc != 0:
            self.module.fail_json(msg=f"{' '.join(argv)} failed: {(err or out).strip()}")
        return rc, out, err

    def unit_state(self, unit):
        out = self.run(["systemctl", "show", "--property=ActiveState,LoadState,UnitFileState", unit])[1]
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def leader(self, name):
        rc, out, dummy = self.run(["machinectl", "show", name, "--property=Leader", "--value"], check=False)
        return int(out.strip()) if rc == 0 and out.strip().isdigit() else 0

    def addresses(self, leader):
        if not leader:
            return []
        rc, out, dummy = self.run(["nsenter", "--target", str(leader), "--net", "ip", "-j", "addr", "show"], check=False)
        if rc != 0:
            return []
        found = []
        for link in json.loads(out or "[]"):
            for info in link.get("addr_info", []):
                if info.get("scope") == "global":
                    found.append(info["local"])
        return found


def inside(fork, path):
    """*path* of the machine, under its fork; refuses to leave the fork through symlinks."""
    full = os.path.normpath(os.path.join(fork, path.lstrip("/")))
    real_parent = os.path.realpath(os.path.dirname(full))
    if not (real_parent + "/").startswith(os.path.realpath(fork) + "/") and real_parent != os.path.realpath(fork):
        raise ns.MachineError(f"{path} leads out of the machine's root")
    return full


def apply_firstboot(fork, spec):
    for path, (content, *rest) in sorted(ns.firstboot_files(spec).items()):
        full = inside(fork, path)
        if content == "->":
            os.makedirs(os.path.dirname(full), 0o755, exist_ok=True)
            if os.path.lexists(full):
                os.unlink(full)
            os.symlink(rest[0], full)
            continue
        mode, uid, gid = rest
        parent = os.path.dirname(full)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
            if uid:  # e.g. /home/<user>/.ssh belongs to the user
                for folder in (parent, os.path.dirname(parent)):
                    if folder.startswith(inside(fork, "/home") + "/"):
                        os.chown(folder, uid, gid)
                        os.chmod(folder, 0o700)
        write_file(full, content, mode, uid, gid)
    if spec.get("timezone"):
        localtime = inside(fork, "/etc/localtime")
        if os.path.lexists(localtime):
            os.unlink(localtime)
        os.symlink(f"../usr/share/zoneinfo/{spec['timezone']}", localtime)
        write_file(inside(fork, "/etc/timezone"), f"{spec['timezone']}\n")


def update_hosts(name, addresses, remove=False):
    """Keep the shared hosts file in step with hosts.d; rewrite it in place (same inode), as
    running machines have it bind-mounted. Returns whether anything changed."""
    os.makedirs(ns.HOSTS_DIR, 0o755, exist_ok=True)
    entry = os.path.join(ns.HOSTS_DIR, name)
    changed = False
    if remove:
        if os.path.exists(entry):
            os.unlink(entry)
            changed = True
    elif addresses:
        changed = write_file(entry, "".join(f"{a}\n" for a in addresses))
    entries = {}
    for other in sorted(os.listdir(ns.HOSTS_DIR)):
        with open(os.path.join(ns.HOSTS_DIR, other), encoding="utf-8") as handle:
            entries[other] = handle.read().split()
    text = ns.render_hosts(entries)
    if read(ns.HOSTS_FILE) != text:
        with open(ns.HOSTS_FILE, "a+", encoding="utf-8") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(text)
        os.chmod(ns.HOSTS_FILE, 0o644)
        changed = True
    return changed


def find_gpu(module):
    """The host's NVIDIA device nodes, driver libraries and tools."""
    devices = sorted(os.path.join("/dev", d) for d in os.listdir("/dev")
                     if d.startswith("nvidia") and not os.path.isdir(os.path.join("/dev", d)))
    if not devices:
        module.fail_json(msg="gpu: true, but the host has no /dev/nvidia* devices: install the NVIDIA "
                             "driver on the host (and load it) first")
    rc, out, dummy = module.run_command(["ldconfig", "-p"], environ_update=ENV)
    libraries = set()
    for line in out.splitlines() if rc == 0 else []:
        if "=>" in line and any(key in line for key in ("libcuda.so", "libnvidia-", "libnvcuvid", "libnvoptix")):
            libraries.add(os.path.realpath(line.split("=>", 1)[1].strip()))
            libraries.add(line.split("=>", 1)[1].strip())
    binaries = [p for p in ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced")
                if os.path.exists(p)]
    return {"devices": devices, "libraries": sorted(libraries), "binaries": binaries}


def image_path(params):
    image = params["image"]
    if not image:
        return None
    path = image if image.startswith("/") else os.path.join(params["images_dir"], image)
    if not os.path.isdir(path):
        known = sorted(entry.name for entry in os.scandir(params["images_dir"])
                       if entry.is_dir() and not entry.name.startswith(".")) if os.path.isdir(params["images_dir"]) else []
        raise ns.MachineError(f"image {image} is not there ({path}); known images: {', '.join(known) or 'none'}")
    return path


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "started",
                      "choices": ["present", "started", "stopped", "restarted", "absent"]},
            "image": {"type": "str"},
            "images_dir": {"type": "path", "default": "/var/lib/machines/.images"},
            "machines_dir": {"type": "path", "default": "/var/lib/machines"},
            "hostname": {"type": "str"},
            "domain": {"type": "str"},
            "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
            "users": {"type": "list", "elements": "dict"},
            "timezone": {"type": "str"},
            "files": {"type": "list", "elements": "dict"},
            "network": {"type": "dict"},
            "binds": {"type": "list", "elements": "raw"},
            "binds_ro": {"type": "list", "elements": "raw"},
            "nfs": {"type": "list", "elements": "dict"},
            "gpu": {"type": "bool", "default": False},
            "memory_max": {"type": "str"},
            "cpu_weight": {"type": "int"},
            "tasks_max": {"type": "int"},
            "capabilities": {"type": "list", "elements": "str"},
            "private_users": {"type": "str"},
            "settings": {"type": "dict"},
            "enabled": {"type": "bool", "default": True},
            "wait": {"type": "bool", "default": True},
            "timeout": {"type": "int", "default": 60},
            "restart_on_change": {"type": "bool", "default": False},
            "keep_data": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    host = Host(module)
    name, state = params["name"], params["state"]
    unit = f"systemd-nspawn@{name}.service"
    nspawn_path = f"/etc/systemd/nspawn/{name}.nspawn"
    dropin_path = f"/etc/systemd/system/{unit}.d/50-replica.conf"
    record_path = os.path.join(STATE_DIR, f"{name}.json")
    fork = os.path.join(params["machines_dir"], name)
    dns_name = f"{name}.{params['domain']}" if params["domain"] else name
    result = {"changed": False, "fork": fork, "dns_name": dns_name, "restart_required": False,
              "addresses": [], "leader": 0, "state": "absent"}

    def run(argv):
        return module.run_command(argv, environ_update=ENV)

    try:
        ns.check_name(name)
        spec = dict(params)
        if params["gpu"] and state != "absent":
            spec["gpu"] = find_gpu(module)
        current_nspawn = read(nspawn_path)
        record = json.loads(read(record_path) or "null")
        if current_nspawn is not None and not current_nspawn.startswith(ns.HEADER):
            raise ns.MachineError(f"{nspawn_path} exists and is not managed by replica.cloud: machine "
                                  f"{name} belongs to someone else; choose another name")
        managed = record is not None
        fork_exists = os.path.lexists(fork)
        if fork_exists and not managed:
            raise ns.MachineError(f"{fork} exists and is not a machine managed by replica.cloud: "
                                  f"choose another name, or move it away")
        if not managed and host.leader(name):
            raise ns.MachineError(f"a machine called {name} is running and is not managed by replica.cloud")
        active = host.unit_state(unit).get("ActiveState") in ("active", "activating", "reloading")

        if state == "absent":
            if not managed and current_nspawn is None:
                module.exit_json(**result)
            result["changed"] = True
            if module._diff:
                result["diff"] = {"before": current_nspawn or "", "after": ""}
            if module.check_mode:
                module.exit_json(**result)
            if active:
                host.run(["systemctl", "stop", unit])
            host.run(["systemctl", "disable", "--no-reload", "--quiet", unit], check=False)
            had_dropin = os.path.exists(dropin_path)
            for path in (nspawn_path, dropin_path, record_path):
                if os.path.exists(path):
                    os.unlink(path)
            if os.path.isdir(os.path.dirname(dropin_path)) and not os.listdir(os.path.dirname(dropin_path)):
                os.rmdir(os.path.dirname(dropin_path))
            if had_dropin:  # the .nspawn file is read at start; only a drop-in needs a reload
                host.run(["systemctl", "daemon-reload"])
            update_hosts(name, [], remove=True)
            if fork_exists and not params["keep_data"]:
                cow.remove_tree(fork, run)
            module.exit_json(**result)

        nspawn_text = ns.render_nspawn(spec)
        dropin_text = ns.render_dropin(spec)
        digest = ns.firstboot_digest(spec)
        addresses = [a.split("/")[0] for a in (params["network"] or {}).get("addresses") or []]
        create = not fork_exists
        image = None
        network = params["network"] or {}
        if network.get("type") == "bridge" and not os.path.isdir(f"/sys/class/net/{network.get('bridge')}/bridge"):
            raise ns.MachineError(f"bridge {network.get('bridge')} does not exist on the host: create it "
                                  f"first (the network role does), or choose another network type")
        if network.get("type") in ("macvlan", "ipvlan") and not os.path.isdir(f"/sys/class/net/{network.get('interface')}"):
            raise ns.MachineError(f"host interface {network.get('interface')} does not exist")
        if create:
            image = image_path(params)
            if image is None:
                raise ns.MachineError(f"machine {name} does not exist yet: give image to create it")
            backend = cow.detect(image, run)
            backend.check_source(image)
        elif record and record.get("firstboot") != digest:
            module.warn(f"first-boot settings of {name} changed after it was created; they apply to "
                        f"a new machine only (state=absent, then create it again)")
        changed_settings = current_nspawn != nspawn_text or read(dropin_path) != dropin_text
        result["restart_required"] = bool(active and changed_settings)
        if module._diff:
            result["diff"] = {"before": current_nspawn or "", "after": nspawn_text,
                              "before_header": nspawn_path, "after_header": nspawn_path}
        will_start = state in ("started", "restarted") and (
            not active or state == "restarted" or (changed_settings and params["restart_on_change"]))
        will_stop = state == "stopped" and active
        unit_file = host.unit_state(unit).get("UnitFileState", "")
        enable_change = state != "present" and params["enabled"] != (unit_file == "enabled")
        result["changed"] = create or changed_settings or will_start or will_stop or enable_change
        if module.check_mode:
            result["state"] = "running" if (active and not will_stop) or will_start else "stopped"
            module.exit_json(**result)

        if create:
            # forked and given its first-boot files beside its place, then renamed into it: killed
            # at any point, the machine either does not exist (the re-run makes it) or is whole
            os.makedirs(params["machines_dir"], 0o700, exist_ok=True)
            partial = os.path.join(params["machines_dir"], f".{name}.partial")
            cow.remove_tree(partial, run)
            backend.fork(image, partial)
            try:
                apply_firstboot(partial, spec)
                _lock.crash_point("machine-forked")
                os.rename(partial, fork)
            except (ns.MachineError, OSError):
                cow.remove_tree(partial, run)
                raise
        os.makedirs(STATE_DIR, 0o755, exist_ok=True)
        if spec.get("shared_hosts", True):
            update_hosts(name, addresses)
        write_file(nspawn_path, nspawn_text)
        dropin_changed = read(dropin_path) != dropin_text
        if dropin_text:
            write_file(dropin_path, dropin_text)
        elif os.path.exists(dropin_path):
            os.unlink(dropin_path)
        write_file(record_path, json.dumps({"image": params["image"] if create else (record or {}).get("image"),
                                            "firstboot": digest if create else (record or {}).get("firstboot", digest)},
                                           indent=1) + "\n")
        if dropin_changed:  # the .nspawn file is read at start; only a drop-in needs a reload
            host.run(["systemctl", "daemon-reload"])
        if enable_change:
            host.run(["systemctl", "enable" if params["enabled"] else "disable", "--no-reload", "--quiet", unit])
        if will_stop:
            host.run(["systemctl", "stop", unit])
        if will_start:
            if host.unit_state(unit).get("ActiveState") == "failed":
                host.run(["systemctl", "reset-failed", unit])  # else a stale "failed" reads as this start's
            verb = "restart" if active else "start"
            started = time.monotonic()
            if params["wait"]:
                # Type=notify and NotifyReady=yes: systemctl returns when the machine is READY
                rc, out, err = host.run(["timeout", str(params["timeout"]), "systemctl", verb, unit], check=False)
                result["ready_seconds"] = round(time.monotonic() - started, 3)
                if rc != 0:
                    log = host.run(["journalctl", "-u", unit, "-n", "20", "--no-pager"], check=False)[1]
                    hint = ""
                    if "Too many open files" in log:
                        hint = (" The host ran out of inotify instances: raise fs.inotify.max_user_instances "
                                "(each machine's systemd takes some).")
                    result["state"] = "failed"
                    raise ns.MachineError(
                        f"machine {name} did not become ready ({'timed out after' if rc == 124 else 'failed after'} "
                        f"{result['ready_seconds']} s).{hint}\n{(err or out).strip()}\n{log}")
            else:
                host.run(["systemctl", verb, "--no-block", unit])
            result["restart_required"] = False
        result["leader"] = host.leader(name)
        result["state"] = "running" if result["leader"] else "stopped"
        result["addresses"] = host.addresses(result["leader"])
    except (ns.MachineError, cow.CowError, OSError) as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
