# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of ``replica.cloud.deb_repo``: Debian versions, control stanzas, pool paths and
the plan (what to add, what to remove, what conflicts). No I/O: the engine (``_debrepo_publish``)
reads the files and runs ``dpkg-deb``, ``apt-ftparchive`` and ``gpg``; everything it decides is
decided here.

A *record* is one package in a repository (or one candidate ``.deb``), a dict with ``name``,
``version``, ``architecture``, ``component``, ``filename`` (the path in the repository,
``pool/...``), ``sha256`` and, when known, ``stanza`` (its ``Packages`` paragraph, as
``apt-ftparchive`` wrote it) and ``source`` (the file a candidate comes from).
"""

from __future__ import annotations

import base64
import itertools
import re

try:  # in a module, the collection's; in the host tools, the copy installed next to them
    from ansible_collections.replica.cloud.plugins.module_utils import _names
except ImportError:  # pragma: no cover - the host tools' path
    import _names  # pylint: disable=import-error

#: the names of architectures, components and suites this module accepts
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*\Z")
SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")
_UPSTREAM_RE = re.compile(r"^[A-Za-z0-9.+~:-]+\Z")
_REVISION_RE = re.compile(r"^[A-Za-z0-9.+~]+\Z")
#: a package to remove: NAME, NAME:ARCH, NAME=VERSION or NAME:ARCH=VERSION (apt's syntax)
_SPEC_RE = re.compile(r"^(?P<name>[^:=\s]+)(?::(?P<architecture>[^=\s]+))?(?:=(?P<version>\S+))?\Z")


class DebRepoError(Exception):
    """Something the user has to fix; the message says what."""


# --- Debian versions (dpkg's lib/dpkg/version.c and parsehelp.c) ---------------------------

def parse_version(text):
    """``(epoch, upstream, revision)`` of a Debian version, as dpkg splits it: the epoch before
    the first ``:`` (0 when none), the revision after the last ``-`` ("" when none). Raises
    ValueError for what dpkg refuses (empty, bad epoch, empty parts, characters not allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("version string is empty")
    version = text.strip()
    if any(c.isspace() for c in version):
        raise ValueError(f"version {text!r} has embedded spaces")
    epoch = 0
    if ":" in version:
        head, version = version.split(":", 1)
        if not head:
            raise ValueError(f"version {text!r}: epoch is empty")
        if not head.isdigit() or not head.isascii():
            raise ValueError(f"version {text!r}: epoch is not a number")
        epoch = int(head)
        if epoch > 2147483647:
            raise ValueError(f"version {text!r}: epoch is too big")
        if not version:
            raise ValueError(f"version {text!r}: nothing after the colon in the version number")
    revision = ""
    if "-" in version:
        version, revision = version.rsplit("-", 1)
        if not revision:
            raise ValueError(f"version {text!r}: revision number is empty")
        if not _REVISION_RE.match(revision):
            raise ValueError(f"version {text!r}: invalid character in revision number")
    if not version:
        raise ValueError(f"version {text!r}: upstream version is empty")
    if not version[0].isdigit():
        raise ValueError(f"version {text!r}: version number does not start with a digit")
    if not _UPSTREAM_RE.match(version):
        raise ValueError(f"version {text!r}: invalid character in version number")
    return epoch, version, revision


def _order(char):
    """dpkg's ``order()``: ``~`` sorts before everything, even the end of the part; letters
    before the other characters."""
    if char.isdigit():
        return 0
    if char.isalpha() and char.isascii():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _verrevcmp(left, right):
    """dpkg's ``verrevcmp()``: alternate non-digit parts (compared by :func:`_order`, char by
    char) and digit parts (compared as numbers). Returns <0, 0 or >0."""
    i = j = 0
    len_a, len_b = len(left), len(right)
    while i < len_a or j < len_b:
        while (i < len_a and not left[i].isdigit()) or (j < len_b and not right[j].isdigit()):
            ac = _order(left[i]) if i < len_a else 0
            bc = _order(right[j]) if j < len_b else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len_a and left[i] == "0":
            i += 1
        while j < len_b and right[j] == "0":
            j += 1
        first_diff = 0
        while i < len_a and j < len_b and left[i].isdigit() and right[j].isdigit():
            if not first_diff:
                first_diff = ord(left[i]) - ord(right[j])
            i += 1
            j += 1
        if i < len_a and left[i].isdigit():
            return 1
        if j < len_b and right[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def compare_versions(left, right):
    """-1, 0 or 1 as ``dpkg --compare-versions LEFT lt|eq|gt RIGHT``: epoch, then upstream,
    then revision."""
    ea, ua, ra = parse_version(left)
    eb, ub, rb = parse_version(right)
    if ea != eb:
        return -1 if ea < eb else 1
    result = _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
    return (result > 0) - (result < 0)


def sort_versions(versions, newest_first=False):
    """*versions* in Debian order (oldest first, or newest first)."""
    ordered = list(versions)
    # insertion into a sorted list: the lists are short (one package's versions)
    result = []
    for version in ordered:
        pos = len(result)
        while pos > 0 and compare_versions(result[pos - 1], version) > 0:
            pos -= 1
        result.insert(pos, version)
    return result[::-1] if newest_first else result


def strip_epoch(version):
    """The version without its epoch, as in the ``.deb`` file names of an archive."""
    return version.split(":", 1)[1] if ":" in version else version


# --- control data -----------------------------------------------------------------------------

def parse_stanzas(text):
    """The paragraphs of a control file (``Packages``, ``Release``, ``dpkg-deb -f``): a list of
    ``(fields, raw)``, *fields* a dict of field name to value (continuation lines joined with
    ``\\n``, as written after the first line), *raw* the paragraph's text (ending in one ``\\n``)."""
    result = []
    fields, lines, last = {}, [], None
    for line in text.splitlines():
        if not line.strip():
            if lines:
                result.append((fields, "\n".join(lines) + "\n"))
            fields, lines, last = {}, [], None
            continue
        lines.append(line)
        if line[0] in " \t":
            if last is None:
                raise DebRepoError(f"continuation line before any field: {line!r}")
            fields[last] += "\n" + line
            continue
        if line.startswith("#") and not fields:
            lines.pop()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name:
            raise DebRepoError(f"not a control field: {line!r}")
        last = name
        fields[name] = value.strip()
    if lines:
        result.append((fields, "\n".join(lines) + "\n"))
    return result


def set_field(raw, name, value):
    """Paragraph *raw* with field *name* (a one-line field) set to *value*, in its place (or at
    the end when it has none)."""
    lines = raw.rstrip("\n").split("\n")
    for index, line in enumerate(lines):
        if line.split(":", 1)[0] == name and not line[:1].isspace():
            lines[index] = f"{name}: {value}"
            end = index + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end]:
                end += 1
            del lines[index + 1:end]
            break
    else:
        lines.append(f"{name}: {value}")
    return "\n".join(lines) + "\n"


def parse_control(text):
    """The fields of a single paragraph (``dpkg-deb -f FILE``'s output)."""
    stanzas = parse_stanzas(text)
    if len(stanzas) != 1:
        raise DebRepoError(f"expected one control paragraph, found {len(stanzas)}")
    return stanzas[0][0]


def source_name(fields):
    """The source package of a binary package's control *fields*: ``Source`` without the
    ``(version)`` it may carry, else the package's own name."""
    source = fields.get("Source", "").split("(")[0].strip()
    return source or fields["Package"]


def pool_prefix(source):
    """The pool folder of a source package: ``libX`` for ``lib*`` sources, its first letter
    otherwise (dak's ``poolify``)."""
    return source[:4] if source.startswith("lib") else source[:1]


def deb_filename(name, version, architecture):
    """An archive's name for a ``.deb``: ``NAME_VERSION_ARCH.deb``, the version without its epoch."""
    return f"{name}_{strip_epoch(version)}_{architecture}.deb"


def pool_path(component, source, name, version, architecture):
    """``pool/COMPONENT/PREFIX/SOURCE/NAME_VERSION_ARCH.deb``, as Debian lays out its archive."""
    return f"pool/{component}/{pool_prefix(source)}/{source}/{deb_filename(name, version, architecture)}"


def candidate(fields, component, sha256, source_file=""):
    """The record of a ``.deb`` to add from its control *fields* (``dpkg-deb -f``), checked."""
    name = fields.get("Package", "")
    version = fields.get("Version", "")
    arch = fields.get("Architecture", "")
    where = f" ({source_file})" if source_file else ""
    if not _names.is_package_name(name):
        raise DebRepoError(f"package name {name!r}{where} {_names.package_name_problem(name)}")
    try:
        parse_version(version)
    except ValueError as exc:
        raise DebRepoError(f"{name}{where}: {exc}") from None
    if not NAME_RE.match(arch):
        raise DebRepoError(f"{name} {version}{where}: invalid architecture {arch!r}")
    source = source_name(fields)
    if not _names.is_package_name(source):
        raise DebRepoError(f"{name} {version}{where}: source package name {source!r} {_names.package_name_problem(source)}")
    return {"name": name, "version": version, "architecture": arch, "component": component,
            "filename": pool_path(component, source, name, version, arch), "sha256": sha256,
            "source": source_file}


def record_from_stanza(fields, raw, component):
    """The record of one paragraph of a published ``Packages`` file."""
    try:
        return {"name": fields["Package"], "version": fields["Version"], "architecture": fields["Architecture"],
                "component": component, "filename": fields["Filename"], "sha256": fields.get("SHA256", ""),
                "stanza": raw}
    except KeyError as exc:
        raise DebRepoError(f"a paragraph of the {component} Packages file has no {exc.args[0]} field") from None


_RECORD_FIELD_RE = re.compile(r"^(Package|Version|Architecture|Filename|SHA256):[ \t]*(.*?)[ \t]*$", re.M)
_PARAGRAPH_RE = re.compile(r"\n(?:[ \t]*\n)+")


def parse_packages(text, component):
    """The records of a published ``Packages`` file of *component* (each with its paragraph,
    kept as it is): a quicker :func:`parse_stanzas` that reads only the fields it needs."""
    records = []
    for raw in _PARAGRAPH_RE.split(text):
        raw = raw.strip(" \t\n")
        if not raw:
            continue
        fields = dict(_RECORD_FIELD_RE.findall(raw))
        records.append(record_from_stanza(fields, raw + "\n", component))
    return records


def key(record):
    """What identifies a package in a suite: name, version, architecture."""
    return record["name"], record["version"], record["architecture"]


def public(record):
    """A record as the module returns it."""
    return {k: record[k] for k in ("name", "version", "architecture", "component", "filename", "sha256")}


def sort_records(records):
    """*records* ordered by component, name, architecture, then Debian version (oldest first)."""
    groups = {}
    for record in records:
        groups.setdefault((record["component"], record["name"], record["architecture"]), []).append(record)
    result = []
    for group in sorted(groups):
        items = groups[group]
        if len(items) > 1:
            order = {v: i for i, v in enumerate(sort_versions({r["version"] for r in items}))}
            items = sorted(items, key=lambda r: order[r["version"]])
        result.extend(items)
    return result


# --- the plan -------------------------------------------------------------------------------

def decide(current, item):
    """What adding *item* to a suite holding *current* (records) means: ``("add", None)``,
    ``("same", record)`` (this package with these contents is there: no change) or
    ``("conflict", message)``."""
    for record in current:
        if key(record) != key(item):
            continue
        if record["component"] != item["component"]:
            return ("conflict", f"{item['name']} {item['version']} ({item['architecture']}) is already in component "
                                f"{record['component']} of this suite: remove it there first (state=absent, "
                                f"component={record['component']}) to move it to {item['component']}")
        if record["sha256"] == item["sha256"]:
            return ("same", record)
        return ("conflict", f"{item['name']} {item['version']} ({item['architecture']}) is already in the repository "
                            f"with different contents (sha256 {record['sha256']}, {item.get('source') or 'the new file'} "
                            f"has {item['sha256']}): a published version never changes; give the new build a new "
                            f"version (e.g. {item['version']}+1)")
    return ("add", None)


def parse_spec(text):
    """A package to remove, in apt's syntax: ``NAME``, ``NAME:ARCH``, ``NAME=VERSION``,
    ``NAME:ARCH=VERSION``; a dict ``{name, version, architecture}`` is accepted too. Returns
    ``{"name", "architecture", "version"}`` (None where any matches)."""
    if isinstance(text, dict):
        unknown = set(text) - {"name", "version", "architecture"}
        if unknown or not text.get("name"):
            raise DebRepoError(f"package to remove {text!r}: a dict needs name, and may have version and "
                               f"architecture (not {', '.join(sorted(unknown))})" if unknown else
                               f"package to remove {text!r}: a dict needs name")
        spec = {"name": str(text["name"]), "architecture": text.get("architecture"), "version": text.get("version")}
        spec = {k: (str(v) if v is not None else None) for k, v in spec.items()}
    else:
        if not str(text).isprintable():
            raise DebRepoError(f"package to remove {text!r} has a newline or another control character")
        match = _SPEC_RE.match(str(text).strip())
        if not match:
            raise DebRepoError(f"package to remove {text!r}: write NAME, NAME=VERSION, NAME:ARCH or NAME:ARCH=VERSION")
        spec = match.groupdict()
    for key, value in spec.items():
        if value is not None and (not value or value != value.strip() or not value.isprintable()):
            raise DebRepoError(f"package to remove {text!r}: its {key} {value!r} is empty or has spaces or "
                               f"control characters")
    if not _names.is_package_name(spec["name"]):
        raise DebRepoError(f"package to remove {text!r}: name {spec['name']!r} {_names.package_name_problem(spec['name'])}")
    if spec["version"] is not None:
        try:
            parse_version(spec["version"])
        except ValueError as exc:
            raise DebRepoError(f"package to remove {text!r}: {exc}") from None
    if spec["architecture"] is not None and not NAME_RE.match(spec["architecture"]):
        raise DebRepoError(f"package to remove {text!r}: {spec['architecture']!r} is not an architecture")
    return spec


def matches(spec, record):
    """Whether *record* is a package *spec* (:func:`parse_spec`) names; versions compare as
    Debian versions (``1:1.0`` is not ``1.0``, ``1.0`` is ``0:1.0``)."""
    if record["name"] != spec["name"]:
        return False
    if spec["architecture"] is not None and record["architecture"] != spec["architecture"]:
        return False
    return spec["version"] is None or compare_versions(record["version"], spec["version"]) == 0


def prune(records, keep):
    """``(kept, pruned)``: of each package (component, name, architecture), the *keep* newest
    versions are kept."""
    if keep is None:
        return list(records), []
    groups = {}
    for record in records:
        groups.setdefault((record["component"], record["name"], record["architecture"]), []).append(record)
    doomed = set()
    for items in groups.values():
        if len(items) <= keep:
            continue
        newest = sort_versions({r["version"] for r in items}, newest_first=True)[:keep]
        doomed.update(id(r) for r in items if r["version"] not in newest)
    kept = [r for r in records if id(r) not in doomed]
    return kept, [r for r in records if id(r) in doomed]


def plan(current, state, items=(), specs=(), components=None, keep=None):
    """The new contents of a suite holding *current*: ``{"after", "added", "removed", "same",
    "skipped"}`` (records; *skipped* those added and pruned at once). *items* are the candidates
    of O(state=present), *specs* the packages to remove of O(state=absent), restricted to
    *components* (None: all). Raises DebRepoError for a conflict."""
    after = list(current)
    added, same, skipped = [], [], []
    if state == "present":
        by_key, there = {}, {}
        for record in current:
            there.setdefault(key(record), []).append(record)
        for item in items:
            other = by_key.get(key(item))
            if other is not None:
                if other["sha256"] != item["sha256"] or other["component"] != item["component"]:
                    raise DebRepoError(f"{item['name']} {item['version']} ({item['architecture']}) is given twice "
                                       f"with different contents: {other.get('source')} and {item.get('source')}")
                continue
            by_key[key(item)] = item
            verdict, detail = decide(there.get(key(item), []), item)
            if verdict == "conflict":
                raise DebRepoError(detail)
            if verdict == "same":
                same.append(detail)
                continue
            after.append(item)
            added.append(item)
    else:
        after = [r for r in current
                 if not (components is None or r["component"] in components) or not any(matches(s, r) for s in specs)]
    paths = {}
    for record in after:
        other = paths.get(record["filename"])
        if other is not None and other["sha256"] != record["sha256"]:
            raise DebRepoError(f"{record['name']} {record['version']} ({record['architecture']}) would be "
                               f"{record['filename']}, the file of {other['name']} {other['version']} "
                               f"({other['architecture']}) with other contents: their versions differ only by the epoch")
        paths[record["filename"]] = record
    after, pruned = prune(after, keep)
    pruned_ids = {id(r) for r in pruned}
    skipped = [r for r in added if id(r) in pruned_ids]
    added = [r for r in added if id(r) not in pruned_ids]
    kept_ids = {id(r) for r in after}
    removed = [r for r in current if id(r) not in kept_ids]
    return {"after": sort_records(after), "added": sort_records(added), "removed": sort_records(removed),
            "same": same, "skipped": skipped}


def index_lists(records, components, architectures):
    """The ``Packages`` lists of a suite: ``{(component, arch): [records]}`` for each component
    and architecture. A package of architecture ``all`` is in every architecture's list (and in
    ``binary-all`` when ``all`` is one of *architectures*), as in Debian's archive."""
    real = [a for a in architectures if a != "all"]
    lists = {(c, a): [] for c in components for a in architectures}
    for record in sort_records(records):
        arch = record["architecture"]
        targets = (real + (["all"] if "all" in architectures else [])) if arch == "all" else [arch]
        for target in targets:
            lists[(record["component"], target)].append(record)
    return lists


def packages_text(records):
    """A ``Packages`` file: the records' paragraphs, each followed by an empty line."""
    return "".join(r["stanza"].rstrip("\n") + "\n\n" for r in records)


def check_layout(records, components, architectures):
    """Raise DebRepoError when *records* (the repository's, or the candidates) have a component or
    architecture the suite will not publish."""
    for record in records:
        where = f"{record['name']} {record['version']} ({record['architecture']})"
        if record["component"] not in components:
            raise DebRepoError(f"{where} is in component {record['component']}, which is not in components "
                               f"{components}: add it, or first remove its packages (state=absent)")
        if record["architecture"] != "all" and record["architecture"] not in architectures:
            raise DebRepoError(f"{where}: architecture {record['architecture']} is not in architectures "
                               f"{architectures}: add it (or remove such packages first, with state=absent)")


def listing(records):
    """The text of a package list for a diff: one ``COMPONENT NAME VERSION ARCH`` line each."""
    return "".join(f"{r['component']} {r['name']} {r['version']} {r['architecture']}\n" for r in sort_records(records))


# --- Release ----------------------------------------------------------------------------------

def parse_release(text):
    """The fields of a ``Release`` file, and its checksums: ``(fields, {"SHA256": {path: (hash,
    size)}, ...})``."""
    stanzas = parse_stanzas(text)
    if not stanzas:
        raise DebRepoError("the Release file is empty")
    fields = dict(stanzas[0][0])
    sums = {}
    for name in ("MD5Sum", "SHA1", "SHA256", "SHA512"):
        if name not in fields:
            continue
        entries = {}
        for line in fields.pop(name).splitlines():
            parts = line.split()
            if len(parts) == 3:
                entries[parts[2]] = (parts[0], int(parts[1]))
        sums[name] = entries
    return fields, sums


def no_support_for_all(release):
    """*release* (``apt-ftparchive release``'s output) with ``No-Support-for-Architecture-all:
    Packages`` after its ``Architectures``, as in Debian's archive: the packages of architecture
    ``all`` are in each architecture's ``Packages`` too, so apt need not fetch ``binary-all``
    (which is there for the clients that want it)."""
    lines = release.split("\n")
    for index, line in enumerate(lines):
        if line.startswith("Architectures:"):
            lines.insert(index + 1, "No-Support-for-Architecture-all: Packages")
            break
    return "\n".join(lines)


def release_settings(fields):
    """What of a Release file the module's options decide, to compare with :func:`wanted_settings`."""
    return {"Origin": fields.get("Origin"), "Label": fields.get("Label"), "Suite": fields.get("Suite"),
            "Codename": fields.get("Codename"), "Architectures": sorted(fields.get("Architectures", "").split()),
            "Components": fields.get("Components", "").split(),
            "Acquire-By-Hash": fields.get("Acquire-By-Hash", "no").lower() == "yes"}


def wanted_settings(suite, components, architectures, origin=None, label=None, by_hash=False):
    """The Release fields the options ask for (as :func:`release_settings` reads them)."""
    return {"Origin": origin or None, "Label": label or None, "Suite": suite, "Codename": suite,
            "Architectures": sorted(architectures), "Components": list(components), "Acquire-By-Hash": bool(by_hash)}


def dearmor(data):
    """The binary packets of an ASCII-armored OpenPGP block (the data itself when not armored)."""
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return data
    lines = data.decode("ascii", "replace").splitlines()
    body, started, in_headers = [], False, False
    for line in lines:
        line = line.strip()
        if line.startswith("-----BEGIN PGP"):
            started, in_headers = True, True
            continue
        if not started:
            continue
        if line.startswith("-----END PGP"):
            break
        if in_headers:
            if not line:
                in_headers = False
            elif ":" not in line:  # no headers at all
                in_headers = False
                body.append(line)
            continue
        if line.startswith("="):  # the CRC-24 line
            break
        body.append(line)
    try:
        return base64.b64decode("".join(body), validate=True)
    except ValueError:
        return b""


def _packets(data):
    """``(tag, body)`` of each OpenPGP packet of *data* (RFC 4880 section 4.2)."""
    pos = 0
    while pos < len(data):
        head = data[pos]
        pos += 1
        if not head & 0x80:
            return
        if head & 0x40:  # new format
            tag = head & 0x3F
            first = data[pos]
            if first < 192:
                length, pos = first, pos + 1
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 1:pos + 5], "big"), pos + 5
            else:  # partial lengths: not in a signature
                return
        else:
            tag, kind = (head >> 2) & 0x0F, head & 0x03
            if kind == 3:
                length = len(data) - pos
            else:
                size = (1, 2, 4)[kind]
                length, pos = int.from_bytes(data[pos:pos + size], "big"), pos + size
        if pos + length > len(data):  # cut short
            return
        yield tag, data[pos:pos + length]
        pos += length


