use std::time::Duration;

use microclaw::store::{
    Committed, CompactionCheck, MemoryWrite, PendingEvent, Release, TurnCommit, TurnRecord,
};

use crate::{
    fakes::ModelFault,
    helpers::{Backend, TestApp, TestConfig, TestMessage, postgres_base, turn_record},
};

#[tokio::test]
async fn reply_is_sent_once_when_the_worker_process_dies_mid_turn() {
    let mut app = TestApp::spawn(TestConfig::default()).await;
    app.model.set_delay(Duration::from_millis(1000));
    let mut worker = app.spawn_binary(&["worker"], None);

    let model_called = app.model.call_started.notified();
    assert_eq!(
        app.post_message(&TestMessage::direct("k1", "quinn", "quinn:hello"))
            .await
            .status(),
        200
    );
    tokio::time::timeout(Duration::from_secs(30), model_called)
        .await
        .expect("the worker process should call the model");
    // The turn is waiting on the model: kill the process before it can commit.
    worker.kill().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM deliveries").await, 0);

    app.model.set_delay(Duration::from_millis(50));
    app.start_worker();
    app.wait_for_replies(1, Duration::from_secs(40)).await;
    app.drain(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(app.platform.replies().len(), 1, "exactly one reply");
    assert_eq!(
        app.model.calls().len(),
        2,
        "the turn was rerun by another worker"
    );
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM messages WHERE role = 'assistant'")
            .await,
        1
    );
    app.stop().await;
}

async fn model_429_with_retry_after_is_retried_after_that_delay(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.model.push_fault(ModelFault::Status(429, Some(1)));
    app.post_message(&TestMessage::direct("rl1", "rita", "rita:hi"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert_eq!(replies[0].event.data.text, "answer to [rita:hi]");

    let calls = app.model.calls();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].started - calls[0].finished.unwrap();
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, Retry-After said 1s"
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.strings("SELECT status || ':' || model_attempts FROM turns")
            .await,
        ["completed:2"]
    );
    app.stop().await;
}

