#!/usr/bin/env bash
# The materialized-view micro-benchmark on a release build: a stream through
# filter -> lookup join -> GROUP BY as a view, next to DataFusion running the
# same query as a batch over the same rows. Writes the JSON report to
# benchmarks/results/views-<date>.json and prints it.
#
#   benchmarks/views.sh [--events N] [--batch N] [--customers N] [--source insert|kafka|kafka-avro|kafka-protobuf|file]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -j2 -p sluice
mkdir -p benchmarks/results
suffix=""
args=("$@")
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = "--source" ] && [ -n "${args[$((i + 1))]:-}" ] && [ "${args[$((i + 1))]}" != insert ]; then
    suffix="-${args[$((i + 1))]}"
  fi
done
out="benchmarks/results/views${suffix}-$(date +%Y-%m-%d).json"
"$target/release/sluice" bench views --output "$out" "$@"
echo "written to $out" >&2
