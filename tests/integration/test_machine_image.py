# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.machine_image on this machine: real mmdebstrap builds from its own APT sources
onto a btrfs loop file system. Two converges building one image at once, and a build killed
after mmdebstrap finished (issue 18: they used to collide in the same partial folder, and a
killed build left its partial folder forever). About 90 s: four builds."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess

import pytest
from conftest import run_module  # pylint: disable=import-error

MODULE = "replica.cloud.machine_image"


@pytest.fixture
def images(loop_fs):
    if not shutil.which("mmdebstrap"):
        pytest.skip("mmdebstrap is not installed (scripts/setup installs it)")
    return str(loop_fs("btrfs", 3072))


def image(images_dir, env=None, **args):
    rc, result = run_module(MODULE, dict({"name": "t1", "images_dir": images_dir}, **args), check=False, env=env)
    return rc, result


def read_only(path):
    out = subprocess.run(["btrfs", "property", "get", "-ts", path, "ro"], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "ro=true"


def test_two_builds_at_once_then_a_killed_rebuild(images):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda dummy: image(images), range(2)))
    assert [rc for rc, dummy in runs] == [0, 0], runs
    # one built it; the other waited for the image's lock and found it current
    assert sorted(result["changed"] for dummy, result in runs) == [False, True]
    assert sum("build_seconds" in result for dummy, result in runs) == 1
    assert sorted(os.listdir(images)) == ["t1", "t1.json"]
    assert read_only(os.path.join(images, "t1")) and os.path.isfile(os.path.join(images, "t1/usr/bin/python3"))
    with open(os.path.join(images, "t1.json"), encoding="utf-8") as handle:
        key = json.load(handle)["key"]

    # a refresh killed after mmdebstrap and before the new image is renamed in: the old one stays,
    # the partial is left; the next run removes it and, the image being current, builds nothing
    rc, result = image(images, env={"REPLICA_CRASH_AT": "image-built"}, state="refreshed")
    assert rc != 0 and "Killed" in result.get("module_stderr", ""), result
    assert sorted(os.listdir(images)) == [".t1.partial", "t1", "t1.json"]
    rc, result = image(images)
    assert rc == 0 and result["changed"] and result["leftovers"] == [os.path.join(images, ".t1.partial")], result
    assert "build_seconds" not in result and result["key"] == key
    assert sorted(os.listdir(images)) == ["t1", "t1.json"]
    rc, result = image(images)
    assert rc == 0 and not result["changed"]

    # killed between moving the old image aside and renaming the new one in: no image, so the next
    # run removes the old one and the partial, and builds
    rc, result = image(images, env={"REPLICA_CRASH_AT": "image-swapping"}, state="refreshed")
    assert rc != 0 and sorted(os.listdir(images)) == [".t1.old", ".t1.partial", "t1.json"], result
    rc, result = image(images)
    assert rc == 0 and result["changed"] and "build_seconds" in result, result
    assert sorted(result["leftovers"]) == [os.path.join(images, ".t1.old"), os.path.join(images, ".t1.partial")]
    assert sorted(os.listdir(images)) == ["t1", "t1.json"] and read_only(os.path.join(images, "t1"))
    assert not image(images)[1]["changed"]
