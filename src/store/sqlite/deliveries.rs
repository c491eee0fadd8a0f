//! Delivery attempts on SQLite; the same rules as `store::postgres::deliveries`.

use sqlx::SqlitePool;

use super::{begin_write, enqueue};
use crate::store::{
    StoreError,
    records::{AttemptOutcome, DeliveryRow, without_nul},
};
use microclaw_jobs::DeliveryJob;

pub async fn begin_attempt(
    pool: &SqlitePool,
    job: &DeliveryJob,
) -> Result<Option<DeliveryRow>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let row: Option<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.connector_id, d.channel, d.target, d.part, d.text, d.status, d.attempts,
                d.max_attempts, d.rate_limited, d.trace_id,
                NOT EXISTS (SELECT 1 FROM deliveries n
                             WHERE n.turn_id = d.turn_id AND n.connector_id = d.connector_id
                               AND n.part = d.part + 1) AS last_part
           FROM deliveries d WHERE d.id = ?1",
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
    let finished: Option<bool> = sqlx::query_scalar(
        "SELECT finished_at IS NOT NULL FROM delivery_attempts WHERE delivery_id = ?1 AND attempt = ?2",
    )
    .bind(job.delivery_id)
    .bind(job.attempt as i32)
    .fetch_optional(&mut *tx)
    .await?;
    if finished == Some(true) {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt) VALUES (?1, ?2)
         ON CONFLICT (delivery_id, attempt) DO UPDATE
            SET started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                error = 'previous run of this attempt was interrupted'",
    )
    .bind(job.delivery_id)
    .bind(job.attempt as i32)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE deliveries SET attempts = ?2 WHERE id = ?1")
        .bind(job.delivery_id)
        .bind(job.attempt as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    row.attempts = job.attempt as i32;
    Ok(Some(row))
}

pub async fn finish_attempt(
    pool: &SqlitePool,
    job: &DeliveryJob,
    outcome: AttemptOutcome<'_>,
    last_part: bool,
) -> Result<(), StoreError> {
    let mut tx = begin_write(pool).await?;
    let (label, status_code, error) = outcome.attempt_fields();
    sqlx::query(
        "UPDATE delivery_attempts
            SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), outcome = ?3, status_code = ?4, error = ?5
          WHERE delivery_id = ?1 AND attempt = ?2",
    )
    .bind(job.delivery_id)
    .bind(job.attempt as i32)
    .bind(label)
    .bind(status_code)
    .bind(&error)
    .execute(&mut *tx)
    .await?;
    match outcome {
        AttemptOutcome::Delivered => {
            sqlx::query(
                "UPDATE deliveries
                    SET status = 'delivered', delivered_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        next_attempt_at = NULL
                  WHERE id = ?1 AND status = 'pending'",
            )
            .bind(job.delivery_id)
            .execute(&mut *tx)
            .await?;
            if last_part {
                tx.commit().await?;
                return Ok(());
            }
            let next: Option<uuid::Uuid> = sqlx::query_scalar(
                "SELECT n.id FROM deliveries d
                   JOIN deliveries n ON n.turn_id = d.turn_id AND n.connector_id = d.connector_id
                                    AND n.part = d.part + 1 AND n.status = 'pending' AND n.attempts = 0
                  WHERE d.id = ?1",
            )
            .bind(job.delivery_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(next) = next {
                let next = DeliveryJob::new(next, 1, job.trace_id.clone());
                enqueue(
                    &mut tx,
                    &next,
                    next.idempotency_key(),
                    crate::store::DELIVERY_JOB_ATTEMPTS,
                    None,
                )
                .await?;
            }
        }
        AttemptOutcome::RetryAfter(e, wait) => {
            let next_at = chrono::Utc::now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
            sqlx::query(
                "UPDATE deliveries SET next_attempt_at = ?2, error_class = ?3, last_error = ?4,
                        rate_limited = rate_limited + CASE WHEN ?3 = 'rate_limited' THEN 1 ELSE 0 END
                  WHERE id = ?1 AND status = 'pending'",
            )
            .bind(job.delivery_id)
            .bind(next_at)
            .bind(e.class())
            .bind(without_nul(&e.to_string()).into_owned())
            .execute(&mut *tx)
            .await?;
            let next = DeliveryJob::new(job.delivery_id, job.attempt + 1, job.trace_id.clone());
            enqueue(
                &mut tx,
                &next,
                next.idempotency_key(),
                crate::store::DELIVERY_JOB_ATTEMPTS,
                Some(wait),
            )
            .await?;
        }
        AttemptOutcome::Dead(e, reason) => {
            sqlx::query(
                "UPDATE deliveries
                    SET status = 'dead', dead_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        next_attempt_at = NULL, error_class = ?2, last_error = ?3
                  WHERE id = ?1 AND status = 'pending'",
            )
            .bind(job.delivery_id)
            .bind(reason.error_class())
            .bind(without_nul(&e.to_string()).into_owned())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE deliveries
                    SET status = 'dead', dead_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        next_attempt_at = NULL, error_class = 'earlier_part_failed',
                        last_error = 'part ' || (SELECT part FROM deliveries WHERE id = ?1)
                                     || ' of this reply could not be delivered'
                  WHERE turn_id = (SELECT turn_id FROM deliveries WHERE id = ?1)
                    AND connector_id = (SELECT connector_id FROM deliveries WHERE id = ?1)
                    AND part > (SELECT part FROM deliveries WHERE id = ?1)
                    AND status = 'pending'",
            )
            .bind(job.delivery_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
