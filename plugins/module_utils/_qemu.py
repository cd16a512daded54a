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

from ansible_collections.replica.cloud.plugins.module_utils import _addressing, _names

HEADER = "# Managed by replica.cloud.qemu_vm"
RUN_DIR = "/run/replica-vm"
MACHINES = ("microvm", "q35")
#: QEMU's minimal firmware for microvm (qemu-system-data). With SeaBIOS's microvm build and no
#: option ROMs, QEMU 10 (Debian 13) never starts the kernel; qboot loads it on QEMU 7.2 and 10.
QBOOT = "/usr/share/qemu/qboot.rom"
NETWORKS = ("user", "tap", "macvtap", "none")


class VmError(ValueError):
    """A spec that cannot become a VM; the message says what to fix."""


def check_name(name):
    """A VM's name is a machine name (_names: a host name label, 1-63): it names the units, the
    run folders and the guest's host name; its tap device is :func:`tap_name`."""
    return _names.check_machine_name(name, "machine name", VmError)


def mac_for(name):
    """A stable, locally administered unicast MAC derived from the VM's name."""
    return _addressing.mac_for(name, namespace="replica-vm")


#: the guest's address on QEMU's user-mode network (behind QEMU's own NAT)
USER_NET_GUEST = "10.0.2.15"


def link_local(mac):
    """The IPv6 link-local address a guest forms from *mac* by EUI-64 (systemd-networkd's and
    the kernel's default): flip the universal/local bit, put ff:fe in the middle."""
    octets = [int(part, 16) for part in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    groups = [f"{(eui[i] << 8) | eui[i + 1]:x}" for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups)


def addresses(spec):
    """What can be known of the VM's addresses without asking the guest: its MAC, and its
    addresses: the static ones of its cloud-init network_config, the EUI-64 link-local one on a
    tap or macvtap network, QEMU's fixed guest address on the user-mode network."""
    network = spec.get("network") or {"type": "user"}
    kind = network.get("type", "user")
    if kind == "none":
        return {"mac": "", "addresses": []}
    mac = guest_mac(spec)
    found = []

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("addresses", "address") and isinstance(value, (list, str)):
                    found.extend(str(v).split("/", 1)[0] for v in (value if isinstance(value, list) else [value]))
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(((spec.get("cloud_init") or {}).get("network_config")) or {})
    found.append(USER_NET_GUEST if kind == "user" else link_local(mac))
    return {"mac": mac, "addresses": found}


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
            "serial_log": f"{base}/serial.log", "vnc": f"{base}/vnc.sock",
            # the TPM's socket has its own runtime folder: swtpm starts before QEMU and stops after it
            "tpm": f"/run/replica-vm-tpm/{name}/swtpm.sock",
            "web_console": f"/run/replica-vm-console/{name}.sock"}


# The hardening every helper unit gets (systemd-analyze security is in the vms role's README).
HARDENING = """NoNewPrivileges=yes
CapabilityBoundingSet=
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
"""

#: where websockify listens inside its own network namespace (the same for every VM)
WEBSOCKIFY_PORT = 5700
WAIT_LISTEN = ('"import socket, time; any(socket.socket().connect_ex((\'127.0.0.1\', %d)) == 0 '
               'or time.sleep(0.05) for i in range(200))"' % WEBSOCKIFY_PORT)

# QEMU itself: read-only system with its VM folder writable (the drop-in's ReadWritePaths=), no
# capabilities (CAP_NET_ADMIN for tap/macvtap VMs), no new privileges. Not PrivateDevices= (it
# needs /dev/kvm and /dev/net/tun), not MemoryDenyWriteExecute= (TCG generates code), not
# PrivateNetwork= (user-mode networking and iSCSI disks connect out).
VM_HARDENING = "".join(
    line for line in HARDENING.splitlines(True)
    if line.split("=", 1)[0] not in ("PrivateDevices", "PrivateNetwork", "ProcSubset", "MemoryDenyWriteExecute")
    and not line.startswith("SystemCallFilter=~")) + """# QEMU probes seccomp at start-up
SystemCallFilter=seccomp
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""

# Templates the module installs; what differs per VM is in each instance's drop-in.
TEMPLATES = {
    "replica-vm@.service": f"""{HEADER}
