//! The web chat over HTTP: a visitor gets a session token, sends messages
//! through the durable path, and reads replies by polling and as server-sent
//! events; one visitor cannot read or write another's conversation; bad input is
//! refused with a reason and records nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestConfig, WEB_CHAT};

async fn web_chat_app(backend: Backend) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        backend,
        extra: WEB_CHAT.into(),
        ..TestConfig::default()
    })
    .await
}

async fn new_visitor(app: &TestApp) -> String {
    let session: Value = app
        .http
        .post(format!("{}/chat/chat/session", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["token"].as_str().unwrap().to_owned()
}

async fn say(app: &TestApp, token: &str, id: &str, text: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/chat/chat/messages", app.address))
        .bearer_auth(token)
        .json(&json!({ "id": id, "text": text }))
        .send()
        .await
        .unwrap()
}

async fn read(app: &TestApp, token: &str, after: Option<i64>) -> Vec<Value> {
    let query = after.map(|a| format!("?after={a}")).unwrap_or_default();
    let listed: Value = app
        .http
        .get(format!("{}/chat/chat/messages{query}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed["messages"].as_array().unwrap().clone()
}

/// Polls until the visitor's mailbox holds `n` messages.
async fn wait_for_mailbox(app: &TestApp, token: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = read(app, token, None).await;
        if messages.len() >= n {
            return messages;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mailbox: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_visitor_sends_and_reads_replies_by_polling_and_events(backend: Backend) {
    let app = web_chat_app(backend).await;
    let token = new_visitor(&app).await;

    let sent = say(&app, &token, "m1", "ada:hello").await;
    assert_eq!(sent.status(), 200);
    let accepted: Value = sent.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    // The page retries with the same id after a network error: one message.
    let again: Value = say(&app, &token, "m1", "ada:hello")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "duplicate");

    let messages = wait_for_mailbox(&app, &token, 2).await;
    assert_eq!(messages[0]["role"], "visitor");
    assert_eq!(messages[0]["text"], "ada:hello");
    assert_eq!(messages[0]["key"], "in:m1");
    assert_eq!(messages[1]["role"], "agent");
    assert_eq!(messages[1]["text"], "answer to [ada:hello]");
    assert_eq!(app.model.calls().len(), 1, "one turn");

    // Live: an event stream from after the first exchange sees the next reply.
    let cursor = messages[1]["seq"].as_i64().unwrap();
    let stream = app
        .http
        .get(format!(
            "{}/chat/chat/events?after={cursor}&token={token}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = stream;
    assert_eq!(say(&app, &token, "m2", "ada:again").await.status(), 200);
    let mut received = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !received.contains("answer to [ada:again]") {
        let chunk = tokio::time::timeout_at(deadline, body.chunk())
            .await
            .expect("the reply arrives as an event")
            .unwrap()
            .expect("the stream stays open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = received
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| (e["role"].as_str().unwrap(), e["text"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [("visitor", "ada:again"), ("agent", "answer to [ada:again]")],
        "only what came after the cursor, in order"
    );
    assert!(received.contains(&format!("id: {}", events[1]["seq"])));
    // Polling after the cursor gives the same two.
    assert_eq!(read(&app, &token, Some(cursor)).await.len(), 2);

    // Forgetting the visitor empties their mailbox too.
    let visitor = token.split('.').next().unwrap();
    let forgotten = app
        .http
        .post(format!(
            "{}/admin/v1/identities/chat:{visitor}/forget",
            app.address
        ))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forgotten.status(),
        200,
        "{}",
        forgotten.text().await.unwrap()
    );
    assert!(read(&app, &token, None).await.is_empty());
    assert_eq!(app.count("SELECT COUNT(*) FROM webchat_messages").await, 0);
    app.stop().await;
}

async fn one_visitor_cannot_reach_another_and_bad_input_records_nothing(backend: Backend) {
    let app = web_chat_app(backend).await;
    let ada = new_visitor(&app).await;
    let bob = new_visitor(&app).await;
    assert_eq!(
        say(&app, &ada, "a1", "ada:secret plans").await.status(),
        200
    );
    wait_for_mailbox(&app, &ada, 2).await;
    assert!(
        read(&app, &bob, None).await.is_empty(),
        "bob sees nothing of ada's"
    );
    // A token whose visitor part was changed to ada's does not verify.
    let ada_visitor = ada.split('.').next().unwrap();
    let (_, rest) = bob.split_once('.').unwrap();
    let forged = format!("{ada_visitor}.{rest}");
    let refused = app
        .http
        .get(format!("{}/chat/chat/messages", app.address))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["code"], "bad_token");
    let events = app
        .http
        .get(format!("{}/chat/chat/events?token={forged}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 401);
    let anonymous = app
        .http
        .post(format!("{}/chat/chat/messages", app.address))
        .json(&json!({"id": "x", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let inbound_before = app.count("SELECT COUNT(*) FROM inbound_events").await;
    let mailbox_before = app.count("SELECT COUNT(*) FROM webchat_messages").await;
    for (body, why) in [
        (json!({"id": "b1", "text": "   "}), "blank text"),
        (
            json!({"id": "b2", "text": "x".repeat(4001)}),
            "text too long",
        ),
        (json!({"id": "no spaces allowed", "text": "hi"}), "bad id"),
        (json!({"id": "", "text": "hi"}), "empty id"),
        (json!({"text": "hi"}), "no id"),
    ] {
        let response = app
            .http
            .post(format!("{}/chat/chat/messages", app.address))
            .bearer_auth(&bob)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{why}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "malformed_body", "{why}");
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    let garbage = app
        .http
        .post(format!("{}/chat/chat/messages", app.address))
        .bearer_auth(&bob)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM inbound_events").await,
        inbound_before
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM webchat_messages").await,
        mailbox_before
    );

    // Not a web chat connector, or none at all.
    for path in ["/chat/web/session", "/chat/nope/session"] {
        let response = app
            .http
            .post(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    // The web chat takes no webhooks.
    let hook = app
        .http
        .post(format!("{}/hooks/chat", app.address))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 400);
    app.stop().await;
}

crate::on_both_backends!(
    a_visitor_sends_and_reads_replies_by_polling_and_events,
    one_visitor_cannot_reach_another_and_bad_input_records_nothing,
);

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_policy() {
    let app = web_chat_app(Backend::Sqlite).await;
    let page = app
        .http
        .get(format!("{}/chat/chat", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"const base = "/chat/chat";"#));
    assert!(html.contains("textContent"), "messages are put in as text");
    assert!(!html.contains("innerHTML"));
    app.stop().await;
}

/// Many appends to one visitor's mailbox at once (the visitor writing while
/// replies are delivered) and a reader polling with its cursor all along: the
/// reader sees every row, none skipped, none twice. (A row numbered at insert
/// but committed after a higher number would be skipped by the cursor; the
/// appends of one visitor take turns.)
async fn a_polling_reader_misses_nothing_while_many_appends_race(backend: Backend) {
    let app = web_chat_app(backend).await;
    let store = app.deployment.store.clone();
    const APPENDS: usize = 200;
    let writers: Vec<_> = (0..APPENDS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                store
                    .webchat_append(
                        WEB_CHAT,
                        "racer",
                        role,
                        &format!("k{i}"),
                        &format!("text {i}"),
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < APPENDS && std::time::Instant::now() < deadline {
        for message in store
            .webchat_messages(WEB_CHAT, "racer", cursor, 500)
            .await
            .unwrap()
        {
            cursor = message.seq;
            seen.push(message.key);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Whatever committed after the reader's last look.
    for message in store
        .webchat_messages(WEB_CHAT, "racer", cursor, 500)
        .await
        .unwrap()
    {
        seen.push(message.key);
    }
    let mut keys = seen.clone();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), seen.len(), "a row was read twice");
    assert_eq!(seen.len(), APPENDS, "the reader's cursor skipped rows");
    app.stop().await;
}
crate::on_both_backends!(a_polling_reader_misses_nothing_while_many_appends_race);
