//! Telegram Bot API: webhook updates in, `sendMessage` out.
//!
//! Inbound: Telegram sends the `secret_token` given to `setWebhook` verbatim in
//! `X-Telegram-Bot-Api-Secret-Token`; there is no body signature, so that header is
//! compared in constant time and a mismatch is refused. The dedup key is the
//! `update_id`. Messages from bots, channel posts and updates that are not
//! messages are acknowledged and ignored; in groups, when `bot_username` is set,
//! only messages that mention the bot or reply to it are answered.
//!
//! Outbound: replies are rendered from Markdown to Telegram's HTML parse mode and
//! split at 4,096 UTF-16 code units ([`super::format`]). A 429 carries its wait in
//! the JSON body (`parameters.retry_after`), which the delivery worker honours.
//! The bot token is part of every API URL, so transport errors are reported
//! without their URL: the token never reaches logs or the delivery history.

use std::time::Duration;

use axum::http::Method;
use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Attachment, Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage,
    ReplyTarget, SendError, constant_time_eq,
    format::{render_parts, telegram_html, utf16_len},
    pacing::Pace,
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_API_BASE_URL: &str = "https://api.telegram.org";
/// `sendMessage` text limit, in UTF-16 code units after entity parsing.
pub const MESSAGE_LIMIT: usize = 4096;
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

pub struct TelegramChannel {
    api_base_url: String,
    bot_token: Option<SecretString>,
    webhook_secret: Option<SecretString>,
    bot_username: Option<String>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Update {
    update_id: i64,
    #[serde(default)]
    message: Option<TgMessage>,
}

#[derive(Debug, Deserialize)]
struct TgMessage {
    #[serde(default)]
    from: Option<User>,
    chat: Chat,
    #[serde(default)]
    date: Option<i64>,
    #[serde(default)]
    message_thread_id: Option<i64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    photo: Vec<PhotoSize>,
    #[serde(default)]
    document: Option<Document>,
    #[serde(default)]
    reply_to_message: Option<Box<TgMessage>>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct PhotoSize {
    file_id: String,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Document {
    file_id: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    file_size: Option<u64>,
}

impl TelegramChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client) -> Self {
        Self {
            api_base_url: connector.api_base_url(DEFAULT_API_BASE_URL),
            bot_token: connector.bot_token.clone(),
            webhook_secret: connector.webhook_secret.clone(),
            bot_username: connector
                .config
                .bot_username
                .as_ref()
                .map(|u| u.trim_start_matches('@').to_lowercase()),
            http,
        }
    }

    fn method_url(&self, method: &str) -> Option<String> {
        let token = self.bot_token.as_ref()?;
        Some(format!(
            "{}/bot{}/{method}",
            self.api_base_url,
            token.expose_secret()
        ))
    }

    fn addressed_to_bot(&self, message: &TgMessage, text: &str) -> bool {
        let Some(bot) = &self.bot_username else {
            return true;
        };
        let mentioned = text.to_lowercase().contains(&format!("@{bot}"));
        let replied_to_bot = message
            .reply_to_message
            .as_ref()
            .and_then(|m| m.from.as_ref())
            .and_then(|u| u.username.as_deref())
            .is_some_and(|u| u.eq_ignore_ascii_case(bot));
        mentioned || replied_to_bot
    }

