# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""replica.cloud's package pipeline (replica-apt-pipeline.service, run by its timer).

Builds the packages declared in /etc/replica/apt/pipeline.json with Debian's own tools, then
publishes everything built with the replica.cloud.deb_repo module's engine (its module_utils
``_debrepo_publish``, installed beside this script and imported: the code the module runs, with
no Ansible on the host): new versions are added, unchanged ones are no change, older ones are
pruned to keep_versions, and the signed index switches atomically. Every command runs through
the collection's ``_runner.Runner`` (argument lists, ``LC_ALL=C``).

- a spec ``{name, version, architecture, description, depends, files: [{dest, content, mode}]}``
  becomes a .deb with ``dpkg-deb --build --root-owner-group`` (timestamps from SOURCE_DATE_EPOCH,
  so the same spec always gives the same bytes);
- a source ``{path}`` (a directory with a ``debian/`` tree) is built with
  ``dpkg-buildpackage -b -us -uc`` once per changelog version.

A spec or source whose version is already built is not built again: a published version never
changes (deb_repo refuses the same version with other contents). Exit status 0 on success;
what it did goes to the journal.
"""

import glob
import json
import os
import shutil
import sys

CONFIG = os.environ.get("REPLICA_APT_PIPELINE_CONFIG", "/etc/replica/apt/pipeline.json")
# the deb_repo module's engine, its rules for names and versions and the collection's command
# runner: in the replica-tools package beside this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ansible_collections.replica.cloud.plugins.module_utils import (  # noqa: E402  pylint: disable=wrong-import-position
    _debbuild, _debrepo_publish, _runner)
RUNNER = _runner.Runner()
#: what the pipeline's declaration passes on to the deb_repo engine (the module's options)
PUBLISH_OPTIONS = ("path", "suite", "components", "architectures", "origin", "label", "signing_key", "gnupg_home",
                   "keep_versions")


def log(message):
    print(message, flush=True)


strip_epoch = _debbuild.strip_epoch
check_spec = _debbuild.check_spec


def build_spec(spec, out):
    return _debbuild.build_spec(spec, out, RUNNER, log)


def build_source(source, out, work):
    path = source["path"]
    if not os.path.isfile(os.path.join(path, "debian/changelog")):
        raise RuntimeError(f"source {path} has no debian/changelog: give a directory with a debian/ tree")
    changelog = os.path.join(path, "debian/changelog")
    version = RUNNER.run(["dpkg-parsechangelog", "-l", changelog, "-S", "Version"], what=f"reading {changelog}")[1].strip()
    name = RUNNER.run(["dpkg-parsechangelog", "-l", changelog, "-S", "Source"], what=f"reading {changelog}")[1].strip()
    stamp = os.path.join(out, f"{name}_{strip_epoch(version)}.source")
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as handle:   # built before (pruned ones are gone for good)
            return [p for p in (os.path.join(out, line) for line in handle.read().split()) if os.path.exists(p)], False
    tree = os.path.join(work, name, os.path.basename(path.rstrip("/")))
    shutil.rmtree(os.path.dirname(tree), ignore_errors=True)
    shutil.copytree(path, tree, symlinks=True)
    RUNNER.run(["dpkg-buildpackage", "-b", "-us", "-uc", "--no-sign"], what=f"building source {name} {version}", cwd=tree)
    built = []
    for deb in glob.glob(os.path.join(os.path.dirname(tree), "*.deb")):
        shutil.move(deb, os.path.join(out, os.path.basename(deb)))
        built.append(os.path.basename(deb))
    shutil.rmtree(os.path.dirname(tree), ignore_errors=True)
    with open(stamp, "w", encoding="utf-8") as handle:
        handle.write("\n".join(sorted(built)) + "\n")
    log(f"built {name} {version}: {', '.join(sorted(built))}")
    return [os.path.join(out, b) for b in built], True


def publish(config, debs):
    """Publish *debs* with the deb_repo engine, as the module would with these options."""
    args = {key: config[key] for key in PUBLISH_OPTIONS if config.get(key) is not None}
    if "keep_versions" in args:
        args["keep_versions"] = int(args["keep_versions"])   # the module's type: int
    args.update(packages=sorted(debs), state="present")
    try:
        return _debrepo_publish.converge(args, RUNNER, warn=lambda message: log(f"warning: {message}"))
    except _debrepo_publish.PublishFailed as exc:   # taken back: the repository is as it was
        raise RuntimeError(f"deb_repo: {exc}") from None


def main():
    with open(CONFIG, encoding="utf-8") as handle:
        config = json.load(handle)
    specs = [check_spec(spec) for spec in config.get("specs", [])]   # all of them, before anything is built
    out = os.path.join(config["work"], "out")
    os.makedirs(out, exist_ok=True)
    debs = []
    for spec in specs:
        debs.append(build_spec(spec, out)[0])
    for source in config.get("sources", []):
        debs += build_source(source, out, os.path.join(config["work"], "src"))[0]
    if not debs:
        log("nothing declared to build")
    result = publish(config, debs)
    for verb in ("added", "removed"):
        for item in result.get(verb, []):
            log(f"{verb} {item['name']} {item['version']} {item['architecture']}")
    log(f"{config['suite']}: {len(result.get('packages', []))} packages, "
        f"{'published' if result.get('changed') else 'no change'}; signed by {result.get('fingerprint')}")
    # what keep_versions pruned from the repository is not offered again
    kept = {os.path.basename(p["filename"]) for p in result.get("packages", [])}
    for deb in glob.glob(os.path.join(out, "*.deb")):
        if os.path.basename(deb) not in kept:
            os.unlink(deb)
            log(f"pruned {os.path.basename(deb)}")


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, OSError, KeyError, ValueError, _runner.CommandError) as exc:
        print(f"replica-apt-pipeline: {exc}", file=sys.stderr)
        sys.exit(1)
