//! People: accounts, identities, link codes, merging and forgetting.
//!
//! Written once against [`super::dialect`] and compiled for each backend (see
//! `store::portable`).
//!
//! * Every account (connector, sender id) maps to exactly one identity, created on
//!   first contact by [`resolve_account`] inside the receiver's transaction.
//! * Linking is by a one-time code: [`create_link_code`] gives one to an account;
//!   [`redeem_link_code`] from another account consumes it (single use, expiring,
//!   failed attempts limited per account) and merges the two identities in the
//!   same transaction.
//! * [`merge`] is deterministic: the older identity (UUIDv7 order) survives; the
//!   younger one's accounts, facts and direct sessions move to it. Where both had
//!   a direct session with the same agent, the younger session's transcript moves
//!   into the older one (messages keep their ids, so the transcripts interleave in
//!   the order they were written) and the younger session is marked merged: turns
//!   it still has to answer write their transcript to the survivor.
//! * [`forget`] deletes everything of one person in one transaction.

use sqlx::{Database, Row};
use uuid::Uuid;

use super::dialect::{Db, FOR_NO_KEY_UPDATE, FOR_SHARE, FOR_UPDATE, begin, sql};
use crate::store::portable::LinkPolicy;
use crate::store::{
    StoreError,
    records::{Account, ForgetReport, LinkOutcome},
};

type Conn = <Db as Database>::Connection;

/// The identity of an account, created with the account on first contact.
pub async fn resolve_account(
    conn: &mut Conn,
    connector_id: &str,
    channel: &str,
    sender_id: &str,
    sender_name: Option<&str>,
) -> Result<Uuid, StoreError> {
    // FOR SHARE: a concurrent merge (which updates this row) finishes first, so
    // the event lands in the surviving identity's session.
    let select = format!(
        "SELECT identity_id FROM accounts WHERE connector_id = $1 AND sender_id = $2{FOR_SHARE}"
    );
    let existing: Option<Uuid> = sqlx::query_scalar(sql(&select))
        .bind(connector_id)
        .bind(sender_id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(identity_id) = existing {
        return Ok(identity_id);
    }
    let identity_id = Uuid::now_v7();
    let now = chrono::Utc::now();
    sqlx::query(sql(
        "INSERT INTO identities (id, display_name, created_at) VALUES ($1, $2, $3)",
    ))
    .bind(identity_id)
    .bind(sender_name)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(sql(
        "INSERT INTO accounts (connector_id, sender_id, channel, identity_id, display_name, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (connector_id, sender_id) DO NOTHING",
    ))
    .bind(connector_id)
    .bind(sender_id)
    .bind(channel)
    .bind(identity_id)
    .bind(sender_name)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(identity_id);
    }
    // A concurrent first contact created the account first: use its identity.
    sqlx::query(sql("DELETE FROM identities WHERE id = $1"))
        .bind(identity_id)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(sql(&select))
        .bind(connector_id)
        .bind(sender_id)
        .fetch_one(&mut *conn)
        .await?)
}

/// The identity of an account, if it has written to us.
pub async fn identity_of(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    sender_id: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(sql(
        "SELECT identity_id FROM accounts WHERE connector_id = $1 AND sender_id = $2",
    ))
    .bind(connector_id)
    .bind(sender_id)
    .fetch_optional(pool)
    .await?)
}

