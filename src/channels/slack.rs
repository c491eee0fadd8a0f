//! Slack Events API in, `chat.postMessage` out.
//!
//! Inbound: `X-Slack-Signature` is `v0=` + hex HMAC-SHA256 of
//! `v0:{X-Slack-Request-Timestamp}:{raw body}` with the app's signing secret,
//! compared in constant time; timestamps more than the tolerance away are refused
//! (replays). `url_verification` is answered with its challenge. Direct messages
//! are answered; in channels only messages that mention the bot, in the thread
//! they were asked in (a top-level mention starts a thread under it). Messages
//! from bots (`bot_id`, subtypes, the bot's own user) are acknowledged and ignored.
//!
//! Dedup key: `{channel}:{ts}`, the message's identity. It is the same in every
//! platform retry of an event (as `event_id` is) and also when an app subscribed to
//! both `message` and `app_mention` gets two events for one mention.
//!
//! Outbound: Markdown rendered to mrkdwn, split at 4,000 characters. Slack answers
//! HTTP 200 with `ok:false` for most errors: `ratelimited` (or HTTP 429 with
//! Retry-After) is a rate limit, server-side errors retry, the rest (e.g.
//! `channel_not_found`, `not_in_channel`, `invalid_auth`) are permanent.

use std::time::Duration;

use axum::http::Method;
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{
    Attachment, Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage,
    ReplyTarget, SendError,
    format::{char_len, render_parts, slack_mrkdwn},
    pacing::Pace,
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_API_BASE_URL: &str = "https://slack.com/api";
/// Slack truncates at 40,000 characters; 4,000 keeps a message readable.
pub const MESSAGE_LIMIT: usize = 4000;
const RETRYABLE_ERRORS: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

pub struct SlackChannel {
    api_base_url: String,
    signing_secret: Option<SecretString>,
    bot_token: Option<SecretString>,
    tolerance: Duration,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    event: Option<Event>,
    #[serde(default)]
    authorizations: Vec<Authorization>,
}

#[derive(Debug, Deserialize)]
struct Authorization {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subtype: Option<String>,
    #[serde(default)]
    bot_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channel_type: Option<String>,
    #[serde(default)]
    files: Vec<File>,
}

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mimetype: Option<String>,
    #[serde(default)]
    url_private: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(3 + tag.len() * 2);
    hex.push_str("v0=");
    for byte in tag {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

impl SlackChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client, tolerance: Duration) -> Self {
        Self {
            api_base_url: connector.api_base_url(DEFAULT_API_BASE_URL),
            signing_secret: connector.signing_secret.clone(),
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
        let timestamp = header("x-slack-request-timestamp")?;
        let presented = header("x-slack-signature")?;
        let sent: i64 = timestamp.trim().parse().map_err(|_| {
            InboundError::BadSignature("X-Slack-Request-Timestamp is not a number".into())
        })?;
        let skew = request.now.timestamp().saturating_sub(sent);
        if request.now.timestamp().abs_diff(sent) > self.tolerance.as_secs() {
            return Err(InboundError::StaleTimestamp(format!(
                "X-Slack-Request-Timestamp is {skew}s away from now"
            )));
        }
        let secret = self
            .signing_secret
            .as_ref()
            .ok_or_else(|| InboundError::BadSignature("connector has no signing secret".into()))?;
        let expected = signature(secret.expose_secret(), timestamp, request.body);
        if !super::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return Err(InboundError::BadSignature(
                "X-Slack-Signature does not match".into(),
            ));
        }
        Ok(())
    }

    /// Parses and normalizes a verified body.
    pub fn parse(body: &[u8]) -> Result<Inbound, InboundError> {
        let envelope: Envelope =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        if envelope.kind == "url_verification" {
            let challenge = envelope.challenge.ok_or_else(|| {
                InboundError::Malformed("url_verification without challenge".into())
            })?;
            return Ok(Inbound::Handshake {
                content_type: "text/plain",
                body: challenge,
            });
        }
        let Some(event) = envelope.event.filter(|_| envelope.kind == "event_callback") else {
            return Ok(Inbound::Ignored {
                reason: "not an event callback",
            });
        };
        if event.kind != "message" && event.kind != "app_mention" {
            return Ok(Inbound::Ignored {
                reason: "event type is not a message",
            });
        }
        let bot_user = envelope
            .authorizations
            .first()
            .and_then(|a| a.user_id.clone());
        if event.bot_id.is_some()
            || event.subtype.as_deref().is_some_and(|s| s != "file_share")
            || event.user.is_none()
            || event.user == bot_user
        {
            return Ok(Inbound::Ignored {
                reason: "message from a bot, an edit, or a system message",
            });
        }
        let (Some(user), Some(channel), Some(ts)) = (event.user, event.channel, event.ts) else {
            return Err(InboundError::Malformed(
                "message event without user, channel or ts".into(),
            ));
        };
        let is_direct = event.channel_type.as_deref() == Some("im");
        let raw_text = event.text.unwrap_or_default();
        let mention = bot_user.as_ref().map(|id| format!("<@{id}>"));
        if !is_direct
            && event.kind == "message"
            && !mention
                .as_ref()
                .is_some_and(|m| raw_text.contains(m.as_str()))
        {
            return Ok(Inbound::Ignored {
                reason: "channel message that does not mention the bot",
            });
        }
        let text = match &mention {
            Some(m) => raw_text.replace(m.as_str(), "").trim().to_owned(),
            None => raw_text.trim().to_owned(),
        };
        let attachments: Vec<Attachment> = event
            .files
            .into_iter()
            .map(|f| Attachment {
                url: f.url_private,
                content_type: f.mimetype,
                name: f.name,
                size: f.size,
            })
            .collect();
        if text.is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignored {
                reason: "message has no text or files",
            });
        }
        let sent_at = ts
            .split('.')
            .next()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0));
        Ok(Inbound::Message(InboundMessage {
            platform_message_id: format!("{channel}:{ts}"),
            sender_id: user,
            sender_name: None,
            // Replies go to the thread asked in; a top-level channel mention
            // starts a thread under it. Direct messages stay flat.
            thread_id: event.thread_ts.or_else(|| (!is_direct).then(|| ts.clone())),
            conversation_id: channel,
            is_group: !is_direct,
            text,
            attachments,
            sent_at,
        }))
    }

    async fn post_message(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let Some(token) = &self.bot_token else {
            return Err(SendError::Permanent {
                reason: "connector has no bot token".into(),
                status: None,
            });
        };
        let mut body = json!({
            "channel": message.target.conversation_id,
            "text": message.text,
        });
        if let Some(thread) = &message.target.thread_id {
            body["thread_ts"] = json!(thread);
        }
        let response = self
            .http
            .post(format!("{}/chat.postMessage", self.api_base_url))
            .bearer_auth(token.expose_secret())
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        let retry_after = super::retry_after(response.headers(), Utc::now());
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() && answer["ok"] == true {
            return Ok(());
        }
        let error = answer["error"].as_str().unwrap_or("").to_owned();
        let reason = format!(
            "Slack {}: {}",
            status.as_u16(),
            if error.is_empty() {
                super::truncate(&text, 300)
            } else {
                &error
            }
        );
        let code = Some(status.as_u16());
        Err(if status.as_u16() == 429 || error == "ratelimited" {
            SendError::RateLimited {
                reason,
                status: code,
                retry_after,
            }
        } else if status.is_server_error() || RETRYABLE_ERRORS.contains(&error.as_str()) {
            SendError::Retryable {
                reason,
                status: code,
                retry_after,
            }
        } else {
            SendError::Permanent {
                reason,
                status: code,
            }
        })
    }
}

