//! What becomes of a finished queue job. On Postgres, apalis's own ack
//! (`lock_tasks`, `handle_results`) run against our migrations, which clear a
//! finished job's consumer (`finished_jobs_release_consumer`) so an ack reads
//! only the jobs its consumer has in flight. On both backends, the maintenance
//! pass deletes jobs that finished for good `worker.finished_jobs_kept_for`
//! after they finished.

use std::time::Duration;

use apalis_core::{
    backend::TaskResult,
    task::{status::Status, task_id::TaskId},
};
use apalis_postgres::queries::{handle_results, lock_tasks};

use crate::helpers::{Backend, TestApp, TestConfig, TestMessage};

/// apalis's lock of fetched jobs for `worker`, on a connection of its own (the
/// test's pool is small).
async fn lock(pg: &sqlx::PgPool, ids: &[String], worker: &str) -> u64 {
    let mut conn = pg.acquire().await.unwrap();
    lock_tasks(&mut *conn, ids, worker).await.unwrap()
}

/// apalis's ack of `outcomes` by `worker`: how many jobs it updated.
async fn ack(pg: &sqlx::PgPool, outcomes: &[TaskResult<serde_json::Value>], worker: &str) -> u64 {
    let mut conn = pg.acquire().await.unwrap();
    handle_results(&mut *conn, &outcomes.iter().collect::<Vec<_>>(), worker)
        .await
        .unwrap()
}

fn outcome(id: &str, attempt: usize, status: Status) -> TaskResult<serde_json::Value> {
    TaskResult {
        task_id: TaskId::from_string(id),
        attempt,
        status,
        result: Ok(serde_json::Value::Null),
    }
}

/// Acked jobs, done, failed or killed, no longer name the consumer that ran
/// them, while a job it still runs does; a failed job is fetched again by
/// another consumer, whose ack finds it; an ack by a consumer that does not
/// hold the job changes nothing.
#[tokio::test]
async fn an_acked_job_no_longer_names_its_consumer() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let pg = app.pg();
    app.register_consumers_w1_w2().await;
    app.execute(
        "INSERT INTO apalis.jobs (id, job_type, job, run_at, status, attempts, max_attempts)
         SELECT id, 'queue.a', '\\x00', now() - interval '1 s', 'Pending', 0, 3
           FROM unnest(ARRAY['done', 'failed', 'killed', 'running']) AS id",
    )
    .await;
    let fetched: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w1', 'queue.a', 5) ORDER BY id")
            .fetch_all(pg)
            .await
            .unwrap();
    assert_eq!(fetched.len(), 4);
    assert_eq!(lock(pg, &fetched, "w1").await, 4);

    let acks = [
        outcome("done", 1, Status::Done),
        outcome("failed", 1, Status::Failed),
        outcome("killed", 1, Status::Killed),
    ];
    assert_eq!(ack(pg, &acks, "w1").await, 3);
    let jobs = "SELECT id || ':' || status || ':' || coalesce(lock_by, '-') FROM apalis.jobs
                 ORDER BY id";
    assert_eq!(
        app.strings(jobs).await,
        [
            "done:Done:-",
            "failed:Failed:-",
            "killed:Killed:-",
            "running:Running:w1",
        ]
    );

    // The failed job is retried by another consumer, and only its ack counts.
    let retried: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w2', 'queue.a', 5)")
            .fetch_all(pg)
            .await
            .unwrap();
    assert_eq!(retried, ["failed"]);
    assert_eq!(lock(pg, &retried, "w2").await, 1);
    let retry_done = [outcome("failed", 2, Status::Done)];
    assert_eq!(
        ack(pg, &retry_done, "w1").await,
        0,
        "w1 does not hold the retried job"
    );
    assert_eq!(
        app.strings("SELECT status || ':' || lock_by FROM apalis.jobs WHERE id = 'failed'")
            .await,
        ["Running:w2"]
    );
    assert_eq!(ack(pg, &retry_done, "w2").await, 1);
    assert_eq!(
        app.strings(jobs).await,
        [
            "done:Done:-",
            "failed:Done:-",
            "killed:Killed:-",
            "running:Running:w1",
        ]
    );
    app.stop().await;
}

