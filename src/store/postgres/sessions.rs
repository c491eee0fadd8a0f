//! Session ordering: one turn of a session at a time, in arrival order, across any
//! number of workers, without holding a transaction across a model call.
//!
//! The session row carries a lease (owner, epoch, expiry) and two counters:
//! `last_inbound_seq` (bumped by the receiver with each event) and `processed_seq`
//! (advanced by the turn that answers events up to it).
//!
//! * [`try_acquire`] takes a free or expired lease with one conditional UPDATE and
//!   bumps the epoch. The epoch is a fencing token. [`acquire_for_turn`] does the
//!   same and reads the first turn's inputs in the same statement.
//! * The holder answers unprocessed events in order and commits each turn with
//!   [`commit_turn`], which locks the row and checks `lease_epoch`: a worker whose
//!   lease expired and was taken by another writes nothing, so a slow worker can
//!   never add a second reply.
//! * [`release`] frees the lease only when `last_inbound_seq <= processed_seq`.
//!   The receiver's bump and the release both lock the row, so one sees the other:
//!   either the release fails and the holder loops to answer the newcomer (the
//!   "collect" folding), or the release came first and the newcomer's own job
//!   finds the lease free. [`commit_turn`] releases the same way, under the row
//!   lock it already holds, unless a compaction is due (it runs under the lease).
//! * A holder extends its lease while it waits on the model ([`extend`]). A worker
//!   that dies stops extending; the queue recovers its job, which waits for the
//!   lease to expire (the lease owner names the job, so the job recognizes its own
//!   dead lease) and then reruns the turn.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction, postgres::types::PgInterval};
use uuid::Uuid;

use super::{Enqueue, enqueue};
use crate::store::{
    StoreError,
    records::{
        ClaimedDelivery, Committed, DeliveryRow, Lease, LeaseState, PendingEvent, PlannedDelivery,
        Release, SessionInfo, TurnCommit, TurnInputs, TurnRecord, without_nul, without_nul_parts,
    },
};
use microclaw_jobs::DeliveryJob;

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: d.as_micros() as i64,
    }
}

