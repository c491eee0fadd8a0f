//! The receiver's hot path for the custom channel: verify the Standard Webhooks
//! signature, parse, normalize. Measured next to a baseline from the same run
//! (parsing the same body into a `serde_json::Value`), so the figure to read is the
//! ratio, not the absolute time. `cargo bench --bench receiver_hot_path`.

use std::hint::black_box;

use axum::{
    body::Bytes,
    http::{HeaderMap, Method},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use microclaw::{
    channels::{self, Channel, Inbound, InboundRequest, standard_webhooks::SigningKey},
    config::{EXAMPLE_CONFIG, Settings},
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BODY: &[u8] = include_bytes!("../tests/fixtures/standard_webhooks.json");

fn hot_path(c: &mut Criterion) {
    microclaw::install_tls_provider();
    let env = |name: &str| (name == "MICROCLAW_CUSTOM_SECRET").then(|| SECRET.to_owned());
    let settings = Settings::from_toml(EXAMPLE_CONFIG, &env).expect("example config is valid");
    let connector = &settings.connectors["custom"];
    let channel = channels::custom::CustomChannel::new(
        connector,
        reqwest::Client::builder().build().expect("client"),
        settings.receiver.signature_tolerance.0,
    );
    let now = chrono::Utc::now();
    let id = "msg_2nVQ4C1bQK8u6Xj0aWm3";
    let signature = SigningKey::parse(SECRET)
        .expect("secret")
        .sign(id, now.timestamp(), BODY);
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().expect("header"));
    headers.insert(
        "webhook-timestamp",
        now.timestamp().to_string().parse().expect("header"),
    );
    headers.insert("webhook-signature", signature.parse().expect("header"));
    let body = Bytes::from_static(BODY);
    let method = Method::POST;

    let mut group = c.benchmark_group("receiver_hot_path");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    group.bench_function("baseline_json_value_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(BODY)).expect("json"))
    });
    group.bench_function("custom_verify_parse_normalize", |b| {
        b.iter(|| {
            let request = InboundRequest {
                method: &method,
                headers: &headers,
                query: None,
                body: black_box(&body),
                now,
            };
            match channel.receive(&request) {
                Ok(Inbound::Message(message)) => message,
                other => panic!("expected a message, got {other:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
