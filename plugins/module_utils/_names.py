# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule per kind of name, checked before anything is written.

A *machine name* names an nspawn machine, a VM, an instance's DNS and DHCP records and a lab
host: it is a host name and a DNS label, so it is 1-63 of ``a-z``, ``0-9`` and ``-``, not starting
or ending with ``-`` (RFC 1035, RFC 1123). A *package name* is a Debian package name (Debian Policy
5.6.1). Every check matches the whole string (``fullmatch``: a ``$`` would let a trailing newline
through) and refuses what is not a ``str``.

Standard library only, and no Ansible imports: the lab (scripts/replica_lab.py) imports this file
on its own, as it does ``_image``.
"""

from __future__ import annotations

import base64
import hashlib
import re

#: a machine name: a DNS label (RFC 1035 section 2.3.4: at most 63 characters)
MACHINE_NAME_MAX = 63
MACHINE_NAME_RULE = "1-63 lower-case letters (a-z), digits and '-', not starting or ending with '-'"
_MACHINE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: a Debian package name (Policy 5.6.1): at least two characters, lower case, starting with a
#: letter or digit
PACKAGE_NAME_RULE = "at least two of a-z, 0-9, '+', '-', '.', starting with a letter or digit"
_PACKAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
#: the longest network interface name (IFNAMSIZ - 1)
IFNAME_MAX = 15


class BadName(ValueError):
    """A name that breaks its rule; callers wrap the message in their own error class."""


def machine_name_problem(name):
    """Why *name* is not a machine name (a message without the name), or None when it is one."""
    if isinstance(name, str) and _MACHINE_NAME_RE.fullmatch(name):
        return None
    return f"must be a host name label: {MACHINE_NAME_RULE}"


def is_machine_name(name):
    return machine_name_problem(name) is None


def check_machine_name(name, what="machine name", error=BadName):
    """*name* when it is a machine name, else raise *error* (a class taking a message)."""
    problem = machine_name_problem(name)
    if problem:
        raise error(f"{what} {name!r} {problem}")
    return name


def package_name_problem(name):
    """Why *name* is not a Debian package name (a message without the name), or None."""
    if isinstance(name, str) and _PACKAGE_NAME_RE.fullmatch(name):
        return None
    return f"is not a valid Debian package name ({PACKAGE_NAME_RULE})"


def is_package_name(name):
    return package_name_problem(name) is None


def check_package_name(name, what="package", error=BadName):
    problem = package_name_problem(name)
    if problem:
        raise error(f"{what} {name!r} {problem}")
    return name


def ifname(prefix, name):
    """A network interface name for *name* (a machine name) behind *prefix*: ``PREFIXNAME`` when
    that fits in IFNAMSIZ - 1, else the prefix, the name's first characters, ``_`` and a short
    stable digest of the whole name, 15 characters in all. Distinct names give distinct
    interfaces: a machine name has no ``_``, so the two forms never meet; two long names share an
    interface only if their 30-bit digests and their first characters agree."""
    check_machine_name(name)
    whole = f"{prefix}{name}"
    if len(whole) <= IFNAME_MAX:
        return whole
    digest = base64.b32encode(hashlib.sha256(name.encode("ascii")).digest()).decode("ascii").lower()[:6]
    keep = IFNAME_MAX - len(prefix) - 1 - len(digest)
    if keep < 1:
        raise BadName(f"interface prefix {prefix!r} is too long for a name and a digest")
    return f"{prefix}{name[:keep]}_{digest}"
