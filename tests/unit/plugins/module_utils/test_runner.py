# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one command runner (_runner): real commands through subprocess, as the host tools run
them."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _runner

SHOW_ENV = "import os; print(os.environ.get('LC_ALL'), os.environ.get('LANG'))"


def test_commands_run_with_the_c_locale_from_an_argument_list():
    runner = _runner.Runner()
    rc, out, err = runner.run([sys.executable, "-c", SHOW_ENV], env={"LANG": "C"})
    assert (rc, out, err) == (0, "C C\n", "")
    # an argument is one argument: no shell splits or expands it
    rc, out, dummy = runner.run([sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b; $HOME *"])
    assert out == "['a b; $HOME *']\n"


def test_a_failure_carries_its_command_and_output():
    runner = _runner.Runner()
    with pytest.raises(_runner.CommandError) as caught:
        runner.run([sys.executable, "-c", "import sys; print('out'); sys.exit('it broke')"], "breaking on purpose",
                   hint="this is what to do")
    exc = caught.value
    assert str(exc) == "breaking on purpose failed (exit 1): it broke (this is what to do)"
    assert exc.fields() == {"cmd": [sys.executable, "-c", "import sys; print('out'); sys.exit('it broke')"],
                            "rc": 1, "stdout": "out\n", "stderr": "it broke\n"}
    # check=False returns it instead
    assert runner.run([sys.executable, "-c", "raise SystemExit(3)"], check=False)[0] == 3


def test_stdin_and_binary_output():
    runner = _runner.Runner()
    assert runner.run(["cat"], data="line\n")[1] == "line\n"
    assert runner.run(["cat"], data=b"\x00\xff", binary=True)[1] == b"\x00\xff"


def test_a_missing_tool_names_its_package():
    runner = _runner.Runner()
    with pytest.raises(_runner.ToolMissing, match="^mmdebstrap-not-here is not installed on the target: install the "
                                                  "mmdebstrap-not-here package$"):
        runner.bin("mmdebstrap-not-here")
    assert str(_runner.ToolMissing("btrfs", why="for snapshots")) == \
        "btrfs is not installed on the target (for snapshots): install the btrfs-progs package"
    assert runner.bin("sh") in ("/bin/sh", "/usr/bin/sh")
    assert runner.bin("no-such-tool-here", required=False) is None
    with pytest.raises(_runner.ToolMissing):
        runner.run(["no-such-tool-here"])


def test_check_mode_refuses_a_change(tmp_path):
    marker = tmp_path / "made"
    runner = _runner.Runner(check_mode=True)
    with pytest.raises(_runner.CheckModeViolation):
        runner.change(["touch", str(marker)])
    assert not marker.exists()
    assert runner.run(["true"])[0] == 0   # reading is fine
    _runner.Runner().change(["touch", str(marker)])
    assert marker.exists()


def test_the_runner_is_the_callable_cow_takes():
    rc, out, dummy = _runner.Runner()([sys.executable, "-c", "print(1); raise SystemExit(2)"])
    assert (rc, out) == (2, "1\n")


def test_no_module_keeps_its_own_environment_or_runner():
    """One runner: no module or host tool sets LC_ALL or calls run_command itself."""
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    # the scratch-namespace script nft_table runs (through the runner) as its own process
    allowed = {("plugins/modules/nft_table.py", "subprocess.run(")}
    offenders = []
    folders = ["plugins/modules", "plugins/module_utils", "tools"]
    folders += sorted(f"roles/{role}/files" for role in os.listdir(os.path.join(top, "roles"))
                      if os.path.isdir(os.path.join(top, "roles", role, "files")))
    for folder in folders:
        for name in sorted(os.listdir(os.path.join(top, folder))):
            if not name.endswith(".py") or name == "_runner.py":
                continue
            with open(os.path.join(top, folder, name), encoding="utf-8") as handle:
                text = handle.read()
            for needle in ('"LC_ALL"', "LC_ALL=\"", "run_command(", "subprocess.run(", "subprocess.Popen("):
                if needle in text and (f"{folder}/{name}", needle) not in allowed:
                    offenders.append(f"{folder}/{name}: {needle}")
    assert offenders == []
