# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""MicroVM time to ready under TCG, in a lab host, and the share spent before the guest kernel.

    .venv/bin/python benchmarks/vms.py [--runs 3] [--json PATH]   (as root)

Boots one lab host with qemu-system-x86, qemu-utils and Debian's cloud kernel (the lab caches
that image), makes a base disk from the lab image (ext4, mkfs.ext4 -d) next to the kernel and
initrd, and then, --runs times, creates and starts the microVM ``tiny1`` with
replica.cloud.qemu_vm (through ansible and the nspawn connection) and removes it again:

    ready           the module's ready_seconds: from its ``systemctl start`` to "login:" on the
                    serial console
    before kernel   the VM stopped again, then ``systemctl start`` from a shell in the lab host,
                    timed to the first byte the guest kernel prints on the serial console: unit
                    start, QEMU start-up, direct boot. This is the part replica.cloud owns; the
                    rest of "ready" is the guest booting under TCG
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


def before_kernel_seconds(lab, machine):
    """Start the (defined, stopped) VM from a shell inside the lab host and time until its serial
    log gets its first byte: unit start, QEMU start-up and direct boot, before the guest kernel."""
    script = ("t0=$(date +%s%N); systemctl start replica-vm@tiny1.service;"
              " while [ ! -s /run/replica-vm/tiny1/serial.log ]; do sleep 0.001; done;"
              " echo $(( $(date +%s%N) - t0 ));"
              # then let it finish booting, so that the removal after it is a graceful stop
              " for i in $(seq 600); do grep -q login: /run/replica-vm/tiny1/serial.log && break; sleep 0.5; done")
    return int(lab.exec(machine, ["sh", "-c", script]).stdout.split()[0]) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("vms.py: run as root (lab hosts)")
    lab = replica_lab.Lab()
    rows = {"ready": [], "before kernel": [], "ansible call": [], "stop": []}
    started = time.monotonic()
    with lab.host("bench-vms", packages=VM_PACKAGES) as machine:
        seed_vm_images(lab, machine)
        spec = {"name": "tiny1", "image": "debian.raw", "kernel": "/var/lib/replica/vm-images/vmlinuz",
                "initrd": "/var/lib/replica/vm-images/initrd.img", "memory": "512M", "timeout": 300}
        accel = "?"
        for run in range(args.runs):
            began = time.monotonic()
            result = run_module("replica.cloud.qemu_vm", spec, machine=machine)[1]
            rows["ansible call"].append(time.monotonic() - began)
            rows["ready"].append(result["ready_seconds"])
            accel = result["accel"]
            began = time.monotonic()
            run_module("replica.cloud.qemu_vm", dict(spec, state="stopped"), machine=machine)
            rows["stop"].append(time.monotonic() - began)
            rows["before kernel"].append(before_kernel_seconds(lab, machine))
            run_module("replica.cloud.qemu_vm", {"name": "tiny1", "state": "absent"}, machine=machine)
            print(f"run {run + 1}: ready {result['ready_seconds']} s", file=sys.stderr)
    print(f"microVM (Debian 12 cloud kernel, direct boot, 512 MiB, accel {accel}) in a lab host, seconds")
    print(f"{'case':<16}{'runs':>6}{'p50':>9}{'max':>9}")
    for case, values in rows.items():
        if values:
            print(f"{case:<16}{len(values):>6}{statistics.median(values):>9.2f}{max(values):>9.2f}")
    print(f"total runtime {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
