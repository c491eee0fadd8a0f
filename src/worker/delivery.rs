//! The delivery job: one attempt to send one part of a reply.
//!
//! Success marks the delivery delivered. A retryable failure schedules the next
//! attempt on the configured schedule with jitter, or after the platform's
//! Retry-After when that is longer. A permanent failure, or a failure of the last
//! attempt, marks the delivery dead with its attempt history: the admin queue.

use std::sync::Arc;

use apalis::prelude::{AbortError, BoxDynError, Data};
use microclaw_jobs::{DeliveryJob, Job};
use tracing::Instrument;

use crate::{
    channels::{OutboundMessage, SendError},
    deployment::Deployment,
    retry::delivery_wait,
    store::{AttemptOutcome, DeadReason},
};

pub async fn run(job: DeliveryJob, deployment: Data<Arc<Deployment>>) -> Result<(), BoxDynError> {
    job.check_schema_version().map_err(AbortError::new)?;
    let span = tracing::info_span!(
        "delivery",
        trace_id = %job.trace_id,
        delivery_id = %job.delivery_id,
        attempt = job.attempt
    );
    deliver(&deployment, &job).instrument(span).await
}

async fn deliver(deployment: &Deployment, job: &DeliveryJob) -> Result<(), BoxDynError> {
    let store = &deployment.store;
    let Some(row) = store.begin_attempt(job).await? else {
        tracing::debug!("nothing to send (already delivered, dead, or this attempt ran)");
        return Ok(());
    };
    let result = match deployment.connectors.get(&row.connector_id) {
        Some(connector) => {
            let message = OutboundMessage {
                delivery_id: row.id,
                target: row.target.0.clone(),
                part: row.part,
                text: row.text.clone(),
                trace_id: row.trace_id.clone(),
            };
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
        Err(e) if job.attempt as i32 >= row.max_attempts => {
            AttemptOutcome::Dead(e, DeadReason::Exhausted)
        }
        Err(e) => AttemptOutcome::RetryAfter(
            e,
            delivery_wait(&deployment.settings.delivery, job.attempt, e.retry_after()),
        ),
    };
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
    store.finish_attempt(job, outcome).await?;
    Ok(())
}
