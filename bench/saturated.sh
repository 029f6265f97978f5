#!/usr/bin/env bash
# Issue 9's third benchmark, side by side in one run: the acknowledgement p99 of POST /async while
# the CPU is saturated (10 sync requests at complexity 5 kept running, 5 workers busy), open loop
# at 1000/s, measured from the intended send time (coordinated omission corrected), on SQLite and
# on PostgreSQL with one replica. Needs release binaries and PostgreSQL at $PG (trust auth).
#
#   bash bench/saturated.sh [seconds per run, default 15] [rate, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
RATE=${2:-1000}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
BIN=${BIN:-target/release}
TMP=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

measure() { # measure <label> <env...>
  local label=$1; shift
  env MAX_QUEUE_SIZE=100000000 RATE_LIMIT_REQUESTS=1000000000 LOG_LEVEL=error PORT=8301 HOST=127.0.0.1 \
    "$@" "$BIN/sync-async" >"$TMP/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8301/healthz >/dev/null && break; sleep 0.1; done
  "$BIN/loadtest" --mode async --rate "$RATE" --duration "${SECS}s" --warmup 2s --concurrency 30 \
    --complexity 5 --no-callback --background-sync 10 --url http://127.0.0.1:8301 --quiet \
    --json "$TMP/run.json" >/dev/null
  python3 - "$TMP/run.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
l = r["latency"]
u = r.get("latency_uncorrected") or {}
print(f"{sys.argv[2]:12} sent/s {r['throughput_rps']:7.0f}  ack p50 {l['p50_ms']:6.2f} ms  p99 {l['p99_ms']:6.2f} ms  "
      f"max {l['max_ms']:7.2f} ms  (uncorrected p99 {u.get('p99_ms', float('nan')):6.2f} ms)  statuses {r['outcomes']['statuses']}")
PY
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
}

measure sqlite DATABASE_PATH="$TMP/sat.db"
db=sync_async_saturated
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
measure "postgres x1" DATABASE_URL="$PG/$db"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
