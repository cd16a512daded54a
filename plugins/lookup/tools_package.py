# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: tools_package
short_description: The spec of the replica-tools Debian package, from this collection's own files
version_added: 0.1.0
author: replica.cloud contributors (@replica-cloud)
description:
  - "Returns one spec C({name, version, architecture, depends, description, files}) for
    M(replica.cloud.deb_build) or the apt_repo package pipeline (C(apt_repo_specs)): the host
    tools (C(replica-machine), C(replica-snapshot)), the Python files they run and the module_utils
    they import, read from the collection this plugin belongs to (C(plugins/module_utils/_tools.py)
    says what goes where)."
  - "Its version is the collection's version and a digest of the contents (C(0.1.0+1a2b3c4d5e6f)):
    other contents are a newer version."
options: {}
"""

EXAMPLES = r"""
- name: Build replica-tools on the host
  replica.cloud.deb_build:
    spec: "{{ lookup('replica.cloud.tools_package') }}"
    dest_dir: /var/cache/replica/tools
"""

RETURN = r"""
_raw:
  description: The package's spec (one element).
  type: list
  elements: dict
"""

import json
import os

import yaml

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.replica.cloud.plugins.module_utils import _tools

COLLECTION = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def collection_version():
    """The version in galaxy.yml (a checkout) or MANIFEST.json (an installed collection)."""
    manifest = os.path.join(COLLECTION, "MANIFEST.json")
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as handle:
            return json.load(handle)["collection_info"]["version"]
    with open(os.path.join(COLLECTION, "galaxy.yml"), encoding="utf-8") as handle:
        return str(yaml.safe_load(handle)["version"])


def read(relative):
    with open(os.path.join(COLLECTION, relative), encoding="utf-8") as handle:
        return handle.read()


class LookupModule(LookupBase):
    """replica.cloud.tools_package"""

    def run(self, terms, variables=None, **kwargs):
        try:
            return [_tools.package_spec(read, collection_version())]
        except (OSError, KeyError, ValueError) as exc:
            raise AnsibleLookupError(f"the replica-tools package cannot be made from {COLLECTION}: {exc}") from exc
