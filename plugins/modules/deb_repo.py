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

import concurrent.futures
import contextlib
import glob
import gzip
import hashlib
import os
import shutil
import tempfile

try:
    import lzma
except ImportError:  # a Python built without liblzma: the xz tool, if any
    lzma = None

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.replica.cloud.plugins.module_utils import _debrepo as debrepo
from ansible_collections.replica.cloud.plugins.module_utils import _lock
from ansible_collections.replica.cloud.plugins.module_utils._debrepo import DebRepoError

ENV = {"LC_ALL": "C"}
#: the checksums of a package in its Packages paragraph, as in Debian's archive (MD5sum, SHA256)
PACKAGES_OPTIONS = ["-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"]
LOCK = ".deb_repo.lock"
LOCK_WAIT = 600
COMPRESSIONS = ("", ".gz", ".xz")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Tools:
    """The commands the module runs, with their errors turned into DebRepoError."""

    def __init__(self, module, gnupg_home, passphrase):
        self.module = module
        self.home = gnupg_home
        self.passphrase = passphrase
        self.paths = {}

    def path(self, name, package):
        if name not in self.paths:
            found = self.module.get_bin_path(name)
            if not found:
                raise DebRepoError(f"{name} is not installed on the target: install the Debian package {package}")
            self.paths[name] = found
        return self.paths[name]

    def run(self, argv, what, cwd=None, data=None):
        rc, out, err = self.module.run_command(argv, environ_update=ENV, cwd=cwd, data=data, binary_data=data is not None)
        if rc != 0:
            raise DebRepoError(f"{what}: {os.path.basename(argv[0])} failed (rc={rc}): {(err or out).strip()}")
        return out, err

    def gpg(self, *args):
        argv = [self.path("gpg", "gnupg"), "--batch", "--no-tty"]
        if self.home:
            argv += ["--homedir", self.home]
        return argv + list(args)

    def diagnose(self, path):
        """Why *path* is not a package apt-ftparchive could read: dpkg-deb's verdict."""
        rc, out, err = self.module.run_command([self.path("dpkg-deb", "dpkg"), "--field", path], environ_update=ENV)
        if rc != 0:
            return f"{path} is not a Debian package (.deb): dpkg-deb says: {(err or out).strip()}"
        return None

    def read_debs(self, paths):
        """The ``Packages`` paragraph of each file of *paths* (control fields, size and checksums),
        in order: one ``apt-ftparchive packages`` over a scratch folder of links to them (reading
        each file once, however many there are); a file it cannot read is refused with
        ``dpkg-deb``'s diagnosis."""
        if not paths:
            return []
        ftparchive = self.path("apt-ftparchive", "apt-utils")
        scratch = tempfile.mkdtemp(prefix="deb_repo-")
        names = {}
        try:
            for index, path in enumerate(paths):
                link = f"{index}.deb"
                os.symlink(path, os.path.join(scratch, link))
                names[link] = names[path] = names[os.path.realpath(path)] = index
            out, err = self.run([ftparchive, *PACKAGES_OPTIONS, "packages", "."], "reading the packages", cwd=scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        found = [None] * len(paths)
        for fields, raw in debrepo.parse_stanzas(out):
            name = fields.get("Filename", "")
            index = names.get(name[2:] if name.startswith("./") else name)
            if index is not None:
                found[index] = (fields, raw)
        for index, path in enumerate(paths):
            if found[index] is None or "SHA256" not in found[index][0]:
                raise DebRepoError(self.diagnose(path) or f"{path}: apt-ftparchive cannot read it: {err.strip()}")
        return found

    def key(self, wanted):
        if self.home and not os.path.isdir(self.home):
            raise DebRepoError(f"gnupg_home {self.home} does not exist (or is not a folder)")
        listing = ["--with-colons", "--fixed-list-mode", "--with-subkey-fingerprint"]
        dummy, secret, dummy = self.module.run_command(self.gpg(*listing, "--list-secret-keys", "--", wanted),
                                                       environ_update=ENV)
        public = ""
        if not debrepo.parse_keys(secret):  # not there, or only its public key: which, for the message
            dummy, public, dummy = self.module.run_command(self.gpg(*listing, "--list-keys", "--", wanted),
                                                           environ_update=ENV)
        return debrepo.signing_key(secret, public, wanted, self.home)

    def release(self, directory, settings):
        argv = [self.path("apt-ftparchive", "apt-utils")]
        for name in ("Origin", "Label", "Suite", "Codename"):
            if settings[name]:
                argv += ["-o", f"APT::FTPArchive::Release::{name}={settings[name]}"]
        argv += ["-o", f"APT::FTPArchive::Release::Architectures={' '.join(settings['architectures'])}",
                 "-o", f"APT::FTPArchive::Release::Components={' '.join(settings['Components'])}"]
        if settings["Acquire-By-Hash"]:
            argv += ["-o", "APT::FTPArchive::Release::Acquire-By-Hash=yes", "-o", "APT::FTPArchive::DoByHash=true"]
        out, dummy = self.run(argv + ["release", "."], "generating the Release file", cwd=directory)
        return debrepo.no_support_for_all(out) if "all" in settings["architectures"] else out

    def sign(self, directory, fingerprint):
        """``InRelease`` (clear-signed) and ``Release.gpg`` (detached, armored), both at once."""
        base = ["--yes", "--local-user", fingerprint, "--digest-algo", "SHA512"]
        data = None
        if self.passphrase is not None:
            base = ["--pinentry-mode", "loopback", "--passphrase-fd", "0"] + base
            data = self.passphrase.encode() + b"\n"
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(self.run, self.gpg(*base, *args, "Release"), f"signing the Release with {fingerprint}",
                                cwd=directory, data=data)
                    for args in (["--clearsign", "--output", "InRelease"],
                                 ["--armor", "--detach-sign", "--output", "Release.gpg"])]
            for job in jobs:
                job.result()


