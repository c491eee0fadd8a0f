//! `microclaw dev`: the whole runtime in one process on an embedded SQLite store,
//! with nothing to set up, and `microclaw send` to talk to it from a terminal.
//!
//! The data directory holds the store (`microclaw.db`), a lock that keeps a second
//! dev process off the same store, and `dev.json`: the address and the generated
//! signing secret of the built-in custom connector, readable only by its owner,
//! which `microclaw send` uses. The secret is generated once and kept, so webhook
//! senders keep working across restarts, and so does the history.
//!
//! Because one process owns the store, a restart knows that nothing is still
//! running: jobs that were in flight when the last process died go back on their
//! queues at once and session leases are freed.
//!
//! The built-in connector's replies are POSTed back to this process
//! (`/dev/v1/replies`, signature checked); `GET /dev/v1/events/{id}/reply` (bearer:
//! the dev secret) waits for the reply to one message, which is how `send` prints it.

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{
    channels::{
        constant_time_eq,
        standard_webhooks::{SignedHeaders, SigningKey},
    },
    config::{RawConfig, Settings},
    deployment::Deployment,
    store::Store,
};

/// The id of the built-in custom connector.
pub const DEV_CONNECTOR: &str = "custom";
/// The built-in web chat connector: its page is `/chat/chat`.
pub const DEV_WEB_CHAT: &str = "chat";
const SECRET_ENV: &str = "MICROCLAW_DEV_SECRET";

/// What `microclaw send` needs to reach a running dev instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevInfo {
    /// Base URL of the dev instance, e.g. `http://127.0.0.1:8080`.
    pub address: String,
    pub connector: String,
    pub secret: String,
    /// An `operate` token for the admin API at `{address}/admin/v1`.
    #[serde(default)]
    pub admin_token: String,
}

/// Keeps a second `microclaw dev` off the same data directory while held.
pub struct DataDirLock {
    _file: std::fs::File,
}

pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(data_dir)?;
    let file = std::fs::File::create(data_dir.join("microclaw.lock"))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another `microclaw dev` is running on {}; stop it or pass --data-dir",
            data_dir.display()
        )
    })?;
    Ok(DataDirLock { _file: file })
}

/// The signing secret of the built-in connector: generated on first start, kept after.
pub fn dev_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("secret");
    if let Ok(secret) = std::fs::read_to_string(&path)
        && SigningKey::parse(secret.trim()).is_ok()
    {
        return Ok(secret.trim().to_owned());
    }
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    let secret = format!("whsec_{}", STANDARD.encode(bytes));
    write_private(&path, secret.as_bytes())?;
    Ok(secret)
}

/// The dev instance's admin token, created on first start and kept in the data
/// directory (owner-only).
pub fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && token.trim().len() >= 16
    {
        return Ok(token.trim().to_owned());
    }
    let token = format!("mcadm_{}", Uuid::new_v4().simple());
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    std::io::Write::write_all(&mut options.open(path)?, contents)
}

/// The dev preset: the embedded store, one agent, the built-in custom and web
/// chat connectors (the generated secret signs both), and OpenAI's model when `OPENAI_API_KEY` is set, else Claude when
/// `ANTHROPIC_API_KEY` is set, else the mock model.
pub fn preset(data_dir: &Path, listen: &str, callback_base: &str) -> String {
    let key_set = |name: &str| std::env::var(name).is_ok_and(|key| !key.is_empty());
    let (model, provider_table) = if key_set("OPENAI_API_KEY") {
        (
            "openai",
            r#"
[models.openai]
provider = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
model = "gpt-4o-mini"
"#,
        )
    } else if key_set("ANTHROPIC_API_KEY") {
        (
            "anthropic",
            r#"
[models.anthropic]
provider = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
model = "claude-sonnet-4-5"
context_window = 200000
"#,
        )
    } else {
        ("default", "")
    };
    format!(
        r#"
[database]
url = "sqlite://{store}"

[redis]
url = ""

[receiver]
listen = "{listen}"
{provider_table}
[[agents]]
name = "assistant"
instructions = "You are a helpful assistant. Answer briefly."
model = "{model}"

[[connectors]]
id = "{DEV_CONNECTOR}"
channel = "custom"
agent = "assistant"
signing_secret_env = "{SECRET_ENV}"
callback_url = "{callback_base}/dev/v1/replies"

[[connectors]]
id = "{DEV_WEB_CHAT}"
channel = "webchat"
agent = "assistant"
signing_secret_env = "{SECRET_ENV}"
"#,
        store = data_dir.join("microclaw.db").display(),
    )
}

/// Loads the dev settings: defaults, the dev preset, the config file if one
/// exists, environment overrides.
pub fn settings(
    data_dir: &Path,
    listen: &str,
    config: &Path,
    secret: &str,
) -> Result<Settings, crate::config::ConfigErrors> {
    let callback_base = format!("http://{}", loopback(listen));
    let raw = RawConfig::load_layers(config, Some(&preset(data_dir, listen, &callback_base)))?;
    let env = |name: &str| {
        if name == SECRET_ENV {
            Some(secret.to_owned())
        } else {
            crate::config::process_env(name)
        }
    };
    Settings::resolve(raw, &env)
}

/// The address clients on this machine use for a listen address.
pub fn loopback(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(address) if address.ip().is_unspecified() => format!("127.0.0.1:{}", address.port()),
        _ => listen.to_owned(),
    }
}

/// Frees what the previous process of this data directory left in flight.
pub async fn recover(store: &Store) -> anyhow::Result<()> {
    if let Store::Sqlite(pool) = store {
        let jobs = crate::store::sqlite::recover_after_restart(pool).await?;
        if jobs > 0 {
            tracing::info!(jobs, "jobs of the previous run returned to their queues");
        }
    }
    Ok(())
}

