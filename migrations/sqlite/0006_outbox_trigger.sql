-- The outbox, kept by SQLite itself: an async job with a callback that ends (done or failed,
-- whether a worker stored its outcome or the rescuer gave up on it) gets its delivery, due now,
-- in the very statement that ends it. A finish is then one statement, atomic on its own, instead
-- of a transaction of four (BEGIN, the update, the insert, COMMIT), each a hand-off to sqlx's
-- SQLite thread and back. PostgreSQL writes the same row in its finishing statement (a CTE).
CREATE TRIGGER deliveries_outbox AFTER UPDATE OF status ON requests
WHEN NEW.mode = 'async' AND NEW.callback_url IS NOT NULL
     AND NEW.status IN ('done', 'failed') AND OLD.status NOT IN ('done', 'failed')
BEGIN
    INSERT INTO deliveries (request_id, status, due_at)
    VALUES (NEW.id, 'pending', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ON CONFLICT (request_id) DO NOTHING;
END;
