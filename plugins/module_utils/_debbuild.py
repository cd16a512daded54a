# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a Debian package from a spec with Debian's own ``dpkg-deb``: the package pipeline's
builder (replica-apt-pipeline) and the ``deb_build`` module's, one implementation.

A spec is ``{name, version, architecture, description, depends, maintainer, section, priority,
files: [{dest, content, mode}]}``. Its package is reproducible: file times from
SOURCE_DATE_EPOCH (:data:`EPOCH`), root-owned, folders 0755, so the same spec always gives the same
bytes. A spec whose package is built already is not built again (a stamp beside the ``.deb``
holds the spec's digest).

Standard library only, and no Ansible imports: the host pipeline imports this file beside the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

try:  # in a module, the collection's; in the host tools, the copy installed next to them
    from ansible_collections.replica.cloud.plugins.module_utils import _debrepo, _names
except ImportError:  # pragma: no cover - the host tools' path
    import _debrepo  # pylint: disable=import-error
    import _names  # pylint: disable=import-error

EPOCH = "1700000000"   # fixed build time: identical specs give identical packages


def strip_epoch(version):
    """The version as a .deb's file name has it (no epoch)."""
    return version.split(":", 1)[1] if ":" in version else version


def check_spec(spec):
    """A spec's name, version and architecture go into its control file and its file name: each
    is checked before anything is built (a newline would add control fields, a '/' leave the
    output folder)."""
    if not isinstance(spec, dict):
        raise ValueError(f"spec {spec!r} must be a mapping {{name, version, ...}}")
    name = spec.get("name")
    _names.check_package_name(name, "spec name", ValueError)
    version = spec.get("version")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool) or str(version) != str(version).strip():
        raise ValueError(f"spec {name}: version {version!r} must be a Debian version without spaces")
    try:
        _debrepo.parse_version(str(version))
    except ValueError as exc:
        raise ValueError(f"spec {name}: {exc}") from None
    arch = spec.get("architecture", "all")
    if not isinstance(arch, str) or not _debrepo.NAME_RE.match(arch):
        raise ValueError(f"spec {name}: architecture {arch!r} must be lower-case letters, digits, . + -")
    for field in ("maintainer", "section", "priority", "depends"):
        values = spec.get(field) if isinstance(spec.get(field), list) else [spec.get(field)]
        if any(value is not None and not str(value).isprintable() for value in values):
            raise ValueError(f"spec {name}: {field} {spec.get(field)!r} has a newline or another control character")
    for item in spec.get("files", []):
        dest = item.get("dest") if isinstance(item, dict) else None
        if (not isinstance(dest, str) or not dest.startswith("/") or ".." in dest.split("/")
                or not dest.isprintable() or dest.rstrip("/") == ""):
            raise ValueError(f"spec {name}: file dest {dest!r} must be an absolute path without '..' or control characters")
    return spec


def deb_path(spec, out):
    """Where the package of *spec* (checked) is built in *out*."""
    return os.path.join(out, f"{spec['name']}_{strip_epoch(str(spec['version']))}_{spec.get('architecture', 'all')}.deb")


def build_spec(spec, out, runner, log, warn=None):
    """Build the package of *spec* (checked by :func:`check_spec`) in *out*; returns ``(path,
    built)``. *log* is told what was built, *warn* (default *log*) of a changed spec that kept its
    version."""
    name, version = spec["name"], str(spec["version"])
    arch = spec.get("architecture", "all")
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    deb = deb_path(spec, out)
    stamp = deb + ".spec"
    if os.path.exists(deb):
        with open(stamp, encoding="ascii") as handle:
            if handle.read().strip() != digest:
                (warn or log)(f"spec {name} {version}: changed but kept its version; the published package "
                              f"stays (give it a new version to publish the change)")
        return deb, False
    with tempfile.TemporaryDirectory(dir=out) as root:
        os.makedirs(os.path.join(root, "DEBIAN"))
        control = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}",
                   f"Maintainer: {spec.get('maintainer', 'replica.cloud package pipeline <root@localhost>')}",
                   f"Section: {spec.get('section', 'misc')}", f"Priority: {spec.get('priority', 'optional')}"]
        if spec.get("depends"):
            depends = spec["depends"]
            control.append(f"Depends: {', '.join(depends) if isinstance(depends, list) else depends}")
        description = str(spec.get("description", f"{name}, built by the replica.cloud package pipeline")).strip()
        first, _nl, rest = description.partition("\n")
        control.append(f"Description: {first}")
        control += [f" {line}" if line.strip() else " ." for line in rest.splitlines()]
        with open(os.path.join(root, "DEBIAN/control"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(control) + "\n")
        for item in spec.get("files", []):
            dest = os.path.join(root, item["dest"].lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w", encoding="utf-8") as handle:
                handle.write(item.get("content", ""))
            os.chmod(dest, int(str(item.get("mode", "0644")), 8))
        os.chmod(os.path.join(root, "DEBIAN/control"), 0o644)
        for directory, dirs, files in os.walk(root):
            os.chmod(directory, 0o755)   # whatever the service's umask: a package's folders are 0755
            for entry in dirs + files + ["."]:
                os.utime(os.path.join(directory, entry), (int(EPOCH), int(EPOCH)), follow_symlinks=False)
        runner.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb], what=f"building spec {name} {version}",
                   env={"SOURCE_DATE_EPOCH": EPOCH})
    with open(stamp, "w", encoding="ascii") as handle:
        handle.write(digest + "\n")
    log(f"built {os.path.basename(deb)}")
    return deb, True
