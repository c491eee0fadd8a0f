//! The analytics sink: turn and delivery events streamed to ClickHouse.
//!
//! Guarantees, in order of importance:
//! - **Never in a turn's way.** Recording an event is a non-blocking `try_send`
//!   into a bounded channel; a writer task drains it. A slow or dead ClickHouse
//!   cannot slow a turn or a delivery.
//! - **Bounded memory.** While ClickHouse is down the writer keeps retrying the
//!   batch it holds (with backoff) and stops reading the channel, so at most
//!   `batch_size + buffer` events wait. Newer events are dropped and counted in
//!   `microclaw_analytics_events_dropped_total`.
//! - **Batched.** Events go out as one `INSERT … FORMAT JSONEachRow` per batch of
//!   up to `batch_size`, at most `flush_interval` after the first one arrived.
//!   A batch is written whole or not at all (ClickHouse rejects the insert). A
//!   batch ClickHouse can never take (a table with other columns) is dropped and
//!   counted rather than retried forever; a dropped table is created again.
//!   Delivery is at least once: a batch whose answer was lost is sent again.
//! - **Private by default.** Events carry ids, channel, model, tokens, cost,
//!   latencies and outcomes; message text only with `include_text`.
//!
//! The table is created on first use (`CREATE TABLE IF NOT EXISTS`, MergeTree
//! partitioned by month), with columns named like [`Event`]'s fields.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AnalyticsSettings;

/// One row of the events table: a committed turn or a delivery attempt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    #[serde(serialize_with = "clickhouse_time")]
    pub event_time: DateTime<Utc>,
    /// `turn` or `delivery`.
    pub kind: &'static str,
    /// The turn's or the delivery's id.
    pub id: String,
    pub trace_id: String,
    pub session_id: String,
    pub agent: String,
    pub channel: String,
    pub connector: String,
    /// The model that answered (turns).
    pub model: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Turn: start to commit. Delivery: the platform call.
    pub latency_ms: u64,
    /// Time spent in model calls, retries included (turns).
    pub model_latency_ms: u64,
    pub model_calls: u32,
    /// Inbound messages answered (turns) or the attempt number (deliveries).
    pub attempt: u32,
    /// Turns: `completed` or `failed`. Deliveries: `delivered`, `retry`,
    /// `rate_limited` or `dead`.
    pub outcome: &'static str,
    pub error_class: String,
    /// The reply (turns) or the part sent (deliveries), with `include_text` only.
    pub text: String,
}

/// ClickHouse's `DateTime` text form; the column is declared in UTC.
fn clickhouse_time<S: serde::Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.format("%Y-%m-%d %H:%M:%S"))
}

const COLUMNS: &str = "event_time DateTime('UTC'), kind String, id String, trace_id String, \
     session_id String, agent String, channel String, connector String, model String, \
     provider String, input_tokens UInt64, output_tokens UInt64, cost_usd Float64, \
     latency_ms UInt64, model_latency_ms UInt64, model_calls UInt32, attempt UInt32, \
     outcome String, error_class String, text String";

/// The handle the worker records events through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Analytics {
    events: mpsc::Sender<Event>,
    include_text: bool,
}

impl Analytics {
    /// Starts the writer task when a ClickHouse URL is configured.
    pub fn start(settings: &AnalyticsSettings, http: reqwest::Client) -> Option<Self> {
        let config = &settings.config;
        if config.clickhouse_url.is_empty() {
            return None;
        }
        let (events, inbox) = mpsc::channel(config.buffer);
        let writer = Writer {
            http,
            url: config.clickhouse_url.trim_end_matches('/').to_owned(),
            table: format!("{}.{}", config.database, config.table),
            user: settings.user.clone(),
            password: settings.password.clone(),
            batch_size: config.batch_size,
            flush_interval: config.flush_interval.0,
            table_ready: false,
        };
        tokio::spawn(writer.run(inbox));
        Some(Self {
            events,
            include_text: config.include_text,
        })
    }

    /// Queues `event` for writing, or drops and counts it when the buffer is full.
    pub fn record(&self, mut event: Event) {
        if !self.include_text {
            event.text.clear();
        }
        if self.events.try_send(event).is_err() {
            crate::metrics::analytics_events("dropped", 1);
        }
    }
}

struct Writer {
    http: reqwest::Client,
    url: String,
    /// `database.table`, both checked to be plain identifiers by the config.
    table: String,
    user: Option<String>,
    password: Option<SecretString>,
    batch_size: usize,
    flush_interval: Duration,
    table_ready: bool,
}

