//! The PostgreSQL backend, for several replicas on one database. The database is the queue:
//! jobs and deliveries are claimed with `FOR UPDATE SKIP LOCKED` under leases from the
//! database's clock, outcomes are written in batches fenced by (owner, attempt), new rows are
//! committed in groups, and replicas wake each other with a debounced NOTIFY.

mod accept;
mod backlog;
mod deliveries;
mod group_commit;
mod notify;
#[cfg(test)]
mod plans;
mod queue;
mod reads;
mod upkeep;
mod vacuum;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Connection;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use super::rows::*;
use super::store::*;
use crate::liveness::Liveness;

/// How long a caller waits for a pooled connection before failing: when the database is gone,
/// a submission answers 503 in about this time instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any statement may run, and how long a transaction may sit idle: nothing this service
/// does takes longer, and a stuck session must not pin the vacuum horizon.
const STATEMENT_TIMEOUT_MS: &str = "15000";
const IDLE_IN_TRANSACTION_TIMEOUT_MS: &str = "15000";

/// Which commits wait for the WAL to reach the disk. Each flush takes milliseconds on an ordinary
/// disk and flushes are taken one at a time, so if every claim, heartbeat and finish waited for
/// one, acceptance would queue behind background writes. The sessions of the main pool therefore
/// commit without waiting (`synchronous_commit = off`: a commit survives a crash of this process,
/// but a crash of the database server can lose its last fraction of a second), and what a client
/// is told about goes through the durable pool, whose sessions wait for the flush: the insert
/// behind a 202 and its idempotency key, the record of a sync answer, a redelivery. A lost
/// background write is repaired by the rescuer: a job whose claim or finish was lost is claimed
/// and run again (at least once, as documented).
///
/// A pool of its own rather than `SET LOCAL synchronous_commit = on` in a transaction: the group
/// commit's insert is then one statement, one round trip, instead of four (BEGIN, SET LOCAL, the
/// insert, COMMIT).
const MAIN_SYNCHRONOUS_COMMIT: &str = "off";
const DURABLE_SYNCHRONOUS_COMMIT: &str = "on";

/// How the queue's hot statements are planned. PostgreSQL keeps a prepared statement's generic
/// plan only while it looks no dearer than the plans made for the values bound, and a generic
/// plan guesses that `unnest` of a bound array yields 100 rows where a batch has a few: the
/// finishes, attempt records and delivery claims were planned anew at almost every call, a fifth
/// of PostgreSQL's time in a run with callbacks (pg_stat_statements). Their generic plans are the
/// ones the custom plans are (index lookups by primary key), so the queue pool's sessions always
/// use them. Only statements whose generic plan was checked run on it: `claim_jobs` and
/// `claim_deliveries` with a limit written in (`limit`), `finish_jobs`, and the record of
/// delivery attempts, alone or with its claim (`record_and_claim_deliveries`: its generic plan
/// is the record's and the claim's, by primary key and `deliveries_due`, checked with EXPLAIN
/// on 42,500 deliveries on 2026-12-06).
const QUEUE_PLAN_CACHE_MODE: &str = "force_generic_plan";

/// How a replica's DATABASE_MAX_CONNECTIONS (at least 4) are shared: three tenths (at least 1)
/// for the durable writes (the group commit's batches, idempotent submissions, sync results),
/// three tenths (at least 1) for the queue's hot statements, and the rest (at least 2) for the
/// main pool.
fn connection_shares(max_connections: u32) -> (u32, u32, u32) {
    let durable = durable_connections(max_connections);
    let queue = (max_connections * 3 / 10).max(1);
    (durable, queue, max_connections.saturating_sub(durable + queue).max(2))
}

