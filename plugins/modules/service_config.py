#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_config
short_description: A running service has applied its current configuration files, whatever earlier runs did
version_added: 0.1.0
description:
  - Restarts (or reloads) the systemd unit O(name) when what runs is older than its configuration
    O(paths), and starts it when it is not running. The decision is made from live state, not from
    whether this run changed a file, so a run that failed (or was killed) between writing a
    configuration and applying it is made good by the next run; a handler would be lost.
  - "Live state: the unit's C(ActiveEnterTimestampMonotonic) against the files' newest
    modification time, C(NeedDaemonReload), and a stamp this module writes after it applies
    (C(/run/replica/live), keyed by the unit's C(InvocationID) and the files' SHA-256), which is how
    a reload, which keeps the invocation and its start time, is known to have happened."
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: systemd (systemctl)."
options:
  name:
    description:
      - The unit, for example C(replica-dnsmasq@lan.service).
      - "A template (C(systemd-nspawn@.service)) with O(state=loaded) only: systemd loads no template
        on its own, so each of its loaded instances is asked (an instance loaded later reads the
        template and its drop-ins from disk)."
    type: str
    required: true
  paths:
    description:
      - "The files (or folders, all files below) the running unit must have applied: its
        configuration, its unit file and drop-ins. A path that does not exist counts as such (its
        appearing later is a change)."
      - "The unit files and drop-ins of O(name) among them (named as systemd names them, for
        example C(/etc/systemd/system/apt-daily.timer.d/50-replica.conf)) must be the ones systemd
        has read (C(FragmentPath), C(DropInPaths)); C(systemctl daemon-reload) when not. This
        catches what C(NeedDaemonReload) misses: a drop-in in a folder that did not exist when
        systemd last read its units."
      - Required with O(state=restarted) and O(state=reloaded).
    type: list
    elements: path
  state:
    description:
      - V(restarted) - the unit was started after its files last changed (restarted when not).
      - V(reloaded) - the unit has applied its files, by a reload (C(systemctl reload-or-restart))
        when not.
      - "V(loaded) - systemd has read the unit's current files (C(systemctl daemon-reload) when
        C(NeedDaemonReload) or O(paths) say it has not): for a timer's schedule, or a unit that
        starts later. Nothing is started or restarted."
    type: str
    choices: [restarted, reloaded, loaded]
    default: restarted
  inactive:
    description:
      - What to do with a unit that is not running.
      - V(start) - start it.
      - "V(leave) - leave it stopped (only make systemd read its files): a socket-activated service,
        which its next connection starts with its current files."
    type: str
    choices: [start, leave]
    default: start
notes:
  - "Crash consistency: killed before the stamp is written, the next run compares again and at
    worst applies once more."
attributes:
  check_mode:
    description: Reports whether the unit would be restarted or reloaded, and why.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: The segment's dnsmasq runs its current configuration
  replica.cloud.service_config:
    name: replica-dnsmasq@lan.service
    paths: [/etc/replica/network/lan/dnsmasq.conf, /etc/systemd/system/replica-dnsmasq@.service]

- name: The timer runs on its current schedule (systemd has read its drop-in)
  replica.cloud.service_config:
    name: apt-daily.timer
    paths: [/etc/systemd/system/apt-daily.timer.d/50-replica.conf]
    state: loaded

- name: Machines started from now on get the template's new drop-in
  replica.cloud.service_config:
    name: systemd-nspawn@.service
    paths: [/etc/systemd/system/systemd-nspawn@.service.d/50-replica-gpu.conf]
    state: loaded

- name: A socket-activated proxy that runs is restarted when older than its unit; a stopped one is left
  replica.cloud.service_config:
    name: replica-proxy-unbound-0.service
    paths: [/etc/systemd/system/replica-proxy-unbound-0.service]
    inactive: leave
"""

RETURN = r"""
reason:
  description: Why the unit was (or would be) restarted or reloaded; empty when it runs its current files.
  returned: always
  type: str
  sample: its files changed after it started
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _live as live
from ansible_collections.replica.cloud.plugins.module_utils import _files as files
from ansible_collections.replica.cloud.plugins.module_utils import _runner

