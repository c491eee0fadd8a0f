//! The channels under fuzzing, each with how its platform signs a request, built
//! once from a configuration like a deployment's.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ed25519_dalek::{Signer, SigningKey};
use microclaw::{
    channels::{self, Channel},
    config::Settings,
};

pub const CUSTOM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SLACK_SECRET: &str = "fuzz-slack-signing-secret";
pub const WHATSAPP_SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const TELEGRAM_SECRET: &str = "fuzz-telegram-secret";
pub const TWILIO_TOKEN: &str = "fuzz-twilio-auth-token";
pub const TWILIO_URL: &str = "https://hooks.microclaw.example/hooks/sms";
pub const IMESSAGE_TOKEN: &str = "fuzz-imessage-url-token-0123456789";
const DISCORD_SEED: [u8; 32] = [7; 32];

/// Signs a body as the platform would, at `now` (unix seconds).
pub type Sign = fn(&[u8], i64) -> Vec<(&'static str, String)>;

pub struct Fuzzed {
    pub name: &'static str,
    pub channel: Arc<dyn Channel>,
    pub sign: Sign,
    /// The query string the platform's URL carries (iMessage's token).
    pub query: Option<&'static str>,
}

pub fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    pairs
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sign_custom(body: &[u8], now: i64) -> Vec<(&'static str, String)> {
    let key = channels::standard_webhooks::SigningKey::parse(CUSTOM_SECRET).expect("secret");
    vec![
        ("webhook-id", "msg_fuzz".into()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", key.sign("msg_fuzz", now, body)),
    ]
}

fn sign_slack(body: &[u8], now: i64) -> Vec<(&'static str, String)> {
    vec![
        ("x-slack-request-timestamp", now.to_string()),
        (
            "x-slack-signature",
            channels::slack::signature(SLACK_SECRET, &now.to_string(), body),
        ),
    ]
}

fn sign_whatsapp(body: &[u8], _now: i64) -> Vec<(&'static str, String)> {
    vec![(
        "x-hub-signature-256",
        channels::whatsapp::signature(WHATSAPP_SECRET, body),
    )]
}

fn sign_telegram(_body: &[u8], _now: i64) -> Vec<(&'static str, String)> {
    vec![("x-telegram-bot-api-secret-token", TELEGRAM_SECRET.into())]
}

fn sign_twilio(body: &[u8], _now: i64) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-twilio-signature",
            channels::twilio::signature(TWILIO_TOKEN, TWILIO_URL, &channels::form_pairs(body)),
        ),
        ("content-type", "application/x-www-form-urlencoded".into()),
    ]
}

fn sign_discord(body: &[u8], now: i64) -> Vec<(&'static str, String)> {
    let mut signed = now.to_string().into_bytes();
    signed.extend_from_slice(body);
    let signature = SigningKey::from_bytes(&DISCORD_SEED).sign(&signed);
    vec![
        ("x-signature-ed25519", hex(&signature.to_bytes())),
        ("x-signature-timestamp", now.to_string()),
    ]
}

fn unsigned(_body: &[u8], _now: i64) -> Vec<(&'static str, String)> {
    Vec::new()
}

