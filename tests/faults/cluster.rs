//! The MicroClaw under test: a database of its own on the suite's Postgres, one
//! configuration file, and `microclaw` OS processes (a receiver, two workers and
//! the admin role), each logging to its own file, each listening on its own
//! loopback port (set through the environment).

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::{
    fakes::{FakeModel, FakePlatform},
    servers::{Postgres, Redis, free_port},
};

pub const CUSTOM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "faults-admin-token-0123456789";
const MODEL_KEY: &str = "sk-faults-model-key-4b1d";
pub const APOLOGY: &str = "Sorry, the faults suite could not answer.";

/// What a scenario changes in the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// Each message in a turn of its own (else messages arriving during a turn
    /// are folded into the next).
    pub per_message: bool,
}

fn config(
    database_url: &str,
    redis: &Redis,
    prefix: &str,
    model: &FakeModel,
    backup: &FakeModel,
    platform: &FakePlatform,
    tuning: Tuning,
) -> String {
    format!(
        r#"[database]
url = "{database_url}"
max_connections = 12
acquire_timeout = "2s"

[redis]
url = "{redis}"
key_prefix = "{prefix}"
timeout = "200ms"

[worker]
recovery_window = "12s"
session_lease = "6s"
shutdown_grace = "4s"
poll_interval = "500ms"
turn_job_attempts = 4
turn_mode = "{turn_mode}"
apology = "{APOLOGY}"

[delivery]
max_attempts = 4
retry_schedule = ["1s", "1s", "2s"]
max_retry_after = "3s"
order_window = "2m"

[router]
breaker_failures = 3
breaker_cooldown = "3s"
step_deadline = "10s"

[[admin.tokens]]
token_env = "FAULTS_ADMIN_TOKEN"
scope = "operate"

[log]
level = "info"

[models.primary]
provider = "openai"
base_url = "{primary_url}"
api_key_env = "FAULTS_MODEL_KEY"
model = "fake-gpt"
timeout = "2s"
max_attempts = 2
min_backoff = "100ms"
max_backoff = "1s"

[models.backup]
provider = "openai"
base_url = "{backup_url}"
api_key_env = "FAULTS_MODEL_KEY"
model = "fake-gpt-backup"
timeout = "2s"
max_attempts = 2
min_backoff = "100ms"
max_backoff = "1s"

[routes.main]
strategy = "failover"
candidates = ["primary", "backup"]

[[agents]]
name = "assistant"
instructions = "You are the fault suite's agent."
model = "main"

[[connectors]]
id = "custom"
channel = "custom"
agent = "assistant"
signing_secret_env = "FAULTS_CUSTOM_SECRET"
callback_url = "{callback}"
"#,
        redis = redis.url(),
        turn_mode = if tuning.per_message {
            "per_message"
        } else {
            "collect"
        },
        primary_url = model.base_url,
        backup_url = backup.base_url,
        callback = platform.callback_url,
    )
}

