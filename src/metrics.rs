//! Prometheus metrics, served at `/metrics` by every role (with `/healthz`).
//!
//! One process-wide registry. Counters and histograms are updated where things
//! happen; the queue gauges are read from the store when `/metrics` is scraped,
//! so every role reports the same queue depth. Names follow Prometheus
//! conventions (`_total` counters, `_seconds` durations, base units); the list
//! with labels is in the README ("Reading metrics").

use std::sync::{LazyLock, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelOutcome {
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelResult {
    channel: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentOutcome {
    agent: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOutcome {
    provider: String,
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    provider: String,
    model: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CandidateLabel {
    candidate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    webhooks: Family<ChannelOutcome, Counter>,
    inbound_messages: Family<ChannelResult, Counter>,
    webhook_seconds: Family<ChannelLabel, Histogram, fn() -> Histogram>,
    queue_waiting: Family<QueueLabel, Gauge>,
    queue_delayed: Family<QueueLabel, Gauge>,
    queue_running: Family<QueueLabel, Gauge>,
    queue_failed: Family<QueueLabel, Gauge>,
    queue_oldest: Family<QueueLabel, Gauge>,
    turns: Family<AgentOutcome, Counter>,
    turn_seconds: Family<AgentLabel, Histogram, fn() -> Histogram>,
    model_calls: Family<ModelOutcome, Counter>,
    model_call_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    model_tokens: Family<TokenLabel, Counter>,
    model_cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
    deliveries: Family<ChannelOutcome, Counter>,
    breaker_open: Family<CandidateLabel, Gauge>,
    analytics_events: Family<OutcomeLabel, Counter>,
    analytics_write_failures: Counter,
    group_commits: Family<OutcomeLabel, Counter>,
    group_commit_members: Histogram,
    group_commit_seconds: Histogram,
    queue_consumer_restarts: Family<QueueLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("microclaw");
    let metrics = Metrics {
        webhooks: Family::default(),
        inbound_messages: Family::default(),
        webhook_seconds: Family::new_with_constructor(seconds_histogram),
        queue_waiting: Family::default(),
        queue_delayed: Family::default(),
        queue_running: Family::default(),
        queue_failed: Family::default(),
        queue_oldest: Family::default(),
        turns: Family::default(),
        turn_seconds: Family::new_with_constructor(seconds_histogram),
        model_calls: Family::default(),
        model_call_seconds: Family::new_with_constructor(seconds_histogram),
        model_tokens: Family::default(),
        model_cost: Family::default(),
        deliveries: Family::default(),
        breaker_open: Family::default(),
        analytics_events: Family::default(),
        analytics_write_failures: Counter::default(),
        group_commits: Family::default(),
        // 1 to 1024 members.
        group_commit_members: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        group_commit_seconds: seconds_histogram(),
        queue_consumer_restarts: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "webhooks",
        "Webhook requests answered",
        metrics.webhooks.clone(),
    );
    registry.register(
        "inbound_messages",
        "Inbound messages recorded, or recognised as platform retries",
        metrics.inbound_messages.clone(),
    );
    registry.register(
        "webhook_duration_seconds",
        "Time to verify, record and answer a webhook",
        metrics.webhook_seconds.clone(),
    );
    registry.register(
        "queue_waiting_jobs",
        "Due jobs waiting for a worker",
        metrics.queue_waiting.clone(),
    );
    registry.register(
        "queue_delayed_jobs",
        "Jobs scheduled for later",
        metrics.queue_delayed.clone(),
    );
    registry.register(
        "queue_running_jobs",
        "Jobs running",
        metrics.queue_running.clone(),
    );
    registry.register(
        "queue_failed_jobs",
        "Jobs that failed for good",
        metrics.queue_failed.clone(),
    );
    registry.register(
        "queue_oldest_waiting_seconds",
        "Age of the oldest due job",
        metrics.queue_oldest.clone(),
    );
    registry.register("turns", "Turns run", metrics.turns.clone());
    registry.register(
        "turn_duration_seconds",
        "From a turn's start to its commit",
        metrics.turn_seconds.clone(),
    );
    registry.register(
        "model_calls",
        "Model API calls",
        metrics.model_calls.clone(),
    );
    registry.register(
        "model_call_duration_seconds",
        "One model API call",
        metrics.model_call_seconds.clone(),
    );
    registry.register("model_tokens", "Model tokens", metrics.model_tokens.clone());
    registry.register(
        "model_cost_usd",
        "Model cost by the price table",
        metrics.model_cost.clone(),
    );
    registry.register(
        "deliveries",
        "Delivery attempts by outcome",
        metrics.deliveries.clone(),
    );
    registry.register(
        "breaker_open",
        "1 while this process sees the candidate's circuit breaker open",
        metrics.breaker_open.clone(),
    );
    registry.register(
        "analytics_events",
        "Analytics events written to ClickHouse or dropped (buffer full)",
        metrics.analytics_events.clone(),
    );
    registry.register(
        "analytics_write_failures",
        "Failed attempts to write a batch of analytics events",
        metrics.analytics_write_failures.clone(),
    );
    registry.register(
        "group_commits",
        "Group-committed batches of inbound messages by outcome",
        metrics.group_commits.clone(),
    );
    registry.register(
        "group_commit_members",
        "Inbound messages per group-committed batch",
        metrics.group_commit_members.clone(),
    );
    registry.register(
        "group_commit_duration_seconds",
        "Writing one group-committed batch, commit included",
        metrics.group_commit_seconds.clone(),
    );
    registry.register(
        "queue_consumer_restarts",
        "Queue consumers restarted after their backend failed (the database was away)",
        metrics.queue_consumer_restarts.clone(),
    );
    Metrics {
        registry,
        ..metrics
    }
});

/// A group-committed batch was written (`committed`) or failed (`failed`).
pub fn group_commit(members: usize, elapsed: std::time::Duration, committed: bool) {
    let m = &*METRICS;
    m.group_commits
        .get_or_create(&OutcomeLabel {
            outcome: if committed { "committed" } else { "failed" },
        })
        .inc();
    m.group_commit_members.observe(members as f64);
    m.group_commit_seconds.observe(elapsed.as_secs_f64());
}

/// A webhook answered: `ok`, `rejected` (4xx) or `unavailable` (5xx), and how long it took.
pub fn webhook(channel: &str, outcome: &'static str, elapsed: std::time::Duration) {
    let m = &*METRICS;
    m.webhooks
        .get_or_create(&ChannelOutcome {
            channel: channel.to_owned(),
            outcome,
        })
        .inc();
    m.webhook_seconds
        .get_or_create(&ChannelLabel {
            channel: channel.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// An inbound message `accepted` or recognised as a `duplicate`.
pub fn inbound_message(channel: &str, result: &'static str) {
    METRICS
        .inbound_messages
        .get_or_create(&ChannelResult {
            channel: channel.to_owned(),
            result,
        })
        .inc();
}

/// A turn ended: `completed`, `failed` or `fenced`.
pub fn turn(agent: &str, outcome: &'static str, elapsed: std::time::Duration) {
    let m = &*METRICS;
    m.turns
        .get_or_create(&AgentOutcome {
            agent: agent.to_owned(),
            outcome,
        })
        .inc();
    m.turn_seconds
        .get_or_create(&AgentLabel {
            agent: agent.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// One model API call, as recorded with its turn.
pub fn model_call(call: &crate::providers::router::ModelCall) {
    let m = &*METRICS;
    let model = ModelLabel {
        provider: call.provider.to_owned(),
        model: call.model.clone(),
    };
    m.model_calls
        .get_or_create(&ModelOutcome {
            provider: model.provider.clone(),
            model: model.model.clone(),
            outcome: call.outcome.clone(),
        })
        .inc();
    m.model_call_seconds
        .get_or_create(&model)
        .observe(call.latency_ms as f64 / 1000.0);
    for (direction, tokens) in [("input", call.input_tokens), ("output", call.output_tokens)] {
        if let Some(tokens) = tokens {
            m.model_tokens
                .get_or_create(&TokenLabel {
                    provider: model.provider.clone(),
                    model: model.model.clone(),
                    direction,
                })
                .inc_by(tokens.max(0) as u64);
        }
    }
    if call.cost_usd > 0.0 {
        m.model_cost.get_or_create(&model).inc_by(call.cost_usd);
    }
}

/// A delivery attempt's outcome: `delivered`, `retry`, `rate_limited` or `dead`.
pub fn delivery(channel: &str, outcome: &'static str) {
    METRICS
        .deliveries
        .get_or_create(&ChannelOutcome {
            channel: channel.to_owned(),
            outcome,
        })
        .inc();
}

/// A queue's consumer died on a backend error and is being restarted.
pub fn queue_consumer_restart(queue: &str) {
    METRICS
        .queue_consumer_restarts
        .get_or_create(&QueueLabel {
            queue: queue.to_owned(),
        })
        .inc();
}

/// Analytics events `written` to ClickHouse or `dropped`.
pub fn analytics_events(outcome: &'static str, count: u64) {
    METRICS
        .analytics_events
        .get_or_create(&OutcomeLabel { outcome })
        .inc_by(count);
}

/// A batch of analytics events could not be written (it is retried).
pub fn analytics_write_failed() {
    METRICS.analytics_write_failures.inc();
}

/// Whether this process sees `candidate`'s breaker open.
pub fn breaker(candidate: &str, open: bool) {
    METRICS
        .breaker_open
        .get_or_create(&CandidateLabel {
            candidate: candidate.to_owned(),
        })
        .set(i64::from(open));
}

/// The text exposition, with the queue gauges read from the store now (left as
/// they were when the store does not answer).
pub async fn render(store: &crate::store::Store) -> String {
    let m = &*METRICS;
    match store.queue_stats().await {
        Ok(queues) => {
            for q in queues {
                let label = QueueLabel { queue: q.queue };
                m.queue_waiting.get_or_create(&label).set(q.waiting);
                m.queue_delayed.get_or_create(&label).set(q.delayed);
                m.queue_running.get_or_create(&label).set(q.running);
                m.queue_failed.get_or_create(&label).set(q.failed);
                m.queue_oldest
                    .get_or_create(&label)
                    .set(q.oldest_waiting_secs.unwrap_or(0));
            }
        }
        Err(e) => tracing::debug!(error = %e, "queue gauges not refreshed"),
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "metrics could not be encoded");
    }
    out
}
