//! The loopback rule: a client on another machine cannot make the server call its loopback; a
//! client on this host can (the demo); LOOPBACK_CALLBACKS=any and never widen and close it. A
//! remote client is simulated over loopback with TRUSTED_PROXIES=127.0.0.1/32 and
//! `X-Forwarded-For: 203.0.113.5`.

use serde_json::{Value, json};
use sync_async::config::LoopbackCallbacks;

use crate::helpers::{TestApp, TestReceiver, problem, quick_payload, spawn_app, spawn_app_with, trust_loopback_proxy};

const REMOTE_CLIENT: &str = "203.0.113.5";

/// POSTs `/async` with `callback_url`, as the client `forwarded_for` when given.
async fn submit(app: &TestApp, callback_url: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/async"))
        .json(&json!({"payload": quick_payload(), "callback_url": callback_url}));
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    request.send().await.expect("sent")
}

/// The loopback forms of the receiver's URL: 127.0.0.1, localhost, ::1 and 0.0.0.0.
fn loopback_urls(receiver: &TestReceiver) -> Vec<String> {
    let port = receiver.running.addr.port();
    vec![
        receiver.url(),
        format!("http://localhost:{port}/callback"),
        format!("http://[::1]:{port}/callback"),
        format!("http://0.0.0.0:{port}/callback"),
        format!("http://[::ffff:127.0.0.1]:{port}/callback"),
    ]
}

#[tokio::test]
async fn a_remote_client_cannot_make_the_server_call_loopback() {
    let app = spawn_app_with(trust_loopback_proxy).await;
    let receiver = TestReceiver::reliable().await;

    for url in loopback_urls(&receiver) {
        let (status, body) = problem(submit(&app, &url, Some(REMOTE_CLIENT)).await).await;

        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["type"], "urn:sync-async:problem:callback-url-refused", "{url}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("only clients on this host")),
            "{url}: {body}"
        );
    }
    assert_eq!(app.metrics().await["total_requests"], 0, "nothing was stored");
    assert_eq!(receiver.totals().requests, 0);
}

#[tokio::test]
async fn a_client_on_this_host_may_use_a_loopback_callback() {
    let app = spawn_app_with(trust_loopback_proxy).await;
    let mut receiver = TestReceiver::reliable().await;

    // No X-Forwarded-For: the trusted "proxy" at 127.0.0.1 is itself the client.
    let response = submit(&app, &receiver.url(), None).await;

    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    assert_eq!(receiver.next().await.webhook_id, accepted["request_id"]);
}

#[tokio::test]
async fn an_untrusted_proxy_on_this_host_does_not_make_its_clients_local() {
    // No TRUSTED_PROXIES: the header is not believed, but it shows a proxy forwarded the request.
    let app = spawn_app().await;
    let receiver = TestReceiver::reliable().await;

    let (status, body) = problem(submit(&app, &receiver.url(), Some(REMOTE_CLIENT)).await).await;

    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("TRUSTED_PROXIES")),
        "{body}"
    );
}

#[tokio::test]
async fn any_opens_loopback_to_every_client_and_never_closes_it_to_all() {
    let open = spawn_app_with(|c| {
        trust_loopback_proxy(c);
        c.loopback_callbacks = LoopbackCallbacks::Any;
    })
    .await;
    let mut receiver = TestReceiver::reliable().await;
    let response = submit(&open, &receiver.url(), Some(REMOTE_CLIENT)).await;
    assert_eq!(response.status(), 202);
    receiver.next().await;

    let closed = spawn_app_with(|c| c.loopback_callbacks = LoopbackCallbacks::Never).await;
    let (status, body) = problem(submit(&closed, &receiver.url(), None).await).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("LOOPBACK_CALLBACKS is never")),
        "{body}"
    );
}

#[tokio::test]
async fn remote_clients_are_refused_every_address_that_is_not_global() {
    let app = spawn_app_with(|c| {
        trust_loopback_proxy(c);
        c.loopback_callbacks = LoopbackCallbacks::Any;
    })
    .await;
    for url in [
        "http://192.0.2.10/cb",
        "http://198.51.100.20/cb",
        "http://203.0.113.9/cb",
        "http://[2001:db8::1]/cb",
        "http://[100::1]/cb",
        "http://[fec0::1]/cb",
        "http://192.88.99.1/cb",
        "http://168.63.129.16/cb",
        "http://[2606:4700::200:5efe:c0a8:101]/cb",
    ] {
        let (status, body) = problem(submit(&app, url, Some(REMOTE_CLIENT)).await).await;
        assert_eq!(status, 400, "{url}: {body}");
    }
    assert_eq!(app.metrics().await["total_requests"], 0);
}
