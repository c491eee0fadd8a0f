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
    /// HTTP status with an OpenAI error body and an optional Retry-After (seconds).
    Status(u16, Option<u64>),
}

#[derive(Debug, Clone)]
pub struct ModelCall {
    /// The text before ':' of the last user message: tests tag messages by session.
    pub session_tag: String,
    pub user_messages: Vec<String>,
    /// Every message of the request, system and history included.
    pub message_count: usize,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub answered: bool,
}

#[derive(Default)]
struct ModelState {
    calls: Vec<ModelCall>,
    faults: VecDeque<ModelFault>,
    always_fail: Option<u16>,
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
            .route("/v1/chat/completions", post(complete))
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

async fn complete(State(fake): State<FakeModel>, Json(body): Json<Value>) -> Response {
    let user_messages: Vec<String> = body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .rev()
                .take_while(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        })
        .unwrap_or_default();
    let session_tag = user_messages
        .last()
        .and_then(|m| m.split(':').next())
        .unwrap_or_default()
        .to_owned();
    let (index, delay, fault) = {
        let mut state = fake.state.lock().unwrap();
        let fault = state
            .faults
            .pop_front()
            .or(state.always_fail.map(|s| ModelFault::Status(s, None)));
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
            message_count: body["messages"].as_array().map_or(0, Vec::len),
            started: Instant::now(),
            finished: None,
            answered: false,
        });
        (state.calls.len() - 1, state.delay, fault)
    };
    fake.call_started.notify_waiters();
    tokio::time::sleep(delay).await;
    let mut state = fake.state.lock().unwrap();
    *state.in_flight.get_mut(&session_tag).unwrap() -= 1;
    state.in_flight_total -= 1;
    state.calls[index].finished = Some(Instant::now());
    match fault {
        Some(ModelFault::Status(status, retry_after)) => {
            let code = if status == 429 {
                "rate_limit_exceeded"
            } else {
                "server_error"
            };
            let body = Json(
                json!({"error": {"message": "scripted fault", "type": code, "param": null, "code": code}}),
            );
            let status = StatusCode::from_u16(status).unwrap();
            match retry_after {
                Some(secs) => (status, [("retry-after", secs.to_string())], body).into_response(),
                None => (status, body).into_response(),
            }
        }
        None => {
            state.calls[index].answered = true;
            Json(json!({
                "id": format!("chatcmpl-{index}"),
                "object": "chat.completion",
                "created": 1767225661,
                "model": "fake-gpt",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": format!("answer to [{}]", user_messages.join(" | "))},
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
            }))
            .into_response()
        }
    }
}

/// How the fake platform answers deliveries.
#[derive(Debug, Clone, Copy)]
pub enum PlatformMode {
    Accept,
    /// HTTP status, with an optional Retry-After in seconds.
    Fail(u16, Option<u64>),
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
        }));
        let router = Router::new()
            .route("/replies", post(receive))
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
}

async fn receive(
    State(state): State<Arc<Mutex<PlatformState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    if state.key.verify(&signed, &body, now, 300).is_err() {
        state.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mode = state.script.pop_front().unwrap_or(state.mode);
    match mode {
        PlatformMode::Accept => {
            let event: ReplyEvent = serde_json::from_slice(&body).unwrap();
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
    }
}