def _subpackets(area):
    pos = 0
    while pos < len(area):
        first = area[pos]
        if first < 192:
            length, pos = first, pos + 1
        elif first < 255:
            length, pos = ((first - 192) << 8) + area[pos + 1] + 192, pos + 2
        else:
            length, pos = int.from_bytes(area[pos + 1:pos + 5], "big"), pos + 5
        if length == 0:
            return
        yield area[pos] & 0x7F, area[pos + 1:pos + length]
        pos += length


def signature_issuers(data):
    """Key ids and fingerprints (upper-case hex) of the issuers of the signatures in *data* (an
    OpenPGP signature, armored or not, such as ``Release.gpg``): from the issuer fingerprint
    (subpacket 33) and issuer key id (16) subpackets of version 4 to 6 signatures, the key id of
    version 3 ones. Unreadable data has none."""
    found = set()
    try:
        for tag, body in _packets(dearmor(data)):
            if tag != 2 or not body:
                continue
            version = body[0]
            if version == 3 and len(body) >= 15:
                found.add(body[7:15].hex().upper())
                continue
            if version not in (4, 5, 6):
                continue
            size = 4 if version == 6 else 2
            pos = 4
            hashed_len = int.from_bytes(body[pos:pos + size], "big")
            hashed = body[pos + size:pos + size + hashed_len]
            pos += size + hashed_len
            unhashed_len = int.from_bytes(body[pos:pos + size], "big")
            unhashed = body[pos + size:pos + size + unhashed_len]
            for kind, value in itertools.chain(_subpackets(hashed), _subpackets(unhashed)):
                if kind == 33 and len(value) in (21, 33):  # key version, then 20 (v4) or 32 (v5, v6) bytes
                    found.add(value[1:].hex().upper())
                elif kind == 16 and len(value) == 8:
                    found.add(value.hex().upper())
    except IndexError:
        pass
    return found


