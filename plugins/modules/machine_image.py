#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: machine_image
short_description: Debian/Ubuntu machine images, built ahead of time onto copy-on-write storage
version_added: 0.1.0
description:
  - Builds a root file system with C(mmdebstrap) from the host's own APT sources (and its
    C(Acquire::) settings) into O(images_dir)/O(name), ready for M(replica.cloud.nspawn_machine)
    to fork. On btrfs the image is a subvolume made read-only once built; on a reflink file
    system (xfs) a folder.
  - An image holds a booting systemd with networkd enabled, D-Bus, C(ip), Python 3 and
    ca-certificates, plus O(packages) ("pre-baked" sets). Its machine-id is empty, so every
    machine gets its own.
  - The image is rebuilt only when what it is built from changes (suite, packages, APT sources)
    or with O(state=refreshed); machines already forked from it keep their own copy.
  - A failed build leaves nothing behind, and the image it was to replace stays.
  - "Killed at any point (C(kill -9)), a re-run converges: one run at a time builds an image (a lock per image in
    C(/run/replica/locks); another run waits for it, up to an hour, then fails naming the holder), and the next run
    removes what a killed one left (its C(.NAME.partial) build, or the C(.NAME.old) image it was replacing) and builds
    again unless the image in place is current. Killed in the moment between moving the old image aside and renaming
    the new one in, the image is missing and the re-run builds it."
  - "With O(format=disk) the image is a VM disk instead: the same root file system as one raw
    ext4 disk image O(images_dir)/O(name).raw of O(size) (sparse), with the kernel and initrd of
    its kernel package unpacked beside it as O(name).vmlinuz and O(name).initrd.img, ready for
    M(replica.cloud.qemu_vm) to fork and boot directly (microVMs, or q35 with a kernel)."
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: mmdebstrap, btrfs-progs where the images folder is on btrfs; e2fsprogs (mkfs.ext4) for O(format=disk)."
options:
  name:
    description: Image name (the folder name, what M(replica.cloud.nspawn_machine) O(replica.cloud.nspawn_machine#module:image) refers to).
    type: str
    required: true
  suite:
    description: Debian or Ubuntu codename; defaults to the host's.
    type: str
  packages:
    description: Packages to pre-bake, beyond the base set.
    type: list
    elements: str
    default: []
  images_dir:
    description: Where images live; on btrfs (or a reflink file system) next to the machines.
    type: path
    default: /var/lib/machines/.images
  format:
    description:
      - V(tree) - a root folder (btrfs subvolume or reflink folder) for containers.
      - "V(disk) - a raw ext4 disk image plus kernel and initrd for VMs. O(packages) must hold a
        kernel package (for example C(linux-image-cloud-amd64)). On btrfs or xfs VMs fork it by
        reflink; elsewhere as a qcow2 overlay."
    type: str
    choices: [tree, disk]
    default: tree
  size:
    description: The disk image's size (O(format=disk)), a sparse file; the guest can grow it.
    type: str
    default: 2G
  state:
    description:
      - V(present) - built, and rebuilt when its sources changed.
      - V(refreshed) - rebuilt now (newer packages).
      - V(absent) - removed.
    type: str
    choices: [present, refreshed, absent]
    default: present
notes:
  - Needs mmdebstrap on the host, btrfs-progs for btrfs, e2fsprogs for O(format=disk).
  - Only the O(images_dir) of the host's own architecture is built.
  - "Concurrency: one run per image at a time (a lock in C(/run/replica/locks), root's alone); a second
    converge building the same image waits up to an hour for the first, then finds the image current."
  - "Crash consistency: an image is built in C(.NAME.partial) and renamed into place, and its record
    written last; killed at any point, the next run discards the partial and builds again (a
    missing or outdated record means not built), so nothing half-built is ever forked."
attributes:
  check_mode:
    description: Reports whether the image would be built or removed.
    support: full
  diff_mode:
    description: Shows the image's package list and key before and after.
    support: full
"""

EXAMPLES = r"""
- name: A Debian 12 image with nginx pre-baked
  replica.cloud.machine_image:
    name: debian-12-web
    suite: bookworm
    packages: [nginx, curl]

- name: Refresh it (security updates)
  replica.cloud.machine_image:
    name: debian-12-web
    packages: [nginx, curl]
    state: refreshed

- name: A VM disk with Debian's cloud kernel and cloud-init, for replica.cloud.qemu_vm
  replica.cloud.machine_image:
    name: debian-12-vm
    format: disk
    size: 4G
    packages: [linux-image-cloud-amd64, cloud-init, openssh-server]
    images_dir: /var/lib/replica/vm-images
"""

RETURN = r"""
path:
  description: The image's root folder, or its disk image (O(format=disk)).
  returned: always
  type: str
kernel:
  description: The kernel unpacked beside a disk image.
  returned: when O(format=disk) and present
  type: str
initrd:
  description: The initrd unpacked beside a disk image (empty when the kernel has none).
  returned: when O(format=disk) and present
  type: str
key:
  description: Digest of what the image is built from.
  returned: when present
  type: str
packages:
  description: Its package list.
  returned: when present
  type: list
  elements: str
leftovers:
  description: What a run killed midway had left (a partial build, the image it was replacing), removed by this run.
  returned: when there were some
  type: list
  elements: str
  sample: [/var/lib/machines/.images/.debian-12.partial]
build_seconds:
  description: How long the build took (when built).
  returned: when built
  type: float
"""

import contextlib
import json
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _cow as cow
from ansible_collections.replica.cloud.plugins.module_utils import _image as img
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils import _runner
#: a build takes minutes: a second run waits this long for the first one
IMAGE_LOCK_WAIT = 3600


def host_codename():
    with open("/etc/os-release", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "suite": {"type": "str"},
            "packages": {"type": "list", "elements": "str", "default": []},
            "images_dir": {"type": "path", "default": "/var/lib/machines/.images"},
            "format": {"type": "str", "choices": ["tree", "disk"], "default": "tree"},
            "size": {"type": "str", "default": "2G"},
            "state": {"type": "str", "choices": ["present", "refreshed", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    params = module.params
    name = params["name"]

    runner = _runner.Runner(module)
    run = runner.run

    images_dir = params["images_dir"]
    disk = params["format"] == "disk"
    path = os.path.join(images_dir, f"{name}.raw" if disk else name)
    # a disk image's kernel and initrd, unpacked beside it
    boot = {"kernel": os.path.join(images_dir, f"{name}.vmlinuz"),
            "initrd": os.path.join(images_dir, f"{name}.initrd.img")} if disk else {}
    record_path = os.path.join(images_dir, f"{name}.json")
    result = {"changed": False, "path": path}
    locks = contextlib.ExitStack()  # held until the process exits (exit_json included)
    try:
        img.check_name(name)
        # one run per image at a time: a second converge building the same image waits for the first
        # (and then finds it current) instead of building into the same partial folder
        locks.enter_context(_lock.held("image", os.path.join(os.path.abspath(images_dir), name),
                                       f"machine_image {params['state']} {name}", wait=IMAGE_LOCK_WAIT))
        size = img.disk_size(params["size"]) if disk else None
        # a killed run's scratch (its partial build, the image it was replacing): this run holds the
        # image's lock, so no live run is using them
        leftovers = [p for p in (os.path.join(images_dir, n) for n in img.scratch_names(name, disk)) if os.path.lexists(p)]
        if leftovers:
            result.update(changed=True, leftovers=leftovers)
            if not module.check_mode:
                for leftover in leftovers:
                    cow.remove_tree(leftover, runner)
        record = None
        if os.path.exists(record_path):
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
        if params["state"] == "absent":
            if os.path.lexists(path) or record is not None:
                result["changed"] = True
                if module._diff:
                    result["diff"] = {"before": record or {}, "after": {}}
                if not module.check_mode:
                    cow.remove_tree(path, runner)
                    for leftover in [*boot.values(), record_path]:
                        if os.path.exists(leftover):
                            os.unlink(leftover)
            module.exit_json(**result)

        suite = params["suite"] or host_codename()
        packages = img.packages_for(params["packages"])
        sources = img.read_host_sources()
        aptopts = img.read_host_aptopts()
        key = img.image_key(suite, packages, [text for dummy, text in sources], [text for dummy, text in aptopts],
                            disk_size=size)
        result.update(key=key, packages=packages)
        if disk:
            result.update(kernel=boot["kernel"], initrd=boot["initrd"] if (record or {}).get("initrd", True) else "")
        built = os.path.isfile(path) and os.path.isfile(boot["kernel"]) if disk else os.path.isdir(path)
        current = built and record is not None and record.get("key") == key
        build = params["state"] == "refreshed" or not current
        result["changed"] = build or bool(leftovers)
        if module._diff:
            result["diff"] = {"before": {"key": (record or {}).get("key"), "packages": (record or {}).get("packages")},
                              "after": {"key": key, "packages": packages}}
        if not build or module.check_mode:
            module.exit_json(**result)
        runner.bin("mmdebstrap")

        os.makedirs(images_dir, 0o700, exist_ok=True)
        if disk:
            started = time.monotonic()
            result.update(build_disk(run, images_dir, name, suite, packages, sources, aptopts, size, boot))
            result["build_seconds"] = round(time.monotonic() - started, 1)
            write_record(record_path, key, suite, packages, result["build_seconds"], size=size,
                         initrd=bool(result["initrd"]))
            module.exit_json(**result)
        on_btrfs = cow.fstype(images_dir) == "btrfs"
        if not on_btrfs and not cow.can_reflink(images_dir):
            raise img.ImageError(f"{images_dir} is on {cow.fstype(images_dir)}, without copy-on-write: machines "
                                 f"forked from it would be full copies. Put images_dir on btrfs or xfs (reflink=1)")
        # both were removed above, with the other leftovers of a killed run
        partial, old = (os.path.join(images_dir, n) for n in img.scratch_names(name))
        if on_btrfs:
            run(["btrfs", "subvolume", "create", partial])
        else:
            os.mkdir(partial, 0o755)
        started = time.monotonic()
        try:
            stdin = img.sources_text(sources, host_codename(), suite)
            run(img.mmdebstrap_argv(suite, packages, partial, [p for p, dummy in aptopts]), data=stdin)
            if on_btrfs:
                flatten(partial)
            # mmdebstrap empties the package lists: date them to the epoch so that apt sees them stale
            lists = os.path.join(partial, "var/lib/apt/lists")
            if os.path.isdir(lists):
                os.utime(lists, (0, 0))
            if on_btrfs:
                run(["btrfs", "property", "set", "-ts", partial, "ro", "true"])
            _lock.crash_point("image-built")
            if os.path.lexists(path):
                os.rename(path, old)
                _lock.crash_point("image-swapping")
            os.rename(partial, path)
            cow.remove_tree(old, runner)
        except (img.ImageError, _runner.CommandError, OSError):
            cow.remove_tree(partial, runner)
            raise
        result["build_seconds"] = round(time.monotonic() - started, 1)
        write_record(record_path, key, suite, packages, result["build_seconds"])
    except (img.ImageError, cow.CowError, _runner.CommandError, OSError, _lock.LockError) as exc:
        _runner.fail(module, exc, **result)
    module.exit_json(**result)


def write_record(record_path, key, suite, packages, seconds, **extra):
    with open(record_path, "w", encoding="utf-8") as handle:
        json.dump({"key": key, "suite": suite, "packages": packages, "build_seconds": seconds,
                   "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}, handle, indent=1)


def build_disk(run, images_dir, name, suite, packages, sources, aptopts, size, boot):
    """Build the root file system in a scratch folder, make it a sparse ext4 disk image and
    unpack its kernel and initrd; publish all three by rename, or leave nothing."""
    scratch = [os.path.join(images_dir, n) for n in img.scratch_names(name, disk=True)]
    tree = scratch[0]
    outputs = {"path": os.path.join(images_dir, f"{name}.raw"), **boot}
    partial = dict(zip(("path", "kernel", "initrd"), scratch[1:]))

    def clean():
        cow.remove_tree(tree, lambda argv: run(argv, check=False))
        for leftover in partial.values():
            if os.path.exists(leftover):
                os.unlink(leftover)

    clean()
    os.mkdir(tree, 0o755)
    try:
        stdin = img.sources_text(sources, host_codename(), suite)
        run(img.mmdebstrap_argv(suite, packages, tree, [p for p, dummy in aptopts]), data=stdin)
        kernel, initrd = img.boot_files(os.listdir(os.path.join(tree, "boot")))
        if kernel is None:
            raise img.ImageError(f"image {name}: format disk needs a kernel to boot: add a kernel package to "
                                 f"packages (for example linux-image-cloud-amd64)")
        shutil.copyfile(os.path.join(tree, "boot", kernel), partial["kernel"])
        if initrd:
            shutil.copyfile(os.path.join(tree, "boot", initrd), partial["initrd"])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, partial["path"], size])
        for what, final in outputs.items():
            if what == "initrd" and not initrd:
                if os.path.exists(final):
                    os.unlink(final)
                continue
            os.rename(partial[what], final)
    except (img.ImageError, _runner.CommandError, OSError):
        clean()
        raise
    clean()
    return {"kernel": outputs["kernel"], "initrd": outputs["initrd"] if initrd else ""}


def flatten(tree):
    """Subvolumes nested in the image (systemd-tmpfiles makes /var/lib/machines one) become
    plain folders: a snapshot shows a nested subvolume as an empty stub nothing can be written in."""
    for sub in cow.nested_subvolumes(tree):
        if os.listdir(sub):
            raise img.ImageError(f"{sub}: a nested subvolume in the image is not empty; cannot flatten it")
        st = os.stat(sub)
        cow.Btrfs(cow.subprocess_runner).remove([sub])
        os.mkdir(sub, st.st_mode & 0o7777)
        os.chown(sub, st.st_uid, st.st_gid)


if __name__ == "__main__":
    main()
