#!/usr/bin/env bash
# Installs the system packages flotilla's build needs, and only those that are
# missing. Run by `make test` and `make demo`; safe to run again.
#
# - clang + libclang-dev: bindgen generates RocksDB's Rust bindings with
#   libclang (librocksdb-sys).
# - g++ and make: RocksDB's C++ is compiled from source by the cc crate.
# - ccache: caches RocksDB's C++ objects, so the rebuilds cargo does when a
#   different package selection changes librocksdb-sys's hash take seconds
#   instead of ~12 minutes (the Makefile puts it in front of cc and c++).
# protoc is not needed: flotilla-proto uses the protoc shipped by the
# protoc-bin-vendored crate.
set -euo pipefail

packages=(clang libclang-dev g++ make ccache)

have_pkg() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${packages[@]}"; do
    have_pkg "$pkg" || missing+=("$pkg")
  done
else
  # Not a Debian-like system: check for what the build actually uses.
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "flotilla needs: ${missing[*]} (and libclang); install them with your package manager." >&2
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