/// D, the durable connections of a replica with `max_connections`: the most inserts of new jobs
/// (group-commit batches and submissions with an idempotency key) it has in flight at once, a
/// term of the backlog's overshoot bound (see `accept`).
pub fn durable_connections(max_connections: u32) -> u32 {
    (max_connections * 3 / 10).max(1)
}

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PgStore {
    /// Claims, finishes, heartbeats, deliveries, reads and upkeep.
    pool: PgPool,
    /// The writes a client is told about, committed only once they reach the disk.
    durable: PgPool,
    /// The queue's hot statements, always on their generic plans (`QUEUE_PLAN_CACHE_MODE`).
    queue: PgPool,
    /// Concurrent inserts of new requests share one statement and one commit.
    group_commit: group_commit::GroupCommit,
    /// Tells the other replicas (NOTIFY) that there are new jobs, at most once per interval.
    announce: Arc<notify::Announcer>,
    /// The backlog, counted at most a few times a second rather than once per 202.
    backlog: Arc<backlog::BacklogCount>,
}

/// Connects to `url`, brings the schema up to date (migrations take an advisory lock, so
/// replicas starting together do not race), and starts the commit and announce loops.
pub async fn connect(
    url: &str,
    max_connections: u32,
    notify_interval: Duration,
    liveness: &Liveness,
) -> anyhow::Result<PgStore> {
    let options = PgConnectOptions::from_str(url)
        .context("reading DATABASE_URL")?
        .application_name("sync-async");
    let session = |synchronous_commit, plan_cache_mode| {
        options.clone().options([
            ("statement_timeout", STATEMENT_TIMEOUT_MS),
            ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT_MS),
            ("synchronous_commit", synchronous_commit),
            ("plan_cache_mode", plan_cache_mode),
        ])
    };
    let (durable_max, queue_max, main_max) = connection_shares(max_connections);
    let pool = open_pool(main_max, session(MAIN_SYNCHRONOUS_COMMIT, "auto")).await?;
    let durable = open_pool(durable_max, session(DURABLE_SYNCHRONOUS_COMMIT, "auto")).await?;
    let queue = open_pool(queue_max, session(MAIN_SYNCHRONOUS_COMMIT, QUEUE_PLAN_CACHE_MODE)).await?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .context("running database migrations")?;
    let announce = notify::Announcer::start(pool.clone(), notify_interval);
    let backlog = Arc::new(backlog::BacklogCount::default());
    let group_commit = group_commit::GroupCommit::start(
        durable.clone(),
        announce.clone(),
        backlog.clone(),
        liveness.register("commit", None),
    );
    vacuum::start(pool.clone(), liveness.register("vacuum", Some(vacuum::VACUUM_EVERY)));
    Ok(PgStore {
        pool,
        durable,
        queue,
        group_commit,
        announce,
        backlog,
    })
}

/// Opens a pool of up to `max` sessions, or says in one line which server failed and why. The
/// pool tries a refused connection again until its timeout and then reports only the timeout, so
/// one direct attempt finds the cause ("Connection refused"). A server's own refusal is given as
/// its message alone: sqlx's text adds PostgreSQL's source line, and repeats in the error's source.
async fn open_pool(max: u32, options: PgConnectOptions) -> anyhow::Result<PgPool> {
    let opened = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await;
    let error = match opened {
        Ok(pool) => return Ok(pool),
        Err(sqlx::Error::PoolTimedOut) => {
            match tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options)).await {
                Ok(Err(cause)) => cause,
                // It answered this time: the timeout is still what happened.
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    sqlx::Error::PoolTimedOut
                }
                Err(_) => sqlx::Error::PoolTimedOut,
            }
        }
        Err(e) => e,
    };
    let cause = match &error {
        sqlx::Error::Database(e) => e.message().to_owned(),
        sqlx::Error::Io(e) => e.to_string(),
        sqlx::Error::PoolTimedOut => format!("no connection within {} s", ACQUIRE_TIMEOUT.as_secs()),
        other => other.to_string(),
    };
    anyhow::bail!(
        "connecting to PostgreSQL at {}:{}: {cause}",
        options.get_host(),
        options.get_port()
    )
}

impl PgStore {
    /// Where a claim of up to `max` runs: on the queue pool when its limit is written into the
    /// statement, whose generic plan then takes the limit into account; a bound limit's generic
    /// plan guesses a tenth of the table, so that claim is planned at every call on the main pool.
    fn planned_for(&self, max: usize) -> &PgPool {
        if limit_is_bound(max) { &self.pool } else { &self.queue }
    }
}