pub async fn try_acquire(
    pool: &PgPool,
    session_id: Uuid,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let epoch: Option<i64> = sqlx::query_scalar(
        "UPDATE sessions
            SET lease_owner = $2, lease_epoch = lease_epoch + 1, lease_expires_at = now() + $3
          WHERE id = $1 AND (lease_owner IS NULL OR lease_expires_at <= now())
          RETURNING lease_epoch",
    )
    .bind(session_id)
    .bind(owner)
    .bind(interval(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(epoch.map(|epoch| Lease { session_id, epoch }))
}

pub async fn lease_state(pool: &PgPool, session_id: Uuid) -> Result<LeaseState, StoreError> {
    let (lease_owner, remaining_ms): (Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT lease_owner,
                    (EXTRACT(EPOCH FROM (lease_expires_at - now())) * 1000)::BIGINT
               FROM sessions WHERE id = $1",
    )
    .bind(session_id)
    .fetch_one(pool)
    .await?;
    Ok(LeaseState {
        lease_owner,
        remaining_ms,
    })
}

/// Extends a held lease; false when it was lost (expired and taken by another).
pub async fn extend(pool: &PgPool, lease: Lease, ttl: Duration) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE sessions SET lease_expires_at = now() + $3 WHERE id = $1 AND lease_epoch = $2",
    )
    .bind(lease.session_id)
    .bind(lease.epoch)
    .bind(interval(ttl))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

pub async fn release(pool: &PgPool, lease: Lease, ttl: Duration) -> Result<Release, StoreError> {
    let released: Option<bool> = sqlx::query_scalar(
        "UPDATE sessions
            SET lease_owner = CASE WHEN last_inbound_seq <= processed_seq THEN NULL ELSE lease_owner END,
                lease_expires_at = CASE WHEN last_inbound_seq <= processed_seq THEN NULL ELSE now() + $3 END
          WHERE id = $1 AND lease_epoch = $2
          RETURNING lease_owner IS NULL",
    )
    .bind(lease.session_id)
    .bind(lease.epoch)
    .bind(interval(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(match released {
        Some(true) => Release::Released,
        Some(false) => Release::MoreWork,
        None => Release::Lost,
    })
}

/// Gives a lease up without finishing (after an error), so the retry can take it.
pub async fn abandon(pool: &PgPool, lease: Lease) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions SET lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_epoch = $2",
    )
    .bind(lease.session_id)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether an inbound event has been answered (or given up on).
pub async fn event_is_settled(pool: &PgPool, event_id: Uuid) -> Result<bool, StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM inbound_events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
    Ok(status.is_none_or(|s| s != "pending"))
}

/// Unanswered events after `after_seq`, in arrival order.
pub async fn pending_events(
    pool: &PgPool,
    session_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<PendingEvent>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, seq, connector_id, platform_message_id, sender_id, sender_name,
                conversation_id, thread_id, is_group, text, attachments, trace_id, identity_id
           FROM inbound_events
          WHERE session_id = $1 AND seq > $2
          ORDER BY seq
          LIMIT $3",
    )
    .bind(session_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A turn's inputs as one row.
#[derive(sqlx::FromRow)]
struct Inputs {
    #[sqlx(flatten)]
    session: SessionInfo,
    events: sqlx::types::Json<Vec<PendingEvent>>,
}

/// The select of a turn's inputs (after the columns `$first`) from the session
/// row `s` (a CTE), `$2` events at most.
macro_rules! turn_inputs_from_s {
    ($first:literal) => {
        concat!("SELECT ", $first, " s.agent, s.processed_seq, s.is_group, s.identity_id, s.conversation_key,
                t.id AS transcript_id, t.summary, t.summarized_through,
                COALESCE((SELECT json_agg(e ORDER BY e.seq)
                            FROM (SELECT id, seq, connector_id, platform_message_id, sender_id,
                                         sender_name, conversation_id, thread_id, is_group, text,
                                         attachments, trace_id, identity_id
                                    FROM inbound_events
                                   WHERE session_id = s.id AND seq > s.processed_seq
                                   ORDER BY seq
                                   LIMIT $2) e),
                         '[]') AS events
           FROM s JOIN sessions t ON t.id = COALESCE(s.merged_into, s.id)")
    };
}

/// The session and up to `limit` of its unanswered events, in one statement
/// (so in one snapshot): `portable::memory::session_info` and [`pending_events`]
/// together.
pub async fn turn_inputs(
    pool: &PgPool,
    session_id: Uuid,
    limit: i64,
) -> Result<TurnInputs, StoreError> {
    let inputs: Option<Inputs> = sqlx::query_as(concat!(
        "WITH s AS (SELECT * FROM sessions WHERE id = $1) ",
        turn_inputs_from_s!("")
    ))
    .bind(session_id)
    .bind(limit)
    .fetch_optional(pool)
    .await?;
    Ok(inputs.map(|inputs| (inputs.session, inputs.events.0)))
}

/// [`try_acquire`] and [`turn_inputs`] in one statement: the lease taken and,
/// when it was, what the turn answers. The session row read is the one the
/// lease's update wrote (after waiting for a concurrent writer of the row,
/// such as the receiver recording an event), the events as of the statement's
/// start; an event recorded meanwhile is answered by the next turn (the lease
/// is released only when nothing is left).
pub async fn acquire_for_turn(
    pool: &PgPool,
    session_id: Uuid,
    owner: &str,
    ttl: Duration,
    limit: i64,
) -> Result<Option<(Lease, TurnInputs)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Taken {
        lease_epoch: i64,
        #[sqlx(flatten)]
        inputs: Inputs,
    }
    let taken: Option<Taken> = sqlx::query_as(concat!(
        "WITH s AS (
             UPDATE sessions
                SET lease_owner = $3, lease_epoch = lease_epoch + 1,
                    lease_expires_at = now() + $4
              WHERE id = $1 AND (lease_owner IS NULL OR lease_expires_at <= now())
              RETURNING *) ",
        turn_inputs_from_s!("s.lease_epoch,")
    ))
    .bind(session_id)
    .bind(limit)
    .bind(owner)
    .bind(interval(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(taken.map(|taken| {
        (
            Lease {
                session_id,
                epoch: taken.lease_epoch,
            },
            Some((taken.inputs.session, taken.inputs.events.0)),
        )
    }))
}

/// Commits a turn: transcript, event marks, `processed_seq`, deliveries and their
/// jobs, in one transaction fenced by the lease epoch.
pub async fn commit_turn(pool: &PgPool, turn: TurnRecord<'_>) -> Result<TurnCommit, StoreError> {
    let (Some(first), Some(last)) = (turn.events.first(), turn.events.last()) else {
        return Ok(TurnCommit::Committed(Committed::default()));
    };
    let mut tx = pool.begin().await?;
    let session_id = turn.lease.session_id;
    let user_key = format!("{}:{}", last.connector_id, last.sender_id);
    let calls = turn.model_calls;
    let parts = ReplyParts::of(&turn.deliveries);
    // The fence, the turn, its model calls and its reply's parts in one
    // statement: the session row is locked, and the rest written only when the
    // lease epoch still matches. The transcript is looked up here, under the
    // row lock: a merge of this session into another (linked accounts) may
    // have happened during the turn.
    let row: Option<(i64, Uuid)> = sqlx::query_as(
        "WITH s AS (
             SELECT lease_epoch, COALESCE(merged_into, id) AS transcript_id
               FROM sessions WHERE id = $2 FOR UPDATE
         ), turn AS (
             INSERT INTO turns (id, session_id, first_seq, last_seq, status, model, error,
                                model_attempts, trace_id, started_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM s WHERE s.lease_epoch = $11
             RETURNING id
         ), calls AS (
             INSERT INTO model_calls (turn_id, agent, user_key, candidate, provider, model,
                                      key_id, outcome, error, latency_ms, input_tokens,
                                      output_tokens, cost_usd, started_at)
             SELECT turn.id, $12, $13, c.candidate, c.provider, c.model, c.key_id, c.outcome,
                    c.error, c.latency_ms, c.input_tokens, c.output_tokens, c.cost_usd,
                    c.started_at
               FROM turn,
                    UNNEST($14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                           $19::text[], $20::int8[], $21::int8[], $22::int8[], $23::float8[],
                           $24::timestamptz[])
                    WITH ORDINALITY AS c (candidate, provider, model, key_id, outcome, error,
                                          latency_ms, input_tokens, output_tokens, cost_usd,
                                          started_at, ord)
              ORDER BY c.ord
         ), parts AS (
             INSERT INTO deliveries (id, turn_id, session_id, connector_id, channel, target,
                                     part, text, max_attempts, next_attempt_at, trace_id)
             SELECT p.id, turn.id, $2, p.connector_id, p.channel, p.target, p.part, p.text,
                    $31, now(), $9
               FROM turn,
                    UNNEST($25::uuid[], $26::text[], $27::text[], $28::jsonb[], $29::int4[],
                           $30::text[])
                    AS p (id, connector_id, channel, target, part, text)
         )
         SELECT lease_epoch, transcript_id FROM s",
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
    .bind(turn.lease.epoch)
    .bind(turn.agent)
    .bind(&user_key)
    .bind(
        calls
            .iter()
            .map(|c| c.candidate.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(calls.iter().map(|c| c.provider).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.model.as_str()).collect::<Vec<_>>())
    .bind(
        calls
            .iter()
            .map(|c| c.key_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(calls.iter().map(|c| c.outcome.as_str()).collect::<Vec<_>>())
    .bind(
        calls
            .iter()
            .map(|c| c.error.as_deref().map(|e| without_nul(e).into_owned()))
            .collect::<Vec<_>>(),
    )
    .bind(calls.iter().map(|c| c.latency_ms).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.input_tokens).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.output_tokens).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.cost_usd).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.started_at).collect::<Vec<_>>())
    .bind(&parts.ids)
    .bind(&parts.connector_ids)
    .bind(&parts.channels)
    .bind(&parts.targets)
    .bind(&parts.numbers)
    .bind(&parts.texts)
    .bind(turn.delivery_max_attempts as i32)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((_, transcript_id)) = row.filter(|(epoch, _)| *epoch == turn.lease.epoch) else {
        tx.rollback().await?;
        return Ok(TurnCommit::Fenced);
    };

    // The events answered, the turn's transcript and the session's mark, in
    // one statement that also releases the lease when nothing arrived after
    // the turn's events (the receiver's bump waits for this row lock, as it
    // does for `release`) and no compaction is due (the transcript, this
    // turn's messages included, counted as `memory::compaction` would). Its
    // snapshot is taken with the row lock held, so the events' persons are
    // read as a merge during the turn left them.
    let transcript = TranscriptRows::of(&turn);
    let event_ids: Vec<Uuid> = turn.events.iter().map(|e| e.id).collect();
    let check = turn.compaction;
    let (released, unsummarized): (bool, i64) = sqlx::query_as(
        "WITH answered AS (
             UPDATE inbound_events SET status = $2, turn_id = $3 WHERE id = ANY($1)
         ), transcript AS (
             -- The user messages, the tool steps, the reply: the rows take
             -- their ids in that order.
             INSERT INTO messages (session_id, turn_id, role, content, inbound_event_id,
                                   sender_name, identity_id, model, parts)
             SELECT $11, $3, m.role, m.content, m.event_id, m.sender_name,
                    (SELECT identity_id FROM inbound_events WHERE id = m.event_id),
                    m.model, m.parts
               FROM UNNEST($12::text[], $13::text[], $14::uuid[], $15::text[], $16::text[],
                           $17::jsonb[])
                    WITH ORDINALITY AS m (role, content, event_id, sender_name, model, parts, ord)
              ORDER BY m.ord
              RETURNING session_id
         ), unsummarized AS (
             -- The rows this statement inserts are not visible to its own
             -- reads: they are counted from the insert's answer.
             SELECT LEAST((SELECT COUNT(*) FROM (SELECT 1 FROM messages
                                                  WHERE session_id = $7 AND id > $8
                                                  LIMIT $9) AS m)
                          + (SELECT COUNT(*) FROM transcript WHERE session_id = $7), $9) AS n
         ), done AS (
             SELECT s.last_inbound_seq <= $5 AND u.n <= $10 AS release
               FROM sessions s, unsummarized u WHERE s.id = $4
         )
         UPDATE sessions
            SET processed_seq = $5, updated_at = now(),
                lease_owner = CASE WHEN done.release THEN NULL ELSE lease_owner END,
                lease_expires_at = CASE WHEN done.release THEN NULL ELSE now() + $6 END
           FROM done, unsummarized
          WHERE id = $4
          RETURNING done.release, unsummarized.n",
    )
    .bind(&event_ids)
    .bind(turn.event_status())
    .bind(turn.turn_id)
    .bind(session_id)
    .bind(last.seq)
    .bind(interval(turn.lease_ttl))
    .bind(check.map(|c| c.transcript_id))
    .bind(check.map_or(0, |c| c.summarized_through))
    .bind(check.map_or(0, |c| c.cap()))
    .bind(check.map_or(i64::MAX, |c| c.compact_after))
    .bind(transcript_id)
    .bind(&transcript.roles)
    .bind(&transcript.contents)
    .bind(&transcript.event_ids)
    .bind(&transcript.sender_names)
    .bind(&transcript.models)
    .bind(&transcript.parts)
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

    // Parts go out one after the other: only the first part's job is queued
    // now, the next one when this one is delivered (see
    // `deliveries::finish_attempt`).
    let firsts = parts.firsts(&turn.deliveries, turn.trace_id);
    let jobs: Vec<(DeliveryJob, String)> = firsts
        .iter()
        .map(|(job, _)| (job.clone(), job.idempotency_key()))
        .collect();
    if !jobs.is_empty() {
        super::enqueue_many(
            &mut tx,
            &jobs,
            crate::store::DELIVERY_JOB_ATTEMPTS,
            turn.first_attempt.map(|claim| claim.due_after),
        )
        .await?;
    }
    let mut claimed = Vec::new();
    if let Some(claim) = turn.first_attempt.as_ref().filter(|_| !firsts.is_empty()) {
        let jobs: Vec<DeliveryJob> = firsts.iter().map(|(job, _)| job.clone()).collect();
        for first in super::deliveries::claim_first_attempts(&mut tx, claim, &jobs).await? {
            let Some((job, planned)) = firsts
                .iter()
                .find(|(job, _)| job.delivery_id == first.delivery_id)
            else {
                continue;
            };
            claimed.push(ClaimedDelivery {
                job: job.clone(),
                queue_id: first.queue_id,
                begun: first.begun.then(|| DeliveryRow {
                    id: job.delivery_id,
                    connector_id: planned.connector_id.clone(),
                    channel: planned.channel.clone(),
                    target: sqlx::types::Json(planned.target.clone()),
                    part: 1,
                    text: without_nul(&planned.parts[0]).into_owned(),
                    status: "pending".to_owned(),
                    attempts: 1,
                    max_attempts: turn.delivery_max_attempts as i32,
                    rate_limited: 0,
                    trace_id: turn.trace_id.to_owned(),
                    last_part: planned.parts.len() == 1,
                }),
            });
        }
    }
    tx.commit().await?;
    Ok(TurnCommit::Committed(Committed {
        claimed,
        released,
        unsummarized: check.map(|_| unsummarized),
    }))
}

/// Every part of a turn's replies as the columns of one insert, each part with
/// the id of its delivery.
struct ReplyParts<'a> {
    ids: Vec<Uuid>,
    connector_ids: Vec<&'a str>,
    channels: Vec<&'a str>,
    targets: Vec<sqlx::types::Json<&'a crate::channels::ReplyTarget>>,
    numbers: Vec<i32>,
    texts: Vec<String>,
}

impl<'a> ReplyParts<'a> {
    fn of(deliveries: &'a [PlannedDelivery]) -> Self {
        let count = deliveries.iter().map(|d| d.parts.len()).sum();
        let mut parts = Self {
            ids: Vec::with_capacity(count),
            connector_ids: Vec::with_capacity(count),
            channels: Vec::with_capacity(count),
            targets: Vec::with_capacity(count),
            numbers: Vec::with_capacity(count),
            texts: Vec::with_capacity(count),
        };
        for planned in deliveries {
            for (index, text) in planned.parts.iter().enumerate() {
                parts.ids.push(Uuid::now_v7());
                parts.connector_ids.push(&planned.connector_id);
                parts.channels.push(&planned.channel);
                parts.targets.push(sqlx::types::Json(&planned.target));
                parts.numbers.push(index as i32 + 1);
                parts.texts.push(without_nul(text).into_owned());
            }
        }
        parts
    }

    /// The first part of each of `deliveries` (those `of` was built from): its
    /// job, and the reply it starts.
    fn firsts<'t>(
        &self,
        deliveries: &'t [PlannedDelivery],
        trace_id: &str,
    ) -> Vec<(DeliveryJob, &'t PlannedDelivery)> {
        let mut next = 0;
        deliveries
            .iter()
            .filter_map(|planned| {
                let first = self.ids.get(next).copied();
                next += planned.parts.len();
                first
                    .filter(|_| !planned.parts.is_empty())
                    .map(|id| (DeliveryJob::new(id, 1, trace_id), planned))
            })
            .collect()
    }
}

