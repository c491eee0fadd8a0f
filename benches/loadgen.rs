//! Load generator: drives real `microclaw` processes over loopback and reports
//! what a platform and its users would see.
//!
//! A run creates a scratch Postgres database, starts a fake model (OpenAI Chat
//! Completions; it waits `--model-latency`, then echoes the probe token of every
//! message it answers) and a fake platform (custom-channel callbacks and Slack's
//! `chat.postMessage`) in this process, writes a configuration, starts MicroClaw
//! in the chosen topology, and sends signed webhooks (custom and Slack, in turn
//! by session) to its receiver:
//!
//! - open loop (default): `--rate` webhooks a second for `--duration` (or
//!   `--messages`), each sent at its scheduled instant whatever came before, and
//!   timed from that instant (no coordinated omission);
//! - closed loop (`--closed-loop C`): C clients, each sending its next webhook
//!   when the last was answered; it finds the acknowledgements a second the
//!   receiver sustains at that concurrency.
//!
//! Then it waits for a reply to every acknowledged message and reports acks/s,
//! acknowledgement latency, end-to-end latency (scheduled send → the reply
//! naming the message arrived), runtime overhead (end to end minus the model
//! call that answered it), deliveries/s, and each process's peak RSS. A message
//! never answered (lost) or answered twice (duplicated) fails the run. With
//! `--ingest-only` only a receiver runs, and the run checks instead that every
//! acknowledged message is in `inbound_events`.
//!
//! ```text
//! cargo bench --bench loadgen -- --rate 200 --duration 30s --sessions 1000
//! cargo bench --bench loadgen -- --ingest-only --closed-loop 64 --group-commit-batch 1
//! cargo bench --bench loadgen -- --topology split --workers 2 --turn-concurrency 10
//! cargo bench --bench loadgen -- suite      # every scenario of BENCHMARKS.md
//! cargo bench --bench loadgen -- --help
//! ```
//!
//! Postgres must run at `postgres://postgres@127.0.0.1:5432` (or
//! `MICROCLAW_BENCH_POSTGRES`); `--redis` adds Redis. The processes log to files
//! in a directory under the system temp dir, named in the report.

#[path = "loadgen/cluster.rs"]
mod cluster;
#[path = "loadgen/fakes.rs"]
mod fakes;
#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/suite.rs"]
mod suite;
#[path = "loadgen/traffic.rs"]
mod traffic;

use std::{
    collections::HashSet,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use microclaw::channels::standard_webhooks::SigningKey;
use microclaw::config::parse_span;
use serde_json::json;

use crate::{
    cluster::{Cluster, Database, Topology, Tuning},
    fakes::{FakeModel, FakePlatform, Token},
    report::{Ingest, Replies, ReplyLedger, Report},
    traffic::{Channel, Outcome, Sender},
};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Drive a running MicroClaw with signed webhooks and report what it did"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    run: RunArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run every scenario of BENCHMARKS.md and compare each with its target.
    Suite {
        /// Also write the suite's JSON summary here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// One load run.
#[derive(Debug, Clone, Parser)]
pub struct RunArgs {
    /// Webhooks a second (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_span)]
    pub duration: Duration,
    /// Send this many webhooks (at --rate) instead of sending for --duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Closed loop: this many clients, each sending when its last webhook was answered.
    #[arg(long, value_name = "CLIENTS")]
    pub closed_loop: Option<usize>,
    /// Conversations the messages are spread over, in turn.
    #[arg(long, default_value_t = 100)]
    pub sessions: u32,
    /// Channels, alternating by session.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "custom,slack"
    )]
    pub channels: Vec<Channel>,
    /// How long the fake model takes to answer.
    #[arg(long, default_value = "50ms", value_parser = parse_span)]
    pub model_latency: Duration,
    /// Length of the model's replies.
    #[arg(long, default_value_t = 200)]
    pub reply_chars: usize,
    #[arg(long, value_enum, default_value_t = Topology::All)]
    pub topology: Topology,
    /// Worker processes of the split topology.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Only a receiver (after `microclaw migrate`): measure ingest, and check every
    /// acknowledged message is in `inbound_events` instead of waiting for replies.
    #[arg(long)]
    pub ingest_only: bool,
    /// receiver.group_commit.max_batch (1: one transaction per webhook).
    #[arg(long, default_value_t = 128)]
    pub group_commit_batch: usize,
    /// receiver.group_commit.max_wait (whole milliseconds).
    #[arg(long, default_value = "2ms", value_parser = parse_span)]
    pub group_commit_wait: Duration,
    /// receiver.group_commit.max_in_flight (batches written at once).
    #[arg(long, default_value_t = 2)]
    pub group_commit_writers: usize,
    /// worker.turn_concurrency.
    #[arg(long, default_value_t = 64)]
    pub turn_concurrency: usize,
    /// worker.delivery_concurrency.
    #[arg(long, default_value_t = 64)]
    pub delivery_concurrency: usize,
    /// database.max_connections of each process.
    #[arg(long, default_value_t = 20)]
    pub db_connections: u32,
    /// Use Redis (default URL redis://127.0.0.1:6379).
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "redis://127.0.0.1:6379")]
    pub redis: Option<String>,
    /// How long to wait for the replies after the last webhook.
    #[arg(long, default_value = "120s", value_parser = parse_span)]
    pub drain_timeout: Duration,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the run's database for a look afterwards (its URL is printed).
    #[arg(long)]
    pub keep_database: bool,
    /// Start from a copy of this database (one a `--keep-database` run left,
    /// with no connection open) instead of an empty one: its sessions carry on
    /// with their history, on tables of the size that run left.
    #[arg(long, value_name = "DATABASE")]
    pub template: Option<String>,
    /// A Postgres setting for every connection to the run's database
    /// (`ALTER DATABASE … SET`), e.g. `plan_cache_mode=force_generic_plan`;
    /// repeatable.
    #[arg(long = "database-setting", value_name = "NAME=VALUE")]
    pub database_settings: Vec<String>,
}

