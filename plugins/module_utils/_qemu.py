# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMs: the QEMU command line, the unit drop-in and the cloud-init seed, from a VM's spec.

Pure functions only: ``replica.cloud.qemu_vm`` writes what these return; unit tests check it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex

HEADER = "# Managed by replica.cloud.qemu_vm"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
RUN_DIR = "/run/replica-vm"
MACHINES = ("microvm", "q35")
NETWORKS = ("user", "tap", "macvtap", "none")


class VmError(ValueError):
    """A spec that cannot become a VM; the message says what to fix."""


def check_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VmError(f"VM name {name!r} must be 1-32 lower-case letters, digits and '-' "
                      f"(it names the tap device and the units)")
    return name


def mac_for(name):
    """A stable, locally administered unicast MAC derived from the VM's name."""
    digest = hashlib.sha256(f"replica-vm:{name}".encode()).digest()
    return "52:54:" + ":".join(f"{b:02x}" for b in digest[:4])


def memory_mib(value):
    text = str(value).strip().upper()
    match = re.match(r"^([0-9]+)\s*([MG]?)I?B?$", text)
    if not match:
        raise VmError(f"memory {value!r} must be MiB or a size like 512M or 2G")
    number = int(match.group(1))
    return number * 1024 if match.group(2) == "G" else number


def paths(name):
    base = f"{RUN_DIR}/{name}"
    return {"dir": base, "qmp": f"{base}/qmp.sock", "console": f"{base}/console.sock",
            "serial_log": f"{base}/serial.log", "vnc": f"{base}/vnc.sock", "tpm": f"{base}/swtpm.sock"}


def validate(spec):
    """Refuse what cannot work, with a message that says what to change."""
    check_name(spec["name"])
    machine = spec.get("machine", "microvm")
    if machine not in MACHINES:
        raise VmError(f"machine {machine!r} must be one of {', '.join(MACHINES)}")
    if machine == "microvm":
        if not spec.get("kernel"):
            raise VmError("a microvm boots its kernel directly: give kernel (and usually initrd)")
        for option in ("tpm", "iso", "drivers_iso", "vnc"):
            if spec.get(option):
                raise VmError(f"{option} needs machine q35 (a microvm has no firmware, display or CD drive)")
    network = spec.get("network") or {"type": "user"}
    if network.get("type", "user") not in NETWORKS:
        raise VmError(f"network type {network.get('type')!r} must be one of {', '.join(NETWORKS)}")
    if network.get("type") == "tap" and not network.get("bridge"):
        raise VmError("network type tap needs network.bridge")
    if network.get("type") == "macvtap" and not network.get("interface"):
        raise VmError("network type macvtap needs network.interface")
    memory_mib(spec.get("memory", 512))
    if int(spec.get("cpus", 1)) < 1:
        raise VmError("cpus must be 1 or more")
    return machine


def tap_name(name):
    return f"vm-{name}"[:15]


