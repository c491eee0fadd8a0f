//! HTTP function tools against a fake function server on loopback: signed
//! calls, schema validation before anything is sent, timeouts and refused
//! addresses as tool errors, and no second call when a crashed turn reruns.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use microclaw::channels::standard_webhooks::{SignedHeaders, SigningKey};
use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApp, TestConfig, TestMessage};

/// Records each call (headers as pairs, body) and answers per path.
#[derive(Clone, Default)]
struct FunctionServer {
    calls: Arc<Mutex<Vec<(String, HeaderMap, Value)>>>,
}

async fn handle(
    State(server): State<FunctionServer>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signed = SignedHeaders {
        id: &header("webhook-id"),
        timestamp: &header("webhook-timestamp"),
        signature: &header("webhook-signature"),
    };
    let verified = SigningKey::parse(SECRET)
        .unwrap()
        .verify(&signed, &body, chrono::Utc::now().timestamp(), 300)
        .is_ok();
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    server
        .calls
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), headers.clone(), payload.clone()));
    if !verified {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    match uri.path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({"late": true})).into_response()
        }
        "/redirect" => (
            StatusCode::FOUND,
            [("location", "http://127.0.0.2:9/internal")],
        )
            .into_response(),
        _ => Json(json!({
            "order": payload["data"]["arguments"]["order_id"],
            "status": "shipped",
        }))
        .into_response(),
    }
}

impl FunctionServer {
    async fn start() -> (Self, String) {
        let server = FunctionServer::default();
        let router = Router::new()
            .fallback(post(handle))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (server, base)
    }

    fn calls(&self) -> Vec<(String, HeaderMap, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

/// Each tool result the model saw, once, in the order it first saw them (a
/// request carries the conversation's earlier tool results too).
fn tool_results_seen(app: &TestApp) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for call in app.model.calls() {
        for result in call.tool_results {
            if !seen.contains(&result) {
                seen.push(result);
            }
        }
    }
    seen
}

/// Functions pointing at `base`, and loopback 127.0.0.1 allowed for them.
fn config(base: &str) -> TestConfig {
    let schema = r#"{ type = "object", properties = { order_id = { type = "string", pattern = "^[A-Z]-[0-9]+$" } }, required = ["order_id"], additionalProperties = false }"#;
    TestConfig {
        extra: format!(
            r#"
[tools]
allowed_private_networks = ["127.0.0.1"]

[[agents.functions]]
name = "lookup_order"
description = "Look up an order by its number"
parameters = {schema}
url = "{base}/orders"
secret_env = "TEST_SECRET"

[[agents.functions]]
name = "slow_report"
description = "A report that takes long"
url = "{base}/slow"
timeout = "300ms"
secret_env = "TEST_SECRET"

[[agents.functions]]
name = "internal_admin"
description = "Something on another loopback address"
url = "http://127.0.0.2:9/admin"
secret_env = "TEST_SECRET"

[[agents.functions]]
name = "redirected"
description = "A function that redirects elsewhere"
url = "{base}/redirect"
secret_env = "TEST_SECRET"
"#
        ),
        ..TestConfig::default()
    }
}

#[tokio::test]
async fn a_call_is_signed_and_answered_and_bad_arguments_never_leave() {
    let (server, base) = FunctionServer::start().await;
    let app = TestApp::spawn_with_worker(config(&base)).await;
    app.model
        .push_tool_call("lookup_order", json!({"order_id": "A-17"}));
    app.post_message(&TestMessage::direct("f1", "ada", "ada:where is my order?"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    let (path, headers, body) = &calls[0];
    assert_eq!(path, "/orders");
    assert_eq!(body["type"], "function.call");
    assert_eq!(body["data"]["name"], "lookup_order");
    assert_eq!(body["data"]["arguments"], json!({"order_id": "A-17"}));
    let key = headers["idempotency-key"].to_str().unwrap();
    assert!(key.starts_with("call_"), "{key}");
    assert_eq!(headers["webhook-id"], key);
    let model_calls = app.model.calls();
    assert_eq!(
        model_calls[0].tools_offered,
        microclaw::tools::BUILTIN.len() + 4
    );
    assert!(
        model_calls[1].tool_results[0].contains(r#""status":"shipped""#),
        "{:?}",
        model_calls[1].tool_results
    );

    // Arguments that break the schema get an error the model can read, and the
    // function never sees them.
    for arguments in [
        json!({"order_id": 17}),
        json!({"order_id": "17"}),
        json!({}),
    ] {
        app.model.push_tool_call("lookup_order", arguments);
    }
    for (n, text) in ["ada:again", "ada:and again", "ada:once more"]
        .iter()
        .enumerate()
    {
        app.post_message(&TestMessage::direct(&format!("f{}", n + 2), "ada", text))
            .await;
        app.wait_for_replies(n + 2, Duration::from_secs(20)).await;
    }
    assert_eq!(server.calls().len(), 1, "nothing invalid was sent");
    let results: Vec<String> = tool_results_seen(&app).into_iter().skip(1).collect();
    assert_eq!(results.len(), 3, "{results:?}");
    for result in &results {
        assert!(
            result.contains("do not match the function's schema"),
            "{result}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn timeouts_and_refused_addresses_come_back_as_tool_errors() {
    let (server, base) = FunctionServer::start().await;
    let app = TestApp::spawn_with_worker(config(&base)).await;
    for name in ["slow_report", "internal_admin", "redirected"] {
        app.model.push_tool_call(name, json!({}));
    }
    for (n, text) in ["ada:report", "ada:admin", "ada:follow"].iter().enumerate() {
        app.post_message(&TestMessage::direct(&format!("e{n}"), "ada", text))
            .await;
        app.wait_for_replies(n + 1, Duration::from_secs(20)).await;
    }
    let results = tool_results_seen(&app);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results[0].contains("did not answer within 0.3s"),
        "{}",
        results[0]
    );
    assert!(
        results[1].contains("127.0.0.2 is a private, loopback or link-local address"),
        "{}",
        results[1]
    );
    assert!(results[2].contains("redirect refused"), "{}", results[2]);
    assert!(results[2].contains("127.0.0.2"), "{}", results[2]);
    let paths: Vec<String> = server.calls().into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(paths, ["/slow", "/redirect"], "127.0.0.2 was never reached");
    app.stop().await;
}

/// The worker dies after the function ran but before the turn committed; the
/// rerun reuses the recorded result and the function is called once.
#[tokio::test]
async fn a_rerun_turn_does_not_call_the_function_twice() {
    let (server, base) = FunctionServer::start().await;
    let mut app = TestApp::spawn(config(&base)).await;
    app.model.set_delay(Duration::from_millis(800));
    app.model
        .push_tool_call("lookup_order", json!({"order_id": "B-2"}));
    let mut worker = app.spawn_binary(&["worker"], None);
    app.post_message(&TestMessage::direct("r1", "ada", "ada:track B-2"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The function ran and the model's second step started: kill before commit.
    while server.calls().is_empty() || app.model.calls().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the turn did not get that far"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM tool_results").await, 1);

    app.model.set_delay(Duration::from_millis(20));
    app.model
        .push_tool_call("lookup_order", json!({"order_id": "B-2"}));
    app.start_worker();
    app.wait_for_replies(1, Duration::from_secs(40)).await;
    assert_eq!(server.calls().len(), 1, "the function was called once");
    let last = app.model.calls().last().unwrap().clone();
    assert!(
        last.tool_results[0].contains(r#""order":"B-2""#),
        "the rerun got the recorded result: {:?}",
        last.tool_results
    );
    app.stop().await;
}
