//! The plans PostgreSQL makes for the statements that must not read every request: the sync
//! rescue, which every replica runs every few seconds, and GET /requests' pages. PostgreSQL
//! plans from its statistics, so each test first fills its database with a history of finished
//! requests and a backlog of waiting ones, and analyzes it.

use sqlx::{PgPool, Postgres, QueryBuilder};

use super::tests::{drop_scratch, scratch};
use super::{queue, reads};
use crate::db::ListQuery;
use crate::model::{Mode, Status};

/// 20,000 finished async jobs, older than a backlog of 5,000 waiting ones; a few of each of the
/// rarer kinds: failed, sync, in flight, a tenant's.
const FILL: [&str; 7] = [
    "INSERT INTO requests (id, mode, payload, status, created_at, completed_at) \
     SELECT 'd' || g, 'async', '{}', 'done', now() - interval '1 day' + g * interval '1 s', now() \
     FROM generate_series(1, 20000) g",
    "INSERT INTO requests (id, mode, payload, status, created_at) \
     SELECT 'p' || g, 'async', '{}', 'pending', now() + g * interval '1 ms' FROM generate_series(1, 5000) g",
    "INSERT INTO requests (id, mode, payload, status, created_at, completed_at) \
     SELECT 'f' || g, 'async', '{}', 'failed', now() - g * interval '1 min', now() FROM generate_series(1, 40) g",
    "INSERT INTO requests (id, mode, payload, status, created_at, completed_at) \
     SELECT 's' || g, 'sync', '{}', 'done', now() - g * interval '1 min', now() FROM generate_series(1, 40) g",
    "INSERT INTO requests (id, mode, payload, status, created_at, lease_owner, lease_expires_at) \
     SELECT 'l' || g, CASE WHEN g % 2 = 0 THEN 'sync' ELSE 'async' END, '{}', 'processing', now(), 'r1', \
            now() + interval '30 s' \
     FROM generate_series(1, 10) g",
    "INSERT INTO requests (id, mode, payload, status, created_at, completed_at, tenant) \
     SELECT 't' || g, 'async', '{}', 'done', now() - g * interval '1 min', now(), 'acme' \
     FROM generate_series(1, 40) g",
    "ANALYZE requests",
];

async fn filled(pool: &PgPool) -> Result<(), sqlx::Error> {
    for sql in FILL {
        sqlx::query(sql).execute(pool).await?;
    }
    Ok(())
}

/// The plan of `q`, one node per line, without costs.
async fn plan(pool: &PgPool, mut q: QueryBuilder<Postgres>) -> Result<String, sqlx::Error> {
    Ok(q.build_query_scalar::<String>().fetch_all(pool).await?.join("\n"))
}

#[tokio::test]
async fn the_sync_rescue_reads_the_requests_in_flight_not_the_backlog() {
    let Some((conn, name, store)) = scratch().await else {
        return;
    };
    // Every step's error is held until the database is dropped, so that a failure leaves none.
    let explained = async {
        filled(&store.pool).await?;
        let rescue = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (COSTS OFF) {}",
            queue::RESCUE_SYNC
        )));
        Ok::<_, sqlx::Error>(rescue.bind(false).bind("gone").fetch_all(&store.pool).await?.join("\n"))
    }
    .await;
    drop_scratch(conn, &name, store).await;
    let seen = explained.expect("explain the sync rescue");
    // Planned for 17 ms at 100,000 waiting jobs, in every replica's every rescue, it once read
    // the whole backlog through an index by status.
    assert!(seen.contains("requests_leased") && !seen.contains("Seq Scan"), "{seen}");
}

#[tokio::test]
async fn pages_of_requests_are_read_newest_first_through_the_filters_index() {
    let Some((conn, name, store)) = scratch().await else {
        return;
    };
    let filtered = |mode: Option<Mode>, status: Option<Status>| ListQuery {
        mode,
        status,
        limit: 20,
        ..ListQuery::default()
    };
    let after = |query: ListQuery| ListQuery {
        before_id: Some("d19000".into()),
        ..query
    };
    let cases = [
        // No filter, or one that most rows pass: the ascending index read backwards.
        (filtered(None, None), "requests_by_created"),
        (after(filtered(None, None)), "requests_by_created"),
        (filtered(None, Some(Status::Done)), "requests_by_created"),
        (filtered(Some(Mode::Async), None), "requests_by_created"),
        // Few rows: their own partial index, in order.
        (filtered(None, Some(Status::Pending)), "requests_claimable"),
        (after(filtered(None, Some(Status::Pending))), "requests_claimable"),
        (filtered(None, Some(Status::Failed)), "requests_failed"),
        (filtered(Some(Mode::Async), Some(Status::Failed)), "requests_failed"),
        (filtered(Some(Mode::Sync), None), "requests_sync"),
        (filtered(Some(Mode::Sync), Some(Status::Done)), "requests_sync"),
        (
            ListQuery {
                tenant: Some("acme".into()),
                ..filtered(None, Some(Status::Done))
            },
            "requests_by_tenant",
        ),
    ];
    // Every step's error is held until the database is dropped, so that a failure leaves none.
    let explained = async {
        filled(&store.pool).await?;
        let mut wrong = Vec::new();
        for (query, index) in &cases {
            let seen = plan(&store.pool, reads::page("EXPLAIN (COSTS OFF) ", query, 20)).await?;
            // The page's own scan of `requests` (the cursor's lookup reads it by id, unaliased).
            let scans: Vec<&str> = seen.lines().filter(|l| l.ends_with(" on requests r")).collect();
            let through = scans.len() == 1 && scans[0].contains(&format!(" using {index} "));
            if !through || seen.contains("Sort") {
                wrong.push(format!("{query:?}: wanted {index}, no sort\n{seen}"));
            }
        }
        // The requests in flight: the rescuer's index, and a sort of the few rows it holds.
        let in_flight = plan(
            &store.pool,
            reads::page("EXPLAIN (COSTS OFF) ", &filtered(None, Some(Status::Processing)), 20),
        )
        .await?;
        Ok::<_, sqlx::Error>((wrong, in_flight))
    }
    .await;
    drop_scratch(conn, &name, store).await;
    let (wrong, in_flight) = explained.expect("explain the pages");
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert!(
        in_flight.contains("requests_leased") && !in_flight.contains("requests_by_created"),
        "{in_flight}"
    );
}
