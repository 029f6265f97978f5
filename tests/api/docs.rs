//! `/docs` (Swagger UI from vendored assets) and `/openapi.json`.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn swagger_ui_and_its_assets_are_served_locally() {
    let app = spawn_app().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
        let body = response.text().await.expect("asset");
        assert!(body.len() > 100, "{asset} is empty");
        assert!(
            !body.contains("unpkg.com") && !body.contains("cdn.jsdelivr"),
            "{asset} loads from a CDN"
        );
    }
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.expect("js");
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

#[tokio::test]
async fn the_served_spec_is_the_generated_one() {
    let app = spawn_app().await;
    let served: Value = app.get_json("/openapi.json").await;
    let generated = serde_json::to_value(sync_async::routes::openapi()).expect("spec");
    assert_eq!(served, generated);
    assert!(served["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
}

#[test]
fn every_operation_has_a_summary_a_description_and_problem_json_errors() {
    let spec = serde_json::to_value(sync_async::routes::openapi()).expect("spec");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 7, "{:?}", paths.keys());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let at = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{at} has no summary"
            );
            assert!(
                op["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{at} has no description"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|code| code.starts_with('2')),
                "{at} documents no success"
            );
            for (code, response) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    let content = response["content"].as_object().expect("error content");
                    assert!(
                        content.contains_key("application/problem+json"),
                        "{at} {code} is not problem+json"
                    );
                }
            }
            if path != "/healthz" {
                assert!(responses.contains_key("429"), "{at} does not document the rate limit");
            }
        }
    }
}

#[test]
fn the_openapi_document_matches_its_snapshot() {
    let spec = serde_json::to_value(sync_async::routes::openapi()).expect("spec");
    insta::assert_json_snapshot!("openapi", spec);
}