def expand(patterns):
    """The ``.deb`` files *patterns* name, in order, each once."""
    files, seen = [], set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise DebRepoError(f"packages: {pattern!r} is not a path; with state=present give .deb paths or globs")
        if not pattern.startswith("/"):
            raise DebRepoError(f"packages: {pattern} is not an absolute path (or a glob of one)")
        if any(c in pattern for c in "*?["):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                raise DebRepoError(f"packages: {pattern} matches no file")
        elif os.path.isdir(pattern):
            raise DebRepoError(f"packages: {pattern} is a folder: give its files, e.g. {os.path.join(pattern, '*.deb')}")
        elif not os.path.isfile(pattern):
            raise DebRepoError(f"packages: {pattern} does not exist")
        else:
            found = [pattern]
        for path in found:
            path = os.path.abspath(path)
            if os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                files.append(path)
    return files


class Suite:
    """What is published of one suite: the link ``dists/SUITE``, its folder, its Release and its
    packages."""

    def __init__(self, root, name):
        self.root = root
        self.name = name
        self.dists = os.path.join(root, "dists")
        self.link = os.path.join(self.dists, name)
        self.generation = None
        self.directory = None
        self.fields = None
        self.sums = {}
        self.records = []
        self.lists = {}  # (component, arch): bytes of its published Packages
        self.issuers = set()
        self.has_inrelease = False

    def version_dir(self, generation):
        return os.path.join(self.dists, f".{self.name}.{generation}")

    def other_versions(self, generation):
        """The index folders of this suite in dists other than generation *generation*'s."""
        return [self.version_dir(g) for g in self.generations() if g != generation]

    def generations(self):
        """The generation folders of this suite in dists (the published one and leftovers)."""
        prefix = f".{self.name}."
        try:
            names = os.listdir(self.dists)
        except FileNotFoundError:
            return []
        return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())

    def read(self):
        if not os.path.lexists(self.link):
            return self
        if not os.path.islink(self.link):
            raise DebRepoError(f"{self.link} is not a link made by deb_repo (another tool's suite?): use another suite "
                               f"or path, or remove it")
        target = os.readlink(self.link)
        prefix = f".{self.name}."
        if not target.startswith(prefix) or not target[len(prefix):].isdigit() or "/" in target:
            raise DebRepoError(f"{self.link} points to {target}, not to a folder deb_repo made: remove it or use another suite")
        self.generation = int(target[len(prefix):])
        self.directory = self.version_dir(self.generation)
        release = os.path.join(self.directory, "Release")
        if not os.path.isfile(release):
            raise DebRepoError(f"{release} is missing: the suite is damaged (remove {self.link} to publish it anew)")
        with open(release, encoding="utf-8") as handle:
            self.fields, self.sums = debrepo.parse_release(handle.read())
        components = self.fields.get("Components", "").split()
        architectures = self.fields.get("Architectures", "").split()
        seen = set()
        for component in components:
            for arch in architectures:
                data = read_index(os.path.join(self.directory, component, f"binary-{arch}", "Packages"))
                self.lists[(component, arch)] = data
                for record in debrepo.parse_packages(data.decode("utf-8"), component):
                    ident = (component,) + debrepo.key(record)
                    if ident not in seen:
                        seen.add(ident)
                        self.records.append(record)
        signature = os.path.join(self.directory, "Release.gpg")
        if os.path.isfile(signature):
            with open(signature, "rb") as handle:
                self.issuers = debrepo.signature_issuers(handle.read())
        self.has_inrelease = os.path.isfile(os.path.join(self.directory, "InRelease"))
        return self


