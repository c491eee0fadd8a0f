//! Group commit at the receiver: concurrent webhooks share a transaction, and none
//! is acknowledged before that transaction committed.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, TestConfig, TestMessage};

const WIDE_WINDOW: &str = "[receiver.group_commit]
max_batch = 16
max_wait = \"300ms\"";

/// Sends the messages concurrently; each answer as it arrives: (status, body).
fn post_all<'a>(
    app: &'a TestApp,
    messages: &'a [TestMessage],
) -> futures::stream::FuturesUnordered<impl Future<Output = (u16, Value)> + 'a> {
    messages
        .iter()
        .map(|message| async move {
            let response = app.post_message(message).await;
            let status = response.status().as_u16();
            (status, response.json().await.unwrap())
        })
        .collect()
}

#[tokio::test]
async fn nothing_is_acknowledged_before_its_batch_commits() {
    let app = TestApp::spawn(TestConfig {
        receiver_extra: WIDE_WINDOW,
        ..TestConfig::default()
    })
    .await;
    let messages: Vec<TestMessage> = (0..20)
        .map(|i| TestMessage::direct(&format!("gc-{i}"), &format!("person-{}", i % 4), "hi"))
        .collect();

    // Another transaction holds the event table: no batch can commit.
    let mut blocker = app.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE inbound_events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut answers = post_all(&app, &messages);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), answers.next())
            .await
            .is_err(),
        "a webhook was answered while its batch could not commit"
    );
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 0);

    blocker.commit().await.unwrap();
    let mut acknowledged = 0;
    while let Some((status, body)) = answers.next().await {
        assert_eq!(status, 200, "{body}");
        // Acknowledged means committed: another connection sees the event and
        // its turn job the moment the answer arrives.
        let event_id = body["event_id"].as_str().unwrap();
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM inbound_events e
                   JOIN apalis.jobs j ON j.idempotency_key = 'turn:' || e.id::text
                  WHERE e.id = '{event_id}'"
            ))
            .await,
            1
        );
        acknowledged += 1;
    }
    assert_eq!(acknowledged, 20);
    drop(answers);
    // The twenty events were written by a few transactions, not twenty.
    let transactions = app
        .count("SELECT count(DISTINCT xmin::text) FROM inbound_events")
        .await;
    assert!(
        transactions <= 4,
        "{transactions} transactions for 20 webhooks"
    );
    app.stop().await;
}

/// `max_wait` is spent only under traffic: a webhook arriving on a quiet
/// receiver (nothing in flight, the previous webhook long gone) is written at
/// once, not after the window.
#[tokio::test]
async fn a_lone_webhook_does_not_wait_for_batch_mates() {
    let app = TestApp::spawn(TestConfig {
        receiver_extra: "[receiver.group_commit]
max_batch = 16
max_wait = \"1s\"",
        ..TestConfig::default()
    })
    .await;
    for i in 0..3 {
        let sent = std::time::Instant::now();
        let response = app
            .post_message(&TestMessage::direct(&format!("lone-{i}"), "lena", "hi"))
            .await;
        assert_eq!(response.status(), 200);
        let waited = sent.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "a lone webhook waited {waited:?} for batch-mates"
        );
        // Quiet again: more than max_wait since this one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 3);
    app.stop().await;
}

async fn a_failed_batch_answers_every_member_with_503(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        receiver_extra: WIDE_WINDOW,
        ..TestConfig::default()
    })
    .await;
    // One member of the batch cannot be written.
    match backend {
        Backend::Postgres => {
            app.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.text = 'poison' THEN RAISE EXCEPTION 'poisoned batch'; END IF;
                   RETURN NEW;
                 END $$",
            )
            .await;
            app.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON inbound_events
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            )
            .await;
        }
        Backend::Sqlite => {
            app.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON inbound_events
                 WHEN NEW.text = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned batch'); END",
            )
            .await;
        }
    }
    let mut messages: Vec<TestMessage> = (0..4)
        .map(|i| TestMessage::direct(&format!("fb-{i}"), &format!("person-{}", i % 2), "hi"))
        .collect();
    messages.push(TestMessage::direct("fb-poison", "person-0", "poison"));

    let answers: Vec<(u16, Value)> = post_all(&app, &messages).collect().await;
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["code"], "unavailable");
    }
    for table in ["inbound_events", "sessions", "apalis.jobs", "accounts"] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "the failed batch left rows in {table}"
        );
    }

    // The platforms retry (here the poison is cured, and two copies of the first
    // message travel in the same batch): each message is recorded once.
    app.execute(match backend {
        Backend::Postgres => "DROP TRIGGER refuse_poison ON inbound_events",
        Backend::Sqlite => "DROP TRIGGER refuse_poison",
    })
    .await;
    messages.last_mut().unwrap().text = "cured".into();
    messages.push(messages[0].clone());
    messages.push(messages[0].clone());
    let answers: Vec<(u16, Value)> = post_all(&app, &messages).collect().await;
    let status_of = |wanted: &str| {
        answers
            .iter()
            .filter(|(status, body)| *status == 200 && body["status"] == wanted)
            .count()
    };
    assert_eq!(status_of("accepted"), 5, "{answers:?}");
    assert_eq!(status_of("duplicate"), 2, "{answers:?}");
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 5);
    // Each session's events are numbered 1..n in one batch.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions s
              WHERE s.last_inbound_seq = (SELECT count(*) FROM inbound_events e
                                           WHERE e.session_id = s.id)
                AND s.last_inbound_seq = (SELECT max(seq) FROM inbound_events e
                                           WHERE e.session_id = s.id)"
        )
        .await,
        2
    );
    app.drain(Duration::from_secs(20)).await;
    assert_eq!(
        app.count("SELECT count(*) FROM inbound_events WHERE status = 'answered'")
            .await,
        5
    );
    app.stop().await;
}

