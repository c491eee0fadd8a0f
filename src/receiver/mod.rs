//! The receiver: verify, normalize, deduplicate, enqueue, answer.
//!
//! Guarantee: a 2xx means the inbound event and its turn job are committed in
//! Postgres (one transaction, see `store::inbound`, shared by concurrent webhooks
//! under group commit, see `group_commit`). When Postgres cannot be
//! reached the answer is 503, so the platform retries; bad input gets a 4xx with a
//! reason and changes nothing. A platform retry of a recorded event gets 2xx and
//! creates nothing, whether Redis or Postgres recognizes it.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use serde_json::json;

use crate::{
    channels::{Inbound, InboundError, InboundRequest},
    deployment::Deployment,
    store::{Recorded, Routing, StoreError},
};

pub(crate) mod group_commit;
mod webchat;

pub fn router(deployment: Arc<Deployment>) -> Router {
    let limit = deployment.settings.receiver.max_body_bytes;
    Router::new()
        .route("/hooks/{connector_id}", get(hook).post(hook))
        .with_state(deployment.clone())
        .merge(webchat::router(deployment.clone()))
        .layer(DefaultBodyLimit::max(limit))
        .merge(crate::health::router(deployment.store.clone()))
}

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("no connector named `{0}`")]
    UnknownConnector(String),
    #[error(transparent)]
    Inbound(#[from] InboundError),
    #[error("{detail}")]
    Body { status: StatusCode, detail: String },
    #[error("the database is unavailable; retry later")]
    Unavailable(#[source] StoreError),
}

impl IntoResponse for ReceiverError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ReceiverError::UnknownConnector(_) => (StatusCode::NOT_FOUND, "unknown_connector"),
            ReceiverError::Inbound(e) => (e.status(), e.code()),
            ReceiverError::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                (*status, "body_too_large")
            }
            ReceiverError::Body { status, .. } => (*status, "unreadable_body"),
            ReceiverError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let body = Json(json!({ "code": code, "detail": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(header::RETRY_AFTER, "5")], body).into_response();
        }
        (status, body).into_response()
    }
}

/// A webhook, counted and timed (see `metrics`).
async fn hook(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ReceiverError> {
    let started = std::time::Instant::now();
    let arrived = std::time::SystemTime::now();
    let channel = deployment
        .connectors
        .get(&connector_id)
        .map_or("unknown", |c| c.channel.kind().as_str());
    let result = handle(
        &deployment,
        &connector_id,
        &method,
        &headers,
        query,
        body,
        arrived,
    )
    .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ReceiverError::Unavailable(_)) => "unavailable",
        Err(_) => "rejected",
    };
    crate::metrics::webhook(channel, outcome, started.elapsed());
    result
}

async fn handle(
    deployment: &Deployment,
    connector_id: &str,
    method: &Method,
    headers: &HeaderMap,
    query: Option<String>,
    body: Result<Bytes, BytesRejection>,
    arrived: std::time::SystemTime,
) -> Result<Response, ReceiverError> {
    let connector = deployment
        .connectors
        .get(connector_id)
        .ok_or_else(|| ReceiverError::UnknownConnector(connector_id.to_owned()))?;
    let body = body.map_err(|rejection| ReceiverError::Body {
        status: rejection.status(),
        detail: rejection.body_text(),
    })?;
    let request = InboundRequest {
        method,
        headers,
        query: query.as_deref(),
        body: &body,
        now: Utc::now(),
    };
    connector.channel.authenticate(&request).await.inspect_err(
        |e| tracing::info!(connector = %connector_id, error = %e, "inbound refused"),
    )?;
    let messages = match connector.channel.receive(&request) {
        Ok(Inbound::Message(message)) => vec![message],
        Ok(Inbound::Batch(messages)) => messages,
        Ok(Inbound::Handshake { content_type, body }) => {
            return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        Ok(Inbound::Ignored { reason }) => {
            tracing::debug!(connector = %connector_id, reason, "inbound ignored");
            if let Some((content_type, body)) = connector.channel.acknowledgement() {
                return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
            }
            return Ok(Json(json!({ "status": "ignored", "reason": reason })).into_response());
        }
        Err(e) => {
            tracing::info!(connector = %connector_id, error = %e, "inbound refused");
            return Err(e.into());
        }
    };
    // Each message of a batch is its own event, recorded in its own transaction.
    // If one fails the answer is 503: the platform resends the batch and the
    // messages already recorded are recognised as duplicates.
    let mut answers = Vec::with_capacity(messages.len());
    for message in messages {
        answers.push(accept(deployment, connector, connector_id, message, arrived).await?);
    }
    if let Some((content_type, body)) = connector.channel.acknowledgement() {
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    Ok(match answers.len() {
        1 => Json(answers.remove(0)).into_response(),
        _ => Json(json!({ "status": "accepted", "events": answers })).into_response(),
    })
}

/// Records one inbound message unless it was seen before; its answer as JSON.
pub(crate) async fn accept(
    deployment: &Deployment,
    connector: &crate::deployment::Connector,
    connector_id: &str,
    message: crate::channels::InboundMessage,
    arrived: std::time::SystemTime,
) -> Result<serde_json::Value, ReceiverError> {
    if let Some(dedup) = &deployment.dedup
        && dedup.seen(connector_id, &message.platform_message_id).await
    {
        tracing::info!(connector = %connector_id, platform_message_id = %message.platform_message_id, "duplicate inbound (cache)");
        crate::metrics::inbound_message(connector.channel.kind().as_str(), "duplicate");
        return Ok(json!({ "status": "duplicate" }));
    }
    let routing = Routing {
        connector_id,
        channel: connector.channel.kind().as_str(),
        agent: connector.agent(),
    };
    let message = message.into_storable();
    let platform_message_id = message.platform_message_id.clone();
    let recorded = match deployment.group_commit() {
        Some(group_commit) => group_commit.record(&routing, message).await,
        None => {
            deployment
                .store
                .record_inbound(
                    &routing,
                    &message,
                    deployment.settings.worker.turn_job_attempts,
                )
                .await
        }
    }
    .map_err(|e| {
        tracing::warn!(connector = %connector_id, error = %e, "could not record inbound event");
        ReceiverError::Unavailable(e)
    })?;
    if let Some(dedup) = &deployment.dedup {
        dedup.remember(connector_id, &platform_message_id).await;
    }
    crate::metrics::inbound_message(
        routing.channel,
        match recorded {
            Recorded::Accepted { .. } => "accepted",
            Recorded::Duplicate => "duplicate",
        },
    );
    Ok(match recorded {
        Recorded::Accepted {
            event_id,
            session_id,
            trace_id,
        } => {
            crate::telemetry::inbound_span(
                &trace_id,
                arrived,
                routing.channel,
                connector_id,
                event_id,
            );
            tracing::info!(
                trace_id = %trace_id,
                connector = %connector_id,
                %event_id,
                %session_id,
                %platform_message_id,
                "inbound accepted"
            );
            json!({
                "status": "accepted",
                "event_id": event_id,
                "session_id": session_id,
                "trace_id": trace_id,
            })
        }
        Recorded::Duplicate => {
            tracing::info!(connector = %connector_id, %platform_message_id, "duplicate inbound");
            json!({ "status": "duplicate" })
        }
    })
}
