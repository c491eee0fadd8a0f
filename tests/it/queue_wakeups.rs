//! Queue wake-ups on Postgres: jobs start by NOTIFY, one notification per insert
//! statement and queue (`worker::wakeups`, migration `queue_wakeups`).

use std::time::Duration;

use crate::{
    db_gate::DbGate,
    helpers::{TestApp, TestConfig, TestMessage},
};

/// The worker's listening connection (the only `LISTEN` on the test database).
const LISTENER: &str = "SELECT pid::text FROM pg_stat_activity
                         WHERE datname = current_database() AND query LIKE 'LISTEN%'";

#[tokio::test]
async fn notifications_alone_move_a_message_through_both_queues() {
    // Polls an hour apart, heartbeats (each followed by a fetch) 30 s apart:
    // a reply within seconds came through NOTIFY, turn job and delivery job.
    let app = TestApp::spawn_with_worker(TestConfig {
        poll_interval: "1h",
        recovery_window: "120s",
        ..TestConfig::default()
    })
    .await;
    app.post_message(&TestMessage::direct("w1", "wendy", "wendy:one"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(5)).await;

    // Cut the listening connection: the worker listens on a new one, and
    // a message after that is still picked up at once.
    let cut = app.strings(LISTENER).await;
    assert_eq!(cut.len(), 1, "one listener per worker process: {cut:?}");
    app.execute(&format!("SELECT pg_terminate_backend({})", cut[0]))
        .await;
    let listening_again = format!(
        "SELECT count(*) FROM ({LISTENER}) l WHERE pid <> '{}'",
        cut[0]
    );
    app.wait_until(&listening_again, 1, Duration::from_secs(10))
        .await;
    app.post_message(&TestMessage::direct("w2", "wendy", "wendy:two"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(5)).await;
    app.stop().await;
}

#[tokio::test]
async fn one_statement_queuing_many_jobs_notifies_each_queue_once() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let mut listener = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    app.execute(
        "INSERT INTO apalis.jobs (id, job_type, job, idempotency_key)
         SELECT 'a' || n, 'queue.a', '\\x00'::bytea, 'a' || n FROM generate_series(1, 5) AS n
         UNION ALL SELECT 'b1', 'queue.b', '\\x00'::bytea, 'b1'",
    )
    .await;
    // Due later: found by the workers' poll, nobody is woken now.
    app.execute(
        "INSERT INTO apalis.jobs (id, job_type, job, idempotency_key, run_at)
         VALUES ('c1', 'queue.c', '\\x00'::bytea, 'c1', now() + interval '1 hour')",
    )
    .await;
    let mut woken = Vec::new();
    while let Ok(notification) =
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
    {
        let payload: serde_json::Value =
            serde_json::from_str(notification.unwrap().payload()).unwrap();
        woken.push(payload["job_type"].as_str().unwrap().to_owned());
    }
    woken.sort();
    assert_eq!(woken, ["queue.a", "queue.b"]);
    app.stop().await;
}

/// A job queued while the worker's listener had lost its connection was
/// notified to no one; the listener wakes every consumer when it listens
/// again, so the job starts then, not at the next poll (an hour here). The
/// worker reaches Postgres through a gate that cuts its connections and holds
/// new ones while the message is recorded (the receiver is not behind it).
#[tokio::test]
async fn a_job_queued_while_nobody_listened_starts_when_the_listener_is_back() {
    let gate = DbGate::start().await;
    let mut app = TestApp::spawn(TestConfig {
        poll_interval: "1h",
        recovery_window: "120s",
        ..TestConfig::default()
    })
    .await;
    app.start_worker_on(&gate.database_url()).await;
    app.post_message(&TestMessage::direct("g1", "gil", "gil:one"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(10)).await;

    gate.shut();
    let listening = format!("SELECT count(*) FROM ({LISTENER}) l");
    app.wait_until(&listening, 0, Duration::from_secs(10)).await;
    let recorded = app
        .post_message(&TestMessage::direct("g2", "gil", "gil:two"))
        .await;
    assert_eq!(recorded.status(), 200);
    gate.open();
    app.wait_for_replies(2, Duration::from_secs(10)).await;
    app.stop().await;
}
