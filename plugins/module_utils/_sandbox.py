# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partially containerized services: the systemd drop-in that hardens a packaged unit.

Pure functions only (no I/O): the service_sandbox role renders the drop-in through the
``replica.cloud.sandbox_dropin`` filter, and unit tests check the output.
"""

from __future__ import annotations

import re

#: Hardening every sandboxed service gets (the seed's immutable root, transient environment,
#: consistent logging); a profile may override single keys through ``extra``.
BASE_HARDENING = (
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("NoNewPrivileges", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("KeyringMode", "private"),
    ("DevicePolicy", "closed"),
    ("UMask", "0027"),
    ("SystemCallArchitectures", "native"),
    ("StandardOutput", "journal"),
    ("StandardError", "journal"),
)

DEFAULTS = {
    "writable": [],
    "overlays": [],
    "capabilities": [],
    "address_families": ["AF_UNIX", "AF_INET", "AF_INET6"],
    "system_call_filter": ["@system-service", "~@resources"],
    "memory_deny_write_execute": True,
    "private_network": False,
    "network_namespace_path": "",
    "extra": {},
}

_CAP_RE = re.compile(r"^CAP_[A-Z_]+\Z")
_AF_RE = re.compile(r"^(AF_[A-Z0-9]+|none)\Z")
_KEY_RE = re.compile(r"^[A-Z][A-Za-z]+\Z")


class SandboxError(ValueError):
    """A profile that cannot be turned into a drop-in; the message names the culprit."""


def _absolute(path, what):
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path or " " in path:
        raise SandboxError(f"{what} must be an absolute path without spaces, got {path!r}")
    return path


def overlay_source(name, dest, root="/etc/replica"):
    """Where the collection keeps the rendered file that is mounted read-only over *dest*."""
    _absolute(dest, "overlay path")
    if not re.match(r"^[a-z0-9][a-z0-9_.-]*\Z", name or ""):
        raise SandboxError(f"service name {name!r} must be lower case letters, digits, '.', '_', '-'")
    return f"{root}/{name}{dest}"


def merge_profile(profile):
    """The profile with defaults filled in and every value checked."""
    unknown = sorted(set(profile or {}) - set(DEFAULTS))
    if unknown:
        raise SandboxError(f"unknown sandbox profile keys: {', '.join(unknown)}")
    merged = dict(DEFAULTS, **(profile or {}))
    for path in merged["writable"]:
        _absolute(path, "writable path")
    for overlay in merged["overlays"]:
        if not isinstance(overlay, dict) or set(overlay) != {"src", "dest"}:
            raise SandboxError(f"overlay {overlay!r} must have exactly src and dest")
        _absolute(overlay["src"], "overlay src")
        _absolute(overlay["dest"], "overlay dest")
    for cap in merged["capabilities"]:
        if not _CAP_RE.match(str(cap)):
            raise SandboxError(f"capability {cap!r} is not a CAP_* name")
    for family in merged["address_families"]:
        if not _AF_RE.match(str(family)):
            raise SandboxError(f"address family {family!r} is not an AF_* name")
    if merged["private_network"] and merged["network_namespace_path"]:
        raise SandboxError("private_network and network_namespace_path exclude each other")
    if merged["network_namespace_path"]:
        _absolute(merged["network_namespace_path"], "network_namespace_path")
    for key in merged["extra"]:
        if not _KEY_RE.match(str(key)):
            raise SandboxError(f"extra key {key!r} is not a systemd [Service] setting name")
    return merged


def overlays_for(name, config):
    """The overlays for configuration files ``[{dest, ...}]`` the role renders for *name*."""
    return [{"src": overlay_source(name, item["dest"]), "dest": item["dest"]} for item in config]


def render_dropin(profile, name=None, config=(), proxies=(), state_path=None,
                  header="Managed by replica.cloud.service_sandbox"):
    """The ``[Service]`` drop-in text for *profile* (see DEFAULTS for its keys), plus read-only
    overlays for the configuration files in *config* of service *name*. Socket *proxies* put
    the service in a network namespace of its own. A shifted *state_path* (mounted from the
    service's CoW subvolume) is writable and must be mounted before the service starts."""
    profile = dict(profile or {})
    if state_path:
        _absolute(state_path, "state path")
        if state_path not in profile.get("writable", []):
            profile["writable"] = list(profile.get("writable", [])) + [state_path]
    if config:
        profile["overlays"] = list(profile.get("overlays", [])) + overlays_for(name, config)
    if proxies:
        if profile.get("network_namespace_path"):
            raise SandboxError("proxies need the service's own private network, "
                               "not network_namespace_path")
        profile["private_network"] = True
    merged = merge_profile(profile)
    settings = list(BASE_HARDENING)
    settings.append(("MemoryDenyWriteExecute", "yes" if merged["memory_deny_write_execute"] else "no"))
    settings.append(("RestrictAddressFamilies", " ".join(merged["address_families"])))
    # the empty assignment resets what the packaged unit set; an empty list drops every capability
    settings.append(("CapabilityBoundingSet", ""))
    settings.append(("CapabilityBoundingSet", " ".join(merged["capabilities"])))
    settings.append(("AmbientCapabilities", ""))
    # one line per entry: systemd reads an allow list and a "~" deny list as separate lines
    settings += [("SystemCallFilter", entry) for entry in merged["system_call_filter"]]
    settings.append(("SystemCallErrorNumber", "EPERM"))
    if merged["private_network"]:
        settings.append(("PrivateNetwork", "yes"))
    if merged["network_namespace_path"]:
        settings.append(("NetworkNamespacePath", merged["network_namespace_path"]))
    if merged["writable"]:
        settings.append(("ReadWritePaths", " ".join(merged["writable"])))
    for overlay in merged["overlays"]:
        settings.append(("BindReadOnlyPaths", f"{overlay['src']}:{overlay['dest']}"))
    overridden = {str(k) for k in merged["extra"]}
    if len(overridden) != len(merged["extra"]):
        raise SandboxError("extra has duplicate keys")
    lines = [f"# {header}"]
    if state_path:
        lines += ["[Unit]", f"RequiresMountsFor={state_path}", ""]
    lines += ["[Service]"]
    lines += [f"{key}={value}" for key, value in settings if key not in overridden]
    lines += [f"{key}={_value(value)}" for key, value in sorted(merged["extra"].items())]
    return "\n".join(lines) + "\n"


def _value(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


_ENDPOINT_RE = re.compile(r"^(/[^\s]+|(\[[0-9a-fA-F:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):[0-9]{1,5})\Z")
SOCKET_PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"


def _endpoint(value, what):
    if not isinstance(value, str) or not _ENDPOINT_RE.match(value):
        raise SandboxError(f"{what} {value!r} must be ADDRESS:PORT, [IPv6]:PORT or an absolute "
                           "UNIX socket path")
    return value


def proxy_units(unit, name, proxies, header="Managed by replica.cloud.service_sandbox"):
    """Unit files that carry each ``{listen, target}`` of *proxies* from the host into the
    service's private network namespace: a socket unit listening on the host, and a
    ``systemd-socket-proxyd`` service joined to the service's namespace (JoinsNamespaceOf=).
    Returns ``{file name: content}``."""
    overlay_source(name, "/")  # validates the name
    units = {}
    for index, proxy in enumerate(proxies):
        if not isinstance(proxy, dict) or set(proxy) != {"listen", "target"}:
            raise SandboxError(f"proxy {proxy!r} must have exactly listen and target")
        listen = _endpoint(proxy["listen"], "proxy listen")
        target = _endpoint(proxy["target"], "proxy target")
        base = f"replica-proxy-{name}-{index}"
        units[f"{base}.socket"] = (
            f"# {header}\n[Unit]\nDescription=Host side of {unit} ({listen})\n"
            "\n"
            f"[Socket]\nListenStream={listen}\n\n[Install]\nWantedBy=sockets.target\n")
        units[f"{base}.service"] = (
            f"# {header}\n[Unit]\nDescription=Proxy {listen} into {unit}'s network namespace\n"
            f"Requires={unit} {base}.socket\nAfter={unit} {base}.socket\n"
            f"JoinsNamespaceOf={unit}\n\n"
            f"[Service]\nExecStart={SOCKET_PROXYD} {target}\n"
            "PrivateNetwork=yes\nDynamicUser=yes\n"
            + "".join(f"{k}={v}\n" for k, v in BASE_HARDENING if k not in ("UMask",))
            + "CapabilityBoundingSet=\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"
            "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\n"
            "MemoryDenyWriteExecute=yes\n")
    return units


_UNESCAPED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def escape_path(path):
    """``systemd-escape --path``: the unit name stem systemd expects for a mount at *path*."""
    _absolute(path, "path")
    parts = [part for part in path.split("/") if part]
    if not parts:
        return "-"
    out = []
    for index, char in enumerate("/".join(parts)):
        if char == "/":
            out.append("-")
        elif char in _UNESCAPED and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def state_mount_unit(unit, path, subvolume, header="Managed by replica.cloud.service_sandbox"):
    """The mount unit that shows the service's CoW *subvolume* at its state directory *path*
    (a bind mount, visible to the whole host so that the package's own tools see the live
    state). Returns ``{file name: content}``."""
    _absolute(path, "state path")
    _absolute(subvolume, "state subvolume")
    if path == "/" or subvolume == "/":
        raise SandboxError("state path and subvolume must be below /")
    return {f"{escape_path(path)}.mount": (
        f"# {header}\n[Unit]\nDescription=State of {unit} on its copy-on-write subvolume\n"
        f"RequiresMountsFor={subvolume}\nBefore={unit}\n\n"
        f"[Mount]\nWhat={subvolume}\nWhere={path}\nType=none\nOptions=bind\n\n"
        "[Install]\nWantedBy=local-fs.target\n")}
