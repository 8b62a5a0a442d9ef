#!/usr/bin/env bash
# Nexmark on a release build: each query of benchmarks/nexmark/ over the
# in-process generator, in a fresh process, next to DataFusion running the
# same query as a batch over the same events. Prints a table and writes the
# JSON reports to benchmarks/results/nexmark-<events>.json.
#
#   benchmarks/nexmark.sh [--events N] [--queries q0,q5] [--event-rate R] [--parallelism P] [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -j2 -p sluice
"$target/release/sluice" bench nexmark "$@"
