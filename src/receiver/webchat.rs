//! The web chat's page and API, served by the receiver for every `webchat`
//! connector (the channel itself, with its tokens, is `channels::webchat`):
//!
//! - `GET  /chat/{connector}`: the chat page (plain HTML and script, no build step).
//! - `POST /chat/{connector}/session`: a new visitor and its session token.
//! - `POST /chat/{connector}/messages` (bearer token), body `{"id", "text"}`:
//!   one message. `id` is the page's own id for it; sending it again is a no-op,
//!   so the page can retry after a network error. A 2xx means the message and its
//!   turn job are committed, as for any webhook.
//! - `GET  /chat/{connector}/messages?after=SEQ` (bearer token): the visitor's
//!   messages and replies after `SEQ`, or the newest ones without `after`.
//! - `GET  /chat/{connector}/events?token=…&after=SEQ`: the same as server-sent
//!   events, live (`id:` is the message's seq, so a reconnecting `EventSource`
//!   resumes after the last one it saw through `Last-Event-ID`). Replies written
//!   by a worker in another process are found by reading the store every
//!   `POLL` while the stream is open.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::{
    channels::{InboundMessage, webchat::VisitorTokens},
    config::ChannelKind,
    deployment::{Connector, Deployment},
    store::WebchatMessage,
};

/// How often an open event stream looks for new messages.
const POLL: Duration = Duration::from_millis(300);
/// Longest message a visitor may send, in characters.
const MAX_TEXT_CHARS: usize = 4000;
/// Messages per read at most.
const PAGE: i64 = 100;

pub fn router(deployment: Arc<Deployment>) -> Router {
    Router::new()
        .route("/chat/{connector_id}", get(page))
        .route("/chat/{connector_id}/session", post(new_session))
        .route("/chat/{connector_id}/messages", post(send).get(messages))
        .route("/chat/{connector_id}/events", get(events))
        .with_state(deployment)
}

/// A refusal with its reason, in the receiver's error shape.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

fn refuse(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        detail: detail.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = Json(json!({ "code": self.code, "detail": self.detail }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            return (self.status, [(header::RETRY_AFTER, "5")], body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// The web chat connector `id`, with its token keys.
fn web_chat<'a>(
    deployment: &'a Deployment,
    id: &str,
) -> Result<(&'a Connector, VisitorTokens), Refusal> {
    deployment
        .connectors
        .get(id)
        .filter(|c| c.channel.kind() == ChannelKind::Webchat)
        .and_then(|c| Some((c, VisitorTokens::of(&c.settings)?)))
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "unknown_connector",
                format!("no web chat connector named `{id}`"),
            )
        })
}

/// The visitor a request's token names (header `Authorization: Bearer …`, or
/// `token` for `EventSource`, which cannot set headers).
fn visitor(
    tokens: &VisitorTokens,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<String, Refusal> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token);
    let Some(presented) = presented else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "a visitor token is required (POST /chat/{connector}/session)",
        ));
    };
    tokens.verify(presented, Utc::now()).ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the visitor token is not valid or has expired",
        )
    })
}

fn store_unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(error = %e, "web chat: store unavailable");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the database is unavailable; retry later",
    )
}

