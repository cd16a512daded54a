# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica-snapshot: take a snapshot by a policy and prune by its retention (installed by the
replica-tools package, which the replica.cloud.tools role builds and installs; run by the
replica-snapshot-<policy>.timer units).

    replica-snapshot POLICY             snapshot now, then prune
    replica-snapshot --prune POLICY     prune only
    replica-snapshot --list POLICY      list the policy's snapshots and why each is kept
    replica-snapshot --dry-run POLICY   say what would be done

A policy is /etc/replica/snapshots/POLICY.json: {"src", "backend", "snapshot_dir", "name",
"retention"}. The snapshot and retention code is the collection's own module_utils
(_cow.py, _retention.py), in the same package: one implementation for the module and the
timers.
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, "/usr/lib/replica/python")   # the replica-tools package's module_utils

# pylint: disable=wrong-import-position,import-error
from ansible_collections.replica.cloud.plugins.module_utils import _cow, _retention  # noqa: E402

POLICIES = "/etc/replica/snapshots"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="replica-snapshot", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("policy")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prune", action="store_true", help="prune only, take no snapshot")
    mode.add_argument("--list", action="store_true", help="list snapshots and the rules keeping them")
    parser.add_argument("--dry-run", action="store_true", help="change nothing, say what would be done")
    parser.add_argument("--policies", default=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = os.path.join(args.policies, f"{args.policy}.json")
    try:
        with open(path, encoding="utf-8") as handle:
            policy = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"replica-snapshot: cannot read policy {path}: {exc}", file=sys.stderr)
        return 2
    try:
        _retention.normalize(policy.get("retention"))
        backend = _cow.detect(policy["src"], _cow.subprocess_runner, policy.get("backend") or "auto")
        backend.check_source(policy["src"])
        series = _cow.Series(backend, policy["src"], _retention, policy.get("snapshot_dir"), policy.get("name"))
        now = datetime.datetime.now(datetime.timezone.utc)
        if args.list:
            keep, delete, reasons = _retention.select(series.listing(), policy["retention"], now)
            for name in keep:
                print(f"keep    {name}  ({', '.join(reasons[name])})")
            for name in delete:
                print(f"delete  {name}")
            return 0
        with series.lock("replica-snapshot prune" if args.prune else "replica-snapshot"):
            return run_policy(args, policy, backend, series, now)
    except (_cow.CowError, _retention.RetentionError, KeyError, OSError) as exc:
        print(f"replica-snapshot {args.policy}: {exc}", file=sys.stderr)
        return 1


def run_policy(args, policy, backend, series, now):
    """Snapshot (unless --prune) and prune, holding the series' lock."""
    if not args.prune:
        dest = series.dest_for(now)
        if args.dry_run:
            print(f"would snapshot {policy['src']} -> {dest}")
        else:
            series.make_room(dest)
            backend.snapshot(policy["src"], dest)
            print(f"snapshot {policy['src']} -> {dest}")
    keep, delete, dummy = _retention.select(series.listing(), policy["retention"], now)
    if args.dry_run:
        for name in delete:
            print(f"would delete {name}")
    elif delete:
        backend.remove(delete)
        for name in delete:
            print(f"deleted {name}")
    print(f"{args.policy}: {len(keep)} kept, {len(delete)} {'to delete' if args.dry_run else 'deleted'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