/// A turn's transcript as the columns of one insert, in order: the user
/// messages, the tool steps, the reply.
struct TranscriptRows<'a> {
    roles: Vec<&'a str>,
    contents: Vec<String>,
    event_ids: Vec<Option<Uuid>>,
    sender_names: Vec<Option<&'a str>>,
    models: Vec<Option<&'a str>>,
    parts: Vec<Option<sqlx::types::Json<Vec<crate::providers::Part>>>>,
}

impl<'a> TranscriptRows<'a> {
    fn of(turn: &'a TurnRecord<'_>) -> Self {
        let count = turn.events.len() + turn.steps.len() + 1;
        let mut rows = Self {
            roles: Vec::with_capacity(count),
            contents: Vec::with_capacity(count),
            event_ids: Vec::with_capacity(count),
            sender_names: Vec::with_capacity(count),
            models: Vec::with_capacity(count),
            parts: Vec::with_capacity(count),
        };
        for event in turn.events {
            rows.roles.push("user");
            rows.contents.push(without_nul(&event.text).into_owned());
            rows.event_ids.push(Some(event.id));
            rows.sender_names.push(event.sender_name.as_deref());
            rows.models.push(None);
            rows.parts.push(None);
        }
        for step in turn.steps {
            rows.roles.push(step.role.as_str());
            rows.contents
                .push(without_nul(&step.joined_text()).into_owned());
            rows.event_ids.push(None);
            rows.sender_names.push(None);
            rows.models.push(turn.model);
            rows.parts
                .push(Some(sqlx::types::Json(without_nul_parts(&step.parts))));
        }
        rows.roles.push("assistant");
        rows.contents.push(without_nul(turn.reply).into_owned());
        rows.event_ids.push(None);
        rows.sender_names.push(None);
        rows.models.push(turn.model);
        rows.parts.push(None);
        rows
    }
}

