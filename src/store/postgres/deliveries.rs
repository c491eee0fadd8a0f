//! Delivery state and attempt history.
//!
//! A delivery is one part of one reply to one connector. Each attempt is its own
//! queue job ([`microclaw_jobs::DeliveryJob`]) and its own `delivery_attempts` row.
//! [`begin_attempt`] refuses to send when the delivery is no longer pending or
//! when this attempt already has an outcome (its job ran before and only the queue
//! ack was lost). [`finish_attempt`] records the outcome and, atomically with it,
//! either marks the delivery delivered or dead, or queues the next attempt with
//! its wait, so a crash never loses or doubles the schedule.
//!
//! Parts of one reply go out in order: only the first part's job is queued with
//! the turn; each delivered part queues the next, and a dead part takes the later
//! ones to the admin queue with it (`earlier_part_failed`).
//!
//! The one window that remains is a crash after the platform accepted a send and
//! before its outcome is committed: that attempt is rerun, and the platform sees
//! the same `webhook-id`/delivery id again (at-least-once; receivers deduplicate).

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction, postgres::types::PgInterval};
use uuid::Uuid;

use super::sessions::enqueue_delivery;
use crate::store::{
    StoreError,
    records::{AttemptOutcome, DeliveryRow, FirstAttemptClaim, without_nul},
};
use microclaw_jobs::DeliveryJob;

/// Marks the start of an attempt; None when there is nothing to send.
///
/// Two statements in one transaction, on purpose: the first locks the delivery
/// row and so waits for a concurrent run of the same attempt; the second then
/// reads the attempt with a snapshot taken after that wait, and sees its
/// outcome. One statement would read the attempt with its snapshot from before
/// the wait, and send a second time.
pub async fn begin_attempt(
    pool: &PgPool,
    job: &DeliveryJob,
) -> Result<Option<DeliveryRow>, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.connector_id, d.channel, d.target, d.part, d.text, d.status, d.attempts,
                d.max_attempts, d.rate_limited, d.trace_id,
                NOT EXISTS (SELECT 1 FROM deliveries n
                             WHERE n.turn_id = d.turn_id AND n.connector_id = d.connector_id
                               AND n.part = d.part + 1) AS last_part
           FROM deliveries d WHERE d.id = $1 FOR UPDATE OF d",
    )
    .bind(job.delivery_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    if row.status != "pending" {
        return Ok(None);
    }
    // An attempt with an outcome ran before (only its queue ack was lost). A row
    // without one means this attempt's worker died mid-send: it is rerun.
    let started: bool = sqlx::query_scalar(
        "WITH finished AS (
             SELECT 1 FROM delivery_attempts
              WHERE delivery_id = $1 AND attempt = $2 AND finished_at IS NOT NULL),
         started AS (
             INSERT INTO delivery_attempts (delivery_id, attempt)
             SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM finished)
             ON CONFLICT (delivery_id, attempt) DO UPDATE
                SET started_at = now(), error = 'previous run of this attempt was interrupted'),
         counted AS (
             UPDATE deliveries SET attempts = $2
              WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM finished))
         SELECT NOT EXISTS (SELECT 1 FROM finished)",
    )
    .bind(job.delivery_id)
    .bind(job.attempt as i32)
    .fetch_one(&mut *tx)
    .await?;
    if !started {
        return Ok(None);
    }
    tx.commit().await?;
    row.attempts = job.attempt as i32;
    Ok(Some(row))
}

/// A statement that finishes the attempt's row (`$1` delivery, `$2` outcome,
/// `$3` status code, `$4` error, `$5` attempt), marks the attempt's queue job
/// done when it was claimed outside the queue's consumer (`$6` its id, `$7`
/// and `$8` its claim; all three NULL otherwise, and nothing is marked), and
/// then does `$rest`.
macro_rules! finishing {
    ($rest:literal) => {
        concat!(
            "WITH finished AS (
                 UPDATE delivery_attempts
                    SET finished_at = now(), outcome = $2, status_code = $3, error = $4
                  WHERE delivery_id = $1 AND attempt = $5
             ), settled AS (
                 UPDATE apalis.jobs SET status = 'Done', done_at = now()
                  WHERE id = $6 AND lock_by = $7 AND lock_at = $8 AND status = 'Running')",
            $rest
        )
    };
}

