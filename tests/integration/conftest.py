# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for integration tests: real lab hosts (systemd-booted nspawn machines).

``lab``       the session's :class:`replica_lab.Lab` (pool mounted, base image built once)
``lab_host``  a factory: ``lab_host("name", packages=[...])`` boots a lab host that is removed
              after the test, pass or fail
``internet``  the lab's offline internet (scripts/replica_internet.py), one per session: DNS,
              pebble as Let's Encrypt, moto as AWS, postfix+dovecot as the mail sink
``ansible``   runs ``ansible``/``ansible-playbook`` from the checkout against a lab host through
              the ``replica.cloud.nspawn`` connection
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
# the collection by its real name (.collections/ansible_collections/replica/cloud links back here)
if os.path.isdir(os.path.join(ROOT, ".collections", "ansible_collections")):
    sys.path.insert(0, os.path.join(ROOT, ".collections"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position
import replica_internet  # noqa: E402  pylint: disable=wrong-import-position


def _skip_reason():
    if os.geteuid() != 0:
        return "lab hosts need root (loop devices, btrfs, systemd-nspawn)"
    for tool in ("systemd-nspawn", "mmdebstrap", "mkfs.btrfs", "nsenter", "nft"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in os.environ.get("PATH", "").split(os.pathsep)):
            return f"{tool} is not installed (scripts/setup installs it)"
    with open("/proc/filesystems", encoding="ascii") as handle:
        if "btrfs" not in handle.read():
            return "the kernel has no btrfs support"
    return None


@pytest.fixture(scope="session")
def lab():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    the_lab = replica_lab.Lab()
    the_lab.image()  # build (or reuse) the base image once per session
    return the_lab


def pytest_collection_modifyitems(items):
    """Tests that use ``internet`` run last (otherwise in their order): its lab host runs to the
    end of the session, and the lab's own tests of the bridge and NAT need no lab host running."""
    items.sort(key=lambda item: "internet" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def internet(lab):
    """The fixture ``lab-internet``, started once per session (a running one is reused, and then
    left running) and taken down at the end if this session started it."""
    net = replica_internet.Internet(lab)
    net.up()
    yield net
    if net.started:
        net.down()


@pytest.fixture
def lab_host(lab, request):
    made = []

    def make(name=None, packages=(), timeout=180):
        name = name or f"it-{request.node.name[:20].lower().replace('_', '-').strip('-')}"
        made.append(name)
        return lab.up(name, packages=packages, timeout=timeout)

    yield make
    for name in made:
        lab.down(name)


def run_ansible(*argv, check=True, env=None):
    """Run an Ansible command line from the checkout (its ansible.cfg makes replica.cloud);
    *env* adds variables (a module run with ``-c local`` inherits them)."""
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""), LC_ALL="C.UTF-8",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", **(env or {}))
    proc = subprocess.run([os.path.join(bindir, argv[0]), *argv[1:]], cwd=ROOT, env=env,
                          text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def ansible():
    return run_ansible


def start_nested(lab, machine, name, timeout=60):
    """Boot a nested nspawn machine *name* inside lab host *machine* through its machined
    (``machinectl start``), forked from the same image, and wait until it runs."""
    nested_root = os.path.join(machine.directory, "var/lib/machines", name)
    os.makedirs(nested_root)
    replica_lab.run(["cp", "-a", "--reflink=always",
                     os.path.join(lab.images, machine.image) + "/.", nested_root])
    with open(os.path.join(nested_root, "etc/hostname"), "w", encoding="ascii") as handle:
        handle.write(f"{name}\n")
    lab.exec(machine, ["machinectl", "start", name])
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = lab.exec(machine, ["systemd-run", "-M", name, "--wait", "--pipe", "--quiet",
                                   "/bin/systemctl", "is-system-running"], check=False).stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"nested machine {name} in {machine.name} did not boot: {state!r}")


@pytest.fixture
def loop_fs(tmp_path):
    """A factory: ``loop_fs("btrfs" | "xfs" | "ext4" | "tmpfs", size_mb)`` makes a real file
    system on a sparse loop image (xfs with reflink=1), mounts it under tmp_path and returns the
    mount point; all are unmounted (and their loops released) after the test."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    mounted = []
    tools = {"btrfs": ("mkfs.btrfs", "-q"), "xfs": ("mkfs.xfs", "-q", "-m", "reflink=1"),
             "ext4": ("mkfs.ext4", "-q", "-F")}

    def make(kind, size_mb=256):
        mnt = tmp_path / f"{kind}-{len(mounted)}"
        mnt.mkdir()
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True)
        else:
            mkfs = tools[kind]
            if not any(os.access(os.path.join(d, mkfs[0]), os.X_OK)
                       for d in os.environ.get("PATH", "").split(os.pathsep) + ["/sbin", "/usr/sbin"]):
                pytest.skip(f"{mkfs[0]} is not installed (scripts/setup installs it)")
            image = tmp_path / f"{kind}-{len(mounted)}.img"
            with open(image, "wb") as handle:
                handle.truncate(size_mb << 20)
            subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-R", str(mnt)], check=False)


def run_module(module, args, *extra, check=True, machine=None, env=None):
    """Run one of the collection's modules on this machine (or in lab host *machine*, through
    the nspawn connection), with the target's system Python; returns ``(rc, result)``. *env*:
    variables for the module (on this machine), such as the crash point ``REPLICA_CRASH_AT``."""
    if machine is None:
        target = ["localhost", "-c", "local", "-i", "localhost,"]
    else:
        target = [machine.name, "-i", f"{machine.name},", "-c", "replica.cloud.nspawn",
                  "-e", f"ansible_nspawn_leader_pid={machine.leader}"]
    proc = run_ansible("ansible", *target, "-e", "ansible_python_interpreter=/usr/bin/python3",
                       "-m", module, "-a", json.dumps(args), *extra, check=check, env=env)
    text = proc.stdout
    return proc.returncode, json.loads(text[text.index(" => {") + 4:])


def crash_in(machine, module, args, point):
    """Run *module* in lab host *machine* with ``kill -9`` at crash point *point* (a play sets the
    module's environment; an ad-hoc run through the connection cannot)."""
    play = [{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "run killed at " + point, module: args, "environment": {"REPLICA_CRASH_AT": point}}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        json.dump(play, handle)
    try:
        return run_ansible("ansible-playbook", "-i", f"{machine.name},", "-c", "replica.cloud.nspawn",
                           "-e", f"ansible_nspawn_leader_pid={machine.leader}",
                           "-e", "ansible_python_interpreter=/usr/bin/python3", handle.name, check=False)
    finally:
        os.unlink(handle.name)


def seed_image(lab, machine, name="debian-12"):
    """Put the lab's base image into lab host *machine* as a machine image (a read-only btrfs
    snapshot: instant, and the machines forked from it inside are snapshots too)."""
    images = os.path.join(machine.directory, "var/lib/machines/.images")
    os.makedirs(images, exist_ok=True)
    replica_lab.run(["btrfs", "subvolume", "snapshot", "-r", os.path.join(lab.images, machine.image),
                     os.path.join(images, name)])
    return f"/var/lib/machines/.images/{name}"


#: what a lab host needs to run VMs: QEMU, UEFI firmware, a software TPM, the websocket proxy, an
#: iSCSI target and QEMU's iSCSI initiator, and a Debian kernel to boot directly
VM_PACKAGES = ["qemu-system-x86", "qemu-utils", "linux-image-cloud-amd64", "genisoimage", "ovmf", "swtpm",
               "swtpm-tools", "websockify", "tgt", "qemu-block-extra"]

#: a unit in the test disk image that prints what the guest sees on its serial console once it
#: has booted: the TPM's version, its hostname, its MAC, its disks and the first bytes of its second disk
PROBE_UNIT = """[Unit]
Description=replica.cloud test probe
After=local-fs.target systemd-udev-settle.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "replica-probe tpm=$(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo none) \\
  hostname=$(hostname) mac=$(cat /sys/class/net/e*/address | head -n1) \\
  disks=$(cd /sys/block && echo vd*) vdb=$(head -c 24 /dev/vdb 2>/dev/null | tr -dc a-z0-9-) end" > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
"""


def probe_line(serial):
    """``{key: value}`` of the probe unit's line in a VM's serial log."""
    return dict(re.findall(r"(\w+)=(\S*)", serial[serial.index("replica-probe "):].splitlines()[0]))


def seed_vm_images(lab, machine):
    """Make /var/lib/replica/vm-images in lab host *machine*: ``debian.raw`` (the lab host's own
    image plus the probe unit above, as an ext4 file system, 2G sparse), and the ``vmlinuz`` and
    ``initrd.img`` in it. Returns the base disk's path on this machine."""
    image_root = os.path.join(lab.images, machine.image)
    images = os.path.join(machine.directory, "var/lib/replica/vm-images")
    os.makedirs(images, exist_ok=True)
    tree = os.path.join(os.path.dirname(lab.images), f".vm-root-{machine.name}")
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", image_root, tree], check=True)  # instant on the btrfs pool
    try:
        units = os.path.join(tree, "etc/systemd/system")
        with open(os.path.join(units, "replica-probe.service"), "w", encoding="utf-8") as handle:
            handle.write(PROBE_UNIT)
        os.symlink("../replica-probe.service", os.path.join(units, "multi-user.target.wants/replica-probe.service"))
        # the lab host's iSCSI target is in the image too: not in the guest (its stop hangs for 90 s)
        os.symlink("/dev/null", os.path.join(units, "tgt.service"))
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, os.path.join(images, "debian.raw"), "2G"],
                       check=True, capture_output=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    for pattern, name in (("boot/vmlinuz-*", "vmlinuz"), ("boot/initrd.img-*", "initrd.img")):
        with open(glob.glob(os.path.join(image_root, pattern))[0], "rb") as src, \
                open(os.path.join(images, name), "wb") as dst:
            dst.write(src.read())
    return os.path.join(images, "debian.raw")
