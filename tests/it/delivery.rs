use std::time::Duration;

use crate::{
    fakes::PlatformMode,
    helpers::{Backend, TestApp, TestConfig, TestMessage},
};

async fn a_delivery_that_fails_permanently_is_dead_with_its_history(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.platform.set_mode(PlatformMode::Fail(400, None));
    app.post_message(&TestMessage::direct("d1", "uma", "uma:hi"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(20),
    )
    .await;
    app.drain(Duration::from_secs(10)).await;

    assert_eq!(
        app.strings("SELECT error_class || ':' || attempts FROM deliveries")
            .await,
        ["permanent:1"],
        "a permanent error is not retried"
    );
    let last_error = app.strings("SELECT last_error FROM deliveries").await;
    assert!(last_error[0].contains("HTTP 400"), "{last_error:?}");
    assert_eq!(app.attempt_history().await, ["1:permanent:400"]);
    assert_eq!(app.platform.requests(), 1);
    app.stop().await;
}

/// Deliveries never follow redirects: a platform endpoint (or whoever took it
/// over) cannot bounce a signed reply to another address, private or not.
/// On Postgres the worker that commits a turn makes the reply's first delivery
/// attempt itself: the queued job (due later, as the fallback) is claimed and
/// done before it fell due. A retry after a failed first attempt is an
/// ordinary queue job.
#[tokio::test]
async fn the_committing_worker_makes_the_first_attempt_and_the_queue_the_retry() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    app.post_message(&TestMessage::direct("f1", "fay", "fay:one"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(10)).await;
    app.drain(Duration::from_secs(10)).await;
    let first_jobs = "SELECT count(*) FROM apalis.jobs
                       WHERE job_type = 'microclaw.deliveries' AND status = 'Done'
                         AND done_at < run_at AND lock_by LIKE '%-deliveries'";
    assert_eq!(
        app.count(first_jobs).await,
        1,
        "claimed and done before it was due"
    );

    app.platform.script(&[PlatformMode::Fail(503, None)]);
    app.post_message(&TestMessage::direct("f2", "fay", "fay:two"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(15)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.count(first_jobs).await, 2);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries' AND status = 'Done' AND done_at >= run_at"
        )
        .await,
        1,
        "the retry ran from the queue"
    );
    assert_eq!(
        app.attempt_history().await,
        ["1:delivered:0", "1:retryable:503", "2:delivered:0"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redirecting_callback_is_not_followed() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    app.platform.set_mode(PlatformMode::Redirect(307));
    app.post_message(&TestMessage::direct("r1", "vera", "vera:hi"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(20),
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.platform.redirected(),
        0,
        "the redirect was not followed"
    );
    // A redirect may be a platform's maintenance: retried, at the same address.
    let attempts = app.count("SELECT count(*) FROM delivery_attempts").await;
    assert_eq!(app.platform.requests() as i64, attempts);
    let last_error = app.strings("SELECT last_error FROM deliveries").await;
    assert!(last_error[0].contains("307"), "{last_error:?}");
    app.stop().await;
}

async fn transient_failures_are_retried_until_the_attempts_run_out(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.platform.set_mode(PlatformMode::Fail(503, None));
    app.post_message(&TestMessage::direct("d2", "vera", "vera:hi"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(30),
    )
    .await;

    assert_eq!(
        app.strings("SELECT error_class || ':' || attempts FROM deliveries")
            .await,
        ["exhausted:3"]
    );
    assert_eq!(
        app.attempt_history().await,
        ["1:retryable:503", "2:retryable:503", "3:retryable:503"]
    );
    assert_eq!(app.platform.requests(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limited_delivery_waits_for_retry_after_then_succeeds() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    app.platform.script(&[PlatformMode::Fail(429, Some(2))]);
    app.post_message(&TestMessage::direct("d3", "walt", "walt:hi"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(30)).await;
    app.drain(Duration::from_secs(10)).await;

    let waited: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (b.started_at - a.finished_at))::float8
           FROM delivery_attempts a JOIN delivery_attempts b ON b.delivery_id = a.delivery_id
          WHERE a.attempt = 1 AND b.attempt = 2",
    )
    .fetch_one(app.pg())
    .await
    .unwrap();
    assert!(
        waited >= 1.9,
        "second attempt after {waited}s; Retry-After said 2s"
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM deliveries")
            .fetch_one(app.pg())
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("delivered", 2));
    assert_eq!(replies.len(), 1);
    app.stop().await;
}

crate::on_both_backends!(
    a_delivery_that_fails_permanently_is_dead_with_its_history,
    transient_failures_are_retried_until_the_attempts_run_out,
);
