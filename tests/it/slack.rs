//! The Slack channel end to end: real receiver and worker, a fake Web API.

use std::time::Duration;

use microclaw::channels::{format::slack_mrkdwn, slack::signature};
use serde_json::{Value, json};

use crate::{
    fakes::FakeApi,
    helpers::{SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, TestApp, TestConfig},
};

const SAMPLE: &str = include_str!("../fixtures/slack.json");

async fn spawn(slack: &FakeApi) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "slack"
channel = "slack"
agent = "assistant"
signing_secret_env = "TEST_SLACK_SECRET"
bot_token_env = "TEST_SLACK_TOKEN"
api_base_url = "{}"
"#,
            slack.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post_event(app: &TestApp, body: &str, timestamp: i64, secret: &str) -> reqwest::Response {
    let ts = timestamp.to_string();
    app.http
        .post(format!("{}/hooks/slack", app.address))
        .header("content-type", "application/json")
        .header("X-Slack-Request-Timestamp", &ts)
        .header("X-Slack-Signature", signature(secret, &ts, body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn wait_for_posts(slack: &FakeApi, n: usize) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = slack.sent_messages();
        if sent.len() >= n {
            return sent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} posts, got {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_sample_mention_is_answered_in_its_thread() {
    let slack = FakeApi::start().await;
    let app = spawn(&slack).await;
    let response = post_event(&app, SAMPLE, now(), SLACK_SIGNING_SECRET).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "accepted"
    );

    let posts = wait_for_posts(&slack, 1).await;
    let (path, body) = &posts[0];
    assert_eq!(path, "/chat.postMessage");
    assert_eq!(
        body,
        &json!({
            "channel": "C03OPSCHAN",
            "thread_ts": "1767225600.001200",
            "text": slack_mrkdwn("answer to [can you summarise the deploy log & flag errors?]"),
        })
    );
    assert!(
        body["text"].as_str().unwrap().contains("&amp;"),
        "mrkdwn escapes &"
    );
    assert_eq!(
        slack.authorizations()[0],
        format!("Bearer {SLACK_BOT_TOKEN}")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_url_verification_handshake_is_answered() {
    let slack = FakeApi::start().await;
    let app = spawn(&slack).await;
    let body = r#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let response = post_event(&app, body, now(), SLACK_SIGNING_SECRET).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    app.stop().await;
}

#[tokio::test]
async fn tampered_stale_or_wrongly_signed_events_are_refused() {
    let slack = FakeApi::start().await;
    let app = spawn(&slack).await;
    assert_eq!(
        post_event(&app, SAMPLE, now(), "another-secret")
            .await
            .status(),
        401
    );
    assert_eq!(
        post_event(&app, SAMPLE, now() - 400, SLACK_SIGNING_SECRET)
            .await
            .status(),
        401
    );
    let ts = now().to_string();
    let tampered = app
        .http
        .post(format!("{}/hooks/slack", app.address))
        .header("X-Slack-Request-Timestamp", &ts)
        .header(
            "X-Slack-Signature",
            signature(SLACK_SIGNING_SECRET, &ts, SAMPLE.as_bytes()),
        )
        .body(SAMPLE.replace("deploy log", "billing log"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_slack_retry_and_the_twin_app_mention_create_one_turn() {
    let slack = FakeApi::start().await;
    let app = spawn(&slack).await;
    assert_eq!(
        post_event(&app, SAMPLE, now(), SLACK_SIGNING_SECRET)
            .await
            .status(),
        200
    );
    let retry: Value = post_event(&app, SAMPLE, now(), SLACK_SIGNING_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry["status"], "duplicate");
    let twin = SAMPLE
        .replace(
            r#""type":"message","user""#,
            r#""type":"app_mention","user""#,
        )
        .replace("Ev08DEPLOY42", "Ev08DEPLOY43");
    let twin: Value = post_event(&app, &twin, now(), SLACK_SIGNING_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(twin["status"], "duplicate", "same channel and ts");
    wait_for_posts(&slack, 1).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(slack.sent_messages().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn ratelimited_waits_and_channel_not_found_is_dead() {
    let slack = FakeApi::start().await;
    slack.script_with_retry_after(429, json!({"ok": false, "error": "ratelimited"}), 1);
    slack.script(200, json!({"ok": false, "error": "channel_not_found"}));
    let app = spawn(&slack).await;
    post_event(&app, SAMPLE, now(), SLACK_SIGNING_SECRET).await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        app.attempt_history().await,
        ["1:rate_limited:429", "2:permanent:200"]
    );
    let error = app.strings("SELECT last_error FROM deliveries").await;
    assert!(error[0].contains("channel_not_found"), "{error:?}");
    app.stop().await;
}
