#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: deb_build
short_description: Build a Debian package from a spec with dpkg-deb, reproducibly
version_added: 0.1.0
description:
  - Builds C(NAME_VERSION_ARCH.deb) in O(dest_dir) from O(spec) with C(dpkg-deb --build
    --root-owner-group), as the apt_repo package pipeline does (the same code,
    C(plugins/module_utils/_debbuild.py)) - file times from a fixed SOURCE_DATE_EPOCH, folders
    0755, so the same spec always gives the same bytes.
  - A package built already from the same spec is not built again. A changed spec that keeps
    its version is not built again either (a version, once built, never changes); the module
    warns - give it a new version.
  - Install the result with M(ansible.builtin.apt) (C(deb:)), or publish it with M(replica.cloud.deb_repo).
author: replica.cloud contributors (@replica-cloud)
requirements:
  - dpkg-deb (the dpkg package, on every Debian host) and xz-utils on the host.
options:
  spec:
    description: What the package is.
    type: dict
    required: true
    suboptions:
      name:
        description: The package name (Debian Policy 5.6.1).
        type: str
        required: true
      version:
        description: Its version.
        type: str
        required: true
      architecture:
        description: V(all), or a Debian architecture.
        type: str
        default: all
      description:
        description: Its description; the first line is the synopsis.
        type: str
      depends:
        description: C(Depends:), a list or one string.
        type: raw
      maintainer:
        description: C(Maintainer:).
        type: str
      section:
        description: C(Section:) (default V(misc)).
        type: str
      priority:
        description: C(Priority:) (default V(optional)).
        type: str
      files:
        description: The files it installs.
        type: list
        elements: dict
        default: []
        suboptions:
          dest:
            description: The absolute path the package installs the file at.
            type: str
            required: true
          content:
            description: Its text.
            type: str
            default: ""
          mode:
            description: Its mode, octal digits.
            type: str
            default: "0644"
  dest_dir:
    description: Where the C(.deb) (and its spec digest, C(.deb.spec)) are written.
    type: path
    default: /var/cache/replica/debs
attributes:
  check_mode:
    description: Says whether the package would be built; builds nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: Build the collection's own host tools as a package
  replica.cloud.deb_build:
    spec: "{{ lookup('replica.cloud.tools_package') }}"
    dest_dir: /var/cache/replica/tools
  register: tools_deb

- name: Install it
  ansible.builtin.apt:
    deb: "{{ tools_deb.deb }}"

- name: A small package of one file
  replica.cloud.deb_build:
    spec:
      name: site-motd
      version: "1.0"
      files:
        - {dest: /etc/motd, content: "Welcome\n"}
"""

RETURN = r"""
deb:
  description: The package's path.
  returned: always
  type: str
  sample: /var/cache/replica/debs/replica-tools_0.1.0+ffb711e99a64_all.deb
version:
  description: Its version.
  returned: always
  type: str
  sample: 0.1.0+ffb711e99a64
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _debbuild
from ansible_collections.replica.cloud.plugins.module_utils import _params
from ansible_collections.replica.cloud.plugins.module_utils import _runner

FILE_OPTIONS = {"dest": {"type": "str", "required": True}, "content": {"type": "str", "default": ""},
                "mode": {"type": "str", "default": "0644"}}
SPEC_OPTIONS = {
    "name": {"type": "str", "required": True}, "version": {"type": "str", "required": True},
    "architecture": {"type": "str", "default": "all"}, "description": {"type": "str"}, "depends": {"type": "raw"},
    "maintainer": {"type": "str"}, "section": {"type": "str"}, "priority": {"type": "str"},
    "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_OPTIONS},
}


def main():
    module = AnsibleModule(argument_spec={"spec": {"type": "dict", "required": True, "options": SPEC_OPTIONS},
                                          "dest_dir": {"type": "path", "default": "/var/cache/replica/debs"}},
                           supports_check_mode=True)
    spec = _params.without_none(module.params["spec"])
    out = module.params["dest_dir"]
    result = {"changed": False, "deb": "", "version": spec["version"]}
    try:
        _debbuild.check_spec(spec)
        result["deb"] = _debbuild.deb_path(spec, out)
        if module.check_mode:
            result["changed"] = not os.path.exists(result["deb"])
            module.exit_json(**result)
        os.makedirs(out, 0o755, exist_ok=True)
        result["deb"], result["changed"] = _debbuild.build_spec(spec, out, _runner.Runner(module), log=lambda message: None,
                                                                warn=module.warn)
    except (ValueError, OSError, _runner.CommandError) as exc:
        _runner.fail(module, exc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
