//! The model and the platform, on loopback, with the faults a scenario turns on.
//!
//! The model answers `ok <id> <id> …`, naming the message ids of the turn's new
//! user messages, so a reply can be checked against the messages it says it
//! answers. The platform receives the custom channel's signed callbacks and
//! records each reply it accepted, with its delivery id (the callback's
//! `webhook-id`).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use microclaw::channels::custom::ReplyEvent;
use serde_json::{Value, json};

async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(address)
}

/// A message id as the suite writes it: `m<session>x<seq>`.
pub fn is_message_id(word: &str) -> bool {
    word.strip_prefix('m')
        .and_then(|rest| rest.split_once('x'))
        .is_some_and(|(s, q)| {
            !s.is_empty()
                && !q.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && q.bytes().all(|b| b.is_ascii_digit())
        })
}

/// How the model misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelMode {
    Healthy,
    /// Every call fails (429, 500, 503 in turn): breakers open.
    Down,
    /// Every other call fails, with each fault in turn: 429 with Retry-After,
    /// 529, 500, a timeout, a malformed body, a body that stops half way.
    Flaky,
}

struct ModelState {
    latency: Mutex<Duration>,
    mode: Mutex<ModelMode>,
    calls: AtomicU64,
    faults: AtomicU64,
}

/// An OpenAI-compatible model.
pub struct FakeModel {
    pub base_url: String,
    state: Arc<ModelState>,
}

impl FakeModel {
    pub async fn start(latency: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(ModelState {
            latency: Mutex::new(latency),
            mode: Mutex::new(ModelMode::Healthy),
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(state.clone());
        let address = serve(router).await?;
        Ok(Self {
            base_url: format!("http://{address}/v1"),
            state,
        })
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap() = latency;
    }

    pub fn set_mode(&self, mode: ModelMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// (calls, calls answered with a fault)
    pub fn calls(&self) -> (u64, u64) {
        (
            self.state.calls.load(Ordering::Relaxed),
            self.state.faults.load(Ordering::Relaxed),
        )
    }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn error(status: u16, kind: &str) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"message": kind, "type": kind, "code": kind}})),
    )
        .into_response();
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", "1".parse().unwrap());
    }
    response
}

async fn complete(State(state): State<Arc<ModelState>>, Json(body): Json<Value>) -> Response {
    let call = state.calls.fetch_add(1, Ordering::Relaxed);
    let mode = *state.mode.lock().unwrap();
    let fault = match mode {
        ModelMode::Healthy => None,
        ModelMode::Down => Some([0, 1, 2][call as usize % 3]),
        ModelMode::Flaky if call % 2 == 0 => None,
        ModelMode::Flaky => Some((call / 2) as usize % 6),
    };
    if let Some(fault) = fault {
        state.faults.fetch_add(1, Ordering::Relaxed);
        return match fault {
            0 => error(429, "rate_limit_exceeded"),
            1 => error(500, "server_error"),
            2 => error(529, "overloaded"),
            3 => {
                // Longer than the model's timeout.
                tokio::time::sleep(Duration::from_secs(10)).await;
                error(500, "too_late")
            }
            4 => (
                StatusCode::OK,
                "{\"id\": \"chatcmpl-broken\", \"choices\": [",
            )
                .into_response(),
            _ => {
                // Headers and half a body, then the connection breaks.
                let half = Bytes::from_static(b"{\"id\":\"chatcmpl-cut\",\"object\":\"chat.compl");
                let stream = futures::stream::iter([
                    Ok::<Bytes, std::io::Error>(half),
                    Err(std::io::Error::other("the stream stops")),
                ]);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        };
    }
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    // The turn's new messages: the user messages after the last assistant one.
    let mut ids: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "assistant")
        .filter(|m| m["role"] == "user")
        .flat_map(|m| {
            content_text(&m["content"])
                .split_whitespace()
                .filter(|w| is_message_id(w))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    ids.reverse();
    let latency = *state.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    Json(json!({
        "id": "chatcmpl-faults", "object": "chat.completion", "created": 1767225661,
        "model": "fake-gpt",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": format!("ok {}", ids.join(" "))}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    }))
    .into_response()
}

/// One reply the platform accepted.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub delivery_id: String,
    pub conversation: String,
    pub in_reply_to: Vec<String>,
    pub part: i32,
    pub text: String,
}

#[derive(Default)]
struct PlatformState {
    arrivals: Mutex<Vec<Arrival>>,
    requests: AtomicU64,
    unreadable: AtomicU64,
    /// Every third request is refused with 429 + Retry-After, every seventh
    /// with 503.
    flaky: AtomicBool,
    /// Conversations ending in `7` get a permanent 400.
    refusing: AtomicBool,
}

/// Where the custom channel's replies go: `POST /replies`.
pub struct FakePlatform {
    pub callback_url: String,
    state: Arc<PlatformState>,
}

impl FakePlatform {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(PlatformState::default());
        let router = Router::new()
            .route("/replies", post(reply))
            .with_state(state.clone());
        let address = serve(router).await?;
        Ok(Self {
            callback_url: format!("http://{address}/replies"),
            state,
        })
    }

    pub fn set_flaky(&self, on: bool) {
        self.state.flaky.store(on, Ordering::Relaxed);
    }

    pub fn set_refusing(&self, on: bool) {
        self.state.refusing.store(on, Ordering::Relaxed);
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().unwrap().clone()
    }

    pub fn unreadable(&self) -> u64 {
        self.state.unreadable.load(Ordering::Relaxed)
    }
}

/// Whether the platform refuses `conversation` for good while refusing.
pub fn refused_conversation(conversation: &str) -> bool {
    conversation.ends_with('7')
}

async fn reply(
    State(state): State<Arc<PlatformState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(event) = serde_json::from_slice::<ReplyEvent>(&body) else {
        state.unreadable.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST.into_response();
    };
    if state.refusing.load(Ordering::Relaxed) && refused_conversation(&event.data.conversation_id) {
        return (StatusCode::BAD_REQUEST, "conversation archived").into_response();
    }
    if state.flaky.load(Ordering::Relaxed) {
        if n % 3 == 0 {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response();
        }
        if n % 7 == 0 {
            return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
        }
    }
    let delivery_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.arrivals.lock().unwrap().push(Arrival {
        delivery_id,
        conversation: event.data.conversation_id,
        in_reply_to: event.data.in_reply_to,
        part: event.data.part,
        text: event.data.text,
    });
    StatusCode::OK.into_response()
}
