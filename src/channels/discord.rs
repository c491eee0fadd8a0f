//! Discord: slash-command interactions in, interaction follow-ups (or channel
//! messages) out.
//!
//! Inbound (the Interactions Endpoint URL): every request is verified with
//! Ed25519 over `X-Signature-Timestamp` followed by the raw body, with the
//! application's public key; a bad signature is refused with 401 (Discord sends
//! bad ones on purpose and drops endpoints that accept them), and so is a
//! timestamp outside the receiver's tolerance. A PING is answered with PONG. The
//! configured slash command becomes a message (its string options are the
//! text; the dedup key is the interaction id) and is answered at once with a
//! deferred response (`{"type":5}`: "thinking…"), since a model rarely answers
//! within Discord's 3 seconds. Other commands and components are answered at
//! once and start no turn. Ordinary messages only exist on the Gateway: see
//! `discord_gateway`.
//!
//! The interaction's webhook (application id and token) travels as the reply
//! target's thread. Outbound, within the token's 15 minutes the first part
//! replaces "thinking…" (`PATCH …/messages/@original`, idempotent) and further
//! parts are follow-ups; past them, or for gateway messages, replies are channel
//! messages with the bot token (with a `nonce` so a retried part is not posted
//! twice). Every payload sets `allowed_mentions` to nothing, so model output can
//! never ping `@everyone` or anyone else. Parts are split at 2,000 characters.
//! Sends are paced to one per second per channel across workers; a 429 is
//! waited out as its `retry_after` says. Interaction tokens are part
//! of the URL, so transport errors are reported without it.

use std::time::Duration;

use axum::http::Method;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use futures::{FutureExt, future::BoxFuture};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage, ReplyTarget,
    SendError,
    format::{char_len, render_parts},
    pacing::Pace,
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_API_BASE_URL: &str = "https://discord.com/api/v10";
/// `content` limit of a message.
pub const MESSAGE_LIMIT: usize = 2000;
/// How long an interaction token is valid, less a margin for the send itself.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60 - 30);
/// Discord's epoch (2015-01-01) in unix milliseconds, for snowflake times.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

/// The deferred answer to a command: "thinking…" until the reply replaces it.
pub const DEFERRED: &str = r#"{"type":5}"#;

pub struct DiscordChannel {
    api_base_url: String,
    public_key: Option<VerifyingKey>,
    command: String,
    bot_token: Option<SecretString>,
    tolerance: Duration,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    id: String,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    application_id: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    guild_id: Option<String>,
    #[serde(default)]
    member: Option<Member>,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    data: Option<CommandData>,
}

