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
//!
//! [`record_batch`] writes a group-committed batch (see `receiver::group_commit`)
//! in one transaction of a fixed number of statements, whatever the batch size:
//! one lookup of the senders' accounts, one of already-recorded events, one
//! multi-row session upsert (each session bumped by its number of new events, the
//! rows locked in key order so concurrent batches cannot deadlock on each other),
//! one multi-row event insert and one multi-row queue insert. A duplicate is found
//! before anything is written (the batch cannot roll back one member); if another
//! transaction records one of the events between that check and the insert, the
//! batch is rolled back and its members are recorded one by one with [`record`].
//!
//! The two lookups join the batch's keys to tables that grow with every message
//! (`accounts`, `inbound_events`), so they are planned for each batch (unnamed
//! statements) rather than prepared once per connection: Postgres keeps a
//! prepared statement's generic plan after five runs, and a receiver that
//! started on a near-empty database kept a hash join over a sequential scan of
//! `inbound_events` as the table grew past a hundred thousand rows (ingest
//! throughput under load: 6,700 -> 8,500-9,300 acks/s with the lookups
//! re-planned).

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use super::{Enqueue, enqueue, enqueue_many};
use crate::{
    channels::InboundMessage,
    store::{
        StoreError,
        records::{Arrival, Recorded, Routing, conversation_key, session_key},
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

/// A batch member that is new to the store, with its place in its session.
struct Fresh<'a> {
    arrival: Arrival<'a>,
    identity_id: Uuid,
    session: (&'a str, String),
    event_id: Uuid,
    trace_id: String,
}

/// Records a batch of inbound events in one transaction; the answers are in the
/// batch's order.
pub async fn record_batch(
    pool: &PgPool,
    batch: &[Arrival<'_>],
    turn_job_attempts: usize,
) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin().await?;
    let identities = resolve_accounts(&mut tx, batch).await?;
    let recorded_before = already_recorded(&mut tx, batch).await?;

    let mut answers = vec![Recorded::Duplicate; batch.len()];
    let mut seen = HashSet::with_capacity(batch.len());
    let mut fresh: Vec<(usize, Fresh<'_>)> = Vec::with_capacity(batch.len());
    for (index, arrival) in batch.iter().enumerate() {
        let key = (
            arrival.routing.connector_id,
            arrival.message.platform_message_id.as_str(),
        );
        // A platform retry of an event already stored, or sent twice in this batch.
        if recorded_before.contains(&key) || !seen.insert(key) {
            continue;
        }
        let identity_id = identities[index];
        let event_id = Uuid::now_v7();
        fresh.push((
            index,
            Fresh {
                arrival: *arrival,
                identity_id,
                session: (
                    arrival.routing.agent,
                    session_key(arrival.routing.connector_id, arrival.message, identity_id),
                ),
                event_id,
                trace_id: event_id.simple().to_string(),
            },
        ));
    }
    if fresh.is_empty() {
        tx.rollback().await?;
        return Ok(answers);
    }

    let sessions = bump_sessions(&mut tx, &fresh).await?;
    // Sequence numbers in batch order within each session.
    let mut next_seq: HashMap<&(&str, String), i64> = sessions
        .iter()
        .map(|(key, (_, first_seq))| (key, *first_seq))
        .collect();
    let mut seqs = Vec::with_capacity(fresh.len());
    for (_, member) in &fresh {
        let seq = next_seq
            .get_mut(&member.session)
            .expect("every fresh member's session was upserted");
        seqs.push((sessions[&member.session].0, *seq));
        *seq += 1;
    }

    if insert_events(&mut tx, &fresh, &seqs).await? < fresh.len() {
        // Another receiver recorded one of these events after our check.
        tx.rollback().await?;
        let mut answers = Vec::with_capacity(batch.len());
        for arrival in batch {
            answers.push(record(pool, &arrival.routing, arrival.message, turn_job_attempts).await?);
        }
        return Ok(answers);
    }
    let jobs: Vec<(TurnJob, String)> = fresh
        .iter()
        .zip(&seqs)
        .map(|((_, member), (session_id, _))| {
            (
                TurnJob::new(*session_id, member.event_id, member.trace_id.clone()),
                format!("turn:{}", member.event_id),
            )
        })
        .collect();
    enqueue_many(&mut tx, &jobs, turn_job_attempts, None).await?;
    tx.commit().await?;

    for ((index, member), (session_id, _)) in fresh.into_iter().zip(seqs) {
        answers[index] = Recorded::Accepted {
            event_id: member.event_id,
            session_id,
            trace_id: member.trace_id,
        };
    }
    Ok(answers)
}

/// Each member's identity: known senders in one query (row-shared, as in
/// `identity::resolve_account`), first contacts one by one. Both go in sender
/// order, so two batches creating the same new accounts cannot deadlock.
async fn resolve_accounts(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Arrival<'_>],
) -> Result<Vec<Uuid>, StoreError> {
    // Each sender once, in order, with the first of its messages.
    let mut senders: BTreeMap<(&str, &str), &Arrival<'_>> = BTreeMap::new();
    for arrival in batch {
        senders
            .entry((arrival.routing.connector_id, &arrival.message.sender_id))
            .or_insert(arrival);
    }
    let (connectors, sender_ids): (Vec<&str>, Vec<&str>) = senders.keys().copied().unzip();
    let known: Vec<(String, String, Uuid)> = sqlx::query_as(
        "SELECT a.connector_id, a.sender_id, a.identity_id
           FROM accounts a
           JOIN UNNEST($1::text[], $2::text[]) AS k (connector_id, sender_id)
             ON a.connector_id = k.connector_id AND a.sender_id = k.sender_id
          ORDER BY a.connector_id, a.sender_id
            FOR SHARE OF a",
    )
    .bind(&connectors)
    .bind(&sender_ids)
    .persistent(false)
    .fetch_all(&mut **tx)
    .await?;
    let known: HashMap<(String, String), Uuid> = known
        .into_iter()
        .map(|(connector, sender, identity)| ((connector, sender), identity))
        .collect();
    let mut identities: HashMap<(&str, &str), Uuid> = HashMap::with_capacity(senders.len());
    for (key, arrival) in senders {
        let identity = match known.get(&(key.0.to_owned(), key.1.to_owned())) {
            Some(identity) => *identity,
            None => {
                super::identity::resolve_account(
                    tx,
                    arrival.routing.connector_id,
                    arrival.routing.channel,
                    &arrival.message.sender_id,
                    arrival.message.sender_name.as_deref(),
                )
                .await?
            }
        };
        identities.insert(key, identity);
    }
    Ok(batch
        .iter()
        .map(|a| identities[&(a.routing.connector_id, a.message.sender_id.as_str())])
        .collect())
}

/// The (connector, platform message id) pairs of the batch already stored.
async fn already_recorded<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Arrival<'a>],
) -> Result<HashSet<(&'a str, &'a str)>, StoreError> {
    let connectors: Vec<&str> = batch.iter().map(|a| a.routing.connector_id).collect();
    let ids: Vec<&str> = batch
        .iter()
        .map(|a| a.message.platform_message_id.as_str())
        .collect();
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.connector_id, e.platform_message_id
           FROM inbound_events e
           JOIN UNNEST($1::text[], $2::text[]) AS k (connector_id, platform_message_id)
             ON e.connector_id = k.connector_id
            AND e.platform_message_id = k.platform_message_id",
    )
    .bind(&connectors)
    .bind(&ids)
    .persistent(false)
    .fetch_all(&mut **tx)
    .await?;
    let found: HashSet<(String, String)> = found.into_iter().collect();
    Ok(batch
        .iter()
        .map(|a| {
            (
                a.routing.connector_id,
                a.message.platform_message_id.as_str(),
            )
        })
        .filter(|(connector, id)| found.contains(&((*connector).to_owned(), (*id).to_owned())))
        .collect())
}

/// Upserts each session once, bumped by its number of new events, in key order;
/// returns each session's id and the first sequence number of its new events.
async fn bump_sessions<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    fresh: &'a [(usize, Fresh<'a>)],
) -> Result<HashMap<(&'a str, String), (Uuid, i64)>, StoreError> {
    let mut groups: BTreeMap<&(&str, String), (i64, &Fresh<'_>)> = BTreeMap::new();
    for (_, member) in fresh {
        groups.entry(&member.session).or_insert((0, member)).0 += 1;
    }
    let mut ids = Vec::with_capacity(groups.len());
    let mut agents = Vec::with_capacity(groups.len());
    let mut keys = Vec::with_capacity(groups.len());
    let mut is_group = Vec::with_capacity(groups.len());
    let mut counts = Vec::with_capacity(groups.len());
    let mut identity_ids = Vec::with_capacity(groups.len());
    let mut conversation_keys = Vec::with_capacity(groups.len());
    for ((agent, key), (count, first)) in &groups {
        let message = first.arrival.message;
        ids.push(Uuid::now_v7());
        agents.push(*agent);
        keys.push(key.as_str());
        is_group.push(message.is_group);
        counts.push(*count);
        identity_ids.push((!message.is_group).then_some(first.identity_id));
        conversation_keys.push(message.is_group.then(|| {
            conversation_key(first.arrival.routing.connector_id, &message.conversation_id)
        }));
    }
    let rows: Vec<(Uuid, String, String, i64)> = sqlx::query_as(
        "INSERT INTO sessions (id, agent, session_key, is_group, last_inbound_seq, identity_id,
                               conversation_key)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::int8[],
                              $6::uuid[], $7::text[])
         ON CONFLICT (agent, session_key) DO UPDATE
            SET last_inbound_seq = sessions.last_inbound_seq + EXCLUDED.last_inbound_seq,
                updated_at = now()
         RETURNING id, agent, session_key, last_inbound_seq",
    )
    .bind(&ids)
    .bind(&agents)
    .bind(&keys)
    .bind(&is_group)
    .bind(&counts)
    .bind(&identity_ids)
    .bind(&conversation_keys)
    .fetch_all(&mut **tx)
    .await?;
    let returned: HashMap<(String, String), (Uuid, i64)> = rows
        .into_iter()
        .map(|(id, agent, key, last_seq)| ((agent, key), (id, last_seq)))
        .collect();
    let mut sessions = HashMap::with_capacity(groups.len());
    for ((agent, key), (count, _)) in groups {
        let (id, last_seq) = *returned
            .get(&((*agent).to_owned(), key.clone()))
            .ok_or(sqlx::Error::RowNotFound)?;
        sessions.insert((*agent, key.clone()), (id, last_seq - count + 1));
    }
    Ok(sessions)
}

