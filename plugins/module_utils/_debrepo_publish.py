# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The publishing engine of ``replica.cloud.deb_repo``: the I/O half of the module (the pure half,
versions, stanzas and the plan, is :mod:`_debrepo`). It reads the suite under the repository's
lock, runs ``apt-ftparchive``, ``dpkg-deb``, ``gpg`` (and ``xz`` where Python has no ``lzma``)
through a :class:`_runner.Runner`, writes the pool files and the new index folder (``Packages``,
``Release``, ``InRelease``, ``Release.gpg``, the by-hash files), switches ``dists/SUITE`` to it in
one rename, then prunes what is no longer published; a run killed at any point leaves what the
next run removes (:func:`leftovers`). The crash points ``debrepo-written`` and
``debrepo-switched`` (:func:`_lock.crash_point`) are where the tests kill it.

:func:`converge` is the entry point: the options as the module's ``argument_spec`` gives them,
a runner (check mode is the runner's), and returns the module's result; it raises
:class:`PublishFailed` (its ``cause`` the original error, its ``result`` what the module returns
with the failure) after taking back what the run made.

Standard library only, and no Ansible imports: the module and the apt_repo role's package
pipeline (``replica_apt_pipeline.py``, which installs this file beside the others) share it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
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

try:  # in a module, the collection's; in the host tools, the copy installed next to them
    from ansible_collections.replica.cloud.plugins.module_utils import _debrepo as debrepo
    from ansible_collections.replica.cloud.plugins.module_utils import _journal, _lock, _runner
except ImportError:  # pragma: no cover - the host tools' path
    import _debrepo as debrepo  # pylint: disable=import-error
    import _journal  # pylint: disable=import-error
    import _lock  # pylint: disable=import-error
    import _runner  # pylint: disable=import-error

DebRepoError = debrepo.DebRepoError

#: the checksums of a package in its Packages paragraph, as in Debian's archive (MD5sum, SHA256)
PACKAGES_OPTIONS = ["-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"]
LOCK = ".deb_repo.lock"
LOCK_WAIT = 600
COMPRESSIONS = ("", ".gz", ".xz")
#: the options of ``replica.cloud.deb_repo`` that have defaults (its argument_spec's), for callers
#: other than the module (the package pipeline), which may leave them out
DEFAULTS = {"components": ["main"], "architectures": ["amd64", "all"], "component": None, "origin": None,
            "label": None, "gnupg_home": None, "passphrase": None, "packages": [], "state": "present",
            "keep_versions": None, "by_hash": True}


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
    """The commands the engine runs, through *runner* (a :class:`_runner.Runner`): a failed one
    raises :class:`_runner.CommandError`, a missing tool :class:`_runner.ToolMissing`; the
    runner's check mode is the run's."""

    def __init__(self, runner, gnupg_home, passphrase):
        self.runner = runner
        self.home = gnupg_home
        self.passphrase = passphrase
        self.paths = {}

    @property
    def check_mode(self):
        return self.runner.check_mode

    def path(self, name, package):
        if name not in self.paths:
            self.paths[name] = self.runner.bin(name, package)
        return self.paths[name]

    def has(self, name):
        """Whether *name* is installed (without failing when it is not)."""
        return bool(self.runner.bin(name, required=False))

    def run(self, argv, what, cwd=None, data=None, change=False):
        """``(stdout, stderr)`` of *argv*; *change* for a command that writes (never in check mode)."""
        command = self.runner.change if change else self.runner.run
        dummy, out, err = command(argv, what=f"{what}: {os.path.basename(argv[0])}", cwd=cwd, data=data)
        return out, err

    def gpg(self, *args):
        argv = [self.path("gpg", "gnupg"), "--batch", "--no-tty"]
        if self.home:
            argv += ["--homedir", self.home]
        return argv + list(args)

    def diagnose(self, path):
        """Why *path* is not a package apt-ftparchive could read: dpkg-deb's verdict."""
        rc, out, err = self.runner.run([self.path("dpkg-deb", "dpkg"), "--field", path], check=False)
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
        dummy, secret, dummy = self.runner.run(self.gpg(*listing, "--list-secret-keys", "--", wanted), check=False)
        public = ""
        if not debrepo.parse_keys(secret):  # not there, or only its public key: which, for the message
            dummy, public, dummy = self.runner.run(self.gpg(*listing, "--list-keys", "--", wanted), check=False)
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
            data = self.passphrase + "\n"
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(self.run, self.gpg(*base, *args, "Release"), f"signing the Release with {fingerprint}",
                                cwd=directory, data=data, change=True)
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
        self.journal = _journal.Journal()
        self.published = False

    def mkdirs(self, path):
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for folder in reversed(missing):
            os.mkdir(folder)
            os.chmod(folder, 0o755)
            self.track(folder)

    def track(self, path):
        """*path* was made by this run: a failure takes it away."""
        self.journal.record(f"making {path}", functools.partial(self._take_away, path))

    @staticmethod
    def _take_away(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)

    def rollback(self):
        """Take away what this run made, newest first; returns what could not be."""
        return self.journal.rollback()


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
    dummy, out, dummy = tools.runner.run([tools.path("xz", "xz-utils"), "-6", "-c"], what="compressing Packages: xz",
                                         data=data, binary=True)
    return out


def compressions(tools):
    if lzma is not None or tools.has("xz"):
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
    changes.track(dest)   # the temporary name it was tracked by is gone


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
    changes.journal.forget()  # published: from here on nothing is taken back
    changes.published = True
    fsync_path(suite.dists, directory=True)


def clean_up(warn, root, suite, generation, removed, after):
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
            warn(f"{record['filename']} is outside the pool: not deleted")
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            warn(f"could not delete {path}: {exc}")
            continue
        folder = os.path.dirname(path)
        while folder.startswith(pool + os.sep) and os.path.dirname(folder) != pool:
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                break
            folder = os.path.dirname(folder)


class PublishFailed(DebRepoError):
    """A run that failed, after taking back what it made: *cause* is the error (a
    :class:`DebRepoError`, a :class:`_runner.CommandError` or an ``OSError``; the message is its
    own), *result* what the module returns with it (``changed`` true only when the new index was
    published before the failure)."""

    def __init__(self, cause, result):
        super().__init__(str(cause))
        self.cause = cause
        self.result = result


def converge(params, runner, diff=False, warn=None):
    """Make the repository what *params* (the module's options) say; returns the module's result.
    *runner* (a :class:`_runner.Runner`) runs the commands and says whether this is check mode;
    *diff* adds the ``diff`` of the suite's package listing; *warn* takes each warning (by
    default they go to the result's ``warnings``). Raises :class:`PublishFailed`."""
    params = dict({k: list(v) if isinstance(v, list) else v for k, v in DEFAULTS.items()}, **params)
    root = os.path.abspath(params["path"])
    state = params["state"]
    result = {"changed": False, "packages": [], "added": [], "removed": [],
              "inrelease": os.path.join(root, "dists", params["suite"], "InRelease")}
    if warn is None:
        def warn(message):
            result.setdefault("warnings", []).append(message)
    tools = Tools(runner, params["gnupg_home"], params["passphrase"])
    changes = Changes()
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

        with locked(root, not tools.check_mode):
            try:
                apply(tools, warn, diff, root, params, result, items, specs, component, key, settings, suffixes,
                      changes)
            except BaseException:
                changes.rollback()  # under the lock: another run must not see (and reuse) what goes
                raise
    except (DebRepoError, _runner.CommandError, OSError) as exc:
        changes.rollback()
        result["changed"] = changes.published  # taken back, unless the new index was published
        raise PublishFailed(exc, result) from exc
    return result


def apply(tools, warn, diff, root, params, result, items, specs, component, key, settings, suffixes, changes):
    """Read the suite (under the lock), plan, and publish when something changes (not in check
    mode); *result* gets what :func:`converge` returns."""
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
        warn(f"{item['source']} ({item['name']} {item['version']}) is not added: keep_versions="
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
    if diff:
        result["diff"] = {"before": debrepo.listing(suite.records), "after": debrepo.listing(the_plan["after"]),
                          "before_header": f"{params['suite']} packages", "after_header": f"{params['suite']} packages"}
    if changed and not tools.check_mode:
        publish(warn, tools, root, suite, the_plan, settings, suffixes, key["fingerprint"], changes)
    elif not changed:
        left = leftovers(root, suite)
        if left:
            result.update(changed=True, leftovers=[os.path.relpath(p, root) for p in left])
            if not tools.check_mode:
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


def publish(warn, tools, root, suite, the_plan, settings, suffixes, fingerprint, changes):
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
        clean_up(warn, root, suite, generation, the_plan["removed"], the_plan["after"])
    except OSError as exc:  # published all the same: say what is left over
        warn(f"published, but cleaning up after it failed: {exc}")


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
