//! WhatsApp Cloud API: Meta webhooks in, Graph `/{phone_number_id}/messages` out.
//!
//! Inbound: `X-Hub-Signature-256` is `sha256=` + hex HMAC-SHA256 of the raw body
//! (Meta's escaped-Unicode bytes, hashed verbatim) with the app secret, compared in
//! constant time. No timestamp is signed, so replays are caught by dedup on the
//! message id (`wamid…`). The subscription handshake is a GET with
//! `hub.mode=subscribe`, `hub.verify_token` and `hub.challenge`. One POST can carry
//! several messages; delivery receipts (`statuses`) are acknowledged and ignored.
//!
//! The conversation id is `{phone_number_id}:{wa_id}`: the business number the
//! message came to and the person, which is what a reply needs.
//!
//! Outbound: Markdown rendered to WhatsApp's formatting, split at 4,096 characters.
//! Errors come as JSON `error.code`: throughput codes (130429, 131056, 4, 80007)
//! are rate limits, 131047 (outside the 24-hour window) and other 4xx permanent.

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
    ReplyTarget, SendError, constant_time_eq, form_pairs,
    format::{char_len, render_parts, whatsapp_text},
    pacing::Pace,
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_API_BASE_URL: &str = "https://graph.facebook.com/v21.0";
pub const MESSAGE_LIMIT: usize = 4096;
const RATE_LIMIT_CODES: &[i64] = &[4, 80007, 130429, 131056];

pub struct WhatsAppChannel {
    api_base_url: String,
    app_secret: Option<SecretString>,
    verify_token: Option<SecretString>,
    access_token: Option<SecretString>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(default)]
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Debug, Default, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<WaMessage>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    phone_number_id: String,
}

#[derive(Debug, Deserialize)]
struct Contact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaMessage {
    from: String,
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    image: Option<Media>,
    #[serde(default)]
    document: Option<Media>,
    #[serde(default)]
    audio: Option<Media>,
    #[serde(default)]
    video: Option<Media>,
}

#[derive(Debug, Deserialize)]
struct Text {
    body: String,
}

#[derive(Debug, Deserialize)]
struct Media {
    id: String,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

/// `sha256=` + hex HMAC-SHA256 of the raw body.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    let mut hex = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

impl WhatsAppChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client) -> Self {
        Self {
            api_base_url: connector.api_base_url(DEFAULT_API_BASE_URL),
            app_secret: connector.signing_secret.clone(),
            verify_token: connector.verify_token.clone(),
            access_token: connector.bot_token.clone(),
            http,
        }
    }

    fn handshake(&self, query: Option<&str>) -> Result<Inbound, InboundError> {
        let params = form_pairs(query.unwrap_or_default().as_bytes());
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let mode = param("hub.mode");
        let token = param("hub.verify_token").unwrap_or_default();
        let challenge = param("hub.challenge")
            .ok_or_else(|| InboundError::Malformed("hub.challenge is missing".into()))?;
        let expected = self
            .verify_token
            .as_ref()
            .ok_or_else(|| InboundError::BadSignature("connector has no verify token".into()))?;
        if mode.as_deref() != Some("subscribe")
            || !constant_time_eq(token.as_bytes(), expected.expose_secret().as_bytes())
        {
            return Err(InboundError::BadSignature(
                "hub.mode or hub.verify_token does not match".into(),
            ));
        }
        Ok(Inbound::Handshake {
            content_type: "text/plain",
            body: challenge,
        })
    }

    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let presented = request
            .headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .ok_or(InboundError::MissingHeader("X-Hub-Signature-256"))?;
        let secret = self
            .app_secret
            .as_ref()
            .ok_or_else(|| InboundError::BadSignature("connector has no app secret".into()))?;
        let expected = signature(secret.expose_secret(), request.body);
        if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return Err(InboundError::BadSignature(
                "X-Hub-Signature-256 does not match".into(),
            ));
        }
        Ok(())
    }

    /// Parses and normalizes a verified notification.
    pub fn parse(body: &[u8]) -> Result<Inbound, InboundError> {
        let notification: Notification =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        if notification.object != "whatsapp_business_account" {
            return Ok(Inbound::Ignored {
                reason: "not a WhatsApp Business notification",
            });
        }
        let mut messages = Vec::new();
        for change in notification
            .entry
            .into_iter()
            .flat_map(|e| e.changes)
            .filter(|c| c.field == "messages")
        {
            let Some(metadata) = change.value.metadata else {
                continue;
            };
            for message in change.value.messages {
                let name = change
                    .value
                    .contacts
                    .iter()
                    .find(|c| c.wa_id.as_deref() == Some(message.from.as_str()))
                    .and_then(|c| c.profile.as_ref())
                    .and_then(|p| p.name.clone());
                let media = [
                    &message.image,
                    &message.document,
                    &message.audio,
                    &message.video,
                ]
                .into_iter()
                .flatten()
                .next();
                let text = match (&message.text, media) {
                    (Some(text), _) => text.body.clone(),
                    (None, Some(media)) => media.caption.clone().unwrap_or_default(),
                    (None, None) => continue, // reactions, locations, unsupported
                };
                let attachments = media
                    .map(|m| Attachment {
                        url: None,
                        content_type: m.mime_type.clone(),
                        name: Some(m.filename.clone().unwrap_or_else(|| m.id.clone())),
                        size: None,
                    })
                    .into_iter()
                    .collect();
                tracing::debug!(kind = %message.kind, "whatsapp message");
                messages.push(InboundMessage {
                    platform_message_id: message.id,
                    conversation_id: format!("{}:{}", metadata.phone_number_id, message.from),
                    sender_id: message.from,
                    sender_name: name,
                    thread_id: None,
                    is_group: false,
                    text,
                    attachments,
                    sent_at: message
                        .timestamp
                        .and_then(|t| t.parse::<i64>().ok())
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
                });
            }
        }
        Ok(match messages.len() {
            0 => Inbound::Ignored {
                reason: "no messages (delivery receipts or unsupported types)",
            },
            1 => Inbound::Message(messages.remove(0)),
            _ => Inbound::Batch(messages),
        })
    }

    async fn post(&self, phone_number_id: &str, body: Value) -> Result<(), SendError> {
        let Some(token) = &self.access_token else {
            return Err(SendError::Permanent {
                reason: "connector has no access token".into(),
                status: None,
            });
        };
        let response = self
            .http
            .post(format!("{}/{phone_number_id}/messages", self.api_base_url))
            .bearer_auth(token.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = answer["error"]["code"].as_i64().unwrap_or_default();
        let reason = format!(
            "WhatsApp {} (code {code}): {}",
            status.as_u16(),
            answer["error"]["message"]
                .as_str()
                .unwrap_or_else(|| super::truncate(&text, 300))
        );
        let http = Some(status.as_u16());
        Err(
            if RATE_LIMIT_CODES.contains(&code) || status.as_u16() == 429 {
                SendError::RateLimited {
                    reason,
                    status: http,
                    retry_after: None,
                }
            } else if status.is_server_error() || answer["error"]["is_transient"] == true {
                SendError::Retryable {
                    reason,
                    status: http,
                    retry_after: None,
                }
            } else {
                SendError::Permanent {
                    reason,
                    status: http,
                }
            },
        )
    }
}

