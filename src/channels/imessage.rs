//! iMessage through a self-hosted BlueBubbles server (a Mac that relays
//! iMessage over HTTP).
//!
//! Inbound: BlueBubbles posts `{"type", "data"}` webhooks with no signature and
//! no retries. The connector's webhook URL therefore carries an unguessable
//! token (`/hooks/<id>?token=<secret_token>`), compared in constant time; a
//! request without it is refused. Only `new-message` events are answered; the
//! server also emits `new-message` for messages sent from the Mac, ours
//! included, so `isFromMe` messages are ignored, as are tapbacks
//! (`associatedMessageType`). The dedup key is the message `guid`; the
//! conversation is the chat guid (`iMessage;-;+1555…` one to one,
//! `iMessage;+;chat…` a group).
//!
//! Outbound: `POST {server}/api/v1/message/text?password=…` with the chat guid
//! and the reply as plain text; `tempGuid` is the delivery id, so the server
//! refuses a second copy of a part it already queued (that refusal counts as
//! sent). The server password is in the URL, so transport errors are reported
//! without their URL: the password never reaches logs or the delivery history.

use axum::http::Method;
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Attachment, Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage,
    SendError, constant_time_eq, form_pairs,
    format::{char_len, plain_text, render_parts},
};
use crate::config::{ChannelKind, ConnectorSettings};

/// iMessage has no documented limit; long replies are split for readability.
pub const MESSAGE_LIMIT: usize = 4000;

pub struct IMessageChannel {
    server_url: String,
    password: Option<SecretString>,
    url_token: Option<SecretString>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Webhook {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<BbMessage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BbMessage {
    guid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    handle: Option<Handle>,
    #[serde(default)]
    is_from_me: bool,
    #[serde(default)]
    date_created: Option<i64>,
    #[serde(default)]
    attachments: Vec<BbAttachment>,
    #[serde(default)]
    chats: Vec<Chat>,
    #[serde(default)]
    associated_message_type: Option<Value>,
    #[serde(default)]
    thread_originator_guid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Handle {
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BbAttachment {
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    transfer_name: Option<String>,
    #[serde(default)]
    total_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    guid: String,
}

impl IMessageChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client) -> Self {
        Self {
            server_url: connector.api_base_url(""),
            password: connector.bot_token.clone(),
            url_token: connector.webhook_secret.clone(),
            http,
        }
    }

    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let Some(expected) = &self.url_token else {
            return Err(InboundError::BadSignature(
                "connector has no URL token configured".into(),
            ));
        };
        let presented = request
            .query
            .map(|q| form_pairs(q.as_bytes()))
            .unwrap_or_default()
            .into_iter()
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value);
        match presented {
            Some(token)
                if constant_time_eq(token.as_bytes(), expected.expose_secret().as_bytes()) =>
            {
                Ok(())
            }
            Some(_) => Err(InboundError::BadSignature(
                "the URL token does not match".into(),
            )),
            None => Err(InboundError::BadSignature(
                "the webhook URL has no ?token=".into(),
            )),
        }
    }

