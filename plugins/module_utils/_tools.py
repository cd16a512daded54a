# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's own host tools as one Debian package, ``replica-tools``: what it holds and
where (the one owner of these paths).

The package holds the commands (``replica-machine``, ``replica-snapshot``, ``replica-apt-pipeline``), the Python files they
run (``tools/`` in the collection) and the module_utils those import - found by following their
imports, so a new import is packaged without anyone listing it. :func:`package_spec` turns the
collection's files into a spec for ``_debbuild`` (the package pipeline's builder): its version is
the collection's and a digest of the contents, so changed contents are a new version that apt
upgrades to, and the same contents are the same package.

Pure: the files are read through *read(relative path) -> text*; standard library only.
"""

from __future__ import annotations

import hashlib
import re

NAME = "replica-tools"
#: where the package puts its Python files (the commands insert it into sys.path)
PYTHON_DIR = "/usr/lib/replica/python"
UTILS_DIR = f"{PYTHON_DIR}/ansible_collections/replica/cloud/plugins/module_utils"
#: the commands: ``/usr/sbin/NAME`` runs ``tools/FILE`` (the collection's) with the system's Python
COMMANDS = {"replica-apt-pipeline": "replica_apt_pipeline.py", "replica-machine": "replica_machine.py",
            "replica-snapshot": "replica_snapshot.py"}
DEPENDS = ["python3 (>= 3.11)", "systemd"]
_IMPORT_LIST = re.compile(r"plugins\.module_utils import (?:\(([^)]*)\)|([\w, ]+))")
_IMPORT_FROM = re.compile(r"plugins\.module_utils\.(_\w+) import")


def command_path(command):
    return f"/usr/sbin/{command}"


def imports(text):
    """The module_utils files *text* imports (``from ...module_utils import _a, _b`` and
    ``from ...module_utils._a import x``), as file names."""
    found = set()
    for grouped, plain in _IMPORT_LIST.findall(text):
        names = re.sub(r"#[^\n]*", "", grouped) if grouped else plain   # a comment may follow the "("
        found |= {f"{n.split(' as ')[0].strip()}.py" for n in names.replace("\n", " ").split(",") if n.strip()}
    found |= {f"{n}.py" for n in _IMPORT_FROM.findall(text)}
    return found


def package_spec(read, collection_version):
    """The spec of the replica-tools package, from the collection's files read by *read*."""
    files = []
    todo, utils = [], set()
    for command, script in sorted(COMMANDS.items()):
        text = read(f"tools/{script}")
        files.append({"dest": f"{PYTHON_DIR}/{script}", "content": text, "mode": "0644"})
        files.append({"dest": command_path(command), "mode": "0755",
                      "content": f"#!/bin/sh\n# {NAME}: see {PYTHON_DIR}/{script}\n"
                                 f"exec /usr/bin/python3 {PYTHON_DIR}/{script} \"$@\"\n"})
        todo.append(text)
    while todo:
        for name in sorted(imports(todo.pop()) - utils):
            utils.add(name)
            todo.append(read(f"plugins/module_utils/{name}"))
    files += [{"dest": f"{UTILS_DIR}/{name}", "content": read(f"plugins/module_utils/{name}"), "mode": "0644"}
              for name in sorted(utils)]
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item['dest']}\0{item['mode']}\0{item['content']}\0".encode())
    return {"name": NAME, "version": f"{collection_version}+{digest.hexdigest()[:12]}", "architecture": "all",
            "depends": DEPENDS, "section": "admin",
            "description": "replica.cloud's host tools\nThe commands the collection's units run on a host "
                           "(replica-machine, replica-snapshot, replica-apt-pipeline) and the module_utils they share with its modules.",
            "files": files}
