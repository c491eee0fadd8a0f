use std::time::Duration;

use crate::helpers::{Backend, TestApp, TestConfig, TestMessage};

/// Arrival order of a session's events, as the receiver sequenced them.
async fn arrival_order(app: &TestApp) -> Vec<String> {
    app.strings("SELECT text FROM inbound_events ORDER BY seq")
        .await
}

async fn burst_into_one_session_is_answered_in_order_without_overlap(backend: Backend) {
    let config = TestConfig {
        backend,
        turn_mode: "per_message",
        ..TestConfig::default()
    };
    let mut app = TestApp::spawn(config).await;
    app.model.set_delay(Duration::from_millis(150));
    // Three workers compete for the session's jobs.
    for _ in 0..3 {
        app.start_worker();
    }
    let messages: Vec<TestMessage> = (1..=5)
        .map(|i| TestMessage::direct(&format!("b{i}"), "kate", &format!("kate:{i}")))
        .collect();
    let answers = futures::future::join_all(messages.iter().map(|m| app.post_message(m))).await;
    assert!(answers.iter().all(|a| a.status() == 200));

    let replies = app.wait_for_replies(5, Duration::from_secs(30)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 5, "one reply per message");

    let order = arrival_order(&app).await;
    let mut replies = replies;
    replies.sort_by_key(|r| r.at);
    let answered: Vec<String> = replies
        .iter()
        .map(|r| r.event.data.in_reply_to.join(","))
        .collect();
    let expected: Vec<String> = order
        .iter()
        .map(|text| format!("b{}", text.trim_start_matches("kate:")))
        .collect();
    assert_eq!(answered, expected, "replies follow arrival order");
    let calls = app.model.calls();
    let asked: Vec<String> = calls.iter().map(|c| c.user_messages.join(",")).collect();
    assert_eq!(
        asked, order,
        "the model saw the messages in arrival order, one per turn"
    );
    assert!(
        !app.model.session_overlap(),
        "two turns of one session overlapped"
    );
    app.stop().await;
}

async fn collect_mode_folds_messages_that_arrive_during_a_turn(backend: Backend) {
    let mut app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.model.set_delay(Duration::from_millis(800));
    app.start_worker();
    app.start_worker();

    let started = app.model.call_started.notified();
    app.post_message(&TestMessage::direct("c1", "liam", "liam:1"))
        .await;
    started.await;
    // While the first turn waits on the model, four more arrive.
    for i in 2..=5 {
        app.post_message(&TestMessage::direct(
            &format!("c{i}"),
            "liam",
            &format!("liam:{i}"),
        ))
        .await;
    }
    app.wait_for_replies(2, Duration::from_secs(20)).await;
    app.drain(Duration::from_secs(10)).await;

    let calls = app.model.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].user_messages, ["liam:1"]);
    assert_eq!(
        calls[1].user_messages,
        ["liam:2", "liam:3", "liam:4", "liam:5"]
    );
    let replies = app.platform.replies();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1].event.data.in_reply_to, ["c2", "c3", "c4", "c5"]);
    assert!(!app.model.session_overlap());
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 2);
    assert_eq!(app.count("SELECT processed_seq FROM sessions").await, 5);
    app.stop().await;
}

async fn different_sessions_run_in_parallel(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.model.set_delay(Duration::from_millis(700));
    let messages: Vec<TestMessage> = ["mia", "noah", "olga", "paul"]
        .iter()
        .map(|name| TestMessage::direct(&format!("p-{name}"), name, &format!("{name}:hi")))
        .collect();
    futures::future::join_all(messages.iter().map(|m| app.post_message(m))).await;
    app.wait_for_replies(4, Duration::from_secs(20)).await;
    assert!(
        app.model.max_in_flight() >= 2,
        "sessions should not wait for each other (max in flight {})",
        app.model.max_in_flight()
    );
    let sessions: std::collections::BTreeSet<String> = app
        .model
        .calls()
        .into_iter()
        .map(|c| c.session_tag)
        .collect();
    assert_eq!(sessions.len(), 4);
    assert!(!app.model.session_overlap());
    app.stop().await;
}

/// The first reply of a conversation fails once and is retried a second later;
/// the next turn's reply, ready meanwhile, waits for it and arrives after it.
async fn replies_arrive_in_turn_order_when_an_earlier_one_is_retried(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        turn_mode: "per_message",
        ..TestConfig::default()
    })
    .await;
    app.platform
        .script(&[crate::fakes::PlatformMode::Fail(503, None)]);
    app.post_message(&TestMessage::direct("o1", "kate", "kate:one"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM delivery_attempts WHERE outcome = 'retryable'",
        1,
        Duration::from_secs(20),
    )
    .await;
    app.post_message(&TestMessage::direct("o2", "kate", "kate:two"))
        .await;
    let mut replies = app.wait_for_replies(2, Duration::from_secs(20)).await;
    replies.sort_by_key(|r| r.at);
    let texts: Vec<&str> = replies.iter().map(|r| r.event.data.text.as_str()).collect();
    assert_eq!(texts, ["answer to [kate:one]", "answer to [kate:two]"]);
    app.stop().await;
}

crate::on_both_backends!(
    replies_arrive_in_turn_order_when_an_earlier_one_is_retried,
    burst_into_one_session_is_answered_in_order_without_overlap,
    collect_mode_folds_messages_that_arrive_during_a_turn,
    different_sessions_run_in_parallel,
);