    fn parse(body: &[u8]) -> Result<Inbound, InboundError> {
        let webhook: Webhook =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        if webhook.kind != "new-message" {
            return Ok(Inbound::Ignored {
                reason: "not a new message",
            });
        }
        let message = webhook
            .data
            .ok_or_else(|| InboundError::Malformed("new-message without data".into()))?;
        if message.is_from_me {
            return Ok(Inbound::Ignored {
                reason: "sent from this Mac",
            });
        }
        if message
            .associated_message_type
            .is_some_and(|t| !t.is_null())
        {
            return Ok(Inbound::Ignored {
                reason: "a tapback or other associated message",
            });
        }
        let sender = message
            .handle
            .map(|h| h.address)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| InboundError::Malformed("new-message without handle.address".into()))?;
        let chat = message
            .chats
            .into_iter()
            .next()
            .map(|c| c.guid)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| InboundError::Malformed("new-message without chats[0].guid".into()))?;
        if message.guid.is_empty() {
            return Err(InboundError::Malformed("new-message without guid".into()));
        }
        let text = message.text.unwrap_or_default();
        let attachments: Vec<Attachment> = message
            .attachments
            .into_iter()
            .map(|a| Attachment {
                // Downloads need the server password: no URL leaves the connector.
                url: None,
                content_type: a.mime_type,
                name: a.transfer_name,
                size: a.total_bytes,
            })
            .collect();
        if text.trim().is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignored {
                reason: "no text and no attachments",
            });
        }
        Ok(Inbound::Message(InboundMessage {
            platform_message_id: message.guid,
            sender_id: sender,
            sender_name: None,
            is_group: chat.contains(";+;"),
            conversation_id: chat,
            thread_id: message.thread_originator_guid,
            text,
            attachments,
            sent_at: message
                .date_created
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        }))
    }

    async fn send_text(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let Some(password) = &self.password else {
            return Err(SendError::Permanent {
                reason: "connector has no BlueBubbles server password".into(),
                status: None,
            });
        };
        let response = self
            .http
            .post(format!("{}/api/v1/message/text", self.server_url))
            .query(&[("password", password.expose_secret())])
            .json(&json!({
                "chatGuid": message.target.conversation_id,
                "tempGuid": message.delivery_id.to_string(),
                "message": message.text,
                "method": "apple-script",
            }))
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = super::retry_after(response.headers(), Utc::now());
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let said = answer["error"]["message"]
            .as_str()
            .or(answer["message"].as_str())
            .unwrap_or_else(|| super::truncate(&text, 300));
        // A part whose tempGuid is already queued was sent by an earlier attempt.
        if status.is_client_error() && said.to_ascii_lowercase().contains("already") {
            return Ok(());
        }
        Err(SendError::from_http(status, retry_after, said))
    }
}

impl Channel for IMessageChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Imessage
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        self.verify(request)?;
        Self::parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT, plain_text, char_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.send_text(message).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/imessage_bluebubbles.json");

    #[test]
    fn normalizes_the_sample_message() {
        let Inbound::Message(m) = IMessageChannel::parse(SAMPLE).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(
            m.platform_message_id,
            "4C3E1B9A-7D2F-4E8A-9B61-0F5A2C7D9E13"
        );
        assert_eq!(m.sender_id, "+15551234567");
        assert_eq!(m.conversation_id, "iMessage;-;+15551234567");
        assert!(!m.is_group);
        assert_eq!(m.text, "Can you move my appointment to Friday?");
        assert_eq!(m.sent_at.unwrap().timestamp(), 1_767_225_661);
    }

    #[test]
    fn own_messages_tapbacks_and_other_events_are_ignored() {
        let sample: Value = serde_json::from_slice(SAMPLE).unwrap();
        let variant = |edit: &dyn Fn(&mut Value)| {
            let mut v = sample.clone();
            edit(&mut v);
            IMessageChannel::parse(v.to_string().as_bytes()).unwrap()
        };
        for (edit, reason) in [
            (
                &(|v: &mut Value| v["data"]["isFromMe"] = json!(true)) as &dyn Fn(&mut Value),
                "sent from this Mac",
            ),
            (
                &|v: &mut Value| v["data"]["associatedMessageType"] = json!("like"),
                "a tapback or other associated message",
            ),
            (
                &|v: &mut Value| v["type"] = json!("updated-message"),
                "not a new message",
            ),
        ] {
            assert!(
                matches!(variant(edit), Inbound::Ignored { reason: r } if r == reason),
                "{reason}"
            );
        }
        let group = variant(&|v| v["data"]["chats"][0]["guid"] = json!("iMessage;+;chat123"));
        assert!(matches!(group, Inbound::Message(m) if m.is_group));
        for broken in [
            json!({"type": "new-message"}),
            json!({"type": "new-message", "data": {"guid": "g", "text": "hi", "chats": [{"guid": "c"}]}}),
            json!({"type": "new-message", "data": {"guid": "g", "text": "hi", "handle": {"address": "+1"}}}),
        ] {
            assert!(
                IMessageChannel::parse(broken.to_string().as_bytes()).is_err(),
                "{broken}"
            );
        }
    }
}
