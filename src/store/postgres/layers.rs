//! A turn's memory layers in two round trips.
//!
//! Before its model call a turn reads five bounded layers (`memory::rehydrate`):
//! the transcript's newest messages after its summary mark, the person's facts,
//! the conversation's notes, and the two long-term recalls. Each is a LIMIT on an
//! index, so the cost does not grow with the history. The first four are one
//! statement here: each CTE below is the read of the same name in
//! `store::portable::memory` (which SQLite runs one after the other, see
//! `Store::memory_layers`) and must stay in step with it. Postgres plans that
//! statement once per connection. The message recall follows on its own (the
//! portable read, bounded by the oldest recent message): its plan depends on the
//! session's length and on how common its words are (a plan made for any
//! session and any words sorts a long session's every match, or intersects the
//! word index's matches in every session), so it is planned for each call
//! (`memory::search_messages`), which the whole statement would then be too
//! (measured in `BENCHMARKS.md`, context assembly and session 15).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::memory::RANKED;
use crate::store::{
    StoreError,
    records::{HistoryMessage, LayerReads, LayerRows, MemoryItem},
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

/// Reads the rows of a turn's memory layers but the message recall's, in one
/// statement.
pub async fn read(pool: &PgPool, reads: &LayerReads<'_>) -> Result<LayerRows, StoreError> {
    // NULL when there is nothing to search for: no match, and no notice about
    // an empty query.
    let query = (!reads.terms.is_empty()).then(|| reads.terms.join(" | "));
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
         ), recalled_memories AS (
             SELECT id, content, created_at,
                    row_number() OVER (ORDER BY ts_rank(search, to_tsquery('english', $7)) DESC,
                                                created_at DESC) AS rank
               FROM (SELECT id, content, created_at, search FROM memories
                      WHERE search @@ to_tsquery('english', $7)
                        AND ((scope = 'user' AND identity_id = $4)
                             OR (scope = 'conversation' AND conversation_key = $5))
                      ORDER BY created_at DESC LIMIT $9) AS hits
              ORDER BY rank LIMIT $8
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
         UNION ALL
         SELECT 3, NULL, id, NULL, content, NULL, created_at, rank FROM recalled_memories
         ORDER BY layer, position",
    )
    .bind(reads.transcript_id)
    .bind(reads.summarized_through)
    .bind(reads.history_limit)
    .bind(reads.person)
    .bind(reads.conversation_key)
    .bind(reads.max_facts)
    .bind(query)
    .bind(reads.recall_items)
    .bind(RANKED)
    .fetch_all(pool)
    .await?;
    let mut layers = LayerRows::default();
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
            (layer, ..) => {
                return Err(StoreError::Database(sqlx::Error::Decode(
                    format!("a memory layer row {layer} without the columns of its layer").into(),
                )));
            }
        }
    }
    Ok(layers)
}
