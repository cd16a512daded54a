#!/usr/bin/python
# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: deb_repo
short_description: A signed Debian package repository (an apt archive) on the file system
version_added: 0.1.0
description:
  - Keeps a Debian repository under O(path), in the layout of Debian's own archive, that apt
    accepts as it is (no C([trusted=yes]), no flags), for a C(deb [signed-by=KEY.asc]
    http://HOST/REPO SUITE COMPONENT) line or a C(file:) URI.
  - "Packages live in C(pool/COMPONENT/PREFIX/SOURCE/NAME_VERSION_ARCH.deb) (PREFIX the source's
    first letter, or C(libX) for C(lib*) sources; the version without its epoch). The index of
    a suite is C(dists/SUITE/): C(COMPONENT/binary-ARCH/Packages), C(Packages.gz) and
    C(Packages.xz) (each package's paragraph written by C(apt-ftparchive packages), with its
    MD5sum and SHA256 as in Debian's archive), C(Release) with MD5Sum, SHA1, SHA256 and SHA512
    checksums (C(apt-ftparchive release)), and its signatures by O(signing_key): C(InRelease)
    (clear-signed) and C(Release.gpg) (detached, armored)."
  - O(state=present) adds the O(packages) files to O(component). A package is identified by its
    name, version and architecture; one that is there with the same contents is no change, one
    that is there with other contents is an error (a published version never changes; build it
    with a new version). O(state=absent) removes the packages O(packages) names. O(keep_versions)
    then prunes the older versions of each package.
  - "Publishing is atomic: the new C(dists/SUITE) is built beside the old one, in
    C(dists/.SUITE.N), and C(dists/SUITE), a symbolic link, is switched to it with one
    C(rename). New pool files are written before the switch, the files of removed packages
    deleted after it (unless another suite of O(path) still lists them). A client sees the old
    or the new index, never a mix; with O(by_hash) (the default) the previous index files stay
    reachable by their hashes, so a client that read the old C(InRelease) just before the switch
    still gets the files it lists. A lock (C(.deb_repo.lock), an C(flock); made without a race
    and never rolled back) keeps two runs from interleaving; a run waits up to 600 s, then fails
    naming the holder. Killed at any point (C(kill -9)), clients still see
    the old or the new index (the switch is one rename) and a re-run converges: it publishes what
    the killed run did not, or, when nothing is left to publish, removes what the killed run left
    (index folders other than the published one, and the pool files no suite lists), returned
    as RV(leftovers)."
  - Nothing is written when nothing changes, and after an error the repository is exactly as it
    was.
  - Each package's C(Packages) paragraph is generated once, when it is added (one
    C(apt-ftparchive packages) run reads all the new files; a file it cannot read is refused with
    C(dpkg-deb)'s diagnosis), and taken over from the published C(Packages) file afterwards, so
    adding one package to a large repository does not read the others' files again.
author: replica.cloud contributors (@replica-cloud)
requirements:
  - "On the host: dpkg (dpkg-deb), apt-utils (apt-ftparchive), gpg and gpgconf; xz-utils where Python has no lzma."
options:
  path:
    description: The repository's root (what a web server serves, or a C(file:) URI names). Created if missing.
    type: path
    required: true
  suite:
    description:
      - The suite (distribution) to publish, C(dists/SUITE) (for instance V(bookworm)); the
        C(Suite) and C(Codename) of its Release. Several suites can share one O(path) and its pool.
    type: str
    required: true
  components:
    description:
      - The components of O(suite), the first being the default O(component). A component that
        still holds packages cannot be dropped from the list (remove its packages first).
    type: list
    elements: str
    default: [main]
  architectures:
    description:
      - The architectures O(suite) publishes, one C(binary-ARCH/Packages) each. A package of
        architecture C(all) is listed for every architecture (as in Debian's archive), and in
        C(binary-all) too when V(all) is in the list. A package of an architecture not in the
        list is refused.
      - The default suits amd64 machines; add V(arm64) and others as needed.
    type: list
    elements: str
    default: [amd64, all]
  component:
    description:
      - The component the O(packages) go into with O(state=present); the first of O(components)
        when omitted.
      - With O(state=absent), the component to remove them from; all of them when omitted.
    type: str
  origin:
    description: The C(Origin) field of the Release (what apt pinning and C(unattended-upgrades) match on); none when omitted.
    type: str
  label:
    description: The C(Label) field of the Release; none when omitted.
    type: str
  signing_key:
    description:
      - The GnuPG key that signs the Release, a key id or (better) its fingerprint. Its secret key
        must be in O(gnupg_home), able to sign, neither expired nor revoked. Clients need its
        public key (C(gpg --export --armor KEY)) in the source's C(signed-by).
      - A suite signed by another key is signed again (a change).
    type: str
    required: true
  gnupg_home:
    description: The GnuPG home holding O(signing_key); gpg's default (C(GNUPGHOME), or C(~/.gnupg)) when omitted.
    type: path
  passphrase:
    description: The passphrase of O(signing_key), if it has one (given to gpg with C(--pinentry-mode loopback)).
    type: str
  packages:
    description:
      - With O(state=present), C(.deb) files to add, as absolute paths or shell-style globs
        (C(/srv/build/*.deb));
        a glob that matches nothing, a file that does not exist or is not a Debian package
        (C(dpkg-deb) cannot read it) is an error.
      - With O(state=absent), the packages to remove, as apt writes them, C(NAME), C(NAME=VERSION),
        C(NAME:ARCH) or C(NAME:ARCH=VERSION) (C(hello), C(hello=2.10-3), C(hello:amd64=2.10-3)),
        or as dicts with C(name) and optionally C(version) and C(architecture). A version
        compares as Debian versions (V(1.0) is V(0:1.0)). Naming a package that is not there is no
        change.
      - An empty list (the default) publishes the suite (with no package, the first time) and
        applies O(keep_versions).
    type: list
    elements: raw
    default: []
  state:
    description:
      - V(present) - the O(packages) files are in the repository.
      - V(absent) - the packages O(packages) names are not.
    type: str
    choices: [present, absent]
    default: present
  keep_versions:
    description:
      - Keep only the newest N versions of each package (per name, architecture and component,
        in Debian's version order); the older ones are removed from the index and their files
        from the pool. All versions are kept when omitted.
      - A package added by this run and older than the N kept ones is not added (with a warning).
    type: int
  by_hash:
    description:
      - Also publish each index file under C(by-hash/SHA256/HASH) and C(by-hash/SHA512/HASH) and
        say so in the Release (C(Acquire-By-Hash) yes), keeping the previous publication's files
        there too; apt (1.1 and later) then fetches indexes by hash, which is what makes an update
        that overlaps a publication consistent.
    type: bool
    default: true
notes:
  - Needs C(dpkg-deb) (dpkg), C(apt-ftparchive) (apt-utils) and C(gpg) (gnupg) on the target;
    Python's standard library only. C(Packages.xz) is written when Python has C(lzma) or C(xz) is
    installed.
  - A package removed or pruned is gone from the pool at once; a client still working from the
    index published before may get a 404 for it (run C(apt-get update) again).
  - gpg starts a C(gpg-agent) for O(gnupg_home), which stays running (as after any use of gpg).
  - Hidden names in O(path) (C(.deb_repo.lock)) and in C(dists) (C(.SUITE.N)) belong to the
    module; C(dists/SUITE) made by another tool (a folder, not a link) is refused.
seealso:
  - name: Debian repository format
    description: The layout and the Release fields apt expects.
    link: https://wiki.debian.org/DebianRepository/Format
attributes:
  check_mode:
    description: Reports what would be added and removed (and the resulting package list), and writes nothing.
    support: full
  diff_mode:
    description: Shows the suite's packages (C(COMPONENT NAME VERSION ARCH) lines) before and after.
    support: full
  platform:
    description: Debian and its derivatives (where dpkg-deb, apt-ftparchive and gpg are packaged).
    support: full
    platforms: debian
"""

EXAMPLES = r"""
- name: Publish our packages for bookworm, signed by the archive key
  replica.cloud.deb_repo:
    path: /srv/apt
    suite: bookworm
    origin: replica.cloud
    label: replica.cloud internal
    signing_key: 0123456789ABCDEF0123456789ABCDEF01234567
    gnupg_home: /etc/replica/archive-gnupg
    packages:
      - /srv/build/out/*.deb
    keep_versions: 3

- name: Two components, amd64 and arm64
  replica.cloud.deb_repo:
    path: /srv/apt
    suite: bookworm
    components: [main, contrib]
    architectures: [amd64, arm64, all]
    component: contrib
    signing_key: 0123456789ABCDEF0123456789ABCDEF01234567
    gnupg_home: /etc/replica/archive-gnupg
    packages: [/srv/build/out/tool_1.2-1_arm64.deb, /srv/build/out/tool_1.2-1_amd64.deb]

- name: Withdraw a broken build, and every version of another package
  replica.cloud.deb_repo:
    path: /srv/apt
    suite: bookworm
    signing_key: 0123456789ABCDEF0123456789ABCDEF01234567
    gnupg_home: /etc/replica/archive-gnupg
    state: absent
    packages:
      - hello=2.10-3
      - {name: tool, architecture: amd64}
      - oldthing

- name: The client side
  ansible.builtin.deb822_repository:
    name: replica
    uris: https://apt.example.org/
    suites: bookworm
    components: main
    signed_by: https://apt.example.org/archive-key.asc
"""

RETURN = r"""
packages:
  description: The suite's packages after the run (what it would be, in check mode), by component, name, architecture and version.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The package's name.
      type: str
    version:
      description: Its version.
      type: str
    architecture:
      description: Its architecture (C(all) for architecture-independent packages).
      type: str
    component:
      description: Its component.
      type: str
    filename:
      description: Its file, relative to O(path).
      type: str
    sha256:
      description: The SHA-256 of its file.
      type: str
  sample:
    - {name: hello, version: 2.10-3, architecture: amd64, component: main,
       filename: pool/main/h/hello/hello_2.10-3_amd64.deb, sha256: 5c1a0d5e1a4b1c5f0e0c2f6bb9d2c1e8a9f1b6d7e3c4a5b6c7d8e9f0a1b2c3d4}
added:
  description: The packages this run added (or would add), as in RV(packages).
  returned: always
  type: list
  elements: dict
removed:
  description: The packages this run removed or pruned (or would), as in RV(packages).
  returned: always
  type: list
  elements: dict
leftovers:
  description: What a killed run had left (paths relative to O(path)), removed by this run, which had nothing else to publish.
  returned: when there were some
  type: list
  elements: str
  sample: [dists/.bookworm.3, pool/main/h/hello/hello_1.0-1_all.deb]
inrelease:
  description: The path of the suite's signed C(InRelease).
  returned: always
  type: str
  sample: /srv/apt/dists/bookworm/InRelease
fingerprint:
  description: The full fingerprint of O(signing_key)'s primary key.
  returned: when the key was found
  type: str
  sample: 0123456789ABCDEF0123456789ABCDEF01234567
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _debrepo_publish as engine
from ansible_collections.replica.cloud.plugins.module_utils import _runner


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "suite": {"type": "str", "required": True},
            "components": {"type": "list", "elements": "str", "default": ["main"]},
            "architectures": {"type": "list", "elements": "str", "default": ["amd64", "all"]},
            "component": {"type": "str"},
            "origin": {"type": "str"},
            "label": {"type": "str"},
            "signing_key": {"type": "str", "required": True, "no_log": False},
            "gnupg_home": {"type": "path"},
            "passphrase": {"type": "str", "no_log": True},
            "packages": {"type": "list", "elements": "raw", "default": []},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "keep_versions": {"type": "int"},
            "by_hash": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    try:
        result = engine.converge(module.params, _runner.Runner(module), diff=module._diff, warn=module.warn)
    except engine.PublishFailed as exc:  # taken back already; its command's fields when a command failed
        _runner.fail(module, exc.cause, **exc.result)
    else:
        module.exit_json(**result)


if __name__ == "__main__":
    main()
