//! The figures of one run: acknowledgements, latencies (HDR histograms at
//! microsecond resolution), reply accounting, process footprints; printed as a
//! table and as one line of JSON.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    cluster::{DatabaseWork, Phase, ProcessFigures},
    fakes::{FakeModel, ReceivedReply, Token},
    traffic::{Outcome, Sent},
};

/// A latency histogram in microseconds, up to an hour.
pub struct Recorder(Histogram<u64>);

impl Recorder {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, latency: Duration) {
        self.0.saturating_record(latency.as_micros() as u64);
    }

    pub fn summary(&self) -> Latency {
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1e3;
        Latency {
            count: self.0.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.0.max() as f64 / 1e3,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What the senders saw.
#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    pub sent: u64,
    pub acknowledged: u64,
    /// The receiver's `status` of each acknowledgement (accepted, duplicate, ignored).
    pub acknowledged_as: BTreeMap<String, u64>,
    pub rejected: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub failed: u64,
    pub acks_per_sec: f64,
    pub ack_latency: Latency,
}

impl Ingest {
    pub fn of(sent: &[Sent]) -> Self {
        let mut latency = Recorder::new();
        let mut acknowledged_as = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        let mut failed = 0;
        for one in sent {
            match &one.outcome {
                Outcome::Acknowledged(status) => {
                    latency.record(one.answered - one.scheduled);
                    *acknowledged_as.entry(status.clone()).or_default() += 1;
                }
                Outcome::Rejected(code) => *rejected.entry(*code).or_default() += 1,
                Outcome::Failed => failed += 1,
            }
        }
        let acknowledged = latency.0.len();
        let first = sent.iter().map(|s| s.scheduled).min();
        let last = sent.iter().map(|s| s.answered).max();
        let window = first.zip(last).map_or(0.0, |(f, l)| (l - f).as_secs_f64());
        Self {
            sent: sent.len() as u64,
            acknowledged,
            acknowledged_as,
            rejected,
            failed,
            acks_per_sec: if window > 0.0 {
                acknowledged as f64 / window
            } else {
                0.0
            },
            ack_latency: latency.summary(),
        }
    }
}

/// Which acknowledged messages were answered, and how often.
#[derive(Default)]
pub struct ReplyLedger {
    /// Per token: the first reply's arrival and how many replies named it.
    seen: HashMap<Token, (Instant, u32)>,
    received: usize,
    with_tokens: u64,
    tokens_answered: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl ReplyLedger {
    /// Takes in replies, in arrival order.
    pub fn add(&mut self, replies: &[ReceivedReply]) {
        for reply in replies {
            self.received += 1;
            self.first = self.first.or(Some(reply.at));
            self.last = Some(reply.at);
            if !reply.tokens.is_empty() {
                self.with_tokens += 1;
                self.tokens_answered += reply.tokens.len() as u64;
            }
            for token in &reply.tokens {
                self.seen.entry(*token).or_insert((reply.at, 0)).1 += 1;
            }
        }
    }

    pub fn received(&self) -> usize {
        self.received
    }

    pub fn answered(&self, token: &Token) -> bool {
        self.seen.contains_key(token)
    }
}

/// End-to-end figures of the acknowledged messages.
#[derive(Debug, Clone, Serialize)]
pub struct Replies {
    /// Scheduled send → the reply naming the message arrived.
    pub end_to_end: Latency,
    /// End to end minus the model call that answered the message.
    pub overhead: Latency,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// Replies that answered at least one message (one per turn).
    pub turns_answered: u64,
    pub turns_per_sec: f64,
    pub messages_per_turn: f64,
    /// Replies naming no message (an apology, say).
    pub replies_without_token: u64,
    /// Acknowledged messages no reply named.
    pub lost: u64,
    /// Messages named by more than one reply.
    pub duplicated: u64,
    /// Model calls of turns, and others (compaction).
    pub model_turn_calls: u64,
    pub model_other_calls: u64,
    /// Requests to the fake platform it could not read.
    pub unreadable_deliveries: u64,
    /// From the last acknowledgement to the last expected reply.
    pub drain_secs: f64,
    /// Where the time went, by MicroClaw's own timestamps.
    pub phases: Vec<Phase>,
}

impl Replies {
    pub fn of(
        sent: &[Sent],
        ledger: &ReplyLedger,
        model: &FakeModel,
        unreadable_deliveries: u64,
        phases: Vec<Phase>,
    ) -> Self {
        let mut end_to_end = Recorder::new();
        let mut overhead = Recorder::new();
        let mut lost = 0;
        let mut last_expected = None::<Instant>;
        for one in sent {
            if !matches!(one.outcome, Outcome::Acknowledged(_)) {
                continue;
            }
            let Some(&(arrived, _)) = ledger.seen.get(&one.token) else {
                lost += 1;
                continue;
            };
            let latency = arrived.saturating_duration_since(one.scheduled);
            end_to_end.record(latency);
            if let Some(model_time) = model.call_time(one.token) {
                overhead.record(latency.saturating_sub(model_time));
            }
            last_expected = last_expected.max(Some(arrived));
        }
        let last_ack = sent.iter().map(|s| s.answered).max();
        let span = ledger
            .first
            .zip(ledger.last)
            .map_or(0.0, |(f, l)| (l - f).as_secs_f64());
        let per_sec = |n: u64| if span > 0.0 { n as f64 / span } else { 0.0 };
        let (model_turn_calls, model_other_calls) = model.calls();
        Self {
            end_to_end: end_to_end.summary(),
            overhead: overhead.summary(),
            deliveries: ledger.received as u64,
            deliveries_per_sec: per_sec(ledger.received as u64),
            turns_answered: ledger.with_tokens,
            turns_per_sec: per_sec(ledger.with_tokens),
            messages_per_turn: if ledger.with_tokens > 0 {
                ledger.tokens_answered as f64 / ledger.with_tokens as f64
            } else {
                0.0
            },
            replies_without_token: ledger.received as u64 - ledger.with_tokens,
            lost,
            duplicated: ledger.seen.values().filter(|(_, n)| *n > 1).count() as u64,
            model_turn_calls,
            model_other_calls,
            unreadable_deliveries,
            drain_secs: last_ack
                .zip(last_expected)
                .map_or(0.0, |(a, e)| e.saturating_duration_since(a).as_secs_f64()),
            phases,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub settings: serde_json::Value,
    pub ingest: Ingest,
    /// None in an ingest-only run.
    pub replies: Option<Replies>,
    /// Ingest-only runs: acknowledged messages missing from `inbound_events`.
    pub acknowledged_not_recorded: Option<u64>,
    pub processes: Vec<ProcessFigures>,
    /// CPU time the load generator itself (senders, fakes) used during the run.
    pub loadgen_cpu_secs: f64,
    /// How busy the machine's cores were from the first webhook to the last
    /// reply, in cores (Postgres and everything else included).
    pub machine_busy_cores: f64,
    pub cores: usize,
    /// Postgres work of the run, when `pg_stat_database` could be read.
    pub database: Option<DatabaseWork>,
    pub logs: String,
}

impl Report {
    /// Broken guarantees: any of them fails the run.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if let Some(replies) = &self.replies {
            if replies.lost > 0 {
                violations.push(format!("{}: {} replies lost", self.label, replies.lost));
            }
            if replies.duplicated > 0 {
                violations.push(format!(
                    "{}: {} messages answered twice",
                    self.label, replies.duplicated
                ));
            }
        }
        if let Some(missing) = self.acknowledged_not_recorded.filter(|n| *n > 0) {
            violations.push(format!(
                "{}: {missing} acknowledged messages not in inbound_events",
                self.label
            ));
        }
        violations
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    pub fn print(&self) {
        let ingest = &self.ingest;
        let latency = |l: &Latency| {
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
                l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
            )
        };
        println!("── {} ──", self.label);
        println!("  settings           {}", self.settings);
        println!(
            "  webhooks           sent {}  acknowledged {} {:?}  rejected {:?}  failed {}",
            ingest.sent,
            ingest.acknowledged,
            ingest.acknowledged_as,
            ingest.rejected,
            ingest.failed
        );
        println!("  acks/s             {:.1}", ingest.acks_per_sec);
        println!("  ack latency        {}", latency(&ingest.ack_latency));
        if let Some(r) = &self.replies {
            println!("  end to end         {}", latency(&r.end_to_end));
            println!("  runtime overhead   {}", latency(&r.overhead));
            println!(
                "  deliveries         {} ({:.1}/s)  turns answered {} ({:.1}/s, {:.2} messages/turn)",
                r.deliveries,
                r.deliveries_per_sec,
                r.turns_answered,
                r.turns_per_sec,
                r.messages_per_turn
            );
            println!(
                "  model calls        turns {}  other {}  replies without token {}  unreadable {}",
                r.model_turn_calls,
                r.model_other_calls,
                r.replies_without_token,
                r.unreadable_deliveries
            );
            for phase in &r.phases {
                println!(
                    "  phase              {:<40} p50 {:.1} ms  p99 {:.1} ms",
                    phase.phase, phase.p50_ms, phase.p99_ms
                );
            }
            println!(
                "  lost {}  duplicated {}  drained {:.1} s after the last ack",
                r.lost, r.duplicated, r.drain_secs
            );
        }
        if let Some(missing) = self.acknowledged_not_recorded {
            println!("  acknowledged but not in inbound_events: {missing}");
        }
        for p in &self.processes {
            println!(
                "  process {:<9} peak RSS {:.1} MiB  CPU {:.1} s  ready after {:.0} ms  log: {} warnings, {} errors",
                p.role, p.peak_rss_mib, p.cpu_secs, p.ready_ms, p.log_warnings, p.log_errors
            );
            if let Some(line) = &p.first_error {
                println!("    first error: {line}");
            }
        }
        println!(
            "  CPU                loadgen {:.1} s; machine {:.2} of {} cores busy while sending and draining",
            self.loadgen_cpu_secs, self.machine_busy_cores, self.cores
        );
        if let Some(work) = &self.database {
            let per_message = |n: u64| n as f64 / ingest.acknowledged.max(1) as f64;
            println!(
                "  database           {} transactions ({:.1} a message), {} rows written ({:.1} a message)",
                work.transactions,
                per_message(work.transactions),
                work.rows_written,
                per_message(work.rows_written)
            );
        }
        println!("  logs               {}", self.logs);
    }
}
