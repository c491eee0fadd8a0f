//! The delivery job: one attempt to send one part of a reply.
//!
//! Success marks the delivery delivered. A retryable failure schedules the next
//! attempt on the configured schedule with jitter, or after the platform's
//! Retry-After when that is longer. A rate-limited attempt is rescheduled for the
//! time the platform asked and does not use up an attempt (up to
//! `delivery.max_rate_limited` of them). A permanent failure, or a failure of the
//! last attempt, marks the delivery dead with its attempt history: the admin queue.
//!
//! Order across turns: a reply waits while an earlier reply of the same
//! session on the same connector is still pending, so replies arrive in the
//! order their turns committed, as parts of one reply already do. The worker
//! looks again after a few milliseconds, for up to `ORDER_PATIENCE` (the earlier
//! one is usually being sent right now); then the job is put back for
//! `ORDER_POLL` and starts no attempt. A turn's commit that begins the first
//! attempt itself (`first_attempt`) does so only when nothing is pending ahead
//! of it. The wait ends when the earlier one is delivered or dead, or
//! `delivery.order_window` after it was created (a reply stuck in long retries
//! does not hold the conversation forever; 0 turns the wait off).

use std::{sync::Arc, time::Duration};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data};
use microclaw_jobs::{DeliveryJob, Job};
use tracing::Instrument;

use crate::{
    channels::{OutboundMessage, SendError},
    deployment::Deployment,
    retry::delivery_wait,
    store::{AttemptOutcome, DeadReason, DeliveryRow, postgres::deliveries::ClaimedJob},
};

pub async fn run(
    job: DeliveryJob,
    deployment: Data<Arc<Deployment>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    job.check_schema_version().map_err(AbortError::new)?;
    let result = run_claimed(&deployment, &job, None, None).await;
    if result.is_err() {
        super::back_off(attempt.current()).await;
    }
    result.map(|_| ())
}

/// What became of an attempt's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    /// The attempt ran and its outcome was recorded (which marked a job
    /// claimed outside the queue's consumer done).
    Recorded,
    /// Nothing was sent: the delivery was no longer pending, this attempt had
    /// run before, or the job was put back to wait for an earlier reply.
    NothingSent,
}

/// One attempt of `job`, for the queue's consumer or for the worker that
/// claimed the job itself (`first_attempt`: `claimed`, and `begun` when its
/// commit began the attempt); an error is logged here.
pub async fn run_claimed(
    deployment: &Deployment,
    job: &DeliveryJob,
    begun: Option<DeliveryRow>,
    claimed: Option<&ClaimedJob>,
) -> Result<Attempted, BoxDynError> {
    let span = tracing::info_span!(
        "delivery",
        trace_id = %job.trace_id,
        delivery_id = %job.delivery_id,
        attempt = job.attempt
    );
    crate::telemetry::continue_trace(&span, &job.trace_id);
    let result = match begun {
        Some(row) => {
            attempt(deployment, job, row, claimed)
                .instrument(span)
                .await
        }
        None => deliver(deployment, job, claimed).instrument(span).await,
    };
    if let Err(e) = &result {
        tracing::error!(trace_id = %job.trace_id, delivery_id = %job.delivery_id, error = %e, "delivery job failed; the queue retries it");
    }
    result
}

/// How long a reply waiting for an earlier one waits in the worker before its
/// job goes back to the queue.
const ORDER_PATIENCE: Duration = Duration::from_secs(2);
/// When a reply still waits after `ORDER_PATIENCE`, its job runs again after this.
const ORDER_POLL: Duration = Duration::from_secs(1);

