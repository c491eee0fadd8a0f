//! Fakes on loopback that speak the documented wire formats: an OpenAI-compatible
//! model server and a custom-channel platform that receives signed replies.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use microclaw::channels::{
    custom::ReplyEvent,
    standard_webhooks::{SignedHeaders, SigningKey},
};
use serde_json::{Value, json};
use tokio::sync::Notify;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// A scripted answer of the fake model.
#[derive(Debug, Clone)]
pub enum ModelFault {
    /// HTTP status with the wire format's error body and an optional Retry-After (seconds).
    Status(u16, Option<u64>),
    /// The context-window error exactly as each API sends it (400).
    ContextTooLong,
    /// Quota or billing exhausted (OpenAI 429 insufficient_quota, Anthropic 402 billing_error).
    QuotaExhausted,
}

#[derive(Debug, Clone)]
pub struct ModelCall {
    /// The text before ':' of the last user message: tests tag messages by session.
    pub session_tag: String,
    pub user_messages: Vec<String>,
    /// Contents of every tool result in the request.
    pub tool_results: Vec<String>,
    /// Tools the request offered.
    pub tools_offered: usize,
    /// Image URLs in the request's messages.
    pub images: Vec<String>,
    /// The API key the call carried (bearer or x-api-key).
    pub api_key: String,
    /// Every message of the request, system and history included.
    pub message_count: usize,
    /// The system prompt (OpenAI's system message, Anthropic's `system`).
    pub system: String,
    /// The text of every non-system message, in order.
    pub texts: Vec<String>,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub answered: bool,
}

#[derive(Default)]
struct ModelState {
    calls: Vec<ModelCall>,
    faults: VecDeque<ModelFault>,
    /// Tool calls to answer with, one per call: (name, arguments).
    tool_calls: VecDeque<(String, Value)>,
    always_fail: Option<u16>,
    /// A fault every call gets.
    always: Option<ModelFault>,
    delay: Duration,
    in_flight: HashMap<String, usize>,
    in_flight_total: usize,
    max_in_flight_total: usize,
    session_overlap: bool,
}

/// An OpenAI Chat Completions server that records every call, scripts faults, and
/// notices when two calls of one session overlap.
#[derive(Clone)]
pub struct FakeModel {
    pub base_url: String,
    state: Arc<Mutex<ModelState>>,
    pub call_started: Arc<Notify>,
}

impl FakeModel {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ModelState::default()));
        let call_started = Arc::new(Notify::new());
        let fake = FakeModel {
            base_url: String::new(),
            state,
            call_started,
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(fake.clone());
        let address = serve(router).await;
        FakeModel {
            base_url: format!("http://{address}/v1"),
            ..fake
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn push_fault(&self, fault: ModelFault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    /// The next answer asks for this tool call.
    pub fn push_tool_call(&self, name: &str, arguments: Value) {
        self.state
            .lock()
            .unwrap()
            .tool_calls
            .push_back((name.to_owned(), arguments));
    }

    /// The Anthropic base URL (the fake serves both wire formats).
    pub fn anthropic_base_url(&self) -> String {
        self.base_url.trim_end_matches("/v1").to_owned()
    }

    /// Ends `always` and `always_fail`: calls succeed again.
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.always = None;
        state.always_fail = None;
    }

    /// Every call gets `fault` (None: back to normal).
    pub fn always(&self, fault: Option<ModelFault>) {
        self.state.lock().unwrap().always = fault;
    }

    pub fn always_fail(&self, status: u16) {
        self.state.lock().unwrap().always_fail = Some(status);
    }

    pub fn calls(&self) -> Vec<ModelCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn session_overlap(&self) -> bool {
        self.state.lock().unwrap().session_overlap
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight_total
    }
}

/// The two model wire formats the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

async fn openai(
    State(fake): State<FakeModel>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    answer(fake, Wire::OpenAi, key, body).await
}

async fn anthropic(
    State(fake): State<FakeModel>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("anthropic-version").is_none() || headers.get("x-api-key").is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "anthropic-version and x-api-key are required",
        )
            .into_response();
    }
    let key = headers["x-api-key"].to_str().unwrap_or_default().to_owned();
    answer(fake, Wire::Anthropic, key, body).await
}

