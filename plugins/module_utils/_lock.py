# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's locks (one owner for where they live, how long a run waits, and what it says)
and its crash points (where the crash-consistency tests kill a run).

A lock is an ``flock`` on a file in :data:`LOCK_DIR`, a folder only root may write (never
``/tmp``, where any user could create the file first and hold it forever). The file is never
removed (removing it would let two runs lock two different files of one name), so a first run
has no race: ``open(O_CREAT)`` without ``O_EXCL``. Who holds it is written into it (pid, what,
since when), so a run that waits too long names the holder. The kernel drops an ``flock`` when
its holder dies, ``kill -9`` included, so a crash never leaves a lock held.

Standard library only: the host tools (``replica-snapshot``, ``replica-machine``) install this
file next to themselves."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import signal
import time

#: root's own folder for every lock of the collection (under /run: gone at boot, like the holders)
LOCK_DIR = "/run/replica/locks"
#: how long a run waits for a lock by default, in seconds
WAIT = 600


#: the environment variable naming the crash point where a run kills itself (tests only)
CRASH_ENV = "REPLICA_CRASH_AT"


def crash_point(name):
    """``kill -9`` this process when :data:`CRASH_ENV` names *name*: how the tests stop a run at
    exactly the window a crash-consistency promise is about (after a copy, between a rename and
    the step that completes it). Does nothing otherwise."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(name):
    """Sleep ``REPLICA_PAUSE_SECONDS`` (default 2) when ``REPLICA_PAUSE_AT`` names *name*: how the
    concurrency tests hold a run inside the window another run must not enter. Does nothing
    otherwise."""
    if os.environ.get("REPLICA_PAUSE_AT") == name:
        time.sleep(float(os.environ.get("REPLICA_PAUSE_SECONDS", "2")))


class LockError(Exception):
    """A lock was not taken: its folder is unsafe, or its holder kept it past the wait."""


def lock_file(kind, key, folder=LOCK_DIR):
    """The lock file of *key* (a path, a name) among the locks of *kind* (``cow``, ``image``...)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", kind):
        raise ValueError(f"lock kind {kind!r}: lowercase letters, digits and '-'")
    digest = hashlib.sha256(str(key).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return os.path.join(folder, f"{kind}-{digest}.lock")


def safe_folder(folder=LOCK_DIR):
    """Make *folder* (mode 0700, root's) or check that it is still root's alone."""
    os.makedirs(folder, 0o700, exist_ok=True)
    info = os.lstat(folder)
    if os.path.islink(folder) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise LockError(f"{folder} is not a folder that only uid {os.geteuid()} may write (mode "
                        f"{oct(info.st_mode & 0o7777)}, owner {info.st_uid}): remove it and run again")
    return folder


def holder(path):
    """What the lock file says of its holder, or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(400).strip()
    except OSError:
        return ""


@contextlib.contextmanager
def held(kind, key, what, wait=WAIT, shared=False, folder=LOCK_DIR, path=None):
    """Hold the lock of *key* while the block runs; *what* (for example ``"prune /srv/data"``) is
    written into it for whoever waits. Waits up to *wait* seconds, then raises :class:`LockError`
    naming the holder. *shared* locks (readers) exclude only exclusive ones. *path* names the
    lock file instead (a thing's own lock beside it, for a thing that users other than root
    change too, such as a repository its pipeline's user publishes: such a file is made 0644,
    opened read-only where it is another user's, and not written, so the thing is unchanged)."""
    own = path is not None
    path = path or lock_file(kind, key, safe_folder(folder))
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, os.O_RDWR | flags, 0o644 if own else 0o600)
    except PermissionError:
        if not own:
            raise
        fd = os.open(path, os.O_RDONLY | flags)
    try:
        deadline = time.monotonic() + wait
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(f"{what}: {key} is locked by another run ({holder(path) or 'holder unknown'}; "
                                    f"lock {path}), waited {wait} s: let it finish, or stop it, then run "
                                    f"again") from None
                time.sleep(0.05)
        if not shared and not own:
            note = f"pid {os.getpid()}: {what}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode("utf-8", "replace"), 0)
        yield path
    finally:
        os.close(fd)