[Unit]
Description=replica.cloud VM %i
After=network.target

[Service]
Type=simple
RuntimeDirectory=replica-vm/%i
ExecStart=/bin/false
# stop is a graceful ACPI power-down through QMP (ExecStop in each VM's drop-in when known),
# then SIGKILL after TimeoutStopSec
KillMode=mixed
KillSignal=SIGKILL
TimeoutStopSec=60
{VM_HARDENING}
[Install]
WantedBy=multi-user.target
""",
    # a software TPM 2.0 per VM; its state folder (on the VM's CoW storage) comes from the drop-in.
    # It exits when QEMU closes its connection (--terminate): a guest powering off stops it too
    "replica-vm-swtpm@.service": f"""{HEADER}
[Unit]
Description=replica.cloud software TPM of VM %i
PartOf=replica-vm@%i.service
Before=replica-vm@%i.service

[Service]
Type=forking
RuntimeDirectory=replica-vm-tpm/%i
RuntimeDirectoryMode=0700
PIDFile=/run/replica-vm-tpm/%i/swtpm.pid
ExecStart=/bin/false
{HARDENING}RestrictAddressFamilies=AF_UNIX
# swtpm installs a seccomp filter of its own
SystemCallFilter=seccomp
""",
    # the VM's display (a VNC UNIX socket) as a websocket, socket-activated. websockify cannot
    # serve a UNIX socket itself, so it runs in a network namespace of its own on a fixed loopback
    # port, and systemd-socket-proxyd joined to that namespace carries the host's socket into it;
    # the proxy exits after 5 idle minutes, and websockify, no longer needed, with it
    "replica-vm-console@.socket": f"""{HEADER}
[Unit]
Description=replica.cloud web console (VNC over websocket) of VM %i
BindsTo=replica-vm@%i.service
After=replica-vm@%i.service

[Socket]
ListenStream=/run/replica-vm-console/%i.sock
SocketMode=0660
""",
    "replica-vm-console@.service": f"""{HEADER}
[Unit]
Description=replica.cloud web console proxy of VM %i
Requires=replica-vm-console@%i.socket replica-vm-websockify@%i.service
After=replica-vm-console@%i.socket replica-vm-websockify@%i.service
JoinsNamespaceOf=replica-vm-websockify@%i.service

[Service]
ExecStart=/usr/lib/systemd/systemd-socket-proxyd --exit-idle-time=300 127.0.0.1:{WEBSOCKIFY_PORT}
DynamicUser=yes
{HARDENING}RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
""",
    "replica-vm-websockify@.service": f"""{HEADER}
[Unit]
Description=replica.cloud websocket to VNC bridge (websockify) of VM %i
BindsTo=replica-vm@%i.service
After=replica-vm@%i.service
StopWhenUnneeded=yes

[Service]
ExecStart=/usr/bin/websockify 127.0.0.1:{WEBSOCKIFY_PORT} --unix-target=/run/replica-vm/%i/vnc.sock
# ready once it listens (websockify does not notify)
ExecStartPost=/usr/bin/python3 -c {WAIT_LISTEN}
{HARDENING}RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
""",
}


def instance_units(name):
    """The units of VM *name*'s set: each template of TEMPLATES, instantiated."""
    return [template.replace("@.", f"@{name}.") for template in TEMPLATES]


def guest_mac(spec):
    """The MAC of the VM's NIC: ``network.mac``, else the one derived from its name."""
    return (spec.get("network") or {}).get("mac") or mac_for(spec["name"])


