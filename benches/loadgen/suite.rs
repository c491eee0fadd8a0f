//! `cargo bench --bench loadgen -- suite`: the scenarios behind BENCHMARKS.md,
//! each against a baseline or a target measured in the same run, in about four
//! minutes.
//!
//! a. Ingest: a receiver alone, 128 closed-loop clients for 15 s, one transaction
//!    per webhook (baseline) and then group commit (up to 128 a batch, four
//!    batches written at once).
//! b. Runtime overhead: `all`, 200 messages/s open loop over 1,000 sessions for
//!    30 s, a 50 ms model.
//! c. Concurrency: 5,000 sessions, one message each at 250/s, a 25 s model, so
//!    all 5,000 turns are in flight in one worker at once.
//! d. Idle footprint: one receiver, spawn to first ready `/readyz`, RSS after 2 s idle.
//! e. Scale-out: the model is the bottleneck (10 turns at a time, 200 ms each, so
//!    50 turns/s a worker) under 150 messages/s; one worker, then two.
//!
//! Every scenario's line of arguments is printed: `cargo bench --bench loadgen
//! -- <those arguments>` repeats it alone.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use serde::Serialize;
use serde_json::json;

use crate::{
    RunArgs,
    cluster::{Cluster, Database, proc_status_kib},
    fakes::{FakeModel, FakePlatform},
    report::Report,
};

/// One figure held against its target.
#[derive(Debug, Clone, Serialize)]
struct Verdict {
    scenario: &'static str,
    figure: &'static str,
    measured: String,
    target: &'static str,
    /// None: reported only.
    pass: Option<bool>,
}

impl Verdict {
    fn new(
        scenario: &'static str,
        figure: &'static str,
        measured: String,
        target: &'static str,
        pass: Option<bool>,
    ) -> Self {
        Self {
            scenario,
            figure,
            measured,
            target,
            pass,
        }
    }
}

/// Runs one scenario given as loadgen arguments, and prints its report.
async fn scenario(label: &str, arguments: &str) -> anyhow::Result<Report> {
    println!("\n▶ {label}: {arguments}");
    let args =
        RunArgs::try_parse_from(std::iter::once("loadgen").chain(arguments.split_whitespace()))?;
    let report = crate::run(label, &args).await?;
    report.print();
    Ok(report)
}

fn guarantees_hold(report: &Report, scenario: &'static str) -> Verdict {
    let violations = report.violations();
    Verdict::new(
        scenario,
        "lost / duplicated / unrecorded messages",
        if violations.is_empty() {
            "none".into()
        } else {
            violations.join("; ")
        },
        "none",
        Some(violations.is_empty()),
    )
}

fn worker_peak_rss(report: &Report) -> f64 {
    report
        .processes
        .iter()
        .filter(|p| p.role == "worker")
        .map(|p| p.peak_rss_mib)
        .fold(0.0, f64::max)
}