/// Records an attempt's outcome and what follows from it, atomically: one
/// statement when nothing is queued (a last part delivered, a dead delivery),
/// a transaction with the queued job otherwise. The job of an attempt claimed
/// outside the queue's consumer (`claimed`, see `worker::first_attempt`) is
/// marked done with it, as the consumer's ack would.
pub async fn finish_attempt(
    pool: &PgPool,
    job: &DeliveryJob,
    outcome: AttemptOutcome<'_>,
    last_part: bool,
    claimed: Option<&ClaimedJob>,
) -> Result<(), StoreError> {
    let (label, status_code, error) = outcome.attempt_fields();
    let queue_id = claimed.map(|c| c.queue_id.as_str());
    let worker = claimed.map(|c| c.worker.as_str());
    let lock_at = claimed.map(|c| c.token.at());
    match outcome {
        AttemptOutcome::Delivered if last_part => {
            sqlx::query(finishing!(
                "
                 UPDATE deliveries SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL
                  WHERE id = $1 AND status = 'pending'"
            ))
            .bind(job.delivery_id)
            .bind(label)
            .bind(status_code)
            .bind(&error)
            .bind(job.attempt as i32)
            .bind(queue_id)
            .bind(worker)
            .bind(lock_at)
            .execute(pool)
            .await?;
        }
        AttemptOutcome::Delivered => {
            let mut tx = pool.begin().await?;
            // The next part of the same reply goes out only now, so parts arrive in order.
            let next: Option<Uuid> = sqlx::query_scalar(finishing!(
                ",
                 delivered AS (
                     UPDATE deliveries SET status = 'delivered', delivered_at = now(),
                            next_attempt_at = NULL
                      WHERE id = $1 AND status = 'pending')
                 SELECT n.id FROM deliveries d
                   JOIN deliveries n ON n.turn_id = d.turn_id AND n.connector_id = d.connector_id
                                    AND n.part = d.part + 1 AND n.status = 'pending' AND n.attempts = 0
                  WHERE d.id = $1"
            ))
            .bind(job.delivery_id)
            .bind(label)
            .bind(status_code)
            .bind(&error)
            .bind(job.attempt as i32)
            .bind(queue_id)
            .bind(worker)
            .bind(lock_at)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(next) = next {
                let next = DeliveryJob::new(next, 1, job.trace_id.clone());
                enqueue_delivery(&mut tx, &next, None).await?;
            }
            tx.commit().await?;
        }
        AttemptOutcome::RetryAfter(e, wait) => {
            let mut tx = pool.begin().await?;
            sqlx::query(finishing!(
                "
                 UPDATE deliveries
                    SET next_attempt_at = now() + $9, error_class = $10, last_error = $11,
                        rate_limited = rate_limited + CASE WHEN $10 = 'rate_limited' THEN 1 ELSE 0 END
                  WHERE id = $1 AND status = 'pending'"
            ))
            .bind(job.delivery_id)
            .bind(label)
            .bind(status_code)
            .bind(&error)
            .bind(job.attempt as i32)
            .bind(queue_id)
            .bind(worker)
            .bind(lock_at)
            .bind(PgInterval {
                months: 0,
                days: 0,
                microseconds: wait.as_micros() as i64,
            })
            .bind(e.class())
            .bind(without_nul(&e.to_string()).into_owned())
            .execute(&mut *tx)
            .await?;
            let next = DeliveryJob::new(job.delivery_id, job.attempt + 1, job.trace_id.clone());
            enqueue_delivery(&mut tx, &next, Some(wait)).await?;
            tx.commit().await?;
        }
        AttemptOutcome::Dead(e, reason) => {
            // Later parts of the reply would arrive without this one: they go to the
            // admin queue with it, to be retried in order.
            sqlx::query(finishing!(
                ",
                 dead AS (
                     UPDATE deliveries
                        SET status = 'dead', dead_at = now(), next_attempt_at = NULL,
                            error_class = $9, last_error = $10
                      WHERE id = $1 AND status = 'pending')
                 UPDATE deliveries n
                    SET status = 'dead', dead_at = now(), next_attempt_at = NULL,
                        error_class = 'earlier_part_failed',
                        last_error = 'part ' || d.part || ' of this reply could not be delivered'
                   FROM deliveries d
                  WHERE d.id = $1 AND n.turn_id = d.turn_id AND n.connector_id = d.connector_id
                    AND n.part > d.part AND n.status = 'pending'"
            ))
            .bind(job.delivery_id)
            .bind(label)
            .bind(status_code)
            .bind(&error)
            .bind(job.attempt as i32)
            .bind(queue_id)
            .bind(worker)
            .bind(lock_at)
            .bind(reason.error_class())
            .bind(without_nul(&e.to_string()).into_owned())
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// A delivery job claimed by a worker outside its queue's consumer
/// (`worker::first_attempt`).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job's id in the queue.
    pub queue_id: String,
    /// The consumer whose name locks it.
    pub worker: String,
    pub token: ClaimToken,
}

/// What a turn's commit writes as the `lock_at` of the jobs it claims for the
/// committing worker's first attempts: the worker settles each job by it, puts
/// them back by it when the commit's answer was lost, and its consumer
/// recognises them by it (and leaves them alone) when it puts its own
/// unfinished jobs back. Tokens are unique within a process (each is at least a
/// microsecond after the one before); a consumer's fetch writes its
/// transaction's `now()`, and a microsecond-exact match with a token on a job
/// of the same consumer is not a practical risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(DateTime<Utc>);

/// The last token handed out in this process, in microseconds.
static LAST_TOKEN: AtomicI64 = AtomicI64::new(0);

impl ClaimToken {
    pub fn now() -> Self {
        // Postgres keeps microseconds: the token must survive the round trip.
        let now = Utc::now().timestamp_micros();
        let last = LAST_TOKEN
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        Self(DateTime::from_timestamp_micros(now.max(last + 1)).unwrap_or_default())
    }

    /// The `lock_at` it writes.
    pub fn at(self) -> DateTime<Utc> {
        self.0
    }
}

/// A first part's job the turn's commit claimed, and whether it also began the
/// job's attempt.
pub(super) struct ClaimedFirst {
    pub queue_id: String,
    pub delivery_id: Uuid,
    pub begun: bool,
}

/// Inside a turn's commit: claims the first parts' jobs just queued (`firsts`:
/// job and delivery) for `claim.consumer`, as a consumer's fetch would, and
/// begins the first attempt of each delivery that no earlier reply of the
/// session holds back (see `worker::delivery`'s order wait), as
/// [`begin_attempt`] would. Nothing is claimed while the consumer is not
/// registered (a worker starting): those jobs run from the queue.
pub(super) async fn claim_first_attempts(
    tx: &mut Transaction<'_, Postgres>,
    claim: &FirstAttemptClaim<'_>,
    firsts: &[DeliveryJob],
) -> Result<Vec<ClaimedFirst>, StoreError> {
    let keys: Vec<String> = firsts.iter().map(DeliveryJob::idempotency_key).collect();
    let delivery_ids: Vec<Uuid> = firsts.iter().map(|job| job.delivery_id).collect();
    let rows: Vec<(String, Uuid, bool)> = sqlx::query_as(
        "WITH first AS (
             SELECT * FROM UNNEST($4::text[], $5::uuid[]) AS f (key, delivery_id)
         ), claimed AS (
             UPDATE apalis.jobs j
                SET status = 'Running', lock_by = $2, lock_at = $3, attempts = j.attempts + 1
               FROM first f
              WHERE j.job_type = $1 AND j.idempotency_key = f.key AND j.status = 'Pending'
                AND EXISTS (SELECT 1 FROM apalis.workers WHERE id = $2)
              RETURNING j.id, f.delivery_id
         ), ready AS (
             SELECT f.delivery_id FROM first f
              WHERE $6::timestamptz IS NULL
                 OR NOT EXISTS (SELECT 1 FROM deliveries d
                                  JOIN deliveries p ON p.session_id = d.session_id
                                                   AND p.connector_id = d.connector_id
                                 WHERE d.id = f.delivery_id AND p.id < d.id
                                   AND p.status = 'pending' AND p.created_at > $6)
         ), begun AS (
             INSERT INTO delivery_attempts (delivery_id, attempt)
             SELECT c.delivery_id, 1 FROM claimed c JOIN ready r USING (delivery_id)
         ), counted AS (
             UPDATE deliveries SET attempts = 1
              WHERE id IN (SELECT c.delivery_id FROM claimed c JOIN ready r USING (delivery_id))
         )
         SELECT c.id, c.delivery_id, EXISTS (SELECT 1 FROM ready r WHERE r.delivery_id = c.delivery_id)
           FROM claimed c",
    )
    .bind(<DeliveryJob as microclaw_jobs::Job>::QUEUE)
    .bind(claim.consumer)
    .bind(claim.token.at())
    .bind(&keys)
    .bind(&delivery_ids)
    .bind(claim.order_since)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(queue_id, delivery_id, begun)| ClaimedFirst {
            queue_id,
            delivery_id,
            begun,
        })
        .collect())
}

