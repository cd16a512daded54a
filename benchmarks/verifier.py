# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one testinfra command in a lab host costs: testinfra's ansible backend (one ``ansible``
process per command, through the replica.cloud.nspawn connection, the inventory molecule writes)
against the lab backend (``scripts/replica_testinfra.py``: nsenter by the recorded leader PID).
Prints a table.

    sudo .venv/bin/python benchmarks/verifier.py [--runs 20]

Both run the same commands in the same lab host: ``true``, a file's content (``host.file``) and a
package query (``host.package``, two commands in testinfra).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)

import testinfra  # noqa: E402  pylint: disable=wrong-import-position
import replica_lab  # noqa: E402  pylint: disable=wrong-import-position
import replica_testinfra  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from _loop import log, table  # noqa: E402  pylint: disable=wrong-import-position

#: the inventory molecule's shared config gives a lab host (.config/molecule/config.yml)
INVENTORY = """all:
  hosts:
    {name}:
      ansible_connection: replica.cloud.nspawn
      ansible_nspawn_leader_pid: "{{{{ lookup('ansible.builtin.pipe', '{root}/scripts/lab leader ' ~ inventory_hostname) }}}}"
      ansible_python_interpreter: /usr/bin/python3
"""

PROBES = (
    ("command (true)", lambda h: h.run("true")),
    ("file content", lambda h: h.file("/etc/os-release").content_string),
    ("package query", lambda h: h.package("systemd").is_installed),
)


def measure(host, runs):
    """Seconds of each probe, *runs* times."""
    times = {label: [] for label, _probe in PROBES}
    for _run in range(runs):
        for label, probe in PROBES:
            started = time.monotonic()
            probe(host)
            times[label].append(time.monotonic() - started)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ansible-runs", type=int, default=5, help="runs of the (slow) ansible backend")
    args = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", os.path.join(ROOT, "ansible.cfg"))
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    lab = replica_lab.Lab()
    name = "bench-verifier"
    rows = []
    with lab.host(name), tempfile.TemporaryDirectory() as tmp:
        inventory = os.path.join(tmp, "inventory.yml")
        with open(inventory, "w", encoding="utf-8") as handle:
            handle.write(INVENTORY.format(name=name, root=ROOT))
        backends = (
            ("ansible", testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory), args.ansible_runs),
            ("lab", testinfra.get_host(f"lab://{name}"), args.runs),
        )
        for backend, host, runs in backends:
            log(f"{backend}: {runs} runs")
            host.run("true")  # warm: the backend's first command
            for label, values in measure(host, runs).items():
                rows.append((f"{backend:8} {label}", values))
    table(rows, label="backend  measure", width=32, unit="ms")


if __name__ == "__main__":
    main()
