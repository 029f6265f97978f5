#!/usr/bin/env bash
# Tiny-job acknowledgements on one replica and a fresh database (PostgreSQL, or SQLite with
# DB=sqlite), with where the CPU went: 30 connections (or CONNECTIONS) for <seconds> (default
# 15) after a 2 s warm-up, the drain running beside them. Prints acks/s, the ack p99, the jobs
# finished meanwhile (and per ack: 1.00 when the workers keep pace), and the CPU of PostgreSQL
# (every process of its user; next to nothing with SQLite), the server and the load generator,
# as a share of one core and per ack. Alternate two builds to compare them:
#
#   for r in 1 2 3; do bash bench/acks-cpu.sh <old>/target/release; bash bench/acks-cpu.sh target/release; done
#   bash bench/acks-cpu.sh target/release 15 NUM_WORKERS=10   # settings for the server
#   DB=sqlite bash bench/acks-cpu.sh target/release 15        # the embedded SQLite
#   DATA='{"n": -1}' DB=sqlite bash bench/acks-cpu.sh target/release 15
#
#   REPLICAS=3 bash bench/acks-cpu.sh target/release 15       # 3 replicas on one PostgreSQL database
#   CONNECTIONS=150 DB=sqlite bash bench/acks-cpu.sh target/release 10  # more than the 30 connections
#
# With REPLICAS, the load generator sends to each replica in turn (ports PORT, PORT+1, ...) and
# the server figures are the replicas' sum. On PostgreSQL the line also gives the transactions
# committed per ack (pg_stat_database, read once the servers have stopped): how many acks each
# commit carries. A second line splits the server's CPU by thread name: the tokio runtime's
# threads (HTTP, the queue's tasks), the SQLite writer's own thread (`sqlite-writer`: inserts,
# claims, finishes), sqlx's SQLite threads (the writer's other writes, the readers), the engine's
# threads; on SQLite, with the share of the time the writer was held
# (`storage.writer_held_seconds` in /metrics) and its turns a second.
#
# DATA is each job's `payload.data` (default {"n": 1}). {"n": -1} makes every submission a 422
# after the same parsing and validation, with nothing stored: the ceiling of the HTTP path
# without the database. The figures are then per answer, not per ack.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: acks-cpu.sh <directory of sync-async and loadtest> [seconds] [VAR=value ...]}
SECS=${2:-15}
shift $(($# < 2 ? $# : 2))
PG=${PG:-postgres://postgres@127.0.0.1:5432}
PORT=${PORT:-8150}
db=sync_async_acks_cpu
TMP=$(mktemp -d)
DATA=${DATA:-'{"n": 1}'}
REPLICAS=${REPLICAS:-1}
CONNECTIONS=${CONNECTIONS:-30}
SP=()
cleanup() { [ ${#SP[@]} -eq 0 ] || kill "${SP[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

if [ "${DB:-postgres}" = sqlite ]; then
  [ "$REPLICAS" = 1 ] || { echo "SQLite runs one replica" >&2; exit 2; }
  database=(DATABASE_PATH="$TMP/acks.db")
else
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null
  database=(DATABASE_URL="$PG/$db")
fi
urls=()
for i in $(seq 0 $((REPLICAS - 1))); do
  port=$((PORT + i))
  env MAX_QUEUE_SIZE=100000000 RATE_LIMIT_REQUESTS=1000000000 LOG_LEVEL=error RETENTION_HOURS=0 \
    PORT="$port" HOST=127.0.0.1 "${database[@]}" "$@" "$BIN/sync-async" >"$TMP/server$i.log" 2>&1 &
  SP+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$TMP/server$i.log" >&2; exit 1; }
  urls+=(--url "http://127.0.0.1:$port")
done
commits() {
  [ "${DB:-postgres}" = sqlite ] && { echo 0; return; }
  psql "$PG/postgres" -tAc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'"
}

# CPU ticks (utime + stime) of every PostgreSQL process, and of the server
pg_ticks() { local t=0 p; for p in $(pgrep -u postgres); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
server_ticks() { local t=0 p; for p in "${SP[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# The same for each of the servers' threads: "tid name ticks" (tokio-rt-worker, sqlite-writer, sqlx-sqlite-wor, engine)
thread_ticks() {
  local p t
  for p in "${SP[@]}"; do for t in /proc/"$p"/task/*; do
    echo "${t##*/} $(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done 2>/dev/null; done
}
thread_ticks >"$TMP/threads0"
# SQLite's writer: seconds its turns held it, and turns, since start (0 on PostgreSQL)
writer() { curl -s "http://127.0.0.1:$PORT/metrics" | grep -o "\"writer_$1\":[0-9.]*" | cut -d: -f2 || true; }
h0=$(writer held_seconds); n0=$(writer turns)
c0=$(commits); p0=$(pg_ticks); s0=$(server_ticks); t0=$(date +%s%N)
TIMEFORMAT='%U %S'  # bash's own `time`: the load generator's user and system seconds
{ time "$BIN/loadtest" "${urls[@]}" --mode async --no-callback --concurrency "$CONNECTIONS" \
    --duration "${SECS}s" --warmup 2s --operation prime --complexity 1 --data "$DATA" --quiet \
    --json "$TMP/acks.json" >/dev/null; } 2>"$TMP/loadtest.time"
p1=$(pg_ticks); s1=$(server_ticks); t1=$(date +%s%N)
thread_ticks >"$TMP/threads1"
finished=$(curl -s "http://127.0.0.1:$PORT/metrics" | grep -o '"done":[0-9]*' | head -1 | cut -d: -f2)
h1=$(writer held_seconds); n1=$(writer turns)
kill "${SP[@]}"; wait "${SP[@]}" 2>/dev/null || true; SP=()
sleep 0.5  # the servers' PostgreSQL sessions end, and report their commits as they do
c1=$(commits)
python3 - "$TMP" "$p0" "$p1" "$s0" "$s1" "$t0" "$t1" "$finished" "$(getconf CLK_TCK)" "$c0" "$c1" \
  "${h0:-0}" "${h1:-0}" "${n0:-0}" "${n1:-0}" <<'PY'
import json, sys
tmp = sys.argv[1]
p0, p1, s0, s1, t0, t1, finished, hz, c0, c1 = map(int, sys.argv[2:12])
h0, h1, n0, n1 = map(float, sys.argv[12:16])
run = json.load(open(f"{tmp}/acks.json"))["runs"][0]
loadtest = sum(map(float, open(f"{tmp}/loadtest.time").read().split()[-2:]))
wall = (t1 - t0) / 1e9
acks = run["throughput_rps"]
answers = run["achieved_rps"]  # acks and refusals: the same as acks unless DATA is refused
per = max(acks, answers)
n = per * wall  # the answers over the whole wall time, warm-up included, at the measured rate
refused = f"  answers/s {answers:7.0f} (p99 of acks only)" if answers > acks * 1.01 else ""
pg, server = (p1 - p0) / hz, (s1 - s0) / hz
print(f"acks/s {acks:7.0f}  p99 {run['latency']['p99_ms']:6.2f} ms  jobs finished {finished:6d} ({finished / n:4.2f} per ack){refused}  "
      f"CPU % of a core: PostgreSQL {pg * 100 / wall:3.0f} server {server * 100 / wall:3.0f} loadtest {loadtest * 100 / wall:3.0f}  "
      f"us per ack: PostgreSQL {pg * 1e6 / n:4.0f} server {server * 1e6 / n:4.0f} loadtest {loadtest * 1e6 / n:4.0f}"
      + (f"  commits per ack {(c1 - c0) / n:4.2f}" if c1 > c0 else ""))
# The server's CPU by thread name, summed over the threads of each name (and the replicas).
before = {tid: int(ticks) for tid, _, ticks in (l.split() for l in open(f"{tmp}/threads0"))}
by_name = {}
for tid, name, ticks in (l.split() for l in open(f"{tmp}/threads1")):
    by_name[name] = by_name.get(name, 0) + int(ticks) - before.get(tid, 0)
shares = sorted(((t * 100 / hz / wall, name) for name, t in by_name.items()), reverse=True)
writer = (f"  SQLite writer held {(h1 - h0) * 100 / wall:.0f}% of the time, {(n1 - n0) / wall:.0f} turns/s"
          if n1 > n0 else "")
print("  server threads, % of a core: " + "  ".join(f"{name} {share:.0f}" for share, name in shares if share >= 1)
      + writer)
PY
[ "${DB:-postgres}" = sqlite ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
