# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared by the benchmarks: take down a file system on a loop image and leave nothing behind;
progress messages; percentiles."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time


def release(image, mnt, mounted):
    """Unmount *mnt* (when *mounted*), make sure no loop device is left on *image*, delete it and
    the mount point; return the problems met, for the caller to report."""
    problems = []
    if mounted:
        for attempt in range(5):
            if subprocess.run(["umount", mnt], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        else:
            subprocess.run(["umount", "-l", mnt], check=False)
            problems.append(f"{mnt} was busy, unmounted lazily")
    if os.path.exists(image):
        loops = subprocess.run(["losetup", "-j", image], check=False,
                               capture_output=True, text=True).stdout.split("\n")
        for line in filter(None, loops):
            device = line.split(":", 1)[0]
            if subprocess.run(["losetup", "-d", device], check=False).returncode != 0:
                problems.append(f"could not detach {device} from {image}")
        os.unlink(image)
    if os.path.isdir(mnt):
        try:
            os.rmdir(mnt)
        except OSError as exc:
            problems.append(f"could not remove {mnt}: {exc}")
    return problems


def log(message):
    """A progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def pct(values, q):
    """The nearest-rank *q* percentile of *values* (the maximum for few values and high *q*)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def table(rows, label="measure", width=40, unit="s"):
    """Print *rows* (``(label, [seconds, ...])``) as n, p50, p95 and max, in seconds or ms."""
    scale, digits = (1000, 1) if unit == "ms" else (1, 3)
    print(f"{label:{width}} {'n':>3} {'p50 ' + unit:>8} {'p95 ' + unit:>8} {'max ' + unit:>8}")
    for name, values in rows:
        print(f"{name:{width}} {len(values):>3} {statistics.median(values) * scale:>8.{digits}f} "
              f"{pct(values, 0.95) * scale:>8.{digits}f} {max(values) * scale:>8.{digits}f}")
