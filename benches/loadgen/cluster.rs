//! The MicroClaw under test: a scratch Postgres database, a configuration file
//! pointing at the fakes, and the `microclaw` processes of a topology, each
//! logging to its own file.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::fakes::{FakeModel, FakePlatform};

pub const CUSTOM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SLACK_SIGNING_SECRET: &str = "microclaw-load-signing-secret";
const SLACK_BOT_TOKEN: &str = "xoxb-load-token";

/// The Postgres server scratch databases are created on.
pub fn postgres_server() -> String {
    std::env::var("MICROCLAW_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Transactions and written rows of a run's database (`pg_stat_database`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DatabaseWork {
    pub transactions: u64,
    pub rows_written: u64,
}

/// A database of its own for one run, dropped when the run ends.
pub struct Database {
    pub name: String,
    pub url: String,
    server: String,
}

impl Database {
    /// An empty database, or a copy of `template` (a database an earlier run
    /// kept), so a run can start on tables of a realistic size.
    pub async fn create(template: Option<&str>) -> anyhow::Result<Self> {
        let server = postgres_server();
        let name = format!("microclaw_load_{}", uuid::Uuid::new_v4().simple());
        let copy_of = match template {
            Some(template) => {
                anyhow::ensure!(
                    !template.is_empty()
                        && template
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "--template {template:?}: a database name of lowercase letters, digits and _"
                );
                format!(" TEMPLATE {template}")
            }
            None => String::new(),
        };
        let admin = PgPool::connect(&format!("{server}/postgres"))
            .await
            .with_context(|| format!("Postgres must run at {server} (MICROCLAW_BENCH_POSTGRES)"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name}{copy_of}"
        )))
        .execute(&admin)
        .await
        .with_context(|| format!("creating {name}{copy_of}"))?;
        admin.close().await;
        Ok(Self {
            url: format!("{server}/{name}"),
            name,
            server,
        })
    }

    /// Sets each `NAME=VALUE` for every later connection to this database.
    pub async fn apply_settings(&self, settings: &[String]) -> anyhow::Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let admin = PgPool::connect(&format!("{}/postgres", self.server)).await?;
        for setting in settings {
            let Some((name, value)) = setting.split_once('=') else {
                bail!("--database-setting {setting:?}: expected NAME=VALUE");
            };
            anyhow::ensure!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
                "--database-setting {setting:?}: a setting's name is lowercase letters, _ and ."
            );
            let value = value.replace('\'', "''");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {} SET {name} = '{value}'",
                self.name
            )))
            .execute(&admin)
            .await
            .with_context(|| format!("--database-setting {setting}"))?;
        }
        admin.close().await;
        Ok(())
    }

    /// The platform message ids of every inbound event recorded since `since`.
    pub async fn recorded_message_ids(&self, since: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        let pool = PgPool::connect(&self.url).await?;
        let ids = sqlx::query_scalar(
            "SELECT platform_message_id FROM inbound_events WHERE received_at >= $1",
        )
        .bind(since)
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(ids)
    }

    /// Where the time of answered messages went, by the timestamps MicroClaw
    /// recorded (transaction start times, so a grouped commit's members share one),
    /// of the messages recorded since `since`.
    pub async fn phases(&self, since: DateTime<Utc>) -> anyhow::Result<Vec<Phase>> {
        const NAMES: [&str; 4] = [
            "recorded → turn started",
            "turn (model call included)",
            "turn committed → first delivery attempt",
            "delivery attempt",
        ];
        let pool = PgPool::connect(&self.url).await?;
        let row: Vec<Option<f64>> = sqlx::query_scalar(
            "WITH spans AS (
               SELECT EXTRACT(EPOCH FROM t.started_at - e.received_at)::float8 * 1e3 AS s0,
                      EXTRACT(EPOCH FROM t.finished_at - t.started_at)::float8 * 1e3 AS s1,
                      EXTRACT(EPOCH FROM a.started_at - t.finished_at)::float8 * 1e3 AS s2,
                      EXTRACT(EPOCH FROM a.finished_at - a.started_at)::float8 * 1e3 AS s3
                 FROM inbound_events e
                 JOIN turns t ON t.id = e.turn_id
                 JOIN deliveries d ON d.turn_id = t.id AND d.part = 1
                 JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = 1
                WHERE e.received_at >= $1)
             SELECT unnest(ARRAY[
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s0), percentile_cont(0.99) WITHIN GROUP (ORDER BY s0),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s1), percentile_cont(0.99) WITHIN GROUP (ORDER BY s1),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s2), percentile_cont(0.99) WITHIN GROUP (ORDER BY s2),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s3), percentile_cont(0.99) WITHIN GROUP (ORDER BY s3)])
             FROM spans",
        )
        .bind(since)
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(NAMES
            .iter()
            .zip(row.chunks(2))
            .map(|(phase, p)| Phase {
                phase,
                p50_ms: p[0].unwrap_or(0.0),
                p99_ms: p.get(1).copied().flatten().unwrap_or(0.0),
            })
            .collect())
    }

    /// What the run cost Postgres: transactions ended (committed or rolled
    /// back) and rows written in the run's database. Read once MicroClaw's
    /// processes have exited, so every backend has reported its counts; the
    /// load generator's own few reads of the database are included.
    pub async fn work(&self) -> anyhow::Result<DatabaseWork> {
        let admin = PgPool::connect(&format!("{}/postgres", self.server)).await?;
        let (transactions, rows_written): (i64, i64) = sqlx::query_as(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted
               FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&admin)
        .await?;
        admin.close().await;
        Ok(DatabaseWork {
            transactions: transactions as u64,
            rows_written: rows_written as u64,
        })
    }

    pub async fn drop_database(self) {
        let Ok(admin) = PgPool::connect(&format!("{}/postgres", self.server)).await else {
            eprintln!("warning: could not drop database {}", self.name);
            return;
        };
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
        if let Err(e) = dropped {
            eprintln!("warning: could not drop database {}: {e}", self.name);
        }
        admin.close().await;
    }
}