async fn a_model_that_keeps_failing_gets_the_user_the_apology(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.model.always_fail(500);
    app.post_message(&TestMessage::direct("f1", "sam", "sam:hi"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert_eq!(
        replies[0].event.data.text,
        "Sorry, the model is unavailable."
    );
    app.drain(Duration::from_secs(10)).await;

    assert_eq!(app.model.calls().len(), 3, "model.max_attempts calls");
    assert_eq!(
        app.strings("SELECT status || ':' || model_attempts FROM turns")
            .await,
        ["failed:3"]
    );
    let error = app.strings("SELECT error FROM turns").await;
    assert!(error[0].contains("HTTP 500"), "{error:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM inbound_events WHERE status = 'failed'")
            .await,
        1
    );
    app.stop().await;
}

async fn a_turn_whose_lease_was_taken_over_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let accepted: serde_json::Value = app
        .post_message(&TestMessage::direct("fx1", "tina", "tina:hi"))
        .await
        .json()
        .await
        .unwrap();
    let session_id: uuid::Uuid = accepted["session_id"].as_str().unwrap().parse().unwrap();
    let store = &app.deployment.store;

    let slow = store
        .try_acquire_lease(session_id, "slow", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .try_acquire_lease(session_id, "fast", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fast = store
        .try_acquire_lease(session_id, "fast", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(fast.epoch > slow.epoch);
    assert!(
        !store
            .extend_lease(slow, Duration::from_secs(5))
            .await
            .unwrap()
    );

    let events: Vec<PendingEvent> = store.pending_events(session_id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    let writes = [MemoryWrite::Fact {
        about_event: events[0].id,
        content: "prefers green tea".into(),
    }];
    let record = |lease| TurnRecord {
        memory_writes: &writes,
        ..turn_record(lease, &events, "late answer")
    };
    assert_eq!(
        store.commit_turn(record(slow)).await.unwrap(),
        TurnCommit::Fenced
    );
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM memories").await, 0);
    // Nothing arrived after the event and no compaction was asked about: the
    // commit released the lease itself.
    assert_eq!(
        store.commit_turn(record(fast)).await.unwrap(),
        TurnCommit::Committed(Committed {
            released: true,
            ..Committed::default()
        })
    );
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM memories").await, 1);
    assert_eq!(
        store.lease_state(session_id).await.unwrap().lease_owner,
        None
    );
    app.stop().await;
}

async fn a_turn_commit_keeps_the_lease_while_work_is_left(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let accepted: serde_json::Value = app
        .post_message(&TestMessage::direct("kl1", "kim", "kim:one"))
        .await
        .json()
        .await
        .unwrap();
    let session_id: uuid::Uuid = accepted["session_id"].as_str().unwrap().parse().unwrap();
    app.post_message(&TestMessage::direct("kl2", "kim", "kim:two"))
        .await;
    let store = &app.deployment.store;
    // The lease comes with the first turn's inputs.
    let (lease, inputs) = store
        .acquire_lease_for_turn(session_id, "w", Duration::from_secs(5), 10)
        .await
        .unwrap()
        .expect("the lease is free");
    let (session, events) = inputs.expect("the session exists");
    assert_eq!(events.len(), 2);
    assert_eq!(session.processed_seq, 0);
    assert!(
        store
            .acquire_lease_for_turn(session_id, "x", Duration::from_secs(5), 10)
            .await
            .unwrap()
            .is_none(),
        "the lease is held"
    );
    let record = |events, compact_after| TurnRecord {
        compaction: Some(CompactionCheck {
            transcript_id: session.transcript_id,
            summarized_through: session.summarized_through,
            compact_after,
        }),
        ..turn_record(lease, events, "answer")
    };
    let holder = || async {
        store
            .lease_state(session_id)
            .await
            .unwrap()
            .lease_owner
            .unwrap_or_default()
    };

    // The second message arrived after the first: the holder answers it next.
    let TurnCommit::Committed(first) = store.commit_turn(record(&events[..1], 10)).await.unwrap()
    else {
        panic!("the lease holder's commit was fenced");
    };
    assert!(!first.released);
    assert_eq!(first.unsummarized, Some(2), "the turn's own two messages");
    assert_eq!(holder().await, "w");

    // Nothing is left, but four messages follow the summary mark, past 3: the
    // lease stays for the compaction.
    let TurnCommit::Committed(second) = store.commit_turn(record(&events[1..], 3)).await.unwrap()
    else {
        panic!("the lease holder's commit was fenced");
    };
    assert!(!second.released);
    assert_eq!(second.unsummarized, Some(4));
    assert_eq!(holder().await, "w");
    assert_eq!(
        store
            .release_lease(lease, Duration::from_secs(5))
            .await
            .unwrap(),
        Release::Released
    );
    app.stop().await;
}

crate::on_both_backends!(
    model_429_with_retry_after_is_retried_after_that_delay,
    a_model_that_keeps_failing_gets_the_user_the_apology,
    a_turn_whose_lease_was_taken_over_writes_nothing,
    a_turn_commit_keeps_the_lease_while_work_is_left,
);

#[tokio::test]
async fn folded_messages_are_answered_when_the_worker_dies_in_the_folded_turn() {
    let mut app = TestApp::spawn(TestConfig::default()).await;
    app.model.set_delay(Duration::from_millis(1000));
    let mut worker = app.spawn_binary(&["worker"], None);

    let first_call = app.model.call_started.notified();
    app.post_message(&TestMessage::direct("w1", "wes", "wes:1"))
        .await;
    tokio::time::timeout(Duration::from_secs(30), first_call)
        .await
        .expect("the worker process calls the model");
    // Arrive during the first turn: the holder of the lease folds them into a second.
    let second_call = app.model.call_started.notified();
    app.post_message(&TestMessage::direct("w2", "wes", "wes:2"))
        .await;
    app.post_message(&TestMessage::direct("w3", "wes", "wes:3"))
        .await;
    tokio::time::timeout(Duration::from_secs(30), second_call)
        .await
        .expect("the folded turn starts");
    worker.kill().await.unwrap();

    app.model.set_delay(Duration::from_millis(50));
    app.start_worker();
    app.wait_until(
        "SELECT count(*) FROM inbound_events WHERE status = 'answered'",
        3,
        Duration::from_secs(40),
    )
    .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status <> 'delivered'",
        0,
        Duration::from_secs(20),
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    // The killed worker may have sent turn 1's reply without recording it; that
    // send is repeated with the same webhook-id (at-least-once delivery, deduped
    // by the receiving side). Distinct replies are what the person sees.
    let mut replies = app.platform.replies();
    replies.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
    replies.dedup_by(|a, b| a.webhook_id == b.webhook_id);
    let mut answered: Vec<Vec<String>> = replies
        .into_iter()
        .map(|r| r.event.data.in_reply_to)
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        [
            vec!["w1".to_owned()],
            vec!["w2".to_owned(), "w3".to_owned()]
        ]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM turns").await,
        2,
        "one turn per batch"
    );
    app.stop().await;
}

/// A message whose turn always fails (here: the store refuses to record its
/// completed turn) ends as a failed turn with the apology after the job's
/// attempts, in the admin's failed-turn list; the session's next message is
/// answered.
async fn a_poison_message_is_given_up_and_the_session_moves_on(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        turn_job_attempts: 3,
        turn_mode: "per_message",
        ..TestConfig::default()
    })
    .await;
    let poisoned = "NEW.status = 'completed' AND EXISTS (SELECT 1 FROM inbound_events e
        WHERE e.session_id = NEW.session_id AND e.seq BETWEEN NEW.first_seq AND NEW.last_seq
          AND e.text LIKE '%poison%')";
    match backend {
        Backend::Postgres => {
            app.execute(&format!(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF {poisoned} THEN RAISE EXCEPTION 'poisoned turn'; END IF; RETURN NEW; END $$"
            ))
            .await;
            app.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON turns FOR EACH ROW EXECUTE FUNCTION poison()",
            )
            .await;
        }
        Backend::Sqlite => {
            app.execute(&format!(
                "CREATE TRIGGER poison BEFORE INSERT ON turns WHEN {poisoned}
                 BEGIN SELECT RAISE(ABORT, 'poisoned turn'); END"
            ))
            .await;
        }
    }
    app.post_message(&TestMessage::direct("p1", "ada", "ada:poison pill"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(30)).await;
    assert_eq!(
        replies[0].event.data.text,
        "Sorry, the model is unavailable."
    );
    assert_eq!(
        app.strings("SELECT error FROM turns WHERE status = 'failed'")
            .await,
        ["given up after 3 attempts of the turn job failed"]
    );
    app.post_message(&TestMessage::direct("p2", "ada", "ada:next"))
        .await;
    let replies = app.wait_for_replies(2, Duration::from_secs(20)).await;
    assert_eq!(replies[1].event.data.text, "answer to [ada:next]");
    app.stop().await;
}