#[derive(Debug, Deserialize)]
struct Member {
    user: User,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    global_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CommandData {
    #[serde(default)]
    name: String,
    #[serde(default)]
    options: Vec<CommandOption>,
}

#[derive(Debug, Deserialize)]
struct CommandOption {
    #[serde(default)]
    value: Option<Value>,
}

/// When a snowflake id was made.
pub fn snowflake_time(id: &str) -> Option<DateTime<Utc>> {
    let id: u64 = id.parse().ok()?;
    DateTime::from_timestamp_millis((id >> 22) as i64 + DISCORD_EPOCH_MS)
}

fn hex_bytes<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An answer Discord shows the user at once, only to them.
fn ephemeral(text: &str) -> Inbound {
    Inbound::Handshake {
        content_type: "application/json",
        body: json!({"type": 4, "data": {"content": text, "flags": 64}}).to_string(),
    }
}

impl DiscordChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client, tolerance: Duration) -> Self {
        Self {
            api_base_url: connector.api_base_url(DEFAULT_API_BASE_URL),
            public_key: connector
                .config
                .public_key
                .as_deref()
                .and_then(hex_bytes::<32>)
                .and_then(|key| VerifyingKey::from_bytes(&key).ok()),
            command: connector.config.command.clone().unwrap_or_default(),
            bot_token: connector.bot_token.clone(),
            tolerance,
            http,
        }
    }

    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let header = |name: &'static str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(InboundError::MissingHeader(name))
        };
        let timestamp = header("x-signature-timestamp")?;
        let signature = hex_bytes::<64>(header("x-signature-ed25519")?)
            .ok_or_else(|| InboundError::BadSignature("not 64 hex-encoded bytes".into()))?;
        let Some(key) = &self.public_key else {
            return Err(InboundError::BadSignature(
                "connector has no valid public_key".into(),
            ));
        };
        let mut signed = Vec::with_capacity(timestamp.len() + request.body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(request.body);
        key.verify_strict(&signed, &Signature::from_bytes(&signature))
            .map_err(|_| InboundError::BadSignature("Ed25519 signature does not match".into()))?;
        let sent: i64 = timestamp.parse().map_err(|_| {
            InboundError::StaleTimestamp(format!("`{timestamp}` is not unix seconds"))
        })?;
        if (request.now.timestamp() - sent).unsigned_abs() > self.tolerance.as_secs() {
            return Err(InboundError::StaleTimestamp(format!(
                "{timestamp} is more than {}s away",
                self.tolerance.as_secs()
            )));
        }
        Ok(())
    }

    fn parse(&self, body: &[u8]) -> Result<Inbound, InboundError> {
        let interaction: Interaction =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        match interaction.kind {
            1 => {
                return Ok(Inbound::Handshake {
                    content_type: "application/json",
                    body: r#"{"type":1}"#.into(),
                });
            }
            2 => {}
            // Autocomplete: no suggestions.
            4 => {
                return Ok(Inbound::Handshake {
                    content_type: "application/json",
                    body: r#"{"type":8,"data":{"choices":[]}}"#.into(),
                });
            }
            _ => return Ok(ephemeral("This agent only answers its slash command.")),
        }
        let data = interaction
            .data
            .ok_or_else(|| InboundError::Malformed("a command without data".into()))?;
        if data.name != self.command {
            return Ok(ephemeral(&format!(
                "Unknown command. Ask with /{}.",
                self.command
            )));
        }
        let user = interaction
            .member
            .map(|m| m.user)
            .or(interaction.user)
            .ok_or_else(|| InboundError::Malformed("an interaction without a user".into()))?;
        let channel_id = interaction
            .channel_id
            .ok_or_else(|| InboundError::Malformed("an interaction without channel_id".into()))?;
        if interaction.application_id.is_empty() || interaction.token.is_empty() {
            return Err(InboundError::Malformed(
                "an interaction without application_id or token".into(),
            ));
        }
        let text = data
            .options
            .iter()
            .filter_map(|o| o.value.as_ref()?.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if text.trim().is_empty() {
            return Ok(ephemeral(&format!(
                "Add your question: /{} <prompt>",
                self.command
            )));
        }
        Ok(Inbound::Message(InboundMessage {
            sent_at: snowflake_time(&interaction.id),
            platform_message_id: interaction.id,
            sender_name: user.global_name.or(user.username),
            sender_id: user.id,
            conversation_id: channel_id,
            // Where the answer goes: this interaction's webhook.
            thread_id: Some(format!(
                "{}/{}",
                interaction.application_id, interaction.token
            )),
            is_group: interaction.guild_id.is_some(),
            text,
            attachments: Vec::new(),
        }))
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let target = &message.target;
        let interaction = target.thread_id.as_deref().and_then(|t| t.split_once('/'));
        let fresh = target
            .in_reply_to
            .last()
            .and_then(|id| snowflake_time(id))
            .is_some_and(|made| (Utc::now() - made).to_std().unwrap_or_default() < TOKEN_LIFETIME);
        let content = json!({
            "content": message.text,
            "allowed_mentions": { "parse": [] },
        });
        if let Some((application, token)) = interaction
            && fresh
        {
            let request = if message.part == 1 {
                self.http.patch(format!(
                    "{}/webhooks/{application}/{token}/messages/@original",
                    self.api_base_url
                ))
            } else {
                self.http.post(format!(
                    "{}/webhooks/{application}/{token}",
                    self.api_base_url
                ))
            };
            match answer(request.json(&content)).await {
                // The token was refused (expired after all): post to the channel.
                Err(SendError::Permanent {
                    status: Some(401 | 404),
                    ..
                }) if self.bot_token.is_some() => {}
                result => return result,
            }
        }
        let Some(bot_token) = &self.bot_token else {
            return Err(SendError::Permanent {
                reason: "the interaction expired and the connector has no bot token".into(),
                status: None,
            });
        };
        let mut body = content;
        // Discord drops a second message with the same nonce (a retried part).
        body["nonce"] = json!(message.delivery_id.simple().to_string()[..25]);
        body["enforce_nonce"] = json!(true);
        if interaction.is_none()
            && message.part == 1
            && let Some(replied) = target.in_reply_to.last()
        {
            body["message_reference"] = json!({
                "message_id": replied,
                "fail_if_not_exists": false,
            });
        }
        answer(
            self.http
                .post(format!(
                    "{}/channels/{}/messages",
                    self.api_base_url, target.conversation_id
                ))
                .header(
                    "authorization",
                    format!("Bot {}", bot_token.expose_secret()),
                )
                .json(&body),
        )
        .await
    }
}

