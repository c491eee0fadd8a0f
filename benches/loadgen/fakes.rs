//! The two servers MicroClaw talks to during a load run, in-process on loopback:
//! a model speaking OpenAI Chat Completions and a platform receiving replies
//! (the custom channel's signed callbacks and Slack's `chat.postMessage`).
//!
//! Both only record what the report needs, cheaply: the model the time each
//! probe token's call took, the platform each reply's arrival time and tokens.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use microclaw::channels::custom::ReplyEvent;
use serde_json::{Value, json};

/// The probe a message carries, `m{session}x{seq}`: the model echoes it in its
/// reply, so a reply names the messages it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    pub session: u32,
    pub seq: u32,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}x{}", self.session, self.seq)
    }
}

/// Every probe token in `text`, as whole words.
pub fn tokens_in(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        let end = bytes[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| from + n);
        (text[from..end].parse::<u32>().ok(), end)
    };
    let mut tokens = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find('m') {
        let start = at + offset;
        at = start + 1;
        if start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let (Some(session), x) = digits(start + 1) else {
            continue;
        };
        if bytes.get(x) != Some(&b'x') {
            continue;
        }
        let (Some(seq), end) = digits(x + 1) else {
            continue;
        };
        if bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
            continue;
        }
        tokens.push(Token { session, seq });
        at = end;
    }
    tokens
}

async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(address)
}

/// Filler the model pads its replies with (plain words: no Markdown, nothing a
/// channel would escape).
const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
tempor incididunt ut labore et dolore magna aliqua ";

struct ModelState {
    latency: Duration,
    reply_chars: usize,
    /// How long the call that answered each token took, as measured here.
    call_times: Mutex<HashMap<Token, Duration>>,
    turn_calls: AtomicU64,
    other_calls: AtomicU64,
}

/// An OpenAI-compatible model that waits `latency`, then answers every probe
/// token of the turn's new user messages, padded to `reply_chars`.
pub struct FakeModel {
    pub base_url: String,
    state: Arc<ModelState>,
}

impl FakeModel {
    pub async fn start(latency: Duration, reply_chars: usize) -> anyhow::Result<Self> {
        let state = Arc::new(ModelState {
            latency,
            reply_chars,
            call_times: Mutex::default(),
            turn_calls: AtomicU64::new(0),
            other_calls: AtomicU64::new(0),
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

    /// The measured time of the model call that answered `token`.
    pub fn call_time(&self, token: Token) -> Option<Duration> {
        self.state.call_times.lock().unwrap().get(&token).copied()
    }

    /// Calls of turns (they offer the agent's tools), and the others (compaction's
    /// summarizer).
    pub fn calls(&self) -> (u64, u64) {
        (
            self.state.turn_calls.load(Ordering::Relaxed),
            self.state.other_calls.load(Ordering::Relaxed),
        )
    }
}

/// Text of a message's content: a string, or the text parts of a part list.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn complete(State(state): State<Arc<ModelState>>, Json(body): Json<Value>) -> Response {
    let started = Instant::now();
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    // The turn's new messages: the user messages after the last assistant one.
    let tokens: Vec<Token> = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "assistant")
        .filter(|m| m["role"] == "user")
        .flat_map(|m| tokens_in(&content_text(&m["content"])))
        .collect();
    // A turn offers the agent's tools; compaction's summarizer offers none. Its
    // reply is a summary nobody receives, so its call is not timed.
    let is_turn = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    tokio::time::sleep(state.latency).await;
    let mut text = tokens
        .iter()
        .rev()
        .map(Token::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let answer_len = text.len();
    while text.len() < state.reply_chars {
        text.push(' ');
        text.push_str(FILLER);
    }
    text.truncate(state.reply_chars.max(answer_len));
    if is_turn {
        state.turn_calls.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let mut times = state.call_times.lock().unwrap();
        for token in &tokens {
            times.insert(*token, elapsed);
        }
    } else {
        state.other_calls.fetch_add(1, Ordering::Relaxed);
    }
    Json(json!({
        "id": "chatcmpl-load", "object": "chat.completion", "created": 1767225661,
        "model": "fake-gpt",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    }))
    .into_response()
}

/// One reply as the platform received it.
#[derive(Debug, Clone)]
pub struct ReceivedReply {
    pub at: Instant,
    pub tokens: Vec<Token>,
}

#[derive(Default)]
struct PlatformState {
    replies: Mutex<Vec<ReceivedReply>>,
    unreadable: AtomicU64,
    slack_ts: AtomicU64,
}

/// Where replies go: `POST /replies` (custom channel callbacks) and
/// `POST /slack/chat.postMessage` (the Slack connector's API base is `/slack`).
pub struct FakePlatform {
    pub callback_url: String,
    pub slack_api_url: String,
    state: Arc<PlatformState>,
}

impl FakePlatform {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(PlatformState::default());
        let router = Router::new()
            .route("/replies", post(custom_reply))
            .route("/slack/chat.postMessage", post(slack_post_message))
            .with_state(state.clone());
        let address = serve(router).await?;
        Ok(Self {
            callback_url: format!("http://{address}/replies"),
            slack_api_url: format!("http://{address}/slack"),
            state,
        })
    }

    /// The replies received from index `from` on.
    pub fn replies_since(&self, from: usize) -> Vec<ReceivedReply> {
        self.state.replies.lock().unwrap()[from..].to_vec()
    }

    /// Requests whose body was not a reply of the channel's format.
    pub fn unreadable(&self) -> u64 {
        self.state.unreadable.load(Ordering::Relaxed)
    }
}

impl PlatformState {
    fn record(&self, text: &str) {
        self.replies.lock().unwrap().push(ReceivedReply {
            at: Instant::now(),
            tokens: tokens_in(text),
        });
    }
}

async fn custom_reply(State(state): State<Arc<PlatformState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReplyEvent>(&body) {
        Ok(event) => {
            state.record(&event.data.text);
            StatusCode::OK.into_response()
        }
        Err(_) => {
            state.unreadable.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST.into_response()
        }
    }
}

async fn slack_post_message(State(state): State<Arc<PlatformState>>, body: Bytes) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(channel), Some(text)) = (message["channel"].as_str(), message["text"].as_str())
    else {
        state.unreadable.fetch_add(1, Ordering::Relaxed);
        return Json(json!({"ok": false, "error": "invalid_arguments"})).into_response();
    };
    state.record(text);
    let n = state.slack_ts.fetch_add(1, Ordering::Relaxed);
    Json(json!({"ok": true, "channel": channel, "ts": format!("1767225600.{n:06}")}))
        .into_response()
}
