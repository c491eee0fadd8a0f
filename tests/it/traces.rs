//! OTLP trace export: a real `microclaw all` process sends its spans to a fake
//! collector on loopback that decodes the OTLP/HTTP protobuf requests. One
//! inbound message is one trace whose id is the message's `trace_id`: the
//! receiver's root span, the turn under it, the model call under the turn, and
//! the delivery under the root.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::Span,
};
use prost::Message;

use crate::helpers::{TestApp, TestConfig, TestMessage};

/// Spans received, decoded, with their service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut received = received.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.push((service.clone(), span));
            }
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_message_is_one_trace_from_webhook_to_delivery() {
    let received: Received = Arc::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", collector.local_addr().unwrap());
    let app_router = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(collector, app_router).await });

    let app = TestApp::spawn(TestConfig::default()).await;
    let (mut child, base) = app
        .start_all(&[
            ("MICROCLAW_TELEMETRY__OTLP_ENDPOINT", &collector_url),
            ("MICROCLAW_TELEMETRY__SERVICE_NAME", "microclaw-test"),
            ("MICROCLAW_TELEMETRY__EXPORT_INTERVAL", "100ms"),
            // Spans pass the same filter as logs; stdout is piped and unread.
            ("RUST_LOG", "microclaw=info,warn"),
            ("MICROCLAW_LOG__LEVEL", "microclaw=info,warn"),
        ])
        .await;
    let message = TestMessage::direct("otel1", "ada", "ada:trace me");
    let accepted: serde_json::Value = app
        .post_signed_at(
            &base,
            crate::helpers::CONNECTOR,
            &message.body(),
            "wh-otel1",
            chrono::Utc::now().timestamp(),
        )
        .await
        .json()
        .await
        .unwrap();
    let trace_id = accepted["trace_id"].as_str().unwrap().to_owned();
    app.wait_for_replies(1, Duration::from_secs(20)).await;

    // The batch processor exports every 100 ms; wait for the delivery's span.
    let find = |name: &str| -> Option<Span> {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| s.name == name && hex(&s.trace_id) == trace_id)
            .map(|(_, s)| s.clone())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while find("delivery").is_none() || find("turn").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "spans of trace {trace_id} did not arrive: {:?}",
            received
                .lock()
                .unwrap()
                .iter()
                .map(|(_, s)| (s.name.clone(), hex(&s.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root = find("inbound message").expect("the receiver's root span");
    let turn = find("turn").unwrap();
    let model_call = find("model_call").expect("the model call's span");
    let delivery = find("delivery").unwrap();
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    assert_eq!(turn.parent_span_id, root.span_id, "turn under the root");
    assert_eq!(
        delivery.parent_span_id, root.span_id,
        "delivery under the root"
    );
    assert_eq!(
        model_call.parent_span_id, turn.span_id,
        "model call under the turn"
    );
    assert!(root.start_time_unix_nano <= root.end_time_unix_nano);
    assert!(root.end_time_unix_nano <= turn.end_time_unix_nano);
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default()
    };
    assert!(attribute(&root, "microclaw.channel").contains("custom"));
    assert!(attribute(&model_call, "outcome").contains("ok"));
    // Only MicroClaw's spans: nothing from the queue or the database driver.
    let names: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(service, s)| {
            assert!(service.contains("microclaw-test"), "{service}");
            s.name.clone()
        })
        .collect();
    assert!(
        names
            .iter()
            .all(|n| ["inbound message", "turn", "model_call", "delivery"].contains(&n.as_str())),
        "{names:?}"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    app.stop().await;
}
