//! Signature verification on arbitrary header values: a valid sample body with
//! forged headers must be refused (or, for channels without a signature, parsed)
//! without a panic. The first byte picks the channel; the rest is split into the
//! header values the channel reads.

#![no_main]

use std::sync::LazyLock;

use axum::{body::Bytes, http::Method};
use libfuzzer_sys::fuzz_target;
use microclaw::channels::InboundRequest;

#[path = "channels.rs"]
mod channels;

static CHANNELS: LazyLock<Vec<channels::Fuzzed>> = LazyLock::new(channels::all);

const SIGNED: [&str; 5] = ["custom", "slack", "whatsapp", "twilio", "discord"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let fuzzed = &CHANNELS[usize::from(pick) % CHANNELS.len()];
    let body = br#"{"type":"message.created","data":{"message_id":"m1","conversation_id":"c1","sender":{"id":"u1"},"text":"hi"}}"#;
    let now = chrono::Utc::now();
    // The channel's own header names, with the fuzzer's values in them.
    let names: Vec<&'static str> = (fuzzed.sign)(body, now.timestamp())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let text = String::from_utf8_lossy(rest);
    let mut values = text.split('\n');
    let forged: Vec<(&'static str, String)> = names
        .iter()
        .map(|name| (*name, values.next().unwrap_or_default().to_owned()))
        .collect();
    let headers = channels::headers(&forged);
    let body = Bytes::from_static(body);
    let method = Method::POST;
    let request = InboundRequest {
        method: &method,
        headers: &headers,
        query: values.next(),
        body: &body,
        now,
    };
    let accepted = fuzzed.channel.receive(&request).is_ok();
    if SIGNED.contains(&fuzzed.name) {
        assert!(
            !accepted,
            "{}: forged headers were accepted: {forged:?}",
            fuzzed.name
        );
    }
});
