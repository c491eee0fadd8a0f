//! The queue's fetch on Postgres: `apalis.get_jobs`, redefined in PL/pgSQL by
//! migration `queue_fetch_plan` so its plan is kept per connection.

use crate::helpers::{TestApp, TestConfig};

/// Due jobs of the queue only, highest priority first and then oldest first, at
/// most the batch asked for, none that another fetch holds locked; each taken
/// as `Queued` by the fetching worker.
#[tokio::test]
async fn a_fetch_takes_due_unlocked_jobs_of_its_queue_in_priority_order() {
    let app = TestApp::spawn(TestConfig::default()).await;
    assert_eq!(
        app.strings(
            "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.proname = 'get_jobs'"
        )
        .await,
        ["plpgsql"],
        "one get_jobs, whose plan is kept"
    );
    app.register_consumers_w1_w2().await;
    app.execute(
        "INSERT INTO apalis.jobs (id, job_type, job, run_at, priority, status, attempts)
         VALUES ('old', 'queue.a', '\\x00', now() - interval '3 s', 0, 'Pending', 0),
                ('new', 'queue.a', '\\x00', now() - interval '1 s', 0, 'Pending', 0),
                ('urgent', 'queue.a', '\\x00', now() - interval '1 s', 5, 'Pending', 0),
                ('failed', 'queue.a', '\\x00', now() - interval '2 s', 0, 'Failed', 1),
                ('spent', 'queue.a', '\\x00', now() - interval '2 s', 0, 'Failed', 25),
                ('later', 'queue.a', '\\x00', now() + interval '1 hour', 9, 'Pending', 0),
                ('done', 'queue.a', '\\x00', now() - interval '9 s', 9, 'Done', 1),
                ('other', 'queue.b', '\\x00', now() - interval '9 s', 9, 'Pending', 0)",
    )
    .await;

    // Another fetch holds the oldest job: this one skips it.
    let mut other = app.pg().begin().await.unwrap();
    sqlx::query("SELECT id FROM apalis.jobs WHERE id = 'old' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let fetched: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w1', 'queue.a', 2)")
            .fetch_all(app.pg())
            .await
            .unwrap();
    assert_eq!(fetched.len(), 2);
    assert_eq!(fetched[0], "urgent", "highest priority first");
    assert_eq!(
        fetched[1], "failed",
        "then the oldest due, skipping the locked one"
    );
    other.rollback().await.unwrap();

    let rest: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w2', 'queue.a', 5) ORDER BY id")
            .fetch_all(app.pg())
            .await
            .unwrap();
    assert_eq!(rest, ["new", "old"]);
    assert_eq!(
        app.strings(
            "SELECT id || ':' || status || ':' || coalesce(lock_by, '-') FROM apalis.jobs
              ORDER BY id"
        )
        .await,
        [
            "done:Done:-",
            "failed:Queued:w1",
            "later:Pending:-",
            "new:Queued:w2",
            "old:Queued:w2",
            "other:Pending:-",
            "spent:Failed:-",
            "urgent:Queued:w1",
        ]
    );
    app.stop().await;
}
