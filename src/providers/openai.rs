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
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Message, Part, Provider, ProviderError, ProviderErrorKind, Role,
    StopReason, ToolCall, message::arguments_object,
};
use crate::config::ModelSettings;

pub struct OpenAiProvider {
    endpoint: String,
    model: String,
    params: serde_json::Map<String, Value>,
    headers: Vec<(String, String)>,
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
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    /// A JSON document in a string; servers also send "" or omit it.
    #[serde(default)]
    arguments: Option<String>,
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
        let mut builder =
            self.http
                .post(&self.endpoint)
                .json(&request_body(&self.model, &self.params, request));
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        if let Some(key) = key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers()).or_else(|| {
            (status.as_u16() == 429)
                .then(|| rate_limit_reset(response.headers()))
                .flatten()
        });
        let text = response.text().await.map_err(|e| {
            ProviderError::new(ProviderErrorKind::Timeout, format!("reading body: {e}"))
        })?;
        if !status.is_success() {
            let mut error = classify(status.as_u16(), &text);
            error.retry_after = retry_after;
            return Err(error);
        }
        parse_response(&self.model, &text)
    }
}

impl Provider for OpenAiProvider {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
        key: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        self.call(request, key).boxed()
    }
}

/// The Chat Completions request for `request`: the system prompt first, tool
/// results as one `tool` message per call (an error folded into the text).
pub fn request_body(
    model: &str,
    params: &serde_json::Map<String, Value>,
    request: &ChatRequest,
) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        match message.role {
            Role::User => {
                let only_text = message.parts.iter().all(|p| matches!(p, Part::Text { .. }));
                let content = if only_text {
                    json!(message.joined_text())
                } else {
                    Value::Array(
                        message
                            .parts
                            .iter()
                            .filter_map(|part| match part {
                                Part::Text { text } => Some(json!({"type": "text", "text": text})),
                                Part::Image { url } => {
                                    Some(json!({"type": "image_url", "image_url": {"url": url}}))
                                }
                                _ => None,
                            })
                            .collect(),
                    )
                };
                messages.push(json!({"role": "user", "content": content}));
            }
            Role::Assistant => {
                let text = message.joined_text();
                let calls: Vec<Value> = message
                    .tool_calls()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments.to_string()}
                        })
                    })
                    .collect();
                let mut wire = json!({
                    "role": "assistant",
                    "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
                });
                if !calls.is_empty() {
                    wire["tool_calls"] = Value::Array(calls);
                }
                messages.push(wire);
            }
            Role::Tool => {
                for part in &message.parts {
                    if let Part::ToolResult(result) = part {
                        let content = if result.is_error {
                            format!("Error: {}", result.content)
                        } else {
                            result.content.clone()
                        };
                        messages.push(json!({
                            "role": "tool",
                            "tool_call_id": result.call_id,
                            "content": content
                        }));
                    }
                }
            }
        }
    }
    let mut body = params.clone();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        body.insert(
            "tools".into(),
            Value::Array(
                request
                    .tools
                    .iter()
                    .map(|tool| {
                        json!({
                            "type": "function",
                            "function": {
                                "name": tool.name,
                                "description": tool.description,
                                "parameters": tool.schema
                            }
                        })
                    })
                    .collect(),
            ),
        );
    }
    Value::Object(body)
}