pub fn all() -> Vec<Fuzzed> {
    microclaw::install_tls_provider();
    let discord_key = SigningKey::from_bytes(&DISCORD_SEED);
    let config = format!(
        r#"
[[connectors]]
id = "custom"
channel = "custom"
agent = "assistant"
signing_secret_env = "CUSTOM_SECRET"
callback_url = "http://127.0.0.1:9/replies"

[[connectors]]
id = "slack"
channel = "slack"
agent = "assistant"
signing_secret_env = "SLACK_SECRET"
bot_token_env = "BOT_TOKEN"

[[connectors]]
id = "wa"
channel = "whatsapp"
agent = "assistant"
signing_secret_env = "WHATSAPP_SECRET"
bot_token_env = "BOT_TOKEN"
verify_token_env = "BOT_TOKEN"

[[connectors]]
id = "tg"
channel = "telegram"
agent = "assistant"
bot_token_env = "BOT_TOKEN"
secret_token_env = "TELEGRAM_SECRET"

[[connectors]]
id = "sms"
channel = "twilio"
agent = "assistant"
signing_secret_env = "TWILIO_TOKEN"
account_sid = "ACfuzz"
public_url = "{TWILIO_URL}"

[[connectors]]
id = "discord"
channel = "discord"
agent = "assistant"
public_key = "{}"
command = "ask"
bot_token_env = "BOT_TOKEN"

[[connectors]]
id = "imessage"
channel = "imessage"
agent = "assistant"
secret_token_env = "IMESSAGE_TOKEN"
bot_token_env = "BOT_TOKEN"
api_base_url = "http://127.0.0.1:9"

[[connectors]]
id = "teams"
channel = "teams"
agent = "assistant"
app_id = "00000000-0000-0000-0000-000000000001"
bot_token_env = "BOT_TOKEN"
"#,
        hex(discord_key.verifying_key().as_bytes())
    );
    let env = |name: &str| {
        Some(
            match name {
                "CUSTOM_SECRET" => CUSTOM_SECRET,
                "SLACK_SECRET" => SLACK_SECRET,
                "WHATSAPP_SECRET" => WHATSAPP_SECRET,
                "TELEGRAM_SECRET" => TELEGRAM_SECRET,
                "TWILIO_TOKEN" => TWILIO_TOKEN,
                "IMESSAGE_TOKEN" => IMESSAGE_TOKEN,
                "BOT_TOKEN" => "fuzz-bot-token",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let settings = Settings::from_toml(&config, &env).expect("fuzz config is valid");
    let http = reqwest::Client::builder().build().expect("client");
    let tolerance = settings.receiver.signature_tolerance.0;
    let connector = |id: &str| &settings.connectors[id];
    vec![
        Fuzzed {
            name: "custom",
            channel: Arc::new(channels::custom::CustomChannel::new(
                connector("custom"),
                http.clone(),
                tolerance,
            )),
            sign: sign_custom,
            query: None,
        },
        Fuzzed {
            name: "slack",
            channel: Arc::new(channels::slack::SlackChannel::new(
                connector("slack"),
                http.clone(),
                tolerance,
            )),
            sign: sign_slack,
            query: None,
        },
        Fuzzed {
            name: "whatsapp",
            channel: Arc::new(channels::whatsapp::WhatsAppChannel::new(
                connector("wa"),
                http.clone(),
            )),
            sign: sign_whatsapp,
            query: None,
        },
        Fuzzed {
            name: "telegram",
            channel: Arc::new(channels::telegram::TelegramChannel::new(
                connector("tg"),
                http.clone(),
            )),
            sign: sign_telegram,
            query: None,
        },
        Fuzzed {
            name: "twilio",
            channel: Arc::new(channels::twilio::TwilioChannel::new(
                connector("sms"),
                http.clone(),
            )),
            sign: sign_twilio,
            query: None,
        },
        Fuzzed {
            name: "discord",
            channel: Arc::new(channels::discord::DiscordChannel::new(
                connector("discord"),
                http.clone(),
                tolerance,
            )),
            sign: sign_discord,
            query: None,
        },
        Fuzzed {
            name: "imessage",
            channel: Arc::new(channels::imessage::IMessageChannel::new(
                connector("imessage"),
                http.clone(),
            )),
            sign: unsigned,
            query: Some("token=fuzz-imessage-url-token-0123456789"),
        },
        // Teams authenticates in its async `authenticate` hook (JWT); `receive`
        // parses an activity that passed it.
        Fuzzed {
            name: "teams",
            channel: Arc::new(channels::teams::TeamsChannel::new(connector("teams"), http)),
            sign: unsigned,
            query: None,
        },
    ]
}
