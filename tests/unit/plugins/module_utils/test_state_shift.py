# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state shift's plan: every combination of facts, and the invariants that keep data safe."""

from __future__ import annotations

import itertools
import os

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _state_shift as shift

FACTS = ("subvolume_exists", "subvolume_empty", "path_empty", "mounted")


def combinations():
    for values in itertools.product((False, True), repeat=len(FACTS)):
        facts = dict(zip(FACTS, values))
        if not facts["subvolume_exists"] and (facts["subvolume_empty"] or facts["mounted"]):
            continue  # a missing subvolume is neither empty nor mounted
        if facts["mounted"] and facts["subvolume_empty"] != facts["path_empty"]:
            continue  # a mounted path shows the subvolume's contents
        yield facts


def outcome(state, facts):
    try:
        return shift.plan(state, "/var/lib/db", "/srv/cow/db", **facts)
    except shift.ShiftError as exc:
        return exc


@pytest.mark.parametrize("facts", list(combinations()), ids=str)
def test_plan_never_loses_data(facts):
    for state in ("present", "absent"):
        result = outcome(state, facts)
        if isinstance(result, shift.ShiftError):
            assert "/var/lib/db" in str(result) and "/srv/cow/db" in str(result)
            continue
        # a copy only ever goes into an empty place, and only an empty subvolume is dropped
        if result == shift.MOVE_IN:
            assert state == "present" and (not facts["subvolume_exists"] or facts["subvolume_empty"])
        if result == shift.MOVE_OUT:
            assert state == "absent" and facts["path_empty"] and not facts["mounted"]
        if result == shift.REMOVE:
            assert state == "absent" and facts["subvolume_empty"]


def test_plan_present():
    plan = shift.plan
    assert plan("present", "/p", "/s", subvolume_exists=False, subvolume_empty=False,
                path_empty=False, mounted=False) == shift.MOVE_IN
    assert plan("present", "/p", "/s", subvolume_exists=True, subvolume_empty=True,
                path_empty=False, mounted=False) == shift.MOVE_IN
    assert plan("present", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
                path_empty=True, mounted=False) == shift.NOTHING
    assert plan("present", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
                path_empty=False, mounted=True) == shift.NOTHING
    with pytest.raises(shift.ShiftError, match="both /p and /s hold data"):
        plan("present", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
             path_empty=False, mounted=False)


def test_plan_absent():
    plan = shift.plan
    assert plan("absent", "/p", "/s", subvolume_exists=False, subvolume_empty=False,
                path_empty=False, mounted=False) == shift.NOTHING
    assert plan("absent", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
                path_empty=True, mounted=False) == shift.MOVE_OUT
    assert plan("absent", "/p", "/s", subvolume_exists=True, subvolume_empty=True,
                path_empty=False, mounted=False) == shift.REMOVE
    with pytest.raises(shift.ShiftError, match="unmount"):
        plan("absent", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
             path_empty=False, mounted=True)
    with pytest.raises(shift.ShiftError, match="both"):
        plan("absent", "/p", "/s", subvolume_exists=True, subvolume_empty=False,
             path_empty=False, mounted=False)
    with pytest.raises(shift.ShiftError, match="present or absent"):
        plan("shifted", "/p", "/s", subvolume_exists=False, subvolume_empty=False,
             path_empty=False, mounted=False)


@pytest.mark.parametrize("path,subvolume,message", [
    ("var/lib/db", "/srv/db", "absolute"),
    ("/", "/srv/db", "below /"),
    ("/var/lib/db", "/var/lib/db", "contain each other"),
    ("/var/lib/db", "/var/lib/db/cow", "contain each other"),
    ("/srv/cow/db/inner", "/srv/cow/db", "contain each other"),
])
def test_check_paths_refuses(path, subvolume, message):
    with pytest.raises(shift.ShiftError, match=message):
        shift.check_paths(path, subvolume)


def test_check_paths_normalises():
    assert shift.check_paths("/var/lib//db/", "/srv/cow/./db") == ("/var/lib/db", "/srv/cow/db")
    # a sibling whose name starts the same is not inside
    assert shift.check_paths("/srv/db", "/srv/db-cow") == ("/srv/db", "/srv/db-cow")


def test_nearest_existing():
    existing = {"/", "/srv", "/srv/cow"}
    assert shift.nearest_existing("/srv/cow/state/db", existing.__contains__) == "/srv/cow"
    assert shift.nearest_existing("/srv/cow", existing.__contains__) == "/srv/cow"
    assert shift.nearest_existing("/mnt/x/y", existing.__contains__) == "/"


def test_refuse_filesystem():
    assert shift.refuse_filesystem("btrfs", "/srv/cow") is None
    for fstype in ("ext2/ext3", "tmpfs", "xfs", "zfs", ""):
        message = shift.refuse_filesystem(fstype, "/srv/plain")
        assert "/srv/plain" in message and "btrfs" in message and "Nothing was changed" in message
        assert (fstype or "unknown") in message


def test_tree_differences(tmp_path):
    (tmp_path / "a").write_text("one")
    st = os.lstat(tmp_path / "a")
    same = [shift.entry("a", st)]
    assert not shift.tree_differences(same, list(same))
    assert shift.tree_differences(same, []) == ["a"]
    os.chmod(tmp_path / "a", 0o600)
    changed = [shift.entry("a", os.lstat(tmp_path / "a"))]
    assert shift.tree_differences(same, changed) == ["a"]
    many = [shift.entry(f"f{i}", st) for i in range(9)]
    assert len(shift.tree_differences(many, [])) == 5


def test_a_killed_move_in_is_finished_or_made_again():
    common = {"subvolume_exists": True, "subvolume_empty": False, "path_empty": False, "mounted": False}
    assert shift.plan("present", "/var/lib/x", "/srv/x", **common, mark={"from": "/var/lib/x", "complete": True}) == shift.FINISH
    assert shift.plan("present", "/var/lib/x", "/srv/x", **common, mark={"from": "/var/lib/x", "complete": False}) == shift.MOVE_IN
    emptied = dict(common)
    emptied["path_empty"] = True
    assert shift.plan("present", "/var/lib/x", "/srv/x", **emptied,
                      mark={"from": "/var/lib/x", "complete": True}) == shift.FINISH  # what a kill left aside goes
    with pytest.raises(shift.ShiftError, match="both"):  # another path's mark is not ours
        shift.plan("present", "/var/lib/x", "/srv/x", **common, mark={"from": "/var/lib/y", "complete": True})
