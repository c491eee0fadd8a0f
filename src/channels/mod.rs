//! Channels: one module per platform behind one trait.
//!
//! A [`Channel`] is one configured connector of one platform kind. Inbound, it
//! verifies a raw request and turns it into a normalized [`InboundMessage`] (or a
//! handshake answer, or a deliberate ignore). Outbound, it sends one part of a reply
//! and classifies any failure where it arises ([`SendError`]): retryable, rate
//! limited with the platform's Retry-After, or permanent. Waiting happens in one
//! place, the delivery worker.
//!
//! Adding a channel: its file, one line in [`build`], its tests.

pub mod custom;
pub mod discord;
pub mod format;
pub mod imessage;
pub mod pacing;
pub mod slack;
pub mod standard_webhooks;
pub mod teams;
pub mod telegram;
pub mod twilio;
pub mod webchat;
pub mod whatsapp;

use std::{sync::Arc, time::Duration};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};

use crate::config::{ChannelKind, ConnectorSettings};

/// A raw inbound request, as the receiver got it.
#[derive(Debug)]
pub struct InboundRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a Bytes,
    pub now: DateTime<Utc>,
}

/// What a verified request means.
#[derive(Debug)]
pub enum Inbound {
    /// A message for the agent.
    Message(InboundMessage),
    /// Several messages in one request (WhatsApp batches), each its own event.
    Batch(Vec<InboundMessage>),
    /// A platform handshake, answered at once with this body.
    Handshake {
        content_type: &'static str,
        body: String,
    },
    /// Verified traffic we deliberately do not answer (our own echoes, receipts).
    Ignored { reason: &'static str },
}

/// An inbound message in the one shape every channel normalizes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The platform's stable id of this message; platform retries reuse it.
    pub platform_message_id: String,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub conversation_id: String,
    pub thread_id: Option<String>,
    /// A group conversation has one session for all its members; a direct one
    /// belongs to its sender.
    pub is_group: bool,
    pub text: String,
    pub attachments: Vec<Attachment>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl InboundMessage {
    fn has_nul(&self) -> bool {
        let nul = |s: &str| s.contains('\0');
        let nul_opt = |s: &Option<String>| s.as_deref().is_some_and(nul);
        nul(&self.platform_message_id)
            || nul(&self.sender_id)
            || nul_opt(&self.sender_name)
            || nul(&self.conversation_id)
            || nul_opt(&self.thread_id)
            || nul(&self.text)
            || self
                .attachments
                .iter()
                .any(|a| nul_opt(&a.url) || nul_opt(&a.content_type) || nul_opt(&a.name))
    }

    /// The message as the store can hold it: as is, or without NUL characters
    /// when it has any.
    pub fn into_storable(self) -> InboundMessage {
        if self.has_nul() {
            self.without_nul()
        } else {
            self
        }
    }

    /// The message with NUL characters removed from every text field (the store
    /// cannot hold them; a platform retry would fail the same way forever).
    fn without_nul(&self) -> InboundMessage {
        let clean = |s: &str| crate::store::without_nul(s).into_owned();
        let clean_opt = |s: &Option<String>| s.as_deref().map(clean);
        InboundMessage {
            platform_message_id: clean(&self.platform_message_id),
            sender_id: clean(&self.sender_id),
            sender_name: clean_opt(&self.sender_name),
            conversation_id: clean(&self.conversation_id),
            thread_id: clean_opt(&self.thread_id),
            is_group: self.is_group,
            text: clean(&self.text),
            attachments: self
                .attachments
                .iter()
                .map(|a| Attachment {
                    url: clean_opt(&a.url),
                    content_type: clean_opt(&a.content_type),
                    name: clean_opt(&a.name),
                    size: a.size,
                })
                .collect(),
            sent_at: self.sent_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: Option<String>,
    pub content_type: Option<String>,
    pub name: Option<String>,
    pub size: Option<u64>,
}

/// Why an inbound request is refused. Each maps to one 4xx with a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("signature verification failed: {0}")]
    BadSignature(String),
    #[error("stale or future timestamp: {0}")]
    StaleTimestamp(String),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("method {0} is not accepted here")]
    MethodNotAllowed(String),
    #[error("credentials refused: {0}")]
    Forbidden(String),
}

impl InboundError {
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::MissingHeader(_) | InboundError::Malformed(_) => StatusCode::BAD_REQUEST,
            InboundError::BadSignature(_) | InboundError::StaleTimestamp(_) => {
                StatusCode::UNAUTHORIZED
            }
            InboundError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            InboundError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            InboundError::MissingHeader(_) => "missing_header",
            InboundError::BadSignature(_) => "bad_signature",
            InboundError::StaleTimestamp(_) => "stale_timestamp",
            InboundError::Malformed(_) => "malformed_body",
            InboundError::MethodNotAllowed(_) => "method_not_allowed",
            InboundError::Forbidden(_) => "forbidden",
        }
    }
}