def signed_by(issuers, fingerprints):
    """Whether a signature with *issuers* comes from a key with one of *fingerprints* (primary
    key and subkeys); a bare key id matches a fingerprint's last 16 digits."""
    if not issuers:
        return False
    fingerprints = {f.upper() for f in fingerprints}
    ids = {f[-16:] for f in fingerprints}
    return all(i in fingerprints or (len(i) == 16 and i in ids) for i in issuers)


def parse_keys(text):
    """The keys of ``gpg --with-colons --list-(secret-)keys`` output: a list of dicts with
    ``fingerprint`` (of the primary key), ``fingerprints`` (primary and subkeys), ``validity``,
    ``capabilities`` (of the whole key), ``secret`` (has secret material to sign with),
    ``uids``."""
    keys = []
    current = None
    last = None
    for line in text.splitlines():
        cols = line.split(":")
        kind = cols[0]
        if kind in ("pub", "sec"):
            current = {"fingerprint": None, "fingerprints": [], "validity": cols[1] if len(cols) > 1 else "",
                       "capabilities": cols[11] if len(cols) > 11 else "", "secret": False, "uids": [],
                       "signing_secret": False}
            if kind == "sec":
                current["secret"] = len(cols) <= 14 or cols[14] != "#"  # "#": only a stub here
                current["signing_secret"] = current["secret"] and "s" in current["capabilities"]
            keys.append(current)
            last = kind
        elif kind in ("sub", "ssb") and current is not None:
            last = kind
            if kind == "ssb":
                usable = len(cols) <= 14 or cols[14] != "#"
                caps = cols[11] if len(cols) > 11 else ""
                valid = cols[1] not in ("e", "r", "d", "i", "n") if len(cols) > 1 else True
                if usable and "s" in caps and valid:
                    current["signing_secret"] = True
        elif kind == "fpr" and current is not None and len(cols) > 9:
            if last in ("pub", "sec") and current["fingerprint"] is None:
                current["fingerprint"] = cols[9].upper()
            current["fingerprints"].append(cols[9].upper())
        elif kind == "uid" and current is not None and len(cols) > 9:
            current["uids"].append(cols[9])
    return keys