def build_argv(spec, accel, firmware=None, tpm_socket=None, tap_fd=None):
    """The QEMU command line for *spec* with accelerator *accel* (``kvm`` or ``tcg``).
    *firmware* is ``(code, vars)`` for q35; *tap_fd* the file descriptor of a macvtap device."""
    machine = validate(spec)
    name = spec["name"]
    run = paths(name)
    disk_format = spec.get("disk_format", "raw")
    argv = ["qemu-system-x86_64", "-name", f"{name},debug-threads=on", "-nodefaults", "-no-user-config",
            "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(int(spec.get("cpus", 1))), "-m", str(memory_mib(spec.get("memory", 512)))]
    bus = "device" if machine == "microvm" else "pci"
    if machine == "microvm":
        # under TCG the guest kernel needs the PIT to calibrate its clock (else it hangs)
        argv += ["-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on" + (",pit=on" if accel == "tcg" else ""),
                 "-display", "none"]
    else:
        argv += ["-M", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
        if firmware:
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware[0]}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={firmware[1]}"]
        argv += ["-device", "virtio-vga", "-display", "none", "-vnc", f"unix:{run['vnc']}",
                 "-device", "qemu-xhci", "-device", "usb-tablet"]
    if spec.get("kernel"):
        argv += ["-kernel", spec["kernel"]]
        if spec.get("initrd"):
            argv += ["-initrd", spec["initrd"]]
        cmdline = spec.get("cmdline") or "console=ttyS0 root=/dev/vda rw"
        if machine == "microvm" and accel == "tcg" and spec.get("tsc_khz") and "tsc" not in cmdline:
            # no HPET or PM timer on a microvm: under TCG on a busy host the kernel's TSC
            # calibration against the PIT can fail and the boot stall. The guest's TSC is the
            # host's (TCG reads the host's counter), so give its rate and skip the calibration.
            cmdline += f" tsc_early_khz={int(spec['tsc_khz'])} tsc=reliable"
        argv += ["-append", cmdline]
    if spec.get("disk"):
        argv += ["-drive", f"id=root,file={spec['disk']},format={disk_format},if=none,cache=none,aio=threads,discard=unmap",
                 "-device", f"virtio-blk-{bus},drive=root" + (",bootindex=1" if machine == "q35" else "")]
    for index, extra in enumerate(spec.get("disks") or []):
        if extra.get("iscsi"):
            target = extra["iscsi"]
            argv += ["-drive", f"id=disk{index},file={target},if=none,cache=none,format=raw"]
        else:
            argv += ["-drive", f"id=disk{index},file={extra['path']},if=none,cache=none,format={extra.get('format', 'raw')}"]
        argv += ["-device", f"virtio-blk-{bus},drive=disk{index}"]
    if spec.get("seed"):
        argv += ["-drive", f"id=seed,file={spec['seed']},if=none,format=raw,readonly=on",
                 "-device", f"virtio-blk-{bus},drive=seed"]
    if machine == "q35":
        for index, iso in enumerate(x for x in (spec.get("iso"), spec.get("drivers_iso")) if x):
            argv += ["-drive", f"id=cd{index},file={iso},if=none,media=cdrom,readonly=on",
                     "-device", f"ide-cd,drive=cd{index}" + (",bootindex=2" if index == 0 else "")]
        if tpm_socket:
            argv += ["-chardev", f"socket,id=chrtpm,path={tpm_socket}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]
    network = spec.get("network") or {"type": "user"}
    kind = network.get("type", "user")
    mac = network.get("mac") or mac_for(name)
    if kind == "user":
        argv += ["-netdev", "user,id=n0"]
    elif kind == "tap":
        argv += ["-netdev", f"tap,id=n0,ifname={tap_name(name)},script=no,downscript=no"]
    elif kind == "macvtap":
        argv += ["-netdev", f"tap,id=n0,fd={tap_fd if tap_fd is not None else 3}"]
    if kind != "none":
        argv += ["-device", f"virtio-net-{bus},netdev=n0,mac={mac}"]
    argv += ["-chardev", f"socket,id=ser0,path={run['console']},server=on,wait=off,logfile={run['serial_log']}",
             "-serial", "chardev:ser0",
             "-qmp", f"unix:{run['qmp']},server=on,wait=off"]
    return argv


def render_dropin(spec, argv):
    """The ``replica-vm@<name>.service.d/50-vm.conf`` text: the command line, and what the VM
    needs started with it (its TPM, its tap device)."""
    name = spec["name"]
    lines = [HEADER, "[Unit]"]
    if spec.get("tpm"):
        lines += [f"Requires=replica-vm-swtpm@{name}.service", f"After=replica-vm-swtpm@{name}.service"]
    network = spec.get("network") or {}
    lines += ["", "[Service]"]
    if network.get("type") == "tap":
        tap = tap_name(name)
        lines += [f"ExecStartPre=-/sbin/ip link delete {tap}",
                  f"ExecStartPre=/sbin/ip tuntap add dev {tap} mode tap",
                  f"ExecStartPre=/sbin/ip link set {tap} master {network['bridge']} up",
                  f"ExecStopPost=-/sbin/ip link delete {tap}"]
    lines.append("ExecStart=")
    lines.append("ExecStart=" + " ".join(_quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def _quote(arg):
    # systemd splits ExecStart= like a shell for quoting purposes; '%' must be doubled
    arg = arg.replace("%", "%%")
    return shlex.quote(arg) if re.search(r"[\s\"'\\;$]", arg) else arg


def cloud_init(spec):
    """NoCloud seed files ``{meta-data, user-data, network-config?}`` from ``spec['cloud_init']``."""
    ci = dict(spec.get("cloud_init") or {})
    hostname = ci.get("hostname") or spec["name"]
    files = {"meta-data": f"instance-id: {spec['name']}-{hashlib.sha256(json.dumps(ci, sort_keys=True, default=str).encode()).hexdigest()[:12]}\n"
                          f"local-hostname: {hostname}\n"}
    if ci.get("user_data"):
        files["user-data"] = ci["user_data"] if ci["user_data"].startswith("#cloud-config") else "#cloud-config\n" + ci["user_data"]
    else:
        config = {"hostname": hostname, "fqdn": ci.get("fqdn", hostname)}
        if ci.get("ssh_authorized_keys"):
            config["ssh_authorized_keys"] = list(ci["ssh_authorized_keys"])
        if ci.get("users"):
            config["users"] = ["default"] + list(ci["users"])
        files["user-data"] = "#cloud-config\n" + json.dumps(config, indent=1, sort_keys=True) + "\n"
    if ci.get("network_config"):
        files["network-config"] = json.dumps(ci["network_config"], indent=1, sort_keys=True) + "\n"
    return files