/// (business phone number id, person's wa_id) of a conversation id.
fn split_conversation(conversation_id: &str) -> Option<(&str, &str)> {
    conversation_id.split_once(':')
}

impl Channel for WhatsAppChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Whatsapp
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method == Method::GET {
            return self.handshake(request.query);
        }
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        self.verify(request)?;
        Self::parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT, whatsapp_text, char_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            let Some((phone_number_id, to)) = split_conversation(&message.target.conversation_id)
            else {
                return Err(SendError::Permanent {
                    reason: "conversation id is not {phone_number_id}:{wa_id}".into(),
                    status: None,
                });
            };
            let body = json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": {"body": message.text, "preview_url": false},
            });
            self.post(phone_number_id, body).await
        }
        .boxed()
    }

    /// About 80 messages a second per business number.
    fn pacing(&self, target: &ReplyTarget) -> Vec<Pace> {
        let number = split_conversation(&target.conversation_id).map_or("", |(n, _)| n);
        vec![Pace::new(
            format!("whatsapp:{number}"),
            Duration::from_millis(13),
        )]
    }

    fn typing<'a>(&'a self, target: &'a ReplyTarget) -> BoxFuture<'a, ()> {
        async move {
            let (Some((phone_number_id, _)), Some(message_id)) = (
                split_conversation(&target.conversation_id),
                target.in_reply_to.last(),
            ) else {
                return;
            };
            let body = json!({
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": message_id,
                "typing_indicator": {"type": "text"},
            });
            if let Err(e) = self.post(phone_number_id, body).await {
                tracing::debug!(error = %e, "typing indicator not sent");
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/whatsapp.json");

    #[test]
    fn the_sample_signature_matches_over_the_raw_bytes() {
        assert_eq!(
            signature("0123456789abcdef0123456789abcdef", SAMPLE),
            "sha256=176e01b6d0cac4dc11af3870065a08536a5b660309b9a42394034d7335bdf057"
        );
        let reserialized =
            serde_json::to_vec(&serde_json::from_slice::<Value>(SAMPLE).unwrap()).unwrap();
        assert_ne!(
            signature("0123456789abcdef0123456789abcdef", &reserialized),
            "sha256=176e01b6d0cac4dc11af3870065a08536a5b660309b9a42394034d7335bdf057",
            "re-serializing changes the bytes"
        );
    }

    #[test]
    fn normalizes_the_sample_message() {
        let Inbound::Message(m) = WhatsAppChannel::parse(SAMPLE).unwrap() else {
            panic!("expected one message");
        };
        assert_eq!(
            m.platform_message_id,
            "wamid.HBgLMzQ2MTIzNDU2NzgVAgASGBQzRUIwQTFCMkMzRDRFNUY2QTdCOAA="
        );
        assert_eq!(m.sender_id, "34612345678");
        assert_eq!(m.sender_name.as_deref(), Some("Bruno Díaz"));
        assert_eq!(m.conversation_id, "106540352242922:34612345678");
        assert!(!m.is_group);
        assert_eq!(m.text, "Hola! Is my order #4411 shipped yet?");
    }

    #[test]
    fn delivery_receipts_are_ignored_and_batches_kept_whole() {
        let statuses = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"1"},"statuses":[{"id":"wamid.x","status":"delivered"}]}}]}]}"#;
        assert!(matches!(
            WhatsAppChannel::parse(statuses).unwrap(),
            Inbound::Ignored { .. }
        ));
        let batch = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"1"},"messages":[
            {"from":"2","id":"wamid.a","type":"text","text":{"body":"one"}},
            {"from":"2","id":"wamid.b","type":"text","text":{"body":"two"}}]}}]}]}"#;
        let Inbound::Batch(messages) = WhatsAppChannel::parse(batch).unwrap() else {
            panic!("expected a batch");
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].text, "two");
    }
}
