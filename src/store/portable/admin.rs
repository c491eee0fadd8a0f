//! The admin queue: listing deliveries, retrying and discarding dead ones; failed
//! turns; queue depth, sessions, transcripts and usage. Written once for both
//! backends (see `store::portable`).
//!
//! Only a `dead` delivery is ever retried or discarded, by one conditional
//! UPDATE under the row lock, so a delivery that is running or delivered is never
//! touched and two concurrent retries of one delivery give it one new attempt. A
//! retry starts from the reply's earliest dead part (parts go out in order): that
//! part gets exactly one new attempt (`max_attempts = attempts + 1`), its job is
//! queued in the same transaction, and the later parts that died waiting on it
//! (`earlier_part_failed`) go back to pending, to be queued one after the other
//! as each part is delivered.

use microclaw_jobs::DeliveryJob;
use uuid::Uuid;

use super::dialect::{BACKEND, Backend, Db, FOR_UPDATE, begin, enqueue, sql};
use crate::store::{
    StoreError,
    records::{
        AdminOutcome, DeliveryAttempt, DeliveryDetail, DeliveryFilter, DeliverySummary, PurgedJobs,
        QueueStats, RerunEvent, SessionSummary, TranscriptMessage, TurnFilter, TurnSummary,
        UsageRow,
    },
};

const SUMMARY_COLUMNS: &str =
    "id, turn_id, session_id, connector_id, channel, part, status, attempts,
    max_attempts, error_class, last_error, created_at, dead_at, discard_reason";

/// The WHERE clause of a filter; its values bind as $1..$6.
const FILTER: &str = "($1 IS NULL OR status = $1) AND ($2 IS NULL OR channel = $2)
    AND ($3 IS NULL OR connector_id = $3) AND ($4 IS NULL OR error_class = $4)
    AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)";