/// Spawn to ready and idle RSS of one `microclaw receiver`.
async fn idle_footprint() -> anyhow::Result<(f64, f64)> {
    println!("\n▶ d. idle footprint: one `microclaw receiver`, 2 s idle");
    let model = FakeModel::start(Duration::ZERO, 0).await?;
    let platform = FakePlatform::start().await?;
    let db = Database::create(None).await?;
    let args = RunArgs::parse_from(["loadgen"]);
    let measured = async {
        let logs = std::env::temp_dir().join(&db.name);
        let mut cluster = Cluster::new(&db, &model, &platform, &args.tuning(), &logs)?;
        cluster.migrate().await?;
        cluster.start_receiver().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let receiver = &cluster.processes[0];
        let ready_ms = receiver.ready_after.as_secs_f64() * 1e3;
        let rss_mib = proc_status_kib(receiver.pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        cluster.stop().await;
        println!("  ready after {ready_ms:.0} ms, RSS {rss_mib:.1} MiB after 2 s idle");
        anyhow::Ok((ready_ms, rss_mib))
    }
    .await;
    db.drop_database().await;
    measured
}

/// Runs the suite; false when a guarantee broke (targets missed are reported,
/// not failed: they are measurements of a shared machine).
pub async fn run(json_path: Option<PathBuf>) -> anyhow::Result<bool> {
    let mut verdicts = Vec::new();
    let mut reports = Vec::new();

    const INGEST: &str = "--ingest-only --closed-loop 128 --duration 15s --sessions 1000";
    let single = scenario(
        "a. ingest, one transaction per webhook (baseline)",
        &format!("{INGEST} --group-commit-batch 1"),
    )
    .await?;
    let grouped = scenario(
        "a. ingest, group commit",
        &format!(
            "{INGEST} --group-commit-batch 128 --group-commit-wait 2ms --group-commit-writers 4"
        ),
    )
    .await?;
    let ratio = grouped.ingest.acks_per_sec / single.ingest.acks_per_sec.max(f64::MIN_POSITIVE);
    verdicts.extend([
        Verdict::new(
            "a. ingest",
            "acks/s, one transaction per webhook",
            format!(
                "{:.0} (p99 ack {:.1} ms)",
                single.ingest.acks_per_sec, single.ingest.ack_latency.p99_ms
            ),
            "baseline",
            None,
        ),
        Verdict::new(
            "a. ingest",
            "acks/s, group commit of up to 128",
            format!(
                "{:.0} (p99 ack {:.1} ms)",
                grouped.ingest.acks_per_sec, grouped.ingest.ack_latency.p99_ms
            ),
            "",
            None,
        ),
        Verdict::new(
            "a. ingest",
            "group commit / baseline",
            format!("{ratio:.2}×"),
            "≥ 5×",
            Some(ratio >= 5.0),
        ),
        Verdict::new(
            "a. ingest",
            "group commit p99 ack latency",
            format!("{:.1} ms", grouped.ingest.ack_latency.p99_ms),
            "< 50 ms",
            Some(grouped.ingest.ack_latency.p99_ms < 50.0),
        ),
        guarantees_hold(&single, "a. ingest (baseline)"),
        guarantees_hold(&grouped, "a. ingest (group commit)"),
    ]);
    reports.extend([single, grouped]);

    let overhead = scenario(
        "b. runtime overhead",
        "--rate 200 --duration 30s --sessions 1000 --model-latency 50ms",
    )
    .await?;
    if let Some(replies) = &overhead.replies {
        verdicts.extend([
            Verdict::new(
                "b. overhead",
                "end to end p50 / p99",
                format!(
                    "{:.1} / {:.1} ms",
                    replies.end_to_end.p50_ms, replies.end_to_end.p99_ms
                ),
                "",
                None,
            ),
            Verdict::new(
                "b. overhead",
                "runtime overhead p50",
                format!("{:.1} ms", replies.overhead.p50_ms),
                "≤ 10 ms",
                Some(replies.overhead.p50_ms <= 10.0),
            ),
            Verdict::new(
                "b. overhead",
                "runtime overhead p99",
                format!("{:.1} ms", replies.overhead.p99_ms),
                "≤ 50 ms",
                Some(replies.overhead.p99_ms <= 50.0),
            ),
        ]);
    }
    verdicts.push(guarantees_hold(&overhead, "b. overhead"));
    reports.push(overhead);

    let concurrency = scenario(
        "c. 5,000 turns in flight",
        "--topology split --workers 1 --sessions 5000 --messages 5000 --rate 250 \
         --model-latency 25s --turn-concurrency 6000 --delivery-concurrency 128",
    )
    .await?;
    if let Some(replies) = &concurrency.replies {
        verdicts.push(Verdict::new(
            "c. concurrency",
            "replies delivered",
            format!(
                "{} of {}",
                replies.end_to_end.count, concurrency.ingest.acknowledged
            ),
            "all",
            Some(replies.end_to_end.count == concurrency.ingest.acknowledged),
        ));
        let share = replies.turns_per_sec / 250.0;
        verdicts.push(Verdict::new(
            "c. concurrency",
            "turns answered a second / offered",
            format!(
                "{:.0}/s of 250/s ({:.0}%)",
                replies.turns_per_sec,
                share * 100.0
            ),
            "≥ 90%",
            Some(share >= 0.9),
        ));
    }
    let rss = worker_peak_rss(&concurrency);
    verdicts.extend([
        Verdict::new(
            "c. concurrency",
            "worker peak RSS",
            format!("{rss:.0} MiB"),
            "≤ 512 MiB",
            Some(rss <= 512.0),
        ),
        guarantees_hold(&concurrency, "c. concurrency"),
    ]);
    reports.push(concurrency);

    let (ready_ms, idle_rss) = idle_footprint().await?;
    verdicts.extend([
        Verdict::new(
            "d. idle receiver",
            "spawn to ready",
            format!("{ready_ms:.0} ms"),
            "≤ 200 ms",
            Some(ready_ms <= 200.0),
        ),
        Verdict::new(
            "d. idle receiver",
            "RSS after 2 s idle",
            format!("{idle_rss:.1} MiB"),
            "≤ 30 MiB",
            Some(idle_rss <= 30.0),
        ),
    ]);

    const SCALE: &str = "--topology split --turn-concurrency 10 --model-latency 200ms \
                         --rate 150 --duration 10s --sessions 1500";
    let one = scenario("e. scale-out, 1 worker", &format!("{SCALE} --workers 1")).await?;
    let two = scenario("e. scale-out, 2 workers", &format!("{SCALE} --workers 2")).await?;
    let turns = |r: &Report| r.replies.as_ref().map_or(0.0, |r| r.turns_per_sec);
    let scale = turns(&two) / turns(&one).max(f64::MIN_POSITIVE);
    verdicts.extend([
        Verdict::new(
            "e. scale-out",
            "turns/s, 1 worker → 2 workers",
            format!("{:.1} → {:.1}", turns(&one), turns(&two)),
            "",
            None,
        ),
        Verdict::new(
            "e. scale-out",
            "2 workers / 1 worker",
            format!("{scale:.2}×"),
            "≥ 1.8×",
            Some(scale >= 1.8),
        ),
        guarantees_hold(&one, "e. scale-out (1 worker)"),
        guarantees_hold(&two, "e. scale-out (2 workers)"),
    ]);
    reports.extend([one, two]);

    println!(
        "\n{:<26} {:<42} {:<44} {:<10} verdict",
        "scenario", "figure", "measured", "target"
    );
    for v in &verdicts {
        let verdict = match v.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        };
        println!(
            "{:<26} {:<42} {:<44} {:<10} {verdict}",
            v.scenario, v.figure, v.measured, v.target
        );
    }
    let line = json!({"suite": verdicts, "reports": reports}).to_string();
    println!("{line}");
    if let Some(path) = json_path {
        std::fs::write(path, format!("{line}\n"))?;
    }
    let broken: Vec<String> = reports.iter().flat_map(Report::violations).collect();
    for violation in &broken {
        eprintln!("FAILED: {violation}");
    }
    Ok(broken.is_empty())
}