impl Writer {
    async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            match inbox.recv().await {
                Some(event) => batch.push(event),
                None => return,
            }
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    Ok(None) | Err(_) => break,
                }
            }
            let mut waits = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build();
            let mut failures = 0u32;
            while let Err(e) = self.write(&batch).await {
                failures += 1;
                crate::metrics::analytics_write_failed();
                if e.downcast_ref::<Refused>().is_some() {
                    // ClickHouse refuses these rows (e.g. a table with other
                    // columns): retrying cannot help, and would stop every later event.
                    tracing::error!(error = %e, events = batch.len(), "analytics: ClickHouse refused the batch; dropping it");
                    crate::metrics::analytics_events("dropped", batch.len() as u64);
                    batch.clear();
                    break;
                }
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, events = batch.len(), failures, "analytics: could not write to ClickHouse; holding the batch");
                }
                if inbox.is_closed() {
                    // Shutting down: nobody will record again, so stop retrying.
                    crate::metrics::analytics_events("dropped", batch.len() as u64);
                    return;
                }
                tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(10))).await;
            }
            if batch.is_empty() {
                continue;
            }
            if failures > 0 {
                tracing::info!(
                    events = batch.len(),
                    failures,
                    "analytics: ClickHouse is back; batch written"
                );
            }
            crate::metrics::analytics_events("written", batch.len() as u64);
            batch.clear();
        }
    }

    async fn write(&mut self, batch: &[Event]) -> anyhow::Result<()> {
        if !self.table_ready {
            self.query(
                format!(
                    "CREATE TABLE IF NOT EXISTS {} ({COLUMNS}) ENGINE = MergeTree \
                     PARTITION BY toYYYYMM(event_time) ORDER BY (kind, event_time)",
                    self.table
                ),
                None,
            )
            .await?;
            self.table_ready = true;
        }
        let mut body = Vec::with_capacity(batch.len() * 384);
        for event in batch {
            serde_json::to_writer(&mut body, event)?;
            body.push(b'\n');
        }
        self.query(
            format!("INSERT INTO {} FORMAT JSONEachRow", self.table),
            Some(body),
        )
        .await
    }

    /// Runs `query` over the HTTP interface: in the body, or with `data`, in the
    /// URL and `data` as the body.
    async fn query(&mut self, query: String, data: Option<Vec<u8>>) -> anyhow::Result<()> {
        let mut request = self.http.post(format!("{}/", self.url));
        request = match data {
            Some(data) => request.query(&[("query", query)]).body(data),
            None => request.body(query),
        };
        if let Some(user) = &self.user {
            request = request.basic_auth(
                user,
                self.password.as_ref().map(|p| p.expose_secret().to_owned()),
            );
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let said = format!(
                "ClickHouse answered HTTP {}: {}",
                status.as_u16(),
                text.chars().take(300).collect::<String>().trim()
            );
            // ClickHouse's own error code, e.g. "Code: 117, e.displayText() = …".
            let code: Option<u32> = text
                .split("Code: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok());
            match code {
                // The table is gone: create it again on the next attempt.
                Some(60) => self.table_ready = false,
                // Rows it can never take: no such column, unparsable or
                // incorrect data, a syntax error. So is a 4xx other than 429.
                Some(16 | 26 | 27 | 62 | 117) => return Err(Refused(said).into()),
                _ if status.is_client_error() && status.as_u16() != 429 => {
                    return Err(Refused(said).into());
                }
                _ => {}
            }
            anyhow::bail!(said);
        }
        Ok(())
    }
}

/// ClickHouse refused a request for good (a 4xx other than 429).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_clickhouse_rows() {
        let event = Event {
            event_time: "2026-11-25T12:00:01.750Z".parse().unwrap(),
            kind: "turn",
            input_tokens: 12,
            cost_usd: 0.25,
            outcome: "completed",
            ..Event::default()
        };
        let row: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(row["event_time"], "2026-11-25 12:00:01");
        assert_eq!(row["kind"], "turn");
        assert_eq!(row["input_tokens"], 12);
        // Every column of the table is a field of the row and nothing else:
        // ClickHouse rejects a JSONEachRow insert with an unknown field.
        let fields: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut columns: Vec<&str> = COLUMNS
            .split(", ")
            .map(|c| c.split(' ').next().unwrap())
            .collect();
        columns.sort_unstable();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(fields, columns);
    }
}