def validate(spec):
    """Refuse what cannot work, with a message that says what to change."""
    check_name(spec["name"])
    machine = spec.get("machine", "microvm")
    if machine not in MACHINES:
        raise VmError(f"machine {machine!r} must be one of {', '.join(MACHINES)}")
    if machine == "microvm":
        if not spec.get("kernel"):
            raise VmError("a microvm boots its kernel directly: give kernel (and usually initrd)")
        for option in ("tpm", "iso", "drivers_iso"):
            if spec.get(option):
                raise VmError(f"{option} needs machine q35 (a microvm has no firmware, display or CD drive)")
        if spec.get("web_console") not in (None, "none"):
            raise VmError("web_console needs machine q35 (a microvm has no display)")
    else:
        web_console_listen(spec)
    network = spec.get("network") or {"type": "user"}
    if network.get("type", "user") not in NETWORKS:
        raise VmError(f"network type {network.get('type')!r} must be one of {', '.join(NETWORKS)}")
    if network.get("type") == "tap" and not network.get("bridge"):
        raise VmError("network type tap needs network.bridge")
    if network.get("type") == "macvtap" and not network.get("interface"):
        raise VmError("network type macvtap needs network.interface")
    if network.get("mode", "bridge") not in ("bridge", "vepa", "private", "passthru"):
        raise VmError(f"network mode {network.get('mode')!r} must be bridge, vepa, private or passthru")
    memory_mib(spec.get("memory", 512))
    if int(spec.get("cpus", 1)) < 1:
        raise VmError("cpus must be 1 or more")
    return machine


def tap_name(name):
    """The VM's tap or macvtap device: ``vm-NAME`` when that fits in an interface name (15), else
    ``vm-`` and a digest-suffixed prefix of the name (_names.ifname), so that two VMs whose names
    share their first characters never share a device. The one place the name is derived."""
    return _names.ifname("vm-", name)


def build_argv(spec, accel, firmware=None, tpm_socket=None, tap_fd=None, bios=None):
    """The QEMU command line for *spec* with accelerator *accel* (``kvm`` or ``tcg``).
    *firmware* is ``(code, vars)`` for q35; *bios* a microvm's firmware (QBOOT); *tap_fd* the file
    descriptor of a macvtap device."""
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
        if bios:
            argv += ["-bios", bios]
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
    mac = guest_mac(spec)
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


def web_console_listen(spec):
    """Where the VM's web console listens: a UNIX socket (the default, for the ingress web
    server to proxy), ``ADDRESS:PORT``, or None (``none``, and microVMs, which have no display)."""
    value = spec.get("web_console") or "unix"
    if spec.get("machine", "microvm") != "q35" or value == "none":
        return None
    if value == "unix":
        return paths(spec["name"])["web_console"]
    if value.startswith("/"):
        # it is written into a unit file: one line, no specifier or quoting surprises, and a
        # UNIX socket path fits in sun_path (108 bytes)
        if not re.fullmatch(r"/[A-Za-z0-9._/-]+", value) or "/../" in value + "/" or len(value.encode()) > 107:
            raise VmError(f"web_console socket path {value!r} must be an absolute path of letters, digits, "
                          f"'.', '_', '-' and '/' (no '..'), at most 107 bytes")
        return value
    # an explicit address: the console has no password of its own, so never all addresses by default
    match = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}):([0-9]{1,5})", value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise VmError(f"web_console {value!r} must be unix, none, an absolute socket path or ADDRESS:PORT "
                      f"(an IP address, e.g. 127.0.0.1:6081)")
    return value


