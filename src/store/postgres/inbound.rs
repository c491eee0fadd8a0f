//! Recording an inbound event: dedup, session sequencing and the turn job, in one
//! transaction.
//!
//! The session row is upserted first, bumping `last_inbound_seq`; that takes the
//! session's row lock, which the turn's lease release also takes, so a release and
//! a new arrival always see each other (see `sessions`). The event insert then
//! either succeeds or hits the `(connector_id, platform_message_id)` unique index:
//! a platform retry, which rolls the whole transaction back (the bump included)
//! and creates nothing. A concurrent duplicate waits on the index until the first
//! commits, then sees the conflict.

use sqlx::PgPool;
use uuid::Uuid;

use super::{Enqueue, enqueue};
use crate::{
    channels::InboundMessage,
    store::{
        StoreError,
        records::{Recorded, Routing, conversation_key, session_key},
    },
};
use microclaw_jobs::TurnJob;

pub async fn record(
    pool: &PgPool,
    routing: &Routing<'_>,
    message: &InboundMessage,
    turn_job_attempts: usize,
) -> Result<Recorded, StoreError> {
    let event_id = Uuid::now_v7();
    let trace_id = event_id.simple().to_string();
    let mut tx = pool.begin().await?;

    let identity_id = super::identity::resolve_account(
        &mut tx,
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
         VALUES ($1, $2, $3, $4, 1, $5, $6)
         ON CONFLICT (agent, session_key) DO UPDATE
            SET last_inbound_seq = sessions.last_inbound_seq + 1, updated_at = now()
         RETURNING id, last_inbound_seq",
    )
    .bind(Uuid::now_v7())
    .bind(routing.agent)
    .bind(session_key(routing.connector_id, message, identity_id))
    .bind(message.is_group)
    .bind((!message.is_group).then_some(identity_id))
    .bind(&conversation_key)
    .fetch_one(&mut *tx)
    .await?;

    let inserted = sqlx::query(
        "INSERT INTO inbound_events
            (id, connector_id, channel, platform_message_id, session_id, seq, sender_id,
             sender_name, conversation_id, thread_id, is_group, text, attachments, sent_at, trace_id,
             identity_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (connector_id, platform_message_id) DO NOTHING",
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
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Recorded::Duplicate);
    }

    let job = TurnJob::new(session_id, event_id, trace_id.clone());
    enqueue(
        &mut tx,
        Enqueue {
            job: &job,
            idempotency_key: format!("turn:{event_id}"),
            max_attempts: turn_job_attempts,
            run_after: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Recorded::Accepted {
        event_id,
        session_id,
        trace_id,
    })
}
