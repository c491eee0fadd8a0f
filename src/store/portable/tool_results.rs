//! Durable tool results (`tool_results`): what a tool that acts outside the
//! turn's transaction returned, by the call's idempotency key (see
//! `tools::Toolbox::run`). Written once against [`super::dialect`] and compiled
//! for each backend (see `store::portable`).

use super::dialect::{Db, sql};
use crate::store::{StoreError, without_nul};

/// The recorded result of call `call_key`: (content, is_error).
pub async fn tool_result(
    pool: &sqlx::Pool<Db>,
    call_key: &str,
) -> Result<Option<(String, bool)>, StoreError> {
    Ok(sqlx::query_as(sql(
        "SELECT content, is_error FROM tool_results WHERE call_key = $1",
    ))
    .bind(call_key)
    .fetch_optional(pool)
    .await?)
}

/// Records the result of call `call_key`; the first record of a key stays.
pub async fn record_tool_result(
    pool: &sqlx::Pool<Db>,
    call_key: &str,
    tool: &str,
    content: &str,
    is_error: bool,
) -> Result<(), StoreError> {
    sqlx::query(sql(
        "INSERT INTO tool_results (call_key, tool, content, is_error, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (call_key) DO NOTHING",
    ))
    .bind(call_key)
    .bind(tool)
    .bind(without_nul(content).as_ref())
    .bind(is_error)
    .bind(chrono::Utc::now())
    .execute(pool)
    .await?;
    Ok(())
}