def render_units(spec, argv, state_dir):
    """Every per-VM unit file, ``{path under /etc/systemd/system: text}``: the VM's drop-in and
    those of its helpers (its TPM, whose state is in *state_dir*/tpm, and its web console)."""
    name = spec["name"]
    # what QEMU may write: its folder (disk, firmware variables, seed) and extra disk files
    writable = [state_dir] + [d["path"] for d in spec.get("disks") or [] if d.get("path")]
    units = {f"replica-vm@{name}.service.d/50-vm.conf": render_dropin(spec, argv) + "".join(
        f"ReadWritePaths={_quote(path)}\n" for path in writable)}
    if spec.get("tpm"):
        tpm = f"{state_dir}/tpm"
        sock = paths(name)["tpm"]
        units[f"replica-vm-swtpm@{name}.service.d/50-vm.conf"] = "\n".join([
            HEADER, "[Service]", f"ReadWritePaths={tpm}",
            f"ExecStartPre=/usr/bin/swtpm_setup --tpm2 --tpmstate {tpm} --createek --not-overwrite",
            "ExecStart=",
            f"ExecStart=/usr/bin/swtpm socket --tpm2 --tpmstate dir={tpm},mode=0600"
            f" --ctrl type=unixio,path={sock},mode=0600 --pid file=/run/replica-vm-tpm/{name}/swtpm.pid"
            " --log level=1 --daemon --terminate", ""])
    listen = web_console_listen(spec)
    if listen and listen != paths(name)["web_console"]:
        units[f"replica-vm-console@{name}.socket.d/50-vm.conf"] = "\n".join([
            HEADER, "[Socket]", "ListenStream=", f"ListenStream={listen}", ""])
    return units


def render_dropin(spec, argv):
    """The ``replica-vm@<name>.service.d/50-vm.conf`` text: the command line, and what the VM
    needs started with it (its TPM, its web console, its tap device)."""
    name = spec["name"]
    lines = [HEADER, "[Unit]"]
    if spec.get("tpm"):
        lines += [f"Requires=replica-vm-swtpm@{name}.service", f"After=replica-vm-swtpm@{name}.service"]
    if web_console_listen(spec):
        lines += [f"Wants=replica-vm-console@{name}.socket"]
    network = spec.get("network") or {}
    lines += ["", "[Service]"]
    if network.get("type") == "tap":
        tap = tap_name(name)
        # '+': the tap is made with full privileges, outside the sandbox
        lines += [f"ExecStartPre=+-/sbin/ip link delete {tap}",
                  f"ExecStartPre=+/sbin/ip tuntap add dev {tap} mode tap",
                  f"ExecStartPre=+/sbin/ip link set {tap} master {network['bridge']} up",
                  f"ExecStopPost=+-/sbin/ip link delete {tap}"]
    if network.get("type") == "macvtap":
        # a macvtap device on the host interface with the guest's MAC; QEMU gets its character
        # device as file descriptor 3 (made here where no udev makes /dev/tapN)
        tap = tap_name(name)
        mac = guest_mac(spec)
        # '$$': a literal '$' for the shell (systemd expands '$NAME' itself)
        node = f"/dev/tap$$(cat /sys/class/net/{tap}/ifindex)"
        dev = f"/sys/class/net/{tap}/macvtap/tap*/dev"
        lines += [f"ExecStartPre=+-/sbin/ip link delete {tap}",
                  f"ExecStartPre=+/sbin/ip link add link {network['interface']} name {tap} address {mac} "
                  f"type macvtap mode {network.get('mode', 'bridge')}",
                  f"ExecStartPre=+/sbin/ip link set {tap} up",
                  f'ExecStartPre=+/bin/sh -c "[ -e {node} ] || mknod {node} c $$(cut -d: -f1 {dev}) $$(cut -d: -f2 {dev})"',
                  f"ExecStopPost=+-/sbin/ip link delete {tap}"]
    if network.get("type") in ("tap", "macvtap"):
        lines.append("CapabilityBoundingSet=CAP_NET_ADMIN")  # QEMU attaches to the tap device
    lines.append("ExecStart=")
    command = " ".join(_quote(a) for a in argv)
    if network.get("type") == "macvtap":
        command = f'/bin/sh -c "exec 3<>{node} && exec \\"$$@\\"" qemu {command}'
    lines.append("ExecStart=" + command)
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
