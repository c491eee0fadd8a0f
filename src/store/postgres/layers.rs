//! A turn's memory layers in two statements.
//!
//! Before its model call a turn reads five bounded layers (`memory::rehydrate`):
//! the transcript's newest messages after its summary mark, the person's facts,
//! the conversation's notes, and the two long-term recalls. Each is a LIMIT on an
//! index, so the cost does not grow with the history. Each CTE below is the read
//! of the same name in `store::portable::memory` (which SQLite runs one after
//! the other, see `Store::memory_layers`) and must stay in step with it.
//!
//! The three reads by key are one statement, which Postgres plans once per
//! connection. The two recalls are the second, planned for each call with its
//! search words (an unnamed statement): whether walking the person's or the
//! session's newest rows or the word index is cheaper depends on how common the
//! words are and how long the history, and a plan kept for the connection knows
//! neither. The one Postgres kept after five calls intersected the word index's
//! every match in the whole store with the session's rows (`BENCHMARKS.md`,
//! session 15: 51 ms a turn on a store of 111,000 messages, against 0.4 ms
//! planned with the words; a fact recall among 100,000 facts 6.2 ms against
//! 0.85). The message recall ends at the oldest recent message, so the recalls
//! follow the first statement; planning the whole of one statement for each
//! call costs more than the round trip (context assembly, `BENCHMARKS.md`).
//! sqlx sends an unnamed statement in two round trips (parse and describe, then
//! bind and execute), so the layers take three.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::memory::RANKED;
use crate::store::{
    StoreError,
    records::{HistoryMessage, LayerReads, LayerRows, MemoryItem, RecalledMessage},
};

/// One row of any layer: `layer` says which, and which columns it fills.
#[derive(sqlx::FromRow)]
struct LayerRow {
    layer: i32,
    message_id: Option<i64>,
    item_id: Option<Uuid>,
    role: Option<String>,
    content: String,
    parts: Option<sqlx::types::Json<Vec<crate::providers::Part>>>,
    created_at: Option<DateTime<Utc>>,
}

/// Reads the rows of a turn's memory layers.
pub async fn read(pool: &PgPool, reads: &LayerReads<'_>) -> Result<LayerRows, StoreError> {
    let rows: Vec<LayerRow> = sqlx::query_as(
        "WITH recent AS (
             SELECT id, role, content, parts FROM messages
              WHERE session_id = $1 AND id > $2 ORDER BY id DESC LIMIT $3
         ), facts AS (
             SELECT id, content, created_at FROM memories
              WHERE scope = 'user' AND identity_id = $4
              ORDER BY created_at DESC, id DESC LIMIT $6
         ), notes AS (
             SELECT id, content, created_at FROM memories
              WHERE scope = 'conversation' AND conversation_key = $5
              ORDER BY created_at DESC, id DESC LIMIT $6
         )
         SELECT 0 AS layer, id AS message_id, NULL::uuid AS item_id, role, content, parts,
                NULL::timestamptz AS created_at, id AS position
           FROM recent
         UNION ALL
         SELECT 1, NULL, id, NULL, content, NULL, created_at,
                row_number() OVER (ORDER BY created_at, id)
           FROM facts
         UNION ALL
         SELECT 2, NULL, id, NULL, content, NULL, created_at,
                row_number() OVER (ORDER BY created_at, id)
           FROM notes
         ORDER BY layer, position",
    )
    .bind(reads.transcript_id)
    .bind(reads.summarized_through)
    .bind(reads.history_limit)
    .bind(reads.person)
    .bind(reads.conversation_key)
    .bind(reads.max_facts)
    .fetch_all(pool)
    .await?;
    let mut layers = LayerRows::default();
    sort_into(rows, &mut layers)?;
    if reads.terms.is_empty() {
        return Ok(layers);
    }
    let rows: Vec<LayerRow> = sqlx::query_as(
        "WITH memory_hits AS (
             SELECT id, content, created_at, search FROM memories
              WHERE search @@ to_tsquery('english', $1)
                AND ((scope = 'user' AND identity_id = $2)
                     OR (scope = 'conversation' AND conversation_key = $3))
              ORDER BY created_at DESC LIMIT $7
         ), recalled_memories AS (
             SELECT id, content, created_at,
                    row_number() OVER (ORDER BY ts_rank(search, to_tsquery('english', $1)) DESC,
                                                created_at DESC) AS rank
               FROM memory_hits ORDER BY rank LIMIT $6
         ), message_hits AS (
             SELECT id, role, content, created_at, search FROM messages
              WHERE session_id = $4 AND id < $5 AND parts IS NULL
                AND search @@ to_tsquery('english', $1)
              ORDER BY id DESC LIMIT $7
         ), recalled_messages AS (
             SELECT id, role, content, created_at,
                    row_number() OVER (ORDER BY ts_rank(search, to_tsquery('english', $1)) DESC,
                                                id DESC) AS rank
               FROM message_hits ORDER BY rank LIMIT $6
         )
         SELECT 3 AS layer, NULL::int8 AS message_id, id AS item_id, NULL::text AS role, content,
                NULL::jsonb AS parts, created_at, rank AS position
           FROM recalled_memories
         UNION ALL
         SELECT 4, id, NULL, role, content, NULL, created_at, rank FROM recalled_messages
         ORDER BY layer, position",
    )
    .bind(reads.terms.join(" | "))
    .bind(reads.person)
    .bind(reads.conversation_key)
    .bind(reads.transcript_id)
    .bind(layers.recall_before(reads.summarized_through))
    .bind(reads.recall_items)
    .bind(RANKED)
    .persistent(false)
    .fetch_all(pool)
    .await?;
    sort_into(rows, &mut layers)?;
    Ok(layers)
}

/// Puts each row into its layer, in the order given.
fn sort_into(rows: Vec<LayerRow>, layers: &mut LayerRows) -> Result<(), StoreError> {
    for row in rows {
        match (
            row.layer,
            row.message_id,
            row.item_id,
            row.role,
            row.created_at,
        ) {
            (0, Some(id), None, Some(role), None) => layers.recent.push(HistoryMessage {
                id,
                role,
                content: row.content,
                parts: row.parts,
            }),
            (1..=3, None, Some(id), None, Some(created_at)) => {
                let item = MemoryItem {
                    id,
                    content: row.content,
                    created_at,
                };
                match row.layer {
                    1 => layers.facts.push(item),
                    2 => layers.notes.push(item),
                    _ => layers.recalled_memories.push(item),
                }
            }
            (4, Some(id), None, Some(role), Some(created_at)) => {
                layers.recalled_messages.push(RecalledMessage {
                    id,
                    role,
                    content: row.content,
                    created_at,
                })
            }
            (layer, ..) => {
                return Err(StoreError::Database(sqlx::Error::Decode(
                    format!("a memory layer row {layer} without the columns of its layer").into(),
                )));
            }
        }
    }
    Ok(())
}