/// Puts the jobs a turn's commit claimed with `token` for `worker` back on the
/// queue, due now, when that commit's answer was lost (it may or may not have
/// committed); how many there were.
pub async fn release_claims(
    pool: &PgPool,
    worker: &str,
    token: ClaimToken,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, run_at = now()
          WHERE job_type = $1 AND lock_by = $2 AND lock_at = $3 AND status = 'Running'",
    )
    .bind(<DeliveryJob as microclaw_jobs::Job>::QUEUE)
    .bind(worker)
    .bind(token.at())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Ends a claimed job that its attempt's outcome did not end: done (nothing was
/// sent), or back on the queue, due now (the attempt failed on the store; a job
/// already done stays done).
pub async fn settle_claimed(
    pool: &PgPool,
    claimed: &ClaimedJob,
    done: bool,
) -> Result<(), StoreError> {
    let statement = if done {
        "UPDATE apalis.jobs SET status = 'Done', done_at = now()
          WHERE id = $1 AND lock_by = $2 AND lock_at = $3 AND status = 'Running'"
    } else {
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, run_at = now()
          WHERE id = $1 AND lock_by = $2 AND lock_at = $3 AND status = 'Running'"
    };
    sqlx::query(statement)
        .bind(&claimed.queue_id)
        .bind(&claimed.worker)
        .bind(claimed.token.at())
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens taken at once on several threads are all different, each thread's
    /// strictly increasing, and each survives Postgres's microsecond precision.
    #[test]
    fn claim_tokens_are_unique_and_increasing() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..2_000)
                        .map(|_| ClaimToken::now().at())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for thread in threads {
            let tokens = thread.join().expect("thread");
            assert!(tokens.windows(2).all(|w| w[0] < w[1]));
            assert!(
                tokens
                    .iter()
                    .all(|t| t.timestamp_subsec_nanos() % 1_000 == 0)
            );
            all.extend(tokens);
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "a token was handed out twice");
    }
}
