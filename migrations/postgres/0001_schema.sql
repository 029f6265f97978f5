-- The PostgreSQL schema: the same model as SQLite's (see migrations/sqlite and src/db/store.rs),
-- built for several replicas on one database. The database is the queue: jobs and deliveries are
-- claimed with FOR UPDATE SKIP LOCKED under leases from the database's clock, and every write of
-- an outcome is fenced by (owner, attempt).

-- Timestamps leave the database as RFC 3339 UTC text with milliseconds, the API's form.
CREATE FUNCTION rfc3339(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

-- One row per /sync or /async request.
CREATE TABLE requests (
    id                text PRIMARY KEY,          -- UUID v7: unique and roughly time-ordered
    mode              text NOT NULL CHECK (mode IN ('sync', 'async')),
    payload           jsonb NOT NULL,            -- the work payload as the client sent it
    status            text NOT NULL CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    result            jsonb,
    error             text,
    callback_url      text,                      -- async only; NULL means the client polls
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    completed_at      timestamptz,
    execution_time_ms double precision,
    client_ip         text,                      -- for auditing; never returned by the API
    attempt           bigint NOT NULL DEFAULT 0, -- claims so far: the fencing token
    lease_owner       text,                      -- the replica holding it while `processing`
    lease_expires_at  timestamptz,               -- the database's clock
    attempted_by      text[] NOT NULL DEFAULT '{}' -- the owner of each claim
) WITH (fillfactor = 80);                        -- room for HOT updates of the lease columns

CREATE INDEX requests_by_created ON requests (created_at DESC, id DESC);
CREATE INDEX requests_by_mode ON requests (mode, created_at DESC);
CREATE INDEX requests_by_status ON requests (status, created_at DESC);
-- Claims take the oldest pending async job; the backlog is counted here.
CREATE INDEX requests_claimable ON requests (created_at, id) WHERE status = 'pending' AND mode = 'async';
-- The rescuer looks for expired leases; the purge for old finished requests.
CREATE INDEX requests_leased ON requests (lease_expires_at) WHERE status = 'processing';
CREATE INDEX requests_finished ON requests (completed_at) WHERE status IN ('done', 'failed');

-- One row per request with a callback_url, written in the transaction that stores its result.
CREATE TABLE deliveries (
    request_id       text PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    status           text NOT NULL CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    due_at           timestamptz NOT NULL,       -- the next attempt may start then
    attempts         bigint NOT NULL DEFAULT 0,  -- attempts made, over every round
    round_start      bigint NOT NULL DEFAULT 0,  -- `attempts` when the current round began (redeliver)
    claim            bigint NOT NULL DEFAULT 0,  -- claims so far: the fencing token
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status_code bigint,
    last_error       text,
    attempted_by     text[] NOT NULL DEFAULT '{}'
) WITH (fillfactor = 80);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE status = 'delivering';

-- Every callback attempt, for GET /requests/{id}/attempts.
CREATE TABLE callback_attempts (
    request_id   text NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    number       bigint NOT NULL,
    attempted_at timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    status_code  bigint,
    error_class  text,
    error        text,
    PRIMARY KEY (request_id, number)
);

-- Idempotency keys, unique per scope across every replica: the primary key decides which of two
-- concurrent submissions wins.
CREATE TABLE idempotency_keys (
    scope      text NOT NULL,
    key        text NOT NULL,
    body_hash  text NOT NULL,
    request_id text NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_by_request ON idempotency_keys (request_id);

-- The replicas working on this database, with the figures they report at each heartbeat.
CREATE TABLE replicas (
    id             text PRIMARY KEY,
    started_at     timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    workers        integer NOT NULL,
    workers_busy   integer NOT NULL,
    sync_in_flight integer NOT NULL,
    sync_max       integer NOT NULL
);

-- Running totals behind /metrics, kept by statement-level triggers. A single counter row per
-- (mode, status) would be locked by every write of every replica; the totals are instead split
-- into 16 shards, and each connection adds to the shard of its backend pid. Readers sum them.
CREATE TABLE request_stats (
    shard              smallint NOT NULL,
    mode               text NOT NULL,
    status             text NOT NULL,
    count              bigint NOT NULL DEFAULT 0,
    execution_ms_sum   double precision NOT NULL DEFAULT 0,
    execution_ms_count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, mode, status)
);

CREATE TABLE delivery_stats (
    shard smallint NOT NULL,
    state text NOT NULL,     -- pending, retrying (pending after an attempt), delivering, delivered, failed
    count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, state)
);

