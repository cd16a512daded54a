# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The instance lifecycle plan (_lifecycle.plan): from what was read and the state asked for to
the actions nspawn_machine and qemu_vm take, in order."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _lifecycle as lc

NEW = lc.Seen()
STOPPED = lc.Seen(known=True, exists=True, enabled=True)
RUNNING = lc.Seen(known=True, exists=True, active=True, enabled=True)
CHANGED = RUNNING._replace(stale=True)
KILLED = lc.Seen(leftovers=True)

CASES = [
    # state, seen, enabled, restart_on_change, actions
    ("started", NEW, True, False, ["create", "configure", "start"]),
    ("present", NEW, True, False, ["create", "configure"]),
    ("stopped", NEW, True, False, ["create", "configure"]),
    ("started", lc.Seen(known=True, exists=True, enabled=False), True, False, ["enable", "start"]),
    ("started", RUNNING, True, False, []),
    ("started", RUNNING, False, False, ["disable"]),
    ("present", RUNNING._replace(enabled=False), True, False, []),   # present leaves boot as it is
    ("started", CHANGED, True, False, ["configure"]),
    ("started", CHANGED, True, True, ["configure", "restart"]),
    ("restarted", RUNNING, True, False, ["restart"]),
    ("restarted", STOPPED, True, False, ["start"]),
    ("stopped", RUNNING, True, False, ["stop"]),
    ("stopped", STOPPED, True, False, []),
    ("absent", RUNNING, True, False, ["stop", "remove"]),
    ("absent", STOPPED, True, False, ["remove"]),
    ("absent", lc.Seen(known=True), True, False, ["remove"]),   # settings without data
    ("absent", NEW, True, False, []),
    ("absent", KILLED, True, False, ["clean"]),
    ("started", KILLED, True, False, ["clean", "create", "configure", "start"]),
    ("started", lc.Seen(known=True, exists=True, active=True), True, False, []),   # enabled not managed (VMs)
]


@pytest.mark.parametrize("state, seen, enabled, restart_on_change, actions", CASES)
def test_the_plan(state, seen, enabled, restart_on_change, actions):
    planned = lc.plan(state, seen, enabled=enabled if seen.enabled is not None else None,
                      restart_on_change=restart_on_change)
    assert planned == actions
    assert all(action in lc.ACTIONS for action in planned)
    # the order is the one the actions are taken in
    assert planned == sorted(planned, key=lc.ACTIONS.index)


def test_running_after_and_restart_required():
    assert lc.running_after(NEW, ["create", "configure", "start"])
    assert not lc.running_after(RUNNING, ["stop"])
    assert lc.running_after(RUNNING, [])
    assert not lc.running_after(STOPPED, [])
    # a running machine whose settings change and which is not restarted says so
    assert lc.restart_required(CHANGED, ["configure"])
    assert not lc.restart_required(CHANGED, ["configure", "restart"])
    assert not lc.restart_required(CHANGED._replace(active=True), ["configure", "stop"])
    assert not lc.restart_required(RUNNING, [])


def test_a_plan_is_idempotent():
    """After the actions, the instance is as asked: planning again gives nothing to do."""
    after = {"started": RUNNING, "present": STOPPED, "stopped": STOPPED, "restarted": RUNNING}
    for state, seen, enabled, roc, actions in CASES:
        if state == "absent" or not actions:
            continue
        done = after[state]._replace(active=lc.running_after(seen, actions) if state == "present" else after[state].active,
                                     enabled=enabled if seen.enabled is not None else None)
        again = lc.plan(state if state != "restarted" else "started", done, enabled=done.enabled, restart_on_change=roc)
        assert again == [], (state, seen, actions, again)


def test_an_unknown_state_is_refused():
    with pytest.raises(ValueError, match="state 'running' is not one of present, started"):
        lc.plan("running", NEW)
