-- Running totals behind GET /metrics, kept by triggers, so that the endpoint reads eight rows
-- instead of scanning every request (which grew with the table and slowed a busy server).
CREATE TABLE request_stats (
    mode               TEXT NOT NULL,
    status             TEXT NOT NULL,
    count              INTEGER NOT NULL DEFAULT 0,
    execution_ms_sum   REAL NOT NULL DEFAULT 0,     -- over the rows that have an execution time
    execution_ms_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mode, status)
) WITHOUT ROWID;

-- Every (mode, status) pair the CHECK constraints of `requests` allow, with the current totals.
INSERT INTO request_stats (mode, status)
SELECT m.mode, s.status
FROM (SELECT 'sync' AS mode UNION ALL SELECT 'async') AS m,
     (SELECT 'pending' AS status UNION ALL SELECT 'processing' UNION ALL SELECT 'done' UNION ALL SELECT 'failed') AS s;
UPDATE request_stats SET
    count = (SELECT COUNT(*) FROM requests r WHERE r.mode = request_stats.mode AND r.status = request_stats.status),
    execution_ms_sum = (SELECT COALESCE(SUM(execution_time_ms), 0) FROM requests r
                        WHERE r.mode = request_stats.mode AND r.status = request_stats.status),
    execution_ms_count = (SELECT COUNT(execution_time_ms) FROM requests r
                          WHERE r.mode = request_stats.mode AND r.status = request_stats.status);

CREATE TRIGGER request_stats_on_insert AFTER INSERT ON requests BEGIN
    UPDATE request_stats SET
        count = count + 1,
        execution_ms_sum = execution_ms_sum + COALESCE(NEW.execution_time_ms, 0),
        execution_ms_count = execution_ms_count + (NEW.execution_time_ms IS NOT NULL)
    WHERE mode = NEW.mode AND status = NEW.status;
END;

CREATE TRIGGER request_stats_on_update AFTER UPDATE OF status, execution_time_ms ON requests BEGIN
    UPDATE request_stats SET
        count = count - 1,
        execution_ms_sum = execution_ms_sum - COALESCE(OLD.execution_time_ms, 0),
        execution_ms_count = execution_ms_count - (OLD.execution_time_ms IS NOT NULL)
    WHERE mode = OLD.mode AND status = OLD.status;
    UPDATE request_stats SET
        count = count + 1,
        execution_ms_sum = execution_ms_sum + COALESCE(NEW.execution_time_ms, 0),
        execution_ms_count = execution_ms_count + (NEW.execution_time_ms IS NOT NULL)
    WHERE mode = NEW.mode AND status = NEW.status;
END;

CREATE TRIGGER request_stats_on_delete AFTER DELETE ON requests BEGIN
    UPDATE request_stats SET
        count = count - 1,
        execution_ms_sum = execution_ms_sum - COALESCE(OLD.execution_time_ms, 0),
        execution_ms_count = execution_ms_count - (OLD.execution_time_ms IS NOT NULL)
    WHERE mode = OLD.mode AND status = OLD.status;
END;
