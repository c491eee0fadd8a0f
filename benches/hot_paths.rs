//! The per-message CPU paths, each beside a baseline from the same run so the
//! figure to read is the ratio: `cargo bench --bench hot_paths`.
//!
//! - `inbound/<channel>`: what a receiver does with a webhook before the database
//!   (verify the platform's signature, parse, normalize), against parsing the same
//!   body into a `serde_json::Value` (a `form_pairs` parse for Twilio's form body).
//!   Bodies are the sample payloads in `tests/fixtures`, signed as each platform
//!   signs them.
//! - `format/<dialect>`: converting a 3,000-character Markdown reply into each
//!   platform's dialect, and splitting it into 1,000-character parts, against
//!   copying the string.
//! - `jobs/<job>`: encoding and decoding a queue payload, against parsing the same
//!   bytes into a `serde_json::Value`.

use std::{collections::HashMap, hint::black_box, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue, Method},
};
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey as Ed25519Key};
use microclaw::{
    channels::{self, Channel, Inbound, InboundRequest, format},
    config::Settings,
    store::Store,
};
use microclaw_jobs::{DeliveryJob, TurnJob};

const CUSTOM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SLACK_SECRET: &str = "bench-slack-signing-secret";
const WHATSAPP_SECRET: &str = "0123456789abcdef0123456789abcdef";
const TELEGRAM_SECRET: &str = "bench-telegram-secret";
const TWILIO_TOKEN: &str = "bench-twilio-auth-token";
const TWILIO_URL: &str = "https://hooks.microclaw.example/hooks/sms";
const DISCORD_SEED: [u8; 32] = [7; 32];

/// One webhook as its platform sends it, and the channel that receives it.
struct Webhook {
    name: &'static str,
    channel: Arc<dyn Channel>,
    headers: HeaderMap,
    body: Bytes,
    baseline: fn(&[u8]),
}

fn json_baseline(body: &[u8]) {
    black_box(serde_json::from_slice::<serde_json::Value>(body).expect("sample is JSON"));
}