/// One phase of answering a message, from MicroClaw's own timestamps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub phase: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// How the roles are laid out in processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// One `microclaw all --migrate`.
    All,
    /// `microclaw migrate`, then one `microclaw receiver` and `--workers` `microclaw worker`s.
    Split,
}

/// The settings a run gives MicroClaw; everything else is the built-in default.
#[derive(Debug)]
pub struct Tuning {
    pub group_commit_batch: usize,
    pub group_commit_wait: Duration,
    pub group_commit_writers: usize,
    pub turn_concurrency: usize,
    pub delivery_concurrency: usize,
    pub db_connections: u32,
    /// Empty: no Redis.
    pub redis_url: String,
}

const RECEIVER_LISTEN: &str = "@RECEIVER_LISTEN@";
const WORKER_LISTEN: &str = "@WORKER_LISTEN@";

/// The configuration of every process of a run, with the listen addresses
/// (`RECEIVER_LISTEN`, `WORKER_LISTEN`) left to fill in per process.
fn config_template(
    db: &Database,
    model: &FakeModel,
    platform: &FakePlatform,
    tuning: &Tuning,
) -> String {
    format!(
        r#"[database]
url = "{db_url}"
max_connections = {db_connections}

[redis]
url = "{redis}"
key_prefix = "{prefix}"

[receiver]
listen = "{RECEIVER_LISTEN}"

[receiver.group_commit]
max_batch = {batch}
max_wait = "{wait}ms"
max_in_flight = {writers}

[worker]
listen = "{WORKER_LISTEN}"
turn_concurrency = {turns}
delivery_concurrency = {deliveries}
shutdown_grace = "5s"

[log]
level = "warn"

[models.fake]
provider = "openai"
base_url = "{model_url}"
api_key_env = "LOADGEN_MODEL_KEY"
model = "fake-gpt"

[[agents]]
name = "assistant"
instructions = "You are the load generator's agent. Answer briefly."
model = "fake"

[[connectors]]
id = "custom"
channel = "custom"
agent = "assistant"
signing_secret_env = "LOADGEN_CUSTOM_SECRET"
callback_url = "{callback}"

[[connectors]]
id = "slack"
channel = "slack"
agent = "assistant"
signing_secret_env = "LOADGEN_SLACK_SECRET"
bot_token_env = "LOADGEN_SLACK_TOKEN"
api_base_url = "{slack_api}"
"#,
        db_url = db.url,
        db_connections = tuning.db_connections,
        redis = tuning.redis_url,
        prefix = db.name,
        batch = tuning.group_commit_batch,
        wait = tuning.group_commit_wait.as_millis(),
        writers = tuning.group_commit_writers,
        turns = tuning.turn_concurrency,
        deliveries = tuning.delivery_concurrency,
        model_url = model.base_url,
        callback = platform.callback_url,
        slack_api = platform.slack_api_url,
    )
}

/// A free loopback address (bound, then released for the child to take).
fn free_address() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

/// One running `microclaw` process.
pub struct Process {
    pub role: &'static str,
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    /// From spawn to the first `/readyz` that answered 200.
    pub ready_after: Duration,
}

