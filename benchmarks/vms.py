# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM time to ready under TCG, in a lab host, and the share spent before the guest kernel.

    .venv/bin/python benchmarks/vms.py [--runs 3] [--kinds microVM,q35] [--json PATH]   (as root)

Boots one lab host with qemu-system-x86, qemu-utils and Debian's cloud kernel (the lab caches
that image), makes a base disk from the lab image (ext4, mkfs.ext4 -d) next to the kernel and
initrd, and then, --runs times for each kind, creates and starts a VM with replica.cloud.qemu_vm
(through ansible and the nspawn connection) and removes it again. Kinds: the microVM ``tiny1``
(direct kernel boot, no firmware) and the q35 VM ``q1`` (OVMF UEFI firmware loading the same
kernel, a software TPM, the web console socket):

    ready           the module's ready_seconds: from its ``systemctl start`` to "login:" on the
                    serial console
    before kernel   the VM stopped again, then ``systemctl start`` from a shell in the lab host,
                    to the guest kernel's start: when its "console [ttyS0] enabled" line shows
                    on the serial log, less the kernel's own time stamp on that line. Unit
                    start (and the TPM's), QEMU start-up, firmware (q35), loading the kernel:
                    the part replica.cloud owns, where the rest of "ready" is the guest booting
    ansible call    the whole module call (fork, seed ISO, unit, start, wait)
    stop            graceful ACPI power-down (state: stopped), whole module call

The lab host is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position,import-error
from conftest import VM_PACKAGES, run_module, seed_vm_images  # noqa: E402  pylint: disable=wrong-import-position,import-error


# From a shell in the lab host: start the (defined, stopped) VM and poll its serial log until the
# guest kernel's "console [ttyS0] enabled" line, whose printk time stamp says how long the
# kernel had been running by then; prints the seconds from the start request to the kernel's
# start. Then it waits for the ready pattern, so the removal after it is a graceful stop.
BEFORE_KERNEL = r"""
import re, subprocess, sys, time
name, ready = sys.argv[1], sys.argv[2].encode()
log = f"/run/replica-vm/{name}/serial.log"
t0 = time.monotonic()
subprocess.run(["systemctl", "start", f"replica-vm@{name}.service"], check=True)
stamp = None
while stamp is None and time.monotonic() - t0 < 600:
    try:
        found = re.search(rb"\[ *([0-9.]+)\] printk: console \[ttyS0\] enabled", open(log, "rb").read())
    except FileNotFoundError:
        found = None
    if found:
        stamp = time.monotonic() - t0 - float(found.group(1))
    time.sleep(0.01)
while time.monotonic() - t0 < 600 and ready not in open(log, "rb").read():
    time.sleep(0.2)
print(stamp)
"""

KINDS = {
    "microVM": {"name": "tiny1", "image": "debian.raw", "kernel": "/var/lib/replica/vm-images/vmlinuz",
                "initrd": "/var/lib/replica/vm-images/initrd.img", "memory": "512M", "timeout": 300},
    # q35: UEFI firmware (OVMF) loading the same kernel, with a software TPM and the web console
    "q35": {"name": "q1", "machine": "q35", "image": "debian.raw", "kernel": "/var/lib/replica/vm-images/vmlinuz",
            "initrd": "/var/lib/replica/vm-images/initrd.img", "memory": "1G", "tpm": True, "timeout": 300},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("vms.py: run as root (lab hosts)")
    lab = replica_lab.Lab()
    rows = {}
    started = time.monotonic()
    accel = "?"
    with lab.host("bench-vms", packages=VM_PACKAGES) as machine:
        seed_vm_images(lab, machine)
        for kind in args.kinds.split(","):
            spec = KINDS[kind]
            for run in range(args.runs):
                began = time.monotonic()
                result = run_module("replica.cloud.qemu_vm", spec, machine=machine)[1]
                rows.setdefault((kind, "ansible call"), []).append(time.monotonic() - began)
                rows.setdefault((kind, "ready"), []).append(result["ready_seconds"])
                accel = result["accel"]
                began = time.monotonic()
                run_module("replica.cloud.qemu_vm", dict(spec, state="stopped"), machine=machine)
                rows.setdefault((kind, "stop"), []).append(time.monotonic() - began)
                out = lab.exec(machine, ["python3", "-c", BEFORE_KERNEL, spec["name"], "login:"]).stdout.split()
                rows.setdefault((kind, "before kernel"), []).append(float(out[-1]))
                run_module("replica.cloud.qemu_vm", {"name": spec["name"], "state": "absent"}, machine=machine)
                print(f"{kind} run {run + 1}: ready {result['ready_seconds']} s, before kernel {float(out[-1]):.2f} s",
                      file=sys.stderr)
    print(f"VMs in a lab host (Debian 12 cloud kernel, direct boot, accel {accel}), seconds")
    print(f"{'VM':<9}{'case':<16}{'runs':>6}{'p50':>9}{'max':>9}")
    for (kind, case), values in rows.items():
        print(f"{kind:<9}{case:<16}{len(values):>6}{statistics.median(values):>9.2f}{max(values):>9.2f}")
    print(f"total runtime {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({f"{kind} {case}": values for (kind, case), values in rows.items()}, handle, indent=1)


if __name__ == "__main__":
    main()
