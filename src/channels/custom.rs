//! The custom channel: any surface a user builds, over signed JSON.
//!
//! Inbound: `POST /hooks/{connector}` with a Standard Webhooks signature and a
//! `message.created` event (see README "Custom channel"). The platform message id
//! is `data.message_id`; a sender that retries reuses it, so the retry is a
//! duplicate. Other event types are verified and ignored with 200.
//!
//! Outbound: the reply is POSTed as a `message.reply` event to the connector's
//! `callback_url`, signed the same way. `webhook-id` is the delivery id, unchanged
//! across retries, so the receiving side can deduplicate.

use std::time::Duration;

use axum::http::Method;
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{
    Attachment, Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage,
    SendError,
    standard_webhooks::{SignedHeaders, SigningKey, VerifyError},
};
use crate::config::{ChannelKind, ConnectorSettings};

pub struct CustomChannel {
    signing_key: Option<SigningKey>,
    callback_key: Option<SigningKey>,
    callback_url: Option<String>,
    http: reqwest::Client,
    tolerance: Duration,
}

/// The inbound envelope.
#[derive(Debug, Deserialize)]
pub struct InboundEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageCreated {
    pub message_id: String,
    pub conversation_id: String,
    #[serde(default)]
    pub conversation_type: ConversationType,
    #[serde(default)]
    pub thread_id: Option<String>,
    pub sender: Sender,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationType {
    #[default]
    Direct,
    Group,
}

#[derive(Debug, Deserialize)]
pub struct Sender {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// The outbound envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: DateTime<Utc>,
    pub data: ReplyData,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyData {
    pub delivery_id: uuid::Uuid,
    pub conversation_id: String,
    pub thread_id: Option<String>,
    pub recipient_id: String,
    pub in_reply_to: Vec<String>,
    pub part: i32,
    pub text: String,
    pub trace_id: String,
}

impl CustomChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client, tolerance: Duration) -> Self {
        let key = |secret: &Option<secrecy::SecretString>| {
            secret
                .as_ref()
                .and_then(|s| SigningKey::parse(s.expose_secret()).ok())
        };
        Self {
            signing_key: key(&connector.signing_secret),
            callback_key: key(&connector.callback_secret),
            callback_url: connector.config.callback_url.clone(),
            http,
            tolerance,
        }
    }

    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let header = |name: &'static str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(InboundError::MissingHeader(name))
        };
        let signed = SignedHeaders {
            id: header("webhook-id")?,
            timestamp: header("webhook-timestamp")?,
            signature: header("webhook-signature")?,
        };
        let key = self
            .signing_key
            .as_ref()
            .ok_or_else(|| InboundError::BadSignature("connector has no signing secret".into()))?;
        key.verify(
            &signed,
            request.body,
            request.now.timestamp(),
            self.tolerance.as_secs() as i64,
        )
        .map_err(|e| match e {
            VerifyError::TimestampOutOfTolerance { .. } => {
                InboundError::StaleTimestamp(e.to_string())
            }
            VerifyError::MalformedHeader(_) | VerifyError::NoMatchingSignature => {
                InboundError::BadSignature(e.to_string())
            }
        })
    }

    async fn post(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let (Some(url), Some(key)) = (&self.callback_url, &self.callback_key) else {
            return Err(SendError::Permanent {
                reason: "connector has no callback_url or callback secret".into(),
                status: None,
            });
        };
        let now = Utc::now();
        let event = ReplyEvent {
            kind: "message.reply".into(),
            timestamp: now,
            data: ReplyData {
                delivery_id: message.delivery_id,
                conversation_id: message.target.conversation_id.clone(),
                thread_id: message.target.thread_id.clone(),
                recipient_id: message.target.recipient_id.clone(),
                in_reply_to: message.target.in_reply_to.clone(),
                part: message.part,
                text: message.text.clone(),
                trace_id: message.trace_id.clone(),
            },
        };
        let body = serde_json::to_vec(&event).expect("reply events always serialize");
        let id = message.delivery_id.to_string();
        let signature = key.sign(&id, now.timestamp(), &body);
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = super::retry_after(response.headers(), Utc::now());
        let text = response.text().await.unwrap_or_default();
        Err(SendError::from_http(status, retry_after, &text))
    }
}

impl Channel for CustomChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Custom
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        self.verify(request)?;
        parse(request.body)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.post(message).boxed()
    }
}

/// Parses and normalizes a verified body.
pub fn parse(body: &[u8]) -> Result<Inbound, InboundError> {
    let event: InboundEvent =
        serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
    if event.kind != "message.created" {
        return Ok(Inbound::Ignored {
            reason: "event type is not message.created",
        });
    }
    let data = event
        .data
        .ok_or_else(|| InboundError::Malformed("missing field `data`".into()))?;
    let message: MessageCreated =
        serde_json::from_value(data).map_err(|e| InboundError::Malformed(format!("data: {e}")))?;
    for (field, value) in [
        ("data.message_id", &message.message_id),
        ("data.conversation_id", &message.conversation_id),
        ("data.sender.id", &message.sender.id),
    ] {
        if value.trim().is_empty() {
            return Err(InboundError::Malformed(format!(
                "{field} must not be empty"
            )));
        }
    }
    if message.text.trim().is_empty() && message.attachments.is_empty() {
        return Err(InboundError::Malformed(
            "a message needs text or attachments".into(),
        ));
    }
    Ok(Inbound::Message(InboundMessage {
        platform_message_id: message.message_id,
        sender_id: message.sender.id,
        sender_name: message.sender.display_name,
        conversation_id: message.conversation_id,
        thread_id: message.thread_id,
        is_group: message.conversation_type == ConversationType::Group,
        text: message.text,
        attachments: message.attachments,
        sent_at: message.sent_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_the_sample_event() {
        let body = include_bytes!("../../tests/fixtures/standard_webhooks.json");
        let Inbound::Message(m) = parse(body).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(m.platform_message_id, "msg_01JGX8F6T4Q2");
        assert_eq!(m.sender_id, "user_42");
        assert_eq!(m.sender_name.as_deref(), Some("Eve"));
        assert_eq!(m.conversation_id, "conv_7781");
        assert_eq!(m.thread_id, None);
        assert!(!m.is_group);
        assert_eq!(m.text, "Ping from our internal CRM");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].size, Some(48213));
        assert!(m.sent_at.is_some());
    }

    #[test]
    fn other_event_types_are_ignored() {
        let body = br#"{"type":"message.updated","data":{}}"#;
        assert!(matches!(parse(body).unwrap(), Inbound::Ignored { .. }));
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        for body in [
            &b"{not json"[..],
            br#"{"type":"message.created"}"#,
            br#"{"type":"message.created","data":{"message_id":"m","conversation_id":"c"}}"#,
            br#"{"type":"message.created","data":{"message_id":"","conversation_id":"c","sender":{"id":"u"},"text":"hi"}}"#,
            br#"{"type":"message.created","data":{"message_id":"m","conversation_id":"c","sender":{"id":"u"},"text":""}}"#,
        ] {
            assert!(
                matches!(parse(body), Err(InboundError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn group_conversations_are_marked() {
        let body = br#"{"type":"message.created","data":{"message_id":"m","conversation_id":"c","conversation_type":"group","sender":{"id":"u"},"text":"hi"}}"#;
        let Inbound::Message(m) = parse(body).unwrap() else {
            panic!()
        };
        assert!(m.is_group);
    }
}