impl Channel for SlackChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Slack
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        self.verify(request)?;
        Self::parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT, slack_mrkdwn, char_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.post_message(message).boxed()
    }

    /// `chat.postMessage` allows about one message a second per channel.
    fn pacing(&self, target: &ReplyTarget) -> Vec<Pace> {
        vec![Pace::new(
            format!("slack:{}:{}", self.api_base_url, target.conversation_id),
            Duration::from_secs(1),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/slack.json");

    #[test]
    fn signs_the_documented_known_answer_and_the_sample() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            signature(
                "8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        assert_eq!(
            signature("microclaw-test-signing-secret-0001", "1767225661", SAMPLE),
            "v0=b624a1092689164f8327503a8f8d0725fa802f352cd4a3504893afde73677ac9"
        );
    }

    #[test]
    fn normalizes_the_sample_threaded_mention() {
        let Inbound::Message(m) = SlackChannel::parse(SAMPLE).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(m.platform_message_id, "C03OPSCHAN:1767225661.004900");
        assert_eq!(m.sender_id, "U02ALICE01");
        assert_eq!(m.conversation_id, "C03OPSCHAN");
        assert_eq!(
            m.thread_id.as_deref(),
            Some("1767225600.001200"),
            "the thread asked in"
        );
        assert!(m.is_group);
        assert_eq!(m.text, "can you summarise the deploy log & flag errors?");
    }

    #[test]
    fn answers_the_url_verification_handshake() {
        let body = br#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let Inbound::Handshake { body, .. } = SlackChannel::parse(body).unwrap() else {
            panic!("expected the handshake");
        };
        assert_eq!(body, "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
    }

    #[test]
    fn bots_edits_and_unaddressed_channel_messages_are_ignored() {
        let event = |event: &str| {
            format!(
                r#"{{"type":"event_callback","event_id":"Ev1","authorizations":[{{"user_id":"UBOT"}}],"event":{event}}}"#
            )
        };
        for ignored in [
            r#"{"type":"message","bot_id":"B1","user":"U1","text":"hi <@UBOT>","ts":"1.1","channel":"C1","channel_type":"channel"}"#,
            r#"{"type":"message","subtype":"message_changed","user":"U1","text":"<@UBOT>","ts":"1.1","channel":"C1","channel_type":"channel"}"#,
            r#"{"type":"message","user":"UBOT","text":"my own","ts":"1.1","channel":"D1","channel_type":"im"}"#,
            r#"{"type":"message","user":"U1","text":"not for the bot","ts":"1.1","channel":"C1","channel_type":"channel"}"#,
            r#"{"type":"reaction_added","user":"U1","ts":"1.1"}"#,
        ] {
            assert!(
                matches!(
                    SlackChannel::parse(event(ignored).as_bytes()).unwrap(),
                    Inbound::Ignored { .. }
                ),
                "{ignored}"
            );
        }
        let direct = event(
            r#"{"type":"message","user":"U1","text":"hello","ts":"5.5","channel":"D1","channel_type":"im"}"#,
        );
        let Inbound::Message(m) = SlackChannel::parse(direct.as_bytes()).unwrap() else {
            panic!("a direct message is answered");
        };
        assert!(!m.is_group);
        assert_eq!(m.thread_id, None);
        let mention = event(
            r#"{"type":"app_mention","user":"U1","text":"<@UBOT> hi","ts":"6.6","channel":"C1","channel_type":"channel"}"#,
        );
        let Inbound::Message(m) = SlackChannel::parse(mention.as_bytes()).unwrap() else {
            panic!("a mention is answered");
        };
        assert_eq!(
            m.thread_id.as_deref(),
            Some("6.6"),
            "a top-level mention starts a thread"
        );
        assert_eq!(m.platform_message_id, "C1:6.6");
    }
}
