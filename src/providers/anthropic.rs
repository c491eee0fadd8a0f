//! Anthropic Messages API (`POST {base_url}/v1/messages`, `anthropic-version:
//! 2023-06-01`).
//!
//! Translation: the system prompt is the top-level `system`; messages strictly
//! alternate, so consecutive messages of one role are merged; tool results travel
//! as the first `tool_result` blocks of the next user message. Errors are
//! classified by `error.type` (529 `overloaded_error`, 429 `rate_limit_error`,
//! 402 `billing_error`, the "prompt is too long" 400), Retry-After from
//! `retry-after-ms` / `retry-after`, and `x-should-retry: false` is obeyed.

use std::time::Duration;

use futures::{FutureExt, future::BoxFuture};
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Message, Part, Provider, ProviderError, ProviderErrorKind, Role,
    StopReason, ToolCall,
};
use crate::config::ModelSettings;

pub const API_VERSION: &str = "2023-06-01";

pub struct AnthropicProvider {
    endpoint: String,
    model: String,
    max_tokens: u32,
    params: serde_json::Map<String, Value>,
    headers: Vec<(String, String)>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl AnthropicProvider {
    pub fn new(settings: &ModelSettings, http: reqwest::Client) -> Self {
        Self {
            endpoint: format!(
                "{}/v1/messages",
                settings.config.base_url.trim_end_matches('/')
            ),
            model: settings.config.model.clone(),
            max_tokens: settings.config.max_tokens,
            params: settings.config.params.clone(),
            headers: settings
                .config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            http,
        }
    }

    async fn call(
        &self,
        request: &ChatRequest,
        key: Option<&SecretString>,
    ) -> Result<ChatResponse, ProviderError> {
        let mut builder = self
            .http
            .post(&self.endpoint)
            .header("anthropic-version", API_VERSION)
            .json(&request_body(
                &self.model,
                self.max_tokens,
                &self.params,
                request,
            ));
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        if let Some(key) = key {
            builder = builder.header("x-api-key", key.expose_secret());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| {
            ProviderError::new(ProviderErrorKind::Timeout, format!("reading body: {e}"))
        })?;
        if !status.is_success() {
            let mut error = classify(status.as_u16(), &text);
            error.retry_after = retry_after(&headers).or_else(|| {
                (status.as_u16() == 429)
                    .then(|| rate_limit_reset(&headers, chrono::Utc::now()))
                    .flatten()
            });
            if headers
                .get("x-should-retry")
                .is_some_and(|v| v.as_bytes() == b"false")
                && error.kind.is_retryable()
            {
                error.kind = ProviderErrorKind::BadRequest;
            }
            return Err(error);
        }
        parse_response(&self.model, &text)
    }
}

impl Provider for AnthropicProvider {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
        key: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        self.call(request, key).boxed()
    }
}

fn blocks(message: &Message) -> Vec<Value> {
    message
        .parts
        .iter()
        .map(|part| match part {
            Part::Text { text } => json!({"type": "text", "text": text}),
            Part::Image { url } => json!({"type": "image", "source": {"type": "url", "url": url}}),
            Part::ToolCall(call) => json!({
                "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments
            }),
            Part::ToolResult(result) => json!({
                "type": "tool_result",
                "tool_use_id": result.call_id,
                "content": result.content,
                "is_error": result.is_error
            }),
        })
        .collect()
}

/// The Messages request for `request`.
pub fn request_body(
    model: &str,
    max_tokens: u32,
    params: &serde_json::Map<String, Value>,
    request: &ChatRequest,
) -> Value {
    // Tool results are user content here; then merge runs of one role.
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let role = match message.role {
            Role::Assistant => "assistant",
            Role::User | Role::Tool => "user",
        };
        let content = blocks(message);
        if content.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last, blocks)) if *last == role => {
                // Tool results must come first in their user message.
                if message.role == Role::Tool {
                    let rest = std::mem::take(blocks);
                    blocks.extend(content);
                    blocks.extend(rest);
                } else {
                    blocks.extend(content);
                }
            }
            _ => messages.push((role, content)),
        }
    }
    let mut body = params.clone();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !request.tools.is_empty() {
        body.insert(
            "tools".into(),
            Value::Array(
                request
                    .tools
                    .iter()
                    .map(|tool| {
                        json!({"name": tool.name, "description": tool.description, "input_schema": tool.schema})
                    })
                    .collect(),
            ),
        );
    }
    Value::Object(body)
}

/// Reads a 200 answer into the internal model.
pub fn parse_response(model: &str, text: &str) -> Result<ChatResponse, ProviderError> {
    let body: MessageBody = serde_json::from_str(text).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Malformed,
            format!("unexpected message body: {e}"),
        )
    })?;
    let stop = match body.stop_reason.as_deref() {
        Some("end_turn") | Some("stop_sequence") | Some("pause_turn") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") | Some("model_context_window_exceeded") => StopReason::MaxTokens,
        Some("refusal") => StopReason::ContentFilter,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("none".into()),
    };
    if stop == StopReason::ContentFilter {
        return Err(ProviderError::new(
            ProviderErrorKind::ContentPolicy,
            "the model declined to answer (refusal)",
        ));
    }
    let parts = body
        .content
        .into_iter()
        .filter_map(|block| match block {
            Block::Text { text } => Some(Part::Text { text }),
            Block::ToolUse { id, name, input } => Some(Part::ToolCall(ToolCall {
                id,
                name,
                arguments: match input {
                    Value::Object(map) => Value::Object(map),
                    Value::Null => json!({}),
                    other => json!({ "_raw": other }),
                },
            })),
            Block::Other => None,
        })
        .collect();
    let usage = body.usage;
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            parts,
        },
        stop,
        model: body.model.unwrap_or_else(|| model.to_owned()),
        input_tokens: usage.as_ref().and_then(|u| u.input_tokens),
        output_tokens: usage.as_ref().and_then(|u| u.output_tokens),
    })
}

