//! OpenAI Chat Completions (`POST {base_url}/chat/completions`), which also covers
//! Qwen's DashScope compatible mode, vLLM, Ollama, llama.cpp and any compatible server.
//!
//! Error classification follows the wire: `error.code` decides over the status
//! (a 429 with `insufficient_quota` is a quota problem that must not be retried),
//! Retry-After comes from `retry-after-ms`, `retry-after`, or the values a LiteLLM
//! gateway relays as `llm_provider-retry-after[-ms]`.

use std::time::Duration;

use futures::{FutureExt, future::BoxFuture};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatRequest, ChatResponse, Provider, ProviderError, ProviderErrorKind};
use crate::config::ModelSettings;

pub struct OpenAiProvider {
    endpoint: String,
    model: String,
    api_key: Option<secrecy::SecretString>,
    params: serde_json::Map<String, Value>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: AssistantMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssistantMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl OpenAiProvider {
    pub fn new(settings: &ModelSettings, http: reqwest::Client) -> Self {
        Self {
            endpoint: format!(
                "{}/chat/completions",
                settings.config.base_url.trim_end_matches('/')
            ),
            model: settings.config.model.clone(),
            api_key: settings.api_key.clone(),
            params: settings.config.params.clone(),
            http,
        }
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let mut body = self.params.clone();
        body.insert("model".into(), json!(self.model));
        body.insert("messages".into(), json!(request.messages));
        Value::Object(body)
    }

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let mut builder = self.http.post(&self.endpoint).json(&self.body(request));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        let response = builder.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ProviderErrorKind::Timeout
            } else {
                ProviderErrorKind::Server
            };
            ProviderError::new(kind, format!("transport: {e}"))
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.map_err(|e| {
            ProviderError::new(ProviderErrorKind::Timeout, format!("reading body: {e}"))
        })?;
        if !status.is_success() {
            let mut error = classify(status.as_u16(), &text);
            error.retry_after = retry_after;
            return Err(error);
        }
        let body: CompletionBody = serde_json::from_str(&text).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Malformed,
                format!("unexpected completion body: {e}"),
            )
        })?;
        let choice = body.choices.into_iter().next().ok_or_else(|| {
            ProviderError::new(ProviderErrorKind::Malformed, "completion has no choices")
        })?;
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Err(ProviderError::new(
                ProviderErrorKind::BadRequest,
                "the answer was withheld by the content filter",
            ));
        }
        let usage = body.usage;
        Ok(ChatResponse {
            text: choice.message.content.unwrap_or_default(),
            model: body.model.unwrap_or_else(|| self.model.clone()),
            input_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
            output_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
        })
    }
}

impl Provider for OpenAiProvider {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        self.call(request).boxed()
    }
}

/// Classifies a non-2xx answer by its `error.code` first, its status second.
fn classify(status: u16, body: &str) -> ProviderError {
    let detail = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = detail
        .as_ref()
        .and_then(|d| d.code.as_ref())
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_owned();
    let kind_field = detail
        .as_ref()
        .and_then(|d| d.kind.clone())
        .unwrap_or_default();
    let message = detail
        .and_then(|d| d.message)
        .unwrap_or_else(|| crate::channels::truncate(body, 300).to_owned());
    let quota_codes = [
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    ];
    let kind = if quota_codes.contains(&code.as_str()) || kind_field == "insufficient_quota" {
        ProviderErrorKind::QuotaExhausted
    } else if code == "context_length_exceeded"
        || message.contains("maximum context length")
        || message.contains("exceeds the available context size")
    {
        ProviderErrorKind::ContextWindow
    } else {
        match status {
            429 => ProviderErrorKind::RateLimited,
            401 | 403 => ProviderErrorKind::Auth,
            408 => ProviderErrorKind::Timeout,
            503 | 529 => ProviderErrorKind::Overloaded,
            500..=599 => ProviderErrorKind::Server,
            _ => ProviderErrorKind::BadRequest,
        }
    };
    ProviderError::new(kind, format!("HTTP {status}: {message}"))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let read = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    read("retry-after-ms")
        .or_else(|| read("llm_provider-retry-after-ms"))
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| {
            read("retry-after")
                .or_else(|| read("llm_provider-retry-after"))
                .map(Duration::from_secs_f64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_429_is_not_a_rate_limit() {
        let e = classify(
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert_eq!(e.kind, ProviderErrorKind::QuotaExhausted);
        assert!(!e.kind.is_retryable());
    }

    #[test]
    fn statuses_are_classified() {
        let k = |s, b: &str| classify(s, b).kind;
        let rate = r#"{"error":{"message":"slow down","code":"rate_limit_exceeded"}}"#;
        assert_eq!(k(429, rate), ProviderErrorKind::RateLimited);
        assert_eq!(k(401, "{}"), ProviderErrorKind::Auth);
        assert_eq!(k(500, "oops"), ProviderErrorKind::Server);
        assert_eq!(k(503, "{}"), ProviderErrorKind::Overloaded);
        assert_eq!(k(400, "{}"), ProviderErrorKind::BadRequest);
        assert_eq!(
            k(
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":null}}"#
            ),
            ProviderErrorKind::ContextWindow
        );
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut relayed = HeaderMap::new();
        relayed.insert("llm_provider-retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&relayed), Some(Duration::from_secs(3)));
    }
}
