//! iMessage through BlueBubbles end to end: real receiver and worker, a fake
//! BlueBubbles server recording the REST sends.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    fakes::FakeApi,
    helpers::{BLUEBUBBLES_PASSWORD, IMESSAGE_URL_TOKEN, TestApp, TestConfig},
};

const SAMPLE: &str = include_str!("../fixtures/imessage_bluebubbles.json");

async fn spawn(server: &FakeApi) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "imessage"
channel = "imessage"
agent = "assistant"
secret_token_env = "TEST_BB_TOKEN"
bot_token_env = "TEST_BB_PASSWORD"
api_base_url = "{}"
"#,
            server.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post(app: &TestApp, query: &str, body: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/hooks/imessage{query}", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn wait_for_sends(server: &FakeApi, n: usize) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = server.sent_messages();
        if sent.len() >= n {
            return sent;
        }
        assert!(std::time::Instant::now() < deadline, "sent: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_sample_message_is_answered_through_the_rest_api_once() {
    let server = FakeApi::start().await;
    let app = spawn(&server).await;
    let token = format!("?token={IMESSAGE_URL_TOKEN}");
    assert_eq!(post(&app, &token, SAMPLE).await.status(), 200);
    // BlueBubbles does not retry, but a resend (or a replayed request) is one message.
    let again: Value = post(&app, &token, SAMPLE).await.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");

    let sent = wait_for_sends(&server, 1).await;
    let (path, body) = &sent[0];
    assert_eq!(path, "/api/v1/message/text");
    assert_eq!(body["chatGuid"], "iMessage;-;+15551234567");
    assert_eq!(
        body["message"],
        "answer to [Can you move my appointment to Friday?]"
    );
    assert_eq!(body["method"], "apple-script");
    let temp_guid = body["tempGuid"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(temp_guid).is_ok(), "{temp_guid}");
    let query = &server.queries()[0];
    assert_eq!(
        microclaw::channels::form_pairs(query.as_bytes()),
        [("password".to_owned(), BLUEBUBBLES_PASSWORD.to_owned())]
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(server.sent_messages().len(), 1);
    assert_eq!(app.model.calls().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn requests_without_the_url_token_and_our_own_messages_start_no_turn() {
    let server = FakeApi::start().await;
    let app = spawn(&server).await;
    for (query, why) in [
        ("", "no token"),
        ("?token=guess", "wrong token"),
        (
            &format!("?token={IMESSAGE_URL_TOKEN}x") as &str,
            "longer token",
        ),
    ] {
        let response = post(&app, query, SAMPLE).await;
        assert_eq!(response.status(), 401, "{why}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "bad_signature", "{why}");
    }
    let mut own: Value = serde_json::from_str(SAMPLE).unwrap();
    own["data"]["isFromMe"] = json!(true);
    own["data"]["guid"] = json!("OUR-OWN-SEND");
    let ignored: Value = post(
        &app,
        &format!("?token={IMESSAGE_URL_TOKEN}"),
        &own.to_string(),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ignored["status"], "ignored");
    let malformed = post(&app, &format!("?token={IMESSAGE_URL_TOKEN}"), "{\"type\":").await;
    assert_eq!(malformed.status(), 400);
    assert_eq!(app.count("SELECT COUNT(*) FROM inbound_events").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_server_error_is_retried_and_an_already_queued_part_counts_as_sent() {
    let server = FakeApi::start().await;
    let app = spawn(&server).await;
    server.script(
        500,
        json!({"status": 500, "message": "AppleScript timed out"}),
    );
    server.script(
        400,
        json!({"status": 400, "error": {"type": "Validation Error", "message": "Message is already queued to be sent!"}}),
    );
    assert_eq!(
        post(&app, &format!("?token={IMESSAGE_URL_TOKEN}"), SAMPLE)
            .await
            .status(),
        200
    );
    wait_for_sends(&server, 2).await;
    app.drain(Duration::from_secs(20)).await;
    let sent = server.sent_messages();
    assert_eq!(sent.len(), 2, "one retry, then done");
    assert_eq!(
        sent[0].1["tempGuid"], sent[1].1["tempGuid"],
        "same tempGuid"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
            .await,
        1
    );
    app.stop().await;
}