/// Text of a message's content: a string, or the text blocks of a block list.
fn texts(content: &Value) -> Vec<String> {
    match content {
        Value::String(text) => vec![text.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

async fn answer(fake: FakeModel, wire: Wire, api_key: String, body: Value) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let user_messages: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] == "user")
        .flat_map(|m| texts(&m["content"]).into_iter().rev())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let tool_results: Vec<String> = messages
        .iter()
        .flat_map(|m| match wire {
            Wire::OpenAi if m["role"] == "tool" => {
                vec![m["content"].as_str().unwrap_or_default().to_owned()]
            }
            Wire::Anthropic => m["content"]
                .as_array()
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter(|b| b["type"] == "tool_result")
                        .map(|b| b["content"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        })
        .collect();
    let session_tag = user_messages
        .last()
        .and_then(|m| m.split(':').next())
        .unwrap_or_default()
        .to_owned();
    let (index, delay, fault, tool_call) = {
        let mut state = fake.state.lock().unwrap();
        let fault = state
            .faults
            .pop_front()
            .or_else(|| state.always.clone())
            .or(state.always_fail.map(|s| ModelFault::Status(s, None)));
        let tool_call = if fault.is_none() {
            state.tool_calls.pop_front()
        } else {
            None
        };
        let counter = state.in_flight.entry(session_tag.clone()).or_default();
        *counter += 1;
        if *counter > 1 {
            state.session_overlap = true;
        }
        state.in_flight_total += 1;
        state.max_in_flight_total = state.max_in_flight_total.max(state.in_flight_total);
        state.calls.push(ModelCall {
            session_tag: session_tag.clone(),
            user_messages: user_messages.clone(),
            tool_results,
            tools_offered: body["tools"].as_array().map_or(0, Vec::len),
            images: messages
                .iter()
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter_map(|block| {
                    block["image_url"]["url"]
                        .as_str()
                        .or(block["source"]["url"].as_str())
                        .map(str::to_owned)
                })
                .collect(),
            api_key,
            message_count: messages.len(),
            system: match wire {
                Wire::OpenAi => messages
                    .iter()
                    .filter(|m| m["role"] == "system")
                    .flat_map(|m| texts(&m["content"]))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Wire::Anthropic => texts(&body["system"]).join("\n"),
            },
            texts: messages
                .iter()
                .filter(|m| m["role"] != "system")
                .flat_map(|m| texts(&m["content"]))
                .collect(),
            started: Instant::now(),
            finished: None,
            answered: false,
        });
        (state.calls.len() - 1, state.delay, fault, tool_call)
    };
    // Counts the call out even when the caller goes away mid-call (a killed
    // worker), so a later call is not reported as an overlap.
    struct InFlight {
        state: Arc<Mutex<ModelState>>,
        session_tag: String,
    }
    impl Drop for InFlight {
        fn drop(&mut self) {
            let mut state = self.state.lock().unwrap();
            if let Some(count) = state.in_flight.get_mut(&self.session_tag) {
                *count -= 1;
            }
            state.in_flight_total -= 1;
        }
    }
    let guard = InFlight {
        state: fake.state.clone(),
        session_tag: session_tag.clone(),
    };
    fake.call_started.notify_waiters();
    tokio::time::sleep(delay).await;
    drop(guard);
    let mut state = fake.state.lock().unwrap();
    state.calls[index].finished = Some(Instant::now());
    if let Some(fault) = fault {
        let (status, retry_after, openai_code, anthropic_type, message) = match fault {
            ModelFault::Status(status, retry_after) => {
                let openai = if status == 429 {
                    "rate_limit_exceeded"
                } else {
                    "server_error"
                };
                let anthropic = match status {
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                (status, retry_after, openai, anthropic, "scripted fault")
            }
            ModelFault::ContextTooLong => (
                400,
                None,
                "context_length_exceeded",
                "invalid_request_error",
                match wire {
                    Wire::OpenAi => {
                        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
                    }
                    Wire::Anthropic => "prompt is too long: 210000 tokens > 200000 maximum",
                },
            ),
            ModelFault::QuotaExhausted => match wire {
                Wire::OpenAi => (
                    429,
                    None,
                    "insufficient_quota",
                    "",
                    "You exceeded your current quota",
                ),
                Wire::Anthropic => (
                    402,
                    None,
                    "",
                    "billing_error",
                    "Your credit balance is too low",
                ),
            },
        };
        let body = match wire {
            Wire::OpenAi => {
                json!({"error": {"message": message, "type": openai_code, "param": null, "code": openai_code}})
            }
            Wire::Anthropic => {
                json!({"type": "error", "error": {"type": anthropic_type, "message": message}})
            }
        };
        let status = StatusCode::from_u16(status).unwrap();
        return match retry_after {
            Some(secs) => (status, [("retry-after", secs.to_string())], Json(body)).into_response(),
            None => (status, Json(body)).into_response(),
        };
    }
    state.calls[index].answered = true;
    let text = format!("answer to [{}]", user_messages.join(" | "));
    let call_id = format!("call_{index}");
    Json(match (wire, tool_call) {
        (Wire::OpenAi, Some((name, arguments))) => json!({
            "id": format!("chatcmpl-{index}"), "object": "chat.completion", "model": "fake-gpt",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": call_id, "type": "function",
                                "function": {"name": name, "arguments": arguments.to_string()}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        }),
        (Wire::OpenAi, None) => json!({
            "id": format!("chatcmpl-{index}"), "object": "chat.completion", "created": 1767225661,
            "model": "fake-gpt",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        }),
        (Wire::Anthropic, Some((name, arguments))) => json!({
            "id": format!("msg_{index}"), "type": "message", "role": "assistant", "model": "fake-claude",
            "content": [{"type": "tool_use", "id": format!("toolu_{index}"), "name": name, "input": arguments}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 5}
        }),
        (Wire::Anthropic, None) => json!({
            "id": format!("msg_{index}"), "type": "message", "role": "assistant", "model": "fake-claude",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 5}
        }),
    })
    .into_response()
}

/// How the fake platform answers deliveries.
#[derive(Debug, Clone, Copy)]
pub enum PlatformMode {
    Accept,
    /// HTTP status, with an optional Retry-After in seconds.
    Fail(u16, Option<u64>),
    /// A redirect with this status to `/elsewhere` on the same server, which
    /// counts what reaches it.
    Redirect(u16),
    /// No answer for this long, then 503: a platform that hangs.
    Stall(Duration),
}

#[derive(Debug, Clone)]
pub struct ReceivedReply {
    pub webhook_id: String,
    pub event: ReplyEvent,
    pub at: Instant,
}

struct PlatformState {
    key: SigningKey,
    mode: PlatformMode,
    /// Answers to give before falling back to `mode`.
    script: VecDeque<PlatformMode>,
    replies: Vec<ReceivedReply>,
    requests: usize,
    bad_signatures: usize,
    /// Requests that followed a redirect to `/elsewhere`.
    redirected: usize,
}

/// The other end of the custom channel: verifies each reply's signature and
/// records it, answering as told.
#[derive(Clone)]
pub struct FakePlatform {
    pub callback_url: String,
    state: Arc<Mutex<PlatformState>>,
}

impl FakePlatform {
    pub async fn start(secret: &str) -> Self {
        let state = Arc::new(Mutex::new(PlatformState {
            key: SigningKey::parse(secret).unwrap(),
            mode: PlatformMode::Accept,
            script: VecDeque::new(),
            replies: Vec::new(),
            requests: 0,
            bad_signatures: 0,
            redirected: 0,
        }));
        let router = Router::new()
            .route("/replies", post(receive))
            .route(
                "/elsewhere",
                axum::routing::any(
                    |State(state): State<Arc<Mutex<PlatformState>>>| async move {
                        state.lock().unwrap().redirected += 1;
                        StatusCode::OK
                    },
                ),
            )
            .with_state(state.clone());
        let address = serve(router).await;
        FakePlatform {
            callback_url: format!("http://{address}/replies"),
            state,
        }
    }

    pub fn set_mode(&self, mode: PlatformMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn script(&self, answers: &[PlatformMode]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    pub fn replies(&self) -> Vec<ReceivedReply> {
        self.state.lock().unwrap().replies.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    pub fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }

    pub fn redirected(&self) -> usize {
        self.state.lock().unwrap().redirected
    }
}

async fn receive(
    State(state): State<Arc<Mutex<PlatformState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match platform_answer(&state, &headers, &body) {
        Ok(response) => response,
        Err(stall) => {
            tokio::time::sleep(stall).await;
            (StatusCode::SERVICE_UNAVAILABLE, "stalled").into_response()
        }
    }
}

/// The platform's answer, or how long it hangs before failing.
fn platform_answer(
    state: &Mutex<PlatformState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Duration> {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let signed = SignedHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    if state.key.verify(&signed, body, now, 300).is_err() {
        state.bad_signatures += 1;
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    }
    let mode = state.script.pop_front().unwrap_or(state.mode);
    Ok(match mode {
        PlatformMode::Accept => {
            let event: ReplyEvent = serde_json::from_slice(body).unwrap();
            state.replies.push(ReceivedReply {
                webhook_id: signed.id.to_owned(),
                event,
                at: Instant::now(),
            });
            StatusCode::OK.into_response()
        }
        PlatformMode::Fail(status, retry_after) => {
            let status = StatusCode::from_u16(status).unwrap();
            match retry_after {
                Some(secs) => {
                    (status, [("retry-after", secs.to_string())], "try later").into_response()
                }
                None => (status, "refused").into_response(),
            }
        }
        PlatformMode::Redirect(status) => (
            StatusCode::from_u16(status).unwrap(),
            [("location", "/elsewhere")],
        )
            .into_response(),
        PlatformMode::Stall(stall) => return Err(stall),
    })
}

/// A platform Web API in the Slack / Telegram style: records every call (path,
/// Authorization header, JSON body) and answers `{"ok":true}` or, when scripted, an
/// error (with an optional Retry-After header).
#[derive(Clone)]
pub struct FakeApi {
    pub base_url: String,
    state: Arc<Mutex<ApiState>>,
}

#[derive(Default)]
struct ApiState {
    calls: Vec<(String, Value)>,
    /// The query string of every call.
    queries: Vec<String>,
    /// The HTTP method of every call.
    methods: Vec<String>,
    authorizations: Vec<String>,
    /// Answers for the next message sends: (HTTP status, body, Retry-After).
    script: VecDeque<(u16, Value, Option<u64>)>,
}

const SEND_METHODS: &[&str] = &[
    "/sendMessage",
    "/chat.postMessage",
    "/messages",
    "/Messages.json",
    "/api/v1/message/text",
];

/// A message send (not a typing indicator or read receipt).
fn is_send(path: &str, body: &Value) -> bool {
    (SEND_METHODS.iter().any(|m| path.ends_with(m)) || path.contains("/webhooks/"))
        && body.get("typing_indicator").is_none()
}

impl FakeApi {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let router = Router::new().fallback(api_method).with_state(state.clone());
        let address = serve(router).await;
        FakeApi {
            base_url: format!("http://{address}"),
            state,
        }
    }

    pub fn script(&self, status: u16, body: Value) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((status, body, None));
    }

    pub fn script_with_retry_after(&self, status: u16, body: Value, retry_after: u64) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((status, body, Some(retry_after)));
    }

    /// The Authorization header of every call.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.lock().unwrap().authorizations.clone()
    }

    /// The HTTP method of every call.
    pub fn methods(&self) -> Vec<String> {
        self.state.lock().unwrap().methods.clone()
    }

    /// The query string of every call ("" when none).
    pub fn queries(&self) -> Vec<String> {
        self.state.lock().unwrap().queries.clone()
    }

    /// Every call as (path, body).
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn sent_messages(&self) -> Vec<(String, Value)> {
        self.calls()
            .into_iter()
            .filter(|(path, body)| is_send(path, body))
            .collect()
    }
}

async fn api_method(
    State(state): State<Arc<Mutex<ApiState>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    // JSON APIs, or a form (Twilio) as an object of its fields.
    let body: Value = serde_json::from_slice(&raw).unwrap_or_else(|_| {
        Value::Object(
            microclaw::channels::form_pairs(&raw)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    });
    let mut state = state.lock().unwrap();
    let path = uri.path().to_owned();
    let send = is_send(&path, &body);
    state.calls.push((path.clone(), body));
    state
        .queries
        .push(uri.query().unwrap_or_default().to_owned());
    state.methods.push(method.to_string());
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.authorizations.push(authorization);
    if send && let Some((status, answer, retry_after)) = state.script.pop_front() {
        let status = StatusCode::from_u16(status).unwrap();
        return match retry_after {
            Some(secs) => {
                (status, [("retry-after", secs.to_string())], Json(answer)).into_response()
            }
            None => (status, Json(answer)).into_response(),
        };
    }
    Json(json!({"ok": true, "result": {"message_id": state.calls.len()}})).into_response()
}
