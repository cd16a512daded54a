# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud.deb_repo against reprepro and aptly: publishing N packages, then adding one more
to that repository (several times). Prints a table.

    .venv/bin/python benchmarks/deb_repo.py [--packages 1000] [--adds 5] [--json PATH]   (as root)

The same N + adds real ``.deb`` files (``dpkg-deb --build``, architecture amd64, each with a file
of its own) and the same ed25519 key (a temporary GNUPGHOME) for all three; each tool publishes
one suite, one component, amd64, signed (InRelease and Release.gpg):

* deb_repo   the module run as Ansible runs it, a process with its arguments file
             (``python plugins/modules/deb_repo.py ARGS.json``, the collection on PYTHONPATH);
             Packages, .gz, .xz, by-hash (its default) or not (a row of its own).
* reprepro   ``reprepro includedeb`` (its own database; exports Packages, .gz, .xz).
* aptly      ``aptly repo add`` then ``aptly publish repo``; the incremental add is
             ``aptly repo add`` + ``aptly publish update`` (Packages, .gz, .bz2: aptly writes no xz).

Each incremental add is timed alone (wall time of the commands); the table gives the median, min
and max. deb_repo is a module, so each of its runs pays what any module costs (Python and
ansible.module_utils.basic starting, exit_json: the last row, an AnsibleModule doing nothing);
so the adds of reprepro and aptly are also timed as a playbook runs them, through
ansible.builtin.command (``python -m ansible.modules.command ARGS.json``, one task per command). Every repository is then read by apt (a
private configuration) to check it holds N + adds packages and verifies. reprepro and aptly are installed with apt-get when missing (they are not
part of scripts/setup).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _loop import log  # noqa: E402  pylint: disable=wrong-import-position

MODULE = os.path.join(ROOT, "plugins", "modules", "deb_repo.py")
SUITE = "bench"
ARCH = "amd64"


class BenchError(RuntimeError):
    """A step that did not work; the message says which."""


def run(argv, env=None, cwd=None):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])}... failed (rc={proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def timed(argv, env=None, cwd=None):
    started = time.monotonic()
    out = run(argv, env=env, cwd=cwd)
    return time.monotonic() - started, out


def ensure_tools():
    """Install reprepro and aptly (Debian packages) when missing; the tools that are there."""
    missing = [p for p in ("reprepro", "aptly") if not shutil.which(p)]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                       capture_output=True, check=False)
    for tool, package in (("dpkg-deb", "dpkg"), ("apt-ftparchive", "apt-utils"), ("gpg", "gnupg")):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing: install {package} (scripts/setup)")
    return [t for t in ("reprepro", "aptly") if shutil.which(t)]


def version_of(tool):
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", tool], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def build_debs(where, names):
    """One small real package per name (amd64), in parallel."""
    os.makedirs(where, exist_ok=True)

    def one(name):
        tree = os.path.join(where, f".{name}")
        os.makedirs(os.path.join(tree, "DEBIAN"))
        os.makedirs(os.path.join(tree, "usr/share", name))
        with open(os.path.join(tree, "usr/share", name, "data"), "w", encoding="ascii") as handle:
            handle.write(f"{name}\n" * 50)
        with open(os.path.join(tree, "DEBIAN/control"), "w", encoding="ascii") as handle:
            handle.write(f"Package: {name}\nVersion: 1.0-1\nArchitecture: {ARCH}\nMaintainer: Bench <bench@test.invalid>\n"
                         f"Section: misc\nPriority: optional\nDepends: libc6 (>= 2.36)\n"
                         f"Description: benchmark package {name}\n A package of the deb_repo benchmark, with a long\n"
                         f" description of several lines, as real packages have.\n")
        out = os.path.join(where, f"{name}_1.0-1_{ARCH}.deb")
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", tree, out])
        shutil.rmtree(tree)
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, names))


def make_key(home):
    run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
         "deb_repo benchmark <bench@test.invalid>", "ed25519", "sign", "never"])
    listing = run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"])
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public = os.path.join(home, "public.asc")
    with open(public, "w", encoding="ascii") as handle:
        handle.write(run(["gpg", "--homedir", home, "--batch", "--export", "--armor", fingerprint]))
    return fingerprint, public


