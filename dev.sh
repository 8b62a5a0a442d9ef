#!/usr/bin/env bash
# Set up, build and run Sluice on a fresh Debian/Ubuntu machine.
#
#   ./dev.sh serve [ARGS...]   build and run `sluice serve` (embedded defaults:
#                              pgwire on 127.0.0.1:4566, data in ./sluice-data)
#   ./dev.sh test  [ARGS...]   build and run every test (cargo test --workspace)
#
# Installs what the build needs when it is missing: a Rust toolchain (rustup)
# and libclang (RocksDB's bindings). The first build compiles RocksDB and
# DataFusion and takes a while (about 30 minutes on 2 cores); later ones
# take seconds.
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_deps() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "dev.sh: installing Rust with rustup" >&2
      command -v curl >/dev/null 2>&1 || { as_root apt-get update && as_root apt-get install -y curl; }
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
  local missing=()
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
    || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}" >&2
    as_root apt-get update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y "${missing[@]}"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  serve)
    ensure_deps
    # Build the whole workspace, tests included, so that `serve` and `test`
    # share one set of compiled dependencies (the same cargo features).
    cargo build -j2 --workspace --all-targets
    exec "${CARGO_TARGET_DIR:-target}/debug/sluice" serve "$@"
    ;;
  test)
    ensure_deps
    exec cargo test -j2 --workspace "$@"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
