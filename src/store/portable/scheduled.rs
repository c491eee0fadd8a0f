//! Scheduled messages (`scheduled_messages`): what the agent promised to send
//! later (`tools::schedule`), and their dispatch when due.
//!
//! Written once against [`super::dialect`] and compiled for each backend (see
//! `store::portable`). A scheduled message is written in the commit transaction
//! of the turn that scheduled it, so a turn that crashes or is fenced schedules
//! nothing and its rerun schedules once. Dispatch, in one transaction per
//! message: the row is taken under a lock, becomes a delivery (one more part of
//! the reply of the turn that scheduled it, so it keeps that reply's target and
//! order) with its delivery job, and is marked sent. Rows live in the store, so a
//! restart loses none and sends none twice.

use chrono::{DateTime, Utc};
use microclaw_jobs::DeliveryJob;
use uuid::Uuid;

use super::dialect::{Db, FOR_UPDATE, begin, enqueue, sql};
use crate::store::{
    StoreError,
    records::{PlannedSchedule, ScheduledMessage},
    without_nul,
};

/// Writes the messages a turn scheduled, in the turn's commit transaction.
pub async fn insert_planned(
    tx: &mut sqlx::Transaction<'static, Db>,
    planned: &[PlannedSchedule],
    turn_id: Uuid,
    session_id: Uuid,
    trace_id: &str,
) -> Result<(), StoreError> {
    for message in planned {
        sqlx::query(sql(
            "INSERT INTO scheduled_messages (id, turn_id, session_id, identity_id, connector_id,
                 channel, target, text, due_at, timezone, trace_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        ))
        .bind(message.id)
        .bind(turn_id)
        .bind(session_id)
        .bind(message.identity_id)
        .bind(&message.connector_id)
        .bind(&message.channel)
        .bind(sqlx::types::Json(&message.target))
        .bind(without_nul(&message.text).as_ref())
        .bind(message.due_at)
        .bind(&message.timezone)
        .bind(trace_id)
        .bind(Utc::now())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Deletes the scheduled messages of one person or of the given turns' session
/// (forgetting a person), in the caller's transaction.
pub async fn forget(
    tx: &mut sqlx::Transaction<'static, Db>,
    identity_id: Uuid,
    session_id: Option<Uuid>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql(
        "DELETE FROM scheduled_messages WHERE identity_id = $1 OR session_id = $2",
    ))
    .bind(identity_id)
    .bind(session_id)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

const COLUMNS: &str = "id, connector_id, channel, text, due_at, timezone, status, identity_id,
     session_id, delivery_id, created_at, sent_at, cancelled_at, cancelled_by";

/// Scheduled messages, soonest first: of one person (`identity_id`), or all;
/// only pending ones unless `all_statuses`.
pub async fn list(
    pool: &sqlx::Pool<Db>,
    identity_id: Option<Uuid>,
    all_statuses: bool,
    limit: i64,
) -> Result<Vec<ScheduledMessage>, StoreError> {
    let mut filters = Vec::new();
    if identity_id.is_some() {
        filters.push("identity_id = $2");
    }
    if !all_statuses {
        filters.push("status = 'pending'");
    }
    let clause = match filters.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", filters.join(" AND ")),
    };
    let statement =
        format!("SELECT {COLUMNS} FROM scheduled_messages {clause} ORDER BY due_at LIMIT $1");
    let mut query = sqlx::query_as(sql(&statement)).bind(limit);
    if let Some(identity_id) = identity_id {
        query = query.bind(identity_id);
    }
    Ok(query.fetch_all(pool).await?)
}

/// Cancels a pending message (of `identity_id` when given); the message after,
/// None when there is no such message.
pub async fn cancel(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
    identity_id: Option<Uuid>,
    by: &str,
) -> Result<Option<ScheduledMessage>, StoreError> {
    sqlx::query(sql(
        "UPDATE scheduled_messages SET status = 'cancelled', cancelled_at = $2, cancelled_by = $3
          WHERE id = $1 AND status = 'pending'
            AND ($4 IS NULL OR identity_id = $4)",
    ))
    .bind(id)
    .bind(Utc::now())
    .bind(by)
    .bind(identity_id)
    .execute(pool)
    .await?;
    let found: Option<ScheduledMessage> = sqlx::query_as(sql(&format!(
        "SELECT {COLUMNS} FROM scheduled_messages WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(found.filter(|m| identity_id.is_none() || m.identity_id == identity_id))
}

/// Turns due messages into deliveries, at most `limit`; how many were sent.
pub async fn dispatch_due(
    pool: &sqlx::Pool<Db>,
    now: DateTime<Utc>,
    delivery_max_attempts: i32,
    limit: i64,
) -> Result<u64, StoreError> {
    let due: Vec<Uuid> = sqlx::query_scalar(sql(
        "SELECT id FROM scheduled_messages WHERE status = 'pending' AND due_at <= $1
          ORDER BY due_at LIMIT $2",
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut sent = 0;
    for id in due {
        let mut tx = begin(pool).await?;
        type Row = (
            Uuid,
            String,
            String,
            sqlx::types::Json<serde_json::Value>,
            String,
            String,
            String,
            Uuid,
        );
        let row: Option<Row> = sqlx::query_as(sql(&format!(
            "SELECT session_id, connector_id, channel, target, text, status, trace_id, turn_id
               FROM scheduled_messages WHERE id = $1{FOR_UPDATE}"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id, connector_id, channel, target, text, status, trace_id, turn_id)) =
            row
        else {
            continue;
        };
        if status != "pending" {
            continue;
        }
        let part: i32 = sqlx::query_scalar(sql(
            "SELECT CAST(COALESCE(MAX(part), 0) + 1 AS INTEGER) FROM deliveries
              WHERE turn_id = $1 AND connector_id = $2",
        ))
        .bind(turn_id)
        .bind(&connector_id)
        .fetch_one(&mut *tx)
        .await?;
        let delivery_id = Uuid::now_v7();
        sqlx::query(sql(
            "INSERT INTO deliveries (id, turn_id, session_id, connector_id, channel, target,
                                     part, text, max_attempts, next_attempt_at, trace_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        ))
        .bind(delivery_id)
        .bind(turn_id)
        .bind(session_id)
        .bind(&connector_id)
        .bind(&channel)
        .bind(&target)
        .bind(part)
        .bind(&text)
        .bind(delivery_max_attempts)
        .bind(now)
        .bind(&trace_id)
        .execute(&mut *tx)
        .await?;
        let job = DeliveryJob::new(delivery_id, 1, &trace_id);
        enqueue(
            &mut tx,
            &job,
            job.idempotency_key(),
            crate::store::DELIVERY_JOB_ATTEMPTS,
            None,
        )
        .await?;
        sqlx::query(sql(
            "UPDATE scheduled_messages SET status = 'sent', sent_at = $2, delivery_id = $3
              WHERE id = $1",
        ))
        .bind(id)
        .bind(now)
        .bind(delivery_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sent += 1;
    }
    Ok(sent)
}