pub(super) async fn enqueue_delivery(
    tx: &mut Transaction<'_, Postgres>,
    job: &DeliveryJob,
    run_after: Option<Duration>,
) -> Result<(), StoreError> {
    enqueue(
        tx,
        Enqueue {
            job,
            idempotency_key: job.idempotency_key(),
            max_attempts: crate::store::DELIVERY_JOB_ATTEMPTS,
            run_after,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(connector: &str, parts: &[&str]) -> PlannedDelivery {
        PlannedDelivery {
            connector_id: connector.into(),
            channel: "custom".into(),
            target: crate::channels::ReplyTarget {
                conversation_id: "c".into(),
                thread_id: None,
                recipient_id: "r".into(),
                is_group: false,
                in_reply_to: Vec::new(),
            },
            parts: parts.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    /// Every part is a row numbered within its reply; each reply's first job
    /// names the id of that reply's first part, a reply without parts none.
    #[test]
    fn each_reply_starts_with_its_own_first_part() {
        let deliveries = [
            reply("a", &["a1", "a2", "a3"]),
            reply("b", &[]),
            reply("c", &["c1"]),
            reply("d", &["d1", "d\0x2"]),
        ];
        let parts = ReplyParts::of(&deliveries);
        // Postgres text holds no NUL: it is dropped.
        assert_eq!(parts.texts, ["a1", "a2", "a3", "c1", "d1", "dx2"]);
        assert_eq!(parts.numbers, [1, 2, 3, 1, 1, 2]);
        assert_eq!(parts.connector_ids, ["a", "a", "a", "c", "d", "d"]);
        let firsts = parts.firsts(&deliveries, "trace");
        let named: Vec<(Uuid, &str)> = firsts
            .iter()
            .map(|(job, planned)| (job.delivery_id, planned.connector_id.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (parts.ids[0], "a"),
                (parts.ids[3], "c"),
                (parts.ids[4], "d")
            ]
        );
        assert!(firsts.iter().all(|(job, _)| job.attempt == 1));
    }
}
