//! Model providers behind one trait, and the retry policy around them.
//!
//! A provider classifies its own errors ([`ProviderErrorKind`]): retryable
//! (rate limited, overloaded, server error, timeout) or not (auth, bad request,
//! quota, context window). [`ModelRoute::complete`] is the one place that waits:
//! exponential backoff with jitter between attempts, or the server's Retry-After
//! when it is longer, as long as it is within `max_retry_after` (a longer wait
//! fails the call instead of holding the session). The worst case of this policy is
//! what the boot check in `config` compares with the worker recovery window.

pub mod anthropic;
pub mod message;
pub mod mock;
pub mod openai;

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;

pub use message::{Message, Part, Role, StopReason, ToolCall, ToolResult, ToolSpec};

use crate::config::{ModelSettings, ProviderKind};

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
}

/// One model API.
pub trait Provider: Send + Sync {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
}

/// The outcome of a call with retries: the answer or the last error, and how many
/// calls it took.
#[derive(Debug)]
pub struct RouteOutcome {
    pub result: Result<ChatResponse, ProviderError>,
    pub attempts: u32,
}

/// A configured model with its retry policy.
#[derive(Clone)]
pub struct ModelRoute {
    pub name: String,
    provider: Arc<dyn Provider>,
    settings: ModelSettings,
}

impl ModelRoute {
    pub fn new(settings: &ModelSettings, http: &reqwest::Client) -> Self {
        let provider: Arc<dyn Provider> = match settings.config.provider {
            ProviderKind::Openai => Arc::new(openai::OpenAiProvider::new(settings, http.clone())),
            ProviderKind::Anthropic => {
                Arc::new(anthropic::AnthropicProvider::new(settings, http.clone()))
            }
            ProviderKind::Mock => Arc::new(mock::MockProvider),
        };
        Self {
            name: settings.name.clone(),
            provider,
            settings: settings.clone(),
        }
    }

    /// Model steps one turn may take (tool round trips).
    pub fn max_steps(&self) -> u32 {
        self.settings.config.max_steps.max(1)
    }

    /// Calls the model, retrying retryable errors with backoff and Retry-After.
    pub async fn complete(&self, request: &ChatRequest) -> RouteOutcome {
        let config = &self.settings.config;
        let timeout = config.timeout.0;
        let max_retry_after = config.max_retry_after.0;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.min_backoff.0)
            .with_max_delay(config.max_backoff.0)
            .with_max_times(config.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let call = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match tokio::time::timeout(timeout, self.provider.complete(request)).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no answer within {}s", timeout.as_secs_f64()),
                )),
            }
        };
        let result = call
            .retry(backoff)
            .when(|e: &ProviderError| {
                e.kind.is_retryable() && e.retry_after.is_none_or(|wait| wait <= max_retry_after)
            })
            .adjust(
                |e: &ProviderError, planned| match (planned, e.retry_after) {
                    (Some(planned), Some(wait)) => Some(planned.max(wait)),
                    (planned, _) => planned,
                },
            )
            .notify(|e: &ProviderError, wait| {
                tracing::warn!(
                    trace_id = %request.trace_id,
                    model = %self.name,
                    error = %e,
                    wait_ms = wait.as_millis() as u64,
                    "model call failed, retrying"
                );
            })
            .await;
        RouteOutcome {
            result,
            attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
