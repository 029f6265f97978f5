#!/usr/bin/env bash
# Side by side: for each server binary in turn (alternating, ROUNDS times), tiny-job acks for
# SECS seconds at 30 connections without callbacks, then the drain of the backlog they left.
# Prints acks/s, ack p99, the server's (and PostgreSQL's) CPU per ack and per drained job, and
# the drain's jobs/s; on PostgreSQL also the WAL written per job from its ack to its finish (a
# count of bytes, which a noisy VM does not move). The A/B tool behind the figures in issue 9's
# commit messages.
#
#   bash bench/drain.sh target/release/sync-async ../old-target/release/sync-async
#   SECS=10 ROUNDS=3 POSTGRES=1 bash bench/drain.sh A B     # on a fresh PostgreSQL database each run
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-6}; ROUNDS=${ROUNDS:-2}; PORT=${PORT:-8150}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
LOADTEST=${LOADTEST:-target/release/loadtest}
TICK=$(getconf CLK_TCK)

figure() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }
cpu_of() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
postgres_cpu() { cpu_of $(pgrep -x postgres); }
# Bytes of WAL written so far, on PostgreSQL; 0 on SQLite.
wal() { if [ -n "${POSTGRES:-}" ]; then psql "$PG/postgres" -Atc "SELECT pg_current_wal_lsn() - '0/0'"; else echo 0; fi; }

one() { # one <server binary>
  local tmp server c0 p0 w0 c1 p1 w1 c2 p2 w2 done0 t0 t1 metrics
  tmp=$(mktemp -d)
  local env=(MAX_QUEUE_SIZE=100000000 RATE_LIMIT_REQUESTS=1000000000 LOG_LEVEL=error RETENTION_HOURS=0
             PORT="$PORT" HOST=127.0.0.1)
  if [ -n "${POSTGRES:-}" ]; then
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sync_async_drain WITH (FORCE)" \
      -c "CREATE DATABASE sync_async_drain" >/dev/null 2>&1
    env+=(DATABASE_URL="$PG/sync_async_drain")
  else
    env+=(DATABASE_PATH="$tmp/drain.db")
  fi
  env "${env[@]}" "$1" >"$tmp/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "$1 did not start:"; cat "$tmp/server.log"; return 1; }
  c0=$(cpu_of $server); p0=$(postgres_cpu); w0=$(wal)
  "$LOADTEST" --mode async --no-callback --concurrency 30 --duration "${SECS}s" --warmup 1s \
    --operation prime --complexity 1 --data '{"n": 1}' --url "http://127.0.0.1:$PORT" --quiet \
    --json "$tmp/acks.json" >/dev/null
  c1=$(cpu_of $server); p1=$(postgres_cpu); w1=$(wal)
  metrics=$(curl -s "http://127.0.0.1:$PORT/metrics"); done0=$(echo "$metrics" | figure done); t0=$(date +%s%N)
  while :; do
    metrics=$(curl -s "http://127.0.0.1:$PORT/metrics")
    [ "$(echo "$metrics" | figure size)" = 0 ] && [ "$(echo "$metrics" | figure running)" = 0 ] && break
    sleep 0.1
  done
  t1=$(date +%s%N); c2=$(cpu_of $server); p2=$(postgres_cpu); w2=$(wal)
  python3 - "$tmp/acks.json" "$(echo "$metrics" | figure done)" "$done0" "$t0" "$t1" "$c0" "$c1" "$c2" "$p0" "$p1" "$p2" "$w0" "$w1" "$w2" "$TICK" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
total, done0, t0, t1, c0, c1, c2, p0, p1, p2, w0, w1, w2, tick = map(int, sys.argv[2:])
drained, secs, us = total - done0, (t1 - t0) / 1e9, 1e6 / tick
print(f"acks/s {r['throughput_rps']:6.0f} p99 {r['latency']['p99_ms']:5.1f} ms  cpu/ack server {(c1 - c0) * us / max(total, 1):4.0f} µs"
      f" pg {(p1 - p0) * us / max(total, 1):4.0f} µs | drain {drained / max(secs, 1e-9):6.0f} jobs/s"
      f"  cpu/job server {(c2 - c1) * us / max(drained, 1):4.0f} µs pg {(p2 - p1) * us / max(drained, 1):4.0f} µs"
      + (f" | wal {(w2 - w0) / max(total, 1):5.0f} B/job" if w2 else ""))
PY
  kill "$server"; wait "$server" 2>/dev/null; rm -rf "$tmp"
}

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do printf '%-40s %s\n' "$bin" "$(one "$bin")"; done
done
[ -z "${POSTGRES:-}" ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sync_async_drain WITH (FORCE)" 2>/dev/null || true
