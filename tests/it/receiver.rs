use std::time::Duration;

use crate::helpers::{Backend, CONNECTOR, TestApp, TestConfig, TestMessage};
use microclaw::channels::standard_webhooks::SigningKey;

async fn assert_refused(app: &TestApp, response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a reason is given: {body}"
    );
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs").await,
        0,
        "nothing is enqueued"
    );
}

async fn bad_input_gets_the_right_4xx_and_enqueues_nothing(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let body = TestMessage::direct("m1", "ivan", "ivan:hi").body();
    let now = chrono::Utc::now().timestamp();
    let url = format!("{}/hooks/{CONNECTOR}", app.address);

    // Signed with another secret.
    let other = SigningKey::parse("whsec_wnZ1DmpbJjf19/rRxzrRy/YViJzl6Z9x0FBC20qkzSU=").unwrap();
    let response = app
        .http
        .post(&url)
        .header("webhook-id", "wh-1")
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            other.sign("wh-1", now, body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_refused(&app, response, 401, "bad_signature").await;

    // Correctly signed, but ten minutes old: a replay.
    let stale = app.post_signed(CONNECTOR, &body, "wh-2", now - 600).await;
    assert_refused(&app, stale, 401, "stale_timestamp").await;

    // Signature headers missing.
    let unsigned = app.http.post(&url).body(body.clone()).send().await.unwrap();
    assert_refused(&app, unsigned, 400, "missing_header").await;

    // Correctly signed, not JSON.
    let malformed = app
        .post_signed(CONNECTOR, "{\"type\": \"message.created\", ", "wh-3", now)
        .await;
    assert_refused(&app, malformed, 400, "malformed_body").await;

    // Correctly signed JSON missing the sender.
    let incomplete = app
        .post_signed(
            CONNECTOR,
            r#"{"type":"message.created","data":{"message_id":"x","conversation_id":"c","text":"hi"}}"#,
            "wh-4",
            now,
        )
        .await;
    assert_refused(&app, incomplete, 400, "malformed_body").await;

    // Above the configured limit (64 KiB in tests).
    let huge = format!(
        r#"{{"type":"message.created","data":{{"message_id":"big","conversation_id":"c","sender":{{"id":"u"}},"text":"{}"}}}}"#,
        "a".repeat(100 * 1024)
    );
    let oversized = app.post_signed(CONNECTOR, &huge, "wh-5", now).await;
    assert_refused(&app, oversized, 413, "body_too_large").await;

    // Header limits (hyper's): more than 100 headers, or a head over ~400 KiB.
    let signed = |webhook_id: &str| {
        let key = SigningKey::parse(crate::helpers::SECRET).unwrap();
        app.http
            .post(&url)
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                key.sign(webhook_id, now, body.as_bytes()),
            )
            .body(body.clone())
    };
    let mut many = signed("wh-8");
    for i in 0..120 {
        many = many.header(format!("x-pad-{i}"), "x");
    }
    let many = many.send().await.unwrap();
    assert_eq!(many.status(), 431, "too many headers");
    let long = signed("wh-9")
        .header("x-pad", "a".repeat(1024 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 431, "a header too long");
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 0);

    // No such connector.
    let unknown = app.post_signed("nope", &body, "wh-6", now).await;
    assert_refused(&app, unknown, 404, "unknown_connector").await;

    // The same request, correctly signed, is accepted: the refusals were about the input.
    let ok = app.post_signed(CONNECTOR, &body, "wh-7", now).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
    app.stop().await;
}

async fn verified_events_of_other_types_are_acknowledged_and_ignored(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let response = app
        .post_signed(
            CONNECTOR,
            r#"{"type":"message.deleted","data":{"message_id":"m"}}"#,
            "wh-1",
            now,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ignored");
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    app.stop().await;
}

/// A pooled connection that sat idle is pinged before it is used
/// (`store::postgres::connect_lazy`): after a quiet spell in which Postgres
/// dropped every connection (a restart, a failover, an idle timeout on the
/// way), the next webhook is recorded on a new connection, not answered 503.
#[tokio::test]
async fn a_webhook_after_a_quiet_spell_in_which_postgres_dropped_the_connections_is_recorded() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let first = app
        .post_message(&TestMessage::direct("q1", "quinn", "quinn:one"))
        .await;
    assert_eq!(first.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let second = app
        .post_message(&TestMessage::direct("q2", "quinn", "quinn:two"))
        .await;
    assert_eq!(second.status(), 200, "{:?}", second.text().await);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn postgres_unreachable_gives_503_so_the_platform_retries() {
    let config = TestConfig {
        database_url: Some("postgres://postgres@127.0.0.1:1/none".into()),
        ..TestConfig::default()
    };
    let app = TestApp::spawn(config).await;
    let response = app
        .post_message(&TestMessage::direct("m1", "judy", "judy:hi"))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");

    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let alive = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);
    app.stop().await;
}

async fn readiness_reports_a_reachable_database(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
}

crate::on_both_backends!(
    bad_input_gets_the_right_4xx_and_enqueues_nothing,
    readiness_reports_a_reachable_database,
    verified_events_of_other_types_are_acknowledged_and_ignored,
);

async fn a_nul_character_is_dropped_not_retried_forever(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let response = app
        .post_message(&TestMessage::direct("nul1", "nia", "nia:a\u{0}b"))
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let replies = app
        .wait_for_replies(1, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(replies[0].event.data.text, "answer to [nia:ab]");
    app.stop().await;
}

crate::on_both_backends!(a_nul_character_is_dropped_not_retried_forever);
