#!/usr/bin/env bash
# Issue 9's soak on PostgreSQL: five minutes of acknowledgements of tiny jobs at 30 connections
# with a receiver that fails every callback, printing the database size and the server's RSS every
# 10 s. Retention is one minute, so that finished requests (and their failed deliveries) are
# purged while the soak runs and the database reaches a steady size. Needs release binaries.
#
#   bash bench/soak-postgres.sh [duration, default 300s] [rate]
#
# Without a rate, the 30 connections send as fast as they are answered (closed loop), faster
# than the workers and the deliveries keep up with, so the backlog and the database grow with
# it. With a rate (requests/s, open loop), one the workers and deliveries keep up with, the
# database reaches the steady size retention gives it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300s}
RATE=()
[ -n "${2:-}" ] && RATE=(--rate "$2")
PG=${PG:-postgres://postgres@127.0.0.1:5432}
db=sync_async_soak
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
DATABASE_URL="$PG/$db" PORT=8201 HOST=127.0.0.1 MAX_QUEUE_SIZE=100000000 RATE_LIMIT_REQUESTS=1000000000 \
  LOG_LEVEL=error RETENTION_HOURS=0.0167 target/release/sync-async &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8201/healthz >/dev/null && break; sleep 0.1; done
target/release/loadtest --mode async --callback-fail-rate 1 --callback-timeout 1s --callback-port 9124 \
  --operation prime --complexity 1 --data '{"n":1}' --url http://127.0.0.1:8201 --duration "$DURATION" \
  --concurrency 30 --soak-every 10s "${RATE[@]}"