async fn deliver(
    deployment: &Deployment,
    job: &DeliveryJob,
    claimed: Option<&ClaimedJob>,
) -> Result<Attempted, BoxDynError> {
    let store = &deployment.store;
    let window = deployment.settings.delivery.order_window.0;
    if !window.is_zero() {
        let waiting_since = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        while store
            .earlier_delivery_pending(
                job.delivery_id,
                chrono::Utc::now() - chrono::Duration::from_std(window).unwrap_or_default(),
            )
            .await?
        {
            if waiting_since.elapsed() >= ORDER_PATIENCE {
                tracing::debug!("an earlier reply of this conversation is still pending; waiting");
                store.defer_delivery(job, ORDER_POLL).await?;
                return Ok(Attempted::NothingSent);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
    let Some(row) = store.begin_attempt(job).await? else {
        tracing::debug!("nothing to send (already delivered, dead, or this attempt ran)");
        return Ok(Attempted::NothingSent);
    };
    attempt(deployment, job, row, claimed).await
}

/// Sends the begun attempt `row` of `job` and records its outcome.
async fn attempt(
    deployment: &Deployment,
    job: &DeliveryJob,
    row: DeliveryRow,
    claimed: Option<&ClaimedJob>,
) -> Result<Attempted, BoxDynError> {
    let store = &deployment.store;
    let mut sent_at = std::time::Instant::now();
    let result = match deployment.connectors.get(&row.connector_id) {
        Some(connector) => {
            let message = OutboundMessage {
                delivery_id: row.id,
                target: row.target.0.clone(),
                part: row.part,
                text: row.text.clone(),
                trace_id: row.trace_id.clone(),
            };
            let paces = connector.channel.pacing(&message.target);
            deployment.pacer.wait_turn(&paces).await;
            sent_at = std::time::Instant::now();
            connector.channel.send(&message).await
        }
        None => Err(SendError::Permanent {
            reason: format!("connector `{}` is not configured", row.connector_id),
            status: None,
        }),
    };
    let outcome = match &result {
        Ok(()) => AttemptOutcome::Delivered,
        Err(e @ SendError::Permanent { .. }) => AttemptOutcome::Dead(e, DeadReason::Permanent),
        Err(e @ SendError::RateLimited { .. })
            if row.rate_limited + 1 > deployment.settings.delivery.max_rate_limited as i32 =>
        {
            AttemptOutcome::Dead(e, DeadReason::Exhausted)
        }
        // Rate-limited attempts do not use up the delivery's attempts.
        Err(e @ SendError::Retryable { .. })
            if job.attempt as i32 - row.rate_limited >= row.max_attempts =>
        {
            AttemptOutcome::Dead(e, DeadReason::Exhausted)
        }
        Err(e) => {
            let config = &deployment.settings.delivery;
            let wait = match e {
                // The platform said when: that time, not the schedule's.
                SendError::RateLimited {
                    retry_after: Some(wait),
                    ..
                } => (*wait).min(config.max_retry_after.0),
                _ => delivery_wait(
                    config,
                    (job.attempt as i32 - row.rate_limited).max(1) as u32,
                    e.retry_after(),
                ),
            };
            AttemptOutcome::RetryAfter(e, wait)
        }
    };
    let outcome_name = match &outcome {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::RetryAfter(SendError::RateLimited { .. }, _) => "rate_limited",
        AttemptOutcome::RetryAfter(..) => "retry",
        AttemptOutcome::Dead(..) => "dead",
    };
    crate::metrics::delivery(&row.channel, outcome_name);
    if let Some(analytics) = &deployment.analytics {
        analytics.record(crate::analytics::Event {
            event_time: chrono::Utc::now(),
            kind: "delivery",
            id: row.id.to_string(),
            trace_id: row.trace_id.clone(),
            channel: row.channel.clone(),
            connector: row.connector_id.clone(),
            latency_ms: sent_at.elapsed().as_millis() as u64,
            attempt: job.attempt,
            outcome: outcome_name,
            error_class: result
                .as_ref()
                .err()
                .map(|e| e.class().to_owned())
                .unwrap_or_default(),
            text: row.text.clone(),
            ..Default::default()
        });
    }
    match &outcome {
        AttemptOutcome::Delivered => tracing::info!(connector = %row.connector_id, "delivered"),
        AttemptOutcome::RetryAfter(e, wait) => tracing::warn!(
            connector = %row.connector_id,
            error = %e,
            wait_ms = wait.as_millis() as u64,
            "delivery attempt failed; retry scheduled"
        ),
        AttemptOutcome::Dead(e, reason) => tracing::error!(
            connector = %row.connector_id,
            error = %e,
            ?reason,
            "delivery is dead"
        ),
    }
    store
        .finish_attempt(job, outcome, row.last_part, claimed)
        .await?;
    Ok(Attempted::Recorded)
}
