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
requirements:
  - "On the host: systemd and systemd-container (systemd-nspawn, machinectl); btrfs-progs for btrfs
    images; util-linux (nsenter) and iproute2 to read a running machine's addresses."
extends_documentation_fragment:
  - replica.cloud.instance
options:
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
    suboptions:
      name:
        description: The user's name (lower-case letters, digits, C(_) and C(-); not root).
        type: str
        required: true
      uid:
        description: Its uid (default 1000 and up, by its place in the list).
        type: int
      groups:
        description: Groups it is a member of.
        type: list
        elements: str
      shell:
        description: Its shell (default C(/bin/bash)).
        type: str
      gecos:
        description: Its full name (default its name).
        type: str
      ssh_authorized_keys:
        description: Its SSH keys.
        type: list
        elements: str
  timezone:
    description: IANA time zone.
    type: str
  files:
    description:
      - Small files to place at first boot, each C({path, content, mode, uid, gid}), or a symlink
        C({path, link}) (for example to enable a unit).
    type: list
    elements: dict
    suboptions:
      path:
        description: The absolute path in the machine.
        type: str
        required: true
      content:
        description: The file's text (default empty).
        type: str
      link:
        description: Make O(files[].path) a symlink to this instead of a file.
        type: str
      mode:
        description: The mode, an octal string such as C("0644") (the default) or a number.
        type: raw
      uid:
        description: Owner uid (default 0).
        type: int
      gid:
        description: Group gid (default 0).
        type: int
  network:
    description:
      - C(type) V(veth) (private veth pair, default), V(bridge) (with C(bridge)), V(macvlan) or V(ipvlan)
        (with C(interface), a host interface; the machine sees C(mv-IFACE) or C(iv-IFACE)), V(none), V(host).
      - C(addresses) (static, C(ADDRESS/PREFIX)), C(gateway) (one address or a list, e.g. an IPv4 and an IPv6 gateway), C(dns); DHCP when no addresses.
      - The M(replica.cloud.instance_address) module returns this option for an instance of a network segment.
    type: dict
    suboptions:
      type:
        description: How the machine is attached (default V(veth)).
        type: str
        choices: [veth, bridge, macvlan, ipvlan, none, host]
      bridge:
        description: The host bridge of a V(bridge) network.
        type: str
      interface:
        description: The host interface of a V(macvlan) or V(ipvlan) network.
        type: str
      addresses:
        description: Static addresses, C(ADDRESS/PREFIX); DHCP when none.
        type: list
        elements: str
      gateway:
        description: One gateway address, or a list (an IPv4 and an IPv6 one).
        type: raw
      dns:
        description: Resolvers.
        type: list
        elements: str
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
    suboptions:
      what:
        description: C(SERVER:/EXPORT).
        type: str
        required: true
      where:
        description: The absolute mount point in the machine.
        type: str
        required: true
      options:
        description: Mount options (default C(vers=4.2,soft,timeo=100)).
        type: str
      idle:
        description: Unmount after this long unused (default C(10min)).
        type: str
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
  stop_when_unneeded:
    description:
      - C(StopWhenUnneeded=yes) in the machine's drop-in - it stops when no unit needs it any more
        (a lambda - the containers role's socket-activated proxy needs it while it carries connections).
    type: bool
    default: false
  enabled:
    description: Start the machine at boot (C(machines.target)).
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
actions:
  description: What this run did to the machine, in order, or in check mode what it would do (see O(state)).
  returned: always
  type: list
  elements: str
  sample: [create, configure, enable, start]
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
from ansible_collections.replica.cloud.plugins.module_utils import _lifecycle as lifecycle
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns
from ansible_collections.replica.cloud.plugins.module_utils import _params
from ansible_collections.replica.cloud.plugins.module_utils import _runner
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text as read, write_text as write_file


class Host:
    """The side effects, on the host."""

    def __init__(self, module):
        self.module = module
        self.runner = _runner.Runner(module)

    def run(self, argv, check=True):
        return self.runner.run(argv, check=check)

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


def find_gpu(module, host):
    """The host's NVIDIA device nodes, driver libraries and tools."""
    devices = sorted(os.path.join("/dev", d) for d in os.listdir("/dev")
                     if d.startswith("nvidia") and not os.path.isdir(os.path.join("/dev", d)))
    if not devices:
        module.fail_json(msg="gpu: true, but the host has no /dev/nvidia* devices: install the NVIDIA "
                             "driver on the host (and load it) first")
    rc, out, dummy = host.run(["ldconfig", "-p"], check=False)
    libraries = set()
    for line in out.splitlines() if rc == 0 else []:
        if "=>" in line and any(key in line for key in ("libcuda.so", "libnvidia-", "libnvcuvid", "libnvoptix")):
            libraries.add(os.path.realpath(line.split("=>", 1)[1].strip()))
            libraries.add(line.split("=>", 1)[1].strip())
    binaries = [p for p in ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced")
                if os.path.exists(p)]
    return {"devices": devices, "libraries": sorted(libraries), "binaries": binaries}


def main():
    module = AnsibleModule(argument_spec=ns.ARGUMENT_SPEC, supports_check_mode=True)
    params = _params.spec_of(module.params)
    name = params["name"]
    result = {"changed": False, "actions": [], "fork": os.path.join(params["machines_dir"], name),
              "dns_name": f"{name}.{params['domain']}" if params["domain"] else name, "restart_required": False,
              "addresses": [], "leader": 0, "state": "absent"}
    try:
        converge(module, Host(module), params, ns.layout(name, params["machines_dir"]), result)
    except (ns.MachineError, cow.CowError, _runner.CommandError, OSError) as exc:
        _runner.fail(module, exc, **result)
    module.exit_json(**result)


def read_machine(host, params, paths):
    """What there is of the machine now: ``(seen, current .nspawn text, record)``; refuses a name
    that belongs to something the module does not manage."""
    current_nspawn = read(paths.nspawn)
    record = ns.parse_record(read(paths.record))
    if current_nspawn is not None and not current_nspawn.startswith(ns.HEADER):
        raise ns.MachineError(f"{paths.nspawn} exists and is not managed by replica.cloud: machine "
                              f"{paths.name} belongs to someone else; choose another name")
    managed = record is not None
    fork_exists = os.path.lexists(paths.fork)
    if fork_exists and not managed:
        raise ns.MachineError(f"{paths.fork} exists and is not a machine managed by replica.cloud: "
                              f"choose another name, or move it away")
    if not managed and host.leader(paths.name):
        raise ns.MachineError(f"a machine called {paths.name} is running and is not managed by replica.cloud")
    unit = host.unit_state(paths.unit)
    seen = lifecycle.Seen(known=managed or current_nspawn is not None, exists=fork_exists,
                          active=unit.get("ActiveState") in ("active", "activating", "reloading"),
                          enabled=unit.get("UnitFileState", "") == "enabled")
    return seen, current_nspawn, record


def check_host_network(network):
    if network.get("type") == "bridge" and not os.path.isdir(f"/sys/class/net/{network.get('bridge')}/bridge"):
        raise ns.MachineError(f"bridge {network.get('bridge')} does not exist on the host: create it "
                              f"first (the network role does), or choose another network type")
    if network.get("type") in ("macvlan", "ipvlan") and not os.path.isdir(f"/sys/class/net/{network.get('interface')}"):
        raise ns.MachineError(f"host interface {network.get('interface')} does not exist")


def converge(module, host, params, paths, result):
    """Read, plan (_lifecycle), then take the planned actions; *result* is filled in."""
    name, state = params["name"], params["state"]
    spec = dict(params)
    if params["gpu"] and state != "absent":
        spec["gpu"] = find_gpu(module, host)
    seen, current_nspawn, record = read_machine(host, params, paths)
    if state == "absent":
        actions = lifecycle.plan(state, seen)
        result.update(changed=bool(actions), actions=actions)
        if actions and module._diff:
            result["diff"] = {"before": current_nspawn or "", "after": ""}
        if actions and not module.check_mode:
            remove(host, params, paths, seen)
        return

    nspawn_text = ns.render_nspawn(spec)
    dropin_text = ns.render_dropin(spec)
    digest = ns.firstboot_digest(spec)
    check_host_network(params["network"] or {})
    image = backend = None
    if not seen.exists:
        image = ns.image_path(params["image"], params["images_dir"])
        if image is None:
            raise ns.MachineError(f"machine {name} does not exist yet: give image to create it")
        backend = cow.detect(image, host.runner)
        backend.check_source(image)
    elif record and record.get("firstboot") != digest:
        module.warn(f"first-boot settings of {name} changed after it was created; they apply to "
                    f"a new machine only (state=absent, then create it again)")
    dropin_changed = read(paths.dropin) != dropin_text
    seen = seen._replace(stale=current_nspawn != nspawn_text or dropin_changed)
    actions = lifecycle.plan(state, seen, enabled=params["enabled"], restart_on_change=params["restart_on_change"])
    result.update(changed=bool(actions), actions=actions, restart_required=lifecycle.restart_required(seen, actions))
    if module._diff:
        result["diff"] = {"before": current_nspawn or "", "after": nspawn_text,
                          "before_header": paths.nspawn, "after_header": paths.nspawn}
    if module.check_mode:
        result["state"] = "running" if lifecycle.running_after(seen, actions) else "stopped"
        return

    if "create" in actions:
        create(host, params, paths, spec, image, backend)
    os.makedirs(ns.STATE_DIR, 0o755, exist_ok=True)
    if spec.get("shared_hosts", True):
        update_hosts(name, [a.split("/")[0] for a in (params["network"] or {}).get("addresses") or []])
    write_file(paths.nspawn, nspawn_text)
    if dropin_text:
        write_file(paths.dropin, dropin_text)
    elif os.path.exists(paths.dropin):
        os.unlink(paths.dropin)
    made = "create" in actions
    write_file(paths.record, ns.record_text(params["image"] if made else (record or {}).get("image"),
                                            digest if made else (record or {}).get("firstboot", digest),
                                            "nspawn_machine" if made else (record or {}).get("by", "nspawn_machine")))
    if dropin_changed:  # the .nspawn file is read at start; only a drop-in needs a reload
        host.run(["systemctl", "daemon-reload"])
    for action in ("enable", "disable"):
        if action in actions:
            host.run(["systemctl", action, "--no-reload", "--quiet", paths.unit])
    if "stop" in actions:
        host.run(["systemctl", "stop", paths.unit])
    if "start" in actions or "restart" in actions:
        start(host, params, paths, "restart" if "restart" in actions else "start", result)
        result["restart_required"] = False
    result["leader"] = host.leader(name)
    result["state"] = "running" if result["leader"] else "stopped"
    result["addresses"] = host.addresses(result["leader"])


def create(host, params, paths, spec, image, backend):
    """Fork the machine and give it its first-boot files beside its place, then rename it into
    place: killed at any point, the machine either does not exist (the re-run makes it) or is whole."""
    os.makedirs(params["machines_dir"], 0o700, exist_ok=True)

    def fill(partial):
        apply_firstboot(partial, spec)
        _lock.crash_point("machine-forked")

    cow.fork_whole(backend, image, paths.fork, paths.partial, host.runner, fill)


def start(host, params, paths, verb, result):
    if host.unit_state(paths.unit).get("ActiveState") == "failed":
        host.run(["systemctl", "reset-failed", paths.unit])  # else a stale "failed" reads as this start's
    started = time.monotonic()
    if not params["wait"]:
        host.run(["systemctl", verb, "--no-block", paths.unit])
        return
    # Type=notify and NotifyReady=yes: systemctl returns when the machine is READY
    rc, out, err = host.run(["timeout", str(params["timeout"]), "systemctl", verb, paths.unit], check=False)
    result["ready_seconds"] = round(time.monotonic() - started, 3)
    if rc != 0:
        log = host.run(["journalctl", "-u", paths.unit, "-n", "20", "--no-pager"], check=False)[1]
        hint = ""
        if "Too many open files" in log:
            hint = (" The host ran out of inotify instances: raise fs.inotify.max_user_instances "
                    "(each machine's systemd takes some).")
        result["state"] = "failed"
        raise ns.MachineError(
            f"machine {paths.name} did not become ready ({'timed out after' if rc == 124 else 'failed after'} "
            f"{result['ready_seconds']} s).{hint}\n{(err or out).strip()}\n{log}")


def remove(host, params, paths, seen):
    """Stop and remove the machine: its units, record, name and (unless keep_data) its fork."""
    if seen.active:
        host.run(["systemctl", "stop", paths.unit])
    host.run(["systemctl", "disable", "--no-reload", "--quiet", paths.unit], check=False)
    had_dropin = os.path.exists(paths.dropin)
    for path in (*paths.units(), paths.record):
        if os.path.exists(path):
            os.unlink(path)
    folder = os.path.dirname(paths.dropin)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
    if had_dropin:  # the .nspawn file is read at start; only a drop-in needs a reload
        host.run(["systemctl", "daemon-reload"])
    update_hosts(paths.name, [], remove=True)
    if seen.exists and not params["keep_data"]:
        cow.remove_tree(paths.fork, host.runner)


if __name__ == "__main__":
    main()
