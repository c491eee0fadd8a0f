//! The Telegram channel end to end: real receiver and worker, a fake Bot API.

use std::time::Duration;

use microclaw::channels::format::telegram_html;
use serde_json::{Value, json};

use crate::{
    fakes::FakeApi,
    helpers::{Backend, TELEGRAM_SECRET, TELEGRAM_TOKEN, TestApp, TestConfig},
};

const SAMPLE: &str = include_str!("../fixtures/telegram.json");

async fn spawn(telegram: &FakeApi) -> TestApp {
    spawn_on(telegram, Backend::Postgres).await
}

async fn spawn_on(telegram: &FakeApi, backend: Backend) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        backend,
        extra: format!(
            r#"
[[connectors]]
id = "tg"
channel = "telegram"
agent = "assistant"
bot_token_env = "TEST_TG_TOKEN"
secret_token_env = "TEST_TG_SECRET"
bot_username = "microclaw_bot"
api_base_url = "{}"
"#,
            telegram.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post_update(app: &TestApp, body: &str, secret: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/hooks/tg", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    request.send().await.unwrap()
}

async fn wait_for_messages(telegram: &FakeApi, n: usize) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = telegram.sent_messages();
        if sent.len() >= n {
            return sent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} sendMessage calls, got {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_sample_update_is_answered_in_its_forum_topic() {
    let telegram = FakeApi::start().await;
    let app = spawn(&telegram).await;
    let response = post_update(&app, SAMPLE, Some(TELEGRAM_SECRET)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "accepted"
    );

    let sent = wait_for_messages(&telegram, 1).await;
    let (path, body) = &sent[0];
    assert_eq!(path, &format!("/bot{TELEGRAM_TOKEN}/sendMessage"));
    let question = "@microclaw_bot what's 2+2? (testing_underscores.and-dots!)";
    assert_eq!(
        body,
        &json!({
            "chat_id": -1001987654321i64,
            "message_thread_id": 42,
            "text": telegram_html(&format!("answer to [{question}]")),
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true}
        })
    );
    let typing = telegram
        .calls()
        .into_iter()
        .find(|(path, _)| path.ends_with("/sendChatAction"))
        .expect("a typing indicator when the turn starts");
    assert_eq!(typing.1["action"], "typing");
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_secret_token_is_refused_and_enqueues_nothing() {
    let telegram = FakeApi::start().await;
    let app = spawn(&telegram).await;
    assert_eq!(
        post_update(&app, SAMPLE, Some("mc_tg_secret-0002"))
            .await
            .status(),
        401
    );
    assert_eq!(post_update(&app, SAMPLE, None).await.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_update_and_bot_messages_create_nothing() {
    let telegram = FakeApi::start().await;
    let app = spawn(&telegram).await;
    assert_eq!(
        post_update(&app, SAMPLE, Some(TELEGRAM_SECRET))
            .await
            .status(),
        200
    );
    let again: Value = post_update(&app, SAMPLE, Some(TELEGRAM_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "duplicate", "the update_id was seen");
    let from_bot = r#"{"update_id":900,"message":{"message_id":1,"from":{"id":7,"is_bot":true,"first_name":"Other"},"chat":{"id":5,"type":"private"},"text":"hello"}}"#;
    let ignored: Value = post_update(&app, from_bot, Some(TELEGRAM_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ignored["status"], "ignored");
    wait_for_messages(&telegram, 1).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(telegram.sent_messages().len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_waits_as_asked_without_using_up_attempts() {
    let telegram = FakeApi::start().await;
    for _ in 0..3 {
        telegram.script(
            429,
            json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1",
                   "parameters": {"retry_after": 1}}),
        );
    }
    let app = spawn(&telegram).await;
    let private = r#"{"update_id":901,"message":{"message_id":3,"from":{"id":11,"is_bot":false,"first_name":"Ann"},"chat":{"id":11,"type":"private"},"date":1767225661,"text":"hi"}}"#;
    assert_eq!(
        post_update(&app, private, Some(TELEGRAM_SECRET))
            .await
            .status(),
        200
    );
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        app.strings(
            "SELECT attempts || ':' || rate_limited || ':' || max_attempts FROM deliveries"
        )
        .await,
        ["4:3:3"],
        "three rate-limited attempts did not use up the three attempts"
    );
    let calls = telegram.sent_messages();
    assert_eq!(calls.len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn a_chat_that_is_gone_makes_the_delivery_dead_at_once() {
    let telegram = FakeApi::start().await;
    telegram.script(
        400,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
    );
    let app = spawn(&telegram).await;
    let private = r#"{"update_id":902,"message":{"message_id":3,"from":{"id":12,"is_bot":false,"first_name":"Bo"},"chat":{"id":12,"type":"private"},"text":"hi"}}"#;
    post_update(&app, private, Some(TELEGRAM_SECRET)).await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(20),
    )
    .await;
    let error = app.strings("SELECT last_error FROM deliveries").await;
    assert!(error[0].contains("chat not found"), "{error:?}");
    assert!(
        !error[0].contains(TELEGRAM_TOKEN),
        "the bot token never reaches the history"
    );
    app.stop().await;
}

/// A private update whose answer (the fake model echoes the question) is long
/// enough to be sent in several parts.
fn long_update(update_id: u32) -> String {
    let words: String = (0..2000).map(|i| format!("w{i} ")).collect();
    format!(
        r#"{{"update_id":{update_id},"message":{{"message_id":9,"from":{{"id":21,"is_bot":false,"first_name":"Lin"}},"chat":{{"id":21,"type":"private"}},"text":"{}"}}}}"#,
        words.trim_end()
    )
}

/// Each delivered part queues the next; the last one queues nothing
/// (`DeliveryRow::last_part`).
async fn a_long_reply_arrives_in_parts_in_order(backend: Backend) {
    let telegram = FakeApi::start().await;
    let app = spawn_on(&telegram, backend).await;
    assert_eq!(
        post_update(&app, &long_update(903), Some(TELEGRAM_SECRET))
            .await
            .status(),
        200
    );
    app.wait_until("SELECT count(*) FROM turns", 1, Duration::from_secs(20))
        .await;
    let parts = app.count("SELECT count(*) FROM deliveries").await;
    assert!(parts >= 3, "{parts} parts");
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status <> 'delivered'",
        0,
        Duration::from_secs(30),
    )
    .await;
    let sent = telegram.sent_messages();
    assert_eq!(sent.len() as i64, parts);
    let texts: Vec<&str> = sent
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap())
        .collect();
    assert!(texts.iter().all(|t| t.encode_utf16().count() <= 4096));
    assert!(texts[0].starts_with("answer to [w0 "), "part 1 first");
    assert!(
        texts.last().unwrap().ends_with("w1999]"),
        "the last part last"
    );
    let words = texts.join(" ");
    let order: Vec<usize> = ["w10 ", "w900 ", "w1900 "]
        .iter()
        .map(|w| words.find(w).unwrap())
        .collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "parts in order");
    app.stop().await;
}

async fn when_a_part_is_dead_the_later_parts_wait_in_the_admin_queue(backend: Backend) {
    let telegram = FakeApi::start().await;
    telegram.script(403, json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}));
    let app = spawn_on(&telegram, backend).await;
    post_update(&app, &long_update(904), Some(TELEGRAM_SECRET)).await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        3,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        app.strings("SELECT part || ':' || error_class FROM deliveries ORDER BY part")
            .await,
        [
            "1:permanent",
            "2:earlier_part_failed",
            "3:earlier_part_failed"
        ]
    );
    assert_eq!(
        telegram.sent_messages().len(),
        1,
        "later parts were not sent without the first"
    );
    app.stop().await;
}

crate::on_both_backends!(
    a_long_reply_arrives_in_parts_in_order,
    when_a_part_is_dead_the_later_parts_wait_in_the_admin_queue,
);
