//! The plans SQLite makes for the statements that run all the time or with the writer held: the
//! claim, the rescue, the purge and the backlog's count. Each must reach its rows through the
//! index made for it, bounded by the rows it is about (the pending ones, the ones in flight, the
//! expired ones), never through an index that holds every request ever stored. Nothing runs
//! `ANALYZE`, so SQLite plans without statistics and the plan does not depend on the rows stored:
//! an empty database shows the plan a full one gets.
//!
//! GET /requests' pages are checked too: each filter reaches its rows newest first with no sort,
//! through a partial index when the filter picks out few rows.

use sqlx::{Row, SqliteConnection};

use super::{deliveries, queue, reads, upkeep};
use crate::db::ListQuery;
use crate::liveness::Liveness;
use crate::model::{Mode, Status};

/// What SQLite plans for `sql`, one step per line (`SEARCH requests USING INDEX ...`).
async fn plan(conn: &mut SqliteConnection, sql: &str) -> Vec<String> {
    // Only this module's constant statements are explained.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    rows.iter().map(|row| row.get::<String, _>("detail")).collect()
}

/// Asserts that every step of `sql` that reads `table` goes through one of `indexes`, and that
/// no step sorts.
async fn only_through(conn: &mut SqliteConnection, sql: &str, table: &str, indexes: &[&str]) {
    let plan = plan(conn, sql).await;
    let reads: Vec<&String> = plan
        .iter()
        .filter(|step| step.split_whitespace().nth(1) == Some(table))
        .collect();
    assert!(!reads.is_empty(), "no step reads {table}: {plan:?}\n{sql}");
    for step in reads {
        let words: Vec<&str> = step.split_whitespace().collect();
        assert!(
            words.windows(2).any(|w| w[0] == "INDEX" && indexes.contains(&w[1])),
            "{step}: not through {indexes:?}\n{sql}"
        );
    }
    assert!(plan.iter().all(|step| !step.contains("TEMP B-TREE")), "{plan:?}\n{sql}");
}

/// A store on a new database file (the directory lives as long as the store is used).
async fn fresh_store() -> (tempfile::TempDir, super::SqliteStore) {
    let dir = tempfile::tempdir().expect("dir");
    let store = super::connect(&dir.path().join("plans.db"), 64 << 20, &Liveness::new())
        .await
        .expect("store");
    (dir, store)
}

#[tokio::test]
async fn busy_statements_reach_only_the_rows_they_are_about() {
    let (_dir, store) = fresh_store().await;
    let mut conn = store.writer.lock().await.expect("writer");
    // In flight: the partial requests_leased.
    let in_flight = ["requests_leased"];
    only_through(&mut conn, queue::RESCUE_JOBS, "requests", &in_flight).await;
    only_through(&mut conn, queue::RESCUE_SYNC, "requests", &in_flight).await;
    // At start only: the unleased sync requests' own index (empty), not every sync request.
    only_through(
        &mut conn,
        queue::RESCUE_UNLEASED_SYNC,
        "requests",
        &["requests_unleased_sync"],
    )
    .await;
    only_through(
        &mut conn,
        queue::RESCUE_DELIVERIES,
        "deliveries",
        &["deliveries_leased"],
    )
    .await;
    only_through(&mut conn, upkeep::PURGE_REQUESTS, "r", &["requests_finished"]).await;
    only_through(&mut conn, reads::COUNT_BACKLOG, "requests", &["requests_claimable"]).await;
    // The claim takes the oldest pending async jobs straight from their own index, in order.
    // Left to choose, SQLite once searched the `pending` range of a status index (dropped in
    // migration 0008) and read each row to check its mode.
    only_through(
        &mut conn,
        queue::CLAIM_JOBS,
        "requests",
        &["requests_claimable", "sqlite_autoindex_requests_1"],
    )
    .await;
    // The completer's write: its claim the same way, its finishes by primary key.
    only_through(
        &mut conn,
        queue::FINISH_AND_CLAIM,
        "requests",
        &["requests_claimable", "sqlite_autoindex_requests_1"],
    )
    .await;
    // The delivery claim takes the soonest due deliveries from their own index, in order; the
    // recorder's write the same way, its attempts by primary key.
    let deliveries_indexes = ["deliveries_due", "sqlite_autoindex_deliveries_1"];
    only_through(
        &mut conn,
        deliveries::CLAIM_DELIVERIES,
        "deliveries",
        &deliveries_indexes,
    )
    .await;
    only_through(
        &mut conn,
        deliveries::RECORD_AND_CLAIM,
        "deliveries",
        &deliveries_indexes,
    )
    .await;
    only_through(
        &mut conn,
        deliveries::RECORD_ATTEMPTS,
        "deliveries",
        &["sqlite_autoindex_deliveries_1"],
    )
    .await;
    drop(conn);
    crate::db::Store::close(&store).await;
}

#[tokio::test]
async fn pages_of_requests_are_read_newest_first_through_the_filters_index() {
    let (_dir, store) = fresh_store().await;
    let mut conn = store.writer.lock().await.expect("writer");
    let filtered = |mode: Option<Mode>, status: Option<Status>| ListQuery {
        mode,
        status,
        limit: 20,
        ..ListQuery::default()
    };
    let cases = [
        // No filter, or one that most rows pass: the ascending index read backwards.
        (filtered(None, None), "requests_by_created"),
        (filtered(None, Some(Status::Done)), "requests_by_created"),
        (filtered(Some(Mode::Async), None), "requests_by_created"),
        // Few rows: their own partial index.
        (filtered(None, Some(Status::Pending)), "requests_claimable"),
        (
            ListQuery {
                before_id: Some("an id".into()),
                ..filtered(None, Some(Status::Pending))
            },
            "requests_claimable",
        ),
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
        (
            ListQuery {
                before_id: Some("an id".into()),
                ..filtered(None, None)
            },
            "requests_by_created",
        ),
    ];
    for (query, index) in cases {
        let page = reads::page(&query, 20).sql();
        only_through(&mut conn, page.as_str(), "r", &[index]).await;
    }
    // The requests in flight, after a cursor too: the rescuer's index, and a sort of the few
    // rows it holds.
    for before_id in [None, Some("an id".to_owned())] {
        let query = ListQuery {
            before_id,
            ..filtered(None, Some(Status::Processing))
        };
        let page = reads::page(&query, 20).sql();
        let steps = plan(&mut conn, page.as_str()).await;
        assert!(
            steps
                .iter()
                .any(|step| step.starts_with("SCAN r USING INDEX requests_leased")),
            "{steps:?}"
        );
    }
    drop(conn);
    crate::db::Store::close(&store).await;
}
