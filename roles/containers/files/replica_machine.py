# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica-machine: the host side of ``replica-machine@NAME.service`` (installed by the
replica.cloud.containers role).

    replica-machine prepare NAME    make machine NAME ready to boot: fork it from its image
                                    (the one it was created from, else the default image) when it
                                    has no root yet, give it its host name and .nspawn settings

``systemctl start replica-machine@NAME`` runs ``prepare`` and then starts
``systemd-nspawn@NAME.service``: a new machine by name, in about a second. Machines the
nspawn_machine module manages are left as the module made them. The fork and the settings are
the module's own code (module_utils, installed next to this file).
"""

import json
import os
import sys

sys.path.insert(0, "/usr/local/lib/replica/python")

# pylint: disable=wrong-import-position,import-error
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow  # noqa: E402
from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns  # noqa: E402

DEFAULTS = "/etc/replica/machines/defaults.json"


def prepare(name):
    ns.check_name(name)
    with open(DEFAULTS, encoding="utf-8") as handle:
        defaults = json.load(handle)
    machines_dir = defaults.get("machines_dir", "/var/lib/machines")
    fork = os.path.join(machines_dir, name)
    nspawn_path = f"/etc/systemd/nspawn/{name}.nspawn"
    record_path = f"/etc/replica/machines/{name}.json"
    if os.path.isdir(fork) and os.path.exists(nspawn_path):
        return f"{name}: ready to boot"
    record = {}
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
    image = record.get("image") or defaults.get("image")
    if not image:
        raise ns.MachineError(f"machine {name} has no image, and no default image is set (containers_default_image)")
    image_path = image if image.startswith("/") else os.path.join(defaults["images_dir"], image)
    if not os.path.isdir(fork):
        if not os.path.isdir(image_path):
            raise ns.MachineError(f"image {image_path} is not there")
        backend = cow.detect(image_path, cow.subprocess_runner)
        backend.check_source(image_path)
        backend.fork(image_path, fork)
        with open(os.path.join(fork, "etc/hostname"), "w", encoding="utf-8") as handle:
            handle.write(f"{name}\n")
    if not os.path.exists(nspawn_path):
        os.makedirs(os.path.dirname(nspawn_path), exist_ok=True)
        with open(nspawn_path, "w", encoding="utf-8") as handle:
            handle.write(ns.render_nspawn({"name": name, "shared_hosts": os.path.exists(ns.HOSTS_FILE)}))
    if not os.path.exists(record_path):
        with open(record_path, "w", encoding="utf-8") as handle:
            json.dump({"image": image, "firstboot": None, "by": "replica-machine"}, handle)
    return f"{name}: forked from {image_path}"


def main(argv):
    if len(argv) != 2 or argv[0] != "prepare":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(prepare(argv[1]))
    except (ns.MachineError, cow.CowError, OSError, ValueError, KeyError) as exc:
        print(f"replica-machine {argv[1]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