/// Deliveries matching `filter`, newest first, `limit` at most, older than the
/// cursor `before` (the last id of the previous page).
pub async fn list_deliveries(
    pool: &sqlx::Pool<Db>,
    filter: &DeliveryFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliverySummary>, StoreError> {
    Ok(sqlx::query_as(sql(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM deliveries
          WHERE {FILTER} AND ($7 IS NULL OR id < $7)
          ORDER BY id DESC LIMIT $8"
    )))
    .bind(&filter.status)
    .bind(&filter.channel)
    .bind(&filter.connector)
    .bind(&filter.error_class)
    .bind(filter.since)
    .bind(filter.until)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The ids of the dead deliveries matching `filter` (a bulk action's selection).
pub async fn dead_delivery_ids(
    pool: &sqlx::Pool<Db>,
    filter: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(sql(&format!(
        "SELECT id FROM deliveries WHERE {FILTER} AND status = 'dead' ORDER BY id LIMIT $7"
    )))
    .bind(&filter.status)
    .bind(&filter.channel)
    .bind(&filter.connector)
    .bind(&filter.error_class)
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One delivery with its text, target and attempts.
pub async fn show_delivery(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
) -> Result<Option<DeliveryDetail>, StoreError> {
    let Some(summary): Option<DeliverySummary> = sqlx::query_as(sql(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM deliveries WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    type Rest = (
        String,
        sqlx::types::Json<serde_json::Value>,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let (text, target, trace_id, delivered_at): Rest = sqlx::query_as(sql(
        "SELECT text, target, trace_id, delivered_at FROM deliveries WHERE id = $1",
    ))
    .bind(id)
    .fetch_one(pool)
    .await?;
    let history: Vec<DeliveryAttempt> = sqlx::query_as(sql(
        "SELECT attempt, started_at, finished_at, outcome, status_code, error
           FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
    ))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(DeliveryDetail {
        summary,
        text,
        target: target.0,
        trace_id,
        delivered_at,
        history,
    }))
}

/// Gives a dead delivery's reply one new attempt from its earliest dead part.
pub async fn retry_delivery(pool: &sqlx::Pool<Db>, id: Uuid) -> Result<AdminOutcome, StoreError> {
    let mut tx = begin(pool).await?;
    let row: Option<(Uuid, String, String)> = sqlx::query_as(sql(&format!(
        "SELECT turn_id, connector_id, status FROM deliveries WHERE id = $1{FOR_UPDATE}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((turn_id, connector_id, status)) = row else {
        return Ok(AdminOutcome::NotFound);
    };
    if status != "dead" {
        return Ok(AdminOutcome::Skipped { status });
    }
    let parts: Vec<(Uuid, i32, i32, String, Option<String>)> = sqlx::query_as(sql(&format!(
        "SELECT id, part, attempts, trace_id, error_class FROM deliveries
          WHERE turn_id = $1 AND connector_id = $2 AND status = 'dead'
          ORDER BY part{FOR_UPDATE}"
    )))
    .bind(turn_id)
    .bind(&connector_id)
    .fetch_all(&mut *tx)
    .await?;
    let Some((first, first_part, attempts, trace_id, _)) = parts.first().cloned() else {
        return Ok(AdminOutcome::Skipped { status });
    };
    sqlx::query(sql(
        "UPDATE deliveries SET status = 'pending', dead_at = NULL, error_class = NULL,
                last_error = NULL, next_attempt_at = $2, max_attempts = attempts + 1
          WHERE id = $1 AND status = 'dead'",
    ))
    .bind(first)
    .bind(chrono::Utc::now())
    .execute(&mut *tx)
    .await?;
    let mut ids = vec![first];
    for (later, part, _, _, class) in parts.iter().skip(1) {
        if *part > first_part && class.as_deref() == Some("earlier_part_failed") {
            sqlx::query(sql(
                "UPDATE deliveries SET status = 'pending', dead_at = NULL, error_class = NULL,
                        last_error = NULL
                  WHERE id = $1 AND status = 'dead'",
            ))
            .bind(later)
            .execute(&mut *tx)
            .await?;
            ids.push(*later);
        }
    }
    let job = DeliveryJob::new(first, attempts as u32 + 1, &trace_id);
    enqueue(
        &mut tx,
        &job,
        job.idempotency_key(),
        crate::store::DELIVERY_JOB_ATTEMPTS,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(AdminOutcome::Done { ids })
}

/// Discards a dead delivery, keeping the reason.
pub async fn discard_delivery(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
    reason: &str,
) -> Result<AdminOutcome, StoreError> {
    let mut tx = begin(pool).await?;
    let status: Option<String> = sqlx::query_scalar(sql(&format!(
        "SELECT status FROM deliveries WHERE id = $1{FOR_UPDATE}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match status {
        None => AdminOutcome::NotFound,
        Some(status) if status != "dead" => AdminOutcome::Skipped { status },
        Some(_) => {
            sqlx::query(sql(
                "UPDATE deliveries SET status = 'discarded', discard_reason = $2, discarded_at = $3
                  WHERE id = $1 AND status = 'dead'",
            ))
            .bind(id)
            .bind(reason)
            .bind(chrono::Utc::now())
            .execute(&mut *tx)
            .await?;
            AdminOutcome::Done { ids: vec![id] }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Claims an Idempotency-Key: None when it is new (the caller acts, then calls
/// [`finish_request`]), else the answer stored for it (None inside when the
/// first request is still running).
pub async fn claim_request(
    pool: &sqlx::Pool<Db>,
    key: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let mut tx = begin(pool).await?;
    let inserted = sqlx::query(sql(
        "INSERT INTO admin_requests (key, created_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    ))
    .bind(key)
    .bind(chrono::Utc::now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let stored = if inserted == 1 {
        None
    } else {
        Some(
            sqlx::query_scalar(sql("SELECT response FROM admin_requests WHERE key = $1"))
                .bind(key)
                .fetch_one(&mut *tx)
                .await?,
        )
    };
    tx.commit().await?;
    Ok(stored)
}

/// Stores the answer of a claimed request.
pub async fn finish_request(
    pool: &sqlx::Pool<Db>,
    key: &str,
    response: &str,
) -> Result<(), StoreError> {
    sqlx::query(sql(
        "UPDATE admin_requests SET response = $2 WHERE key = $1",
    ))
    .bind(key)
    .bind(response)
    .execute(pool)
    .await?;
    Ok(())
}

/// Depth and age of every queue.
pub async fn queue_stats(pool: &sqlx::Pool<Db>) -> Result<Vec<QueueStats>, StoreError> {
    let statement = match BACKEND {
        Backend::Postgres => {
            "SELECT job_type AS queue,
                    CAST(SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at <= now() THEN 1 ELSE 0 END) AS BIGINT) AS waiting,
                    CAST(SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at > now() THEN 1 ELSE 0 END) AS BIGINT) AS delayed,
                    CAST(SUM(CASE WHEN status = 'Running' THEN 1 ELSE 0 END) AS BIGINT) AS running,
                    CAST(SUM(CASE WHEN status IN ('Failed', 'Killed') THEN 1 ELSE 0 END) AS BIGINT) AS failed,
                    CAST(SUM(CASE WHEN status = 'Done' THEN 1 ELSE 0 END) AS BIGINT) AS done,
                    CAST(EXTRACT(EPOCH FROM now() - MIN(CASE WHEN status IN ('Pending', 'Queued')
                         AND run_at <= now() THEN run_at END)) AS BIGINT) AS oldest_waiting_secs
               FROM apalis.jobs GROUP BY job_type ORDER BY job_type"
        }
        Backend::Sqlite => {
            "SELECT job_type AS queue,
                    SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at <= CAST(strftime('%s', 'now') AS INTEGER) THEN 1 ELSE 0 END) AS waiting,
                    SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at > CAST(strftime('%s', 'now') AS INTEGER) THEN 1 ELSE 0 END) AS delayed,
                    SUM(CASE WHEN status = 'Running' THEN 1 ELSE 0 END) AS running,
                    SUM(CASE WHEN status IN ('Failed', 'Killed') THEN 1 ELSE 0 END) AS failed,
                    SUM(CASE WHEN status = 'Done' THEN 1 ELSE 0 END) AS done,
                    CAST(strftime('%s', 'now') AS INTEGER) - MIN(CASE WHEN status IN ('Pending', 'Queued')
                         AND run_at <= CAST(strftime('%s', 'now') AS INTEGER) THEN run_at END) AS oldest_waiting_secs
               FROM Jobs GROUP BY job_type ORDER BY job_type"
        }
    };
    Ok(sqlx::query_as(sql(statement)).fetch_all(pool).await?)
}

const TURN_COLUMNS: &str =
    "t.id, t.session_id, s.agent, t.status, t.model, t.error, t.model_attempts,
    (SELECT COUNT(*) FROM inbound_events e WHERE e.turn_id = t.id) AS events,
    t.started_at, t.finished_at, t.resolution, t.resolution_reason";

/// Turns matching `filter`, newest first, older than the cursor `before`.
pub async fn list_turns(
    pool: &sqlx::Pool<Db>,
    filter: &TurnFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TurnSummary>, StoreError> {
    Ok(sqlx::query_as(sql(&format!(
        "SELECT {TURN_COLUMNS} FROM turns t JOIN sessions s ON s.id = t.session_id
          WHERE ($1 IS NULL OR t.status = $1) AND ($2 IS NULL OR s.agent = $2)
            AND ($3 IS NULL OR (t.resolution IS NULL) = $3)
            AND ($4 IS NULL OR t.finished_at >= $4) AND ($5 IS NULL OR t.finished_at < $5)
            AND ($6 IS NULL OR t.id < $6)
          ORDER BY t.id DESC LIMIT $7"
    )))
    .bind(&filter.status)
    .bind(&filter.agent)
    .bind(filter.unresolved)
    .bind(filter.since)
    .bind(filter.until)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn show_turn(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
) -> Result<Option<(TurnSummary, Vec<TranscriptMessage>)>, StoreError> {
    let Some(turn): Option<TurnSummary> = sqlx::query_as(sql(&format!(
        "SELECT {TURN_COLUMNS} FROM turns t JOIN sessions s ON s.id = t.session_id WHERE t.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let messages = sqlx::query_as(sql(&format!(
        "SELECT {TRANSCRIPT_COLUMNS} FROM messages WHERE turn_id = $1 ORDER BY id"
    )))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some((turn, messages)))
}

/// The inbound messages a failed, unresolved turn answered, for a rerun; or why
/// it can't be rerun.
pub async fn failed_turn_events(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
) -> Result<Result<(String, Vec<RerunEvent>), AdminOutcome>, StoreError> {
    let turn: Option<(String, Option<String>, String)> = sqlx::query_as(sql(
        "SELECT t.status, t.resolution, s.agent FROM turns t JOIN sessions s ON s.id = t.session_id
          WHERE t.id = $1",
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let (agent, status) = match turn {
        None => return Ok(Err(AdminOutcome::NotFound)),
        Some((status, Some(resolution), _)) => {
            return Ok(Err(AdminOutcome::Skipped {
                status: format!("{status}, {resolution}"),
            }));
        }
        Some((status, None, agent)) => (agent, status),
    };
    if status != "failed" {
        return Ok(Err(AdminOutcome::Skipped { status }));
    }
    let events = sqlx::query_as(sql(
        "SELECT connector_id, channel, platform_message_id, sender_id, sender_name,
                conversation_id, thread_id, is_group, text, attachments
           FROM inbound_events WHERE turn_id = $1 ORDER BY seq",
    ))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Ok((agent, events)))
}

/// Marks an unresolved failed turn `rerun` or `discarded`; false when it already
/// was resolved (or is not failed).
pub async fn resolve_turn(
    pool: &sqlx::Pool<Db>,
    id: Uuid,
    resolution: &str,
    reason: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(sql(
        "UPDATE turns SET resolution = $2, resolution_reason = $3, resolved_at = $4
          WHERE id = $1 AND status = 'failed' AND resolution IS NULL",
    ))
    .bind(id)
    .bind(resolution)
    .bind(reason)
    .bind(chrono::Utc::now())
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Sessions, most recently active first, older than the cursor `before` (by id).
pub async fn list_sessions(
    pool: &sqlx::Pool<Db>,
    agent: Option<&str>,
    identity_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SessionSummary>, StoreError> {
    Ok(sqlx::query_as(sql(
        "SELECT id, agent, session_key, is_group, identity_id, conversation_key, merged_into,
                last_inbound_seq, processed_seq, updated_at
           FROM sessions
          WHERE ($1 IS NULL OR agent = $1) AND ($2 IS NULL OR identity_id = $2)
            AND ($3 IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4",
    ))
    .bind(agent)
    .bind(identity_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

const TRANSCRIPT_COLUMNS: &str =
    "id, turn_id, role, content, parts, model, sender_name, created_at";

/// The newest `limit` messages of a session's transcript, oldest first.
pub async fn transcript(
    pool: &sqlx::Pool<Db>,
    session_id: Uuid,
    limit: i64,
) -> Result<Vec<TranscriptMessage>, StoreError> {
    let mut rows: Vec<TranscriptMessage> = sqlx::query_as(sql(&format!(
        "SELECT {TRANSCRIPT_COLUMNS} FROM messages
          WHERE session_id = (SELECT COALESCE(merged_into, id) FROM sessions WHERE id = $1)
          ORDER BY id DESC LIMIT $2"
    )))
    .bind(session_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// Tokens, calls and cost by UTC day, agent and model, from `since` on.
pub async fn usage(
    pool: &sqlx::Pool<Db>,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<UsageRow>, StoreError> {
    let day = match BACKEND {
        Backend::Postgres => "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        Backend::Sqlite => "substr(started_at, 1, 10)",
    };
    Ok(sqlx::query_as(sql(&format!(
        "SELECT {day} AS day, agent, model, COUNT(*) AS calls,
                CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens,
                CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens,
                CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd
           FROM model_calls WHERE started_at >= $1
          GROUP BY 1, agent, model ORDER BY 1 DESC, agent, model"
    )))
    .bind(since)
    .fetch_all(pool)
    .await?)
}

/// Whether an earlier reply to the same conversation on the same connector is
/// still pending and younger than `not_before` (replies in a session go out in
/// the order their turns committed; see `worker::delivery`).
pub async fn earlier_delivery_pending(
    pool: &sqlx::Pool<Db>,
    delivery_id: Uuid,
    not_before: chrono::DateTime<chrono::Utc>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(sql(
        "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN deliveries p
                          ON p.session_id = d.session_id AND p.connector_id = d.connector_id
                       WHERE d.id = $1 AND p.id < d.id AND p.status = 'pending'
                         AND p.created_at > $2)",
    ))
    .bind(delivery_id)
    .bind(not_before)
    .fetch_one(pool)
    .await?)
}

/// Puts a delivery attempt's job back on the queue to run again after `wait`
/// (a new job: the running one ends), without starting the attempt.
pub async fn defer_delivery(
    pool: &sqlx::Pool<Db>,
    job: &DeliveryJob,
    wait: std::time::Duration,
) -> Result<(), StoreError> {
    let mut tx = begin(pool).await?;
    enqueue(
        &mut tx,
        job,
        format!(
            "{}:after:{}",
            job.idempotency_key(),
            Uuid::now_v7().simple()
        ),
        crate::store::DELIVERY_JOB_ATTEMPTS,
        Some(wait),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Sessions with unanswered messages, no lease, and the oldest unanswered one
/// received before `cutoff`: their turn job is gone (it failed on the store for
/// all its attempts). A new turn job is queued for each, once per `bucket`
/// (part of its idempotency key); returns how many.
pub async fn requeue_stranded_sessions(
    pool: &sqlx::Pool<Db>,
    cutoff: chrono::DateTime<chrono::Utc>,
    bucket: i64,
    turn_job_attempts: usize,
) -> Result<u64, StoreError> {
    let stranded: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as(sql("SELECT s.id, e.id, e.trace_id FROM inbound_events e
           JOIN sessions s ON s.id = e.session_id AND s.processed_seq + 1 = e.seq
          WHERE e.status = 'pending' AND e.received_at < $1 AND s.lease_owner IS NULL
          LIMIT 100"))
        .bind(cutoff)
        .fetch_all(pool)
        .await?;
    let mut queued = 0;
    for (session_id, event_id, trace_id) in stranded {
        let mut tx = begin(pool).await?;
        let job = microclaw_jobs::TurnJob::new(session_id, event_id, trace_id);
        enqueue(
            &mut tx,
            &job,
            format!("turn:{event_id}:sweep:{bucket}"),
            turn_job_attempts,
            None,
        )
        .await?;
        tx.commit().await?;
        queued += 1;
    }
    Ok(queued)
}

/// Deletes up to `limit` queue jobs that finished for good (done, killed, or
/// failed with no attempt left) before `cutoff`, taking the jobs in id order
/// after `after` (`""` first): a pass resumes each batch where the last one
/// ended, so it walks the table once however many batches it takes, where
/// batches that each searched from the start would read the rows the earlier
/// ones deleted again and again (dead until a vacuum). Pending, queued,
/// running and retryable jobs are never touched. A job's idempotency key is
/// free again once its job is deleted, so the cutoff must lie further back
/// than any rerun that could queue the same key (see `worker::maintenance`).
pub async fn purge_finished_jobs(
    pool: &sqlx::Pool<Db>,
    cutoff: chrono::DateTime<chrono::Utc>,
    after: &str,
    limit: i64,
) -> Result<PurgedJobs, StoreError> {
    const FINISHED: &str =
        "(status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))";
    // The queue's tables are apalis's: done_at is a timestamp on Postgres and
    // Unix seconds on SQLite. The last id is taken in the database's own order
    // (Postgres's collation need not be Rust's byte order).
    let (seen, last, deleted): (i64, Option<String>, i64) = match BACKEND {
        Backend::Postgres => {
            sqlx::query_as(sql(&format!(
                "WITH batch AS (
                     SELECT id FROM apalis.jobs
                      WHERE id > $3 AND {FINISHED} AND done_at < $1
                      ORDER BY id LIMIT $2
                 ), gone AS (
                     DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM batch) RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch),
                        (SELECT count(*) FROM gone)"
            )))
            .bind(cutoff)
            .bind(limit)
            .bind(after)
            .fetch_one(pool)
            .await?
        }
        Backend::Sqlite => {
            let gone: Vec<String> = sqlx::query_scalar(sql(&format!(
                "DELETE FROM Jobs WHERE id IN
                   (SELECT id FROM Jobs
                     WHERE id > $3 AND {FINISHED} AND done_at < $1
                     ORDER BY id LIMIT $2)
                 RETURNING id"
            )))
            .bind(cutoff.timestamp())
            .bind(limit)
            .bind(after)
            .fetch_all(pool)
            .await?;
            // SQLite compares text bytewise, as Rust does.
            let count = gone.len() as i64;
            (count, gone.into_iter().max(), count)
        }
    };
    Ok(PurgedJobs {
        deleted: deleted as u64,
        resume_after: last.filter(|_| seen >= limit),
    })
}
