# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab host timings: image build (cold), fork, boot to running, teardown. Prints a table.

    sudo .venv/bin/python benchmarks/lab.py [--runs 10] [--cold]

--cold rebuilds the base image first (mmdebstrap from the package registry); without it the
cached image is used, as in a test run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import replica_lab  # noqa: E402  pylint: disable=wrong-import-position
from _loop import table  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cold", action="store_true", help="rebuild the base image first")
    args = parser.parse_args()
    lab = replica_lab.Lab()
    rows = []
    if args.cold:
        started = time.monotonic()
        lab.image(rebuild=True)
        rows.append(("image build (cold, mmdebstrap)", [time.monotonic() - started]))
    else:
        lab.image()
    forks, ready, down = [], [], []
    for run in range(args.runs):
        name = f"bench-{run}"
        started = time.monotonic()
        machine = lab.up(name)
        ready.append(time.monotonic() - started)
        forks.append(machine.fork_seconds)
        started = time.monotonic()
        lab.down(name)
        down.append(time.monotonic() - started)
    rows += [("fork (btrfs snapshot of the image)", forks),
             ("up: fork + boot to 'running' (warm)", ready),
             ("down: power off + remove everything", down)]
    table(rows)


if __name__ == "__main__":
    main()
