-- GET /requests' indexes, made cheaper to keep. The three of 0001 were written on every
-- acknowledgement, and the status one twice more on every job (a delete and an insert at its
-- claim and at its finish); being descending, each new row went in at the left edge of its
-- range, where SQLite splits pages rather than appending. Together they cost about a sixth of the
-- acknowledgements a second (see the README, "2026-12-06, late").
--
-- What replaces them: one ascending index for the newest-first order (read backwards, with no
-- sort), and partial indexes only for the filters that pick out few rows: failed requests, sync
-- requests. A page filtered by another status or by `async` reads `requests_by_created`
-- backwards and stops after the rows the running totals say match (src/db/sqlite/reads.rs);
-- its total comes from those totals. src/db/sqlite/plans.rs checks each filter's plan.
DROP INDEX requests_by_created;
DROP INDEX requests_by_mode;
DROP INDEX requests_by_status;
CREATE INDEX requests_by_created ON requests (created_at, id);
CREATE INDEX requests_failed ON requests (created_at, id) WHERE status = 'failed';
CREATE INDEX requests_sync ON requests (created_at, id) WHERE mode = 'sync';
-- Sync requests left pending by builds before the leases, failed at start: none is written any
-- more, so this index stays empty and costs nothing.
CREATE INDEX requests_unleased_sync ON requests (id) WHERE status = 'pending' AND mode = 'sync';
