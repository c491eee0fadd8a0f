use std::time::Duration;

use crate::helpers::{Backend, CONNECTOR, TestApp, TestConfig, TestMessage};

async fn signed_webhook_becomes_one_signed_reply_at_the_platform(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;

    let response = app
        .post_message(&TestMessage::direct("m1", "alice", "alice:hello"))
        .await;
    assert_eq!(response.status(), 200);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    let trace_id = accepted["trace_id"].as_str().unwrap().to_owned();

    let replies = app.wait_for_replies(1, Duration::from_secs(15)).await;
    let reply = &replies[0];
    assert_eq!(reply.event.kind, "message.reply");
    assert_eq!(reply.event.data.text, "answer to [alice:hello]");
    assert_eq!(reply.event.data.recipient_id, "alice");
    assert_eq!(reply.event.data.conversation_id, "dm-alice");
    assert_eq!(reply.event.data.in_reply_to, vec!["m1".to_owned()]);
    assert_eq!(
        reply.event.data.trace_id, trace_id,
        "one id from the inbound event to the delivery"
    );
    assert_eq!(reply.webhook_id, reply.event.data.delivery_id.to_string());
    assert_eq!(app.platform.bad_signatures(), 0);

    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.strings("SELECT status || ':' || attempts FROM deliveries")
            .await,
        ["delivered:1"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM turns WHERE status = 'completed'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM inbound_events WHERE status = 'answered'")
            .await,
        1
    );
    app.stop().await;
}

async fn history_is_given_to_the_model_on_the_next_turn(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.post_message(&TestMessage::direct("m1", "bob", "bob:first"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(15)).await;
    app.post_message(&TestMessage::direct("m2", "bob", "bob:second"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(15)).await;

    let calls = app.model.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].user_messages, vec!["bob:second".to_owned()]);
    let roles = app.strings("SELECT role FROM messages ORDER BY id").await;
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    app.stop().await;
}

async fn duplicate_webhook_gives_one_reply(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let message = TestMessage::direct("dup-1", "carol", "carol:once");

    let first = app.post_message(&message).await;
    assert_eq!(first.status(), 200);
    // The platform retries, sequentially and concurrently.
    let retries = futures::future::join_all((0..4).map(|_| app.post_message(&message))).await;
    for retry in retries {
        assert_eq!(retry.status(), 200);
        let body: serde_json::Value = retry.json().await.unwrap();
        assert_eq!(body["status"], "duplicate");
    }

    app.wait_for_replies(1, Duration::from_secs(15)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'microclaw.turns'")
            .await,
        1
    );
    assert_eq!(app.model.calls().len(), 1);
    app.stop().await;
}

async fn concurrent_duplicates_without_redis_create_one_event(backend: Backend) {
    let config = TestConfig {
        backend,
        redis_url: String::new(),
        ..TestConfig::default()
    };
    let app = TestApp::spawn(config).await;
    let message = TestMessage::direct("dup-2", "dave", "dave:race");
    let answers = futures::future::join_all((0..8).map(|_| app.post_message(&message))).await;
    let mut accepted = 0;
    for answer in answers {
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await.unwrap();
        if body["status"] == "accepted" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
    assert_eq!(
        app.count("SELECT last_inbound_seq FROM sessions").await,
        1,
        "a duplicate leaves no sequence gap"
    );
    app.stop().await;
}

#[tokio::test]
async fn accepted_events_are_remembered_in_the_redis_dedup_cache() {
    let app = TestApp::spawn(TestConfig::default()).await;
    app.post_message(&TestMessage::direct("r-1", "erin", "erin:hi"))
        .await;
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:dedup:{CONNECTOR}:r-1", app.key_prefix);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(exists, "{key} should be set after the commit");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0, "the dedup key expires");
    app.stop().await;
}

#[tokio::test]
async fn redis_down_loses_nothing() {
    let config = TestConfig {
        redis_url: "redis://127.0.0.1:1".into(),
        ..TestConfig::default()
    };
    let app = TestApp::spawn_with_worker(config).await;
    let message = TestMessage::direct("nr-1", "frank", "frank:no redis");
    assert_eq!(app.post_message(&message).await.status(), 200);
    let again: serde_json::Value = app.post_message(&message).await.json().await.unwrap();
    assert_eq!(
        again["status"], "duplicate",
        "Postgres dedups when Redis is down"
    );
    app.wait_for_replies(1, Duration::from_secs(15)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 1);
    app.stop().await;
}

async fn group_conversation_has_one_session_for_all_members(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    for (id, sender) in [("g1", "gina"), ("g2", "hank")] {
        let message = TestMessage {
            id: id.into(),
            sender: sender.into(),
            conversation: "team-room".into(),
            text: format!("room:{sender}"),
            group: true,
            attachments: Vec::new(),
        };
        assert_eq!(app.post_message(&message).await.status(), 200);
    }
    app.post_message(&TestMessage::direct("d1", "gina", "gina:private"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(15)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE session_key = 'group:web:team-room' AND last_inbound_seq = 2")
            .await,
        1
    );
    app.stop().await;
}

crate::on_both_backends!(
    signed_webhook_becomes_one_signed_reply_at_the_platform,
    history_is_given_to_the_model_on_the_next_turn,
    duplicate_webhook_gives_one_reply,
    concurrent_duplicates_without_redis_create_one_event,
    group_conversation_has_one_session_for_all_members,
);
