//! The web chat: a chat surface MicroClaw serves itself, for websites and for
//! trying it out (the page and its API are in `receiver::webchat`).
//!
//! Visitors: each page asks for a session once and gets a visitor id (random,
//! 122 bits) with a **session token** signed by the connector's key (HMAC-SHA256
//! over connector, visitor and expiry), checked in constant time on every
//! request. A token names one visitor of one connector, so a visitor can only
//! read and write their own conversation.
//!
//! Inbound messages go through the receiver's durable path like any webhook
//! (same dedup on `<visitor>:<client message id>`, same 2xx-after-commit).
//! Outbound, "sending" a reply part is appending it to the visitor's mailbox in
//! the store (idempotent on the delivery id), from which the page reads it by
//! polling or over server-sent events: a delivery is done once the reply is
//! durably where the visitor will find it.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::{Channel, Inbound, InboundError, InboundRequest, OutboundMessage, SendError};
use crate::{
    config::{ChannelKind, ConnectorSettings},
    store::Store,
};

/// How long a visitor's session token is valid.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct WebChatChannel {
    connector_id: String,
    store: Store,
}

impl WebChatChannel {
    pub fn new(connector: &ConnectorSettings, store: Store) -> Self {
        Self {
            connector_id: connector.config.id.clone(),
            store,
        }
    }
}

impl Channel for WebChatChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webchat
    }

    fn receive(&self, _request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        Err(InboundError::Malformed(format!(
            "web chat messages are posted to /chat/{}/messages with a visitor token",
            self.connector_id
        )))
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            self.store
                .webchat_append(
                    &self.connector_id,
                    &message.target.recipient_id,
                    "agent",
                    &format!("out:{}", message.delivery_id),
                    &message.text,
                )
                .await
                .map_err(|e| SendError::Retryable {
                    reason: format!("could not write to the visitor's mailbox: {e}"),
                    status: None,
                    retry_after: None,
                })
        }
        .boxed()
    }
}

/// Issues and checks visitors' session tokens: `<visitor>.<expiry>.<signature>`.
pub struct VisitorTokens {
    connector_id: String,
    key: SecretString,
}

impl VisitorTokens {
    /// None when the connector has no key (it is not a web chat connector).
    pub fn of(connector: &ConnectorSettings) -> Option<Self> {
        Some(Self {
            connector_id: connector.config.id.clone(),
            key: connector.signing_secret.clone()?,
        })
    }

    fn signature(&self, visitor_id: &str, expires: i64) -> hmac::Hmac<Sha256> {
        let mut mac =
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose_secret().as_bytes())
                .expect("HMAC accepts keys of any length");
        mac.update(
            format!(
                "microclaw-webchat\n{}\n{visitor_id}\n{expires}",
                self.connector_id
            )
            .as_bytes(),
        );
        mac
    }

    /// A token for `visitor_id`, valid until `expires`.
    pub fn issue(&self, visitor_id: &str, expires: DateTime<Utc>) -> String {
        let expires = expires.timestamp();
        let tag = self.signature(visitor_id, expires).finalize().into_bytes();
        format!("{visitor_id}.{expires}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The visitor a token names, if it is genuine and not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Option<String> {
        let mut parts = token.splitn(3, '.');
        let (visitor_id, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let expires: i64 = expires.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // verify_slice compares in constant time.
        self.signature(visitor_id, expires)
            .verify_slice(&tag)
            .ok()?;
        (now.timestamp() < expires).then(|| visitor_id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn tokens(connector: &str, key: &str) -> VisitorTokens {
        VisitorTokens {
            connector_id: connector.into(),
            key: SecretString::from(key.to_owned()),
        }
    }

    #[test]
    fn a_token_names_one_visitor_of_one_connector_until_it_expires() {
        let key = "k".repeat(32);
        let chat = tokens("chat", &key);
        let now = Utc::now();
        let token = chat.issue("v1", now + chrono::Duration::hours(1));
        assert_eq!(chat.verify(&token, now).as_deref(), Some("v1"));
        assert_eq!(chat.verify(&token, now + chrono::Duration::hours(2)), None);
        // Another connector, another key, a changed visitor or expiry: refused.
        assert_eq!(tokens("other", &key).verify(&token, now), None);
        assert_eq!(tokens("chat", &"x".repeat(32)).verify(&token, now), None);
        let forged = token.replacen("v1.", "v2.", 1);
        assert_eq!(chat.verify(&forged, now), None);
        let (head, tag) = token.rsplit_once('.').unwrap();
        let (visitor, _) = head.split_once('.').unwrap();
        let extended = format!(
            "{visitor}.{}.{tag}",
            (now + chrono::Duration::days(999)).timestamp()
        );
        assert_eq!(chat.verify(&extended, now), None);
        for garbage in ["", "v1", "v1.x.y", "v1.123", "..."] {
            assert_eq!(chat.verify(garbage, now), None, "{garbage}");
        }
    }

    #[test]
    fn a_web_chat_connector_needs_a_long_key() {
        let text = r#"
            [[agents]]
            name = "a"
            model = "default"
            [[connectors]]
            id = "chat"
            channel = "webchat"
            agent = "a"
            signing_secret_env = "CHAT_KEY"
        "#;
        let short = |name: &str| (name == "CHAT_KEY").then(|| "short".to_owned());
        let errors = Settings::from_toml(text, &short).unwrap_err();
        assert_eq!(
            errors.0[0].key, "connectors[0].signing_secret_env",
            "{errors}"
        );
        let long = |name: &str| (name == "CHAT_KEY").then(|| "k".repeat(32));
        let settings = Settings::from_toml(text, &long).unwrap();
        assert!(VisitorTokens::of(&settings.connectors["chat"]).is_some());
    }
}
