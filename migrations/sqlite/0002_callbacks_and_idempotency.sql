-- The async path: callback delivery state on each request, one row per delivery attempt, and
-- idempotency keys.

-- NULL when there is no callback_url or the job has not finished; then pending (due at
-- next_attempt_at), delivering (an attempt is in flight), delivered or failed.
ALTER TABLE requests ADD COLUMN delivery_status TEXT
    CHECK (delivery_status IN ('pending', 'delivering', 'delivered', 'failed'));
ALTER TABLE requests ADD COLUMN next_attempt_at TEXT;      -- RFC 3339 UTC; when the next attempt is due
ALTER TABLE requests ADD COLUMN last_status_code INTEGER;  -- HTTP status of the last attempt, if any
-- `attempts` counted before the current delivery round: a redelivery starts a new round with a
-- fresh retry budget while attempt numbers keep growing.
ALTER TABLE requests ADD COLUMN delivery_round_start INTEGER NOT NULL DEFAULT 0;

-- Startup recovery looks for deliveries that were not finished.
CREATE INDEX requests_unfinished_deliveries ON requests (delivery_status)
    WHERE delivery_status IN ('pending', 'delivering');

-- Every callback attempt, kept for GET /requests/{id}/attempts.
CREATE TABLE callback_attempts (
    request_id   TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,   -- 1, 2, 3... across every round of this request
    attempted_at TEXT NOT NULL,      -- RFC 3339 UTC
    duration_ms  REAL NOT NULL,
    status_code  INTEGER,            -- NULL when no HTTP answer came back
    error_class  TEXT,               -- NULL on success; timeout, connect, http_status, redirect, refused
    error        TEXT,               -- a short description, at most a few hundred bytes
    PRIMARY KEY (request_id, number)
);

-- Idempotency-Key: the same key from the same client replays the first answer for 24 h.
CREATE TABLE idempotency_keys (
    client_ip  TEXT NOT NULL,        -- keys are scoped per client
    key        TEXT NOT NULL,
    body_hash  TEXT NOT NULL,        -- SHA-256 of the request body: a different body is a 422
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,        -- RFC 3339 UTC; expired keys are purged
    PRIMARY KEY (client_ip, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