/// Done, killed and spent jobs finished longer ago than the setting (24h by
/// default) are deleted; a pending job, a failed one with attempts left and a
/// job finished within the period stay.
async fn jobs_finished_for_good_are_purged_after_the_period_they_are_kept_for(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        extra: "[memory]\nmaintenance_interval = \"200ms\"\n".into(),
        ..TestConfig::default()
    })
    .await;
    app.post_message(&TestMessage::direct("p1", "pia", "pia:hi"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(10)).await;
    app.drain(Duration::from_secs(10)).await;
    let ours = "SELECT count(*) FROM apalis.jobs WHERE job_type LIKE 'microclaw.%'";
    assert!(app.count(ours).await >= 2, "a turn job and a delivery job");

    let (now, two_days_ago) = match backend {
        Backend::Postgres => ("now()", "now() - interval '2 days'"),
        Backend::Sqlite => (
            "CAST(strftime('%s', 'now') AS INTEGER)",
            "CAST(strftime('%s', 'now') AS INTEGER) - 172800",
        ),
    };
    app.execute(&format!(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, done_at)
         SELECT kept.id, 'test.idle', (SELECT job FROM apalis.jobs LIMIT 1), kept.status,
                kept.attempts, 3, kept.done_at
           FROM (SELECT 'waiting' AS id, 'Pending' AS status, 0 AS attempts, NULL AS done_at
                 UNION ALL SELECT 'retryable', 'Failed', 1, {two_days_ago}
                 UNION ALL SELECT 'spent', 'Failed', 3, {two_days_ago}
                 UNION ALL SELECT 'killed', 'Killed', 1, {two_days_ago}
                 UNION ALL SELECT 'recent', 'Done', 1, {now}) AS kept"
    ))
    .await;
    app.execute(&format!(
        "UPDATE apalis.jobs SET done_at = {two_days_ago} WHERE job_type LIKE 'microclaw.%'"
    ))
    .await;
    app.wait_until(ours, 0, Duration::from_secs(10)).await;
    app.wait_until(
        "SELECT count(*) FROM apalis.jobs WHERE id IN ('spent', 'killed')",
        0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        app.strings("SELECT id FROM apalis.jobs ORDER BY id").await,
        ["recent", "retryable", "waiting"]
    );
    app.stop().await;
}

crate::on_both_backends!(jobs_finished_for_good_are_purged_after_the_period_they_are_kept_for);

/// A pass takes finished jobs in id order, a batch at a time, each batch
/// resuming after the last id the one before looked at; a short batch ends it.
async fn a_purge_pass_walks_the_jobs_once_in_batches(backend: Backend) {
    let app = TestApp::spawn(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let (two_days_ago, payload) = match backend {
        Backend::Postgres => ("now() - interval '2 days'", "'\\x00'::bytea"),
        Backend::Sqlite => ("CAST(strftime('%s', 'now') AS INTEGER) - 172800", "X'00'"),
    };
    app.execute(&format!(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, done_at)
         SELECT j.id, 'test.idle', {payload}, j.status, 1, 3, {two_days_ago}
           FROM (SELECT 'a' AS id, 'Done' AS status UNION ALL SELECT 'b', 'Done'
                 UNION ALL SELECT 'c', 'Failed' UNION ALL SELECT 'd', 'Killed'
                 UNION ALL SELECT 'e', 'Done') AS j"
    ))
    .await;
    let store = &app.deployment.store;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(1);
    let first = store.purge_finished_jobs(cutoff, "", 2).await.unwrap();
    assert_eq!(
        (first.deleted, first.resume_after.as_deref()),
        (2, Some("b"))
    );
    // The retryable 'c' is passed over and kept.
    let second = store.purge_finished_jobs(cutoff, "b", 2).await.unwrap();
    assert_eq!(
        (second.deleted, second.resume_after.as_deref()),
        (2, Some("e"))
    );
    let last = store.purge_finished_jobs(cutoff, "e", 2).await.unwrap();
    assert_eq!((last.deleted, last.resume_after), (0, None));
    assert_eq!(
        app.strings("SELECT id FROM apalis.jobs ORDER BY id").await,
        ["c"]
    );
    app.stop().await;
}

crate::on_both_backends!(a_purge_pass_walks_the_jobs_once_in_batches);
