#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_vm
short_description: QEMU VMs (microVMs by direct kernel boot, q35 with UEFI) as systemd template instances
version_added: 0.1.0
description:
  - A VM is C(replica-vm@<name>.service) (a template the module installs) with a drop-in holding
    its QEMU command line; its files live in O(vms_dir)/O(name) (the disk, the cloud-init seed,
    UEFI variables, the TPM state), on copy-on-write storage so that they are snapshotted together.
    Its QMP socket, serial console and VNC socket are under C(/run/replica-vm/<name>/).
  - "The disk is a fork of O(image): a reflink copy of the file where the file system shares
    extents (btrfs, xfs), else a qcow2 overlay with the image as its backing file (the image is
    never written). O(size) grows it."
  - "Cloud-init: a NoCloud seed (C(cidata)) built with C(genisoimage) from O(cloud_init) is
    attached as a read-only disk."
  - "Ready means the guest printed O(ready_pattern) on its serial console (by default a login
    prompt); RV(ready_seconds) counts from the start request."
  - "Stop is graceful: ACPI power-down through QMP, then after O(stop_timeout) the process is
    killed."
  - "Helper units, bound to the VM's unit (C(systemctl stop replica-vm@<name>) stops them all):
    C(replica-vm-swtpm@<name>.service), a software TPM 2.0 (O(tpm)) whose state is in the VM's
    folder, so a snapshot of the VM includes it; C(replica-vm-console@<name>.socket), the VM's VNC
    display as a websocket, socket-activated: the first connection starts a
    C(systemd-socket-proxyd) joined to the network namespace of C(replica-vm-websockify@<name>),
    which bridges to the VNC UNIX socket; both exit after 5 idle minutes."
  - "QEMU runs hardened: read-only system but for the VM's folder, no capabilities (CAP_NET_ADMIN
    with tap or macvtap), C(@system-service) system calls."
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: systemd, qemu-system-x86 and qemu-utils; ovmf for V(q35); swtpm and swtpm-tools for
    O(tpm); websockify for the web console; genisoimage for O(cloud_init); btrfs-progs where the
    VMs' folder is on btrfs."
extends_documentation_fragment:
  - replica.cloud.instance
