//! PostgreSQL with several replicas: real server processes on one fresh database, killed and
//! restarted; connections cut under a running replica; fencing and the outbox (on both backends) and
//! concurrent claims on the store itself; the backlog and the rate limit shared by two replicas;
//! the vacuum of churned tables. Each PostgreSQL test skips in one line when no PostgreSQL
//! answers (fails instead when `CI` is set).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sync_async::db::{Accepted, Completion, JobFinish, NewJob};
use sync_async::model::Status;

use crate::helpers::{
    Backend, Server, TestReceiver, TestSetup, fetch_json, kill_hard, open_store, quick_payload, slow_payload,
    spawn_app_in, start_server, wait_until,
};
use crate::pg::TestDatabase;

/// A server process that is killed when the test ends, however it ends (see `Server`).
struct Replica {
    child: Server,
    addr: String,
}

impl Replica {
    fn start(database: &TestDatabase, extra: &[(&str, String)]) -> Self {
        let mut env = vec![
            ("DATABASE_URL", database.url.clone()),
            ("NUM_WORKERS", "2".to_owned()),
            ("MAX_QUEUE_SIZE", "10000".to_owned()),
            ("RATE_LIMIT_REQUESTS", "1000000".to_owned()),
            ("LEASE_SECONDS", "2".to_owned()),
            ("RESCUE_INTERVAL_SECONDS", "0.5".to_owned()),
            ("CALLBACK_RETRY_UNIT_MS", "1".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let (child, addr) = start_server(&env);
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A job of some tens of milliseconds, so that a replica killed mid-run holds some.
fn short_job(callback_url: &str) -> Value {
    json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 15000}}, "callback_url": callback_url})
}

async fn submit(client: &reqwest::Client, url: &str, body: &Value) -> String {
    let response = client.post(url).json(body).send().await.expect("sent");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    accepted["request_id"].as_str().expect("id").to_owned()
}

