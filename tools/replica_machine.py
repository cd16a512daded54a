# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica-machine: the host side of ``replica-machine@NAME.service`` (in the replica-tools
package, which the replica.cloud.tools role builds and installs).

    replica-machine prepare NAME    make machine NAME ready to boot: fork it from its image
                                    (the one it was created from, else the default image) when it
                                    has no root yet, give it its host name and .nspawn settings

``systemctl start replica-machine@NAME`` runs ``prepare`` and then starts
``systemd-nspawn@NAME.service``: a new machine by name, in about a second. Machines the
nspawn_machine module manages are left as the module made them. The fork and the settings are
the module's own code (module_utils, in the same package).
"""

import json
import os
import sys

sys.path.insert(0, "/usr/lib/replica/python")   # the replica-tools package's module_utils

# pylint: disable=wrong-import-position,import-error
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow  # noqa: E402
from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns  # noqa: E402
from ansible_collections.replica.cloud.plugins.module_utils._files import read_text, write_text  # noqa: E402


def prepare(name):
    ns.check_name(name)   # before anything is read: the rule's own message
    with open(ns.DEFAULTS, encoding="utf-8") as handle:
        defaults = json.load(handle)
    paths = ns.layout(name, defaults.get("machines_dir", ns.MACHINES_DIR))
    if os.path.isdir(paths.fork) and os.path.exists(paths.nspawn):
        return f"{name}: ready to boot"
    record = ns.parse_record(read_text(paths.record)) or {}
    image = record.get("image") or defaults.get("image")
    if not image:
        raise ns.MachineError(f"machine {name} has no image, and no default image is set (containers_default_image)")
    image_path = ns.image_path(image, defaults.get("images_dir", ns.IMAGES_DIR))
    if not os.path.isdir(paths.fork):
        backend = cow.detect(image_path, cow.subprocess_runner)
        backend.check_source(image_path)
        # forked beside its place and renamed into it, as the module does: never half a root
        cow.fork_whole(backend, image_path, paths.fork, paths.partial, cow.subprocess_runner,
                       lambda partial: write_text(os.path.join(partial, "etc/hostname"), f"{name}\n"))
    if not os.path.exists(paths.nspawn):
        os.makedirs(os.path.dirname(paths.nspawn), exist_ok=True)
        write_text(paths.nspawn, ns.render_nspawn({"name": name, "shared_hosts": os.path.exists(ns.HOSTS_FILE)}))
    if not os.path.exists(paths.record):
        write_text(paths.record, ns.record_text(image, None, "replica-machine"))
    return f"{name}: forked from {image_path}"


def main(argv):
    if len(argv) != 2 or argv[0] != "prepare":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(prepare(argv[1]))
    except (ns.MachineError, cow.CowError, OSError, ValueError, KeyError) as exc:  # ValueError: a bad name or JSON
        print(f"replica-machine {argv[1]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