/// Sends a request and classifies Discord's answer.
async fn answer(request: reqwest::RequestBuilder) -> Result<(), SendError> {
    let response = request
        .send()
        .await
        .map_err(|e| SendError::from_transport(&e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let header_wait = super::retry_after(response.headers(), Utc::now());
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let said = body["message"]
        .as_str()
        .unwrap_or_else(|| super::truncate(&text, 300));
    if status.as_u16() == 429 {
        return Err(SendError::RateLimited {
            reason: format!("Discord 429: {said}"),
            status: Some(429),
            retry_after: body["retry_after"]
                .as_f64()
                .and_then(super::seconds)
                .or(header_wait),
        });
    }
    Err(SendError::from_http(status, header_wait, said))
}

impl Channel for DiscordChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Discord
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        self.verify(request)?;
        self.parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        // Discord renders Markdown itself.
        render_parts(text, MESSAGE_LIMIT, str::to_owned, char_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.deliver(message).boxed()
    }

    fn acknowledgement(&self) -> Option<(&'static str, &'static str)> {
        Some(("application/json", DEFERRED))
    }

    /// Discord allows about five messages per five seconds in a channel.
    fn pacing(&self, target: &ReplyTarget) -> Vec<Pace> {
        vec![Pace::new(
            format!("discord:{}:{}", self.api_base_url, target.conversation_id),
            Duration::from_secs(1),
        )]
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/discord.json");
    const PUBLIC_KEY: &str = "dd6caa325341fe44fbb7f0554cc2b789efb329f6f6f47de655fd764fb750ca04";
    const SAMPLE_SIGNATURE: &str = "c8f67d044cf7bff8954abd950591a29108c528d0e185fd34c63628322a9831df00b21d28ea82328b5cc014b5a8714e8957024741fa970add3bff17242b846209";
    const PING: &str = r#"{"application_id":"1290000000000000001","id":"1330000000000000001","type":1,"version":1,"token":"x"}"#;
    const PING_SIGNATURE: &str = "5904f716b91295d9d018a88580579bf8ae2ad3e7b04f180c3218850118c01689d63c23fca9c17ebe98a4b541ced8ba7f256f62b385a2b13967f9d05e28580b0b";

    fn channel() -> DiscordChannel {
        DiscordChannel {
            api_base_url: DEFAULT_API_BASE_URL.into(),
            public_key: hex_bytes::<32>(PUBLIC_KEY).and_then(|k| VerifyingKey::from_bytes(&k).ok()),
            command: "ask".into(),
            bot_token: None,
            tolerance: Duration::from_secs(300),
            http: reqwest::Client::new(),
        }
    }

    fn receive(body: &[u8], signature: &str, now: i64) -> Result<Inbound, InboundError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-signature-timestamp", "1767225661".parse().unwrap());
        headers.insert("x-signature-ed25519", signature.parse().unwrap());
        let body = axum::body::Bytes::copy_from_slice(body);
        channel().receive(&InboundRequest {
            method: &Method::POST,
            headers: &headers,
            query: None,
            body: &body,
            now: DateTime::from_timestamp(now, 0).unwrap(),
        })
    }

    #[test]
    fn verifies_the_documented_vectors_and_answers_ping_with_pong() {
        crate::install_tls_provider();
        let now = 1_767_225_661;
        let Ok(Inbound::Message(m)) = receive(SAMPLE, SAMPLE_SIGNATURE, now) else {
            panic!("the sample is a command");
        };
        assert_eq!(m.platform_message_id, "1330000000000001234");
        assert_eq!(m.sender_id, "900000000000000321");
        assert_eq!(m.sender_name.as_deref(), Some("Alice"));
        assert_eq!(m.conversation_id, "1180000000000000777");
        assert!(m.is_group);
        assert_eq!(m.text, "summarise today's incidents");
        assert!(m.thread_id.unwrap().starts_with("1290000000000000001/aW50"));
        match receive(PING.as_bytes(), PING_SIGNATURE, now) {
            Ok(Inbound::Handshake { body, .. }) => assert_eq!(body, r#"{"type":1}"#),
            other => panic!("{other:?}"),
        }
        // One flipped bit in the body, a signature for another body, a stale
        // timestamp: refused.
        let mut tampered = SAMPLE.to_vec();
        tampered[10] ^= 1;
        assert!(matches!(
            receive(&tampered, SAMPLE_SIGNATURE, now),
            Err(InboundError::BadSignature(_))
        ));
        assert!(matches!(
            receive(SAMPLE, PING_SIGNATURE, now),
            Err(InboundError::BadSignature(_))
        ));
        assert!(matches!(
            receive(SAMPLE, SAMPLE_SIGNATURE, now + 3600),
            Err(InboundError::StaleTimestamp(_))
        ));
        assert!(matches!(
            receive(SAMPLE, "zz", now),
            Err(InboundError::BadSignature(_))
        ));
    }

    #[test]
    fn snowflakes_tell_their_time() {
        // The sample interaction's id.
        let made = snowflake_time("1330000000000001234").unwrap();
        assert_eq!(
            made.timestamp_millis(),
            (1_330_000_000_000_001_234u64 >> 22) as i64 + DISCORD_EPOCH_MS
        );
        assert!(snowflake_time("not a number").is_none());
    }
}