options:
  machine:
    description: V(microvm) (direct kernel boot through QEMU's qboot, virtio-mmio) or V(q35) (UEFI from OVMF).
    type: str
    choices: [microvm, q35]
    default: microvm
  cpus:
    description: Virtual CPUs.
    type: int
    default: 1
  memory:
    description: Memory, MiB or a size like C(1G).
    type: str
    default: "512"
  accel:
    description: V(auto) uses KVM when C(/dev/kvm) can create a VM, else TCG (RV(accel) says which).
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  image:
    description: The base disk to fork (a path, or a file name under O(images_dir)). Needed to create the VM.
    type: str
  images_dir:
    description: Where image names are looked up.
    type: path
    default: /var/lib/replica/vm-images
  vms_dir:
    description: Where each VM's folder is made.
    type: path
    default: /var/lib/replica/vms
  size:
    description: Grow the disk to this size (C(qemu-img resize)) when it is created, e.g. C(10G).
    type: str
  kernel:
    description: Kernel for direct boot (required for microvm).
    type: path
  initrd:
    description: Initial ramdisk for direct boot.
    type: path
  cmdline:
    description: Kernel command line.
    type: str
    default: console=ttyS0 root=/dev/vda rw
  disks:
    description: "Extra disks, each C({path, format}) or C({iscsi: iscsi://portal/target-iqn/lun}) (QEMU's own initiator)."
    type: list
    elements: dict
    suboptions:
      path:
        description: A disk file on the host. One of O(disks[].path) and O(disks[].iscsi).
        type: path
      format:
        description: The file's format (default V(raw)).
        type: str
        choices: [raw, qcow2]
      iscsi:
        description: "An iSCSI LUN, C(iscsi://PORTAL/TARGET-IQN/LUN), reached by QEMU's own initiator."
        type: str
  iso:
    description: An installer ISO attached while the disk was never written (q35).
    type: path
  drivers_iso:
    description: A drivers ISO (virtio-win) attached with O(iso) (q35).
    type: path
  tpm:
    description: A software TPM 2.0 (swtpm) for a q35 VM.
    type: bool
    default: false
  web_console:
    description:
      - "Where the q35 VM's web console (its VNC display over a websocket) listens: V(unix) (the
        default, C(/run/replica-vm-console/<name>.sock), for the ingress web server to proxy), an
        absolute socket path, C(ADDRESS:PORT), or V(none)."
      - The VNC UNIX socket itself is always there (RV(vnc)).
    type: str
  cloud_init:
    description: "C({hostname, ssh_authorized_keys, users, network_config, user_data}) for a NoCloud seed."
    type: dict
    suboptions:
      hostname:
        description: The guest's host name (default O(name)).
        type: str
      fqdn:
        description: Its fully qualified name (default its host name).
        type: str
      ssh_authorized_keys:
        description: Keys of the image's default user.
        type: list
        elements: str
      users:
        description: More users, as cloud-init's C(users) list has them (after C(default)).
        type: list
        elements: raw
      network_config:
        description: A cloud-init network configuration (version 2), given to the guest as it is.
        type: dict
      user_data:
        description:
          - The whole user data instead (C(#cloud-config) is added when missing).
          - O(cloud_init.ssh_authorized_keys) and O(cloud_init.users) are then not used.
        type: str
  network:
    description: "C({type: user|tap|macvtap|none, bridge, interface, mac}); the MAC is derived from the name unless given."
    type: dict
    suboptions:
      type:
        description: V(user) (QEMU's user-mode network, the default), V(tap) (a tap on O(network.bridge)), V(macvtap) (on O(network.interface)), V(none).
        type: str
        choices: [user, tap, macvtap, none]
      bridge:
        description: The host bridge of a V(tap) network.
        type: str
      interface:
        description: The host interface of a V(macvtap) network.
        type: str
      mac:
        description: The guest's MAC (default derived from O(name), RV(mac)).
        type: str
      mode:
        description: The macvtap mode (default V(bridge)).
        type: str
        choices: [bridge, vepa, private, passthru]
  timeout:
    description: Seconds to wait for ready.
    type: int
    default: 120
  ready_pattern:
    description: What the guest prints on its serial console when it is ready.
    type: str
    default: "login:"
  stop_timeout:
    description: Seconds a graceful stop may take before the VM is killed.
    type: int
    default: 60
notes:
  - Needs qemu-system-x86 and qemu-utils; genisoimage for O(cloud_init); ovmf for q35; swtpm and
    swtpm-tools for O(tpm); websockify for the web console; qemu-block-extra for iSCSI disks.
    The replica.cloud.vms role installs them.
  - "Crash consistency: killed at any point (C(kill -9)), a re-run converges and nothing is lost.
    One run at a time changes a VM (a lock per name in C(/run/replica/locks), waited on up to 10
    minutes; the message names the holder). A new VM's folder is made whole in
    C(VMS_DIR/.NAME.partial) (disk fork, UEFI variables, cloud-init seed, TPM folder, and its
    record C(vm.json) last), then renamed into place: it either does not exist (the re-run
    discards the partial and makes it) or is whole. The seed is built beside the old one and
    renamed over it. Unit files are each written whole (a rename); systemd is reloaded when they
    changed or when it says it needs it (C(NeedDaemonReload)), so a run killed before its
    C(daemon-reload) is completed by the next. Removal renames the folder to
    C(VMS_DIR/.NAME.removing) before it removes the units, so a killed removal is finished by
    the re-run (the units are still there to find it). The tests kill it at C(vm-created),
    C(vm-units-written) and C(vm-removing)."
attributes:
  check_mode:
    description: Reports what would be created, changed, started or removed.
    support: full
  diff_mode:
    description: Shows the unit drop-in (the QEMU command line) before and after.
    support: full
"""

EXAMPLES = r"""
- name: A microVM from a Debian disk image, ready at its login prompt
  replica.cloud.qemu_vm:
    name: tiny1
    machine: microvm
    image: debian-12.raw
    kernel: /var/lib/replica/vm-images/vmlinuz
    initrd: /var/lib/replica/vm-images/initrd.img
    memory: 512M
    cloud_init: {hostname: tiny1}
"""

RETURN = r"""
actions:
  description: What this run did to the VM, in order, or in check mode what it would do (see O(state)).
  returned: always
  type: list
  elements: str
  sample: [create, configure, start]
state:
  description: V(running), V(stopped) or V(absent).
  returned: always
  type: str
pid:
  description: QEMU's PID (0 when not running).
  returned: always
  type: int
accel:
  description: The accelerator used, V(kvm) or V(tcg).
  returned: always
  type: str
qmp:
  description: The QMP socket.
  returned: always
  type: str
console:
  description: The serial console socket (its output is also in serial.log next to it).
  returned: always
  type: str
vnc:
  description: The VNC socket (q35).
  returned: always
  type: str
tpm:
  description: The software TPM's socket (O(tpm)).
  returned: always
  type: str
web_console:
  description: Where the web console listens (q35), a socket path or C(ADDRESS:PORT).
  returned: always
  type: str
ready_seconds:
  description: Seconds from the start request to the ready pattern on the console.
  returned: when started
  type: float
disk:
  description: The VM's disk.
  returned: always
  type: str
mac:
  description: The VM's MAC address (derived from its name unless given).
  returned: when present
  type: str
addresses:
  description:
    - "What is known of its addresses without asking the guest: the static addresses of its
      cloud-init O(cloud_init) C(network_config), then its IPv6 link-local address (EUI-64 from
      the MAC) on a tap or macvtap network, or C(10.0.2.15) (QEMU's user-mode network, behind
      QEMU's NAT)."
    - DHCP leases are the network role's (its DNS names the VM).
  returned: when present
  type: list
  elements: str
"""

import base64
import fcntl
import json
import os
import shutil
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow
from ansible_collections.replica.cloud.plugins.module_utils import _lifecycle as lifecycle
from ansible_collections.replica.cloud.plugins.module_utils import _live as live
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils import _params
from ansible_collections.replica.cloud.plugins.module_utils import _qemu as vm
from ansible_collections.replica.cloud.plugins.module_utils import _runner
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text as read, write_text as write

SYSTEMD_DIR = "/etc/systemd/system"
KVM_CREATE_VM = 0xAE01


def kvm_works(module):
    """Whether KVM can run a vCPU here: /dev/kvm can exist and still fail at the first CPU reset
    (nested virtualization without MSR support), so ask QEMU itself, paused, then quit."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm_fd)
        os.close(fd)
    except OSError:
        return False
    rc, dummy, dummy2 = _runner.Runner(module).run(
        ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-M", "microvm", "-nodefaults", "-no-user-config",
         "-display", "none", "-m", "16", "-S", "-qmp", "stdio"],
        data='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', check=False)
    return rc == 0


def host_tsc_khz():
    """The host's TSC rate in kHz ("cpu MHz" of a CPU with a constant TSC), or None."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            info = handle.read()
    except OSError:
        return None
    if " constant_tsc" not in info:
        return None
    for line in info.splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":", 1)[1]) * 1000)
    return None


def qmp(path, command, timeout=5):
    """Send one QMP command; returns the reply (or raises OSError)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        handle = sock.makefile("rw", encoding="utf-8")
        handle.readline()  # greeting
        for execute in ("qmp_capabilities", command):
            handle.write(json.dumps({"execute": execute}) + "\n")
            handle.flush()
            while True:
                reply = json.loads(handle.readline())
                if "return" in reply or "error" in reply:
                    break
        return reply


DISK_OPTIONS = {
    "path": {"type": "path"},
    "format": {"type": "str", "choices": ["raw", "qcow2"]},
    "iscsi": {"type": "str"},
}
CLOUD_INIT_OPTIONS = {
    "hostname": {"type": "str"},
    "fqdn": {"type": "str"},
    "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
    "users": {"type": "list", "elements": "raw"},
    "network_config": {"type": "dict"},
    "user_data": {"type": "str"},
}
NETWORK_OPTIONS = {
    "type": {"type": "str", "choices": list(vm.NETWORKS)},
    "bridge": {"type": "str"},
    "interface": {"type": "str"},
    "mac": {"type": "str"},
    "mode": {"type": "str", "choices": ["bridge", "vepa", "private", "passthru"]},
}
ARGUMENT_SPEC = dict(_params.instance_options(timeout=120), **{
    "machine": {"type": "str", "default": "microvm", "choices": ["microvm", "q35"]},
    "cpus": {"type": "int", "default": 1},
    "memory": {"type": "str", "default": "512"},
    "accel": {"type": "str", "default": "auto", "choices": ["auto", "kvm", "tcg"]},
    "image": {"type": "str"},
    "images_dir": {"type": "path", "default": "/var/lib/replica/vm-images"},
    "vms_dir": {"type": "path", "default": "/var/lib/replica/vms"},
    "size": {"type": "str"},
    "kernel": {"type": "path"},
    "initrd": {"type": "path"},
    "cmdline": {"type": "str", "default": "console=ttyS0 root=/dev/vda rw"},
    "disks": {"type": "list", "elements": "dict", "options": DISK_OPTIONS,
              "mutually_exclusive": [("path", "iscsi")], "required_one_of": [("path", "iscsi")]},
    "iso": {"type": "path"},
    "drivers_iso": {"type": "path"},
    "tpm": {"type": "bool", "default": False},
    "web_console": {"type": "str"},
    "cloud_init": {"type": "dict", "options": CLOUD_INIT_OPTIONS},
    "network": {"type": "dict", "options": NETWORK_OPTIONS},
    "ready_pattern": {"type": "str", "default": "login:"},
    "stop_timeout": {"type": "int", "default": 60},
})


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = _params.spec_of(module.params)
    name, state = params["name"], params["state"]
    unit = f"replica-vm@{name}.service"
    dropin_path = f"{SYSTEMD_DIR}/{unit}.d/50-vm.conf"
    vm_dir = os.path.join(params["vms_dir"], name)
    record_path = os.path.join(vm_dir, "vm.json")
    result = {"changed": False, "actions": [], "state": "absent", "pid": 0, "accel": "", "qmp": "", "console": "",
              "vnc": "", "tpm": "", "web_console": "", "disk": ""}
    runner = _runner.Runner(module)

    def run(argv, check=True):
        try:
            return runner.run(argv, check=check)
        except _runner.CommandError as exc:   # a VmError: the steps that undo themselves catch it
            raise vm.VmError(str(exc)) from exc

    def unit_state():
        out = run(["systemctl", "show", "--property=ActiveState,MainPID", unit], check=False)[1]
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return props.get("ActiveState", "inactive"), int(props.get("MainPID", "0") or 0)

    try:
        vm.check_name(name)
        run_paths = vm.paths(name)
        result.update(qmp=run_paths["qmp"], console=run_paths["console"],
                      vnc=run_paths["vnc"] if params["machine"] == "q35" else "",
                      tpm=run_paths["tpm"] if params["tpm"] else "")
        with _lock.held("vm", os.path.join(os.path.abspath(params["vms_dir"]), name), f"qemu_vm {name} {state}"):
            converge(module, params, name, state, unit, dropin_path, vm_dir, record_path, run_paths, result, run, unit_state)
    except (vm.VmError, cow.CowError, _lock.LockError, OSError, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, _runner.CommandError) else exc
        module.fail_json(msg=str(exc), **(cause.fields() if cause is not exc else {}), **result)
    module.exit_json(**result)


def leftovers(vms_dir, name):
    """What a killed run left of VM *name*: its folder being made or being removed."""
    return [path for path in (os.path.join(vms_dir, f".{name}.partial"), os.path.join(vms_dir, f".{name}.removing"))
            if os.path.lexists(path)]


def converge(module, params, name, state, unit, dropin_path, vm_dir, record_path, run_paths, result, run, unit_state):
    """Everything after the name check, under the VM's lock; returns through exit_json."""
    # a killed run's folder being made or removed: discarded (a removal is finished below)
    left = leftovers(params["vms_dir"], name)
    if left and not module.check_mode:
        for path in left:
            cow.remove_tree(path, lambda argv: run(argv, check=False))
    record = json.loads(read(record_path) or "null")
    current = current_units(name)
    for path, text in current.items():
        if not text.startswith(vm.HEADER):
            raise vm.VmError(f"{path} exists and is not managed by replica.cloud: remove it or choose another name")
    if os.path.isdir(vm_dir) and record is None:
        raise vm.VmError(f"{vm_dir} exists and is not a VM managed by replica.cloud: choose another name")
    active, pid = unit_state()
    running = active in ("active", "activating", "deactivating")
    seen = lifecycle.Seen(known=record is not None or bool(current), exists=record is not None, active=running,
                          leftovers=bool(left))

    if state == "absent":
        actions = lifecycle.plan(state, seen)
        result.update(changed=bool(actions), actions=actions)
        if "remove" not in actions:
            module.exit_json(**result)
        if module._diff:
            result["diff"] = {"before": units_text(current), "after": ""}
        if not module.check_mode:
            remove_vm(module, params, name, unit, vm_dir, run_paths, run, unit_state, current, running)
        module.exit_json(**result)

    spec = dict(params)
    vm.validate(spec)
    accel = params["accel"] if params["accel"] != "auto" else ("kvm" if kvm_works(module) else "tcg")
    result["accel"] = accel
    create = record is None
    image = image_format = None
    disk_format = (record or {}).get("disk_format")
    disk = (record or {}).get("disk")
    if create:
        image = params["image"]
        if not image:
            raise vm.VmError(f"VM {name} does not exist yet: give image to create it")
        image = image if image.startswith("/") else os.path.join(params["images_dir"], image)
        if not os.path.isfile(image):
            known = sorted(os.listdir(params["images_dir"])) if os.path.isdir(params["images_dir"]) else []
            raise vm.VmError(f"image {image} is not there; known: {', '.join(known) or 'none'}")
        for option in ("kernel", "initrd", "iso", "drivers_iso"):
            if params[option] and not os.path.isfile(params[option]):
                raise vm.VmError(f"{option} {params[option]} is not there")
        image_format = "qcow2" if image.endswith(".qcow2") else "raw"
    firmware = None
    bios = vm.QBOOT if params["machine"] == "microvm" and os.path.exists(vm.QBOOT) else None
    if params["machine"] == "q35":
        code = next((p for p in ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd")
                     if os.path.exists(p)), None)
        if code is None:
            raise vm.VmError("q35 needs UEFI firmware: install the ovmf package")
        firmware = (code, os.path.join(vm_dir, "OVMF_VARS.fd"))
    needs = [("swtpm", "tpm: true needs swtpm and swtpm-tools: install them", params["tpm"]),
             ("swtpm_setup", "tpm: true needs swtpm-tools: install it", params["tpm"]),
             ("websockify", "the web console needs websockify: install it, or set web_console: none",
              vm.web_console_listen(params))]
    for tool, message, wanted in needs:
        if wanted and not shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin"):
            raise vm.VmError(message)
    if create:
        os.makedirs(params["vms_dir"], 0o700, exist_ok=True)
        reflink = cow.can_reflink(params["vms_dir"]) and image_format == "raw" and \
            os.stat(params["vms_dir"]).st_dev == os.stat(image).st_dev
        disk_format = "raw" if reflink else "qcow2"
        disk = os.path.join(vm_dir, f"disk.{disk_format}")
    spec.update(disk=disk, disk_format=disk_format,
                seed=os.path.join(vm_dir, "seed.iso") if params["cloud_init"] else None,
                iso=params["iso"] if create or not (record or {}).get("written") else None,
                drivers_iso=params["drivers_iso"] if create or not (record or {}).get("written") else None)
    spec["tsc_khz"] = host_tsc_khz()
    argv = vm.build_argv(spec, accel, firmware=firmware, bios=bios,
                         tpm_socket=run_paths["tpm"] if params["tpm"] else None)
    wanted = {os.path.join(SYSTEMD_DIR, path): text for path, text in vm.render_units(spec, argv, vm_dir).items()}
    wanted[dropin_path] += (f"ExecStop=/usr/bin/python3 -c {vm._quote(POWERDOWN)} {run_paths['qmp']}\n"
                            f"TimeoutStopSec={params['stop_timeout']}\n")
    result["web_console"] = vm.web_console_listen(params) or ""
    seed_files = vm.cloud_init(spec) if params["cloud_init"] else None
    seed_changed = seed_files is not None and (record or {}).get("seed") != seed_files
    templates_changed = any(read(os.path.join(SYSTEMD_DIR, path)) != text for path, text in vm.TEMPLATES.items())
    changed_settings = current != wanted or templates_changed
    # a run killed after writing the units and before daemon-reload: systemd still has the old ones
    reload_needed = changed_settings or create or needs_daemon_reload(run, vm.instance_units(name))
    seen = seen._replace(stale=changed_settings or reload_needed or seed_changed)
    actions = lifecycle.plan(state, seen)
    will_start = "start" in actions or "restart" in actions
    will_stop = "stop" in actions
    result.update(changed=bool(actions), actions=actions)
    # what runs is older than its files (also when the run that wrote them was killed)
    older = running and not create and started_before(run, unit, [*current, os.path.join(vm_dir, "seed.iso")])
    result["restart_required"] = bool(running and (changed_settings or seed_changed or older) and not will_start)
    result["disk"] = disk
    result.update(vm.addresses(spec))
    if module._diff:
        result["diff"] = {"before": units_text(current), "after": units_text(wanted),
                          "before_header": f"{SYSTEMD_DIR}/replica-vm*@{name}.*.d", "after_header": f"{SYSTEMD_DIR}/replica-vm*@{name}.*.d"}
    if module.check_mode:
        result["state"] = "running" if lifecycle.running_after(seen, actions) else "stopped"
        module.exit_json(**result)

    record_text = json.dumps({"disk": disk, "disk_format": disk_format, "image": params["image"],
                              "seed": seed_files, "written": bool((record or {}).get("written"))}, indent=1) + "\n"
    if create:
        create_vm(params, name, vm_dir, run, image, image_format, disk, disk_format, firmware, seed_files, record_text)
    elif seed_changed:
        build_seed(run, vm_dir, seed_files)
    if params["tpm"]:
        os.makedirs(os.path.join(vm_dir, "tpm"), 0o700, exist_ok=True)
    for path, text in vm.TEMPLATES.items():
        write(os.path.join(SYSTEMD_DIR, path), text)
    for path, text in wanted.items():
        write(path, text)
    for path in set(current) - set(wanted):
        os.unlink(path)
        if not os.listdir(os.path.dirname(path)):
            os.rmdir(os.path.dirname(path))
    write(record_path, record_text)
    _lock.crash_point("vm-units-written")
    if reload_needed:
        run(["systemctl", "daemon-reload"])
    if will_stop:
        stop(module, run, unit, run_paths, params["stop_timeout"], unit_state)
    if will_start:
        start_vm(module, params, name, unit, record_path, run_paths, run, unit_state, running, result)
    active, pid = unit_state()
    result["pid"] = pid
    result["state"] = "running" if active == "active" else "stopped"


def remove_vm(module, params, name, unit, vm_dir, run_paths, run, unit_state, current, running):
    """Stop the VM and its helpers, move its folder aside, remove its units, then its folder."""
    if running:
        stop(module, run, unit, run_paths, params["stop_timeout"], unit_state)
    # helpers outlive a VM that crashed (PartOf= only carries a stop): stop them too
    run(["systemctl", "stop", *helper_units(name)], check=False)
    run(["systemctl", "disable", "--no-reload", "--quiet", unit], check=False)
    if os.path.isdir(vm_dir) and not params["keep_data"]:
        # out of the way first: killed from here on, the re-run finds the units and finishes
        os.rename(vm_dir, os.path.join(params["vms_dir"], f".{name}.removing"))
        _lock.crash_point("vm-removing")
    for path in current:
        os.unlink(path)
        if not os.listdir(os.path.dirname(path)):
            os.rmdir(os.path.dirname(path))
    if current:
        run(["systemctl", "daemon-reload"])
    for path in leftovers(params["vms_dir"], name):
        cow.remove_tree(path, lambda argv: run(argv, check=False))


def create_vm(params, name, vm_dir, run, image, image_format, disk, disk_format, firmware, seed_files, record_text):
    """Make the VM's folder whole beside its place, then rename it: killed before the rename, the
    re-run discards it."""
    partial = os.path.join(params["vms_dir"], f".{name}.partial")
    os.mkdir(partial, 0o700)
    try:
        inside = os.path.join(partial, os.path.basename(disk))
        if disk_format == "raw":
            run(["cp", "--reflink=always", image, inside])
        else:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format, "-b", image, inside])
        if params["size"]:
            run(["qemu-img", "resize", "-q", "-f", disk_format, inside, params["size"]])
        if firmware:
            shutil.copyfile(firmware[0].replace("CODE", "VARS").replace(".ms.fd", ".fd"),
                            os.path.join(partial, os.path.basename(firmware[1])))
        if seed_files is not None:
            build_seed(run, partial, seed_files)
        if params["tpm"]:
            os.mkdir(os.path.join(partial, "tpm"), 0o700)  # the TPM's state, snapshotted with the disk
        write(os.path.join(partial, "vm.json"), record_text)  # last: a folder with a record is whole
        _lock.crash_point("vm-created")
        os.rename(partial, vm_dir)
    except (vm.VmError, OSError):
        cow.remove_tree(partial, lambda argv: run(argv, check=False))
        raise


def start_vm(module, params, name, unit, record_path, run_paths, run, unit_state, running, result):
    """(Re)start the VM afresh, with its helpers, and wait until it is ready when asked to."""
    if running:
        stop(module, run, unit, run_paths, params["stop_timeout"], unit_state)
    # a TPM left running by a VM that crashed would keep the old state: start afresh
    run(["systemctl", "stop", *helper_units(name)], check=False)
    run(["systemctl", "reset-failed", unit, *helper_units(name)], check=False)
    if os.path.exists(run_paths["serial_log"]):
        os.unlink(run_paths["serial_log"])
    started = time.monotonic()
    rc, out, err = run(["systemctl", "start", unit], check=False)
    if rc != 0:
        journal = run(["journalctl", "--no-pager", "-n", "30", "-o", "cat", "-u", unit,
                       "-u", f"replica-vm-swtpm@{name}.service"], check=False)[1]
        raise vm.VmError(f"systemctl start {unit} failed: {(err or out).strip()}\n{journal}")
    if params["wait"]:
        wait_ready(params, run_paths["serial_log"], started, unit_state, result)
    # the disk has been written: installer media are not attached again
    with open(record_path, encoding="utf-8") as handle:
        saved = json.load(handle)
    saved["written"] = True
    write(record_path, json.dumps(saved, indent=1) + "\n")
    result["restart_required"] = False


# ExecStop: ACPI power-down through QMP, then wait for QEMU ($MAINPID) to exit; systemd kills
# it after TimeoutStopSec. Base64, as a unit line cannot hold the script's newlines.
POWERDOWN_SCRIPT = """import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
    f = s.makefile("rw")
    f.readline()
    for c in ("qmp_capabilities", "system_powerdown"):
        f.write(json.dumps({"execute": c}) + chr(10))
        f.flush()
        f.readline()
except OSError:
    pass  # QEMU is gone already, or has no QMP: nothing to ask
pid = os.environ.get("MAINPID", "")
while pid and os.path.exists("/proc/" + pid):
    time.sleep(0.2)
"""
POWERDOWN = "import base64;exec(base64.b64decode('" + base64.b64encode(POWERDOWN_SCRIPT.encode()).decode() + "'))"


def current_units(name):
    """The per-VM unit drop-ins there are now, ``{path: text}``."""
    found = {}
    for unit in vm.instance_units(name):
        path = os.path.join(SYSTEMD_DIR, unit + ".d", "50-vm.conf")
        text = read(path)
        if text is not None:
            found[path] = text
    return found


def helper_units(name):
    """The units of a VM's set besides the VM itself."""
    return [unit for unit in vm.instance_units(name) if unit != f"replica-vm@{name}.service"]


def units_text(units):
    return "".join(f"# {path}\n{text}" for path, text in sorted(units.items()))


def wait_ready(params, log_path, started, unit_state, result):
    deadline = started + params["timeout"]
    pattern = params["ready_pattern"].encode()
    while time.monotonic() < deadline:
        try:
            with open(log_path, "rb") as handle:
                if pattern in handle.read():
                    result["ready_seconds"] = round(time.monotonic() - started, 2)
                    return
        except FileNotFoundError:
            pass
        if unit_state()[0] == "failed":
            break
        time.sleep(0.1)
    tail = ""
    if os.path.exists(log_path):
        with open(log_path, "rb") as handle:
            tail = handle.read()[-1500:].decode("utf-8", "replace")
    if unit_state()[0] == "failed":
        raise vm.VmError(f"VM {params['name']} exited before it printed {params['ready_pattern']!r}: see "
                         f"journalctl -u replica-vm@{params['name']}.service; console output ends with:\n{tail}")
    raise vm.VmError(f"VM {params['name']} did not print {params['ready_pattern']!r} within "
                     f"{params['timeout']} s; console output ends with:\n{tail}")


def stop(module, run, unit, run_paths, timeout, unit_state):
    """ACPI power-down through QMP; systemd kills it if it is still running after *timeout*."""
    try:
        qmp(run_paths["qmp"], "system_powerdown")
    except (OSError, ValueError):
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and unit_state()[0] == "active":
        time.sleep(0.2)
    if unit_state()[0] == "active":
        module.warn(f"{unit} did not power down within {timeout} s: killed")
    run(["systemctl", "stop", unit], check=False)


def needs_daemon_reload(run, units):
    """Whether systemd holds an older version of any of *units* than their files."""
    out = run(["systemctl", "show", "--property=NeedDaemonReload", *units], check=False)[1]
    return "NeedDaemonReload=yes" in out.split()


def started_before(run, unit, paths):
    """Whether running *unit* started before the newest of *paths* was written."""
    out = run(["systemctl", "show", "--property=ActiveEnterTimestampMonotonic", unit], check=False)[1]
    value = out.strip().partition("=")[2]
    started = live.started_at(int(value) if value.isdigit() else 0, time.monotonic(), time.time())
    newest = max((os.stat(path).st_mtime for path in paths if os.path.exists(path)), default=0.0)
    return started is not None and started < newest


def build_seed(run, vm_dir, files):
    """The cloud-init seed ``vm_dir/seed.iso`` from *files*, built beside it and renamed over it."""
    seed_dir = os.path.join(vm_dir, "seed")
    if os.path.isdir(seed_dir):
        shutil.rmtree(seed_dir)
    os.mkdir(seed_dir, 0o700)
    for name, text in files.items():
        with open(os.path.join(seed_dir, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    tool = shutil.which("genisoimage") or shutil.which("mkisofs")
    if tool is None:
        raise vm.VmError("cloud_init needs genisoimage on the host: install the genisoimage package")
    seed = os.path.join(vm_dir, "seed.iso")
    run([tool, "-quiet", "-output", seed + ".tmp", "-volid", "cidata", "-joliet", "-rock",
         *[os.path.join(seed_dir, name) for name in sorted(files)]])
    os.rename(seed + ".tmp", seed)
    shutil.rmtree(seed_dir)


if __name__ == "__main__":
    main()