/// Reads a 200 answer into the internal model.
pub fn parse_response(model: &str, text: &str) -> Result<ChatResponse, ProviderError> {
    let body: CompletionBody = serde_json::from_str(text).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Malformed,
            format!("unexpected completion body: {e}"),
        )
    })?;
    let choice = body.choices.into_iter().next().ok_or_else(|| {
        ProviderError::new(ProviderErrorKind::Malformed, "completion has no choices")
    })?;
    let stop = match choice.finish_reason.as_deref() {
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        Some("content_filter") => StopReason::ContentFilter,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("none".into()),
    };
    if stop == StopReason::ContentFilter {
        return Err(ProviderError::new(
            ProviderErrorKind::ContentPolicy,
            "the answer was withheld by the content filter",
        ));
    }
    let mut parts = Vec::new();
    if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
        parts.push(Part::Text { text });
    }
    for call in choice.message.tool_calls {
        parts.push(Part::ToolCall(ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: arguments_object(call.function.arguments.as_deref().unwrap_or("")),
        }));
    }
    // Some servers end a tool-calling answer with "stop"; the calls decide.
    let stop = if parts.iter().any(|p| matches!(p, Part::ToolCall(_))) {
        StopReason::ToolUse
    } else {
        stop
    };
    let usage = body.usage;
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            parts,
        },
        stop,
        model: body.model.unwrap_or_else(|| model.to_owned()),
        input_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
        output_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
    })
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
    } else if code == "content_policy_violation" || code == "content_filter" {
        ProviderErrorKind::ContentPolicy
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
    super::retry_after_headers(
        headers,
        &["retry-after-ms", "llm_provider-retry-after-ms"],
        &["retry-after", "llm_provider-retry-after"],
    )
}

/// When an exhausted limit resets: `x-ratelimit-reset-{requests,tokens}` (a
/// duration such as `6m0s`, `59.9s` or `12ms`) of each limit whose
/// `x-ratelimit-remaining-…` is 0, the later of them.
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    ["requests", "tokens"]
        .iter()
        .filter(|kind| {
            headers
                .get(format!("x-ratelimit-remaining-{kind}"))
                .is_some_and(|v| v.as_bytes() == b"0")
        })
        .filter_map(|kind| {
            headers
                .get(format!("x-ratelimit-reset-{kind}"))
                .and_then(|v| v.to_str().ok())
                .and_then(go_duration)
        })
        .max()
}

/// Parses a Go-style duration: `1h2m3.5s`, `6m0s`, `59.9s`, `12ms`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    crate::channels::seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_resets_are_read_as_go_durations() {
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("59.9s"), Some(Duration::from_secs_f64(59.9)));
        assert_eq!(go_duration("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration("9999999999999999h"), None, "never a panic");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "1.5s".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "5000".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        assert_eq!(
            rate_limit_reset(&h),
            Some(Duration::from_millis(1500)),
            "only exhausted limits count"
        );
    }

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
    fn tool_calls_round_trip_through_the_wire_format() {
        let answer = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
              {"id":"call_1","type":"function","function":{"name":"current_time","arguments":"{\"timezone\":\"Europe/Paris\"}"}},
              {"id":"call_2","type":"function","function":{"name":"current_time","arguments":""}}]},
              "finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#;
        let response = parse_response("gpt-4o-mini", answer).unwrap();
        assert_eq!(response.stop, StopReason::ToolUse);
        let calls: Vec<&ToolCall> = response.message.tool_calls().collect();
        assert_eq!(calls[0].arguments, json!({"timezone": "Europe/Paris"}));
        assert_eq!(
            calls[1].arguments,
            json!({}),
            "an empty string is an empty object"
        );
        assert_eq!(response.input_tokens, Some(20));

        let request = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::text(Role::User, "what time is it in Paris?"),
                response.message.clone(),
                Message {
                    role: Role::Tool,
                    parts: vec![
                        Part::ToolResult(crate::providers::ToolResult {
                            call_id: "call_1".into(),
                            content: "12:00".into(),
                            is_error: false,
                        }),
                        Part::ToolResult(crate::providers::ToolResult {
                            call_id: "call_2".into(),
                            content: "missing timezone".into(),
                            is_error: true,
                        }),
                    ],
                },
            ],
            tools: vec![],
            trace_id: "t".into(),
        };
        let body = request_body("gpt-4o-mini", &Default::default(), &request);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(messages[2]["content"], Value::Null);
        assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"timezone":"Europe/Paris"}"#
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "12:00"})
        );
        assert_eq!(messages[4]["content"], "Error: missing timezone");
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
