//! Queue wake-ups on Postgres: jobs start by NOTIFY, one notification per insert
//! statement and queue (`worker::wakeups`, migration `queue_wakeups`).

use std::time::Duration;

use crate::helpers::{TestApp, TestConfig, TestMessage};

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
