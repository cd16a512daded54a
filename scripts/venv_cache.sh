# shellcheck shell=bash
# Sourced by scripts/setup and scripts/sanity: virtual environments in a machine-wide cache,
# outside the checkout, so that a fresh clone (CI) does not build them again.
#
#   $REPLICA_CACHE/venv-KEY           a symlink, made (renamed into place) only once the build is
#                                     complete: a killed build never leaves a half venv there
#   $REPLICA_CACHE/venv-KEY.build.X   the venv itself; it keeps its name, since a venv cannot be
#                                     moved (its scripts' shebangs hold its path)
#   $REPLICA_CACHE/venv-KEY.lock      flock'd while building, so two checkouts do not collide
#
# KEY is the first 16 hex digits of the sha256 of what decides the venv's content (venv_key).

venv_cache=${REPLICA_CACHE:-/var/cache/replica-cloud}

# venv_key PYTHON TEXT: the key of a venv of PYTHON whose content TEXT decides
venv_key() {
  local id
  id=$("$1" -c 'import os, platform, sys
print(platform.python_implementation(), platform.python_version(), os.path.realpath(sys.executable))')
  printf '%s\n%s\n' "$id" "$2" | sha256sum | cut -c1-16
}

# venv_cached LINK KEY PYTHON BUILD [ARG...]: make LINK a symlink to the cached venv KEY, first
# building it (if it is not there) with "PYTHON -m venv", then "BUILD ARG... VENV_DIR"
venv_cached() {
  local link=$1 key=$2 python=$3
  shift 3
  local entry="$venv_cache/venv-$key"
  if [[ ! -L $entry || ! -x $entry/bin/python ]]; then
    mkdir -p "$venv_cache"
    (
      flock 9
      if [[ -L $entry && -x $entry/bin/python ]]; then exit 0; fi   # another checkout built it
      local old tmp
      for old in "$entry".build.*; do     # killed builds, or a broken venv under this key
        if [[ -e $old ]]; then rm -rf "$old"; fi
      done
      tmp=$(mktemp -d "$entry.build.XXXXXX")
      trap 'rm -rf "$tmp"' EXIT
      chmod 755 "$tmp"
      echo "venv: building $entry"
      "$python" -m venv "$tmp"
      "$@" "$tmp"
      ln -sfn "${tmp##*/}" "$entry.new"
      mv -Tf "$entry.new" "$entry"
      trap - EXIT
    ) 9>"$entry.lock"
  fi
  if [[ -L $link && "$(readlink "$link")" == "$entry" ]]; then return 0; fi
  [[ -L $link || ! -e $link ]] || rm -rf "$link"   # a folder of its own, out of date
  ln -sfn "$entry" "$link.new.$$"
  mv -Tf "$link.new.$$" "$link"
}

# venv_locked KEY CMD [ARG...]: run CMD holding the cached venv KEY's lock
venv_locked() {
  local key=$1
  shift
  mkdir -p "$venv_cache"
  ( flock 9; "$@" ) 9>"$venv_cache/venv-$key.lock"
}
