//! Every channel's inbound parsing and normalization on arbitrary bodies, signed
//! correctly so the parser (not the signature check) sees them. Any panic is a bug:
//! a webhook must get a 2xx or a 4xx with a reason, never crash a receiver.
//! The first byte picks the channel; the rest is the body.

#![no_main]

use std::sync::LazyLock;

use axum::{body::Bytes, http::Method};
use libfuzzer_sys::fuzz_target;
use microclaw::channels::{Inbound, InboundRequest};

#[path = "channels.rs"]
mod channels;

static CHANNELS: LazyLock<Vec<channels::Fuzzed>> = LazyLock::new(channels::all);

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let fuzzed = &CHANNELS[usize::from(pick) % CHANNELS.len()];
    let now = chrono::Utc::now();
    let headers = channels::headers(&(fuzzed.sign)(body, now.timestamp()));
    let body = Bytes::copy_from_slice(body);
    let method = Method::POST;
    let request = InboundRequest {
        method: &method,
        headers: &headers,
        query: fuzzed.query,
        body: &body,
        now,
    };
    match fuzzed.channel.receive(&request) {
        Ok(Inbound::Message(message)) => {
            assert!(!message.platform_message_id.is_empty(), "{}", fuzzed.name);
        }
        Ok(Inbound::Batch(messages)) => {
            for message in messages {
                assert!(!message.platform_message_id.is_empty(), "{}", fuzzed.name);
            }
        }
        Ok(_) | Err(_) => {}
    }
});