async fn new_session(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
) -> Result<Response, Refusal> {
    let (_, tokens) = web_chat(&deployment, &connector_id)?;
    let visitor_id = uuid::Uuid::new_v4().simple().to_string();
    let expires_at = Utc::now()
        + chrono::Duration::from_std(crate::channels::webchat::SESSION_TTL).expect("the TTL fits");
    Ok(Json(json!({
        "visitor_id": visitor_id,
        "token": tokens.issue(&visitor_id, expires_at),
        "expires_at": expires_at,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct VisitorMessage {
    id: String,
    text: String,
}

async fn send(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let arrived = std::time::SystemTime::now();
    let response = accept(&deployment, &connector_id, &headers, &body, arrived)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let outcome = match response.status() {
        s if s.is_success() => "ok",
        s if s.is_server_error() => "unavailable",
        _ => "rejected",
    };
    crate::metrics::webhook("webchat", outcome, started.elapsed());
    response
}

async fn accept(
    deployment: &Deployment,
    connector_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    arrived: std::time::SystemTime,
) -> Result<Response, Refusal> {
    let (connector, tokens) = web_chat(deployment, connector_id)?;
    let visitor_id = visitor(&tokens, headers, None)?;
    let message: VisitorMessage = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            format!("expected {{\"id\": \"…\", \"text\": \"…\"}}: {e}"),
        )
    })?;
    let id_ok = !message.id.is_empty()
        && message.id.len() <= 100
        && message
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            "`id` must be 1 to 100 letters, digits, - or _",
        ));
    }
    let text = message.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            format!("`text` must have 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    // The visitor's own line goes into the mailbox first, so it is always
    // before its reply; a retry of this request writes it once.
    deployment
        .store
        .webchat_append(
            connector_id,
            &visitor_id,
            "visitor",
            &format!("in:{}", message.id),
            text,
        )
        .await
        .map_err(store_unavailable)?;
    let inbound = InboundMessage {
        platform_message_id: format!("{visitor_id}:{}", message.id),
        sender_id: visitor_id.clone(),
        sender_name: None,
        conversation_id: visitor_id,
        thread_id: None,
        is_group: false,
        text: text.to_owned(),
        attachments: Vec::new(),
        sent_at: Some(Utc::now()),
    };
    Ok(
        match super::accept(deployment, connector, connector_id, inbound, arrived).await {
            Ok(answer) => Json(answer).into_response(),
            Err(e) => e.into_response(),
        },
    )
}

#[derive(Deserialize)]
struct Cursor {
    after: Option<i64>,
    token: Option<String>,
}

fn listed(messages: &[WebchatMessage]) -> serde_json::Value {
    json!({
        "messages": messages,
        "next": messages.last().map(|m| m.seq),
    })
}

async fn messages(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
    Query(cursor): Query<Cursor>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (_, tokens) = web_chat(&deployment, &connector_id)?;
    let visitor_id = visitor(&tokens, &headers, None)?;
    let store = &deployment.store;
    let read = match cursor.after {
        Some(after) => {
            store
                .webchat_messages(&connector_id, &visitor_id, after, PAGE)
                .await
        }
        None => store.webchat_recent(&connector_id, &visitor_id, PAGE).await,
    };
    let messages = read.map_err(store_unavailable)?;
    Ok(Json(listed(&messages)).into_response())
}