/// Every job's claims, in order: the owners in `attempted_by`.
async fn claims(database: &TestDatabase) -> HashMap<String, Vec<String>> {
    database
        .query("SELECT id || ' ' || array_to_string(attempted_by, ' ') FROM requests")
        .await
        .into_iter()
        .flatten()
        .map(|line| {
            let mut words = line.split(' ').map(str::to_owned);
            let id = words.next().expect("id");
            (id, words.collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_finish_every_job_through_a_kill_9_and_a_restart() {
    let Some(database) = TestDatabase::create("three_replicas_finish_every_job").await else {
        return;
    };
    let mut receiver = TestReceiver::reliable().await;
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&database, &[])).collect();
    let client = reqwest::Client::new();
    let victim_id = fetch_json(&client, &replicas[0].url("/metrics")).await["replica"]["id"]
        .as_str()
        .expect("replica id")
        .to_owned();

    let body = short_job(&receiver.url());
    let mut submissions = tokio::task::JoinSet::new();
    for n in 0..300 {
        let (client, url, body) = (client.clone(), replicas[n % 3].url("/async"), body.clone());
        submissions.spawn(async move { submit(&client, &url, &body).await });
    }
    let ids = submissions.join_all().await;
    let mut deliveries: HashMap<String, u32> = HashMap::new();
    while deliveries.len() < 60 {
        *deliveries.entry(receiver.next().await.webhook_id).or_default() += 1;
    }
    // Mid-run: the victim holds jobs (or deliveries) under leases it will never finish.
    kill_hard(&mut replicas[0].child);
    replicas[0] = Replica::start(&database, &[]);
    let restarted_id = fetch_json(&client, &replicas[0].url("/metrics")).await["replica"]["id"]
        .as_str()
        .expect("replica id")
        .to_owned();

    while deliveries.len() < ids.len() {
        *deliveries.entry(receiver.next().await.webhook_id).or_default() += 1;
    }

    assert_eq!(
        deliveries.keys().cloned().collect::<HashSet<_>>(),
        ids.iter().cloned().collect::<HashSet<_>>()
    );
    let unfinished = database
        .query("SELECT count(*)::text FROM requests WHERE status <> 'done'")
        .await;
    assert_eq!(unfinished, vec![Some("0".to_owned())]);
    let undelivered = database
        .query("SELECT count(*)::text FROM deliveries WHERE status <> 'delivered'")
        .await;
    assert_eq!(undelivered, vec![Some("0".to_owned())]);
    let claims = claims(&database).await;
    assert_eq!(claims.len(), 300);
    let taken_over = database
        .query(
            "SELECT ((SELECT count(*) FROM requests WHERE cardinality(attempted_by) > 1) + \
                     (SELECT count(*) FROM deliveries WHERE cardinality(attempted_by) > 1))::text",
        )
        .await;
    assert_ne!(
        taken_over,
        vec![Some("0".to_owned())],
        "the kill came while the victim held work"
    );
    for (id, owners) in &claims {
        // Every claim but the last was the victim's: only its leases were ever taken over, so no
        // job had two live holders, and the restarted replica re-ran only what the victim held.
        let (_last, earlier) = owners.split_last().expect("claimed at least once");
        assert!(
            earlier.iter().all(|owner| *owner == victim_id),
            "job {id} was claimed by {owners:?}; only {victim_id} died"
        );
        assert!(
            !(owners.contains(&restarted_id) && earlier.iter().any(|o| *o != victim_id)),
            "the restarted replica took over a live replica's job {id}: {owners:?}"
        );
    }
    let delivery_claims: HashMap<String, Vec<String>> = database
        .query("SELECT request_id || ' ' || array_to_string(attempted_by, ' ') FROM deliveries")
        .await
        .into_iter()
        .flatten()
        .map(|line| {
            let mut words = line.split(' ').map(str::to_owned);
            (words.next().expect("id"), words.collect())
        })
        .collect();
    for (id, times) in &deliveries {
        if *times > 1 {
            let job_rerun = claims[id].len() > 1;
            let delivery_taken_over = delivery_claims[id].contains(&victim_id);
            assert!(
                job_rerun || delivery_taken_over,
                "{id} was delivered {times} times without the victim holding it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_database_connections_show_in_health_and_the_work_finishes_without_a_restart() {
    let Some(setup) = TestSetup::new(Backend::Postgres).await else {
        return;
    };
    let database = setup.database.clone().expect("a PostgreSQL setup");
    let mut receiver = TestReceiver::reliable().await;
    let mut config = setup.config.clone();
    config.lease = Duration::from_secs(2);
    config.rescue_interval = Duration::from_millis(500);
    let app = spawn_app_in(setup.dir.clone(), config).await;
    let body = json!({"payload": quick_payload(), "callback_url": receiver.url()});
    let mut ids = HashSet::new();
    for _ in 0..50 {
        let (status, accepted) = app.submit_async(&body).await;
        assert_eq!(status, 202, "{accepted}");
        ids.insert(accepted["request_id"].as_str().expect("id").to_owned());
    }

    // The fault: no new connections, and every open one terminated.
    database
        .query_as_admin("ALTER DATABASE $DB ALLOW_CONNECTIONS false")
        .await;
    database
        .query_as_admin(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE datname = '$DB' AND pid <> pg_backend_pid()",
        )
        .await;
    wait_until("/healthz reports the lost database", || async {
        let response = app.get("/healthz").await;
        let body: Value = response.json().await.unwrap_or_default();
        body["status"] == 503 && body["database"] == "unavailable"
    })
    .await;
    let (status, refused) = app.submit_async(&body).await;
    assert_eq!(status, 503, "{refused}");

    database
        .query_as_admin("ALTER DATABASE $DB ALLOW_CONNECTIONS true")
        .await;
    wait_until("/healthz is ok again", || async {
        app.get("/healthz").await.status() == 200
    })
    .await;
    let mut delivered = HashSet::new();
    while delivered.len() < ids.len() {
        delivered.insert(receiver.next().await.webhook_id);
    }
    assert_eq!(delivered, ids);
    app.stop().await;
}

/// `job`'s outcome, done with `result`.
fn finish(job: &sync_async::db::ClaimedJob, result: Value) -> JobFinish {
    JobFinish {
        lease: job.lease.clone(),
        started_at: sync_async::db::timestamp(chrono::Utc::now()),
        completion: Completion {
            status: Status::Done,
            result: Some(result),
            error: None,
            completed_at: sync_async::db::timestamp(chrono::Utc::now()),
            execution_time_ms: Some(1.0),
        },
        has_callback: job.callback_url.is_some(),
    }
}

fn new_job() -> NewJob {
    NewJob {
        id: sync_async::submission::new_request_id(),
        payload: quick_payload(),
        callback_url: None,
        client_ip: "127.0.0.1".to_owned(),
        tenant: None,
        created_at: sync_async::db::timestamp(chrono::Utc::now()),
    }
}

#[tokio::test]
async fn a_holder_whose_lease_expired_cannot_overwrite_the_newer_attempt() {
    a_stale_holder_cannot_overwrite(Backend::Postgres).await;
}

#[tokio::test]
async fn a_holder_whose_lease_expired_cannot_overwrite_the_newer_attempt_on_sqlite() {
    a_stale_holder_cannot_overwrite(Backend::Sqlite).await;
}

async fn a_stale_holder_cannot_overwrite(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let (job, first, second) = claimed_expired_and_claimed_again(&store, "replica-b").await;

    let stale = store
        .finish_jobs("replica-a", &[finish(&first, json!({"by": "a"}))])
        .await
        .expect("finish");
    let fresh = store
        .finish_jobs("replica-b", &[finish(&second, json!({"by": "b"}))])
        .await
        .expect("finish");

    assert_eq!((stale, fresh), (vec![false], vec![true]));
    let stored = store.get(&job.id).await.expect("get").expect("row");
    assert_eq!(stored.result, Some(json!({"by": "b"})));
    store.close().await;
}

/// A job claimed by `replica-a` under a short lease, rescued once the lease expired, and claimed
/// again by `second_owner`: the job and both claims.
async fn claimed_expired_and_claimed_again(
    store: &sync_async::db::Db,
    second_owner: &str,
) -> (NewJob, sync_async::db::ClaimedJob, sync_async::db::ClaimedJob) {
    let job = new_job();
    assert_eq!(
        store.accept_job(&job, None, 10).await.expect("accept"),
        Accepted::Stored
    );
    let first = store
        .claim_jobs("replica-a", 1, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    wait_until(
        "replica-a's lease has expired and the rescuer requeued the job",
        || async { store.rescue(5, false).await.expect("rescue").jobs_requeued == 1 },
    )
    .await;
    let second = store
        .claim_jobs(second_owner, 1, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(second[0].lease.attempt, first[0].lease.attempt + 1);
    let (first, second) = (first[0].clone(), second[0].clone());
    (job, first, second)
}

#[tokio::test]
async fn a_batch_with_a_stale_and_a_fresh_outcome_of_one_job_stores_only_the_fresh_one() {
    stale_and_fresh_outcomes_in_one_batch(Backend::Postgres).await;
}

#[tokio::test]
async fn a_batch_with_a_stale_and_a_fresh_outcome_of_one_job_stores_only_the_fresh_one_on_sqlite() {
    stale_and_fresh_outcomes_in_one_batch(Backend::Sqlite).await;
}

/// One replica's completer may hold both: the outcome of a claim whose lease it lost, and the
/// outcome of its new claim of the same job.
async fn stale_and_fresh_outcomes_in_one_batch(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let (job, first, second) = claimed_expired_and_claimed_again(&store, "replica-a").await;

    let stored = store
        .finish_jobs(
            "replica-a",
            &[
                finish(&first, json!({"attempt": "first"})),
                finish(&second, json!({"attempt": "second"})),
            ],
        )
        .await
        .expect("finish");

    assert_eq!(stored, vec![false, true]);
    let row = store.get(&job.id).await.expect("get").expect("row");
    assert_eq!(row.result, Some(json!({"attempt": "second"})));
    store.close().await;
}

#[tokio::test]
async fn a_finish_that_claims_stores_the_outcomes_and_takes_the_next_jobs() {
    finish_and_claim(Backend::Postgres).await;
}

#[tokio::test]
async fn a_finish_that_claims_stores_the_outcomes_and_takes_the_next_jobs_on_sqlite() {
    finish_and_claim(Backend::Sqlite).await;
}

/// The completer's write: fenced finishes (a stale one is refused) with the start their worker
/// reported, the outbox, and a claim of the oldest pending jobs, up to the slots given and never
/// a job just finished; the counts by status stay exact.
async fn finish_and_claim(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let (expired, stale, fresh) = claimed_expired_and_claimed_again(&store, "replica-a").await;
    let running = NewJob {
        callback_url: Some("http://receiver.test/running".to_owned()),
        ..new_job()
    };
    assert_eq!(
        store.accept_job(&running, None, 10).await.expect("accept"),
        Accepted::Stored
    );
    let running = store
        .claim_jobs("replica-a", 1, Duration::from_secs(30))
        .await
        .expect("claim");
    let waiting: Vec<NewJob> = (0..3).map(|_| new_job()).collect();
    for job in &waiting {
        assert_eq!(store.accept_job(job, None, 10).await.expect("accept"), Accepted::Stored);
    }

    let (applied, claimed) = store
        .finish_and_claim(
            "replica-a",
            &[
                finish(&stale, json!("stale")),
                finish(&fresh, json!("fresh")),
                JobFinish {
                    started_at: "2026-01-02T03:04:05.678Z".to_owned(),
                    ..finish(&running[0], json!("running"))
                },
            ],
            2,
            Duration::from_secs(30),
        )
        .await
        .expect("finish and claim");

    assert_eq!(applied, vec![false, true, true]);
    let claimed_ids: Vec<&str> = claimed.iter().map(|c| c.lease.id.as_str()).collect();
    assert_eq!(
        claimed_ids,
        vec![waiting[0].id.as_str(), waiting[1].id.as_str()],
        "the two oldest"
    );
    assert!(claimed.iter().all(|c| c.lease.attempt == 1));
    let row = store.get(&expired.id).await.expect("get").expect("row");
    assert_eq!((row.status, row.result), (Status::Done, Some(json!("fresh"))));
    // A job's start is when its worker took it up, not its claim (it may have waited in the
    // channel, claimed ahead).
    let row = store.get(&running[0].lease.id).await.expect("get").expect("row");
    assert_eq!(row.started_at.as_deref(), Some("2026-01-02T03:04:05.678Z"));
    let deliveries = store
        .claim_deliveries("replica-a", 10, Duration::from_secs(30))
        .await
        .expect("claim deliveries");
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].lease.id, running[0].lease.id);
    let summary = store.summary().await.expect("summary");
    let count = |status| {
        summary
            .requests
            .iter()
            .filter(|(_, s, _)| *s == status)
            .map(|(_, _, n)| n)
            .sum::<i64>()
    };
    assert_eq!(
        [count(Status::Done), count(Status::Processing), count(Status::Pending)],
        [2, 2, 1]
    );
    assert_eq!(store.backlog().await.expect("backlog"), 1);

    // No finishes: a plain claim, of what is left.
    let (applied, claimed) = store
        .finish_and_claim("replica-a", &[], 5, Duration::from_secs(30))
        .await
        .expect("claim");
    assert!(applied.is_empty());
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.id, waiting[2].id);
    store.close().await;
}

#[tokio::test]
async fn claims_take_the_oldest_jobs_and_hand_them_over_oldest_first() {
    claims_oldest_first(Backend::Postgres).await;
}

#[tokio::test]
async fn claims_take_the_oldest_jobs_and_hand_them_over_oldest_first_on_sqlite() {
    claims_oldest_first(Backend::Sqlite).await;
}

/// Both claims (alone, and with finishes) take the oldest pending jobs and return them oldest
/// first, by acceptance time, whatever the order of their ids: the jobs here were accepted in an
/// order unlike their ids', so a claim that returned its rows in the order the database updated
/// them (by id, or by a hash join's) would fail.
async fn claims_oldest_first(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let base = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    // Ids ascend with the index (UUIDv7); the acceptance times follow this permutation.
    let order = [5, 2, 7, 0, 3, 6, 1, 4];
    let jobs: Vec<NewJob> = order
        .iter()
        .map(|&k| NewJob {
            created_at: sync_async::db::timestamp(base + chrono::TimeDelta::seconds(k)),
            ..new_job()
        })
        .collect();
    for job in &jobs {
        assert_eq!(store.accept_job(job, None, 10).await.expect("accept"), Accepted::Stored);
    }
    // The stored timestamps are fixed-width RFC 3339, so their text sorts as their times do.
    let mut by_acceptance: Vec<&NewJob> = jobs.iter().collect();
    by_acceptance.sort_by_key(|job| &job.created_at);
    let oldest_first: Vec<&str> = by_acceptance.iter().map(|job| job.id.as_str()).collect();
    let ids = |claimed: &[sync_async::db::ClaimedJob]| -> Vec<String> {
        claimed.iter().map(|c| c.lease.id.clone()).collect()
    };

    let first = store
        .claim_jobs("replica-a", 5, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(ids(&first), oldest_first[..5]);

    let (applied, rest) = store
        .finish_and_claim("replica-a", &[finish(&first[0], json!(1))], 5, Duration::from_secs(30))
        .await
        .expect("finish and claim");
    assert_eq!(applied, vec![true]);
    assert_eq!(ids(&rest), oldest_first[5..]);
    store.close().await;
}

#[tokio::test]
async fn a_job_with_a_callback_that_ends_gets_its_delivery_whoever_ends_it() {
    outbox_writes_deliveries(Backend::Postgres).await;
}

#[tokio::test]
async fn a_job_with_a_callback_that_ends_gets_its_delivery_whoever_ends_it_on_sqlite() {
    outbox_writes_deliveries(Backend::Sqlite).await;
}

/// The outbox: a finished job with a callback gets its delivery, one without gets none, and a
/// job the rescuer gives up on gets one that carries its failure.
async fn outbox_writes_deliveries(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let with_callback = |path: &str| NewJob {
        callback_url: Some(format!("http://receiver.test/{path}")),
        ..new_job()
    };
    let (finished, silent, abandoned) = (with_callback("finished"), new_job(), with_callback("abandoned"));
    for job in [&finished, &silent] {
        assert_eq!(store.accept_job(job, None, 10).await.expect("accept"), Accepted::Stored);
    }
    let claimed = store
        .claim_jobs("replica-a", 2, Duration::from_secs(30))
        .await
        .expect("claim");
    let finishes: Vec<JobFinish> = claimed.iter().map(|c| finish(c, json!(1))).collect();
    assert_eq!(
        store.finish_jobs("replica-a", &finishes).await.expect("finish"),
        vec![true, true]
    );
    assert_eq!(
        store.accept_job(&abandoned, None, 10).await.expect("accept"),
        Accepted::Stored
    );
    let lost = store
        .claim_jobs("replica-a", 1, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(lost[0].lease.id, abandoned.id);

    // One attempt allowed: the rescuer fails the job once its lease has expired.
    wait_until("the rescuer gave up on the abandoned job", || async {
        store.rescue(1, false).await.expect("rescue").jobs_failed == 1
    })
    .await;

    let deliveries = store
        .claim_deliveries("replica-a", 10, Duration::from_secs(30))
        .await
        .expect("claim deliveries");
    let by_id: HashMap<&str, &sync_async::db::ClaimedDelivery> =
        deliveries.iter().map(|d| (d.lease.id.as_str(), d)).collect();
    assert_eq!(by_id.len(), 2, "{deliveries:?}");
    assert_eq!(by_id[finished.id.as_str()].status, Status::Done);
    assert_eq!(by_id[finished.id.as_str()].result, Some(json!(1)));
    let gave_up = by_id[abandoned.id.as_str()];
    assert_eq!(gave_up.status, Status::Failed);
    assert!(
        gave_up.error.as_deref().is_some_and(|e| e.starts_with("gave up")),
        "{gave_up:?}"
    );
    assert!(!by_id.contains_key(silent.id.as_str()));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_claimers_never_get_the_same_job_attempt() {
    let Some(setup) = TestSetup::new(Backend::Postgres).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let jobs: Vec<NewJob> = (0..400).map(|_| new_job()).collect();
    for job in &jobs {
        store.accept_job(job, None, 1_000).await.expect("accept");
    }
    // Claims of 7 and of 100: PostgreSQL writes a limit up to 64 into the statement and binds a
    // larger one.
    let claimers = (0..8).map(|n| {
        let store = store.clone();
        let max = if n % 2 == 0 { 7 } else { 100 };
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let claimed = store
                    .claim_jobs(&format!("claimer-{n}"), max, Duration::from_secs(30))
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    break got;
                }
                got.extend(claimed.into_iter().map(|c| (c.lease.id, c.lease.attempt)));
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.expect("claimer"));
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 400, "every job claimed once");
    assert_eq!(unique.len(), 400, "no (job, attempt) twice");
    store.close().await;
}

/// Two replicas (in this process) on one database.
async fn two_replicas(customise: impl Fn(&mut sync_async::Config)) -> Option<[crate::helpers::TestApp; 2]> {
    let setup = TestSetup::new(Backend::Postgres).await?;
    let mut config = setup.config.clone();
    customise(&mut config);
    let first = spawn_app_in(setup.dir.clone(), config.clone()).await;
    let second = spawn_app_in(Arc::new(tempfile::tempdir().expect("dir")), config).await;
    let mut apps = [first, second];
    apps[0].database = setup.database.clone();
    apps[1].database = setup.database;
    Some(apps)
}

/// The backlog limit of the backlog tests, and the submissions they send: enough that a limit
/// that did not hold would be seen past its bound.
const BACKLOG_LIMIT: usize = 30;
const SUBMISSIONS: usize = 400;

/// Two replicas with a backlog of `BACKLOG_LIMIT` whose one worker each is busy for seconds, so
/// nothing leaves the backlog while `SUBMISSIONS` quick jobs arrive at once, half at each
/// replica, those for which `keyed(n)` holds with an `Idempotency-Key` of their own. Returns how
/// many were accepted, once the full cluster refuses on every replica and the backlog in
/// `/metrics` is the number accepted, and D, each replica's durable connections.
async fn fill_one_backlog_from_two_replicas(keyed: fn(usize) -> bool) -> Option<(usize, usize)> {
    let apps = two_replicas(|c| {
        c.max_queue_size = BACKLOG_LIMIT;
        c.num_workers = 1;
        c.rate_limit_requests = 1_000_000;
    })
    .await?;
    let slow = json!({"payload": slow_payload()});
    for app in &apps {
        let (status, _) = app.submit_async(&slow).await;
        assert_eq!(status, 202);
    }
    wait_until("both workers are busy", || async {
        let mut busy = 0;
        for app in &apps {
            busy += app.metrics().await["workers"]["busy"].as_u64().unwrap_or(0);
        }
        busy == 2
    })
    .await;

    let quick = json!({"payload": quick_payload()});
    let submissions = (0..SUBMISSIONS).map(|n| {
        let (client, url) = (apps[n % 2].client.clone(), apps[n % 2].url("/async"));
        let mut request = client.post(url).json(&quick);
        if keyed(n) {
            request = request.header("idempotency-key", format!("fill-{n}"));
        }
        tokio::spawn(async move { request.send().await.expect("sent").status().as_u16() })
    });
    let mut accepted = 0;
    for submission in submissions.collect::<Vec<_>>() {
        match submission.await.expect("joined") {
            202 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        accepted >= BACKLOG_LIMIT,
        "{accepted} accepted; the backlog had room for {BACKLOG_LIMIT}"
    );
    let backlog = apps[0].metrics().await["queue"]["size"].as_u64().expect("size") as usize;
    assert_eq!(backlog, accepted);
    for app in &apps {
        let (status, _) = app.submit_async(&quick).await;
        assert_eq!(status, 429, "a full cluster backlog refuses on every replica");
    }
    let d = sync_async::db::postgres::durable_connections(apps[0].config.database_max_connections);
    Some((accepted, d as usize))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_backlog_limit() {
    let Some((accepted, _)) = fill_one_backlog_from_two_replicas(|_| false).await else {
        return;
    };
    // The documented bound: one group-commit batch per other replica, (N - 1) x 128.
    let bound = BACKLOG_LIMIT + 128;
    assert!(accepted <= bound, "{accepted} accepted past a limit of {BACKLOG_LIMIT}");
}

/// Submissions with an idempotency key are inserted one by one beside the group commit, on the
/// replica's D durable connections. Mixed with keyless ones, the documented bound is
/// (N - 1) x 128 + N x (D - 1). With keys alone no batch is in flight: each replica has at most
/// D keyed inserts in flight, each stores one job, and each found room when it started, so at
/// most N x D - 1 pass the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_with_keys_keep_within_the_documented_backlog_bound() {
    let Some((mixed, d)) = fill_one_backlog_from_two_replicas(|n| n % 4 < 2).await else {
        return;
    };
    let bound = BACKLOG_LIMIT + 128 + 2 * (d - 1);
    assert!(
        mixed <= bound,
        "{mixed} accepted, keys and none mixed; the bound is {bound}"
    );

    let Some((keyed, d)) = fill_one_backlog_from_two_replicas(|_| true).await else {
        return;
    };
    let bound = BACKLOG_LIMIT + 2 * d - 1;
    assert!(keyed <= bound, "{keyed} accepted, all with keys; the bound is {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_admit_the_configured_rate() {
    const BURST: u32 = 10;
    let Some(apps) = two_replicas(|c| {
        c.rate_limit_requests = BURST;
        c.rate_limit_window = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    let mut allowed = 0;
    for n in 0..40 {
        let status = apps[n % 2].get("/requests").await.status().as_u16();
        match status {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // One request refills every 60 s: the test ends long before another is due.
    assert_eq!(
        allowed, BURST,
        "two replicas admitted {allowed}, not the burst of {BURST}"
    );
}

/// With a large limit a replica takes tokens from the shared budget in batches. When requests of
/// one client find no token at the same moment, one of them takes the next batch and the others
/// spend from it: before, each took a batch of its own and the last one kept replaced the
/// others, so 30 connections used about a seventh of the tokens they took from the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_find_no_token_together_take_one_batch() {
    const LIMIT: u32 = 2_000; // batches of 20 tokens; one token every 0.3 s
    const WINDOW: Duration = Duration::from_secs(600);
    const CONNECTIONS: usize = 30;
    let Some(mut setup) = TestSetup::new(Backend::Postgres).await else {
        return;
    };
    setup.config.rate_limit_requests = LIMIT;
    setup.config.rate_limit_window = WINDOW;
    let database = setup.database.clone().expect("a PostgreSQL database");
    let app = spawn_app_in(setup.dir.clone(), setup.config.clone()).await;
    // Open the connections first (`/healthz` is not limited), so that the burst arrives at once.
    let warm = (0..CONNECTIONS).map(|_| {
        let (client, url) = (app.client.clone(), app.url("/healthz"));
        tokio::spawn(async move { client.get(url).send().await.expect("sent").status().as_u16() })
    });
    for request in warm.collect::<Vec<_>>() {
        assert_eq!(request.await.expect("joined"), 200);
    }
    let burst = (0..CONNECTIONS).map(|_| {
        let (client, url) = (app.client.clone(), app.url("/requests?limit=1"));
        tokio::spawn(async move { client.get(url).send().await.expect("sent").status().as_u16() })
    });
    for request in burst.collect::<Vec<_>>() {
        assert_eq!(request.await.expect("joined"), 200);
    }
    // The tokens taken from the budget: how far ahead of now the client's GCRA time is, in
    // tokens of 0.3 s (less the little that refilled during the test).
    let ahead = database
        .query("SELECT extract(epoch FROM max(tat) - now())::text FROM rate_limits")
        .await;
    let seconds: f64 = ahead[0].as_deref().and_then(|s| s.parse().ok()).expect("a GCRA time");
    let tokens = seconds / (WINDOW.as_secs_f64() / f64::from(LIMIT));
    // One batch for the burst; a straggler more than 100 ms late may take another. Every request
    // taking its own would be 30 batches (600 tokens).
    assert!(tokens <= 60.5, "{tokens:.0} tokens taken for {CONNECTIONS} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_vacuums_a_churned_queue_table_even_without_autovacuum() {
    let Some(setup) = TestSetup::new(Backend::Postgres).await else {
        return;
    };
    let database = setup.database.clone().expect("a PostgreSQL database");
    // The store's migrations run first; its vacuum loop starts with it.
    let store = open_store(&setup.config).await;
    // Autovacuum, where this server runs it, must not get there first.
    database
        .query("ALTER TABLE requests SET (autovacuum_enabled = false)")
        .await;
    database
        .query(
            "INSERT INTO requests (id, mode, payload, status, created_at) \
             SELECT 'churn-' || g, 'sync', '{}', 'done', now() FROM generate_series(1, 3000) g",
        )
        .await;
    // 3000 dead row versions: above the threshold of 1000 + 5% of the live rows.
    database.query("UPDATE requests SET error = 'churned'").await;
    let stats = "SELECT concat_ws(' ', (last_vacuum IS NOT NULL)::text, n_dead_tup) FROM pg_stat_user_tables \
                 WHERE relname = 'requests'";
    wait_until("a replica has vacuumed requests", || async {
        database
            .query(stats)
            .await
            .first()
            .cloned()
            .flatten()
            .is_some_and(|s| s.starts_with("true"))
    })
    .await;
    let after = database.query(stats).await;
    let dead: i64 = after[0]
        .as_deref()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("n_dead_tup");
    assert!(dead < 1_000, "dead rows left after the vacuum: {dead}");
    store.close().await;
}

/// A retry in a minute: the delivery goes back to `pending`, not yet due.
const RETRY_LATER: sync_async::db::AfterAttempt = sync_async::db::AfterAttempt {
    status: sync_async::model::DeliveryStatus::Pending,
    due_in: Some(Duration::from_secs(60)),
};

/// A failed attempt (HTTP 500) of a claimed delivery, numbered `number`, going `next`.
fn record(
    lease: &sync_async::db::Lease,
    number: i64,
    error: &str,
    next: sync_async::db::AfterAttempt,
) -> sync_async::db::AttemptRecord {
    sync_async::db::AttemptRecord {
        delivery: lease.clone(),
        attempt: sync_async::db::AttemptRow {
            number,
            attempted_at: sync_async::db::timestamp(chrono::Utc::now()),
            duration_ms: 1.0,
            status_code: Some(500),
            error_class: Some("http_status".to_owned()),
            error: Some(error.to_owned()),
        },
        next,
    }
}

#[tokio::test]
async fn recording_attempts_claims_the_next_due_deliveries_in_the_same_write() {
    attempts_recorded_claim_the_next(Backend::Postgres).await;
}

#[tokio::test]
async fn recording_attempts_claims_the_next_due_deliveries_in_the_same_write_on_sqlite() {
    attempts_recorded_claim_the_next(Backend::Sqlite).await;
}

async fn attempts_recorded_claim_the_next(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let lease = Duration::from_secs(30);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = NewJob {
            callback_url: Some("http://127.0.0.1:9/hook".to_owned()),
            ..new_job()
        };
        store.accept_job(&job, None, 10).await.expect("accept");
        ids.push(job.id);
    }
    let claimed = store.claim_jobs("replica-a", 3, lease).await.expect("claim");
    let finishes: Vec<JobFinish> = claimed.iter().map(|j| finish(j, json!({}))).collect();
    store.finish_jobs("replica-a", &finishes).await.expect("finish");
    let first = store
        .claim_deliveries("replica-a", 1, lease)
        .await
        .expect("claim one delivery");
    assert_eq!(first.len(), 1);

    // The first delivery's attempt failed: recorded, due again in a minute; the write claims
    // the two others (due now), not the one it puts back.
    let (stored, next) = store
        .record_and_claim_deliveries(
            "replica-a",
            &[record(&first[0].lease, 1, "refused", RETRY_LATER)],
            5,
            lease,
        )
        .await
        .expect("record and claim");
    assert_eq!(stored, vec![true]);
    let mut next_ids: Vec<&str> = next.iter().map(|d| d.lease.id.as_str()).collect();
    next_ids.sort_unstable();
    let mut others: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != first[0].lease.id)
        .collect();
    others.sort_unstable();
    assert_eq!(next_ids, others, "the due deliveries, not the one put back");
    for delivery in &next {
        assert_eq!(delivery.attempts, 0);
        assert_eq!(delivery.callback_url, "http://127.0.0.1:9/hook");
        assert_eq!(delivery.status, Status::Done, "with its job's outcome");
    }
    let attempts = store.attempts(&first[0].lease.id).await.expect("attempts");
    let errors: Vec<Option<String>> = attempts.iter().map(|a| a.error.clone()).collect();
    assert_eq!(errors, vec![Some("refused".to_owned())], "the attempt is logged");
    assert_eq!(attempts[0].status_code, Some(500));
    assert_eq!(attempts[0].error_class.as_deref(), Some("http_status"));
    assert!((attempts[0].duration_ms - 1.0).abs() < 1e-9);
    assert!(
        store
            .claim_deliveries("replica-b", 5, lease)
            .await
            .expect("claim")
            .is_empty(),
        "the claimed deliveries are held, and the other is not due"
    );

    // A stale record stores nothing and, with nothing due, claims nothing; a record of a
    // claimed one logs its attempt and claims nothing when asked for none.
    let (stale, none) = store
        .record_and_claim_deliveries(
            "replica-b",
            &[record(&next[0].lease, 1, "stale", RETRY_LATER)],
            5,
            lease,
        )
        .await
        .expect("record");
    assert_eq!((stale, none.len()), (vec![false], 0));
    let (stored, none) = store
        .record_and_claim_deliveries(
            "replica-a",
            &[record(&next[1].lease, 1, "later", RETRY_LATER)],
            0,
            lease,
        )
        .await
        .expect("record");
    assert_eq!((stored, none.len()), (vec![true], 0));
    assert!(store.attempts(&next[0].lease.id).await.expect("attempts").is_empty());
    assert_eq!(store.attempts(&next[1].lease.id).await.expect("attempts").len(), 1);
    store.close().await;
}

#[tokio::test]
async fn a_stale_attempt_record_is_dropped_and_a_fresh_one_in_the_same_batch_is_stored() {
    stale_attempt_records_are_fenced(Backend::Postgres).await;
}

#[tokio::test]
async fn a_stale_attempt_record_is_dropped_and_a_fresh_one_in_the_same_batch_is_stored_on_sqlite() {
    stale_attempt_records_are_fenced(Backend::Sqlite).await;
}

async fn stale_attempt_records_are_fenced(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let job = NewJob {
        callback_url: Some("http://127.0.0.1:9/hook".to_owned()),
        ..new_job()
    };
    store.accept_job(&job, None, 10).await.expect("accept");
    let claimed = store
        .claim_jobs("replica-a", 1, Duration::from_secs(30))
        .await
        .expect("claim");
    let stored = store
        .finish_jobs("replica-a", &[finish(&claimed[0], json!({}))])
        .await
        .expect("finish");
    assert_eq!(stored, vec![true], "the finish writes the delivery (the outbox)");

    let first = store
        .claim_deliveries("replica-a", 1, Duration::from_millis(300))
        .await
        .expect("claim the delivery");
    assert_eq!(first.len(), 1);
    wait_until("replica-a's delivery lease has expired and was rescued", || async {
        store.rescue(5, false).await.expect("rescue").deliveries_requeued == 1
    })
    .await;
    let second = store
        .claim_deliveries("replica-b", 1, Duration::from_secs(30))
        .await
        .expect("claim again");
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].lease.attempt, first[0].lease.attempt, "a new claim");

    // replica-b's batch holds the old claim (which it never held) and its own.
    let (stored, claimed) = store
        .record_and_claim_deliveries(
            "replica-b",
            &[
                record(&first[0].lease, 1, "stale", RETRY_LATER),
                record(&second[0].lease, 1, "fresh", RETRY_LATER),
            ],
            0,
            Duration::from_secs(30),
        )
        .await
        .expect("record");
    assert_eq!(stored, vec![false, true]);
    assert!(claimed.is_empty(), "max 0 records only");
    // replica-a's record of its expired claim changes nothing.
    let (stale, _) = store
        .record_and_claim_deliveries(
            "replica-a",
            &[record(&first[0].lease, 2, "late", RETRY_LATER)],
            0,
            Duration::from_secs(30),
        )
        .await
        .expect("record");
    assert_eq!(stale, vec![false]);

    let attempts = store.attempts(&job.id).await.expect("attempts");
    let errors: Vec<Option<String>> = attempts.into_iter().map(|a| a.error).collect();
    assert_eq!(errors, vec![Some("fresh".to_owned())]);
    store.close().await;
}

#[tokio::test]
async fn outcomes_and_attempt_errors_come_back_exactly_as_the_batched_writes_took_them() {
    text_round_trips_through_batched_writes(Backend::Postgres).await;
}

#[tokio::test]
async fn outcomes_and_attempt_errors_come_back_exactly_as_the_batched_writes_took_them_on_sqlite() {
    text_round_trips_through_batched_writes(Backend::Sqlite).await;
}

/// Text that a JSON decoder could get wrong: quotes, backslashes, control characters, text
/// that looks like JSON, characters beyond ASCII and beyond the BMP.
const AWKWARD: &str =
    "say \"hi\" \\ back\nslash\ttab {\"not\": \"json\"} \u{e9}t\u{e9} \u{65e5}\u{672c} \u{1f680} \u{7f}";

/// The finishes and attempt records travel to the database as one JSON document per batch
/// (SQLite reads it as JSONB, PostgreSQL as arrays): every result, error and attempt error
/// comes back as it went in.
async fn text_round_trips_through_batched_writes(backend: Backend) {
    let Some(setup) = TestSetup::new(backend).await else {
        return;
    };
    let store = open_store(&setup.config).await;
    let lease = Duration::from_secs(30);
    let (done, failed) = (
        NewJob {
            callback_url: Some("http://127.0.0.1:9/hook".to_owned()),
            ..new_job()
        },
        new_job(),
    );
    for job in [&done, &failed] {
        assert_eq!(store.accept_job(job, None, 10).await.expect("accept"), Accepted::Stored);
    }
    let claimed = store.claim_jobs("replica-a", 2, lease).await.expect("claim");
    let by_id = |id: &str| claimed.iter().find(|c| c.lease.id == id).expect("claimed");
    let result = json!({"text": AWKWARD, "list": [AWKWARD, 1.5e-7, -3, null, true], "n": 12345678901_i64});
    let failure = JobFinish {
        completion: Completion {
            status: Status::Failed,
            result: None,
            error: Some(AWKWARD.to_owned()),
            ..finish(by_id(&failed.id), json!(null)).completion
        },
        ..finish(by_id(&failed.id), json!(null))
    };
    let (stored, _) = store
        .finish_and_claim(
            "replica-a",
            &[finish(by_id(&done.id), result.clone()), failure],
            1,
            lease,
        )
        .await
        .expect("finish");
    assert_eq!(stored, vec![true, true]);

    let row = store.get(&done.id).await.expect("get").expect("row");
    assert_eq!((row.status, row.result), (Status::Done, Some(result)));
    let row = store.get(&failed.id).await.expect("get").expect("row");
    assert_eq!((row.status, row.error.as_deref()), (Status::Failed, Some(AWKWARD)));

    let delivery = store
        .claim_deliveries("replica-a", 1, lease)
        .await
        .expect("claim delivery");
    assert_eq!(delivery.len(), 1);
    let (stored, _) = store
        .record_and_claim_deliveries(
            "replica-a",
            &[record(&delivery[0].lease, 1, AWKWARD, RETRY_LATER)],
            0,
            lease,
        )
        .await
        .expect("record");
    assert_eq!(stored, vec![true]);
    let attempts = store.attempts(&done.id).await.expect("attempts");
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(errors, vec![Some(AWKWARD)]);
    store.close().await;
}
