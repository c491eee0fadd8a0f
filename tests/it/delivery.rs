use std::time::Duration;

use crate::{
    fakes::PlatformMode,
    helpers::{Backend, TestApp, TestConfig, TestMessage, turn_record},
    lost_commit::LostCommitRelay,
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

/// On Postgres the worker that commits a turn makes the reply's first delivery
/// attempt itself: the queued job (due later, as the fallback) is claimed
/// before it fell due (a queue consumer locks a job only once it is due, so
/// `lock_at < run_at` marks a claimed job). A retry after a failed first
/// attempt is an ordinary queue job.
#[tokio::test]
async fn the_committing_worker_makes_the_first_attempt_and_the_queue_the_retry() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    app.post_message(&TestMessage::direct("f1", "fay", "fay:one"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(10)).await;
    app.drain(Duration::from_secs(10)).await;
    let first_jobs = "SELECT count(*) FROM apalis.jobs
                       WHERE job_type = 'microclaw.deliveries' AND status = 'Done'
                         AND lock_at < run_at";
    assert_eq!(
        app.count(first_jobs).await,
        1,
        "claimed before it was due, and done"
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
              WHERE job_type = 'microclaw.deliveries' AND status = 'Done' AND lock_at >= run_at"
        )
        .await,
        1,
        "the retry ran from the queue"
    );
    assert_eq!(
        app.attempt_history().await,
        ["1:delivered:0", "1:retryable:503", "2:delivered:0"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE lock_by IS NOT NULL")
            .await,
        0,
        "finished jobs, acked by apalis or ended by the first attempt, name no consumer"
    );
    app.stop().await;
}

/// A committed reply whose session has an earlier reply still being sent is
/// claimed for its first attempt but not begun; the attempt waits for the
/// earlier one, and past its patience puts an attempt job back for later and
/// ends the claimed job, sending nothing. The replies arrive in order, the
/// later one with a single attempt.
#[tokio::test]
async fn a_first_attempt_held_back_by_an_earlier_reply_ends_its_claimed_job_unsent() {
    // The first reply stays pending (its attempt times out after 2 s, its retry
    // waits 3 s) well past the second one's patience, even on a loaded machine.
    let app = TestApp::spawn_with_worker(TestConfig {
        retry_schedule: r#"["3s"]"#,
        ..TestConfig::default()
    })
    .await;
    app.platform
        .script(&[PlatformMode::Stall(Duration::from_secs(3))]);
    app.post_message(&TestMessage::direct("h1", "hal", "hal:first"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.platform.requests() == 0 {
        assert!(std::time::Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.post_message(&TestMessage::direct("h2", "hal", "hal:second"))
        .await;
    let replies = app.wait_for_replies(2, Duration::from_secs(30)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        replies
            .iter()
            .map(|r| r.event.data.text.as_str())
            .collect::<Vec<_>>(),
        ["answer to [hal:first]", "answer to [hal:second]"]
    );
    // The first reply's stalled attempt failed and its retry went out; the
    // second reply went out at its one attempt.
    let history = app.attempt_history().await;
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(history[0].starts_with("1:retryable:"), "{history:?}");
    assert_eq!(history[1..], ["2:delivered:0", "1:delivered:0"]);
    let second = "(SELECT 'delivery:' || id || ':1' FROM deliveries ORDER BY id DESC LIMIT 1)";
    assert_eq!(
        app.strings(&format!(
            "SELECT status || ':' || (lock_at < run_at) FROM apalis.jobs
              WHERE idempotency_key = {second}"
        ))
        .await,
        ["Done:true"],
        "claimed by the committing worker and ended unsent"
    );
    assert!(
        app.count(&format!(
            "SELECT count(*) FROM apalis.jobs
              WHERE idempotency_key LIKE {second} || ':after:%' AND status = 'Done'"
        ))
        .await
            >= 1,
        "the attempt ran from a job put back for later"
    );
    app.stop().await;
}

/// A turn's commit that committed but got no answer (its connection closed at
/// `COMMIT`): the first delivery job it claimed for this worker would stay
/// claimed while the worker lives, so the worker puts it back on the queue
/// (`FirstAttempts::recover`); the turn job fails and its retry finds the
/// message answered. The reply goes out, once.
#[tokio::test]
async fn the_first_delivery_of_a_commit_whose_answer_was_lost_goes_back_on_the_queue() {
    let relay = LostCommitRelay::start("INSERT INTO turns").await;
    let app = TestApp::spawn_with_worker(TestConfig {
        database_url: Some(relay.database_url()),
        ..TestConfig::default()
    })
    .await;
    app.post_message(&TestMessage::direct("l1", "lou", "lou:hi"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert!(relay.lost_a_commit(), "the turn's commit got no answer");
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.platform
            .replies()
            .iter()
            .map(|r| r.event.data.text.as_str())
            .collect::<Vec<_>>(),
        ["answer to [lou:hi]"]
    );
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 1);
    assert_eq!(
        app.strings(
            "SELECT status || ':' || (lock_at >= run_at) FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries'"
        )
        .await,
        ["Done:true"],
        "the claimed job was put back and ran from the queue"
    );
    app.stop().await;
}

/// A first attempt still running when its worker is told to stop gets the
/// grace period, is then cancelled, and its claimed job goes back on the
/// queue before the worker exits (not after the recovery window): the next
/// worker sends the reply, once.
#[tokio::test]
async fn a_first_attempt_cut_short_by_shutdown_goes_back_on_the_queue() {
    let mut app = TestApp::spawn_with_worker(TestConfig {
        shutdown_grace: "300ms",
        recovery_window: "120s",
        ..TestConfig::default()
    })
    .await;
    app.platform
        .script(&[PlatformMode::Stall(Duration::from_secs(10))]);
    app.post_message(&TestMessage::direct("s1", "sol", "sol:hi"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.platform.requests() == 0 {
        assert!(std::time::Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries' AND status = 'Running' AND run_at > now()"
        )
        .await,
        1,
        "the stalled attempt is the committing worker's, on its claimed job"
    );

    app.stop_workers().await;
    assert_eq!(
        app.strings(
            "SELECT status || ':' || coalesce(lock_by, '-') FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries'"
        )
        .await,
        ["Pending:-"],
        "back on the queue when the worker exited"
    );
    assert!(app.platform.replies().is_empty());

    app.start_worker();
    app.wait_for_replies(1, Duration::from_secs(10)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 1);
    assert_eq!(app.platform.requests(), 2);
    app.stop().await;
}

/// A rerun of an attempt (its job recovered while the first run still sends)
/// waits for the first run's lock on the delivery, and then sees the outcome
/// the first run recorded: it sends nothing. Without a concurrent run, a rerun
/// of an attempt that has no outcome sends again.
#[tokio::test]
async fn a_rerun_of_an_attempt_sees_the_outcome_its_first_run_recorded_meanwhile() {
    let mut app = TestApp::spawn_with_worker(TestConfig {
        shutdown_grace: "300ms",
        ..TestConfig::default()
    })
    .await;
    app.platform
        .script(&[PlatformMode::Stall(Duration::from_secs(10))]);
    app.post_message(&TestMessage::direct("r1", "ria", "ria:hi"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM delivery_attempts",
        1,
        Duration::from_secs(10),
    )
    .await;
    // The attempt is cut short: its row has no outcome, the delivery is pending.
    app.stop_workers().await;
    assert_eq!(
        app.count("SELECT count(*) FROM delivery_attempts WHERE finished_at IS NULL")
            .await,
        1
    );
    let (delivery_id, trace_id): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, trace_id FROM deliveries")
            .fetch_one(app.pg())
            .await
            .unwrap();
    let job = microclaw_jobs::DeliveryJob::new(delivery_id, 1, trace_id);
    let store = app.deployment.store.clone();

    // The first run holds the delivery while it records its outcome.
    let mut first_run = app.pg().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(delivery_id)
        .execute(&mut *first_run)
        .await
        .unwrap();
    let rerun = tokio::spawn({
        let (store, job) = (store.clone(), job.clone());
        async move { store.begin_attempt(&job).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rerun.is_finished(), "the rerun waits for the first run");
    sqlx::query(
        "UPDATE delivery_attempts SET finished_at = now(), outcome = 'retryable'
          WHERE delivery_id = $1 AND attempt = 1",
    )
    .bind(delivery_id)
    .execute(&mut *first_run)
    .await
    .unwrap();
    first_run.commit().await.unwrap();
    assert!(
        rerun.await.unwrap().unwrap().is_none(),
        "the attempt has an outcome: nothing to send"
    );

    // Without an outcome, a rerun sends again.
    app.execute("UPDATE delivery_attempts SET finished_at = NULL, outcome = NULL")
        .await;
    let row = store.begin_attempt(&job).await.unwrap().expect("a rerun");
    assert!(row.last_part);
    assert_eq!(
        app.strings("SELECT coalesce(error, '-') FROM delivery_attempts")
            .await,
        ["previous run of this attempt was interrupted"]
    );
    app.stop().await;
}

/// A turn's commit claims its first parts' jobs for the committing worker and
/// begins their attempts, unless an earlier reply of the session is still
/// pending (then only claims) or the consumer is not registered (then neither:
/// the job is due later in the queue). The consumer putting its unfinished
/// jobs back leaves the jobs of listed tokens alone; a commit whose answer was
/// lost has its jobs put back by its token. Every reply then goes out once.
#[tokio::test]
async fn a_turn_commit_claims_its_first_delivery_jobs_for_the_committing_worker() {
    use microclaw::store::{
        FirstAttemptClaim, PendingEvent, PlannedDelivery, TurnCommit, TurnRecord,
        postgres::deliveries::{ClaimToken, release_claims},
    };

    let mut app = TestApp::spawn(TestConfig::default()).await;
    let consumer = "w1-deliveries";
    app.execute(&format!(
        "INSERT INTO apalis.workers (id, worker_type, storage_name)
         VALUES ('{consumer}', 'microclaw.deliveries', 'test')"
    ))
    .await;
    let store = app.deployment.store.clone();
    let mut tokens = Vec::new();
    for (message, claimed_by) in [("c1", consumer), ("c2", consumer), ("c3", "not-registered")] {
        let accepted: serde_json::Value = app
            .post_message(&TestMessage::direct(
                message,
                "cleo",
                &format!("cleo:{message}"),
            ))
            .await
            .json()
            .await
            .unwrap();
        let session_id: uuid::Uuid = accepted["session_id"].as_str().unwrap().parse().unwrap();
        let lease = store
            .try_acquire_lease(session_id, "w1", Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the lease is free");
        let session = store.session_info(session_id).await.unwrap().unwrap();
        let events: Vec<PendingEvent> = store
            .pending_events(session_id, session.processed_seq, 10)
            .await
            .unwrap();
        let event = &events[0];
        let connector = app.deployment.connectors.get(&event.connector_id).unwrap();
        let token = ClaimToken::now();
        tokens.push(token);
        let reply = format!("answer to {message}");
        let committed = store
            .commit_turn(TurnRecord {
                deliveries: vec![PlannedDelivery {
                    connector_id: event.connector_id.clone(),
                    channel: connector.channel.kind().as_str().to_owned(),
                    target: microclaw::channels::ReplyTarget {
                        conversation_id: event.conversation_id.clone(),
                        thread_id: None,
                        recipient_id: event.sender_id.clone(),
                        is_group: false,
                        in_reply_to: vec![event.platform_message_id.clone()],
                    },
                    parts: vec![reply.clone()],
                }],
                first_attempt: Some(FirstAttemptClaim {
                    consumer: claimed_by,
                    token,
                    order_since: Some(chrono::Utc::now() - chrono::Duration::minutes(10)),
                    due_after: Duration::from_secs(2),
                }),
                ..turn_record(lease, &events, &reply)
            })
            .await
            .unwrap();
        let TurnCommit::Committed(committed) = committed else {
            panic!("the lease holder's commit was fenced");
        };
        let claimed = &committed.claimed;
        match message {
            "c1" => {
                assert_eq!(claimed.len(), 1);
                let row = claimed[0].begun.as_ref().expect("nothing held it back");
                assert_eq!((row.attempts, row.part, row.last_part), (1, 1, true));
                assert_eq!(row.text, reply);
            }
            // The first reply is still pending: claimed, its attempt not begun.
            "c2" => {
                assert_eq!(claimed.len(), 1);
                assert_eq!(claimed[0].begun, None);
            }
            _ => assert!(claimed.is_empty(), "the consumer is not registered"),
        }
    }
    assert_eq!(
        app.strings(
            "SELECT d.text || ':' || d.attempts || ':' || j.status || ':' || coalesce(j.lock_by, '-')
                    || ':' || (SELECT count(*) FROM delivery_attempts a WHERE a.delivery_id = d.id)
               FROM deliveries d
               JOIN apalis.jobs j ON j.idempotency_key = 'delivery:' || d.id || ':1'
              ORDER BY d.id"
        )
        .await,
        [
            format!("answer to c1:1:Running:{consumer}:1"),
            format!("answer to c2:0:Running:{consumer}:0"),
            "answer to c3:0:Pending:-:0".to_owned(),
        ]
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries' AND run_at > now()"
        )
        .await,
        3,
        "due later: no consumer is woken for them"
    );

    // The consumer puts its jobs back but for the listed token's.
    let returned = store
        .return_unfinished_jobs(&[consumer.to_owned()], &tokens[..1])
        .await
        .unwrap();
    assert_eq!(returned, 1);
    // The first commit's answer was lost: its jobs go back by its token.
    let pg = app.pg();
    assert_eq!(release_claims(pg, consumer, tokens[0]).await.unwrap(), 1);
    assert_eq!(release_claims(pg, consumer, tokens[0]).await.unwrap(), 0);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM apalis.jobs
              WHERE job_type = 'microclaw.deliveries' AND status = 'Pending' AND lock_by IS NULL"
        )
        .await,
        3
    );

    // The queue sends each reply once, in order.
    app.start_worker();
    let replies = app.wait_for_replies(3, Duration::from_secs(30)).await;
    app.drain(Duration::from_secs(10)).await;
    let texts: Vec<String> = app
        .platform
        .replies()
        .iter()
        .map(|r| r.event.data.text.clone())
        .collect();
    assert_eq!(texts, ["answer to c1", "answer to c2", "answer to c3"]);
    assert_eq!(replies.len(), 3);
    assert_eq!(
        app.strings("SELECT status FROM deliveries").await,
        ["delivered"; 3]
    );
    app.stop().await;
}

/// Deliveries never follow redirects: a platform endpoint (or whoever took it
/// over) cannot bounce a signed reply to another address, private or not.
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

/// A job that falls due later (here a retry, due a second after the failed
/// first attempt) is fetched within `worker.poll_interval` of falling due: no
/// notification announces it, and the consumer's heartbeat, which also
/// fetches, is 30 s away (`worker::fetch_triggers`).
async fn a_retry_falling_due_is_fetched_within_the_poll_interval(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        recovery_window: "120s",
        ..TestConfig::default()
    })
    .await;
    app.platform.script(&[PlatformMode::Fail(503, None)]);
    app.post_message(&TestMessage::direct("p1", "pia", "pia:hi"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(8)).await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.attempt_history().await,
        ["1:retryable:503", "2:delivered:0"]
    );
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
    a_retry_falling_due_is_fetched_within_the_poll_interval,
    transient_failures_are_retried_until_the_attempts_run_out,
);