/// Where a reply goes, stored with the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTarget {
    pub conversation_id: String,
    pub thread_id: Option<String>,
    pub recipient_id: String,
    pub is_group: bool,
    /// Platform ids of the messages this reply answers.
    pub in_reply_to: Vec<String>,
}

/// One part of a reply, ready to send.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub delivery_id: uuid::Uuid,
    pub target: ReplyTarget,
    pub part: i32,
    pub text: String,
    pub trace_id: String,
}

/// Why a send failed, classified where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt on the normal schedule (5xx, timeouts, connection errors).
    #[error("retryable: {reason}")]
    Retryable {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// The platform asked us to slow down.
    #[error("rate limited: {reason}")]
    RateLimited {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Another attempt cannot succeed (bad request, gone, unauthorized).
    #[error("permanent: {reason}")]
    Permanent { reason: String, status: Option<u16> },
}

impl SendError {
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Retryable { status, .. }
            | SendError::RateLimited { status, .. }
            | SendError::Permanent { status, .. } => *status,
        }
    }

    pub fn class(&self) -> &'static str {
        match self {
            SendError::Retryable { .. } => "retryable",
            SendError::RateLimited { .. } => "rate_limited",
            SendError::Permanent { .. } => "permanent",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Retryable { retry_after, .. }
            | SendError::RateLimited { retry_after, .. } => *retry_after,
            SendError::Permanent { .. } => None,
        }
    }

    /// Classifies an HTTP answer the common way; channels refine it where their
    /// platform says more.
    pub fn from_http(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Self {
        let reason = format!("HTTP {}: {}", status.as_u16(), truncate(body, 512));
        let code = Some(status.as_u16());
        match status.as_u16() {
            429 => SendError::RateLimited {
                reason,
                status: code,
                retry_after,
            },
            408 | 425 | 500..=599 | 300..=399 => SendError::Retryable {
                reason,
                status: code,
                retry_after,
            },
            _ => SendError::Permanent {
                reason,
                status: code,
            },
        }
    }

    pub fn from_transport(error: &reqwest::Error) -> Self {
        SendError::Retryable {
            reason: format!("transport: {error}"),
            status: None,
            retry_after: None,
        }
    }
}

/// A wait a remote side asked for, in seconds: None unless finite, non-negative
/// and at most a day (anything longer is a broken value, not a plan).
pub fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= Duration::from_secs(24 * 3600))
}

/// Reads a `Retry-After` header given in seconds (possibly fractional) or as an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&Utc) - now).to_std().ok()
}

pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One configured connector of one platform kind.
pub trait Channel: Send + Sync {
    fn kind(&self) -> ChannelKind;

