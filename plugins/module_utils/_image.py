# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machine images built with mmdebstrap: their cache key and the command line that builds one.

Standard library only, and no Ansible imports: ``replica.cloud.machine_image`` and the lab
(scripts/replica_lab.py) share it. Everything but the two ``read_host_*`` functions is pure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

try:
    from ansible_collections.replica.cloud.plugins.module_utils import _names
except ImportError:  # the lab (scripts/replica_lab.py) imports this file on its own, beside _names
    import _names  # pylint: disable=import-error

#: What every machine image holds: a booting systemd with networkd, D-Bus, ip, and Python
#: (so Ansible can manage the machine through the nspawn connection).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "python3", "ca-certificates")
FORMAT = 1  # bump when the build changes in a way that must rebuild cached images
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]*\Z")


class ImageError(ValueError):
    """An image spec that cannot be built; the message says what to fix."""


def check_name(name):
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z", name):
        raise ImageError(f"image name {name!r} must be letters, digits, '.', '_', '-' (up to 64)")
    return name


def read_host_sources(conf="/etc/apt"):
    """The host's own APT sources, ``[(path, text)]`` (one-line ``.list`` and deb822 ``.sources``)."""
    folder = os.path.join(conf, "sources.list.d")
    paths = [os.path.join(conf, "sources.list")]
    paths += sorted(os.path.join(folder, name) for name in (os.listdir(folder) if os.path.isdir(folder) else []))
    found = []
    for path in paths:
        if path.endswith((".list", ".sources")) and os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                found.append((path, handle.read()))
    return found


def read_host_aptopts(conf="/etc/apt/apt.conf.d"):
    """The host's APT settings files with ``Acquire::`` lines (proxies, ...), ``[(path, text)]``:
    images fetch as the host does. A file that also sets hooks (``Pre-Invoke``/``Post-Invoke``,
    such as appstream's refresh after ``apt update``) is left out: its commands are the host's
    programs, which the image being built does not have (a Debian 13 build failed on one)."""
    found = []
    for name in sorted(os.listdir(conf)) if os.path.isdir(conf) else []:
        path = os.path.join(conf, name)
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        if "Acquire::" in text and "Invoke" not in text:
            found.append((path, text))
    return found


def packages_for(extra):
    """The image's package list: the base set and *extra*, sorted, each name checked."""
    wanted = set(BASE_PACKAGES)
    for name in extra or []:
        _names.check_package_name(name, "package", ImageError)
        wanted.add(name)
    return sorted(wanted)


def image_key(suite, packages, sources, aptopts=(), disk_size=None):
    """A digest naming what the image is built from: a changed package list or source rebuilds it.
    *disk_size* (a VM disk image of that size) is part of it; a folder image's key leaves it out."""
    what = {"format": FORMAT, "suite": suite, "packages": sorted(packages),
            "sources": list(sources), "aptopts": list(aptopts)}
    if disk_size is not None:
        what["disk"] = disk_size
    data = json.dumps(what, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def sources_text(sources, host_codename, suite):
    """What mmdebstrap reads as its sources on standard input (mirror ``-``): the host's own,
    deb822 when the host uses it (the two formats cannot be mixed there), the suite's codename
    in place of the host's."""
    deb822 = [text for path, text in sources if path.endswith(".sources")]
    one_line = [text for path, text in sources if path.endswith(".list")]
    if not deb822 and not one_line:
        raise ImageError("the host has no APT sources (/etc/apt/sources.list or sources.list.d): configure them first")
    text = "\n".join(deb822) if deb822 else "\n".join(one_line)
    if suite != host_codename:
        text = re.sub(rf"\b{re.escape(host_codename)}\b", suite, text)
    return text


def scratch_names(name, disk=False):
    """What a build of image *name* makes in the images folder before it publishes the image (and,
    for a tree, the image it replaces while the new one is renamed in): a run killed midway leaves
    them, and the next run, holding the image's lock, removes them."""
    if disk:
        return [f".{name}.tree"] + [f".{name}{ext}.partial" for ext in (".raw", ".vmlinuz", ".initrd.img")]
    return [f".{name}.partial", f".{name}.old"]


def mmdebstrap_argv(suite, packages, dest, aptopts=()):
    """The command that builds the image into the existing folder *dest*."""
    if not _SUITE_RE.match(suite or ""):
        raise ImageError(f"suite {suite!r} must be a codename like bookworm")
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
            f"--include={','.join(packages)}",
            '--customize-hook=chroot "$1" systemctl enable systemd-networkd',
            '--customize-hook=chroot "$1" systemctl mask systemd-networkd-wait-online',
            # an empty machine-id: each machine gets its own at first boot
            '--customize-hook=rm -f "$1"/etc/machine-id && touch "$1"/etc/machine-id']
    argv += [f"--aptopt={path}" for path in aptopts]
    return argv + [suite, dest, "-"]


def disk_size(value):
    """A VM disk image's size for ``mkfs.ext4`` (``2G``, ``512M``), checked; returns it canonical."""
    match = re.match(r"^([1-9][0-9]*)\s*([MGT])(?:I?B)?\Z", str(value).strip().upper())
    if not match:
        raise ImageError(f"disk size {value!r} must be a size like 2G or 512M")
    mib = int(match.group(1)) * {"M": 1, "G": 1024, "T": 1 << 20}[match.group(2)]
    if mib < 256:
        raise ImageError(f"disk size {value!r} is too small for a Debian root file system: give 256M or more")
    return f"{mib}M"


def boot_files(names):
    """The kernel and initrd to boot directly, from the names in an image's /boot: the newest
    ``vmlinuz-*`` and its ``initrd.img-*``; ``(None, None)`` when there is no kernel."""
    kernels = sorted((n for n in names if n.startswith("vmlinuz-")), key=_version_key)
    if not kernels:
        return None, None
    kernel = kernels[-1]
    initrd = "initrd.img-" + kernel[len("vmlinuz-"):]
    return kernel, initrd if initrd in names else None


def _version_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", name)]
