//! SMS through Twilio end to end: real receiver and worker, a fake Messages API.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use microclaw::channels::{
    form_pairs,
    format::plain_text,
    twilio::{EMPTY_TWIML, signature},
};
use serde_json::json;

use crate::{
    fakes::FakeApi,
    helpers::{TWILIO_AUTH_TOKEN, TestApp, TestConfig},
};

const SAMPLE: &str = include_str!("../fixtures/twilio_sms.form");
/// The webhook URL as configured in Twilio (in front of a TLS-terminating proxy).
const PUBLIC_URL: &str = "https://hooks.microclaw.example/twilio/sms?tenant=acme";

async fn spawn(twilio: &FakeApi) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "sms"
channel = "twilio"
agent = "assistant"
signing_secret_env = "TEST_TWILIO_TOKEN"
account_sid = "ACtest"
public_url = "{PUBLIC_URL}"
api_base_url = "{}"
"#,
            twilio.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post(app: &TestApp, body: &str, signature: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/hooks/sms", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn signed(url: &str, body: &str) -> String {
    signature(TWILIO_AUTH_TOKEN, url, &form_pairs(body.as_bytes()))
}

#[tokio::test]
async fn the_sample_sms_is_answered_with_empty_twiml_then_by_the_api() {
    let twilio = FakeApi::start().await;
    let app = spawn(&twilio).await;
    let response = post(&app, SAMPLE, &signed(PUBLIC_URL, SAMPLE)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    assert_eq!(response.text().await.unwrap(), EMPTY_TWIML);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while twilio.sent_messages().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no SMS sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (path, body) = &twilio.sent_messages()[0];
    assert_eq!(path, "/2010-04-01/Accounts/ACtest/Messages.json");
    assert_eq!(
        body,
        &json!({
            "To": "+14155550123",
            "From": "+14155550100",
            "Body": plain_text(
                "answer to [Here's the photo of the broken part 📷\n[attachment: unnamed (image/jpeg) \
                 https://api.twilio.com/2010-04-01/Accounts/ACa1b2c3d4e5f60718293a4b5c6d7e8f90/Messages/\
                 MM5f0c1e2d3b4a59687a6b5c4d3e2f1a0b/Media/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9]]"
            ),
        })
    );
    assert_eq!(
        twilio.authorizations()[0],
        format!(
            "Basic {}",
            STANDARD.encode(format!("ACtest:{TWILIO_AUTH_TOKEN}"))
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn a_signature_over_another_url_or_body_is_refused() {
    let twilio = FakeApi::start().await;
    let app = spawn(&twilio).await;
    // Signed for the URL the receiver sees behind the proxy, not the public one.
    let internal = format!("{}/hooks/sms", app.address);
    assert_eq!(
        post(&app, SAMPLE, &signed(&internal, SAMPLE))
            .await
            .status(),
        401
    );
    let tampered = SAMPLE.replace("broken", "fixed");
    assert_eq!(
        post(&app, &tampered, &signed(PUBLIC_URL, SAMPLE))
            .await
            .status(),
        401
    );
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_message_sid_creates_nothing() {
    let twilio = FakeApi::start().await;
    let app = spawn(&twilio).await;
    let signature = signed(PUBLIC_URL, SAMPLE);
    assert_eq!(post(&app, SAMPLE, &signature).await.status(), 200);
    let again = post(&app, SAMPLE, &signature).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), EMPTY_TWIML);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 1);
    app.stop().await;
}
