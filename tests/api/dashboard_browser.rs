//! The dashboard in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini), against the real server. Without chromedriver these tests say
//! so in one line and pass, unless `CI` is set: then they fail. `UPDATE_SCREENSHOTS=1` saves
//! the README's screenshots. One browser at a time: they are heavy on a small machine.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sync_async::config::{ApiKeys, Secret};
use sync_async_loadtest::receiver::ReceiverOptions;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::helpers::{TestApp, TestReceiver, spawn_app_with};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the DOM may take to show what a test waits for: bursts and queues take seconds on
/// a busy machine.
const DOM_PATIENCE: Duration = Duration::from_secs(90);

/// One browser at a time.
static BROWSER: Mutex<()> = Mutex::const_new(());

/// chromedriver on a free port, killed on drop, and its browser's profile directory.
struct Driver {
    process: Child,
    _profile: TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A headless browser, or `None` (after one line) when chromedriver is missing outside CI.
async fn browser(width: u32, height: u32) -> Option<(Driver, Client)> {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMEDRIVER} is missing and CI is set: install Debian's chromium and chromium-driver"
        );
        eprintln!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver to run the browser tests)");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let process = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver {
        process,
        _profile: profile,
    };
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) => {
                assert!(
                    started.elapsed() < DOM_PATIENCE,
                    "chromedriver did not start a browser: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// chromedriver's browser log (`goog:loggingPrefs`), which WebDriver itself does not cover.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// The console errors (and uncaught exceptions, CSP violations, failed loads) so far.
async fn console_errors(client: &Client) -> Vec<String> {
    let entries = client.issue_cmd(BrowserLog).await.expect("browser log");
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn testid(id: &str) -> String {
    format!("[data-testid='{id}']")
}

async fn text_of(client: &Client, id: &str) -> String {
    match client.find(Locator::Css(&testid(id))).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls the element's text until `done` holds; fails with the last text after the deadline.
async fn wait_text(client: &Client, id: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = text_of(client, id).await;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < DOM_PATIENCE,
            "gave up waiting until {what}; [{id}] says {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

async fn count(client: &Client, id: &str) -> usize {
    client
        .find_all(Locator::Css(&testid(id)))
        .await
        .map_or(0, |all| all.len())
}

async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Css(&testid(id)))
        .await
        .unwrap_or_else(|e| panic!("no [{id}]: {e}"))
        .click()
        .await
        .expect("click");
}

async fn select(client: &Client, id: &str, value: &str) {
    client
        .find(Locator::Css(&testid(id)))
        .await
        .unwrap_or_else(|e| panic!("no [{id}]: {e}"))
        .select_by_value(value)
        .await
        .expect("select");
}

/// Saves a screenshot for the README when UPDATE_SCREENSHOTS=1.
async fn screenshot(client: &Client, name: &str) {
    if std::env::var("UPDATE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let png = client.screenshot().await.expect("screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/screenshots")
        .join(name);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("screenshots dir");
    std::fs::write(&path, png).expect("screenshot saved");
}

/// Every page loads, turns live, logs no error, and does not overflow a phone's width.
async fn pages_load_cleanly(app: &TestApp, client: &Client, base: &str) {
    for page in ["dashboard", "dashboard/demo", "dashboard/requests"] {
        client
            .goto(&app.url(&format!("{base}/{page}")))
            .await
            .expect("page opens");
        if page != "dashboard/requests" {
            wait_text(client, "live-state", "the page is live", |t| t.starts_with("live")).await;
        }
        assert_eq!(console_errors(client).await, Vec::<String>::new(), "{page}");
    }
}

/// A sync burst larger than the slots gets 503s; an async burst fills the queue, which drains.
async fn sync_refuses_and_async_queues(app: &TestApp, client: &Client, base: &str, shot: bool) {
    client
        .goto(&app.url(&format!("{base}/dashboard/demo")))
        .await
        .expect("demo opens");
    wait_text(client, "live-state", "the page is live", |t| t.starts_with("live")).await;

    select(client, "burst-n", "50").await;
    select(client, "burst-complexity", "3").await;
    assert_eq!(text_of(client, "fire-sync").await, "Fire 50 sync");
    click(client, "fire-sync").await;
    wait_text(client, "burst-sync-503", "the sync burst shows 503s", |t| {
        number(t).is_some_and(|n| n > 0)
    })
    .await;
    wait_text(client, "burst-sync-answered", "every sync answer is in", |t| t == "50").await;

    select(client, "burst-complexity", "1").await;
    select(client, "burst-operation", "prime").await;
    click(client, "fire-async").await;
    wait_text(client, "demo-queue-depth-value", "the backlog rises", |t| {
        number(t).is_some_and(|n| n > 0)
    })
    .await;
    if shot {
        // Mid-burst, once the queue chart has a few seconds of draining to show.
        wait_text(client, "burst-async-completed", "a few jobs finished", |t| {
            number(t).is_some_and(|n| n >= 10)
        })
        .await;
        screenshot(client, "dashboard-demo.png").await;
    }
    wait_text(client, "burst-async-202", "every async request is accepted", |t| {
        t == "50"
    })
    .await;
    wait_text(client, "demo-queue-depth-value", "the backlog drains", |t| t == "0").await;
    wait_text(client, "burst-async-completed", "every job finished", |t| t == "50").await;
    assert_eq!(console_errors(client).await, Vec::<String>::new());
}

/// A failed delivery's Redeliver, confirmed, adds an attempt row.
async fn redeliver_adds_an_attempt_row(app: &TestApp, client: &Client, base: &str) {
    let mut receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        ..ReceiverOptions::default()
    })
    .await;
    let response = app
        .post_json(
            &format!("{base}/async"),
            &json!({"payload": crate::helpers::quick_payload(), "callback_url": receiver.url()}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("accepted");
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    crate::helpers::wait_until("the delivery has failed", || async {
        app.get_json(&format!("{base}/requests/{id}")).await["delivery"]["status"] == "failed"
    })
    .await;

    client
        .goto(&app.url(&format!("{base}/dashboard/requests/{id}")))
        .await
        .expect("request page opens");
    assert_eq!(count(client, "attempt-row").await, 1);
    click(client, "redeliver").await;
    client
        .accept_alert()
        .await
        .expect("the confirmation is shown and accepted");
    receiver.next().await;
    wait_text(client, "delivery-state", "the redelivery succeeded", |t| {
        t == "delivered"
    })
    .await;
    assert_eq!(count(client, "attempt-row").await, 2);
    assert_eq!(console_errors(client).await, Vec::<String>::new());
}

/// Settings for the browser: few sync slots and one worker, so bursts show their effect.
async fn demo_app(base: &str) -> TestApp {
    let base = base.to_owned();
    spawn_app_with(move |c| {
        c.max_sync_concurrency = 2;
        c.num_workers = 1;
        c.max_callback_retries = 0;
        c.base_path = base;
    })
    .await
}

#[tokio::test]
async fn every_page_loads_live_in_a_browser_without_console_errors() {
    let _one = BROWSER.lock().await;
    let app = demo_app("").await;
    let Some((_driver, client)) = browser(1280, 1500).await else {
        return;
    };

    pages_load_cleanly(&app, &client, "").await;

    // Some history for the overview's tiles and chart: 10 sync and 10 async at once.
    let order = json!({"mode": "both", "n": 10, "operation": "prime", "complexity": 1});
    assert_eq!(app.post_json("/dashboard/api/burst", &order).await.status(), 202);
    client.goto(&app.url("/dashboard")).await.expect("overview");
    wait_text(&client, "total-503", "the overview counts the 503s", |t| {
        number(t).is_some_and(|n| n > 0)
    })
    .await;
    wait_text(&client, "requests-done", "the jobs are done", |t| {
        number(t).is_some_and(|n| n >= 12)
    })
    .await;
    screenshot(&client, "dashboard-overview.png").await;
    client.close().await.expect("browser closes");
}

#[tokio::test]
async fn at_phone_width_no_page_scrolls_sideways() {
    let _one = BROWSER.lock().await;
    let app = demo_app("").await;
    let Some((_driver, client)) = browser(390, 844).await else {
        return;
    };

    for page in ["/dashboard", "/dashboard/demo", "/dashboard/requests"] {
        client.goto(&app.url(page)).await.expect("page opens");
        let overflow = client
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .expect("script runs");
        assert!(
            overflow.as_i64().is_some_and(|px| px <= 0),
            "{page} overflows by {overflow} px"
        );
    }
    client.close().await.expect("browser closes");
}

#[tokio::test]
async fn fire_50_sync_shows_503s_and_fire_50_async_fills_then_drains_the_queue() {
    let _one = BROWSER.lock().await;
    let app = demo_app("").await;
    let Some((_driver, client)) = browser(1280, 2250).await else {
        return;
    };

    sync_refuses_and_async_queues(&app, &client, "", true).await;
    client.close().await.expect("browser closes");
}

#[tokio::test]
async fn redeliver_in_the_browser_adds_an_attempt_row() {
    let _one = BROWSER.lock().await;
    let app = demo_app("").await;
    let Some((_driver, client)) = browser(1280, 1000).await else {
        return;
    };

    redeliver_adds_an_attempt_row(&app, &client, "").await;
    client.close().await.expect("browser closes");
}

#[tokio::test]
async fn all_of_it_works_under_a_base_path() {
    let _one = BROWSER.lock().await;
    let app = demo_app("/ops").await;
    let Some((_driver, client)) = browser(1280, 1000).await else {
        return;
    };

    pages_load_cleanly(&app, &client, "/ops").await;
    sync_refuses_and_async_queues(&app, &client, "/ops", false).await;
    redeliver_adds_an_attempt_row(&app, &client, "/ops").await;
    client.close().await.expect("browser closes");
}

/// Submits quick async work with `key`; returns the request id.
async fn submit_as(app: &TestApp, key: &str) -> String {
    let response = app
        .client
        .post(app.url("/async"))
        .bearer_auth(key)
        .json(&json!({"payload": crate::helpers::quick_payload()}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("accepted");
    accepted["request_id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn signing_in_with_a_tenant_key_shows_only_that_tenants_requests() {
    const KEY_A: &str = "tenant-a-key-0123456789";
    const KEY_B: &str = "tenant-b-key-0123456789";
    let _one = BROWSER.lock().await;
    let app = spawn_app_with(|c| {
        c.api_keys = ApiKeys {
            tenants: vec![
                ("tenant-a".to_owned(), Secret::new(KEY_A)),
                ("tenant-b".to_owned(), Secret::new(KEY_B)),
            ],
            admin: None,
        };
    })
    .await;
    let mine = [submit_as(&app, KEY_A).await, submit_as(&app, KEY_A).await];
    let theirs = submit_as(&app, KEY_B).await;
    let Some((_driver, client)) = browser(1280, 1000).await else {
        return;
    };

    client.goto(&app.url("/dashboard/requests")).await.expect("page opens");
    assert_eq!(count(&client, "sign-in-form").await, 1, "the page asks for a key");
    client
        .find(Locator::Css(&testid("sign-in-key")))
        .await
        .expect("the key field")
        .send_keys(KEY_A)
        .await
        .expect("typed");
    click(&client, "sign-in-submit").await;

    wait_text(&client, "requests-total", "signed in, the list shows", |t| {
        t.starts_with("2 matching")
    })
    .await;
    assert_eq!(count(&client, "request-row").await, 2);
    let html = client.source().await.expect("page source");
    assert!(mine.iter().all(|id| html.contains(id.as_str())) && !html.contains(&theirs));
    assert_eq!(text_of(&client, "signed-in-as").await, "tenant tenant-a");
    // The form page itself was a 401, which the browser logs; nothing else may be.
    let errors: Vec<String> = console_errors(&client)
        .await
        .into_iter()
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert_eq!(errors, Vec::<String>::new());

    click(&client, "sign-out").await;
    wait_text(&client, "sign-in-submit", "signed out, the form is back", |t| {
        t == "Sign in"
    })
    .await;
    client.close().await.expect("browser closes");
}