pub fn write_info(data_dir: &Path, info: &DevInfo) -> anyhow::Result<()> {
    write_private(
        &data_dir.join("dev.json"),
        &serde_json::to_vec_pretty(info)?,
    )?;
    Ok(())
}

pub fn read_info(data_dir: &Path) -> anyhow::Result<DevInfo> {
    let path = data_dir.join("dev.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {} ({e}); is `microclaw dev` running with this --data-dir?",
            path.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

#[derive(Clone)]
struct DevState {
    deployment: Arc<Deployment>,
    key: SigningKey,
    secret: String,
}

/// The dev-only endpoints.
pub fn router(deployment: Arc<Deployment>, secret: &str) -> anyhow::Result<Router> {
    let state = DevState {
        deployment,
        key: SigningKey::parse(secret)?,
        secret: secret.to_owned(),
    };
    Ok(Router::new()
        .route("/dev/v1/replies", post(receive_reply))
        .route("/dev/v1/events/{event_id}/reply", get(event_reply))
        .with_state(state))
}

async fn receive_reply(
    State(state): State<DevState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
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
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<crate::channels::custom::ReplyEvent>(&body) {
        Ok(event) => {
            tracing::info!(
                trace_id = %event.data.trace_id,
                recipient = %event.data.recipient_id,
                text = %event.data.text,
                "reply"
            );
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_secs: u64,
}

async fn event_reply(
    State(state): State<DevState>,
    UrlPath(event_id): UrlPath<Uuid>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), state.secret.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "unauthorized", "detail": "Bearer <dev secret> required"})),
        )
            .into_response();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait_secs.min(120));
    loop {
        match state.deployment.store.event_reply(event_id).await {
            Ok(None) => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(json!({"code": "unknown_event", "detail": "no such event"})),
                )
                    .into_response();
            }
            Ok(Some(reply)) if reply.status != "pending" => {
                return Json(json!({"status": reply.status, "reply": reply.reply})).into_response();
            }
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Some(_)) => {
                return (
                    StatusCode::ACCEPTED,
                    Json(json!({"status": "pending", "reply": null})),
                )
                    .into_response();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the event");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"code": "unavailable", "detail": "store unavailable"})),
                )
                    .into_response();
            }
        }
    }
}

/// `microclaw send`: posts one signed message to a running dev instance and waits
/// for its reply.
pub async fn send(
    info: &DevInfo,
    from: &str,
    text: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    let message_id = format!("cli-{}", Uuid::now_v7().simple());
    let body = json!({
        "type": "message.created",
        "timestamp": chrono::Utc::now(),
        "data": {
            "message_id": message_id,
            "conversation_id": format!("cli-{from}"),
            "conversation_type": "direct",
            "sender": {"id": from, "display_name": from},
            "text": text,
        }
    })
    .to_string();
    let key = SigningKey::parse(&info.secret)?;
    let now = chrono::Utc::now().timestamp();
    crate::install_tls_provider();
    let http = reqwest::Client::new();
    let accepted = http
        .post(format!("{}/hooks/{}", info.address, info.connector))
        .header("content-type", "application/json")
        .header("webhook-id", &message_id)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            key.sign(&message_id, now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach {} ({e}); is `microclaw dev` running?",
                info.address
            )
        })?;
    let status = accepted.status();
    let accepted: serde_json::Value = accepted.json().await?;
    if !status.is_success() {
        anyhow::bail!("the message was refused ({status}): {accepted}");
    }
    let event_id = accepted["event_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("unexpected answer: {accepted}"))?;
    let answer = http
        .get(format!(
            "{}/dev/v1/events/{event_id}/reply?wait_secs={}",
            info.address,
            wait.as_secs()
        ))
        .bearer_auth(&info.secret)
        .send()
        .await?;
    let status = answer.status();
    let answer: serde_json::Value = answer.json().await?;
    match (status.as_u16(), answer["reply"].as_str()) {
        (200, Some(reply)) => Ok(reply.to_owned()),
        (202, _) => anyhow::bail!(
            "no reply within {}s (the message is queued and will be answered)",
            wait.as_secs()
        ),
        _ => anyhow::bail!("unexpected answer ({status}): {answer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_generated_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("microclaw-dev-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = dev_secret(&dir).unwrap();
        assert!(SigningKey::parse(&first).is_ok());
        assert_eq!(dev_secret(&dir).unwrap(), first);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_second_dev_process_is_kept_off_the_data_dir() {
        let dir = std::env::temp_dir().join(format!("microclaw-dev-{}", Uuid::new_v4().simple()));
        let held = lock_data_dir(&dir).unwrap();
        assert!(lock_data_dir(&dir).is_err());
        drop(held);
        assert!(lock_data_dir(&dir).is_ok());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_preset_is_a_valid_configuration() {
        let dir = std::env::temp_dir().join("microclaw-dev-preset");
        let settings = settings(
            &dir,
            "127.0.0.1:8080",
            Path::new("does-not-exist.toml"),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        // A missing file other than the default is an error; the default path may be absent.
        assert!(settings.is_err());
        let settings = super::settings(
            &dir,
            "0.0.0.0:8080",
            Path::new(crate::config::DEFAULT_PATH),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        assert!(settings.database.url.starts_with("sqlite://"));
        let connector = &settings.connectors[DEV_CONNECTOR];
        assert_eq!(
            connector.config.callback_url.as_deref(),
            Some("http://127.0.0.1:8080/dev/v1/replies")
        );
    }
}
