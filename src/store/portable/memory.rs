//! Memory: what a turn reads to assemble its context and what its tools write.
//!
//! Written once against [`super::dialect`] and compiled for each backend (see
//! `store::portable`); only the full-text search differs (Postgres `tsvector`,
//! SQLite FTS5), chosen by [`super::dialect::BACKEND`].
//!
//! Every read here is bounded by a LIMIT on an index, so rehydrating a session
//! costs the same whatever the length of its history: the session row (summary
//! and mark), the newest messages after the mark, the newest facts and notes, and
//! two ranked searches.

use sqlx::Database;
use uuid::Uuid;

use super::dialect::{BACKEND, Backend, Db, sql};
use crate::store::{
    StoreError,
    records::{
        HistoryMessage, Lease, MemoryItem, MemoryWrite, PurgeReport, RecalledMessage, SessionInfo,
        without_nul,
    },
};

type Conn = <Db as Database>::Connection;

/// A session with its transcript's summary; None once the session was forgotten.
pub async fn session_info(
    pool: &sqlx::Pool<Db>,
    session_id: Uuid,
) -> Result<Option<SessionInfo>, StoreError> {
    Ok(sqlx::query_as(sql(
        "SELECT s.agent, s.processed_seq, s.is_group, s.identity_id, s.conversation_key,
                t.id AS transcript_id, t.summary, t.summarized_through
           FROM sessions s JOIN sessions t ON t.id = COALESCE(s.merged_into, s.id)
          WHERE s.id = $1",
    ))
    .bind(session_id)
    .fetch_optional(pool)
    .await?)
}