def bench_deb_repo(work, initial, adds, key, home, by_hash):
    repo = os.path.join(work, f"deb_repo-{'byhash' if by_hash else 'plain'}")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections"), LC_ALL="C")

    def module(packages, tag):
        path = os.path.join(work, f"args-{tag}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": {"path": repo, "suite": SUITE, "architectures": [ARCH],
                                               "signing_key": key, "gnupg_home": home, "packages": packages,
                                               "origin": "bench", "by_hash": by_hash}}, handle)
        took, out = timed([sys.executable, MODULE, path], env=env)
        result = json.loads(out)
        if result.get("failed") or not result.get("changed"):
            raise BenchError(f"deb_repo: {result.get('msg') or 'no change'}")
        return took

    first = module(initial, "initial")
    times = [module([deb], f"add{i}") for i, deb in enumerate(adds)]
    return repo, first, times


def floor(work, runs):
    """What any module costs here: Python and AnsibleModule starting, then exit_json (no work)."""
    path = os.path.join(work, "noop.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("from ansible.module_utils.basic import AnsibleModule\n"
                     "AnsibleModule(argument_spec={}).exit_json(changed=False)\n")
    args = os.path.join(work, "noop.json")
    with open(args, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {}}, handle)
    return [timed([sys.executable, path, args])[0] for dummy in range(runs)]


