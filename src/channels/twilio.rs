//! SMS through Twilio Programmable Messaging: form webhooks in, the Messages API
//! out.
//!
//! Inbound: `X-Twilio-Signature` is base64 HMAC-SHA1 (key: the account's Auth
//! Token) of the webhook URL *as configured in Twilio* followed by every POST
//! parameter, sorted by name, as name + value. The URL is `public_url` from the
//! configuration, never rebuilt from the request, so it verifies behind a
//! TLS-terminating proxy. No timestamp is signed: replays are caught by dedup on
//! `MessageSid`. Twilio expects TwiML back, so every 2xx answer is an empty
//! `<Response/>`.
//!
//! The conversation id is `{our number}:{their number}`, what a reply needs.
//!
//! Outbound: plain text (Markdown stripped), split at 1,600 characters, POSTed as a
//! form with Basic auth. 429 (error 20429) is a rate limit; opt-outs (21610),
//! invalid numbers and other 4xx are permanent.

use axum::http::Method;
use base64::{Engine, engine::general_purpose::STANDARD};
use futures::{FutureExt, future::BoxFuture};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{
    Attachment, Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage,
    SendError, constant_time_eq, form_pairs,
    format::{char_len, plain_text, render_parts},
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_API_BASE_URL: &str = "https://api.twilio.com";
/// Twilio refuses longer bodies (error 21617).
pub const MESSAGE_LIMIT: usize = 1600;
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

pub struct TwilioChannel {
    api_base_url: String,
    public_url: Option<String>,
    account_sid: Option<String>,
    auth_token: Option<SecretString>,
    http: reqwest::Client,
}

/// base64 HMAC-SHA1 of the URL followed by the sorted parameters.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

impl TwilioChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client) -> Self {
        Self {
            api_base_url: connector.api_base_url(DEFAULT_API_BASE_URL),
            public_url: connector.config.public_url.clone(),
            account_sid: connector.config.account_sid.clone(),
            auth_token: connector.signing_secret.clone(),
            http,
        }
    }

    fn verify(
        &self,
        request: &InboundRequest<'_>,
        params: &[(String, String)],
    ) -> Result<(), InboundError> {
        let presented = request
            .headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or(InboundError::MissingHeader("X-Twilio-Signature"))?;
        let (Some(url), Some(token)) = (&self.public_url, &self.auth_token) else {
            return Err(InboundError::BadSignature(
                "connector has no public_url or auth token".into(),
            ));
        };
        // Twilio is inconsistent about explicit default ports; its own validator
        // accepts the URL with and without them, and so does this one.
        let matches = url_variants(url).iter().any(|candidate| {
            let expected = signature(token.expose_secret(), candidate, params);
            constant_time_eq(presented.as_bytes(), expected.as_bytes())
        });
        if !matches {
            return Err(InboundError::BadSignature(
                "X-Twilio-Signature does not match".into(),
            ));
        }
        Ok(())
    }

    /// Normalizes verified form parameters.
    pub fn parse(params: &[(String, String)]) -> Result<Inbound, InboundError> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let (Some(sid), Some(from), Some(to)) = (param("MessageSid"), param("From"), param("To"))
        else {
            return Err(InboundError::Malformed(
                "MessageSid, From and To are required".into(),
            ));
        };
        let media: usize = param("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
        let attachments: Vec<Attachment> = (0..media.min(10))
            .filter_map(|i| {
                Some(Attachment {
                    url: Some(param(&format!("MediaUrl{i}"))?),
                    content_type: param(&format!("MediaContentType{i}")),
                    name: None,
                    size: None,
                })
            })
            .collect();
        let text = param("Body").unwrap_or_default();
        if text.trim().is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignored {
                reason: "message has no body or media",
            });
        }
        Ok(Inbound::Message(InboundMessage {
            platform_message_id: sid,
            conversation_id: format!("{to}:{from}"),
            sender_id: from,
            sender_name: None,
            thread_id: None,
            is_group: false,
            text,
            attachments,
            sent_at: None,
        }))
    }

    async fn create_message(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let (Some(account), Some(token)) = (&self.account_sid, &self.auth_token) else {
            return Err(SendError::Permanent {
                reason: "connector has no account_sid or auth token".into(),
                status: None,
            });
        };
        let Some((from, to)) = message.target.conversation_id.split_once(':') else {
            return Err(SendError::Permanent {
                reason: "conversation id is not {our number}:{their number}".into(),
                status: None,
            });
        };
        let form = [("To", to), ("From", from), ("Body", message.text.as_str())];
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!(
                "{}/2010-04-01/Accounts/{account}/Messages.json",
                self.api_base_url
            ))
            .basic_auth(account, Some(token.expose_secret()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = answer["code"].as_i64().unwrap_or_default();
        let reason = format!(
            "Twilio {} (error {code}): {}",
            status.as_u16(),
            answer["message"]
                .as_str()
                .unwrap_or_else(|| super::truncate(&text, 300))
        );
        let http = Some(status.as_u16());
        Err(if status.as_u16() == 429 || code == 20429 {
            SendError::RateLimited {
                reason,
                status: http,
                retry_after: None,
            }
        } else if status.is_server_error() {
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
        })
    }
}

/// The URL as configured, and the same URL with its default port added or removed.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, tail) = rest.split_at(host_end);
        match host.strip_suffix(port) {
            Some(bare) => variants.push(format!("{scheme}{bare}{tail}")),
            None if !host.contains(':') => variants.push(format!("{scheme}{host}{port}{tail}")),
            None => {}
        }
    }
    variants
}

fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            byte => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

impl Channel for TwilioChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Twilio
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        let params = form_pairs(request.body);
        self.verify(request, &params)?;
        Self::parse(&params)
    }

    fn acknowledgement(&self) -> Option<(&'static str, &'static str)> {
        Some(("text/xml", EMPTY_TWIML))
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT, plain_text, char_len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.create_message(message).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/twilio_sms.form");

    #[test]
    fn signs_the_documented_known_answer_and_the_sample() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            signature(
                "microclaw_test_auth_token_00001",
                "https://hooks.microclaw.example/twilio/sms?tenant=acme",
                &form_pairs(SAMPLE)
            ),
            "QWR5rInbgxp+8Nvj5aMbRLglWxA="
        );
    }

    #[test]
    fn normalizes_the_sample_mms() {
        let Inbound::Message(m) = TwilioChannel::parse(&form_pairs(SAMPLE)).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(m.platform_message_id, "MM5f0c1e2d3b4a59687a6b5c4d3e2f1a0b");
        assert_eq!(m.sender_id, "+14155550123");
        assert_eq!(m.conversation_id, "+14155550100:+14155550123");
        assert_eq!(m.text, "Here's the photo of the broken part 📷");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].content_type.as_deref(), Some("image/jpeg"));
    }

    #[test]
    fn default_ports_are_accepted_both_ways() {
        assert_eq!(
            url_variants("https://h.example/sms?x=1"),
            ["https://h.example/sms?x=1", "https://h.example:443/sms?x=1"]
        );
        assert_eq!(
            url_variants("https://h.example:443/sms"),
            ["https://h.example:443/sms", "https://h.example/sms"]
        );
        assert_eq!(
            url_variants("http://h.example:8080/sms"),
            ["http://h.example:8080/sms"]
        );
    }

    #[test]
    fn form_encoding_round_trips() {
        let text = "Hi + bye & 50% 📷";
        let encoded = format!("Body={}", form_encode(text));
        assert_eq!(form_pairs(encoded.as_bytes())[0].1, text);
    }
}