/// The direct conversation (and thread) in which `sender_id` last wrote to us on
/// `connector_id`: where a message to them on that connector goes.
pub async fn last_direct_conversation(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    sender_id: &str,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    Ok(
        sqlx::query_as(sql("SELECT conversation_id, thread_id FROM inbound_events
          WHERE connector_id = $1 AND sender_id = $2 AND is_group = $3
          ORDER BY received_at DESC LIMIT 1"))
        .bind(connector_id)
        .bind(sender_id)
        .bind(false)
        .fetch_optional(pool)
        .await?,
    )
}

/// The accounts of an identity, oldest first; empty for an unknown identity.
pub async fn accounts(
    pool: &sqlx::Pool<Db>,
    identity_id: Uuid,
) -> Result<Vec<Account>, StoreError> {
    Ok(sqlx::query_as(sql(
        "SELECT connector_id, sender_id, channel, display_name FROM accounts
          WHERE identity_id = $1 ORDER BY created_at, connector_id, sender_id",
    ))
    .bind(identity_id)
    .fetch_all(pool)
    .await?)
}

/// A fresh six-digit code for `identity_id`, asked for by `account`
/// ("<connector>:<sender id>"). Expired codes are swept on the way.
pub async fn create_link_code(
    pool: &sqlx::Pool<Db>,
    identity_id: Uuid,
    account: &str,
    policy: LinkPolicy,
    now_ms: i64,
) -> Result<String, StoreError> {
    let mut tx = begin(pool).await?;
    // Kept a while after expiry, so a rerun of the turn that redeemed one still
    // finds it (see `LinkOutcome::AlreadyLinked`).
    sqlx::query(sql("DELETE FROM link_codes WHERE expires_ms <= $1"))
        .bind(now_ms - policy.code_ttl_ms)
        .execute(&mut *tx)
        .await?;
    loop {
        // From the OS random source (UUIDv4), not a seeded PRNG: codes must not
        // be predictable.
        let code = format!("{:06}", Uuid::new_v4().as_u128() % 1_000_000);
        let inserted = sqlx::query(sql(
            "INSERT INTO link_codes (code, identity_id, created_by, expires_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (code) DO NOTHING",
        ))
        .bind(&code)
        .bind(identity_id)
        .bind(account)
        .bind(now_ms + policy.code_ttl_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(code);
        }
    }
}

/// Redeems `code` from the account (`connector_id`, `sender_id`): merges its
/// identity with the code's, in one transaction with the code's consumption.
pub async fn redeem_link_code(
    pool: &sqlx::Pool<Db>,
    code: &str,
    connector_id: &str,
    sender_id: &str,
    policy: LinkPolicy,
    now_ms: i64,
) -> Result<LinkOutcome, StoreError> {
    let account = format!("{connector_id}:{sender_id}");
    let code: String = code.chars().filter(char::is_ascii_digit).collect();
    let mut tx = begin(pool).await?;
    let failures: i64 = sqlx::query_scalar(sql(
        "SELECT COUNT(*) FROM link_failures WHERE account = $1 AND at_ms > $2",
    ))
    .bind(&account)
    .bind(now_ms - policy.failure_window_ms)
    .fetch_one(&mut *tx)
    .await?;
    if failures >= policy.max_failures {
        return Ok(LinkOutcome::TooManyAttempts);
    }
    let row = sqlx::query(sql(&format!(
        "SELECT identity_id, expires_ms, used_by FROM link_codes WHERE code = $1{FOR_UPDATE}"
    )))
    .bind(&code)
    .fetch_optional(&mut *tx)
    .await?;
    // Locked with the code's row: a concurrent merge that moves this account
    // (or the code) to another identity finishes before these are read.
    let mine: Option<Uuid> = sqlx::query_scalar(sql(&format!(
        "SELECT identity_id FROM accounts WHERE connector_id = $1 AND sender_id = $2{FOR_UPDATE}"
    )))
    .bind(connector_id)
    .bind(sender_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (Some(row), Some(mine)) = (row, mine) else {
        return fail(tx, &account, now_ms).await;
    };
    let owner: Uuid = row.try_get("identity_id")?;
    let expires_ms: i64 = row.try_get("expires_ms")?;
    let used_by: Option<String> = row.try_get("used_by")?;
    match used_by {
        Some(by) if by == account => {
            tx.commit().await?;
            return Ok(LinkOutcome::AlreadyLinked { identity_id: mine });
        }
        Some(_) => return fail(tx, &account, now_ms).await,
        None if expires_ms <= now_ms => return fail(tx, &account, now_ms).await,
        None => {}
    }
    sqlx::query(sql(
        "UPDATE link_codes SET used_by = $2, used_ms = $3 WHERE code = $1",
    ))
    .bind(&code)
    .bind(&account)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    let identity_id = merge(&mut tx, owner, mine).await?;
    tx.commit().await?;
    Ok(LinkOutcome::Linked { identity_id })
}

async fn fail(
    mut tx: sqlx::Transaction<'static, Db>,
    account: &str,
    now_ms: i64,
) -> Result<LinkOutcome, StoreError> {
    sqlx::query(sql(
        "INSERT INTO link_failures (account, at_ms) VALUES ($1, $2)",
    ))
    .bind(account)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LinkOutcome::Invalid)
}

/// Links two identities (an operator's `identity link`): the merge of [`merge`]
/// in its own transaction. None when either identity is unknown.
pub async fn link(pool: &sqlx::Pool<Db>, a: Uuid, b: Uuid) -> Result<Option<Uuid>, StoreError> {
    let mut tx = begin(pool).await?;
    let known: i64 = sqlx::query_scalar(sql(
        "SELECT COUNT(*) FROM identities WHERE id = $1 OR id = $2",
    ))
    .bind(a)
    .bind(b)
    .fetch_one(&mut *tx)
    .await?;
    if known < if a == b { 1 } else { 2 } {
        return Ok(None);
    }
    let survivor = merge(&mut tx, a, b).await?;
    tx.commit().await?;
    Ok(Some(survivor))
}

/// Merges two identities into the older one; returns the survivor.
pub async fn merge(conn: &mut Conn, a: Uuid, b: Uuid) -> Result<Uuid, StoreError> {
    if a == b {
        return Ok(a);
    }
    let (survivor, absorbed) = if a < b { (a, b) } else { (b, a) };
    // Concurrent merges of the same people wait for each other; the absorbed
    // person's sessions are locked before their messages move, so a turn
    // committing there either finishes first or sees `merged_into` afterwards.
    sqlx::query(sql(&format!(
        "SELECT id FROM identities WHERE id = $1 OR id = $2 ORDER BY id{FOR_NO_KEY_UPDATE}"
    )))
    .bind(survivor)
    .bind(absorbed)
    .fetch_all(&mut *conn)
    .await?;
    for statement in [
        "UPDATE accounts SET identity_id = $1 WHERE identity_id = $2",
        // The same fact known on both sides is kept once.
        "DELETE FROM memories WHERE identity_id = $2 AND content IN
            (SELECT content FROM memories WHERE identity_id = $1)",
        "UPDATE memories SET identity_id = $1 WHERE identity_id = $2",
        "UPDATE inbound_events SET identity_id = $1 WHERE identity_id = $2",
        "UPDATE messages SET identity_id = $1 WHERE identity_id = $2",
        "UPDATE link_codes SET identity_id = $1 WHERE identity_id = $2",
        "UPDATE identities SET display_name = (SELECT display_name FROM identities WHERE id = $2)
          WHERE id = $1 AND display_name IS NULL",
    ] {
        sqlx::query(sql(statement))
            .bind(survivor)
            .bind(absorbed)
            .execute(&mut *conn)
            .await?;
    }
    let absorbed_sessions: Vec<(Uuid, String)> = sqlx::query_as(sql(&format!(
        "SELECT id, agent FROM sessions
          WHERE identity_id = $1 AND is_group = $2 AND merged_into IS NULL ORDER BY id{FOR_UPDATE}"
    )))
    .bind(absorbed)
    .bind(false)
    .fetch_all(&mut *conn)
    .await?;
    let survivor_key = format!("direct:{survivor}");
    for (session_id, agent) in absorbed_sessions {
        let target: Option<Uuid> = sqlx::query_scalar(sql(
            "SELECT id FROM sessions WHERE agent = $1 AND session_key = $2",
        ))
        .bind(&agent)
        .bind(&survivor_key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(target) = target else {
            sqlx::query(sql("UPDATE sessions SET session_key = $2 WHERE id = $1"))
                .bind(session_id)
                .bind(&survivor_key)
                .execute(&mut *conn)
                .await?;
            continue;
        };
        sqlx::query(sql(
            "UPDATE messages SET session_id = $1 WHERE session_id = $2",
        ))
        .bind(target)
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
        // Both summaries, the survivor's first; the older of the two summary
        // marks, so no message falls between a summary and the verbatim window.
        sqlx::query(sql(
            "UPDATE sessions SET
                summary = CASE WHEN summary = '' THEN (SELECT summary FROM sessions WHERE id = $2)
                               WHEN (SELECT summary FROM sessions WHERE id = $2) = '' THEN summary
                               ELSE summary || '\n\n' || (SELECT summary FROM sessions WHERE id = $2) END,
                summarized_through = CASE
                    WHEN summarized_through < (SELECT summarized_through FROM sessions WHERE id = $2)
                    THEN summarized_through
                    ELSE (SELECT summarized_through FROM sessions WHERE id = $2) END
              WHERE id = $1",
        ))
        .bind(target)
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(sql("UPDATE sessions SET merged_into = $1,
                    session_key = CASE WHEN id = $2 THEN $3 ELSE session_key END,
                    summary = CASE WHEN id = $2 THEN '' ELSE summary END,
                    summarized_through = CASE WHEN id = $2 THEN 0 ELSE summarized_through END
              WHERE id = $2 OR merged_into = $2"))
        .bind(target)
        .bind(session_id)
        .bind(format!("merged:{session_id}"))
        .execute(&mut *conn)
        .await?;
    }
    for statement in [
        "UPDATE sessions SET identity_id = $1 WHERE identity_id = $2",
        "DELETE FROM identities WHERE id = $2",
    ] {
        sqlx::query(sql(statement))
            .bind(survivor)
            .bind(absorbed)
            .execute(&mut *conn)
            .await?;
    }
    Ok(survivor)
}

/// Moves one account to a new identity of its own (an operator's `identity
/// unlink`). Its past messages and facts stay with the identity it leaves.
/// None when the account is unknown.
pub async fn unlink(
    pool: &sqlx::Pool<Db>,
    connector_id: &str,
    sender_id: &str,
) -> Result<Option<Uuid>, StoreError> {
    let mut tx = begin(pool).await?;
    let name: Option<Option<String>> = sqlx::query_scalar(sql(
        "SELECT display_name FROM accounts WHERE connector_id = $1 AND sender_id = $2",
    ))
    .bind(connector_id)
    .bind(sender_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(name) = name else {
        return Ok(None);
    };
    let identity_id = Uuid::now_v7();
    sqlx::query(sql(
        "INSERT INTO identities (id, display_name, created_at) VALUES ($1, $2, $3)",
    ))
    .bind(identity_id)
    .bind(name)
    .bind(chrono::Utc::now())
    .execute(&mut *tx)
    .await?;
    sqlx::query(sql(
        "UPDATE accounts SET identity_id = $3 WHERE connector_id = $1 AND sender_id = $2",
    ))
    .bind(connector_id)
    .bind(sender_id)
    .bind(identity_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(identity_id))
}

/// Deletes everything of one person: accounts, direct sessions with their whole
/// transcript, turns and deliveries, their messages in group conversations (and
/// the turns that answered only them), the group summaries that may contain them,
/// their facts and link codes. One transaction. None for an unknown identity.
pub async fn forget(
    pool: &sqlx::Pool<Db>,
    identity_id: Uuid,
) -> Result<Option<ForgetReport>, StoreError> {
    let mut tx = begin(pool).await?;
    let known: i64 = sqlx::query_scalar(sql("SELECT COUNT(*) FROM identities WHERE id = $1"))
        .bind(identity_id)
        .fetch_one(&mut *tx)
        .await?;
    if known == 0 {
        return Ok(None);
    }
    // Receivers and turns touching this person's rows finish first (or wait).
    for statement in [
        "SELECT connector_id FROM accounts WHERE identity_id = $1",
        "SELECT id FROM sessions WHERE identity_id = $1",
    ] {
        sqlx::query(sql(&format!("{statement}{FOR_UPDATE}")))
            .bind(identity_id)
            .fetch_all(&mut *tx)
            .await?;
    }
    let mut report = ForgetReport::default();
    let direct: Vec<Uuid> = sqlx::query_scalar(sql(
        "SELECT id FROM sessions WHERE identity_id = $1 AND is_group = $2",
    ))
    .bind(identity_id)
    .bind(false)
    .fetch_all(&mut *tx)
    .await?;
    // Turns answering only this person in group conversations.
    let solo_turns: Vec<Uuid> =
        sqlx::query_scalar(sql("SELECT DISTINCT e.turn_id FROM inbound_events e
          WHERE e.identity_id = $1 AND e.is_group = $2 AND e.turn_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM inbound_events o WHERE o.turn_id = e.turn_id
                              AND (o.identity_id IS NULL OR o.identity_id <> $1))"))
        .bind(identity_id)
        .bind(true)
        .fetch_all(&mut *tx)
        .await?;
    report.summaries_dropped = sqlx::query(sql(
        "UPDATE sessions SET summary = '', summarized_through = 0
          WHERE is_group = $2 AND summary <> '' AND EXISTS
            (SELECT 1 FROM messages m WHERE m.session_id = sessions.id AND m.identity_id = $1
                AND m.id <= sessions.summarized_through)",
    ))
    .bind(identity_id)
    .bind(true)
    .execute(&mut *tx)
    .await?
    .rows_affected();

    for turn_id in &solo_turns {
        report.deliveries += delete_turn_output(&mut tx, "turn_id", *turn_id).await?;
        report.messages += sqlx::query(sql("DELETE FROM messages WHERE turn_id = $1"))
            .bind(turn_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(sql("DELETE FROM model_calls WHERE turn_id = $1"))
            .bind(turn_id)
            .execute(&mut *tx)
            .await?;
    }
    // Their reminders, before the turns they belong to.
    super::scheduled::forget(&mut tx, identity_id, None).await?;
    for session_id in &direct {
        super::scheduled::forget(&mut tx, identity_id, Some(*session_id)).await?;
    }
    for turn_id in &solo_turns {
        sqlx::query(sql("DELETE FROM scheduled_messages WHERE turn_id = $1"))
            .bind(turn_id)
            .execute(&mut *tx)
            .await?;
    }
    for session_id in &direct {
        report.deliveries += delete_turn_output(&mut tx, "session_id", *session_id).await?;
        report.messages += sqlx::query(sql("DELETE FROM messages WHERE session_id = $1
                OR turn_id IN (SELECT id FROM turns WHERE session_id = $1)"))
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(sql(
            "DELETE FROM model_calls WHERE turn_id IN (SELECT id FROM turns WHERE session_id = $1)",
        ))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    }
    report.messages += sqlx::query(sql("DELETE FROM messages WHERE identity_id = $1"))
        .bind(identity_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    report.inbound_events += sqlx::query(sql("DELETE FROM inbound_events WHERE identity_id = $1"))
        .bind(identity_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for turn_id in &solo_turns {
        report.turns += sqlx::query(sql("DELETE FROM turns WHERE id = $1"))
            .bind(turn_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    for session_id in &direct {
        report.inbound_events +=
            sqlx::query(sql("DELETE FROM inbound_events WHERE session_id = $1"))
                .bind(session_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        report.turns += sqlx::query(sql("DELETE FROM turns WHERE session_id = $1"))
            .bind(session_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    sqlx::query(sql(
        "UPDATE sessions SET merged_into = NULL WHERE identity_id = $1",
    ))
    .bind(identity_id)
    .execute(&mut *tx)
    .await?;
    report.sessions = sqlx::query(sql(
        "DELETE FROM sessions WHERE identity_id = $1 AND is_group = $2",
    ))
    .bind(identity_id)
    .bind(false)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    report.memories = sqlx::query(sql("DELETE FROM memories WHERE identity_id = $1"))
        .bind(identity_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for statement in [
        "DELETE FROM link_failures WHERE account IN
            (SELECT connector_id || ':' || sender_id FROM accounts WHERE identity_id = $1)",
        "DELETE FROM link_codes WHERE identity_id = $1",
    ] {
        sqlx::query(sql(statement))
            .bind(identity_id)
            .execute(&mut *tx)
            .await?;
    }
    report.messages += super::webchat::forget_visitor(&mut tx, identity_id).await?;
    report.accounts = sqlx::query(sql("DELETE FROM accounts WHERE identity_id = $1"))
        .bind(identity_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(sql("DELETE FROM identities WHERE id = $1"))
        .bind(identity_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(report))
}

/// Deletes the deliveries (and their attempts) of the turns selected by
/// `column` (`turn_id` or `session_id`) = `id`; returns how many deliveries.
async fn delete_turn_output(conn: &mut Conn, column: &str, id: Uuid) -> Result<u64, StoreError> {
    sqlx::query(sql(&format!(
        "DELETE FROM delivery_attempts WHERE delivery_id IN
            (SELECT id FROM deliveries WHERE {column} = $1)"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query(sql(&format!("DELETE FROM deliveries WHERE {column} = $1")))
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}