    /// Checks credentials that need the network (Teams: JWT keys from the Bot
    /// Framework); runs before [`Channel::receive`]. Most channels verify a
    /// signature inside `receive` and keep this default.
    fn authenticate<'a>(
        &'a self,
        _request: &'a InboundRequest<'a>,
    ) -> BoxFuture<'a, Result<(), InboundError>> {
        futures::future::ready(Ok(())).boxed()
    }

    /// Verifies a raw request and normalizes it. Must not touch any storage.
    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError>;

    /// Splits a reply into the parts this platform accepts, in order.
    fn split(&self, text: &str) -> Vec<String> {
        vec![text.to_owned()]
    }

    /// Sends one part of a reply.
    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>>;

    /// The body every 2xx answer carries, when the platform expects one (Twilio:
    /// TwiML); None answers JSON.
    fn acknowledgement(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// The platform's outbound limits this send must respect (per conversation,
    /// per bot account); the delivery worker waits for them, shared through Redis.
    fn pacing(&self, _target: &ReplyTarget) -> Vec<pacing::Pace> {
        Vec::new()
    }

    /// Shows that an answer is being written, where the platform can (best effort).
    fn typing<'a>(&'a self, _target: &'a ReplyTarget) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }
}

/// Decodes `application/x-www-form-urlencoded` bytes (a form body or a query
/// string) into name/value pairs, in order.
pub fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    fn decode(part: &[u8]) -> String {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < part.len() => match (hex(part[i + 1]), hex(part[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high * 16 + low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    bytes
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Compares secrets without revealing, through timing, where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The registry: builds the channel for a connector.
pub fn build(
    connector: &ConnectorSettings,
    http: &reqwest::Client,
    signature_tolerance: Duration,
    store: &crate::store::Store,
) -> Arc<dyn Channel> {
    match connector.config.channel {
        ChannelKind::Custom => Arc::new(custom::CustomChannel::new(
            connector,
            http.clone(),
            signature_tolerance,
        )),
        ChannelKind::Telegram => Arc::new(telegram::TelegramChannel::new(connector, http.clone())),
        ChannelKind::Twilio => Arc::new(twilio::TwilioChannel::new(connector, http.clone())),
        ChannelKind::Whatsapp => Arc::new(whatsapp::WhatsAppChannel::new(connector, http.clone())),
        ChannelKind::Slack => Arc::new(slack::SlackChannel::new(
            connector,
            http.clone(),
            signature_tolerance,
        )),
        ChannelKind::Webchat => Arc::new(webchat::WebChatChannel::new(connector, store.clone())),
        ChannelKind::Imessage => Arc::new(imessage::IMessageChannel::new(connector, http.clone())),
        ChannelKind::Teams => Arc::new(teams::TeamsChannel::new(connector, http.clone())),
        ChannelKind::Discord => Arc::new(discord::DiscordChannel::new(
            connector,
            http.clone(),
            signature_tolerance,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_classified() {
        let c = |s: u16| SendError::from_http(StatusCode::from_u16(s).unwrap(), None, "").class();
        assert_eq!(c(429), "rate_limited");
        assert_eq!(c(500), "retryable");
        assert_eq!(c(503), "retryable");
        assert_eq!(c(408), "retryable");
        assert_eq!(c(302), "retryable");
        assert_eq!(c(400), "permanent");
        assert_eq!(c(401), "permanent");
        assert_eq!(c(410), "permanent");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(2)));
        headers.insert("retry-after", "0.5".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(500)));
        headers.insert(
            "retry-after",
            "Thu, 01 Jan 2026 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert("retry-after", "-1".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("retry-after", "99999999999999999999".parse().unwrap());
        assert_eq!(
            retry_after(&headers, now),
            None,
            "absurd values are ignored, never a panic"
        );
        headers.insert("retry-after", "NaN".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn forms_are_decoded() {
        assert_eq!(
            form_pairs(b"a=1&hub.challenge=11%2022&b=x+y&c&d=%F0%9F%93%B7&e=%zz"),
            [
                ("a".to_owned(), "1".to_owned()),
                ("hub.challenge".to_owned(), "11 22".to_owned()),
                ("b".to_owned(), "x y".to_owned()),
                ("c".to_owned(), String::new()),
                ("d".to_owned(), "📷".to_owned()),
                ("e".to_owned(), "%zz".to_owned()),
            ]
        );
        assert_eq!(form_pairs(b"x=%4"), [("x".to_owned(), "%4".to_owned())]);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
