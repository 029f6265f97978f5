#!/usr/bin/env bash
# Issue 9's benchmarks, side by side in one run: durable acks/s at 30 connections and tiny jobs
# end to end (prime with data.n = 1; without callbacks, then with them), on SQLite, then
# PostgreSQL with one and with three replicas. Needs release binaries (cargo build --release)
# and PostgreSQL at $PG (trust auth). Prints one line per measurement.
#
#   bash bench/cluster.sh [seconds per run, default 20]
#   BIN=/other/target/release bash bench/cluster.sh 15   # another build, for a side-by-side
#   BACKENDS="postgres1" CALLBACKS_ONLY=1 bash bench/cluster.sh 15   # a part of the table
#   SERVER_ENV="NUM_WORKERS=8" bash bench/cluster.sh 15   # settings for every server started
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
BIN=${BIN:-target/release}
BACKENDS=${BACKENDS:-sqlite postgres1 postgres3}
CALLBACKS_ONLY=${CALLBACKS_ONLY:-}
read -ra SERVER_ENV <<<"${SERVER_ENV:-}"
TMP=$(mktemp -d)
PIDS=()
# The servers stop, then the database they shared goes (this script's runs leave nothing behind).
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sync_async_bench WITH (FORCE)" 2>/dev/null || true
}
trap cleanup EXIT

COMMON=(MAX_QUEUE_SIZE=100000000 RATE_LIMIT_REQUESTS=1000000000 LOG_LEVEL=error RETENTION_HOURS=0)

start() { # start <port> <env...>
  local port=$1; shift
  env "${COMMON[@]}" "${SERVER_ENV[@]}" PORT="$port" HOST=127.0.0.1 "$@" "$BIN/sync-async" >"$TMP/server-$port.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start" >&2; cat "$TMP/server-$port.log" >&2; exit 1
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
# The first number named $2 in /metrics, by grep: a python3 per poll (a pyenv shim) took about a
# quarter of the CPU during the drains it timed.
figure() { curl -s "http://127.0.0.1:$1/metrics" | grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2; }
done_count() { figure "$1" done; }
backlog() { echo $(($(figure "$1" size) + $(figure "$1" running))); }

# acks_and_drain <label> <first port> <url args...>: acks without callbacks, and the drain (jobs
# end to end, measured until the backlog is empty)
acks_and_drain() {
  local label=$1 first=$2 before start_ns end_ns after; shift 2
  before=$(done_count "$first"); start_ns=$(date +%s%N)
  "$BIN/loadtest" --mode async --no-callback --concurrency 30 --duration "${SECS}s" --warmup 2s \
    --operation prime --complexity 1 --data '{"n": 1}' "$@" --quiet --json "$TMP/acks.json" >/dev/null
  while [ "$(backlog "$first")" != 0 ]; do sleep 0.2; done
  end_ns=$(date +%s%N)
  after=$(done_count "$first")
  python3 - "$TMP/acks.json" "$label" "$before" "$after" "$start_ns" "$end_ns" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
label, before, after, t0, t1 = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
l = r["latency"]
print(f"{label:16} acks/s {r['throughput_rps']:8.0f}  ack p50 {l['p50_ms']:6.2f} ms  p99 {l['p99_ms']:6.2f} ms  "
      f"jobs done/s (no callbacks) {(after - before) / ((t1 - t0) / 1e9):8.0f}")
PY
}

# run <label> <port...>: acks_and_drain (unless CALLBACKS_ONLY), then with callbacks
run() {
  local label=$1; shift
  local urls=(); for p in "$@"; do urls+=(--url "http://127.0.0.1:$p"); done
  [ -n "$CALLBACKS_ONLY" ] || acks_and_drain "$label" "$1" "${urls[@]}"
  "$BIN/loadtest" --mode async --concurrency 30 --duration "${SECS}s" --warmup 2s --callback-timeout 120s \
    --operation prime --complexity 1 --data '{"n": 1}' "${urls[@]}" --callback-port 9123 --quiet --json "$TMP/cb.json" >/dev/null
  python3 - "$TMP/cb.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
c = r.get("callbacks") or {}
print(f"{sys.argv[2]:16} with callbacks: acks/s {r['throughput_rps']:8.0f}  completed/s {r.get('completion_throughput_rps') or 0:8.0f}  "
      f"callbacks {c}")
PY
}

for backend in $BACKENDS; do
  case $backend in
    sqlite)
      start 8101 DATABASE_PATH="$TMP/bench.db"
      run "sqlite" 8101;;
    postgres*)
      n=${backend#postgres} db=sync_async_bench
      psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
      ports=()
      for i in $(seq "$n"); do start $((8110 + i)) DATABASE_URL="$PG/$db" REPLICA_NAME="r$i"; ports+=($((8110 + i))); done
      run "postgres x$n" "${ports[@]}";;
    *) echo "unknown backend $backend (sqlite, postgres1, postgres3, ...)" >&2; exit 2;;
  esac
  stop_all
done