/// Classifies a non-2xx answer by `error.type` first, its status second.
fn classify(status: u16, body: &str) -> ProviderError {
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    let kind_field = error["type"].as_str().unwrap_or_default();
    let message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| crate::channels::truncate(body, 300).to_owned());
    let spend_limit = error["details"]["error_code"] == "enforced_spend_limit_reached";
    let kind = if kind_field == "billing_error" || status == 402 || spend_limit {
        ProviderErrorKind::QuotaExhausted
    } else if message.contains("prompt is too long") {
        ProviderErrorKind::ContextWindow
    } else {
        match (kind_field, status) {
            ("overloaded_error", _) | (_, 529) => ProviderErrorKind::Overloaded,
            ("rate_limit_error", _) | (_, 429) => ProviderErrorKind::RateLimited,
            ("authentication_error" | "permission_error", _) | (_, 401 | 403) => {
                ProviderErrorKind::Auth
            }
            ("api_error", _) | (_, 500..=599) => ProviderErrorKind::Server,
            (_, 408) => ProviderErrorKind::Timeout,
            _ => ProviderErrorKind::BadRequest,
        }
    };
    ProviderError::new(kind, format!("HTTP {status}: {message}"))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    super::retry_after_headers(headers, &["retry-after-ms"], &["retry-after"])
}

/// When an exhausted limit resets: `anthropic-ratelimit-…-reset` (RFC 3339) of
/// each limit whose `…-remaining` is 0, the later of them.
fn rate_limit_reset(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter(|kind| {
            headers
                .get(format!("anthropic-ratelimit-{kind}-remaining"))
                .is_some_and(|v| v.as_bytes() == b"0")
        })
        .filter_map(|kind| {
            let reset = headers
                .get(format!("anthropic-ratelimit-{kind}-reset"))?
                .to_str()
                .ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(reset).ok()?;
            (at.with_timezone(&chrono::Utc) - now).to_std().ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ToolResult, ToolSpec};

    #[test]
    fn tool_use_round_trips_through_the_wire_format() {
        let answer = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
            "content":[{"type":"text","text":"Let me check."},
                       {"type":"tool_use","id":"toolu_1","name":"current_time","input":{"timezone":"Asia/Tokyo"}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":30,"output_tokens":12}}"#;
        let response = parse_response("claude", answer).unwrap();
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(response.text(), "Let me check.");
        let call = response.message.tool_calls().next().unwrap();
        assert_eq!(
            (call.id.as_str(), call.name.as_str()),
            ("toolu_1", "current_time")
        );
        assert_eq!(call.arguments, json!({"timezone": "Asia/Tokyo"}));
        assert_eq!(response.output_tokens, Some(12));

        let request = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::text(Role::User, "time in Tokyo?"),
                Message::text(Role::User, "and be quick"),
                response.message.clone(),
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult(ToolResult {
                        call_id: "toolu_1".into(),
                        content: "09:00".into(),
                        is_error: false,
                    })],
                },
            ],
            tools: vec![ToolSpec {
                name: "current_time".into(),
                description: "Current time".into(),
                schema: json!({"type": "object"}),
            }],
            trace_id: "t".into(),
        };
        let body = request_body("claude", 512, &Default::default(), &request);
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            3,
            "consecutive user messages merge: {messages:?}"
        );
        assert_eq!(messages[0]["content"].as_array().unwrap().len(), 2);
        assert_eq!(messages[1]["content"][1]["type"], "tool_use");
        assert_eq!(
            messages[1]["content"][1]["input"],
            json!({"timezone": "Asia/Tokyo"})
        );
        assert_eq!(
            messages[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "09:00", "is_error": false}
            ]})
        );
    }

    #[test]
    fn errors_are_classified_by_type() {
        let k = |status, body: &str| classify(status, body).kind;
        let body = |t: &str, m: &str| {
            format!(r#"{{"type":"error","error":{{"type":"{t}","message":"{m}"}}}}"#)
        };
        assert_eq!(
            k(529, &body("overloaded_error", "Overloaded")),
            ProviderErrorKind::Overloaded
        );
        assert_eq!(
            k(429, &body("rate_limit_error", "slow")),
            ProviderErrorKind::RateLimited
        );
        assert_eq!(
            k(402, &body("billing_error", "pay")),
            ProviderErrorKind::QuotaExhausted
        );
        assert_eq!(
            k(401, &body("authentication_error", "key")),
            ProviderErrorKind::Auth
        );
        assert_eq!(
            k(
                400,
                &body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum"
                )
            ),
            ProviderErrorKind::ContextWindow
        );
        assert_eq!(
            k(500, &body("api_error", "oops")),
            ProviderErrorKind::Server
        );
        assert_eq!(
            k(
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#
            ),
            ProviderErrorKind::QuotaExhausted
        );
    }

    #[test]
    fn rate_limit_resets_come_from_exhausted_limits() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut h = HeaderMap::new();
        h.insert("anthropic-ratelimit-tokens-remaining", "0".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2026-01-01T00:00:20Z".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "10".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2026-01-01T00:01:00Z".parse().unwrap(),
        );
        assert_eq!(rate_limit_reset(&h, now), Some(Duration::from_secs(20)));
    }

    #[test]
    fn a_refusal_is_a_content_policy_error() {
        let answer = r#"{"content":[],"stop_reason":"refusal","usage":{"input_tokens":1,"output_tokens":0}}"#;
        assert_eq!(
            parse_response("claude", answer).unwrap_err().kind,
            ProviderErrorKind::ContentPolicy
        );
    }
}
