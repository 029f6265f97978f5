#!/usr/bin/env python3
"""SQLite's own cost of the writer's statements, outside the server.

The server's writer turns (`storage.writer_*` in /metrics) include the hand-off to sqlx's SQLite
thread and back; this measures what SQLite itself spends on the same kind of statement, on a
database built by the same migrations with the server's settings (WAL, synchronous NORMAL, no
automatic checkpoint, foreign keys on), in one thread with nothing else running. The insert's
rows are generated in SQL, so no binding is counted; the finishes and claims bind what the
server binds (through Python's binding, a few µs of each figure).

The claim and the finish are `CLAIM_JOBS` and `FINISH_JOBS`, read from src/db/sqlite/queue.rs
(the server runs the two as one `FINISH_AND_CLAIM`, which costs SQLite about what they cost
apart). The finish is run as the server runs it (its JSON read by `jsonb_each`), as it ran it
until 2026-12-07 (`json_each`), and with constant values (the floor of the update itself), with
and without the running totals' and outbox triggers.

Needs an SQLite of 3.45 or later (JSONB); Debian 12's Python has 3.40, so:

    python3 -m venv /tmp/sqlite-venv && /tmp/sqlite-venv/bin/pip install pysqlite3-binary
    /tmp/sqlite-venv/bin/python bench/sqlite-statements.py [rounds]
"""

import glob
import json
import os
import re
import sys
import tempfile
import time

try:
    import pysqlite3 as sqlite3
except ImportError:
    import sqlite3

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
BATCH = 20
NO_TRIGGERS = ["DROP TRIGGER request_stats_on_update", "DROP TRIGGER deliveries_outbox"]

INSERT = """INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at,
  client_ip, tenant, attempt, lease_owner, lease_expires_at, attempted_by)
SELECT printf('%012d-0000-7000-8000-000000000000', value + ?1), 'async',
  '{"operation":"prime","complexity":1,"data":{"n":1}}', 'pending', NULL,
  printf('2026-12-07T10:00:00.%09dZ', value + ?1), NULL, '127.0.0.1', NULL, 0, NULL, NULL, '[]'
FROM (WITH RECURSIVE g(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM g WHERE value < ?2)
      SELECT value FROM g)"""

QUEUE_RS = os.path.join(ROOT, "src/db/sqlite/queue.rs")


def rust_statement(name):
    """The statement `name` (a `const` or the `finishes!` macro) as the server compiles it."""
    with open(QUEUE_RS, encoding="utf-8") as f:
        source = f.read()
    if name == "finishes!":
        body = re.search(r"macro_rules! finishes \{\s*\(\) => \{(.*?)\};", source, re.S).group(1)
    else:
        body = re.search(rf"const {name}: &str = (.*?);\n", source, re.S).group(1)
    parts = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|(finishes!\(\))', body, re.S):
        if match.group(2):
            parts.append(rust_statement("finishes!"))
        else:
            parts.append(re.sub(r"\\\n\s*", "", match.group(1)))
    return "".join(parts)


CLAIM = rust_statement("CLAIM_JOBS")
FINISH = rust_statement("FINISH_JOBS")
# The finish as it was until 2026-12-07, its JSON read as text.
FINISH_TEXT = FINISH.replace("jsonb_each(jsonb(?2))", "json_each(?2)")
assert FINISH_TEXT != FINISH, "FINISH_JOBS no longer reads jsonb_each(jsonb(?2))"

FINISH_FLOOR = """UPDATE requests SET status = 'done', result = '{"prime":2}', error = NULL,
  started_at = '2026-12-07T10:00:00.000Z', completed_at = '2026-12-07T10:00:00.001Z',
  execution_time_ms = 0.01, lease_owner = NULL, lease_expires_at = NULL
WHERE id IN (SELECT value ->> '$.id' FROM json_each(?2)) AND status = 'processing' AND lease_owner = ?1
RETURNING id"""


def database(path, extra=()):
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "wal_autocheckpoint = 0", "foreign_keys = ON"):
        db.execute(f"PRAGMA {pragma}")
    for migration in sorted(glob.glob(os.path.join(ROOT, "migrations/sqlite/*.sql"))):
        with open(migration, encoding="utf-8") as f:
            db.executescript(f.read())
    for statement in extra:
        db.execute(statement)
    return db


def inserts(rows, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        db = database(os.path.join(tmp, "inserts.db"))
        start = time.perf_counter()
        for k in range(rounds):
            db.execute(INSERT, (k * rows, rows))
        took = (time.perf_counter() - start) / rounds
    print(f"insert of {rows:3d} new rows, one statement: {took * 1e6:5.0f} µs ({took / rows * 1e6:4.1f} a row)")


def cycles(label, finish, extra=(), rounds=ROUNDS):
    """Each round: 20 new rows, the finish of the 20 claimed before, a claim of 20."""
    with tempfile.TemporaryDirectory() as tmp:
        db = database(os.path.join(tmp, "cycles.db"), extra)
        held, spent_finish, spent_claim = [], 0.0, 0.0
        for k in range(rounds):
            db.execute(INSERT, (k * BATCH, BATCH))
            finishes = json.dumps([
                {"id": id_, "attempt": attempt, "status": "done", "result": '{"prime":2}', "error": None,
                 "started_at": "2026-12-07T10:00:00.000Z", "completed_at": "2026-12-07T10:00:00.001Z", "ms": 0.01}
                for id_, attempt in held
            ])
            start = time.perf_counter()
            if held:
                done = db.execute(finish, ("me", finishes)).fetchall()
                assert len(done) == len(held), (len(done), len(held))
            middle = time.perf_counter()
            claimed = db.execute(CLAIM, ("me", "+30 seconds", BATCH)).fetchall()
            spent_finish += middle - start
            spent_claim += time.perf_counter() - middle
            held = [(row[0], row[1]) for row in claimed]
    print(f"{label:58s} finish of {BATCH}: {spent_finish / rounds * 1e6:4.0f} µs, "
          f"claim of {BATCH}: {spent_claim / rounds * 1e6:4.0f} µs")


def main():
    if sqlite3.sqlite_version_info < (3, 45, 0):
        sys.exit(f"SQLite {sqlite3.sqlite_version} has no JSONB (3.45 or later needed): see this file's first lines")
    print(f"SQLite {sqlite3.sqlite_version}, {ROUNDS} rounds")
    inserts(1, ROUNDS * 4)
    inserts(12, ROUNDS)
    inserts(128, max(ROUNDS // 8, 1))
    cycles("FINISH_JOBS until 2026-12-07 (json_each)", FINISH_TEXT)
    cycles("FINISH_JOBS as the server runs it (jsonb_each)", FINISH)
    cycles("the floor: constant values, ids from JSON", FINISH_FLOOR)
    cycles("the floor, without the totals' and outbox triggers", FINISH_FLOOR, NO_TRIGGERS)


if __name__ == "__main__":
    main()