async fn events(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
    Query(cursor): Query<Cursor>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (_, tokens) = web_chat(&deployment, &connector_id)?;
    let visitor_id = visitor(&tokens, &headers, cursor.token.as_deref())?;
    // A reconnecting EventSource says where it stopped.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(cursor.after).unwrap_or(0);
    struct Stream {
        deployment: Arc<Deployment>,
        connector_id: String,
        visitor_id: String,
        after: i64,
        ready: std::collections::VecDeque<WebchatMessage>,
    }
    let state = Stream {
        deployment,
        connector_id,
        visitor_id,
        after,
        ready: Default::default(),
    };
    let closing = state.deployment.streams_closing();
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(message) = s.ready.pop_front() {
                let event = Event::default()
                    .id(message.seq.to_string())
                    .event("message")
                    .json_data(&message)
                    .expect("a message serializes");
                return Some((Ok::<_, Infallible>(event), s));
            }
            match s
                .deployment
                .store
                .webchat_messages(&s.connector_id, &s.visitor_id, s.after, PAGE)
                .await
            {
                Ok(found) if !found.is_empty() => {
                    s.after = found.last().map_or(s.after, |m| m.seq);
                    s.ready.extend(found);
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    // The page's EventSource reconnects and resumes.
                    tracing::warn!(error = %e, "web chat: event stream ends; store unavailable");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(futures::StreamExt::take_until(stream, closing))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn page(
    State(deployment): State<Arc<Deployment>>,
    Path(connector_id): Path<String>,
) -> Result<Response, Refusal> {
    web_chat(&deployment, &connector_id)?;
    Ok((
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE_HTML.replace("{CONNECTOR}", &connector_id)),
    )
        .into_response())
}

/// The chat page. `{CONNECTOR}` is the connector id (letters, digits, - and _
/// only, checked by the config, so it is safe in HTML and script). Messages are
/// put on the page as text nodes, never as HTML.
const PAGE_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; background: #f6f6f6; }
  header { padding: .75rem 1rem; background: #222; color: #fff; font-weight: 600; }
  #log { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column; gap: .5rem; }
  .msg { max-width: 75%; padding: .5rem .75rem; border-radius: .75rem; white-space: pre-wrap; word-wrap: break-word; }
  .visitor { align-self: flex-end; background: #2b6cb0; color: #fff; }
  .agent { align-self: flex-start; background: #fff; border: 1px solid #ddd; }
  .pending { opacity: .6; }
  .failed { background: #c53030; }
  form { display: flex; gap: .5rem; padding: .75rem; background: #fff; border-top: 1px solid #ddd; }
  #text { flex: 1; padding: .5rem; font: inherit; }
  #status { padding: 0 1rem .5rem; color: #666; font-size: .85rem; min-height: 1em; }
</style>
</head>
<body>
<header>Chat</header>
<div id="log" aria-live="polite"></div>
<div id="status"></div>
<form id="composer">
  <input id="text" autocomplete="off" placeholder="Type a message" maxlength="4000" required>
  <button id="send" type="submit">Send</button>
</form>
<script>
(() => {
  const base = "/chat/{CONNECTOR}";
  const storageKey = "microclaw-webchat-{CONNECTOR}";
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const seen = new Set();
  let token = null;
  let after = 0;

  function show(role, text, seq, extra) {
    if (seq !== undefined && seen.has(seq)) return null;
    if (seq !== undefined) seen.add(seq);
    const div = document.createElement("div");
    div.className = "msg " + role + (extra ? " " + extra : "");
    div.textContent = text;
    if (seq !== undefined) div.dataset.seq = seq;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  const sentHere = new Set();

  function accept(message) {
    after = Math.max(after, message.seq);
    // This page showed its own messages when they were sent.
    if (sentHere.has(message.key)) {
      seen.add(message.seq);
      return;
    }
    show(message.role, message.text, message.seq);
  }

  async function session() {
    const saved = localStorage.getItem(storageKey);
    if (saved) {
      const probe = await fetch(base + "/messages", { headers: { authorization: "Bearer " + saved } });
      if (probe.ok) {
        token = saved;
        (await probe.json()).messages.forEach(accept);
        return;
      }
    }
    const created = await fetch(base + "/session", { method: "POST" });
    if (!created.ok) throw new Error("could not start a chat session");
    token = (await created.json()).token;
    localStorage.setItem(storageKey, token);
  }

  function listen() {
    const source = new EventSource(base + "/events?after=" + after + "&token=" + encodeURIComponent(token));
    source.addEventListener("message", (e) => accept(JSON.parse(e.data)));
    source.onopen = () => { status.textContent = ""; };
    source.onerror = () => { status.textContent = "Reconnecting…"; };
  }

  async function send(text) {
    const id = crypto.randomUUID();
    sentHere.add("in:" + id);
    const bubble = show("visitor", text, undefined, "pending");
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const response = await fetch(base + "/messages", {
          method: "POST",
          headers: { "content-type": "application/json", authorization: "Bearer " + token },
          body: JSON.stringify({ id, text }),
        });
        if (response.ok) {
          bubble.classList.remove("pending");
          return;
        }
        if (response.status < 500) {
          const problem = await response.json().catch(() => ({}));
          status.textContent = problem.detail || ("Not sent (" + response.status + ")");
          break;
        }
      } catch (e) { /* network error: the same id makes a retry safe */ }
      await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
    }
    bubble.classList.remove("pending");
    bubble.classList.add("failed");
  }

  document.getElementById("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  });

  session().then(listen).catch((e) => { status.textContent = e.message; });
})();
</script>
</body>
</html>
"#;
