#!/usr/bin/env bash
# Soak: a `sluice serve` fed at a steady rate for a long time, into a
# windowed view (TUMBLE with a watermark, so closed windows are freed) and
# a GROUP BY view over a bounded key space. Samples the server's RSS every
# SAMPLE seconds and the views' state (sluice_operators) every 10 samples,
# to benchmarks/results/soak-<date>.csv, and prints the RSS slope over the
# second half of the run (after the caches fill) in MB/hour. Each sample
# also records what the state store holds in memory (sluice_memory:
# RocksDB memtables, block cache, table readers) and what the operators
# cache of their state above it, so that RSS growth can be told apart from
# caches filling up to their configured sizes.
#
#   benchmarks/soak.sh [SECONDS (3600)] [ROWS_PER_SECOND (200)] [BINARY]
#
# SERVE_ARGS adds options to `sluice serve` (e.g. "--operator-cache-mb 1").
#
# BINARY defaults to the debug build ($CARGO_TARGET_DIR/debug/sluice); the
# release build is the one to quote for memory in production.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3600}"
rate="${2:-200}"
target="${CARGO_TARGET_DIR:-target}"
binary="${3:-$target/debug/sluice}"
sample="${SAMPLE:-30}"
port="${PORT:-45566}"
data="$(mktemp -d)"
mkdir -p benchmarks/results
out="benchmarks/results/soak-$(date +%Y-%m-%d).csv"
psql_() { psql -X -q -A -t -h 127.0.0.1 -p "$port" -U sluice -d sluice "$@"; }

"$binary" serve --listen "127.0.0.1:$port" --data-dir "$data" ${SERVE_ARGS:-} >"$data/server.log" 2>&1 &
server=$!
trap 'kill "$feeder" 2>/dev/null; sleep 0.2; kill "$server" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 600); do psql_ -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done

psql_ <<'SQL'
CREATE STREAM events (user_id BIGINT, amount BIGINT, ts TIMESTAMP,
                      WATERMARK FOR ts AS ts - INTERVAL '5 seconds');
CREATE MATERIALIZED VIEW per_minute AS
  SELECT window_start, window_end, count(*) AS n, sum(amount) AS total
  FROM TUMBLE(events, ts, INTERVAL '1 minute') GROUP BY window_start, window_end;
CREATE MATERIALIZED VIEW per_user AS
  SELECT user_id, count(*) AS n, max(amount) AS top FROM events GROUP BY user_id;
SQL

# One psql reading INSERTs from a pipe: `rate` rows a second, in 10 batches
# a second, event time = wall time, 1000 users.
(
  batch=$(( rate / 10 > 0 ? rate / 10 : 1 ))
  i=0
  while true; do
    values=""
    for _ in $(seq 1 "$batch"); do
      i=$((i + 1))
      values+="${values:+,}($((i % 1000)), $((i % 97)), now()::timestamp)"
    done
    echo "INSERT INTO events VALUES $values;"
    sleep 0.1
  done | psql_ >/dev/null
) &
feeder=$!

echo "elapsed_s,rss_kb,rows,state_keys,state_bytes,memtables_kb,block_cache_kb,table_readers_kb,operator_caches_kb" >"$out"
start=$(date +%s)
n=0
while [ $(( $(date +%s) - start )) -lt "$seconds" ]; do
  sleep "$sample"
  n=$((n + 1))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  keys=""; bytes=""; rows=""
  mem=$(psql_ -F, -c "SELECT max(bytes) FILTER (WHERE component = 'rocksdb_memtables') / 1024,
      max(bytes) FILTER (WHERE component = 'rocksdb_block_cache') / 1024,
      max(bytes) FILTER (WHERE component = 'rocksdb_table_readers') / 1024,
      max(bytes) FILTER (WHERE component = 'operator_caches') / 1024 FROM sluice_memory" || echo ",,,")
  if [ $((n % 10)) -eq 0 ]; then
    rows=$(psql_ -c 'SELECT sum(n) FROM per_user' || echo "")
    state=$(psql_ -F, -c 'SELECT sum(state_keys), sum(state_bytes) FROM sluice_operators' || echo ",")
    keys="${state%%,*}"; bytes="${state##*,}"
  fi
  echo "$(( $(date +%s) - start )),$rss,$rows,$keys,$bytes,$mem" >>"$out"
done

python3 - "$out" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
half = [r for r in rows if int(r["elapsed_s"]) >= int(rows[-1]["elapsed_s"]) / 2]
xs = [int(r["elapsed_s"]) / 3600 for r in half]
ys = [int(r["rss_kb"]) / 1024 for r in half]
mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
state = [r for r in rows if r["state_keys"]]
mem = [r for r in rows if r.get("memtables_kb")]
if mem:
    last = mem[-1]
    store = sum(int(last[k] or 0) for k in ("memtables_kb", "block_cache_kb", "table_readers_kb")) // 1024
    print(f"state store in memory at the end: {store} MB (memtables {int(last['memtables_kb'])//1024} MB, "
          f"block cache {int(last['block_cache_kb'])//1024} MB, table readers {int(last['table_readers_kb'])//1024} MB)")
    if last.get("operator_caches_kb"):
        print(f"operator caches at the end: {int(last['operator_caches_kb'])//1024} MB")
print(f"samples {len(rows)}; RSS first {int(rows[0]['rss_kb'])//1024} MB, peak "
      f"{max(int(r['rss_kb']) for r in rows)//1024} MB, last {int(rows[-1]['rss_kb'])//1024} MB; "
      f"slope over the second half {slope:+.1f} MB/hour")
if state:
    print("state (keys, bytes) at each tenth sample:",
          [(r["state_keys"], r["state_bytes"]) for r in state])
    print("rows ingested:", state[-1]["rows"])
PY
echo "written to $out" >&2