/// Inserts the new events; returns how many were inserted (fewer when another
/// transaction recorded one of them meanwhile).
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    fresh: &[(usize, Fresh<'_>)],
    seqs: &[(Uuid, i64)],
) -> Result<usize, StoreError> {
    let members = || fresh.iter().map(|(_, member)| member);
    let messages = || members().map(|m| m.arrival.message);
    let ids: Vec<Uuid> = members().map(|m| m.event_id).collect();
    let connectors: Vec<&str> = members().map(|m| m.arrival.routing.connector_id).collect();
    let channels: Vec<&str> = members().map(|m| m.arrival.routing.channel).collect();
    let platform_ids: Vec<&str> = messages().map(|m| m.platform_message_id.as_str()).collect();
    let session_ids: Vec<Uuid> = seqs.iter().map(|(id, _)| *id).collect();
    let seq_numbers: Vec<i64> = seqs.iter().map(|(_, seq)| *seq).collect();
    let sender_ids: Vec<&str> = messages().map(|m| m.sender_id.as_str()).collect();
    let sender_names: Vec<Option<&str>> = messages().map(|m| m.sender_name.as_deref()).collect();
    let conversation_ids: Vec<&str> = messages().map(|m| m.conversation_id.as_str()).collect();
    let thread_ids: Vec<Option<&str>> = messages().map(|m| m.thread_id.as_deref()).collect();
    let is_group: Vec<bool> = messages().map(|m| m.is_group).collect();
    let texts: Vec<&str> = messages().map(|m| m.text.as_str()).collect();
    let attachments: Vec<sqlx::types::Json<&[crate::channels::Attachment]>> = messages()
        .map(|m| sqlx::types::Json(m.attachments.as_slice()))
        .collect();
    let sent_at: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        messages().map(|m| m.sent_at).collect();
    let trace_ids: Vec<&str> = members().map(|m| m.trace_id.as_str()).collect();
    let identity_ids: Vec<Uuid> = members().map(|m| m.identity_id).collect();
    let inserted = sqlx::query(
        "INSERT INTO inbound_events
            (id, connector_id, channel, platform_message_id, session_id, seq, sender_id,
             sender_name, conversation_id, thread_id, is_group, text, attachments, sent_at, trace_id,
             identity_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                              $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::bool[], $12::text[], $13::jsonb[], $14::timestamptz[],
                              $15::text[], $16::uuid[])
         ON CONFLICT (connector_id, platform_message_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&connectors)
    .bind(&channels)
    .bind(&platform_ids)
    .bind(&session_ids)
    .bind(&seq_numbers)
    .bind(&sender_ids)
    .bind(&sender_names)
    .bind(&conversation_ids)
    .bind(&thread_ids)
    .bind(&is_group)
    .bind(&texts)
    .bind(&attachments)
    .bind(&sent_at)
    .bind(&trace_ids)
    .bind(&identity_ids)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted as usize)
}
