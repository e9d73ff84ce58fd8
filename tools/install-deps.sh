#!/usr/bin/env bash
# Installs the system packages flotilla's build needs, and only those that are
# missing. Run by `make test` and `make demo`; safe to run again.
#
# Required:
# - clang + libclang-dev: bindgen generates RocksDB's Rust bindings with
#   libclang (librocksdb-sys).
# - g++ and make: RocksDB's C++ is compiled from source by the cc crate.
# Optional (best effort; the build works without it, only slower):
# - ccache: caches RocksDB's C++ objects, so the rebuilds cargo does when a
#   different package selection changes librocksdb-sys's hash take seconds
#   instead of ~12 minutes (the Makefile puts it in front of cc and c++ when
#   it is installed).
# - fonts-dejavu-core: the text of `flotilla load`'s PNG chart (without a
#   font the chart is drawn without labels).
# protoc is not needed: flotilla-proto uses the protoc shipped by the
# protoc-bin-vendored crate.
set -euo pipefail

required=(clang libclang-dev g++ make)
optional=(ccache fonts-dejavu-core)

have_pkg() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# The packages of "$@" that are not installed.
missing_of() {
  local pkg
  for pkg in "$@"; do
    have_pkg "$pkg" || echo "$pkg"
  done
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  # Not a Debian-like system: check for what the build actually uses.
  missing=()
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  if ((${#missing[@]} > 0)); then
    echo "flotilla needs: ${missing[*]} (and libclang); install them with your package manager." >&2
    exit 1
  fi
  command -v ccache >/dev/null 2>&1 ||
    echo "install-deps: ccache not found; RocksDB rebuilds will not be cached." >&2
  exit 0
fi

mapfile -t missing_required < <(missing_of "${required[@]}")
mapfile -t missing_optional < <(missing_of "${optional[@]}")
if ((${#missing_required[@]} + ${#missing_optional[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  if ((${#missing_required[@]} > 0)); then
    echo "flotilla needs: ${missing_required[*]}; install them with your package manager." >&2
    exit 1
  fi
  echo "install-deps: ${missing_optional[*]} not installed; builds work (maybe slower, load charts without text)." >&2
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

echo "install-deps: installing ${missing_required[*]} ${missing_optional[*]}" >&2
$sudo apt-get update -qq || ((${#missing_required[@]} == 0))
if ((${#missing_required[@]} > 0)); then
  apt_install "${missing_required[@]}"
fi
if ((${#missing_optional[@]} > 0)) && ! apt_install "${missing_optional[@]}"; then
  echo "install-deps: could not install ${missing_optional[*]}; builds work (maybe slower, load charts without text)." >&2
fi
