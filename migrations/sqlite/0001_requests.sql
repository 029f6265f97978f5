-- One row per /sync or /async request: what was asked, where it stands, and what came of it.
-- Timestamps are RFC 3339 UTC text with millisecond precision ("2026-11-27T10:11:54.123Z"), a
-- fixed width, so text order is time order.
CREATE TABLE requests (
    id                TEXT PRIMARY KEY NOT NULL,  -- UUID v7: unique and roughly time-ordered
    mode              TEXT NOT NULL CHECK (mode IN ('sync', 'async')),
    payload           TEXT NOT NULL,              -- the work payload as the client sent it (JSON)
    status            TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    result            TEXT,                       -- the engine's JSON result, once done
    error             TEXT,                       -- why the work failed, once failed
    callback_url      TEXT,                       -- async only; NULL means the client polls
    created_at        TEXT NOT NULL,
    started_at        TEXT,                       -- when the engine started (last start, after a restart)
    completed_at      TEXT,
    execution_time_ms REAL,                       -- engine time, without time spent waiting
    attempts          INTEGER NOT NULL DEFAULT 0, -- callback delivery attempts made
    last_error        TEXT,                       -- the last callback delivery error
    client_ip         TEXT                        -- stored for auditing; never returned by the API
);

-- GET /requests sorts newest first and filters by mode and/or status.
CREATE INDEX requests_by_created ON requests (created_at DESC, id DESC);
CREATE INDEX requests_by_mode ON requests (mode, created_at DESC);
CREATE INDEX requests_by_status ON requests (status, created_at DESC);
