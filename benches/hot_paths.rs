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

use std::{collections::HashMap, hint::black_box, time::Duration};

use axum::{body::Bytes, http::Method};
use criterion::{Criterion, criterion_group, criterion_main};
use microclaw::channels::{self, Inbound, InboundRequest, format};
use microclaw_jobs::{DeliveryJob, TurnJob};

/// The channels with their platforms' signing, shared with the fuzz targets.
#[path = "../fuzz/fuzz_targets/channels.rs"]
mod signed_channels;

/// Parses a body without verifying or normalizing it.
type Baseline = fn(&[u8]);

/// Each channel's sample payload, and the baseline parse of it.
fn sample(channel: &str) -> Option<(&'static str, Baseline)> {
    Some(match channel {
        "custom" => ("standard_webhooks.json", json_baseline),
        "slack" => ("slack.json", json_baseline),
        "whatsapp" => ("whatsapp.json", json_baseline),
        "telegram" => ("telegram.json", json_baseline),
        "twilio" => ("twilio_sms.form", form_baseline),
        "discord" => ("discord.json", json_baseline),
        "imessage" => ("imessage_bluebubbles.json", json_baseline),
        // Teams verifies a JWT in its async hook before `receive`; not measured here.
        _ => return None,
    })
}

fn json_baseline(body: &[u8]) {
    black_box(serde_json::from_slice::<serde_json::Value>(body).expect("sample is JSON"));
}

fn form_baseline(body: &[u8]) {
    black_box(channels::form_pairs(body));
}

fn inbound(c: &mut Criterion) {
    let method = Method::POST;
    let now = chrono::Utc::now();
    for fuzzed in signed_channels::all() {
        let Some((file, baseline)) = sample(fuzzed.name) else {
            continue;
        };
        let body = Bytes::from(
            std::fs::read(format!(
                "{}/tests/fixtures/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("fixture"),
        );
        let headers = signed_channels::headers(&(fuzzed.sign)(&body, now.timestamp()));
        let request = InboundRequest {
            method: &method,
            headers: &headers,
            query: fuzzed.query,
            body: &body,
            now,
        };
        match fuzzed.channel.receive(&request) {
            Ok(Inbound::Message(_)) | Ok(Inbound::Batch(_)) => {}
            other => panic!(
                "{}: the signed sample was not accepted: {other:?}",
                fuzzed.name
            ),
        }
        let mut group = c.benchmark_group(format!("inbound/{}", fuzzed.name));
        group.bench_function("baseline_parse", |b| b.iter(|| baseline(black_box(&body))));
        group.bench_function("verify_parse_normalize", |b| {
            b.iter(|| {
                let request = InboundRequest {
                    body: black_box(&body),
                    ..request
                };
                fuzzed.channel.receive(&request).expect("accepted")
            })
        });
        group.finish();
    }
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
