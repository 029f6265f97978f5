-- The database is the queue (see src/db/store.rs). A job is claimed under a lease: the owner
-- (a replica's id) and an expiry from SQLite's clock, and each claim bumps `attempt`, the token
-- that every later write of the job must present. Deliveries move to a table of their own,
-- written in the same transaction as the job's result, claimed when due the same way.

ALTER TABLE requests ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;       -- claims so far: the fencing token
ALTER TABLE requests ADD COLUMN lease_owner TEXT;                         -- who holds it while `processing`
ALTER TABLE requests ADD COLUMN lease_expires_at TEXT;                    -- RFC 3339 UTC, SQLite's clock
ALTER TABLE requests ADD COLUMN attempted_by TEXT NOT NULL DEFAULT '[]'; -- JSON array: the owner of each claim

-- Claims take the oldest pending async job; the rescuer looks for expired leases.
CREATE INDEX requests_claimable ON requests (created_at, id) WHERE status = 'pending' AND mode = 'async';
CREATE INDEX requests_leased ON requests (lease_expires_at) WHERE status = 'processing';

-- One row per request with a callback_url, from the moment its job has finished.
CREATE TABLE deliveries (
    request_id       TEXT PRIMARY KEY NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    due_at           TEXT NOT NULL,              -- RFC 3339 UTC: the next attempt may start then
    attempts         INTEGER NOT NULL DEFAULT 0, -- attempts made, over every round
    round_start      INTEGER NOT NULL DEFAULT 0, -- `attempts` when the current round began (redeliver)
    claim            INTEGER NOT NULL DEFAULT 0, -- claims so far: the fencing token
    lease_owner      TEXT,
    lease_expires_at TEXT,
    last_status_code INTEGER,
    last_error       TEXT,
    attempted_by     TEXT NOT NULL DEFAULT '[]'  -- JSON array: the owner of each claim
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE status = 'delivering';

-- Deliveries in progress when the last version stopped resume as pending, due when they were.
INSERT INTO deliveries (request_id, status, due_at, attempts, round_start, last_status_code, last_error)
SELECT id,
       CASE delivery_status WHEN 'delivering' THEN 'pending' ELSE delivery_status END,
       COALESCE(next_attempt_at, completed_at, created_at),
       attempts, delivery_round_start, last_status_code, last_error
FROM requests WHERE delivery_status IS NOT NULL;

DROP INDEX requests_unfinished_deliveries;
ALTER TABLE requests DROP COLUMN delivery_status;
ALTER TABLE requests DROP COLUMN next_attempt_at;
ALTER TABLE requests DROP COLUMN last_status_code;
ALTER TABLE requests DROP COLUMN delivery_round_start;
ALTER TABLE requests DROP COLUMN attempts;
ALTER TABLE requests DROP COLUMN last_error;

-- Running totals of deliveries by state, kept by triggers like request_stats. `retrying` is a
-- pending delivery that has had an attempt.
CREATE TABLE delivery_stats (
    state TEXT PRIMARY KEY NOT NULL,
    count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO delivery_stats (state) VALUES ('pending'), ('retrying'), ('delivering'), ('delivered'), ('failed');
UPDATE delivery_stats SET count = (
    SELECT COUNT(*) FROM deliveries d
    WHERE CASE WHEN d.status = 'pending' AND d.attempts > 0 THEN 'retrying' ELSE d.status END = delivery_stats.state);

CREATE TRIGGER delivery_stats_on_insert AFTER INSERT ON deliveries BEGIN
    UPDATE delivery_stats SET count = count + 1
    WHERE state = CASE WHEN NEW.status = 'pending' AND NEW.attempts > 0 THEN 'retrying' ELSE NEW.status END;
END;

CREATE TRIGGER delivery_stats_on_update AFTER UPDATE OF status, attempts ON deliveries BEGIN
    UPDATE delivery_stats SET count = count - 1
    WHERE state = CASE WHEN OLD.status = 'pending' AND OLD.attempts > 0 THEN 'retrying' ELSE OLD.status END;
    UPDATE delivery_stats SET count = count + 1
    WHERE state = CASE WHEN NEW.status = 'pending' AND NEW.attempts > 0 THEN 'retrying' ELSE NEW.status END;
END;

CREATE TRIGGER delivery_stats_on_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_stats SET count = count - 1
    WHERE state = CASE WHEN OLD.status = 'pending' AND OLD.attempts > 0 THEN 'retrying' ELSE OLD.status END;
END;

-- Finished requests are deleted after RETENTION_HOURS: the purge looks for them by age.
CREATE INDEX requests_finished ON requests (completed_at) WHERE status IN ('done', 'failed');

-- The replicas that work on this database (for SQLite, the one server), with the figures they
-- report at each heartbeat.
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY NOT NULL,
    started_at     TEXT NOT NULL,
    last_seen_at   TEXT NOT NULL,
    workers        INTEGER NOT NULL,
    workers_busy   INTEGER NOT NULL,
    sync_in_flight INTEGER NOT NULL,
    sync_max       INTEGER NOT NULL
) WITHOUT ROWID;