impl RunArgs {
    fn tuning(&self) -> Tuning {
        Tuning {
            group_commit_batch: self.group_commit_batch,
            group_commit_wait: self.group_commit_wait,
            group_commit_writers: self.group_commit_writers,
            turn_concurrency: self.turn_concurrency,
            delivery_concurrency: self.delivery_concurrency,
            db_connections: self.db_connections,
            redis_url: self.redis.clone().unwrap_or_default(),
        }
    }

    /// What the report repeats of the run's settings.
    fn settings(&self) -> serde_json::Value {
        let load = match self.closed_loop {
            Some(clients) => json!({"closed_loop_clients": clients}),
            None => json!({"rate": self.rate, "messages": self.message_count()}),
        };
        json!({
            "load": load,
            "duration_s": self.duration.as_secs_f64(),
            "sessions": self.sessions,
            "channels": self.channels,
            "topology": if self.ingest_only { json!("receiver only") } else { json!(self.topology) },
            "workers": match (self.ingest_only, self.topology) {
                (true, _) => 0,
                (false, Topology::All) => 1,
                (false, Topology::Split) => self.workers,
            },
            "model_latency_ms": self.model_latency.as_millis(),
            "reply_chars": self.reply_chars,
            "group_commit": {"max_batch": self.group_commit_batch,
                             "max_wait_ms": self.group_commit_wait.as_millis(),
                             "max_in_flight": self.group_commit_writers},
            "turn_concurrency": self.turn_concurrency,
            "delivery_concurrency": self.delivery_concurrency,
            "db_connections": self.db_connections,
            "redis": self.redis.is_some(),
            "template": self.template,
            "database_settings": self.database_settings,
        })
    }

    fn message_count(&self) -> u64 {
        self.messages
            .unwrap_or_else(|| (self.rate * self.duration.as_secs_f64()).round() as u64)
    }
}

/// After every expected reply arrived: how long to keep listening for late
/// duplicates (a delivery sent twice arrives moments after the first).
const SETTLE: Duration = Duration::from_secs(1);

/// One load run, from a fresh database to the report.
pub async fn run(label: &str, args: &RunArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be positive");
    anyhow::ensure!(!args.channels.is_empty(), "--channels names no channel");
    anyhow::ensure!(
        args.closed_loop.is_some() || args.rate > 0.0,
        "--rate must be positive"
    );
    let model = FakeModel::start(args.model_latency, args.reply_chars).await?;
    let platform = FakePlatform::start().await?;
    let db = Database::create(args.template.as_deref()).await?;
    if let Err(e) = db.apply_settings(&args.database_settings).await {
        db.drop_database().await;
        return Err(e);
    }
    let logs = std::env::temp_dir().join(&db.name);
    let report = measure(label, args, &db, &model, &platform, logs).await;
    if args.keep_database {
        println!("  database kept      {}", db.url);
    } else {
        db.drop_database().await;
    }
    report
}

