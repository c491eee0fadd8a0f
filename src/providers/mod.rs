//! Model providers behind one trait, and the router in front of them.
//!
//! A provider translates the internal message model ([`message`]) to its wire
//! format, makes exactly one HTTP call, and classifies its own errors
//! ([`ProviderErrorKind`]). The [`router`] decides what to do with them: retry,
//! rotate keys, fail over, or give up; it is the one place that waits.

pub mod anthropic;
pub mod health;
pub mod message;
pub mod mock;
pub mod openai;
pub mod router;

use std::time::Duration;

use futures::future::BoxFuture;

pub use message::{Message, Part, Role, StopReason, ToolCall, ToolResult, ToolSpec};

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub trace_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant message: text and tool calls.
    pub message: Message,
    pub stop: StopReason,
    pub model: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl ChatResponse {
    pub fn text(&self) -> String {
        self.message.joined_text()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    RateLimited,
    Overloaded,
    Server,
    Timeout,
    QuotaExhausted,
    Auth,
    BadRequest,
    ContextWindow,
    /// Withheld by a content filter or refused.
    ContentPolicy,
    /// The answer could not be understood (not the documented wire format).
    Malformed,
}

impl ProviderErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Overloaded
                | ProviderErrorKind::Server
                | ProviderErrorKind::Timeout
                | ProviderErrorKind::Malformed
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A request that got no HTTP answer: a timeout, or a connection failure.
    pub fn from_transport(error: &reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            ProviderErrorKind::Timeout
        } else {
            ProviderErrorKind::Server
        };
        Self::new(kind, format!("transport: {error}"))
    }
}

/// The wait a server asked for: the first of the millisecond headers, else the
/// first of the second headers (numbers, possibly fractional).
pub fn retry_after_headers(
    headers: &reqwest::header::HeaderMap,
    millis: &[&str],
    seconds: &[&str],
) -> Option<Duration> {
    let read = |name: &&str| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    millis
        .iter()
        .find_map(read)
        .and_then(|ms| crate::channels::seconds(ms / 1000.0))
        .or_else(|| {
            seconds
                .iter()
                .find_map(read)
                .and_then(crate::channels::seconds)
        })
}

/// One model API.
pub trait Provider: Send + Sync {
    /// One call, no retries (the router owns the only retry loop), with `key` when
    /// the model has keys.
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
        key: Option<&'a secrecy::SecretString>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
}