    /// Parses and normalizes a verified update.
    pub fn parse(&self, body: &[u8]) -> Result<Inbound, InboundError> {
        let update: Update =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        let Some(message) = update.message else {
            return Ok(Inbound::Ignored {
                reason: "update is not a new message",
            });
        };
        let Some(from) = &message.from else {
            return Ok(Inbound::Ignored {
                reason: "message has no sender",
            });
        };
        if from.is_bot {
            return Ok(Inbound::Ignored {
                reason: "message from a bot",
            });
        }
        let is_group = match message.chat.kind.as_str() {
            "private" => false,
            "group" | "supergroup" => true,
            _ => {
                return Ok(Inbound::Ignored {
                    reason: "not a private or group chat",
                });
            }
        };
        let text = message
            .text
            .clone()
            .or_else(|| message.caption.clone())
            .unwrap_or_default();
        let mut attachments = Vec::new();
        if let Some(largest) = message
            .photo
            .iter()
            .max_by_key(|p| p.file_size.unwrap_or(0))
        {
            attachments.push(Attachment {
                url: None,
                content_type: Some("image/jpeg".into()),
                name: Some(largest.file_id.clone()),
                size: largest.file_size,
            });
        }
        if let Some(document) = &message.document {
            attachments.push(Attachment {
                url: None,
                content_type: document.mime_type.clone(),
                name: Some(
                    document
                        .file_name
                        .clone()
                        .unwrap_or_else(|| document.file_id.clone()),
                ),
                size: document.file_size,
            });
        }
        if text.trim().is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignored {
                reason: "message has no text or media",
            });
        }
        if is_group && !self.addressed_to_bot(&message, &text) {
            return Ok(Inbound::Ignored {
                reason: "group message not addressed to the bot",
            });
        }
        let name = [from.first_name.as_deref(), from.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Inbound::Message(InboundMessage {
            platform_message_id: update.update_id.to_string(),
            sender_id: from.id.to_string(),
            sender_name: if name.is_empty() {
                from.username.clone()
            } else {
                Some(name)
            },
            conversation_id: message.chat.id.to_string(),
            thread_id: message.message_thread_id.map(|t| t.to_string()),
            is_group,
            text,
            attachments,
            sent_at: message
                .date
                .and_then(|d| DateTime::<Utc>::from_timestamp(d, 0)),
        }))
    }

    async fn call(&self, method: &str, body: Value) -> Result<(), SendError> {
        let Some(url) = self.method_url(method) else {
            return Err(SendError::Permanent {
                reason: "connector has no bot token".into(),
                status: None,
            });
        };
        let response =
            self.http
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(|e| SendError::Retryable {
                    reason: format!("transport: {}", e.without_url()),
                    status: None,
                    retry_after: None,
                })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() && answer["ok"] == true {
            return Ok(());
        }
        Err(classify(status.as_u16(), &answer, &text))
    }
}

/// A failed Bot API call: 429 with `parameters.retry_after` is a rate limit;
/// 400/401/403/404 (chat not found, bot blocked, bad token) are permanent.
fn classify(status: u16, answer: &Value, text: &str) -> SendError {
    let code = answer["error_code"].as_u64().map_or(status, |c| c as u16);
    let description = answer["description"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| super::truncate(text, 300).to_owned());
    let reason = format!("Telegram {code}: {description}");
    match code {
        429 => SendError::RateLimited {
            reason,
            status: Some(code),
            retry_after: answer["parameters"]["retry_after"]
                .as_f64()
                .and_then(super::seconds),
        },
        400..=499 => SendError::Permanent {
            reason,
            status: Some(code),
        },
        _ => SendError::Retryable {
            reason,
            status: Some(code),
            retry_after: None,
        },
    }
}

fn chat_id(conversation_id: &str) -> Value {
    conversation_id
        .parse::<i64>()
        .map_or_else(|_| json!(conversation_id), |id| json!(id))
}

fn with_thread(mut body: Value, target: &ReplyTarget) -> Value {
    if let Some(thread) = target
        .thread_id
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
    {
        body["message_thread_id"] = json!(thread);
    }
    body
}

