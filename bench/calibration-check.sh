#!/usr/bin/env bash
# Issue 10's calibration promise, checked where it counts: a fresh release server with the
# default ENGINE_CALIBRATION=auto measures this machine at its first start, then each operation
# runs alone through POST /sync at complexity 1, 4 and 7, and the server's own
# execution_time_ms (the engine's time, on the engine's threads) is compared with
# 100 ms x 50^((c-1)/9). Fastest of REPEATS runs per cell. Run it on an idle machine.
#
#   cargo build --release && bash bench/calibration-check.sh [repeats, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
PORT=${PORT:-8561}
TMP=$(mktemp -d)
# A fresh database directory, so no calibration file exists and the start measures.
export DATABASE_PATH="$TMP/check.db" PORT HOST=127.0.0.1 LOG_LEVEL=info
target/release/sync-async >"$TMP/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
grep -o 'engine calibration in use.*' "$TMP/server.log" | sed 's/\x1b\[[0-9;]*m//g'
python3 - "$PORT" "$REPEATS" <<'PY'
import json, sys, urllib.request
port, repeats = sys.argv[1], int(sys.argv[2])
def run(op, c):
    body = json.dumps({"payload": {"operation": op, "complexity": c}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sync", body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["execution_time_ms"]
levels = [1, 4, 7]
target = {c: 100 * 50 ** ((c - 1) / 9) for c in levels}
print("| operation | " + " | ".join(f"c{c}" for c in levels) + " | worst deviation |")
print("|---|" + "---:|" * (len(levels) + 1))
print("| *target* | " + " | ".join(f"{target[c]:.0f} ms" for c in levels) + " | ±15% allowed |")
worst_all = 0.0
for op in ["hash", "prime", "matrix", "transform"]:
    best = {c: min(run(op, c) for _ in range(repeats)) for c in levels}
    dev = max((best[c] / target[c] - 1 for c in levels), key=abs)
    worst_all = max(worst_all, abs(dev))
    print(f"| {op} | " + " | ".join(f"{best[c]:.0f} ms" for c in levels) + f" | {dev * 100:+.0f}% |")
sys.exit(0 if worst_all <= 0.15 else 1)
PY
