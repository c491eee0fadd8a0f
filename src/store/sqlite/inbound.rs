//! Recording an inbound event on SQLite: the same transaction as on Postgres
//! (session bump, event insert deduplicated by its unique index, turn job), under
//! the write lock taken by `BEGIN IMMEDIATE`. Holding that lock, a duplicate is
//! found by looking before writing, so a group-committed batch
//! ([`record_batch`]) writes its members one after the other in one transaction
//! and skips its duplicates without rolling anything back.

use sqlx::SqlitePool;
use uuid::Uuid;

use super::{begin_write, enqueue};
use crate::{
    channels::InboundMessage,
    store::{
        StoreError,
        records::{Arrival, Recorded, Routing, conversation_key, session_key},
    },
};
use microclaw_jobs::TurnJob;

pub async fn record(
    pool: &SqlitePool,
    routing: &Routing<'_>,
    message: &InboundMessage,
    turn_job_attempts: usize,
) -> Result<Recorded, StoreError> {
    let mut tx = begin_write(pool).await?;
    let recorded = record_in(&mut tx, routing, message, turn_job_attempts).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Records a batch of inbound events in one transaction; the answers are in the
/// batch's order.
pub async fn record_batch(
    pool: &SqlitePool,
    batch: &[Arrival<'_>],
    turn_job_attempts: usize,
) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for arrival in batch {
        answers.push(
            record_in(
                &mut tx,
                &arrival.routing,
                arrival.message,
                turn_job_attempts,
            )
            .await?,
        );
    }
    tx.commit().await?;
    Ok(answers)
}

async fn record_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    routing: &Routing<'_>,
    message: &InboundMessage,
    turn_job_attempts: usize,
) -> Result<Recorded, StoreError> {
    let recorded_before: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inbound_events
                         WHERE connector_id = ?1 AND platform_message_id = ?2)",
    )
    .bind(routing.connector_id)
    .bind(&message.platform_message_id)
    .fetch_one(&mut **tx)
    .await?;
    if recorded_before {
        return Ok(Recorded::Duplicate);
    }
    let event_id = Uuid::now_v7();
    let trace_id = event_id.simple().to_string();

    let identity_id = super::identity::resolve_account(
        tx,
        routing.connector_id,
        routing.channel,
        &message.sender_id,
        message.sender_name.as_deref(),
    )
    .await?;
    let conversation_key = message
        .is_group
        .then(|| conversation_key(routing.connector_id, &message.conversation_id));
    let (session_id, seq): (Uuid, i64) = sqlx::query_as(
        "INSERT INTO sessions (id, agent, session_key, is_group, last_inbound_seq, identity_id,
                               conversation_key)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
         ON CONFLICT (agent, session_key) DO UPDATE
            SET last_inbound_seq = last_inbound_seq + 1,
                updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         RETURNING id, last_inbound_seq",
    )
    .bind(Uuid::now_v7())
    .bind(routing.agent)
    .bind(session_key(routing.connector_id, message, identity_id))
    .bind(message.is_group)
    .bind((!message.is_group).then_some(identity_id))
    .bind(&conversation_key)
    .fetch_one(&mut **tx)
    .await?;

    sqlx::query(
        "INSERT INTO inbound_events
            (id, connector_id, channel, platform_message_id, session_id, seq, sender_id,
             sender_name, conversation_id, thread_id, is_group, text, attachments, sent_at, trace_id,
             identity_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )
    .bind(event_id)
    .bind(routing.connector_id)
    .bind(routing.channel)
    .bind(&message.platform_message_id)
    .bind(session_id)
    .bind(seq)
    .bind(&message.sender_id)
    .bind(&message.sender_name)
    .bind(&message.conversation_id)
    .bind(&message.thread_id)
    .bind(message.is_group)
    .bind(&message.text)
    .bind(sqlx::types::Json(&message.attachments))
    .bind(message.sent_at)
    .bind(&trace_id)
    .bind(identity_id)
    .execute(&mut **tx)
    .await?;

    let job = TurnJob::new(session_id, event_id, trace_id.clone());
    enqueue(
        tx,
        &job,
        format!("turn:{event_id}"),
        turn_job_attempts,
        None,
    )
    .await?;
    Ok(Recorded::Accepted {
        event_id,
        session_id,
        trace_id,
    })
}