/// The newest `limit` messages of a transcript after message `after_id`, oldest
/// first. Uses the `(session_id, id DESC)` index.
pub async fn recent_history(
    pool: &sqlx::Pool<Db>,
    transcript_id: Uuid,
    after_id: i64,
    limit: i64,
) -> Result<Vec<HistoryMessage>, StoreError> {
    let mut rows: Vec<HistoryMessage> =
        sqlx::query_as(sql("SELECT id, role, content, parts FROM messages
          WHERE session_id = $1 AND id > $2 ORDER BY id DESC LIMIT $3"))
        .bind(transcript_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.reverse();
    Ok(rows)
}

/// The oldest `limit` messages after the summary mark, oldest first (what a
/// compaction folds into the summary).
pub async fn oldest_unsummarized(
    pool: &sqlx::Pool<Db>,
    transcript_id: Uuid,
    after_id: i64,
    limit: i64,
) -> Result<Vec<HistoryMessage>, StoreError> {
    Ok(
        sqlx::query_as(sql("SELECT id, role, content, parts FROM messages
          WHERE session_id = $1 AND id > $2 ORDER BY id LIMIT $3"))
        .bind(transcript_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?,
    )
}

/// Stores a new summary covering every message up to `through`, fenced by the
/// lease of `lease.session_id` (whose transcript is `transcript_id`) and by the
/// summary it was built from (`built_on`: summary and mark as read): a worker that
/// lost the session, or a merge that changed the transcript meanwhile, makes it
/// write nothing. False when fenced.
pub async fn save_summary(
    pool: &sqlx::Pool<Db>,
    lease: Lease,
    transcript_id: Uuid,
    built_on: (&str, i64),
    summary: &str,
    through: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(sql(
        "UPDATE sessions SET summary = $3, summarized_through = $4
          WHERE id = $1 AND summary = $6 AND summarized_through = $7
            AND EXISTS (SELECT 1 FROM sessions l WHERE l.id = $2 AND l.lease_epoch = $5)",
    ))
    .bind(transcript_id)
    .bind(lease.session_id)
    .bind(without_nul(summary))
    .bind(through)
    .bind(lease.epoch)
    .bind(built_on.0)
    .bind(built_on.1)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Applies a turn's memory writes inside its commit transaction. A `Forget` only
/// deletes within the scopes the turn may touch (checked when the tool ran).
pub async fn apply_writes(
    conn: &mut Conn,
    writes: &[MemoryWrite],
    turn_id: Uuid,
) -> Result<(), StoreError> {
    let now = chrono::Utc::now();
    for write in writes {
        match write {
            MemoryWrite::Fact {
                about_event,
                content,
            } => {
                // Nothing when the person was forgotten meanwhile.
                sqlx::query(sql(
                    "INSERT INTO memories (id, scope, identity_id, content, turn_id, created_at)
                     SELECT $1, 'user', identity_id, $2, $3, $4 FROM inbound_events
                      WHERE id = $5 AND identity_id IS NOT NULL",
                ))
                .bind(Uuid::now_v7())
                .bind(without_nul(content))
                .bind(turn_id)
                .bind(now)
                .bind(about_event)
                .execute(&mut *conn)
                .await?;
            }
            MemoryWrite::Note {
                conversation_key,
                content,
            } => {
                sqlx::query(sql(
                    "INSERT INTO memories (id, scope, conversation_key, content, turn_id, created_at)
                     VALUES ($1, 'conversation', $2, $3, $4, $5)",
                ))
                .bind(Uuid::now_v7())
                .bind(conversation_key)
                .bind(without_nul(content))
                .bind(turn_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            MemoryWrite::Forget { id } => {
                sqlx::query(sql("DELETE FROM memories WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The newest `limit` facts about a person, oldest first.
pub async fn facts(
    pool: &sqlx::Pool<Db>,
    identity_id: Uuid,
    limit: i64,
) -> Result<Vec<MemoryItem>, StoreError> {
    let mut rows: Vec<MemoryItem> = sqlx::query_as(sql(
        "SELECT id, content, created_at FROM memories
          WHERE scope = 'user' AND identity_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    ))
    .bind(identity_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// The newest `limit` notes about a group conversation, oldest first.
pub async fn notes(
    pool: &sqlx::Pool<Db>,
    conversation_key: &str,
    limit: i64,
) -> Result<Vec<MemoryItem>, StoreError> {
    let mut rows: Vec<MemoryItem> =
        sqlx::query_as(sql("SELECT id, content, created_at FROM memories
          WHERE scope = 'conversation' AND conversation_key = $1
          ORDER BY created_at DESC, id DESC LIMIT $2"))
        .bind(conversation_key)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.reverse();
    Ok(rows)
}

/// The memory item a handle (the end of its id, see `MemoryItem::handle`) names,
/// among the facts of `identity_id` and the notes of `conversation_key`.
pub async fn find_by_handle(
    pool: &sqlx::Pool<Db>,
    handle: &str,
    identity_id: Option<Uuid>,
    conversation_key: Option<&str>,
) -> Result<Option<MemoryItem>, StoreError> {
    let handle = handle.trim().to_ascii_lowercase();
    if handle.len() < 6 || !handle.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let candidates: Vec<MemoryItem> =
        sqlx::query_as(sql("SELECT id, content, created_at FROM memories
          WHERE (scope = 'user' AND identity_id = $1)
             OR (scope = 'conversation' AND conversation_key = $2)"))
        .bind(identity_id)
        .bind(conversation_key)
        .fetch_all(pool)
        .await?;
    let mut matching = candidates
        .into_iter()
        .filter(|item| item.id.simple().to_string().ends_with(&handle));
    Ok(match (matching.next(), matching.next()) {
        (Some(item), None) => Some(item),
        _ => None,
    })
}

/// Matches ranked at most per search: the newest this many matches of a session
/// or person are ranked (a search for rare words still reaches the whole history),
/// so a search costs the same however long the history and however common its
/// words.
pub(in crate::store) const RANKED: i64 = 100;

/// The facts and notes most relevant to the search terms (see
/// `memory::search_terms`), best first.
pub async fn search_memories(
    pool: &sqlx::Pool<Db>,
    terms: &[String],
    identity_id: Option<Uuid>,
    conversation_key: Option<&str>,
    limit: i64,
) -> Result<Vec<MemoryItem>, StoreError> {
    if terms.is_empty() || (identity_id.is_none() && conversation_key.is_none()) {
        return Ok(Vec::new());
    }
    let (query, statement) = match BACKEND {
        Backend::Postgres => (
            terms.join(" | "),
            "SELECT id, content, created_at FROM (
                SELECT id, content, created_at, search FROM memories
                 WHERE search @@ to_tsquery('english', $1)
                   AND ((scope = 'user' AND identity_id = $2)
                        OR (scope = 'conversation' AND conversation_key = $3))
                 ORDER BY created_at DESC LIMIT $5) AS hits
              ORDER BY ts_rank(search, to_tsquery('english', $1)) DESC, created_at DESC
              LIMIT $4",
        ),
        Backend::Sqlite => {
            let scopes: Vec<String> = identity_id
                .map(|id| format!("scope : \"p{}\"", hex(id.as_bytes())))
                .into_iter()
                .chain(conversation_key.map(|key| format!("scope : \"c{}\"", hex(key.as_bytes()))))
                .collect();
            (
                format!("({}) AND ({})", scopes.join(" OR "), fts5_any(terms)),
                // Ranked below, in Rust (see `rank_by_coverage`).
                "SELECT m.id, m.content, m.created_at
                   FROM (SELECT rowid AS n FROM memories_fts
                          WHERE memories_fts MATCH $1 ORDER BY rowid DESC LIMIT $5) AS hits
                   JOIN memories m ON m.n = hits.n
                  ORDER BY m.n DESC",
            )
        }
    };
    let found: Vec<MemoryItem> = sqlx::query_as(sql(statement))
        .bind(query)
        .bind(identity_id)
        .bind(conversation_key)
        .bind(limit)
        .bind(RANKED)
        // Planned for each call on Postgres, with its search terms (see
        // `store::postgres::layers` for why).
        .persistent(matches!(BACKEND, Backend::Sqlite))
        .fetch_all(pool)
        .await?;
    Ok(match BACKEND {
        Backend::Postgres => found,
        Backend::Sqlite => rank_by_coverage(found, terms, limit, |m| &m.content),
    })
}

/// Transcript messages older than `before_id` most relevant to the search terms,
/// best first (tool steps left out).
pub async fn search_messages(
    pool: &sqlx::Pool<Db>,
    terms: &[String],
    transcript_id: Uuid,
    before_id: i64,
    limit: i64,
) -> Result<Vec<RecalledMessage>, StoreError> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let (query, statement) = match BACKEND {
        Backend::Postgres => (
            terms.join(" | "),
            "SELECT id, role, content, created_at FROM (
                SELECT id, role, content, created_at, search FROM messages
                 WHERE session_id = $2 AND id < $3 AND parts IS NULL
                   AND search @@ to_tsquery('english', $1)
                 ORDER BY id DESC LIMIT $5) AS hits
              ORDER BY ts_rank(search, to_tsquery('english', $1)) DESC, id DESC
              LIMIT $4",
        ),
        Backend::Sqlite => (
            format!(
                "scope : \"s{}\" AND ({})",
                hex(transcript_id.as_bytes()),
                fts5_any(terms)
            ),
            // $2 is in the MATCH string; ranked below, in Rust (see `rank_by_coverage`).
            "SELECT m.id, m.role, m.content, m.created_at
               FROM (SELECT rowid AS id FROM messages_fts
                      WHERE messages_fts MATCH $1 AND rowid < $3
                      ORDER BY rowid DESC LIMIT $5) AS hits
               JOIN messages m ON m.id = hits.id
              ORDER BY m.id DESC",
        ),
    };
    let found: Vec<RecalledMessage> = sqlx::query_as(sql(statement))
        .bind(query)
        .bind(transcript_id)
        .bind(before_id)
        .bind(limit)
        .bind(RANKED)
        // Planned for each call on Postgres, with its search terms (see
        // `store::postgres::layers` for why).
        .persistent(matches!(BACKEND, Backend::Sqlite))
        .fetch_all(pool)
        .await?;
    Ok(match BACKEND {
        Backend::Postgres => found,
        Backend::Sqlite => rank_by_coverage(found, terms, limit, |m| &m.content),
    })
}

/// The best `limit` of `found` (newest first) by how many of the search terms
/// each contains, newest first among equals. SQLite's `bm25()` counts every
/// matching row of the whole index for its statistics on each search, a cost
/// that grows with the store; the matches are few, so they are ranked here.
fn rank_by_coverage<T>(
    found: Vec<T>,
    terms: &[String],
    limit: i64,
    text: impl Fn(&T) -> &str,
) -> Vec<T> {
    // A crude stem: "expires" and "expire" share "expi".
    let stems: Vec<String> = terms
        .iter()
        .map(|t| {
            t.chars()
                .take(t.chars().count().saturating_sub(2).max(4))
                .collect()
        })
        .collect();
    let mut scored: Vec<(usize, usize, T)> = found
        .into_iter()
        .enumerate()
        .map(|(newest, item)| {
            let content = text(&item).to_lowercase();
            let covered = stems
                .iter()
                .filter(|s| content.contains(s.as_str()))
                .count();
            (covered, newest, item)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(limit.max(0) as usize)
        .map(|(_, _, item)| item)
        .collect()
}

/// Any of the terms, each quoted (terms are letters and digits only).
fn fts5_any(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Upper-case hex, as SQLite's `hex()` writes the scope tokens.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Deletes transcript messages older than `cutoff`, with the settled inbound
/// events and finished deliveries of that age. Summaries and facts stay.
pub async fn purge_older_than(
    pool: &sqlx::Pool<Db>,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<PurgeReport, StoreError> {
    let mut tx = super::dialect::begin(pool).await?;
    sqlx::query(sql(
        "DELETE FROM delivery_attempts WHERE delivery_id IN
            (SELECT id FROM deliveries WHERE status <> 'pending' AND created_at < $1)",
    ))
    .bind(cutoff)
    .execute(&mut *tx)
    .await?;
    let deliveries = sqlx::query(sql(
        "DELETE FROM deliveries WHERE status <> 'pending' AND created_at < $1",
    ))
    .bind(cutoff)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut messages = sqlx::query(sql("DELETE FROM messages WHERE created_at < $1"))
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(sql("DELETE FROM tool_results WHERE created_at < $1"))
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
    messages += sqlx::query(sql("DELETE FROM webchat_messages WHERE created_at < $1"))
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let inbound_events = sqlx::query(sql(
        "DELETE FROM inbound_events WHERE status <> 'pending' AND received_at < $1
            AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.inbound_event_id = inbound_events.id)",
    ))
    .bind(cutoff)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(PurgeReport {
        messages,
        inbound_events,
        deliveries,
    })
}