def read_index(path):
    """A published ``Packages`` file (or, where only they are there, its compressed forms)."""
    for suffix, opener in (("", open), (".gz", gzip.open), (".xz", lzma.open if lzma else None)):
        if opener is not None and os.path.isfile(path + suffix):
            with opener(path + suffix, "rb") as handle:
                return handle.read()
    raise DebRepoError(f"{path} is missing: the suite is damaged (remove the dists link to publish it anew)")


def other_references(root, suite):
    """The pool files the other suites of *root* list (their ``Packages`` files' ``Filename``)."""
    dists = os.path.join(root, "dists")
    used = set()
    try:
        names = os.listdir(dists)
    except FileNotFoundError:
        return used
    for name in names:
        if name.startswith(".") or name == suite:
            continue
        for folder, dirs, files in os.walk(os.path.join(dists, name), followlinks=True):
            dirs[:] = [d for d in dirs if d != "by-hash"]
            if "Packages" in files or "Packages.gz" in files or "Packages.xz" in files:
                try:
                    text = read_index(os.path.join(folder, "Packages")).decode("utf-8", "replace")
                except (DebRepoError, OSError, EOFError):
                    continue
                used.update(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Filename:"))
    return used


class Changes:
    """The files and folders a run creates, to take them away again when it fails."""

    def __init__(self):
        self.made = []
        self.published = False

    def mkdirs(self, path):
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for folder in reversed(missing):
            os.mkdir(folder)
            os.chmod(folder, 0o755)
            self.made.append(folder)

    def track(self, path):
        self.made.append(path)

    def rollback(self):
        for path in reversed(self.made):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
            except OSError:
                pass
        self.made = []


@contextlib.contextmanager
def locked(root, exclusive):
    """Hold the repository's lock (exclusive to change it, shared to read it): ``_lock.held`` on
    C(.deb_repo.lock) in the repository (its publishers may be root or its pipeline's user). The
    folder and the lock file are made without O_EXCL and never rolled back, so a first run has no
    race and a failed one cannot delete the lock another run waits on."""
    if not exclusive and not os.path.exists(os.path.join(root, LOCK)):
        yield  # a reader (check mode) of a repository that was never published
        return
    os.makedirs(root, 0o755, exist_ok=True)
    try:
        with _lock.held("debrepo", root, f"deb_repo {'publish' if exclusive else 'read'} {root}",
                        wait=LOCK_WAIT, shared=not exclusive, path=os.path.join(root, LOCK)):
            yield
    except _lock.LockError as exc:
        raise DebRepoError(str(exc)) from None


def write_new(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def compress(data, suffix, tools):
    if suffix == ".gz":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if lzma is not None:
        # xz -6, with a dictionary no bigger than the file (the default 8 MiB only costs time and
        # the clients' memory) and the faster hc4 match finder: a third of the time, 3% bigger
        dict_size = max(1 << 16, min(1 << 23, 1 << max(0, len(data) - 1).bit_length()))
        return lzma.compress(data, format=lzma.FORMAT_XZ, filters=[
            {"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": dict_size, "mf": lzma.MF_HC4, "nice_len": 32}])
    rc, out, err = tools.module.run_command([tools.path("xz", "xz-utils"), "-6", "-c"], data=data, binary_data=True,
                                            environ_update=ENV, encoding=None)
    if rc != 0:
        raise DebRepoError(f"xz failed (rc={rc}): {err}")
    return out


def compressions(tools):
    if lzma is not None or tools.module.get_bin_path("xz"):
        return COMPRESSIONS
    return COMPRESSIONS[:2]


def expected_files(components, architectures, suffixes):
    return {f"{c}/binary-{a}/Packages{s}" for c in components for a in architectures for s in suffixes}


def place(item, root, changes, sync):
    """Copy a new package into the pool (through a temporary name in its folder)."""
    dest = os.path.join(root, item["filename"])
    if os.path.exists(dest):  # checked before: the same contents (another suite's, or a package moved back)
        return
    changes.mkdirs(os.path.dirname(dest))
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    changes.track(tmp)
    digest = hashlib.sha256()
    with open(item["source"], "rb") as src, open(tmp, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
        os.fchmod(dst.fileno(), 0o644)
        if sync:
            dst.flush()
            os.fsync(dst.fileno())
    if digest.hexdigest() != item["sha256"]:
        raise DebRepoError(f"{item['source']} changed while it was being added: run again")
    os.rename(tmp, dest)
    changes.made[-1] = dest


def write_lists(pool, suite, new_dir, after, settings, suffixes, tools):
    """Start writing the Packages files of the suite into *new_dir*: the plain ones now, the
    compressed ones in *pool*'s threads; an unchanged list is linked from the published folder,
    identical lists to each other. Returns what :func:`finish_lists` completes."""
    lists = debrepo.index_lists(after, settings["Components"], settings["architectures"])
    sources = {}  # sha256 of a list's text: {suffix: path} of its files
    jobs = []
    links = []
    for (component, arch), records in lists.items():
        folder = os.path.join(new_dir, component, f"binary-{arch}")
        os.makedirs(folder)
        data = debrepo.packages_text(records).encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        old = os.path.join(suite.directory, component, f"binary-{arch}") if suite.directory else None
        if digest not in sources and old and suite.lists.get((component, arch)) == data \
                and all(os.path.isfile(os.path.join(old, "Packages" + s)) for s in suffixes):
            sources[digest] = {s: os.path.join(old, "Packages" + s) for s in suffixes}
        if digest not in sources:
            sources[digest] = {s: os.path.join(folder, "Packages" + s) for s in suffixes}
            write_new(sources[digest][""], data)
            jobs += [(sources[digest][s], pool.submit(compress, data, s, tools)) for s in suffixes[1:]]
        links += [(sources[digest][s], os.path.join(folder, "Packages" + s)) for s in suffixes]
    return jobs, links


def finish_lists(jobs, links):
    for dest, job in jobs:
        write_new(dest, job.result())
    for src, dest in links:
        if src != dest:
            os.link(src, dest)


def sign_and_sync(tools, suite, new_dir, settings, fingerprint, sync):
    """The Release of the Packages files in *new_dir*, its signatures, and the by-hash files."""
    release = tools.release(new_dir, settings)
    write_new(os.path.join(new_dir, "Release"), release.encode("utf-8"))
    if settings["Acquire-By-Hash"] and suite.directory:
        carry_by_hash(suite, new_dir)
    tools.sign(new_dir, fingerprint)
    for folder, dummy, files in os.walk(new_dir):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, 0o644)
            if sync:
                fsync_path(path)
        if sync:
            fsync_path(folder, directory=True)


def carry_by_hash(suite, new_dir):
    """Keep the index files of the published Release reachable by hash in the new folder."""
    for algorithm in ("SHA256", "SHA512"):
        for path, (digest, dummy) in suite.sums.get(algorithm, {}).items():
            old = os.path.join(suite.directory, os.path.dirname(path), "by-hash", algorithm, digest)
            folder = os.path.join(new_dir, os.path.dirname(path))
            if not os.path.isfile(old) or not os.path.isdir(folder):
                continue
            dest = os.path.join(folder, "by-hash", algorithm, digest)
            if not os.path.exists(dest):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.link(old, dest)


def switch(suite, generation, changes):
    """Point ``dists/SUITE`` at generation *generation*, in one rename."""
    tmp = os.path.join(suite.dists, f".{suite.name}.link")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    changes.track(tmp)
    os.symlink(f".{suite.name}.{generation}", tmp)
    os.replace(tmp, suite.link)
    changes.made = []  # published: from here on nothing is taken back
    changes.published = True
    fsync_path(suite.dists, directory=True)


def clean_up(module, root, suite, generation, removed, after):
    """After the switch: the old index folders, and the pool files no suite lists any more."""
    for old in suite.other_versions(generation):
        shutil.rmtree(old, ignore_errors=True)
    if not removed:
        return
    keep = {r["filename"] for r in after} | other_references(root, suite.name)
    pool = os.path.realpath(os.path.join(root, "pool"))
    for record in removed:
        if record["filename"] in keep:
            continue
        path = os.path.realpath(os.path.join(root, record["filename"]))
        if not path.startswith(pool + os.sep):
            module.warn(f"{record['filename']} is outside the pool: not deleted")
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            module.warn(f"could not delete {path}: {exc}")
            continue
        folder = os.path.dirname(path)
        while folder.startswith(pool + os.sep) and os.path.dirname(folder) != pool:
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                break
            folder = os.path.dirname(folder)


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
    params = module.params
    root = os.path.abspath(params["path"])
    state = params["state"]
    result = {"changed": False, "packages": [], "added": [], "removed": [],
              "inrelease": os.path.join(root, "dists", params["suite"], "InRelease")}
    tools = Tools(module, params["gnupg_home"], params["passphrase"])
    changes = Changes()

    def fail(exc):
        changes.rollback()
        result["changed"] = changes.published  # taken back, unless the new index was published
        module.fail_json(msg=str(exc), **result)

    try:
        components, architectures = check_options(params)
        component = params["component"] or (components[0] if state == "present" else None)
        if component is not None and component not in components:
            raise DebRepoError(f"component {component} is not one of components {components}")
        items, specs = [], []
        files = expand(params["packages"]) if state == "present" else []
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two commands at once
            reading = pool.submit(tools.read_debs, files)
            keying = pool.submit(tools.key, params["signing_key"])
            read = reading.result()
            key = keying.result()
        if state == "present":
            for path, (fields, raw) in zip(files, read):
                item = debrepo.candidate(fields, component, fields["SHA256"], path)
                item["stanza"] = debrepo.set_field(raw, "Filename", item["filename"])
                if item["architecture"] != "all" and item["architecture"] not in architectures:
                    raise DebRepoError(f"{path} is for architecture {item['architecture']}, which is not in "
                                       f"architectures {architectures}: add it there")
                items.append(item)
        else:
            specs = [debrepo.parse_spec(spec) for spec in params["packages"]]
        result["fingerprint"] = key["fingerprint"]
        tools.path("apt-ftparchive", "apt-utils")
        suffixes = compressions(tools)
        settings = debrepo.wanted_settings(params["suite"], components, architectures, params["origin"],
                                           params["label"], params["by_hash"])
        settings["architectures"] = architectures  # in the given order, for the Release

        with locked(root, not module.check_mode):
            try:
                run(module, tools, root, params, result, items, specs, component, key, settings, suffixes, changes)
            except BaseException:
                changes.rollback()  # under the lock: another run must not see (and reuse) what goes
                raise
    except (DebRepoError, OSError) as exc:
        fail(exc)
    module.exit_json(**result)


def run(module, tools, root, params, result, items, specs, component, key, settings, suffixes, changes):
    """Read the suite (under the lock), plan, and publish when something changes."""
    state = params["state"]
    components, architectures = settings["Components"], settings["architectures"]
    suite = Suite(root, params["suite"]).read()
    debrepo.check_layout(suite.records, components, architectures)
    the_plan = debrepo.plan(suite.records, state, items, specs,
                            [component] if component and state == "absent" else None, params["keep_versions"])
    for item in the_plan["added"]:
        dest = os.path.join(root, item["filename"])
        if os.path.lexists(dest) and (not os.path.isfile(dest) or sha256_file(dest) != item["sha256"]):
            raise DebRepoError(f"{item['filename']} is already in the pool with other contents (another suite's "
                               f"{item['name']} {item['version']}?): a published version never changes; give "
                               f"{item['source']} a new version")
    for item in the_plan["skipped"]:
        module.warn(f"{item['source']} ({item['name']} {item['version']}) is not added: keep_versions="
                    f"{params['keep_versions']} keeps newer versions")
    wanted = {k: v for k, v in settings.items() if k != "architectures"}
    republish = (suite.fields is None or not suite.has_inrelease
                 or debrepo.release_settings(suite.fields) != wanted
                 or not debrepo.signed_by(suite.issuers, key["fingerprints"])
                 or set(suite.sums.get("SHA256", {})) != expected_files(components, architectures, suffixes))
    changed = bool(the_plan["added"] or the_plan["removed"] or republish)
    result.update(changed=changed, packages=[debrepo.public(r) for r in the_plan["after"]],
                  added=[debrepo.public(r) for r in the_plan["added"]],
                  removed=[debrepo.public(r) for r in the_plan["removed"]])
    if module._diff:
        result["diff"] = {"before": debrepo.listing(suite.records), "after": debrepo.listing(the_plan["after"]),
                          "before_header": f"{params['suite']} packages", "after_header": f"{params['suite']} packages"}
    if changed and not module.check_mode:
        publish(module, tools, root, suite, the_plan, settings, suffixes, key["fingerprint"], changes)
    elif not changed:
        left = leftovers(root, suite)
        if left:
            result.update(changed=True, leftovers=[os.path.relpath(p, root) for p in left])
            if not module.check_mode:
                for path in left:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)


def leftovers(root, suite):
    """What a killed publication of *suite* left, when nothing is to publish: index folders other
    than the published one and the switch's temporary link, and then (only then: a kill before
    the switch leaves an index folder too) pool files no suite lists. The next publication would
    remove the folders; a run with nothing to publish removes them too, so that a re-run after
    ``kill -9`` leaves the tree as a run that was not killed."""
    folders = suite.other_versions(suite.generation)
    link = os.path.join(suite.dists, f".{suite.name}.link")
    found = folders + ([link] if os.path.lexists(link) else [])
    if not folders:
        return found
    listed = {r["filename"] for r in suite.records} | other_references(root, suite.name)
    pool = os.path.join(root, "pool")
    for folder, dummy, files in os.walk(pool):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if rel not in listed:
                found.append(os.path.join(root, rel))
    return found


def check_options(params):
    if not debrepo.SUITE_RE.match(params["suite"]):
        raise DebRepoError(f"suite {params['suite']!r} is not a suite name (letters, digits, . + _ -)")
    components = params["components"]
    architectures = params["architectures"]
    if not components:
        raise DebRepoError("components is empty: a suite needs at least one component")
    if not architectures:
        raise DebRepoError("architectures is empty: a suite needs at least one architecture")
    for kind, names in (("component", components), ("architecture", architectures)):
        for name in names:
            if not debrepo.NAME_RE.match(name):
                raise DebRepoError(f"{kind} {name!r} is not valid (lower-case letters, digits, . + -)")
        if len(set(names)) != len(names):
            raise DebRepoError(f"{kind}s {names} lists one twice")
    for field in ("origin", "label"):
        value = params[field]
        if value is not None and (not value.isprintable() or value != value.strip()):
            raise DebRepoError(f"{field} {value!r} must be one line of printable characters, without leading or "
                               f"trailing spaces (it is a field of the Release file)")
    if params["keep_versions"] is not None and params["keep_versions"] < 1:
        raise DebRepoError("keep_versions must be 1 or more (use state=absent to remove every version)")
    return components, architectures


def publish(module, tools, root, suite, the_plan, settings, suffixes, fingerprint, changes):
    """Write the new pool files and the new index folder, switch ``dists/SUITE`` to it, then
    delete what is no longer published."""
    added = the_plan["added"]
    many = len(added) > 64  # then one syncfs of the file system instead of a fsync per file
    changes.mkdirs(os.path.join(root, "pool"))
    changes.mkdirs(suite.dists)
    generation = max(suite.generations() + [suite.generation or 0]) + 1
    new_dir = suite.version_dir(generation)
    os.mkdir(new_dir)
    changes.track(new_dir)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        jobs, links = write_lists(pool, suite, new_dir, the_plan["after"], settings, suffixes, tools)
        for item in added:  # while the lists are being compressed
            place(item, root, changes, not many)
        finish_lists(jobs, links)
    sign_and_sync(tools, suite, new_dir, settings, fingerprint, not many)
    if many:
        sync_fs(new_dir)
    for folder in {os.path.dirname(os.path.join(root, i["filename"])) for i in added}:
        fsync_path(folder, directory=True)
    _lock.crash_point("debrepo-written")
    switch(suite, generation, changes)
    _lock.crash_point("debrepo-switched")
    try:
        clean_up(module, root, suite, generation, the_plan["removed"], the_plan["after"])
    except OSError as exc:  # published all the same: say what is left over
        module.warn(f"published, but cleaning up after it failed: {exc}")


def sync_fs(path):
    """Flush the file system holding *path* (``syncfs``), or all of them where that is missing."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


if __name__ == "__main__":
    main()