/// A duration as the seconds PostgreSQL's `make_interval(secs => …)` takes.
pub(super) fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A count or limit as PostgreSQL's bigint.
pub(super) fn big(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The LIMIT of a hot statement: the number itself for up to `INLINE_LIMITS`, else the bound
/// parameter `$param`. PostgreSQL plans a prepared statement once and keeps that generic plan
/// only if it looks no dearer than the plans made for the values bound; a generic plan guesses
/// that a bound LIMIT takes a tenth of the table (then a hash join over a sequential scan looks
/// right: 7 claims a second instead of 1,400, measured with pgbench), so the claims were planned
/// anew at every call, a fifth of their cost. With the number written in, the plan is made once
/// per connection and limit, and a replica's claims take at most `INLINE_LIMITS` statements.
pub(super) fn limit(n: usize, param: u8) -> String {
    if limit_is_bound(n) {
        format!("${param}")
    } else {
        n.to_string()
    }
}

/// Whether `limit(n, …)` is the bound parameter, which the caller must then bind.
pub(super) fn limit_is_bound(n: usize) -> bool {
    n > INLINE_LIMITS
}

/// Binds the limit `n` when `limit(n, …)` did not write it in.
pub(super) fn bind_limit(
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    n: usize,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    if limit_is_bound(n) { query.bind(big(n)) } else { query }
}

/// Limits up to this are written into the statement (`limit`), each its own prepared statement
/// (sqlx keeps 100 per connection).
const INLINE_LIMITS: usize = 64;

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn accept_job(
        &self,
        job: &NewJob,
        key: Option<&KeyClaim>,
        backlog_limit: u64,
    ) -> Result<Accepted, sqlx::Error> {
        let accepted = match key {
            None => {
                self.group_commit
                    .insert(accept::InsertRow::job(job, backlog_limit))
                    .await?
            }
            Some(key) => accept::insert_with_key(&self.durable, job, key, backlog_limit).await?,
        };
        if accepted == Accepted::Stored {
            self.announce.jobs();
        }
        Ok(accepted)
    }

    async fn find_key(&self, scope: &str, key: &str, not_before: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        accept::find_key(&self.pool, scope, key, not_before).await
    }

    async fn start_sync(&self, request: &NewSync, owner: &str, lease: Duration) -> Result<(), sqlx::Error> {
        self.group_commit
            .insert(accept::InsertRow::sync(request, owner, lease))
            .await
            .map(|_| ())
    }

    async fn finish_sync(&self, id: &str, owner: &str, completion: &Completion) -> Result<bool, sqlx::Error> {
        accept::finish_sync(&self.durable, id, owner, completion).await
    }

    async fn claim_jobs(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        queue::claim_jobs(self.planned_for(max), owner, max, lease).await
    }

    async fn finish_jobs(&self, owner: &str, finishes: &[JobFinish]) -> Result<Vec<bool>, sqlx::Error> {
        let (applied, deliveries) = queue::finish_jobs(&self.queue, owner, finishes).await?;
        if deliveries {
            self.announce.deliveries();
        }
        Ok(applied)
    }

    async fn finish_and_claim(
        &self,
        owner: &str,
        finishes: &[JobFinish],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error> {
        let (applied, deliveries, claimed) =
            queue::finish_and_claim(self.planned_for(max), owner, finishes, max, lease).await?;
        if deliveries {
            self.announce.deliveries();
        }
        Ok((applied, claimed))
    }

    async fn release_jobs(&self, owner: &str, jobs: &[Lease]) -> Result<(), sqlx::Error> {
        if queue::release_jobs(&self.pool, owner, jobs).await? > 0 {
            self.announce.jobs();
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        owner: &str,
        held: &Held,
        lease: Duration,
        replica: &ReplicaBeat,
    ) -> Result<Held, sqlx::Error> {
        queue::heartbeat(&self.pool, owner, held, lease, replica).await
    }

    async fn rescue(&self, max_attempts: u32, everything: bool) -> Result<Rescued, sqlx::Error> {
        let rescued = queue::rescue(&self.pool, max_attempts, everything).await?;
        if rescued.jobs_requeued > 0 {
            self.announce.jobs();
        }
        if rescued.deliveries_requeued + rescued.jobs_failed > 0 {
            self.announce.deliveries();
        }
        Ok(rescued)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        deliveries::claim(self.planned_for(max), owner, max, lease).await
    }

    async fn next_delivery_due_in(&self) -> Result<Option<Duration>, sqlx::Error> {
        deliveries::next_due_in(&self.pool).await
    }

    async fn record_and_claim_deliveries(
        &self,
        owner: &str,
        records: &[AttemptRecord],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error> {
        deliveries::record_and_claim(self.planned_for(max), owner, records, max, lease).await
    }

    async fn redeliver(&self, id: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
        let outcome = deliveries::redeliver(&self.durable, &self.pool, id).await?;
        if outcome.is_ok() {
            self.announce.deliveries();
        }
        Ok(outcome)
    }

    async fn get(&self, id: &str) -> Result<Option<RequestRow>, sqlx::Error> {
        reads::get(&self.pool, id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error> {
        reads::list(&self.pool, query).await
    }

    async fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
        deliveries::attempts(&self.pool, id).await
    }

    async fn summary(&self) -> Result<Summary, sqlx::Error> {
        reads::summary(&self.pool).await
    }

    async fn backlog(&self) -> Result<u64, sqlx::Error> {
        reads::backlog(&self.pool).await
    }

    async fn backlog_estimate(&self) -> Result<u64, sqlx::Error> {
        self.backlog.get(&self.pool).await
    }

    async fn replicas(&self, within: Duration) -> Result<Vec<ReplicaRow>, sqlx::Error> {
        reads::replicas(&self.pool, within).await
    }

    async fn purge(&self, round: PurgeRound<'_>) -> Result<Purged, sqlx::Error> {
        upkeep::purge(&self.pool, round).await
    }

    async fn ping_write(&self, owner: &str) -> Result<(), sqlx::Error> {
        upkeep::ping_write(&self.pool, owner).await
    }

    async fn storage(&self) -> Result<StorageFigures, sqlx::Error> {
        Ok(StorageFigures {
            database_bytes: upkeep::database_bytes(&self.pool).await?,
            wal: None,
            writer: None,
        })
    }

    async fn take_rate_tokens(
        &self,
        key: &str,
        tokens: u32,
        burst: u32,
        window: Duration,
    ) -> Result<Option<RateVerdict>, sqlx::Error> {
        upkeep::take_rate_tokens(&self.pool, key, tokens, burst, window)
            .await
            .map(Some)
    }

    fn listen(&self, wake: &Wakeups, liveness: &Liveness) {
        notify::listen(
            self.pool.clone(),
            wake.clone(),
            liveness.register("listener", Some(notify::LISTEN_TICK)),
        );
    }

    async fn close(&self) {
        self.queue.close().await;
        self.durable.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use sqlx::Connection;

    /// The server the test database is made on, as in the integration tests' `pg.rs`.
    fn admin_url() -> String {
        std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A fresh database with the schema, its store, and the admin connection that drops it
    /// (`drop_scratch`); `None` when no PostgreSQL answers and `CI` is unset.
    pub(super) async fn scratch() -> Option<(sqlx::PgConnection, String, PgStore)> {
        let admin = admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set, and PostgreSQL at {admin} does not answer: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PostgreSQL at {admin} ({e})");
                return None;
            }
        };
        let name = format!("sync_async_unit_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the database");
        let url = format!("{}/{name}", admin.rsplit_once('/').expect("a database in the URL").0);
        let store = connect(&url, 10, Duration::from_millis(50), &Liveness::new())
            .await
            .expect("connect");
        Some((conn, name, store))
    }

    pub(super) async fn drop_scratch(mut conn: sqlx::PgConnection, name: &str, store: PgStore) {
        store.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .expect("drop the database");
    }

    #[tokio::test]
    async fn durable_sessions_wait_for_the_flush_and_queue_sessions_keep_generic_plans() {
        let Some((conn, name, store)) = scratch().await else {
            return;
        };
        let setting = |pool: PgPool| async move {
            sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
                .fetch_one(&pool)
                .await
                .expect("show")
        };

        let (durable, main) = (setting(store.durable.clone()).await, setting(store.pool.clone()).await);
        let queue_plans = sqlx::query_scalar::<_, String>("SHOW plan_cache_mode")
            .fetch_one(&store.queue)
            .await
            .expect("show");

        drop_scratch(conn, &name, store).await;
        assert_eq!((durable.as_str(), main.as_str()), ("on", "off"));
        assert_eq!(queue_plans, "force_generic_plan");
        assert_eq!(connection_shares(4), (1, 1, 2));
        assert_eq!(connection_shares(10), (3, 3, 4));
    }

    /// Without autovacuum (this machine's server runs without it), a table that grew from empty
    /// but holds no dead rows was never analyzed, and the queue's generic plans stayed those made
    /// for an empty table. The small tables are left alone: their statements go by primary key.
    #[tokio::test]
    async fn a_table_that_grew_from_empty_is_analyzed_without_dead_rows() {
        let Some((conn, name, store)) = scratch().await else {
            return;
        };
        // One transaction, so that both tables' changes reach the statistics together.
        let sql = "BEGIN; \
                   INSERT INTO requests (id, mode, payload, status, created_at) \
                   SELECT 'a' || g, 'async', '{}', 'pending', now() FROM generate_series(1, 5000) g; \
                   INSERT INTO replicas (id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max) \
                   SELECT 'r' || g, now(), now(), 5, 0, 0, 10 FROM generate_series(1, 5000) g; \
                   COMMIT";
        sqlx::raw_sql(sql).execute(&store.pool).await.expect(sql);
        let stats = "SELECT (last_analyze IS NOT NULL, last_vacuum IS NOT NULL) FROM pg_stat_user_tables \
                     WHERE relname = $1";
        let seen = |table: &'static str| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, (bool, bool)>(stats)
                    .bind(table)
                    .fetch_one(&pool)
                    .await
                    .expect(stats)
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (analyzed, vacuumed) = loop {
            let now = seen("requests").await;
            if now.0 || std::time::Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (replicas_analyzed, _) = seen("replicas").await;
        drop_scratch(conn, &name, store).await;
        assert!(
            analyzed,
            "requests was not analyzed within 30 s of growing by 5,000 rows"
        );
        assert!(!vacuumed, "nothing to vacuum: no row was updated or deleted");
        assert!(
            !replicas_analyzed,
            "replicas is not one of the tables analyzed between vacuums"
        );
    }

    /// The backlog comes from the running totals: it must agree with the rows, through inserts,
    /// claims and deletes.
    #[tokio::test]
    async fn the_backlog_read_from_the_totals_agrees_with_the_rows() {
        let Some((conn, name, store)) = scratch().await else {
            return;
        };
        let count = "SELECT count(*) FROM requests WHERE status = 'pending' AND mode = 'async'";
        let mut seen = Vec::new();
        for sql in [
            "INSERT INTO requests (id, mode, payload, status, created_at) \
             SELECT 'a' || g, 'async', '{}', 'pending', now() FROM generate_series(1, 40) g",
            "INSERT INTO requests (id, mode, payload, status, created_at) \
             SELECT 's' || g, 'sync', '{}', 'pending', now() FROM generate_series(1, 5) g",
            "UPDATE requests SET status = 'processing' WHERE id IN ('a1', 'a2', 'a3', 's1')",
            "DELETE FROM requests WHERE id IN ('a4', 'a5', 'a1')",
        ] {
            sqlx::query(sql).execute(&store.pool).await.expect(sql);
            let rows: i64 = sqlx::query_scalar(count).fetch_one(&store.pool).await.expect(count);
            seen.push((
                store.backlog().await.expect("backlog"),
                u64::try_from(rows).expect("a count"),
            ));
        }
        drop_scratch(conn, &name, store).await;
        assert_eq!(seen, [(40, 40), (40, 40), (37, 37), (35, 35)]);
    }
}
