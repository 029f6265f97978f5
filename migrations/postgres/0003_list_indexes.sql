-- GET /requests' indexes, made cheaper to keep, as SQLite's migration 0008 did. A job's row
-- changes its status twice (claimed, finished), and neither update can be HOT (the status is in
-- the partial indexes' predicates), so each new row version was entered in all three of 0001's
-- list indexes; the two by mode and by status cost PostgreSQL 7 to 10% of its CPU per job
-- (docs/benchmarks-issue-9.md, 2026-12-07 at 17:10). And `requests_by_created` was
-- descending: each new request went in at its left edge, where PostgreSQL's append fast path
-- (for the rightmost leaf) never applies.
--
-- What replaces them: one ascending index for the newest-first order (read backwards, with no
-- sort), and partial indexes only for the filters that pick out few rows: failed requests, sync
-- requests. A page filtered by another status or by `async` reads `requests_by_created`
-- backwards and stops after the rows the running totals say match (src/db/listing.rs); pending
-- requests come from the claim's `requests_claimable`, those in flight from the rescuer's
-- `requests_leased`. src/db/postgres/plans.rs checks each filter's plan.
--
-- On a database that already holds many requests, this migration builds the new indexes once,
-- with writes to `requests` held until it ends (a replica starting it takes the migrations' lock;
-- the others wait for it).
DROP INDEX requests_by_created;
DROP INDEX requests_by_mode;
DROP INDEX requests_by_status;
CREATE INDEX requests_by_created ON requests (created_at, id);
CREATE INDEX requests_failed ON requests (created_at, id) WHERE status = 'failed';
CREATE INDEX requests_sync ON requests (created_at, id) WHERE mode = 'sync';
