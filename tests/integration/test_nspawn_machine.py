# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.nspawn_machine in a lab host: real nested machines, forked from a btrfs image,
booted by systemd-nspawn@.service to READY, on a bridge, reaching each other by name."""

from __future__ import annotations

import hashlib
import os

from conftest import crash_in, run_module, seed_image

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIReplicaTestKey test@replica"


def inside(lab, machine, guest, command):
    return lab.exec(machine, ["systemd-run", "-M", guest, "--wait", "--pipe", "--quiet",
                              "/bin/sh", "-c", command], check=False)


def tree_digest(root):
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            digest.update(f"{os.path.relpath(path, root)} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def test_lifecycle_names_and_firstboot(lab, lab_host):
    machine = lab_host("it-machines")
    image = seed_image(lab, machine)
    image_on_host = os.path.join(machine.directory, image.lstrip("/"))
    before = tree_digest(image_on_host)
    lab.exec(machine, ["ip", "link", "add", "br-m", "type", "bridge"])
    lab.exec(machine, ["ip", "addr", "add", "10.77.0.1/24", "dev", "br-m"])
    lab.exec(machine, ["ip", "link", "set", "br-m", "up"])

    def nm(args, *extra, check=True):
        return run_module("replica.cloud.nspawn_machine", args, *extra, check=check, machine=machine)

    web = {"name": "web1", "image": "debian-12", "network": {"type": "bridge", "bridge": "br-m",
           "addresses": ["10.77.0.11/24"]}, "ssh_authorized_keys": [KEY], "memory_max": "512M",
           "files": [{"path": "/etc/motd", "content": "replica.cloud machine\n"}]}
    db = {"name": "db1", "image": "debian-12", "network": {"type": "bridge", "bridge": "br-m",
          "addresses": ["10.77.0.12/24"]}}

    # killed after the fork and its first-boot files, before the rename: the re-run makes it whole
    killed = crash_in(machine, "replica.cloud.nspawn_machine", {"name": "kill1", "image": "debian-12", "state": "present"},
                      "machine-forked")
    assert killed.returncode != 0 and "Killed" in killed.stdout, killed.stdout
    machines = os.path.join(machine.directory, "var/lib/machines")
    assert not os.path.exists(os.path.join(machines, "kill1"))
    rc, made = nm({"name": "kill1", "image": "debian-12", "state": "present"})
    assert rc == 0 and made["changed"]
    with open(os.path.join(machines, "kill1/etc/hostname"), encoding="utf-8") as handle:
        assert handle.read() == "kill1\n"
    assert not [n for n in os.listdir(machines) if n.endswith(".partial")]
    rc, gone = nm({"name": "kill1", "state": "absent"})
    assert rc == 0 and gone["changed"]

    rc, checked = nm(web, "--check", "--diff")
    assert rc == 0 and checked["changed"]
    assert not os.path.exists(os.path.join(machine.directory, "var/lib/machines/web1"))
    assert checked["actions"] == ["create", "configure", "enable", "start"] and checked["state"] == "running"

    rc, started = nm(web)
    assert rc == 0 and started["changed"] and started["state"] == "running" and started["leader"] > 0
    assert started["actions"] == checked["actions"]   # check mode said what the run then did
    assert "10.77.0.11" in started["addresses"] and started["ready_seconds"] < 30
    rc, other = nm(db)
    assert rc == 0 and other["state"] == "running"

    # first-boot overlay, seen from inside
    out = inside(lab, machine, "web1", "hostname; cat /root/.ssh/authorized_keys; cat /etc/motd").stdout
    assert out.split("\n")[:3] == ["web1", KEY, "replica.cloud machine"]
    # by name, over the bridge: db1 fetches a page web1 serves, and web1 resolves db1
    assert inside(lab, machine, "db1", "getent hosts web1").stdout.split()[0] == "10.77.0.11"
    assert inside(lab, machine, "web1", "getent hosts db1").stdout.split()[0] == "10.77.0.12"
    # root inside cannot reach the host's disks or kernel: a block device it makes cannot be read
    # (the unit's device policy), the kernel's knobs are read-only ("h" only prints help, were it allowed)
    disk = inside(lab, machine, "web1", "mknod /root/loop0 b 7 0 && head -c 512 /root/loop0 >/dev/null")
    assert disk.returncode != 0, disk.stdout
    for knob in ("echo h > /proc/sysrq-trigger", "echo 1 > /proc/sys/kernel/sysrq", "echo 0 > /sys/kernel/mm/ksm/run"):
        assert inside(lab, machine, "web1", knob).returncode != 0, knob
    lab.exec(machine, ["systemd-run", "-M", "web1", "--unit", "page", "--working-directory", "/etc",
                       "python3", "-m", "http.server", "8000"])
    fetch = ("for i in $(seq 50); do python3 -c \"import urllib.request;"
             " print(urllib.request.urlopen('http://web1:8000/motd').read().decode())\" && exit 0;"
             " sleep 0.1; done; exit 1")
    assert inside(lab, machine, "db1", fetch).stdout.strip() == "replica.cloud machine"
    assert "MemoryMax=536870912" in lab.exec(machine, ["systemctl", "show", "-p", "MemoryMax",
                                                       "systemd-nspawn@web1.service"]).stdout

    # writes in a machine stay in its fork
    inside(lab, machine, "web1", "echo changed > /etc/motd; dd if=/dev/zero of=/var/tmp/blob bs=1M count=8")
    assert tree_digest(image_on_host) == before

    # idempotent; a changed setting asks for a restart, and gets one when asked
    rc, again = nm(web)
    assert rc == 0 and not again["changed"] and again["actions"] == []
    web["memory_max"] = "256M"
    rc, checked = nm(web, "--check")
    assert rc == 0 and checked["actions"] == ["configure"] and checked["restart_required"]
    rc, changed = nm(web)
    assert rc == 0 and changed["changed"] and changed["restart_required"] and changed["actions"] == checked["actions"]
    rc, checked = nm(dict(web, state="restarted"), "--check")
    assert rc == 0 and checked["actions"] == ["restart"]
    rc, restarted = nm(dict(web, state="restarted"))
    assert rc == 0 and restarted["changed"] and not restarted["restart_required"]
    assert restarted["actions"] == checked["actions"]
    assert "MemoryMax=268435456" in lab.exec(machine, ["systemctl", "show", "-p", "MemoryMax",
                                                       "systemd-nspawn@web1.service"]).stdout

    rc, stopped = nm(dict(web, state="stopped"))
    assert rc == 0 and stopped["changed"] and stopped["state"] == "stopped"
    rc, again = nm(dict(web, state="stopped"))
    assert rc == 0 and not again["changed"]

    # bad input: nothing created
    rc, bad = nm({"name": "x1", "image": "no-such-image"}, check=False)
    assert rc != 0 and "image no-such-image is not there" in bad["msg"] and "debian-12" in bad["msg"]
    rc, bad = nm({"name": "x2", "image": "debian-12", "network": {"type": "bridge", "bridge": "br-none"}}, check=False)
    assert rc != 0 and "bridge br-none does not exist" in bad["msg"]
    lab.exec(machine, ["mkdir", "-p", "/var/lib/machines/handmade"])
    rc, bad = nm({"name": "handmade", "image": "debian-12"}, check=False)
    assert rc != 0 and "not a machine managed by replica.cloud" in bad["msg"]
    for name in ("x1", "x2"):
        assert not os.path.exists(os.path.join(machine.directory, "var/lib/machines", name))
        assert not os.path.exists(os.path.join(machine.directory, f"etc/systemd/nspawn/{name}.nspawn"))

    # removal: unit settings, name and fork go
    rc, checked = nm({"name": "web1", "state": "absent"}, "--check")
    assert rc == 0 and checked["actions"] == ["remove"]   # it was stopped above
    assert os.path.exists(os.path.join(machine.directory, "var/lib/machines/web1"))
    rc, gone = nm({"name": "web1", "state": "absent"})
    assert rc == 0 and gone["changed"] and gone["actions"] == checked["actions"]
    assert not os.path.exists(os.path.join(machine.directory, "var/lib/machines/web1"))
    assert not os.path.exists(os.path.join(machine.directory, "etc/systemd/nspawn/web1.nspawn"))
    assert "web1" not in inside(lab, machine, "db1", "cat /etc/hosts").stdout
    rc, again = nm({"name": "web1", "state": "absent"})
    assert rc == 0 and not again["changed"]
    rc, kept = nm({"name": "db1", "state": "absent", "keep_data": True})
    assert rc == 0 and os.path.isdir(os.path.join(machine.directory, "var/lib/machines/db1/etc"))
    assert tree_digest(image_on_host) == before


STAND_IN_CUDA = r"""
int cuDriverGetVersion(int *version) { *version = 12040; return 0; }
"""


def test_gpu_machine_gets_the_nodes_libraries_and_tools(lab, lab_host, tmp_path):
    """``gpu: true`` without a GPU: the lab host gets device nodes with the NVIDIA driver's major
    number (195), a stand-in ``libcuda.so.1`` built here (one function, so that loading it proves
    the bind, not CUDA) registered with ldconfig, and a stand-in ``nvidia-smi``. The machine must
    see the nodes allowed by its device policy (opening one fails with ENXIO, no driver, not EPERM),
    the library loadable and read-only, and the tool runnable. Real CUDA needs the GPU machine."""
    source = tmp_path / "cuda.c"
    source.write_text(STAND_IN_CUDA)
    machine = lab_host("it-gpu")
    image = seed_image(lab, machine)
    libdir = os.path.join(machine.directory, "usr/lib/x86_64-linux-gnu")
    run_cc = ["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", os.path.join(libdir, "libcuda.so.1"), str(source)]
    assert os.spawnvp(os.P_WAIT, run_cc[0], run_cc) == 0
    with open(os.path.join(machine.directory, "usr/bin/nvidia-smi"), "w", encoding="ascii") as handle:
        handle.write("#!/bin/sh\necho 'GPU 0: stand-in (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    os.chmod(os.path.join(machine.directory, "usr/bin/nvidia-smi"), 0o755)
    lab.exec(machine, ["ldconfig"])
    for node, minor in (("nvidia0", 0), ("nvidiactl", 255)):
        lab.exec(machine, ["mknod", "-m", "666", f"/dev/{node}", "c", "195", str(minor)])

    spec = {"name": "cuda1", "image": image.rsplit("/", 1)[-1], "gpu": True, "network": {"type": "none"}}
    rc, started = run_module("replica.cloud.nspawn_machine", spec, machine=machine)
    assert rc == 0 and started["state"] == "running", started
    nspawn = open(os.path.join(machine.directory, "etc/systemd/nspawn/cuda1.nspawn"), encoding="utf-8").read()
    assert "Bind=/dev/nvidia0" in nspawn and "BindReadOnly=/usr/lib/x86_64-linux-gnu/libcuda.so.1" in nspawn
    allowed = lab.exec(machine, ["systemctl", "show", "-p", "DeviceAllow", "systemd-nspawn@cuda1.service"]).stdout
    assert "/dev/nvidia0 rwm" in allowed and "/dev/nvidiactl rwm" in allowed

    probe = ("python3 -c \"import ctypes, errno, os\n"
             "v = ctypes.c_int(); print(ctypes.CDLL('libcuda.so.1').cuDriverGetVersion(ctypes.byref(v)), v.value)\n"
             "try:\n    os.open('/dev/nvidia0', os.O_RDWR)\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
             "st = os.stat('/dev/nvidiactl'); print(os.major(st.st_rdev), os.minor(st.st_rdev))\"; "
             "nvidia-smi; findmnt -no OPTIONS /usr/lib/x86_64-linux-gnu/libcuda.so.1")
    out = inside(lab, machine, "cuda1", probe).stdout.splitlines()
    assert out[0] == "0 12040"           # the host's library, loaded in the machine
    assert out[1] == "ENXIO"             # the device policy lets it open the node; the CI kernel has no driver behind it
    assert out[2] == "195 255"
    assert out[3].startswith("GPU 0: stand-in")
    assert out[4].split(",")[0] == "ro"  # a read-only bind of the host's file
    rc, dummy = run_module("replica.cloud.nspawn_machine", {"name": "cuda1", "state": "absent"}, machine=machine)
    assert rc == 0
