//! Microsoft Teams through the Bot Framework: activities in, Connector API out.
//!
//! Inbound: every activity carries `Authorization: Bearer <JWT>` from the Bot
//! Connector. It is validated before anything else ([`Channel::authenticate`]):
//! RS256 with a key from the Bot Framework's OpenID metadata (`jwks_uri`), found
//! by `kid`, cached for a day and fetched again when a token names an unknown
//! key (at most every five seconds, so forged `kid`s cannot make us hammer the
//! key endpoint); issuer `https://api.botframework.com`; audience our app id;
//! `exp`/`nbf` with five minutes of leeway; the `serviceUrl` claim equal to the
//! activity's; the key endorsed for the activity's channel (`msteams`). A
//! missing token is 401, a failed check 403. The metadata URL is configurable
//! (tests serve their own keys).
//!
//! `message` activities become messages (the bot's `<at>` mention taken out;
//! the dedup key is the activity id scoped by the conversation); `invoke`s are
//! answered at once with 200 (Teams gives them 5 seconds; they start no turn);
//! `conversationUpdate` and the rest are acknowledged and ignored.
//!
//! Outbound: `POST {serviceUrl}/v3/conversations/{id}/activities/{replyToId}`
//! (a reply in the thread) with a bearer token from the OAuth client-credentials
//! flow, cached until five minutes before it expires. The token is only ever
//! sent to `serviceUrl`s whose host is allow-listed
//! (`service_url_hosts`), so a forged or misrouted activity cannot make us hand
//! it to someone else. Sends are paced to 7 per second per conversation across
//! workers (Teams' per-thread limit); a 429 waits as Retry-After says; 412, 502 and 504 are
//! retried; a 401 drops the cached token before the retry.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::Method;
use chrono::Utc;
use futures::{FutureExt, future::BoxFuture};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Channel, Inbound, InboundError, InboundMessage, InboundRequest, OutboundMessage, ReplyTarget,
    SendError, format::render_parts, pacing::Pace,
};
use crate::config::{ChannelKind, ConnectorSettings};

pub const DEFAULT_OPENID_METADATA_URL: &str =
    "https://login.botframework.com/v1/.well-known/openidconfiguration";
pub const DEFAULT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token";
/// Hosts the Bot Connector serves Teams from.
pub const DEFAULT_SERVICE_URL_HOSTS: &[&str] = &[
    "smba.trafficmanager.net",
    "smba.infra.gcc.teams.microsoft.com",
];
const ISSUER: &str = "https://api.botframework.com";
const SCOPE: &str = "https://api.botframework.com/.default";
/// Teams accepts about 28 KB per message.
pub const MESSAGE_LIMIT_BYTES: usize = 24_000;
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Unknown `kid`s fetch the keys again at most this often.
const KEYS_MIN_REFRESH: Duration = Duration::from_secs(5);

pub struct TeamsChannel {
    app_id: String,
    client_secret: Option<SecretString>,
    metadata_url: String,
    token_url: String,
    service_url_hosts: Vec<String>,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<KeyCache>,
    token: Mutex<Option<(SecretString, Instant)>>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, SigningKey>,
    fetched: Option<Instant>,
}