-- An UPDATE moves rows between (mode, status) totals: subtract the old rows, add the new ones, in
-- this connection's shard. Rows are written in a fixed order so that two transactions never wait
-- on each other's rows in opposite orders; updates that move nothing (heartbeats) write nothing.
CREATE FUNCTION request_stats_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO request_stats AS s (shard, mode, status, count, execution_ms_sum, execution_ms_count)
    SELECT pg_backend_pid() % 16, d.mode, d.status, sum(d.n), sum(d.ms), sum(d.timed)
    FROM (
        SELECT mode, status, 1 AS n, coalesce(execution_time_ms, 0) AS ms,
               (execution_time_ms IS NOT NULL)::int AS timed
        FROM new_rows
        UNION ALL
        SELECT mode, status, -1, -coalesce(execution_time_ms, 0), -((execution_time_ms IS NOT NULL)::int)
        FROM old_rows
    ) AS d
    GROUP BY d.mode, d.status
    HAVING sum(d.n) <> 0 OR sum(d.ms) <> 0 OR sum(d.timed) <> 0
    ORDER BY d.mode, d.status
    ON CONFLICT (shard, mode, status) DO UPDATE SET
        count = s.count + excluded.count,
        execution_ms_sum = s.execution_ms_sum + excluded.execution_ms_sum,
        execution_ms_count = s.execution_ms_count + excluded.execution_ms_count;
    RETURN NULL;
END $$;

CREATE FUNCTION request_stats_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO request_stats AS s (shard, mode, status, count, execution_ms_sum, execution_ms_count)
    SELECT pg_backend_pid() % 16, mode, status, count(*), sum(coalesce(execution_time_ms, 0)), count(execution_time_ms)
    FROM new_rows GROUP BY mode, status ORDER BY mode, status
    ON CONFLICT (shard, mode, status) DO UPDATE SET
        count = s.count + excluded.count,
        execution_ms_sum = s.execution_ms_sum + excluded.execution_ms_sum,
        execution_ms_count = s.execution_ms_count + excluded.execution_ms_count;
    RETURN NULL;
END $$;

CREATE FUNCTION request_stats_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO request_stats AS s (shard, mode, status, count, execution_ms_sum, execution_ms_count)
    SELECT pg_backend_pid() % 16, mode, status, -count(*), -sum(coalesce(execution_time_ms, 0)), -count(execution_time_ms)
    FROM old_rows GROUP BY mode, status ORDER BY mode, status
    ON CONFLICT (shard, mode, status) DO UPDATE SET
        count = s.count + excluded.count,
        execution_ms_sum = s.execution_ms_sum + excluded.execution_ms_sum,
        execution_ms_count = s.execution_ms_count + excluded.execution_ms_count;
    RETURN NULL;
END $$;

CREATE TRIGGER request_stats_insert AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION request_stats_on_insert();
CREATE TRIGGER request_stats_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION request_stats_on_update();
CREATE TRIGGER request_stats_delete AFTER DELETE ON requests
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION request_stats_on_delete();

-- A delivery's state as /metrics counts it.
CREATE FUNCTION delivery_state(status text, attempts bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END;

CREATE FUNCTION delivery_stats_on_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_stats AS s (shard, state, count)
        SELECT pg_backend_pid() % 16, delivery_state(status, attempts), count(*)
        FROM new_rows GROUP BY 2 ORDER BY 2
        ON CONFLICT (shard, state) DO UPDATE SET count = s.count + excluded.count;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_stats AS s (shard, state, count)
        SELECT pg_backend_pid() % 16, delivery_state(status, attempts), -count(*)
        FROM old_rows GROUP BY 2 ORDER BY 2
        ON CONFLICT (shard, state) DO UPDATE SET count = s.count + excluded.count;
    ELSE
        INSERT INTO delivery_stats AS s (shard, state, count)
        SELECT pg_backend_pid() % 16, d.state, sum(d.n)
        FROM (SELECT delivery_state(status, attempts) AS state, 1 AS n FROM new_rows
              UNION ALL
              SELECT delivery_state(status, attempts), -1 FROM old_rows) AS d
        GROUP BY d.state HAVING sum(d.n) <> 0 ORDER BY d.state
        ON CONFLICT (shard, state) DO UPDATE SET count = s.count + excluded.count;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER delivery_stats_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_stats_on_change();
CREATE TRIGGER delivery_stats_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_stats_on_change();
CREATE TRIGGER delivery_stats_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_stats_on_change();

-- The cluster-wide rate limit: GCRA's theoretical arrival time per client. UNLOGGED: no WAL is
-- written for it, and losing it in a crash only forgives every client's recent requests.
CREATE UNLOGGED TABLE rate_limits (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- When the last retention purge round started: replicas start a round only when none started
-- within the purge interval, so the cluster purges once per interval.
CREATE TABLE purge_rounds (
    id         integer PRIMARY KEY CHECK (id = 1),
    started_at timestamptz NOT NULL
);