def command_task(work, argv, env, tag):
    """*argv* run as an ``ansible.builtin.command`` task runs it (the module with its arguments file)."""
    path = os.path.join(work, f"args-task-{tag}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {"argv": argv}}, handle)
    took, out = timed([sys.executable, "-m", "ansible.modules.command", path], env=env)
    result = json.loads(out)
    if result.get("failed") or result.get("rc"):
        raise BenchError(f"command task {' '.join(argv[:3])}...: {result.get('msg')} {result.get('stderr', '')[-500:]}")
    return took


def bench_reprepro(work, initial, adds, key, home, tasks=False):
    base = os.path.join(work, "reprepro-tasks" if tasks else "reprepro")
    os.makedirs(os.path.join(base, "conf"))
    with open(os.path.join(base, "conf", "distributions"), "w", encoding="ascii") as handle:
        handle.write(f"Origin: bench\nCodename: {SUITE}\nSuite: {SUITE}\nArchitectures: {ARCH}\nComponents: main\n"
                     f"SignWith: {key}\nDebIndices: Packages Release . .gz .xz\n")
    env = dict(os.environ, GNUPGHOME=home, LC_ALL="C")
    first, dummy = timed(["reprepro", "-b", base, "--silent", "includedeb", SUITE, *initial], env=env)
    if tasks:
        times = [command_task(work, ["reprepro", "-b", base, "--silent", "includedeb", SUITE, deb], env, f"r{i}")
                 for i, deb in enumerate(adds)]
    else:
        times = [timed(["reprepro", "-b", base, "--silent", "includedeb", SUITE, deb], env=env)[0] for deb in adds]
    return base, first, times


def bench_aptly(work, initial, adds, key, home, tasks=False):
    base = os.path.join(work, "aptly-tasks" if tasks else "aptly")
    config = os.path.join(work, "aptly-tasks.conf" if tasks else "aptly.conf")
    with open(config, "w", encoding="utf-8") as handle:
        json.dump({"rootDir": base, "architectures": [ARCH], "gpgProvider": "gpg", "gpgDisableSign": False,
                   "gpgDisableVerify": False, "downloadConcurrency": 1}, handle)
    env = dict(os.environ, GNUPGHOME=home, LC_ALL="C")
    aptly = ["aptly", f"-config={config}"]
    sign = [f"-gpg-key={key}", "-batch"]
    run(aptly + ["repo", "create", f"-distribution={SUITE}", "-component=main", "bench"], env=env)
    listdir = os.path.join(work, "aptly-initial-tasks" if tasks else "aptly-initial")
    os.makedirs(listdir)
    for deb in initial:
        os.link(deb, os.path.join(listdir, os.path.basename(deb)))
    started = time.monotonic()
    run(aptly + ["repo", "add", "bench", listdir], env=env)
    run(aptly + ["publish", "repo", *sign, f"-architectures={ARCH}", "-origin=bench", "bench"], env=env)
    first = time.monotonic() - started
    times = []
    for index, deb in enumerate(adds):
        if tasks:
            times.append(command_task(work, aptly + ["repo", "add", "bench", deb], env, f"a{index}")
                         + command_task(work, aptly + ["publish", "update", *sign, SUITE], env, f"p{index}"))
            continue
        started = time.monotonic()
        run(aptly + ["repo", "add", "bench", deb], env=env)
        run(aptly + ["publish", "update", *sign, SUITE], env=env)
        times.append(time.monotonic() - started)
    return os.path.join(base, "public"), first, times


def apt_count(work, repo, public, tag):
    """apt-get update from *repo* with a private configuration; the number of packages apt sees."""
    base = os.path.join(work, f"apt-{tag}")
    for sub in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(base, sub))
    with open(os.path.join(base, "status"), "w", encoding="ascii"):
        pass
    with open(os.path.join(base, "sources.list"), "w", encoding="ascii") as handle:
        handle.write(f"deb [signed-by={public}] file:{repo} {SUITE} main\n")
    options = []
    for name, value in (("Dir::Etc::SourceList", f"{base}/sources.list"), ("Dir::Etc::SourceParts", "/dev/null"),
                        ("Dir::State::Lists", f"{base}/lists"), ("Dir::Cache", f"{base}/cache"),
                        ("Dir::State::Status", f"{base}/status"), ("Dir::Etc::Trusted", "/dev/null"),
                        ("Dir::Etc::TrustedParts", "/dev/null"), ("APT::Architecture", ARCH),
                        ("APT::Sandbox::User", "root"), ("Debug::NoLocking", "1")):
        options += ["-o", f"{name}={value}"]
    proc = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "W:" in proc.stdout + proc.stderr:
        raise BenchError(f"apt-get update from {repo}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    out = run(["apt-cache", *options, "pkgnames", "bench-"])
    return len(out.split())


def table(rows, packages, adds):
    lines = [f"{'tool':<36} {'publish ' + str(packages):>14} {'add 1 (n=' + str(adds) + ') p50':>18} {'min':>9} {'max':>9}"
             f"  {'apt sees':>8}"]
    for label, first, times, seen in rows:
        lines.append(f"{label:<36} {'-' if first is None else f'{first:.3f}s':>14} {statistics.median(times):>17.3f}s "
                     f"{min(times):>8.3f}s {max(times):>8.3f}s  {seen:>8}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=1000, help="packages of the first publication (default 1000)")
    parser.add_argument("--adds", type=int, default=5, help="incremental adds of one package, each timed (default 5)")
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("must run as root (installs reprepro and aptly; apt-get with a private configuration)")
    others = ensure_tools()
    work = tempfile.mkdtemp(prefix="drb-", dir="/tmp")  # short: gpg-agent's socket lives in the GnuPG home
    home = os.path.join(work, "g")
    os.mkdir(home, 0o700)
    rows, raw = [], {}
    try:
        key, public = make_key(home)
        log(f"building {args.packages} + {args.adds} packages")
        initial = build_debs(os.path.join(work, "debs"), [f"bench-{i:05d}" for i in range(args.packages)])
        variants = [("deb_repo (by_hash, default)", lambda adds: bench_deb_repo(work, initial, adds, key, home, True)),
                    ("deb_repo (by_hash: false)", lambda adds: bench_deb_repo(work, initial, adds, key, home, False))]
        if "reprepro" in others:
            variants.append((f"reprepro {version_of('reprepro')}", lambda adds: bench_reprepro(work, initial, adds, key, home)))
            variants.append(("reprepro, as a command task", lambda adds: bench_reprepro(work, initial, adds, key, home, True)))
        if "aptly" in others:
            variants.append((f"aptly {version_of('aptly')}", lambda adds: bench_aptly(work, initial, adds, key, home)))
            variants.append(("aptly, as two command tasks", lambda adds: bench_aptly(work, initial, adds, key, home, True)))
        for index, (label, bench) in enumerate(variants):
            adds = build_debs(os.path.join(work, f"adds{index}"), [f"bench-add{index}-{i:03d}" for i in range(args.adds)])
            log(f"{label}: publishing {args.packages}, then {args.adds} adds of one")
            repo, first, times = bench(adds)
            seen = apt_count(work, repo, public, index)
            if seen != args.packages + args.adds:
                raise BenchError(f"{label}: apt sees {seen} packages, not {args.packages + args.adds}")
            rows.append((label, first, times, seen))
            raw[label] = {"publish": first, "adds": times}
        noop = floor(work, args.adds)
        rows.append(("(floor: an AnsibleModule doing nothing)", None, noop, "-"))
        raw["floor"] = {"adds": noop}
    except (BenchError, OSError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        sys.exit(1)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"deb_repo benchmark: {args.packages} packages, then {args.adds} incremental adds of one "
          f"({os.cpu_count()} CPUs; wall times)")
    print(table(rows, args.packages, args.adds))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(raw, handle, indent=2)


if __name__ == "__main__":
    main()
