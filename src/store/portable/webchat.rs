//! The web chat's mailbox (`webchat_messages`): each visitor's messages and the
//! reply parts delivered to them, numbered by `seq`.
//!
//! Written once against [`super::dialect`] and compiled for each backend (see
//! `store::portable`). Every write is idempotent on its `message_key`, so a
//! visitor's retried send and a delivery job's rerun each leave one row. A
//! visitor's replies are delivered one at a time (deliveries of a conversation
//! wait for the earlier ones, `worker::delivery`), and the appends of one
//! visitor take turns (on Postgres an advisory lock held to the commit, since
//! `seq` is handed out at insert but seen at commit; SQLite has one writer), so
//! within one visitor `seq` grows in the order rows commit and a reader's cursor
//! skips nothing, even when the visitor writes while a reply is being delivered.

use uuid::Uuid;

use super::dialect::{BACKEND, Backend, Db, sql};
use crate::store::{StoreError, records::WebchatMessage};

/// Appends a message to a visitor's mailbox unless `message_key` is there already.
pub async fn webchat_append(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    visitor_id: &str,
    role: &str,
    message_key: &str,
    text: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if BACKEND == Backend::Postgres {
        sqlx::query(sql("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"))
            .bind(format!("webchat:{connector_id}:{visitor_id}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(sql(
        "INSERT INTO webchat_messages (connector_id, visitor_id, role, message_key, text, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (connector_id, visitor_id, message_key) DO NOTHING",
    ))
    .bind(connector_id)
    .bind(visitor_id)
    .bind(role)
    .bind(message_key)
    .bind(crate::store::without_nul(text).as_ref())
    .bind(chrono::Utc::now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A visitor's messages after `after_seq`, oldest first, at most `limit`.
pub async fn webchat_messages(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    visitor_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<WebchatMessage>, StoreError> {
    Ok(sqlx::query_as(sql(
        "SELECT seq, role, message_key AS key, text, created_at FROM webchat_messages
          WHERE connector_id = $1 AND visitor_id = $2 AND seq > $3
          ORDER BY seq LIMIT $4",
    ))
    .bind(connector_id)
    .bind(visitor_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The newest `limit` messages of a visitor, oldest first: a page's history.
pub async fn webchat_recent(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    visitor_id: &str,
    limit: i64,
) -> Result<Vec<WebchatMessage>, StoreError> {
    let mut rows: Vec<WebchatMessage> = sqlx::query_as(sql(
        "SELECT seq, role, message_key AS key, text, created_at FROM webchat_messages
          WHERE connector_id = $1 AND visitor_id = $2
          ORDER BY seq DESC LIMIT $3",
    ))
    .bind(connector_id)
    .bind(visitor_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// Deletes the mailboxes of every web chat account of `identity_id`, in the
/// caller's transaction (forgetting a person).
pub async fn forget_visitor(
    tx: &mut sqlx::Transaction<'static, Db>,
    identity_id: Uuid,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql("DELETE FROM webchat_messages WHERE EXISTS
            (SELECT 1 FROM accounts a WHERE a.identity_id = $1
                AND a.connector_id = webchat_messages.connector_id
                AND a.sender_id = webchat_messages.visitor_id)"))
    .bind(identity_id)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
