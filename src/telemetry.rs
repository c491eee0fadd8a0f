//! Logs and traces.
//!
//! **Logs**: text for terminals, JSON for pipelines. Every log line of a
//! message's path carries its `trace_id` (set on the receiver's "inbound accepted"
//! line and on the `turn` and `delivery` spans).
//!
//! **Traces**: with `telemetry.otlp_endpoint` set, spans are exported over
//! OTLP/HTTP (protobuf) by a batch processor on its own thread. One inbound
//! message is one trace, and its id is the message's `trace_id` (the event id,
//! 32 hex digits), which the jobs carry in their payloads. The receiver records
//! the trace's root span (`inbound message`) with a span id derived from the
//! trace id; the worker's `turn` and `delivery` spans take that root as their
//! parent, so a turn run by another process, or a delivery retried an hour later,
//! lands in the same trace. `model_call` spans nest under their turn. Only
//! MicroClaw's own spans are exported (not those of the queue or the database
//! driver).

use std::{
    cell::Cell,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
        TracerProvider as _,
    },
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Flushes and stops trace export when dropped. Drop it outside the async
/// runtime (or in `spawn_blocking`): the flush blocks.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the process's subscriber: logs, and trace export when configured.
/// A second call (tests start several roles in one process) keeps the first.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Telemetry {
    let provider = match tracer_provider(telemetry) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("trace export is off: {e:#}");
            None
        }
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("microclaw"))
            .with_filter(filter_fn(|meta| meta.target().starts_with("microclaw")))
    });
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&log.level));
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let result = match log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    if result.is_ok()
        && let Some(provider) = &provider
    {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Telemetry { provider }
}

fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    crate::install_tls_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!(
            "{}/v1/traces",
            config.otlp_endpoint.trim_end_matches('/')
        ))
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(config.export_interval.0)
                .build(),
        )
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(MessageIds)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

/// The root span's context of the trace `trace_id`, as a remote parent.
fn root_context(trace_id: &str) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    if trace_id == TraceId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        root_span_id(trace_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The root span's id: the trace id's low 64 bits (random bits of a UUIDv7).
fn root_span_id(trace_id: TraceId) -> SpanId {
    let bytes = trace_id.to_bytes();
    let low: [u8; 8] = bytes[8..].try_into().expect("8 bytes");
    match SpanId::from_bytes(low) {
        SpanId::INVALID => SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]),
        id => id,
    }
}

/// Makes `span` a child of the root span of trace `trace_id` (a no-op when trace
/// export is off or the id is not a trace id).
pub fn continue_trace(span: &tracing::Span, trace_id: &str) {
    if let Some(root) = root_context(trace_id) {
        let _ = span.set_parent(Context::new().with_remote_span_context(root));
    }
}

/// Records the root span of an accepted inbound message's trace: from the
/// webhook's arrival until its event was committed.
pub fn inbound_span(
    trace_id: &str,
    started: SystemTime,
    channel: &str,
    connector: &str,
    event_id: uuid::Uuid,
) {
    let Some(root) = root_context(trace_id) else {
        return;
    };
    let tracer = opentelemetry::global::tracer("microclaw");
    let builder = tracer
        .span_builder("inbound message")
        .with_kind(SpanKind::Server)
        .with_start_time(started)
        .with_attributes([
            KeyValue::new("microclaw.channel", channel.to_owned()),
            KeyValue::new("microclaw.connector", connector.to_owned()),
            KeyValue::new("microclaw.event_id", event_id.to_string()),
        ]);
    use opentelemetry::trace::Span as _;
    ROOT_IDS.set(Some((root.trace_id(), root.span_id())));
    let mut span = tracer.build_with_context(builder, &Context::new());
    ROOT_IDS.set(None);
    span.end();
}

thread_local! {
    /// The ids the next span built on this thread must have: set by
    /// `inbound_span` around its synchronous `build_with_context` only.
    static ROOT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the root span of a message's trace, whose ids come
/// from the message (see `inbound_span`).
#[derive(Debug)]
struct MessageIds;

impl IdGenerator for MessageIds {
    fn new_trace_id(&self) -> TraceId {
        match ROOT_IDS.get() {
            Some((trace_id, _)) => trace_id,
            None => RandomIdGenerator::default().new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match ROOT_IDS.get() {
            Some((_, span_id)) => span_id,
            None => RandomIdGenerator::default().new_span_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_trace_id_names_its_root_span() {
        let trace_id = "0193a1b2c3d47e8f9a0b1c2d3e4f5a6b";
        let root = root_context(trace_id).unwrap();
        assert_eq!(root.trace_id().to_string(), trace_id);
        assert_eq!(root.span_id().to_string(), "9a0b1c2d3e4f5a6b");
        assert!(root.is_remote() && root.is_sampled());
        assert!(root_context("not a trace id").is_none());
        assert!(root_context("00000000000000000000000000000000").is_none());
        let low_zero = root_context("0193a1b2c3d47e8f0000000000000000").unwrap();
        assert_ne!(low_zero.span_id(), SpanId::INVALID);
    }
}
