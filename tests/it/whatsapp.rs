//! The WhatsApp channel end to end: real receiver and worker, a fake Graph API.

use std::time::Duration;

use microclaw::channels::{format::whatsapp_text, whatsapp::signature};
use serde_json::{Value, json};

use crate::{
    fakes::FakeApi,
    helpers::{TestApp, TestConfig, WHATSAPP_APP_SECRET},
};

const SAMPLE: &str = include_str!("../fixtures/whatsapp.json");

async fn spawn(graph: &FakeApi) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "wa"
channel = "whatsapp"
agent = "assistant"
signing_secret_env = "TEST_WA_SECRET"
bot_token_env = "TEST_WA_TOKEN"
verify_token_env = "TEST_WA_VERIFY"
api_base_url = "{}"
"#,
            graph.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post(app: &TestApp, body: &str, signature: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/hooks/wa", app.address))
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_sample_message_is_answered_through_the_graph_api() {
    let graph = FakeApi::start().await;
    let app = spawn(&graph).await;
    let response = post(
        &app,
        SAMPLE,
        &signature(WHATSAPP_APP_SECRET, SAMPLE.as_bytes()),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "accepted"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while graph.sent_messages().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no message sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (path, body) = &graph.sent_messages()[0];
    assert_eq!(path, "/106540352242922/messages");
    assert_eq!(
        body,
        &json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "34612345678",
            "type": "text",
            "text": {"body": whatsapp_text("answer to [Hola! Is my order #4411 shipped yet?]"), "preview_url": false},
        })
    );
    let typing = graph
        .calls()
        .into_iter()
        .find(|(_, body)| body.get("typing_indicator").is_some())
        .expect("a typing indicator when the turn starts");
    assert_eq!(
        typing.1["message_id"],
        "wamid.HBgLMzQ2MTIzNDU2NzgVAgASGBQzRUIwQTFCMkMzRDRFNUY2QTdCOAA="
    );
    assert!(
        graph
            .authorizations()
            .iter()
            .all(|a| a == "Bearer wa-access-token")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_subscription_handshake_is_answered_only_with_the_verify_token() {
    let graph = FakeApi::start().await;
    let app = spawn(&graph).await;
    let url = |token: &str| {
        format!(
            "{}/hooks/wa?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}",
            app.address
        )
    };
    let ok = app.http.get(url("microclaw-verify")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(
        app.http.get(url("guess")).send().await.unwrap().status(),
        401
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_receipts_and_retries_create_nothing() {
    let graph = FakeApi::start().await;
    let app = spawn(&graph).await;
    let reserialized =
        serde_json::to_string(&serde_json::from_str::<Value>(SAMPLE).unwrap()).unwrap();
    assert_eq!(
        post(
            &app,
            &reserialized,
            &signature(WHATSAPP_APP_SECRET, SAMPLE.as_bytes())
        )
        .await
        .status(),
        401,
        "the signature covers the raw bytes"
    );
    assert_eq!(
        post(&app, SAMPLE, &signature("wrong-secret", SAMPLE.as_bytes()))
            .await
            .status(),
        401
    );
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);

    let receipt = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.out","status":"delivered","timestamp":"1767225662","recipient_id":"34612345678"}]}}]}]}"#;
    let ignored: Value = post(
        &app,
        receipt,
        &signature(WHATSAPP_APP_SECRET, receipt.as_bytes()),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ignored["status"], "ignored");
    let signed = signature(WHATSAPP_APP_SECRET, SAMPLE.as_bytes());
    assert_eq!(post(&app, SAMPLE, &signed).await.status(), 200);
    let again: Value = post(&app, SAMPLE, &signed).await.json().await.unwrap();
    assert_eq!(
        again["status"], "duplicate",
        "Meta's retry of the same wamid"
    );
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 1);
    app.stop().await;
}