#[derive(Clone)]
struct SigningKey {
    key: DecodingKey,
    endorsements: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    endorsements: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// The Bot Connector names the claim `serviceurl` (the SDKs read it so);
    /// `serviceUrl` is accepted too.
    #[serde(rename = "serviceurl", alias = "serviceUrl", default)]
    service_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Activity {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    service_url: Option<String>,
    #[serde(default)]
    from: Option<Account>,
    #[serde(default)]
    recipient: Option<Account>,
    #[serde(default)]
    conversation: Option<Conversation>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    entities: Vec<Value>,
    #[serde(default)]
    timestamp: Option<chrono::DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
struct Account {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conversation {
    id: String,
    #[serde(default)]
    conversation_type: Option<String>,
    #[serde(default)]
    is_group: Option<bool>,
}

fn trimmed(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl TeamsChannel {
    pub fn new(connector: &ConnectorSettings, http: reqwest::Client) -> Self {
        let config = &connector.config;
        Self {
            app_id: config.app_id.clone().unwrap_or_default(),
            client_secret: connector.bot_token.clone(),
            metadata_url: config
                .openid_metadata_url
                .clone()
                .unwrap_or_else(|| DEFAULT_OPENID_METADATA_URL.to_owned()),
            token_url: config
                .token_url
                .clone()
                .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned()),
            service_url_hosts: config.service_url_hosts.clone().unwrap_or_else(|| {
                DEFAULT_SERVICE_URL_HOSTS
                    .iter()
                    .map(|h| h.to_string())
                    .collect()
            }),
            http,
            keys: tokio::sync::Mutex::default(),
            token: Mutex::default(),
        }
    }

    /// The signing key `kid`, from the cache or freshly fetched metadata.
    async fn key(&self, kid: &str) -> Result<Option<SigningKey>, InboundError> {
        let mut cache = self.keys.lock().await;
        let age = cache.fetched.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age > KEYS_MAX_AGE);
        let unknown = !cache.keys.contains_key(kid);
        if stale || (unknown && age.is_none_or(|age| age > KEYS_MIN_REFRESH)) {
            match self.fetch_keys().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                // Keep serving the keys we have; a token with a new kid waits.
                Err(e) => tracing::warn!(error = %e, "teams: could not fetch the signing keys"),
            }
        }
        Ok(cache.keys.get(kid).cloned())
    }

    async fn fetch_keys(&self) -> anyhow::Result<HashMap<String, SigningKey>> {
        let metadata: Value = self
            .http
            .get(&self.metadata_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let jwks_uri = metadata["jwks_uri"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("OpenID metadata without jwks_uri"))?;
        let jwks: Jwks = self
            .http
            .get(jwks_uri)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(jwks
            .keys
            .into_iter()
            .filter(|k| k.kty == "RSA")
            .filter_map(|k| {
                let key =
                    DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
                Some((
                    k.kid?,
                    SigningKey {
                        key,
                        endorsements: k.endorsements,
                    },
                ))
            })
            .collect())
    }

    async fn check_token(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| InboundError::BadSignature("no bearer token".into()))?;
        let forbidden = |why: String| InboundError::Forbidden(why);
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| forbidden(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(forbidden(format!(
                "algorithm {:?} is not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| forbidden("the token names no key (kid)".into()))?;
        let key = self
            .key(&kid)
            .await?
            .ok_or_else(|| forbidden(format!("unknown signing key `{kid}`")))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[self.app_id.as_str()]);
        validation.leeway = 300;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| forbidden(format!("token refused: {e}")))?
            .claims;
        let activity: Activity = serde_json::from_slice(request.body)
            .map_err(|e| InboundError::Malformed(e.to_string()))?;
        let (Some(claimed), Some(actual)) = (&claims.service_url, &activity.service_url) else {
            return Err(forbidden(
                "the token or the activity has no serviceUrl".into(),
            ));
        };
        if trimmed(claimed) != trimmed(actual) {
            return Err(forbidden(
                "the activity's serviceUrl is not the token's".into(),
            ));
        }
        if let Some(endorsed) = &key.endorsements {
            let channel = activity.channel_id.as_deref().unwrap_or_default();
            if !endorsed.iter().any(|e| e == channel) {
                return Err(forbidden(format!(
                    "the key is not endorsed for channel `{channel}`"
                )));
            }
        }
        Ok(())
    }

    fn parse(body: &[u8]) -> Result<Inbound, InboundError> {
        let activity: Activity =
            serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        match activity.kind.as_str() {
            "message" => {}
            // Cards and message extensions wait for a synchronous answer.
            "invoke" => {
                return Ok(Inbound::Handshake {
                    content_type: "application/json",
                    body: "{}".into(),
                });
            }
            _ => {
                return Ok(Inbound::Ignored {
                    reason: "not a message activity",
                });
            }
        }
        let missing = |what: &str| InboundError::Malformed(format!("a message without {what}"));
        let from = activity.from.ok_or_else(|| missing("from"))?;
        let recipient = activity.recipient.ok_or_else(|| missing("recipient"))?;
        if from.id == recipient.id {
            return Ok(Inbound::Ignored {
                reason: "our own message",
            });
        }
        let conversation = activity
            .conversation
            .ok_or_else(|| missing("conversation"))?;
        let id = activity.id.ok_or_else(|| missing("id"))?;
        let service_url = activity.service_url.ok_or_else(|| missing("serviceUrl"))?;
        let mut text = activity.text.unwrap_or_default();
        for entity in &activity.entities {
            if entity["type"] == "mention"
                && entity["mentioned"]["id"] == recipient.id.as_str()
                && let Some(mention) = entity["text"].as_str()
            {
                text = text.replace(mention, "");
            }
        }
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Ok(Inbound::Ignored { reason: "no text" });
        }
        let is_group = conversation
            .is_group
            .unwrap_or(conversation.conversation_type.as_deref() != Some("personal"));
        Ok(Inbound::Message(InboundMessage {
            platform_message_id: format!("{}|{id}", conversation.id),
            sender_id: from.id,
            sender_name: from.name,
            conversation_id: conversation.id,
            // Where replies go: the Connector that sent the activity.
            thread_id: Some(service_url),
            is_group,
            text,
            attachments: Vec::new(),
            sent_at: activity.timestamp,
        }))
    }

    /// Whether the bearer token may be sent to `service_url`.
    fn allowed(&self, service_url: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(service_url) else {
            return false;
        };
        let Some(host) = url.host_str() else {
            return false;
        };
        let secure = url.scheme() == "https" || host == "127.0.0.1" || host == "localhost";
        secure
            && self
                .service_url_hosts
                .iter()
                .any(|allowed| host == allowed || host.ends_with(&format!(".{allowed}")))
    }

    /// A Connector token, from the cache or the token endpoint.
    async fn access_token(&self) -> Result<SecretString, SendError> {
        if let Some((token, expires)) = self.token.lock().expect("not poisoned").as_ref()
            && Instant::now() < *expires
        {
            return Ok(token.clone());
        }
        let Some(secret) = &self.client_secret else {
            return Err(SendError::Permanent {
                reason: "connector has no client secret (bot_token_env)".into(),
                status: None,
            });
        };
        let response = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.app_id.as_str()),
                ("client_secret", secret.expose_secret()),
                ("scope", SCOPE),
            ])
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let Some(token) = body["access_token"]
            .as_str()
            .filter(|_| status.is_success())
        else {
            let said = body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no access_token")
                .to_owned();
            return Err(SendError::from_http(
                status,
                None,
                &format!("token endpoint: {said}"),
            ));
        };
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
        let token = SecretString::from(token.to_owned());
        *self.token.lock().expect("not poisoned") = Some((
            token.clone(),
            Instant::now() + lifetime.saturating_sub(Duration::from_secs(300)),
        ));
        Ok(token)
    }

    async fn reply(&self, message: &OutboundMessage) -> Result<(), SendError> {
        let target = &message.target;
        let Some(service_url) = target.thread_id.as_deref() else {
            return Err(SendError::Permanent {
                reason: "no serviceUrl to reply to".into(),
                status: None,
            });
        };
        if !self.allowed(service_url) {
            return Err(SendError::Permanent {
                reason: format!(
                    "serviceUrl {service_url} is not an allowed host (service_url_hosts); the token is not sent"
                ),
                status: None,
            });
        }
        let activity_id = target
            .in_reply_to
            .last()
            .and_then(|key| key.rsplit_once('|'))
            .map(|(_, id)| id.to_owned());
        let mut url = reqwest::Url::parse(&format!("{}/", trimmed(service_url))).map_err(|e| {
            SendError::Permanent {
                reason: format!("bad serviceUrl: {e}"),
                status: None,
            }
        })?;
        url.path_segments_mut()
            .map_err(|()| SendError::Permanent {
                reason: "serviceUrl cannot take a path".into(),
                status: None,
            })?
            .pop_if_empty()
            .extend(["v3", "conversations", &target.conversation_id, "activities"])
            .extend(activity_id.as_deref());
        let token = self.access_token().await?;
        let mut body = json!({
            "type": "message",
            "text": message.text,
            "textFormat": "markdown",
        });
        if let Some(id) = &activity_id {
            body["replyToId"] = json!(id);
        }
        let response = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = super::retry_after(response.headers(), Utc::now());
        let text = response.text().await.unwrap_or_default();
        let said = super::truncate(&text, 300);
        match status.as_u16() {
            401 => {
                // Maybe revoked: the next attempt fetches a new token.
                *self.token.lock().expect("not poisoned") = None;
                Err(SendError::Retryable {
                    reason: format!("Teams 401: {said}"),
                    status: Some(401),
                    retry_after: None,
                })
            }
            412 | 502 | 504 => Err(SendError::Retryable {
                reason: format!("Teams {}: {said}", status.as_u16()),
                status: Some(status.as_u16()),
                retry_after,
            }),
            _ => Err(SendError::from_http(status, retry_after, said)),
        }
    }
}

