#!/usr/bin/env bash
# GET /requests page times on a database of a million finished requests (a tenth sync, one in a
# thousand failed), made by the first build given; the same database (a copy) then opened by
# each build in turn, which also times each build's first start on it (its migrations).
#
#   bash bench/list-pages.sh <old build's sync-async> <new build's sync-async> [rows, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROWS=${3:-1000000} PORT=${PORT:-8188}
TMP=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
up() { for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.05; done; exit 1; }
start() { PORT=$PORT DATABASE_PATH=$2 LOG_LEVEL=error RETENTION_HOURS=0 "$1" >/dev/null 2>&1 & server=$!; up; }
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

start "$OLD" "$TMP/made.db"; stop
python3 - "$TMP/made.db" "$ROWS" <<'PY'
import datetime, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
t0 = datetime.datetime(2026, 12, 1)
def rows():
    for i in range(int(sys.argv[2])):
        t = (t0 + datetime.timedelta(milliseconds=i)).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3] + 'Z'
        yield (f"{i:012d}-bench", 'sync' if i % 10 == 0 else 'async', '{"operation":"prime","complexity":1,"data":{"n":1}}',
               'failed' if i % 1000 == 0 else 'done', t, t, t, 0.01)
c.executemany("INSERT INTO requests (id, mode, payload, status, created_at, started_at, completed_at, execution_time_ms) "
              "VALUES (?,?,?,?,?,?,?,?)", rows())
c.commit()
PY
for build in "$OLD" "$NEW"; do
  cp "$TMP/made.db" "$TMP/run.db"; rm -f "$TMP/run.db-wal" "$TMP/run.db-shm"
  # The engine's calibration is kept beside the database: copied, so no start calibrates anew.
  cp "$TMP/made.db.calibration.json" "$TMP/run.db.calibration.json" 2>/dev/null || true
  t0=$(date +%s%N); start "$build" "$TMP/run.db"; t1=$(date +%s%N)
  echo "$build: first start $(( (t1 - t0) / 1000000 )) ms"
  for q in "" "status=done" "mode=async" "mode=sync" "status=failed" "mode=sync&status=failed" "status=processing" "status=pending"; do
    best=999999
    for _ in 1 2 3; do
      a=$(date +%s%N); curl -sf "http://127.0.0.1:$PORT/requests?$q&limit=50" -o "$TMP/page.json"; b=$(date +%s%N)
      ms=$(( (b - a) / 1000000 )); [ "$ms" -lt "$best" ] && best=$ms
    done
    echo "  ?$q: $best ms (total $(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['total'])" "$TMP/page.json"))"
  done
  stop
done
