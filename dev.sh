#!/usr/bin/env bash
# Set up, build and run Sluice on a fresh Debian/Ubuntu machine.
#
#   ./dev.sh serve [ARGS...]   build and run `sluice serve` (embedded defaults:
#                              pgwire on 127.0.0.1:4566, data in ./sluice-data)
#   ./dev.sh test  [ARGS...]   build and run every test (cargo test --workspace)
#
# Installs what the build needs when it is missing, with apt-get (sudo when
# not root): a Rust toolchain (rustup), libclang and clang's headers
# (RocksDB's bindings), a C++ compiler, make, cmake, pkg-config and
# OpenSSL's headers (librdkafka's TLS and SASL). The first build
# compiles RocksDB, librdkafka and DataFusion: about 25-30 minutes on
# 2 cores. Later builds take seconds; `serve` and `test` share one build.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# find_libclang [ROOT]: print the path of a libclang shared library that
# clang-sys (RocksDB's bindgen) would load, looking where clang-sys looks
# ($LIBCLANG_PATH, the llvm-* library folders, the system library folders)
# under ROOT (default /). Succeeds only when that library is there *and*
# clang's builtin headers (stddef.h), which bindgen needs beside it, are.
# clang-sys accepts libclang.so, libclang-N.so, libclang.so.N and
# libclang-N.so.N; libclang-cpp.so.N (installed by llvm-N-dev) is a
# different library and does not count.
find_libclang() {
  local root="${1:-}" dir f name lib="" hdr=""
  local dirs=()
  [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$root$LIBCLANG_PATH")
  dirs+=("$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib
         "$root"/usr/lib64 "$root"/usr/local/lib "$root"/lib/*-linux-gnu)
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for f in "$dir"/libclang*.so*; do
      [ -e "$f" ] || continue             # also skips dangling symlinks
      name="${f##*/}"
      if [[ "$name" =~ ^libclang(-[0-9][0-9.]*)?\.so(\.[0-9][0-9.]*)?$ ]]; then
        lib="$f"
        break 2
      fi
    done
  done
  [ -n "$lib" ] || return 1
  for f in "$root"/usr/lib/llvm-*/lib/clang/*/include/stddef.h \
           "$root"/usr/lib/clang/*/include/stddef.h \
           "$root"/usr/lib64/clang/*/include/stddef.h \
           "$root"/usr/local/lib/clang/*/include/stddef.h; do
    if [ -e "$f" ]; then hdr="$f"; break; fi
  done
  [ -n "$hdr" ] || return 1
  echo "$lib"
}

# missing_packages [ROOT]: print the Debian packages the build needs that
# are not installed, one per line. Tools are looked up on PATH.
missing_packages() {
  local root="${1:-}"
  find_libclang "$root" >/dev/null || echo libclang-dev
  command -v c++ >/dev/null 2>&1 || echo g++
  command -v make >/dev/null 2>&1 || echo make
  command -v cmake >/dev/null 2>&1 || echo cmake
  command -v perl >/dev/null 2>&1 || echo perl   # librdkafka's configure
  # librdkafka's TLS and SASL (rdkafka's "ssl" feature): OpenSSL's headers,
  # found by openssl-sys through pkg-config.
  [ -e "$root/usr/include/openssl/ssl.h" ] || echo libssl-dev
  command -v pkg-config >/dev/null 2>&1 || echo pkg-config
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
  local missing
  missing="$(missing_packages | tr '\n' ' ')"
  if [ -n "${missing// /}" ]; then
    echo "dev.sh: installing ${missing}" >&2
    as_root apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y $missing
    if ! find_libclang >/dev/null; then
      echo "dev.sh: libclang is still missing after installing libclang-dev;" \
           "set LIBCLANG_PATH to the folder that holds libclang.so" >&2
      exit 1
    fi
  fi
}

# Say so before the long first compile, so nobody thinks it hung.
announce_first_build() {
  local target="${CARGO_TARGET_DIR:-target}"
  if ! ls -d "$target"/debug/build/librocksdb-sys-* >/dev/null 2>&1; then
    echo "dev.sh: first build: compiling RocksDB, librdkafka and DataFusion" \
         "takes about 25-30 minutes on 2 cores; later builds take seconds" >&2
  fi
}

main() {
  cd "$(dirname "$0")"
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    serve)
      ensure_deps
      announce_first_build
      # Build the whole workspace, tests included, so that `serve` and `test`
      # share one set of compiled dependencies (the same cargo features).
      cargo build -j2 --workspace --all-targets
      exec "${CARGO_TARGET_DIR:-target}/debug/sluice" serve "$@"
      ;;
    test)
      ensure_deps
      announce_first_build
      exec cargo test -j2 --workspace "$@"
      ;;
    *)
      sed -n "2,13p" "$(basename "$0")" | sed 's/^# \{0,1\}//'
      exit 2
      ;;
  esac
}

# `source dev.sh` loads the functions without running anything (.ci/dev-sh-test).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  main "$@"
fi