crate::on_both_backends!(a_poison_message_is_given_up_and_the_session_moves_on);

/// A message whose turn job is gone (as when a long database outage used up all
/// its attempts) is found by the workers' sweep and answered.
async fn a_session_that_lost_its_turn_job_is_swept_and_answered(backend: Backend) {
    let mut app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.post_message(&TestMessage::direct("s1", "ada", "ada:lost"))
        .await;
    app.execute("DELETE FROM apalis.jobs").await;
    app.execute("UPDATE inbound_events SET received_at = '2020-01-01T00:00:00.000Z'")
        .await;
    app.start_worker();
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert_eq!(replies[0].event.data.text, "answer to [ada:lost]");
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 1);
    app.stop().await;
}

crate::on_both_backends!(a_session_that_lost_its_turn_job_is_swept_and_answered);

/// The database goes away (what a Postgres restart or a failover does to the
/// deployment): every connection is cut and new ones are refused for a while.
/// The worker's queue consumers come back by themselves once it is back, and
/// later messages are answered without restarting anything.
#[tokio::test]
async fn the_worker_keeps_consuming_after_the_database_was_away() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    let first = TestMessage::direct("away-1", "rosa", "rosa:before");
    assert_eq!(app.post_message(&first).await.status(), 200);
    app.wait_for_replies(1, Duration::from_secs(15)).await;

    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    let database = &app.db.name;
    for statement in [
        format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    // Long enough for the consumers' fetches and heartbeats to fail.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .unwrap();

    let second = TestMessage::direct("away-2", "rosa", "rosa:after");
    let mut status = 0;
    for _ in 0..40 {
        status = app.post_message(&second).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200, "the receiver records again");
    let replies = app.wait_for_replies(2, Duration::from_secs(30)).await;
    assert_eq!(replies.len(), 2);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let restarts = |queue: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("microclaw_queue_consumer_restarts_total")
                    && l.contains(&format!("queue=\"{queue}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(restarts("microclaw.turns") >= 1.0, "{metrics}");
    assert!(restarts("microclaw.deliveries") >= 1.0, "{metrics}");
    app.drain(Duration::from_secs(10)).await;
    app.stop().await;
}
