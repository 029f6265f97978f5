-- The attempt log, kept by SQLite itself: recording an attempt moves its delivery on (status,
-- due time, `attempts` = the attempt's number) and stores what happened in the `last_*` columns,
-- and this trigger copies that attempt into `callback_attempts` in the same statement. Recording
-- a batch of attempts is then one statement, atomic on its own, instead of a transaction of four
-- (BEGIN, the update, the insert, COMMIT), each a hand-off to sqlx's SQLite thread and back with
-- the writer held (as the outbox trigger did for finishes). Only an update that the claim's fence
-- let through raises `attempts`, so a stale attempt logs nothing. PostgreSQL writes the same row
-- in its recording statement (a CTE).
ALTER TABLE deliveries ADD COLUMN last_attempted_at TEXT;   -- RFC 3339 UTC
ALTER TABLE deliveries ADD COLUMN last_duration_ms REAL;
ALTER TABLE deliveries ADD COLUMN last_error_class TEXT;

CREATE TRIGGER callback_attempts_log AFTER UPDATE OF attempts ON deliveries
WHEN NEW.attempts > OLD.attempts AND NEW.last_attempted_at IS NOT NULL
BEGIN
    INSERT INTO callback_attempts (request_id, number, attempted_at, duration_ms, status_code, error_class, error)
    VALUES (NEW.request_id, NEW.attempts, NEW.last_attempted_at, COALESCE(NEW.last_duration_ms, 0),
            NEW.last_status_code, NEW.last_error_class, NEW.last_error)
    ON CONFLICT (request_id, number) DO NOTHING;
END;