async fn measure(
    label: &str,
    args: &RunArgs,
    db: &Database,
    model: &FakeModel,
    platform: &FakePlatform,
    logs: PathBuf,
) -> anyhow::Result<Report> {
    let cpu_at_start = cluster::cpu_secs("self").unwrap_or(0.0);
    let mut cluster = Cluster::new(db, model, platform, &args.tuning(), &logs)?;
    match (args.ingest_only, args.topology) {
        (false, Topology::All) => cluster.start_all().await?,
        (ingest_only, _) => {
            cluster.migrate().await?;
            cluster.start_receiver().await?;
            if !ingest_only {
                for _ in 0..args.workers {
                    cluster.start_worker().await?;
                }
            }
        }
    }
    let sender = Arc::new(Sender {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        receiver_url: cluster.receiver_url.clone(),
        custom_key: SigningKey::parse(cluster::CUSTOM_SECRET)?,
        slack_signing_secret: cluster::SLACK_SIGNING_SECRET.to_owned(),
        channels: args.channels.clone(),
        sessions: args.sessions,
        run_epoch: chrono::Utc::now().timestamp(),
    });
    let started = chrono::Utc::now();
    let machine_at_start = cluster::machine_cpu_ticks();
    let sent = match args.closed_loop {
        Some(clients) => traffic::closed_loop(sender.clone(), clients, args.duration).await,
        None => traffic::open_loop(sender.clone(), args.rate, args.message_count()).await,
    };
    let acknowledged = || {
        sent.iter()
            .filter(|s| matches!(s.outcome, Outcome::Acknowledged(_)))
    };
    let (replies, acknowledged_not_recorded) = if args.ingest_only {
        let recorded: HashSet<String> = db
            .recorded_message_ids(started)
            .await?
            .into_iter()
            .collect();
        let missing = acknowledged()
            .filter(|s| !recorded.contains(&sender.platform_message_id(s.token)))
            .count();
        (None, Some(missing as u64))
    } else {
        let expected: Vec<Token> = acknowledged().map(|s| s.token).collect();
        let ledger = await_replies(expected, platform, args.drain_timeout).await;
        let replies = Replies::of(
            &sent,
            &ledger,
            model,
            platform.unreadable(),
            db.phases(started).await?,
        );
        (Some(replies), None)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine_busy_cores = machine_at_start.zip(cluster::machine_cpu_ticks()).map_or(
        0.0,
        |((busy0, total0), (busy1, total1))| {
            (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cores as f64
        },
    );
    let loadgen_cpu_secs = cluster::cpu_secs("self").unwrap_or(0.0) - cpu_at_start;
    let processes = cluster.stop().await;
    let database = match db.work().await {
        Ok(work) => Some(work),
        Err(e) => {
            eprintln!("warning: no database statistics: {e}");
            None
        }
    };
    Ok(Report {
        label: label.to_owned(),
        settings: args.settings(),
        ingest: Ingest::of(&sent),
        replies,
        acknowledged_not_recorded,
        processes,
        loadgen_cpu_secs,
        machine_busy_cores,
        cores,
        database,
        logs: logs.display().to_string(),
    })
}

/// Takes in replies until every expected token was answered (or `timeout`),
/// then for `SETTLE` more.
async fn await_replies(
    mut waiting: Vec<Token>,
    platform: &FakePlatform,
    timeout: Duration,
) -> ReplyLedger {
    let mut ledger = ReplyLedger::default();
    let deadline = Instant::now() + timeout;
    loop {
        ledger.add(&platform.replies_since(ledger.received()));
        waiting.retain(|token| !ledger.answered(token));
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "{} acknowledged messages still unanswered after {timeout:?}",
                waiting.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    ledger.add(&platform.replies_since(ledger.received()));
    ledger
}

/// One run from the command line: the table, the JSON line, the verdict.
async fn single(args: RunArgs) -> anyhow::Result<bool> {
    let report = run("load run", &args).await?;
    report.print();
    let line = report.json_line();
    println!("{line}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{line}\n"))?;
    }
    let violations = report.violations();
    for violation in &violations {
        eprintln!("FAILED: {violation}");
    }
    Ok(violations.is_empty())
}

fn main() -> ExitCode {
    // A bare `cargo bench` runs every bench with only `--bench`: a load run
    // needs Postgres and minutes, so it runs only when asked for.
    if std::env::args().skip(1).all(|arg| arg == "--bench") {
        eprintln!("loadgen: skipped; run `cargo bench --bench loadgen -- --help`");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    microclaw::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.mode {
            Some(Mode::Suite { json }) => suite::run(json).await,
            None => single(cli.run).await,
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