PROPS = ("LoadState", "ActiveState", "InvocationID", "NeedDaemonReload", "ActiveEnterTimestampMonotonic",
         "FragmentPath", "DropInPaths")


class UnitError(Exception):
    """A unit that cannot apply its configuration; the message says what to fix."""


def show(runner, systemctl, unit, strict=True):
    out = runner.run([systemctl, "show", "--property=" + ",".join(PROPS), "--", unit], f"systemctl show {unit}")[1]
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if strict and props.get("LoadState") in ("not-found", "masked", "bad-setting", "error"):
        raise UnitError(f"unit {unit} is {props['LoadState']}: install (or unmask, or fix) it before "
                        f"asking it to apply its configuration")
    return props


def template_loaded(runner, systemctl, pattern, present):
    """``(reason, steps)`` for a template: a daemon-reload when one of its loaded instances has not
    read its current files."""
    out = runner.run([systemctl, "list-units", "--all", "--plain", "--no-legend", "--full", "--", pattern],
                     f"systemctl list-units {pattern}")[1]
    for instance in live.loaded_units(out):
        props = show(runner, systemctl, instance, strict=False)
        if props.get("LoadState") != "loaded":
            continue  # a masked or broken instance reads nothing
        reason, dummy = live.decide(props, "loaded", "leave", "", 0, None, 0.0, live.unread(props, instance, present))
        if reason:
            return f"{instance}: {reason}", ["daemon-reload"]
    return None, []


def read_stamp(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "paths": {"type": "list", "elements": "path"},
            "state": {"type": "str", "choices": ["restarted", "reloaded", "loaded"], "default": "restarted"},
            "inactive": {"type": "str", "choices": ["start", "leave"], "default": "start"},
        },
        required_if=[("state", "restarted", ["paths"]), ("state", "reloaded", ["paths"])],
        supports_check_mode=True,
    )
    result = {"changed": False, "reason": ""}
    try:
        converge(module, _runner.Runner(module), result)
    except (UnitError, _runner.CommandError) as exc:
        _runner.fail(module, exc, **result)
    module.exit_json(**result)


def converge(module, runner, result):
    unit, paths, state = module.params["name"], module.params["paths"] or [], module.params["state"]
    systemctl = runner.bin("systemctl", why="this module needs systemd")
    pattern = live.template_pattern(unit)
    if pattern and state != "loaded":
        raise UnitError(f"{unit} is a template: only state=loaded checks one (what its instances have read); "
                        f"name an instance to restart or reload it")
    present = [path for path, kind in live.files_of(paths) if kind == "file"]
    if pattern:
        reason, steps = template_loaded(runner, systemctl, pattern, present)
    else:
        content_digest, newest = live.digest(paths)
        props = show(runner, systemctl, unit)
        stamp_file = live.stamp_path(unit)
        started = live.started_at(int(props.get("ActiveEnterTimestampMonotonic") or 0), time.monotonic(), time.time())
        reason, steps = live.decide(props, state, module.params["inactive"], content_digest, newest,
                                    read_stamp(stamp_file), started, live.unread(props, unit, present))
    result.update(changed=bool(reason), reason=reason or "")
    if module.check_mode:
        return
    for verb in steps:
        argv = [systemctl, verb] if verb == "daemon-reload" else [systemctl, verb, "--", unit]
        runner.change(argv, " ".join(argv), hint=f"see journalctl -u {unit}")
    if steps and steps[-1] != "daemon-reload":
        props = show(runner, systemctl, unit)
        if props.get("ActiveState") not in ("active", "reloading"):
            raise UnitError(f"{unit} is {props.get('ActiveState')} after {steps[-1]}: see journalctl -u {unit}")
    if state == "loaded" or props.get("ActiveState") not in ("active", "reloading"):
        return   # nothing runs this configuration: no stamp
    # record what this invocation runs (also when nothing was needed: a later reload is then told apart)
    os.makedirs(live.STAMP_DIR, 0o700, exist_ok=True)
    files.write_text(stamp_file, json.dumps({"unit": unit, "invocation": props.get("InvocationID"),
                                             "digest": content_digest}) + "\n", mode=0o600)


if __name__ == "__main__":
    main()