/// What the report says about one process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessFigures {
    pub role: &'static str,
    pub peak_rss_mib: f64,
    /// CPU time (user and system) it used.
    pub cpu_secs: f64,
    pub ready_ms: f64,
    pub log_warnings: usize,
    pub log_errors: usize,
    /// The first error line of its log, if any.
    pub first_error: Option<String>,
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`: peak RSS; `VmRSS`: current).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user and system) process `pid` used so far; `self` for this one.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses: state is
    // field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_sec.max(1) as f64)
}

/// The machine's CPU time so far, in clock ticks: (busy, total) over every core.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The MicroClaw processes of one run and what they need: the config written
/// for each, their logs.
pub struct Cluster {
    pub receiver_url: String,
    pub processes: Vec<Process>,
    dir: PathBuf,
    config: String,
    http: reqwest::Client,
}

impl Cluster {
    pub fn new(
        db: &Database,
        model: &FakeModel,
        platform: &FakePlatform,
        tuning: &Tuning,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            receiver_url: String::new(),
            processes: Vec::new(),
            dir: dir.to_owned(),
            config: config_template(db, model, platform, tuning),
            http: reqwest::Client::new(),
        })
    }

    /// The command for `args`, its configuration written to `name.toml` and its
    /// output to `name.log`.
    fn command(
        &self,
        name: &str,
        args: &[&str],
        receiver_listen: &str,
        worker_listen: &str,
    ) -> anyhow::Result<(Command, PathBuf)> {
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            self.config
                .replace(RECEIVER_LISTEN, receiver_listen)
                .replace(WORKER_LISTEN, worker_listen),
        )?;
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_microclaw"));
        command
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("DATABASE_URL")
            .env_remove("MICROCLAW_CONFIG")
            .env("RUST_LOG", "warn")
            .env("LOADGEN_MODEL_KEY", "sk-load")
            .env("LOADGEN_CUSTOM_SECRET", CUSTOM_SECRET)
            .env("LOADGEN_SLACK_SECRET", SLACK_SIGNING_SECRET)
            .env("LOADGEN_SLACK_TOKEN", SLACK_BOT_TOKEN)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        Ok((command, log))
    }

    /// Runs `microclaw migrate` to completion.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let (mut command, log) =
            self.command("migrate", &["migrate"], "127.0.0.1:0", "127.0.0.1:0")?;
        let status = command.status().await?;
        if !status.success() {
            bail!("microclaw migrate failed ({status}):\n{}", tail(&log));
        }
        Ok(())
    }

    /// Starts `microclaw all --migrate`; it serves the webhooks.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let listen = free_address()?;
        self.start(
            "all",
            "all",
            &["all", "--migrate"],
            &listen,
            &free_address()?,
            &listen,
        )
        .await?;
        self.receiver_url = format!("http://{listen}");
        Ok(())
    }

    /// Starts one `microclaw receiver`; it serves the webhooks.
    pub async fn start_receiver(&mut self) -> anyhow::Result<()> {
        let listen = free_address()?;
        self.start(
            "receiver",
            "receiver",
            &["receiver"],
            &listen,
            "127.0.0.1:0",
            &listen,
        )
        .await?;
        self.receiver_url = format!("http://{listen}");
        Ok(())
    }

    /// Starts one more `microclaw worker`.
    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        let listen = free_address()?;
        let name = format!("worker-{}", self.processes.len());
        self.start(
            "worker",
            &name,
            &["worker"],
            "127.0.0.1:0",
            &listen,
            &listen,
        )
        .await
    }

    async fn start(
        &mut self,
        role: &'static str,
        name: &str,
        args: &[&str],
        receiver_listen: &str,
        worker_listen: &str,
        health: &str,
    ) -> anyhow::Result<()> {
        let (mut command, log) = self.command(name, args, receiver_listen, worker_listen)?;
        let spawned = Instant::now();
        let mut child = command.spawn()?;
        let pid = child.id().context("the child has no pid")?;
        let ready_url = format!("http://{health}/readyz");
        let deadline = spawned + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "microclaw {name} exited ({status}) before it was ready:\n{}",
                    tail(&log)
                );
            }
            let ready = self.http.get(&ready_url).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "microclaw {name} was not ready within 60 s:\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.processes.push(Process {
            role,
            child,
            pid,
            log,
            ready_after: spawned.elapsed(),
        });
        Ok(())
    }

    /// Reads each process's peak RSS and CPU time, stops them (SIGTERM, then SIGKILL after
    /// 15 s) and counts the warnings and errors in their logs.
    pub async fn stop(mut self) -> Vec<ProcessFigures> {
        let usage: Vec<(Option<u64>, Option<f64>)> = self
            .processes
            .iter()
            .map(|p| {
                (
                    proc_status_kib(p.pid, "VmHWM"),
                    cpu_secs(&p.pid.to_string()),
                )
            })
            .collect();
        for process in &self.processes {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped.
            unsafe { libc::kill(process.pid as i32, libc::SIGTERM) };
        }
        for process in &mut self.processes {
            let stopped = tokio::time::timeout(Duration::from_secs(15), process.child.wait()).await;
            if stopped.is_err() {
                let _ = process.child.kill().await;
            }
        }
        self.processes
            .iter()
            .zip(usage)
            .map(|(process, (peak, cpu))| {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
                ProcessFigures {
                    role: process.role,
                    peak_rss_mib: peak.unwrap_or(0) as f64 / 1024.0,
                    cpu_secs: cpu.unwrap_or(0.0),
                    ready_ms: process.ready_after.as_secs_f64() * 1e3,
                    log_warnings: log.lines().filter(|l| l.contains(" WARN ")).count(),
                    log_errors: errors.len(),
                    first_error: errors.first().map(|l| l.to_string()),
                }
            })
            .collect()
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
