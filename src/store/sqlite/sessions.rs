//! The session lease protocol on SQLite (see `store::postgres::sessions` for the
//! protocol itself). Row locks become the database write lock: every statement
//! that reads and then writes a session runs in a `BEGIN IMMEDIATE` transaction or
//! as one statement, so the receiver's bump and a lease release still serialize.

use std::time::Duration;

use sqlx::SqlitePool;
use uuid::Uuid;

use super::{begin_write, enqueue, now_ms};
use crate::store::{
    StoreError,
    records::{
        Committed, Lease, LeaseState, PendingEvent, Release, TurnCommit, TurnRecord, without_nul,
        without_nul_parts,
    },
};
use microclaw_jobs::DeliveryJob;

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

pub async fn try_acquire(
    pool: &SqlitePool,
    session_id: Uuid,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let now = now_ms();
    let epoch: Option<i64> = sqlx::query_scalar(
        "UPDATE sessions
            SET lease_owner = ?2, lease_epoch = lease_epoch + 1, lease_expires_ms = ?3 + ?4
          WHERE id = ?1 AND (lease_owner IS NULL OR lease_expires_ms <= ?3)
          RETURNING lease_epoch",
    )
    .bind(session_id)
    .bind(owner)
    .bind(now)
    .bind(ms(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(epoch.map(|epoch| Lease { session_id, epoch }))
}

pub async fn lease_state(pool: &SqlitePool, session_id: Uuid) -> Result<LeaseState, StoreError> {
    let (lease_owner, remaining_ms): (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT lease_owner, lease_expires_ms - ?2 FROM sessions WHERE id = ?1")
            .bind(session_id)
            .bind(now_ms())
            .fetch_one(pool)
            .await?;
    Ok(LeaseState {
        lease_owner,
        remaining_ms,
    })
}

pub async fn extend(pool: &SqlitePool, lease: Lease, ttl: Duration) -> Result<bool, StoreError> {
    let updated =
        sqlx::query("UPDATE sessions SET lease_expires_ms = ?3 WHERE id = ?1 AND lease_epoch = ?2")
            .bind(lease.session_id)
            .bind(lease.epoch)
            .bind(now_ms() + ms(ttl))
            .execute(pool)
            .await?
            .rows_affected();
    Ok(updated == 1)
}

pub async fn release(
    pool: &SqlitePool,
    lease: Lease,
    ttl: Duration,
) -> Result<Release, StoreError> {
    let released: Option<bool> = sqlx::query_scalar(
        "UPDATE sessions
            SET lease_owner = CASE WHEN last_inbound_seq <= processed_seq THEN NULL ELSE lease_owner END,
                lease_expires_ms = CASE WHEN last_inbound_seq <= processed_seq THEN NULL ELSE ?3 END
          WHERE id = ?1 AND lease_epoch = ?2
          RETURNING lease_owner IS NULL",
    )
    .bind(lease.session_id)
    .bind(lease.epoch)
    .bind(now_ms() + ms(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(match released {
        Some(true) => Release::Released,
        Some(false) => Release::MoreWork,
        None => Release::Lost,
    })
}

pub async fn abandon(pool: &SqlitePool, lease: Lease) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions SET lease_owner = NULL, lease_expires_ms = NULL
          WHERE id = ?1 AND lease_epoch = ?2",
    )
    .bind(lease.session_id)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn event_is_settled(pool: &SqlitePool, event_id: Uuid) -> Result<bool, StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM inbound_events WHERE id = ?1")
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
    Ok(status.is_none_or(|s| s != "pending"))
}

pub async fn pending_events(
    pool: &SqlitePool,
    session_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<PendingEvent>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, seq, connector_id, platform_message_id, sender_id, sender_name,
                conversation_id, thread_id, is_group, text, attachments, trace_id, identity_id
           FROM inbound_events
          WHERE session_id = ?1 AND seq > ?2
          ORDER BY seq
          LIMIT ?3",
    )
    .bind(session_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn commit_turn(
    pool: &SqlitePool,
    turn: TurnRecord<'_>,
) -> Result<TurnCommit, StoreError> {
    let (Some(first), Some(last)) = (turn.events.first(), turn.events.last()) else {
        return Ok(TurnCommit::Committed(Committed::default()));
    };
    let mut tx = begin_write(pool).await?;
    // The transcript is looked up here, under the row lock: a merge of this
    // session into another (linked accounts) may have happened during the turn.
    let row: Option<(i64, Uuid)> =
        sqlx::query_as("SELECT lease_epoch, COALESCE(merged_into, id) FROM sessions WHERE id = ?1")
            .bind(turn.lease.session_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((_, transcript_id)) = row.filter(|(epoch, _)| *epoch == turn.lease.epoch) else {
        tx.rollback().await?;
        return Ok(TurnCommit::Fenced);
    };
    let session_id = turn.lease.session_id;
    sqlx::query(
        "INSERT INTO turns (id, session_id, first_seq, last_seq, status, model, error,
                            model_attempts, trace_id, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(turn.turn_id)
    .bind(session_id)
    .bind(first.seq)
    .bind(last.seq)
    .bind(turn.status())
    .bind(turn.model)
    .bind(turn.error.map(without_nul))
    .bind(turn.model_attempts as i32)
    .bind(turn.trace_id)
    .bind(turn.started_at)
    .execute(&mut *tx)
    .await?;
    for event in turn.events {
        sqlx::query(
            "INSERT INTO messages (session_id, turn_id, role, content, inbound_event_id, sender_name,
                                   identity_id)
             -- The event's person now: a merge during the turn may have moved it.
             VALUES (?1, ?2, 'user', ?3, ?4, ?5,
                     (SELECT identity_id FROM inbound_events WHERE id = ?4))",
        )
        .bind(transcript_id)
        .bind(turn.turn_id)
        .bind(without_nul(&event.text))
        .bind(event.id)
        .bind(&event.sender_name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE inbound_events SET status = ?2, turn_id = ?3 WHERE id = ?1")
            .bind(event.id)
            .bind(turn.event_status())
            .bind(turn.turn_id)
            .execute(&mut *tx)
            .await?;
    }
    let user_key = format!("{}:{}", last.connector_id, last.sender_id);
    for call in turn.model_calls {
        sqlx::query(
            "INSERT INTO model_calls (turn_id, agent, user_key, candidate, provider, model, key_id,
                                      outcome, error, latency_ms, input_tokens, output_tokens,
                                      cost_usd, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .bind(turn.turn_id)
        .bind(turn.agent)
        .bind(&user_key)
        .bind(&call.candidate)
        .bind(call.provider)
        .bind(&call.model)
        .bind(&call.key_id)
        .bind(&call.outcome)
        .bind(call.error.as_deref().map(without_nul))
        .bind(call.latency_ms)
        .bind(call.input_tokens)
        .bind(call.output_tokens)
        .bind(call.cost_usd)
        .bind(call.started_at)
        .execute(&mut *tx)
        .await?;
    }
    for step in turn.steps {
        sqlx::query(
            "INSERT INTO messages (session_id, turn_id, role, content, model, parts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(transcript_id)
        .bind(turn.turn_id)
        .bind(step.role.as_str())
        .bind(without_nul(&step.joined_text()).into_owned())
        .bind(turn.model)
        .bind(sqlx::types::Json(without_nul_parts(&step.parts)))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO messages (session_id, turn_id, role, content, model)
         VALUES (?1, ?2, 'assistant', ?3, ?4)",
    )
    .bind(transcript_id)
    .bind(turn.turn_id)
    .bind(without_nul(turn.reply))
    .bind(turn.model)
    .execute(&mut *tx)
    .await?;
    // The lease is released with the commit when nothing arrived after the
    // turn's events and no compaction is due (see the Postgres store).
    let check = turn.compaction;
    let unsummarized = match check {
        Some(check) => Some(
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE session_id = ?1 AND id > ?2 LIMIT ?3)",
            )
            .bind(check.transcript_id)
            .bind(check.summarized_through)
            .bind(check.cap())
            .fetch_one(&mut *tx)
            .await?,
        ),
        None => None,
    };
    let compaction_due = check
        .zip(unsummarized)
        .is_some_and(|(check, n)| n > check.compact_after);
    let released: bool = sqlx::query_scalar(
        "UPDATE sessions SET processed_seq = ?2,
                lease_owner = CASE WHEN last_inbound_seq <= ?2 AND NOT ?4 THEN NULL ELSE lease_owner END,
                lease_expires_ms = CASE WHEN last_inbound_seq <= ?2 AND NOT ?4 THEN NULL ELSE ?3 END,
                updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
          WHERE id = ?1
          RETURNING lease_owner IS NULL",
    )
    .bind(session_id)
    .bind(last.seq)
    .bind(now_ms() + ms(turn.lease_ttl))
    .bind(compaction_due)
    .fetch_one(&mut *tx)
    .await?;

    super::memory::apply_writes(&mut tx, turn.memory_writes, turn.turn_id).await?;
    super::scheduled::insert_planned(
        &mut tx,
        turn.scheduled,
        turn.turn_id,
        session_id,
        turn.trace_id,
    )
    .await?;

    // First attempts in the committing worker exist on Postgres only.
    debug_assert!(turn.first_attempt.is_none(), "no first attempts on SQLite");
    for planned in &turn.deliveries {
        for (index, text) in planned.parts.iter().enumerate() {
            let delivery_id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO deliveries (id, turn_id, session_id, connector_id, channel, target,
                                         part, text, max_attempts, next_attempt_at, trace_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?10)",
            )
            .bind(delivery_id)
            .bind(turn.turn_id)
            .bind(session_id)
            .bind(&planned.connector_id)
            .bind(&planned.channel)
            .bind(sqlx::types::Json(&planned.target))
            .bind(index as i32 + 1)
            .bind(without_nul(text))
            .bind(turn.delivery_max_attempts as i32)
            .bind(turn.trace_id)
            .execute(&mut *tx)
            .await?;
            // Parts go out one after the other (see `deliveries::finish_attempt`).
            if index == 0 {
                let job = DeliveryJob::new(delivery_id, 1, turn.trace_id);
                enqueue(
                    &mut tx,
                    &job,
                    job.idempotency_key(),
                    crate::store::DELIVERY_JOB_ATTEMPTS,
                    None,
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(TurnCommit::Committed(Committed {
        claimed: Vec::new(),
        released,
        unsummarized,
    }))
}