impl Channel for TelegramChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        let presented = request
            .headers
            .get(SECRET_HEADER)
            .ok_or(InboundError::MissingHeader(
                "X-Telegram-Bot-Api-Secret-Token",
            ))?;
        let expected = self
            .webhook_secret
            .as_ref()
            .ok_or_else(|| InboundError::BadSignature("connector has no secret token".into()))?;
        if !constant_time_eq(presented.as_bytes(), expected.expose_secret().as_bytes()) {
            return Err(InboundError::BadSignature(
                "X-Telegram-Bot-Api-Secret-Token does not match".into(),
            ));
        }
        self.parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT, telegram_html, utf16_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        let body = with_thread(
            json!({
                "chat_id": chat_id(&message.target.conversation_id),
                "text": message.text,
                "parse_mode": "HTML",
                "link_preview_options": {"is_disabled": true},
            }),
            &message.target,
        );
        async move { self.call("sendMessage", body).await }.boxed()
    }

    /// About one message a second per chat and thirty a second per bot.
    fn pacing(&self, target: &ReplyTarget) -> Vec<Pace> {
        let bot = self
            .bot_token
            .as_ref()
            .and_then(|t| t.expose_secret().split(':').next().map(str::to_owned))
            .unwrap_or_default();
        vec![
            Pace::new(
                format!("telegram:{bot}:chat:{}", target.conversation_id),
                Duration::from_secs(1),
            ),
            Pace::new(format!("telegram:{bot}"), Duration::from_millis(34)),
        ]
    }

    fn typing<'a>(&'a self, target: &'a ReplyTarget) -> BoxFuture<'a, ()> {
        let body = with_thread(
            json!({"chat_id": chat_id(&target.conversation_id), "action": "typing"}),
            target,
        );
        async move {
            if let Err(e) = self.call("sendChatAction", body).await {
                tracing::debug!(error = %e, "typing indicator not sent");
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectorConfig;

    fn channel(bot_username: Option<&str>) -> TelegramChannel {
        let settings = ConnectorSettings {
            config: ConnectorConfig {
                id: "tg".into(),
                channel: ChannelKind::Telegram,
                agent: "a".into(),
                signing_secret_env: None,
                callback_url: None,
                callback_secret_env: None,
                bot_token_env: Some("T".into()),
                secret_token_env: Some("S".into()),
                api_base_url: None,
                bot_username: bot_username.map(str::to_owned),
                verify_token_env: None,
                public_url: None,
                account_sid: None,
                public_key: None,
                command: None,
                gateway: false,
                gateway_url: None,
                app_id: None,
                openid_metadata_url: None,
                token_url: None,
                service_url_hosts: None,
            },
            signing_secret: None,
            callback_secret: None,
            bot_token: Some("123:abc".to_owned().into()),
            webhook_secret: Some("mc_tg_secret-0001".to_owned().into()),
            verify_token: None,
        };
        crate::install_tls_provider();
        TelegramChannel::new(&settings, reqwest::Client::new())
    }

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/telegram.json");

    #[test]
    fn normalizes_the_sample_forum_topic_message() {
        let Inbound::Message(m) = channel(Some("microclaw_bot")).parse(SAMPLE).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(
            m.platform_message_id, "815224001",
            "update_id is the dedup key"
        );
        assert_eq!(m.sender_id, "123456789");
        assert_eq!(m.sender_name.as_deref(), Some("Dana K."));
        assert_eq!(m.conversation_id, "-1001987654321");
        assert_eq!(m.thread_id.as_deref(), Some("42"));
        assert!(m.is_group);
        assert!(m.text.starts_with("@microclaw_bot what's 2+2?"));
    }

    #[test]
    fn group_messages_for_someone_else_and_bot_messages_are_ignored() {
        let other = channel(Some("another_bot"));
        assert!(matches!(
            other.parse(SAMPLE).unwrap(),
            Inbound::Ignored { .. }
        ));
        let from_bot = br#"{"update_id":1,"message":{"message_id":1,"from":{"id":9,"is_bot":true,"first_name":"B"},"chat":{"id":5,"type":"private"},"text":"hi"}}"#;
        assert!(matches!(
            channel(None).parse(from_bot).unwrap(),
            Inbound::Ignored { .. }
        ));
        let edited = br#"{"update_id":2,"edited_message":{"message_id":1,"chat":{"id":5,"type":"private"},"text":"hi"}}"#;
        assert!(matches!(
            channel(None).parse(edited).unwrap(),
            Inbound::Ignored { .. }
        ));
        let channel_post = br#"{"update_id":3,"message":{"message_id":1,"from":{"id":9,"is_bot":false},"chat":{"id":-5,"type":"channel"},"text":"hi"}}"#;
        assert!(matches!(
            channel(None).parse(channel_post).unwrap(),
            Inbound::Ignored { .. }
        ));
    }

    #[test]
    fn malformed_updates_are_refused() {
        assert!(matches!(
            channel(None).parse(b"{"),
            Err(InboundError::Malformed(_))
        ));
        assert!(matches!(
            channel(None).parse(br#"{"message":{}}"#),
            Err(InboundError::Malformed(_))
        ));
    }

    #[test]
    fn api_errors_are_classified() {
        let rate = classify(
            429,
            &json!({"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}),
            "",
        );
        assert_eq!(rate.class(), "rate_limited");
        assert_eq!(rate.retry_after(), Some(Duration::from_secs(7)));
        let gone = classify(
            400,
            &json!({"ok":false,"error_code":400,"description":"Bad Request: chat not found"}),
            "",
        );
        assert_eq!(gone.class(), "permanent");
        let blocked = classify(
            403,
            &json!({"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}),
            "",
        );
        assert_eq!(blocked.class(), "permanent");
        assert_eq!(
            classify(502, &Value::Null, "Bad Gateway").class(),
            "retryable"
        );
    }
}