/// One `microclaw` process.
pub struct Process {
    pub name: String,
    args: Vec<&'static str>,
    env: Vec<(&'static str, String)>,
    pub health_url: String,
    child: Option<Child>,
}

/// The processes of one scenario.
pub struct Cluster {
    dir: PathBuf,
    config_path: PathBuf,
    pub database_url: String,
    pub receiver_url: String,
    pub admin_url: String,
    pub receiver: Process,
    pub workers: Vec<Process>,
    pub admin: Process,
    http: reqwest::Client,
}

impl Cluster {
    /// A fresh database on `postgres`, migrated; nothing started yet.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        name: &str,
        dir: &Path,
        postgres: &Postgres,
        redis: &Redis,
        model: &FakeModel,
        backup: &FakeModel,
        platform: &FakePlatform,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        let database = format!("faults_{name}");
        let admin = PgPool::connect(&postgres.url("postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let database_url = postgres.url(&database);
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("microclaw.toml");
        std::fs::write(
            &config_path,
            config(
                &database_url,
                redis,
                &database,
                model,
                backup,
                platform,
                tuning,
            ),
        )?;
        let receiver_port = free_port()?;
        let admin_port = free_port()?;
        let process = |name: &str,
                       args: Vec<&'static str>,
                       env: Vec<(&'static str, String)>,
                       health: u16| Process {
            name: name.to_owned(),
            args,
            env,
            health_url: format!("http://127.0.0.1:{health}/readyz"),
            child: None,
        };
        let mut workers = Vec::new();
        for i in 0..2 {
            let port = free_port()?;
            workers.push(process(
                &format!("worker-{i}"),
                vec!["worker"],
                vec![("MICROCLAW_WORKER__LISTEN", format!("127.0.0.1:{port}"))],
                port,
            ));
        }
        let cluster = Self {
            receiver: process(
                "receiver",
                vec!["receiver"],
                vec![(
                    "MICROCLAW_RECEIVER__LISTEN",
                    format!("127.0.0.1:{receiver_port}"),
                )],
                receiver_port,
            ),
            admin: process(
                "admin",
                vec!["admin"],
                vec![("MICROCLAW_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))],
                admin_port,
            ),
            workers,
            receiver_url: format!("http://127.0.0.1:{receiver_port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}/admin/v1"),
            dir,
            config_path,
            database_url,
            http: reqwest::Client::new(),
        };
        let status = cluster
            .command("migrate", &["migrate"], &[])?
            .status()
            .await?;
        if !status.success() {
            bail!(
                "microclaw migrate failed ({status}):\n{}",
                cluster.log_tail("migrate")
            );
        }
        Ok(cluster)
    }

    fn command(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&'static str, String)],
    ) -> anyhow::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_microclaw"));
        command
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("DATABASE_URL")
            .env_remove("MICROCLAW_CONFIG")
            .env_remove("RUST_LOG")
            .env("FAULTS_MODEL_KEY", MODEL_KEY)
            .env("FAULTS_CUSTOM_SECRET", CUSTOM_SECRET)
            .env("FAULTS_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        Ok(command)
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Starts every process and waits until each is ready.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start(Role::Receiver).await?;
        for i in 0..self.workers.len() {
            self.start(Role::Worker(i)).await?;
        }
        self.start(Role::Admin).await
    }

    fn process(&mut self, role: Role) -> &mut Process {
        match role {
            Role::Receiver => &mut self.receiver,
            Role::Worker(i) => &mut self.workers[i],
            Role::Admin => &mut self.admin,
        }
    }

    /// Starts one process (again) and waits for its `/readyz`.
    pub async fn start(&mut self, role: Role) -> anyhow::Result<()> {
        let (name, args, env, health) = {
            let p = self.process(role);
            (
                p.name.clone(),
                p.args.clone(),
                p.env.clone(),
                p.health_url.clone(),
            )
        };
        let mut child = self.command(&name, &args, &env)?.spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "microclaw {name} exited ({status}) before it was ready:\n{}",
                    self.log_tail(&name)
                );
            }
            if self
                .http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "microclaw {name} was not ready within 60 s:\n{}",
                    self.log_tail(&name)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process(role).child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to finish or hand anything back.
    pub async fn kill(&mut self, role: Role) {
        if let Some(mut child) = self.process(role).child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM to every process at once; waits for each to exit, and says how
    /// each ended.
    pub async fn terminate_all(&mut self) -> Vec<(String, Option<ExitStatus>)> {
        let mut processes: Vec<&mut Process> = Vec::new();
        processes.push(&mut self.receiver);
        processes.extend(self.workers.iter_mut());
        processes.push(&mut self.admin);
        for process in &processes {
            if let Some(pid) = process.child.as_ref().and_then(Child::id) {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let mut ended = Vec::new();
        for process in processes {
            let status = match process.child.take() {
                Some(mut child) => {
                    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => {
                            let _ = child.kill().await;
                            None
                        }
                    }
                }
                None => continue,
            };
            ended.push((process.name.clone(), status));
        }
        ended
    }

    /// The largest value of `metric` (any labels) over the workers' `/metrics`.
    pub async fn worker_metric_max(&self, metric: &str) -> f64 {
        let mut max = 0.0f64;
        for worker in &self.workers {
            let url = worker.health_url.replace("/readyz", "/metrics");
            let Ok(response) = self.http.get(&url).send().await else {
                continue;
            };
            let text = response.text().await.unwrap_or_default();
            for line in text.lines().filter(|l| l.starts_with(metric)) {
                if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                    max = max.max(value);
                }
            }
        }
        max
    }

    /// Stops every process; then what their logs say that they must not: a
    /// panic, or any of the secrets the processes were given.
    pub async fn stop(mut self) -> Vec<String> {
        self.terminate_all().await;
        let secrets = [CUSTOM_SECRET, ADMIN_TOKEN, MODEL_KEY];
        let mut findings = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some(line) = text.lines().find(|l| l.contains("panicked at")) {
                findings.push(format!("{name}: {line}"));
            }
            if secrets.iter().any(|secret| text.contains(secret)) {
                findings.push(format!("{name} holds a secret"));
            }
        }
        findings
    }

    /// An admin API call with the operator token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("admin {path}: {status} {text}");
        }
        serde_json::from_str(&text).context("admin answer")
    }
}

/// Which process.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Receiver,
    Worker(usize),
    Admin,
}