fn form_baseline(body: &[u8]) {
    black_box(channels::form_pairs(body));
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_str(value).expect("header value"),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn webhooks(store: &Store) -> Vec<Webhook> {
    let discord_key = Ed25519Key::from_bytes(&DISCORD_SEED);
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
account_sid = "ACbench"
public_url = "{TWILIO_URL}"

[[connectors]]
id = "discord"
channel = "discord"
agent = "assistant"
public_key = "{}"
command = "ask"
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
                "BOT_TOKEN" => "bench-bot-token",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let settings = Settings::from_toml(&config, &env).expect("bench config is valid");
    let http = reqwest::Client::builder().build().expect("client");
    let channel = |id: &str| {
        channels::build(
            &settings.connectors[id],
            &http,
            settings.receiver.signature_tolerance.0,
            store,
        )
    };
    let now = chrono::Utc::now().timestamp();
    let fixture = |name: &str| {
        Bytes::from(
            std::fs::read(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("fixture"),
        )
    };

    let custom = fixture("standard_webhooks.json");
    let custom_signature = channels::standard_webhooks::SigningKey::parse(CUSTOM_SECRET)
        .expect("secret")
        .sign("msg_bench", now, &custom);
    let slack = fixture("slack.json");
    let whatsapp = fixture("whatsapp.json");
    let telegram = fixture("telegram.json");
    let twilio = fixture("twilio_sms.form");
    let discord = fixture("discord.json");
    let discord_signature = {
        let mut signed = now.to_string().into_bytes();
        signed.extend_from_slice(&discord);
        hex(&discord_key.sign(&signed).to_bytes())
    };
    vec![
        Webhook {
            name: "custom",
            channel: channel("custom"),
            headers: headers(&[
                ("webhook-id", "msg_bench".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", custom_signature),
            ]),
            body: custom,
            baseline: json_baseline,
        },
        Webhook {
            name: "slack",
            channel: channel("slack"),
            headers: headers(&[
                ("x-slack-request-timestamp", now.to_string()),
                (
                    "x-slack-signature",
                    channels::slack::signature(SLACK_SECRET, &now.to_string(), &slack),
                ),
            ]),
            body: slack,
            baseline: json_baseline,
        },
        Webhook {
            name: "whatsapp",
            channel: channel("wa"),
            headers: headers(&[(
                "x-hub-signature-256",
                channels::whatsapp::signature(WHATSAPP_SECRET, &whatsapp),
            )]),
            body: whatsapp,
            baseline: json_baseline,
        },
        Webhook {
            name: "telegram",
            channel: channel("tg"),
            headers: headers(&[("x-telegram-bot-api-secret-token", TELEGRAM_SECRET.into())]),
            body: telegram,
            baseline: json_baseline,
        },
        Webhook {
            name: "twilio",
            channel: channel("sms"),
            headers: headers(&[
                (
                    "x-twilio-signature",
                    channels::twilio::signature(
                        TWILIO_TOKEN,
                        TWILIO_URL,
                        &channels::form_pairs(&twilio),
                    ),
                ),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ]),
            body: twilio,
            baseline: form_baseline,
        },
        Webhook {
            name: "discord",
            channel: channel("discord"),
            headers: headers(&[
                ("x-signature-ed25519", discord_signature),
                ("x-signature-timestamp", now.to_string()),
            ]),
            body: discord,
            baseline: json_baseline,
        },
    ]
}

fn inbound(c: &mut Criterion) {
    microclaw::install_tls_provider();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data_dir = std::env::temp_dir().join(format!("microclaw-bench-{}", std::process::id()));
    let store = runtime
        .block_on(Store::open(&microclaw::config::DatabaseConfig {
            url: format!("sqlite://{}", data_dir.join("store.db").display()),
            ..Default::default()
        }))
        .expect("scratch store");
    let method = Method::POST;
    let now = chrono::Utc::now();
    for webhook in webhooks(&store) {
        let request = InboundRequest {
            method: &method,
            headers: &webhook.headers,
            query: None,
            body: &webhook.body,
            now,
        };
        match webhook.channel.receive(&request) {
            Ok(Inbound::Message(_)) | Ok(Inbound::Batch(_)) => {}
            other => panic!(
                "{}: the signed sample was not accepted: {other:?}",
                webhook.name
            ),
        }
        let mut group = c.benchmark_group(format!("inbound/{}", webhook.name));
        group.bench_function("baseline_parse", |b| {
            b.iter(|| (webhook.baseline)(black_box(&webhook.body)))
        });
        group.bench_function("verify_parse_normalize", |b| {
            b.iter(|| {
                let request = InboundRequest {
                    body: black_box(&webhook.body),
                    ..request
                };
                webhook.channel.receive(&request).expect("accepted")
            })
        });
        group.finish();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(data_dir);
}

/// A long model reply with the Markdown a model writes: headings, emphasis,
/// code, links and lists.
fn markdown_reply() -> String {
    let paragraph = "## Deploy summary\n\nThe **canary** failed at `step 3` because the \
        [health check](https://status.example.com/checks/42) timed out; _two_ pods \
        restarted.\n\n- rollback started at 10:42\n- error rate back to 0.1%\n\n\
        ```\nkubectl rollout undo deploy/api\n```\n\n";
    paragraph.repeat(3000 / paragraph.len() + 1)
}

fn formatting(c: &mut Criterion) {
    let reply = markdown_reply();
    let mut group = c.benchmark_group("format");
    group.bench_function("baseline_copy", |b| b.iter(|| black_box(&reply).to_owned()));
    type Render = fn(&str) -> String;
    let dialects: [(&str, Render); 4] = [
        ("telegram_html", format::telegram_html),
        ("slack_mrkdwn", format::slack_mrkdwn),
        ("whatsapp_text", format::whatsapp_text),
        ("plain_text", format::plain_text),
    ];
    for (name, render) in dialects {
        group.bench_function(name, |b| b.iter(|| render(black_box(&reply))));
    }
    group.bench_function("split_telegram_1000", |b| {
        b.iter(|| {
            format::render_parts(
                black_box(&reply),
                1000,
                format::telegram_html,
                format::char_len,
            )
        })
    });
    group.finish();
}

fn jobs(c: &mut Criterion) {
    let turn = TurnJob::new(uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), "a".repeat(32));
    let delivery = DeliveryJob::new(uuid::Uuid::now_v7(), 1, "b".repeat(32));
    let encoded: HashMap<&str, Vec<u8>> = HashMap::from([
        ("turn", microclaw_jobs::Job::encode(&turn)),
        ("delivery", microclaw_jobs::Job::encode(&delivery)),
    ]);
    let mut group = c.benchmark_group("jobs");
    for (name, bytes) in &encoded {
        group.bench_function(format!("{name}_baseline_parse"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(bytes)).expect("json"))
        });
    }
    group.bench_function("turn_encode", |b| {
        b.iter(|| microclaw_jobs::Job::encode(black_box(&turn)))
    });
    group.bench_function("turn_decode", |b| {
        b.iter(|| serde_json::from_slice::<TurnJob>(black_box(&encoded["turn"])).expect("job"))
    });
    group.bench_function("delivery_encode", |b| {
        b.iter(|| microclaw_jobs::Job::encode(black_box(&delivery)))
    });
    group.bench_function("delivery_decode", |b| {
        b.iter(|| {
            serde_json::from_slice::<DeliveryJob>(black_box(&encoded["delivery"])).expect("job")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = inbound, formatting, jobs
}
criterion_main!(benches);