impl Channel for TeamsChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Teams
    }

    fn authenticate<'a>(
        &'a self,
        request: &'a InboundRequest<'a>,
    ) -> BoxFuture<'a, Result<(), InboundError>> {
        self.check_token(request).boxed()
    }

    fn receive(&self, request: &InboundRequest<'_>) -> Result<Inbound, InboundError> {
        if request.method != Method::POST {
            return Err(InboundError::MethodNotAllowed(request.method.to_string()));
        }
        Self::parse(request.body)
    }

    fn split(&self, text: &str) -> Vec<String> {
        render_parts(text, MESSAGE_LIMIT_BYTES, str::to_owned, str::len)
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> BoxFuture<'a, Result<(), SendError>> {
        self.reply(message).boxed()
    }

    /// Teams allows a bot 7 sends per second in a conversation.
    fn pacing(&self, target: &ReplyTarget) -> Vec<Pace> {
        vec![Pace::new(
            format!("teams:{}:{}", self.app_id, target.conversation_id),
            Duration::from_millis(150),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/teams.json");

    #[test]
    fn the_documented_token_verifies_with_the_documented_key() {
        // The vector's token expired long ago: check its signature and claims
        // with expiry off (the live path is tested end to end).
        let vectors: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/teams_vector.json")).unwrap();
        let jwk = &vectors["test_jwks"]["keys"][0];
        let key = DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let token = vectors["headers"]["Authorization"]
            .as_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&["3c1e7a52-8b9d-4f0e-a1b2-c3d4e5f60718"]);
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(
            claims.service_url.as_deref(),
            Some("https://smba.trafficmanager.net/emea/")
        );
        validation.set_audience(&["someone-else"]);
        assert!(jsonwebtoken::decode::<Claims>(token, &key, &validation).is_err());
    }

    #[test]
    fn normalizes_the_sample_without_the_mention() {
        let Inbound::Message(m) = TeamsChannel::parse(SAMPLE).unwrap() else {
            panic!("a message");
        };
        assert_eq!(m.text, "what is the status of ticket 8812?");
        assert_eq!(m.sender_name.as_deref(), Some("Carla Rossi"));
        assert!(m.is_group);
        assert_eq!(
            m.conversation_id,
            "19:2c5fd0a1b2c34d5e8f90a1b2c3d4e5f6@thread.tacv2;messageid=1767225600001"
        );
        assert_eq!(
            m.platform_message_id,
            format!("{}|1767225661553", m.conversation_id)
        );
        assert_eq!(
            m.thread_id.as_deref(),
            Some("https://smba.trafficmanager.net/emea/")
        );
    }

    #[test]
    fn the_token_only_goes_to_allow_listed_https_hosts() {
        crate::install_tls_provider();
        let channel = TeamsChannel {
            app_id: "app".into(),
            client_secret: None,
            metadata_url: String::new(),
            token_url: String::new(),
            service_url_hosts: vec!["smba.trafficmanager.net".into()],
            http: reqwest::Client::new(),
            keys: Default::default(),
            token: Default::default(),
        };
        assert!(channel.allowed("https://smba.trafficmanager.net/emea/"));
        assert!(channel.allowed("https://eu.smba.trafficmanager.net/x"));
        assert!(!channel.allowed("http://smba.trafficmanager.net/emea/"));
        assert!(!channel.allowed("https://smba.trafficmanager.net.evil.example/"));
        assert!(!channel.allowed("https://evil.example/smba.trafficmanager.net"));
        assert!(!channel.allowed("not a url"));
    }
}
