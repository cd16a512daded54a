# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle of an instance (an nspawn machine, a VM): what to do, from what was read.

:func:`plan` is pure: it takes what the module read of the instance (a :class:`Seen`) and the
state asked for, and returns the list of actions, in the order they are taken. ``nspawn_machine``
and ``qemu_vm`` take exactly these actions, return them as ``actions`` (in check mode too: the
actions a real run would take), and set ``changed`` to whether there are any.

The actions:

``clean``      remove what a killed run left (a half-made or half-removed instance)
``create``     make the instance (fork its root or its disk from the image, first-boot files)
``configure``  write its settings (unit files, drop-ins, ``.nspawn``, seed) and make systemd read them
``enable``     start it at boot / ``disable``: no longer
``stop``       stop it
``start``      start it, and wait until it is ready when asked to
``restart``    stop and start it (``state: restarted``, or settings changed with restart on change)
``remove``     stop nothing more, remove its settings and, unless its data is kept, its data
"""

from __future__ import annotations

from collections import namedtuple

STATES = ("present", "started", "stopped", "restarted", "absent")
ACTIONS = ("clean", "create", "configure", "enable", "disable", "stop", "start", "restart", "remove")


class Seen(namedtuple("Seen", "known exists active enabled stale leftovers")):
    """What was read of an instance before acting.

    known      any file of it is there (its record, its settings or its data)
    exists     its data (root, disk) is there: it need not be created
    active     its unit is active, activating or reloading
    enabled    it starts at boot (None: the module does not manage this)
    stale      its settings on disk, or what systemd has read of them, differ from those asked for
    leftovers  a killed run left something of it
    """

    __slots__ = ()

    def __new__(cls, known=False, exists=False, active=False, enabled=None, stale=False, leftovers=False):
        return super().__new__(cls, bool(known or exists), bool(exists), bool(active), enabled, bool(stale),
                               bool(leftovers))


def plan(state, seen, enabled=None, restart_on_change=False):
    """The actions that bring an instance seen as *seen* to *state*.

    *enabled*: whether it should start at boot (None: leave as it is). *restart_on_change*: a
    running instance whose settings change is restarted (else the module reports
    ``restart_required``)."""
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    actions = ["clean"] if seen.leftovers else []
    if state == "absent":
        if seen.known:
            if seen.active:
                actions.append("stop")
            actions.append("remove")
        return actions
    if not seen.exists:
        actions.append("create")
    if seen.stale or not seen.exists:
        actions.append("configure")
    if state != "present" and enabled is not None and seen.enabled is not None and enabled != seen.enabled:
        actions.append("enable" if enabled else "disable")
    if state == "stopped" and seen.active:
        actions.append("stop")
    elif state in ("started", "restarted"):
        if not seen.active:
            actions.append("start")
        elif state == "restarted" or (seen.stale and restart_on_change):
            actions.append("restart")
    return actions


def running_after(seen, actions):
    """Whether the instance runs once *actions* are taken (what check mode reports as state)."""
    if "start" in actions or "restart" in actions:
        return True
    return seen.active and "stop" not in actions


def restart_required(seen, actions):
    """A running instance whose settings change and which these actions do not restart."""
    return bool(seen.active and seen.stale and running_after(seen, actions)
                and "restart" not in actions and "start" not in actions)