crate::on_both_backends!(a_failed_batch_answers_every_member_with_503);

/// Another receiver records one of a batch's messages between the batch's
/// duplicate check and its insert (here: a transaction that inserts the event
/// and holds the table until the batch is waiting on it). The batch notices,
/// rolls back, and records each member on its own: the raced message is a
/// duplicate, every other one is accepted once, with its turn job.
#[tokio::test]
async fn a_batch_that_loses_a_race_records_each_member_on_its_own() {
    let app = TestApp::spawn(TestConfig {
        receiver_extra: WIDE_WINDOW,
        ..TestConfig::default()
    })
    .await;
    let seed = TestMessage::direct("gc-seed", "rita", "seed");
    assert_eq!(app.post_message(&seed).await.status(), 200);

    let mut rival = app.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE inbound_events IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *rival)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO inbound_events
            (id, connector_id, channel, platform_message_id, session_id, seq, sender_id,
             sender_name, conversation_id, thread_id, is_group, text, attachments, sent_at,
             trace_id, identity_id)
         SELECT gen_random_uuid(), connector_id, channel, 'gc-race', session_id, seq + 1000,
                sender_id, sender_name, conversation_id, thread_id, is_group, 'raced',
                attachments, sent_at, trace_id, identity_id
           FROM inbound_events WHERE platform_message_id = 'gc-seed'",
    )
    .execute(&mut *rival)
    .await
    .unwrap();

    let mut messages: Vec<TestMessage> = (0..4)
        .map(|i| TestMessage::direct(&format!("gc-r{i}"), &format!("person-{i}"), "hi"))
        .collect();
    messages.push(TestMessage::direct("gc-race", "rita", "raced"));
    let mut answers = post_all(&app, &messages);
    // The batch checks for duplicates and then waits to insert.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), answers.next())
            .await
            .is_err(),
        "nothing is answered while the batch waits"
    );
    rival.commit().await.unwrap();

    let answers: Vec<(u16, Value)> = answers.collect().await;
    let mut statuses: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["status"].as_str().unwrap().to_owned()
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["accepted", "accepted", "accepted", "accepted", "duplicate"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM inbound_events WHERE platform_message_id = 'gc-race'")
            .await,
        1
    );
    for i in 0..4 {
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM inbound_events e
                   JOIN apalis.jobs j ON j.idempotency_key = 'turn:' || e.id::text
                  WHERE e.platform_message_id = 'gc-r{i}'"
            ))
            .await,
            1,
            "gc-r{i} is recorded once, with its job"
        );
    }
    let fallbacks = app
        .count("SELECT count(DISTINCT xmin::text) FROM inbound_events WHERE platform_message_id LIKE 'gc-r_'")
        .await;
    assert_eq!(
        fallbacks, 4,
        "each member was recorded in a transaction of its own"
    );
    app.stop().await;
}

/// Two batches written at the same time by two writers, with the same two
/// first-time senders in opposite orders: each batch creates the accounts (and
/// upserts the sessions) in sender order, not arrival order, so the two cannot
/// deadlock and every message is accepted. (A first webhook, written alone as
/// nothing else is in flight, keeps a third writer busy, so the two batches
/// after it wait for their members.)
#[tokio::test]
async fn concurrent_batches_with_the_same_new_senders_do_not_deadlock() {
    let app = TestApp::spawn(TestConfig {
        receiver_extra: "[receiver.group_commit]
max_batch = 2
max_wait = \"500ms\"
max_in_flight = 3",
        ..TestConfig::default()
    })
    .await;
    // Hold the accounts table so both batches are formed and waiting before
    // either creates an account.
    let mut holder = app.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE accounts IN EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let arrivals = [
        ("dl-w", "uma"),
        ("dl-a1", "sam"),
        ("dl-a2", "tess"),
        ("dl-b1", "tess"),
        ("dl-b2", "sam"),
    ];
    let mut answers = futures::stream::FuturesOrdered::new();
    for (id, sender) in arrivals {
        let message = TestMessage::direct(id, sender, "hi");
        let app = &app;
        answers.push_back(async move {
            let response = app.post_message(&message).await;
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        });
        // Arrive in this order: w alone, a1 and a2 one batch, b1 and b2 the next.
        let _ = tokio::time::timeout(Duration::from_millis(100), answers.next()).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), answers.next()).await;
    holder.commit().await.unwrap();
    let answers: Vec<(u16, Value)> = answers.collect().await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
    }
    assert_eq!(answers.len(), 5);
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 3);
    assert_eq!(app.count("SELECT count(*) FROM inbound_events").await, 5);
    let batches: Vec<String> = app
        .strings(
            "SELECT string_agg(platform_message_id, ',' ORDER BY platform_message_id)
               FROM inbound_events GROUP BY xmin::text ORDER BY 1",
        )
        .await;
    assert_eq!(batches, ["dl-a1,dl-a2", "dl-b1,dl-b2", "dl-w"]);
    app.stop().await;
}
