#!/usr/bin/env bash
# Two server builds side by side on SQLite, alternating, with one load generator (this tree's):
# tiny-job acks at 30 connections and the jobs end to end (load and drain), then the ack p99
# under a saturated CPU (open loop 1000/s, 10 sync + 5 workers at complexity 5). Works with any
# build that has /async, /metrics' by-status counts and `data.n`, such as the one issue 9 was
# filed on (cbf16af), which knows nothing of PostgreSQL.
#
#   git worktree add ../filed cbf16af && (cd ../filed && CARGO_TARGET_DIR=../filed-target cargo build --release)
#   ROUNDS=6 bash bench/versus-sqlite.sh ../filed-target/release/sync-async target/release/sync-async
#   MODE=tiny|saturated|both (default both), SECS per run (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-15}; ROUNDS=${ROUNDS:-2}; MODE=${MODE:-both}; PORT=${PORT:-8311}
LOADTEST=${LOADTEST:-target/release/loadtest}
TMP=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
figure() { curl -s "http://127.0.0.1:$PORT/metrics" | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }
start() { # start <binary>: a fresh database each run
  env MAX_QUEUE_SIZE=10000000 RATE_LIMIT_REQUESTS=1000000000 LOG_LEVEL=error RETENTION_HOURS=0 \
    PORT="$PORT" HOST=127.0.0.1 DATABASE_PATH="$TMP/db-$RANDOM.sqlite" "$1" >"$TMP/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  cat "$TMP/server.log" >&2; exit 1
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }
tiny() { # tiny <binary>
  start "$1"
  local t0 t1 done_jobs
  t0=$(date +%s%N)
  "$LOADTEST" --mode async --no-callback --concurrency 30 --duration "${SECS}s" --warmup 2s --operation prime \
    --complexity 1 --data '{"n": 1}' --url "http://127.0.0.1:$PORT" --quiet --json "$TMP/tiny.json" >/dev/null
  local deadline=$((SECONDS + 600))
  while [ "$(figure pending)" != 0 ] || [ "$(figure processing)" != 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "$1: the backlog did not drain in 600 s" >&2; exit 1; }
    sleep 0.2
  done
  t1=$(date +%s%N); done_jobs=$(figure done)
  python3 - "$TMP/tiny.json" "$1" "$done_jobs" "$t0" "$t1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]; l = r["latency"]
jobs = int(sys.argv[3]) / ((int(sys.argv[5]) - int(sys.argv[4])) / 1e9)
print(f"{sys.argv[2]:45} acks/s {r['throughput_rps']:7.0f}  p50 {l['p50_ms']:5.2f}  p99 {l['p99_ms']:6.2f} ms | tiny jobs end to end {jobs:6.0f}/s")
PY
  stop
}
saturated() { # saturated <binary>
  start "$1"
  "$LOADTEST" --mode async --rate 1000 --duration "${SECS}s" --warmup 2s --concurrency 30 --complexity 5 \
    --no-callback --background-sync 10 --url "http://127.0.0.1:$PORT" --quiet --json "$TMP/sat.json" >/dev/null
  python3 - "$TMP/sat.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]; l = r["latency"]; u = r.get("latency_uncorrected") or {}
print(f"{sys.argv[2]:45} saturated: sent/s {r['throughput_rps']:5.0f}  ack p50 {l['p50_ms']:5.2f}  p99 {l['p99_ms']:6.2f} ms"
      f"  (uncorrected p99 {u.get('p99_ms', float('nan')):6.2f} ms)")
PY
  stop
}
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    case $MODE in
      tiny) tiny "$bin" ;;
      saturated) saturated "$bin" ;;
      *) tiny "$bin"; saturated "$bin" ;;
    esac
  done
done