def signing_key(secret_text, public_text, wanted, home):
    """The fingerprint of the key *wanted* (id, fingerprint or user id) from ``gpg --with-colons``
    listings of the secret and the public keys, checked: present, one key, has a secret key, can
    sign, neither expired nor revoked. Raises DebRepoError saying what to fix."""
    where = f"GnuPG home {home}" if home else "the default GnuPG home"
    secret = parse_keys(secret_text)
    if not secret:
        if parse_keys(public_text):
            raise DebRepoError(f"signing_key {wanted} is in {where} but its secret key is not: import the secret key "
                               f"(gpg --homedir ... --import) to sign with it")
        raise DebRepoError(f"signing_key {wanted} is not in {where}: import it (gpg --import), or check gnupg_home "
                           f"and the key id (gpg --list-secret-keys)")
    if len(secret) > 1:
        raise DebRepoError(f"signing_key {wanted} matches {len(secret)} keys in {where} "
                           f"({', '.join(k['fingerprint'] or '?' for k in secret)}): give the full fingerprint")
    found = secret[0]
    if found["validity"] in ("e", "r", "d"):
        state = {"e": "expired", "r": "revoked", "d": "disabled"}[found["validity"]]
        raise DebRepoError(f"signing_key {wanted} ({found['fingerprint']}) is {state}")
    if "S" not in found["capabilities"] or not found["signing_secret"]:
        raise DebRepoError(f"signing_key {wanted} ({found['fingerprint']}) has no usable secret key that can sign "
                           f"(capabilities {found['capabilities'] or 'none'}): add a signing subkey or use another key")
    return found
