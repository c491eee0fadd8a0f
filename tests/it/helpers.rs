//! `TestApp`: a fresh Postgres database per test with migrations applied, the
//! receiver on port 0, workers started on demand, fakes for the model and the
//! platform on loopback, and one typed helper per endpoint.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use microclaw::{
    channels::standard_webhooks::SigningKey,
    config::Settings,
    deployment::Deployment,
    roles::{self, Shutdown, ShutdownTrigger},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::fakes::{FakeModel, FakePlatform, ReceivedReply};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const CONNECTOR: &str = "web";
/// Signs web chat visitors' tokens (`WEB_CHAT`).
pub const CHAT_KEY: &str = "test-web-chat-key-0123456789abcdef";
/// A web chat connector, for `TestConfig::extra`.
pub const WEB_CHAT: &str = "[[connectors]]
id = \"chat\"
channel = \"webchat\"
agent = \"assistant\"
signing_secret_env = \"TEST_CHAT_KEY\"
";
pub const TELEGRAM_TOKEN: &str = "123456:test-token";
pub const TELEGRAM_SECRET: &str = "mc_tg_secret-0001";
pub const SLACK_SIGNING_SECRET: &str = "microclaw-test-signing-secret-0001";
pub const SLACK_BOT_TOKEN: &str = "xoxb-test-token";
pub const WHATSAPP_APP_SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const TWILIO_AUTH_TOKEN: &str = "microclaw_test_auth_token_00001";
/// The token in the iMessage connector's webhook URL, and the BlueBubbles password.
pub const IMESSAGE_URL_TOKEN: &str = "bb-url-token-0123456789abcdef";
pub const BLUEBUBBLES_PASSWORD: &str = "bb server password";
/// The Discord test vector's key pair (samples/test-vectors.json) and a bot token.
pub const DISCORD_SEED: &str = "6542000d95114779ce56755a57b70b0d8a094b1048181f5712d87995de75b66e";
pub const DISCORD_PUBLIC_KEY: &str =
    "dd6caa325341fe44fbb7f0554cc2b789efb329f6f6f47de655fd764fb750ca04";
pub const DISCORD_BOT_TOKEN: &str = "discord-bot-token";
pub const ADMIN_TOKEN: &str = "mcadm_test_operate_token_0001";
pub const ADMIN_READ_TOKEN: &str = "mcadm_test_read_token_00001";

pub fn postgres_base() -> String {
    std::env::var("MICROCLAW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("MICROCLAW_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The store backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs one async test body on both store backends: `on_both_backends!(name);`
/// after `async fn name(backend: Backend)` defines tests `name::postgres` and
/// `name::sqlite`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
        }
    )+};
}

/// A completed turn answering `events` under `lease` with `reply`: no model
/// calls, no deliveries, no writes; tests override the fields they exercise.
pub fn turn_record<'a>(
    lease: microclaw::store::Lease,
    events: &'a [microclaw::store::PendingEvent],
    reply: &'a str,
) -> microclaw::store::TurnRecord<'a> {
    microclaw::store::TurnRecord {
        turn_id: uuid::Uuid::now_v7(),
        agent: "assistant",
        lease,
        events,
        steps: &[],
        model_calls: &[],
        reply,
        model: Some("m"),
        error: None,
        model_attempts: 1,
        started_at: chrono::Utc::now(),
        trace_id: "t",
        deliveries: Vec::new(),
        delivery_max_attempts: 3,
        lease_ttl: Duration::from_secs(5),
        first_attempt: None,
        memory_writes: &[],
        scheduled: &[],
        compaction: None,
    }
}

/// A fresh database with every migration applied.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub backend: Backend,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        let name = format!("mc_test_{}", uuid::Uuid::new_v4().simple());
        if backend == Backend::Sqlite {
            let path = std::env::temp_dir()
                .join(format!("microclaw-{name}"))
                .join("store.db");
            let url = format!("sqlite://{}", path.display());
            let store = microclaw::store::Store::open(&microclaw::config::DatabaseConfig {
                url: url.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            store.migrate().await.unwrap();
            return TestDb { name, url, backend };
        }
        let admin = PgPool::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("Postgres must run on 127.0.0.1:5432 (see .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", postgres_base());
        let pool = PgPool::connect(&url).await.unwrap();
        microclaw::store::Store::Postgres(pool.clone())
            .migrate()
            .await
            .unwrap();
        pool.close().await;
        TestDb { name, url, backend }
    }
}

/// A connection for the test's own assertions.
pub enum TestPool {
    Postgres(PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// The knobs tests turn; everything else is the built-in default.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub backend: Backend,
    /// The model's wire format: "openai" or "anthropic" (both served by the fake).
    pub provider: &'static str,
    pub turn_mode: &'static str,
    pub redis_url: String,
    /// None: a fresh database. `{db}` in it stands for the fresh database's name.
    pub database_url: Option<String>,
    pub delivery_max_attempts: u32,
    pub retry_schedule: &'static str,
    pub model_attempts: u32,
    pub model_timeout: &'static str,
    pub recovery_window: &'static str,
    pub shutdown_grace: &'static str,
    /// How often workers poll their queues (NOTIFY wakes them between polls).
    pub poll_interval: &'static str,
    pub session_lease: &'static str,
    pub max_body_bytes: usize,
    /// What the agent uses: a model or a route.
    pub agent_model: &'static str,
    /// More lines for the `[models.fake]` table (capabilities, prices).
    pub model_extra: &'static str,
    /// More lines for the `[[agents]]` table (budgets, rules).
    pub agent_extra: &'static str,
    /// More tables appended to the configuration (models, routes, connectors);
    /// `@CALLBACK@` stands for the fake platform's callback URL.
    pub extra: String,
    pub history_messages: i64,
    pub turn_job_attempts: usize,
    /// More lines for the `[receiver]` table (group commit).
    pub receiver_extra: &'static str,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Postgres,
            provider: "openai",
            turn_mode: "collect",
            redis_url: redis_url(),
            database_url: None,
            delivery_max_attempts: 3,
            retry_schedule: r#"["1s"]"#,
            model_attempts: 3,
            model_timeout: "1500ms",
            recovery_window: "8s",
            shutdown_grace: "2s",
            poll_interval: "200ms",
            session_lease: "3s",
            max_body_bytes: 64 * 1024,
            agent_model: "fake",
            model_extra: "",
            agent_extra: "",
            extra: String::new(),
            history_messages: 20,
            turn_job_attempts: 10,
            receiver_extra: "",
        }
    }
}

impl TestConfig {
    pub fn toml(
        &self,
        database_url: &str,
        model: &FakeModel,
        platform: &FakePlatform,
        key_prefix: &str,
    ) -> String {
        format!(
            r#"
[database]
url = "{database_url}"
max_connections = 12
acquire_timeout = "1s"

[redis]
url = "{redis}"
key_prefix = "{key_prefix}"
timeout = "100ms"

[receiver]
listen = "127.0.0.1:0"
max_body_bytes = {max_body}
{receiver_extra}

[worker]
listen = "127.0.0.1:0"
recovery_window = "{window}"
session_lease = "{lease}"
turn_concurrency = 8
delivery_concurrency = 8
poll_interval = "{poll_interval}"
shutdown_grace = "{shutdown_grace}"
turn_mode = "{mode}"
apology = "Sorry, the model is unavailable."
history_messages = {history_messages}
turn_job_attempts = {turn_job_attempts}

[delivery]
max_attempts = {delivery_attempts}
retry_schedule = {schedule}
jitter = 0.1
max_retry_after = "5s"
request_timeout = "2s"

[log]
level = "warn"

[admin]
tokens = [
    {{ token_env = "TEST_ADMIN_TOKEN", scope = "operate" }},
    {{ token_env = "TEST_ADMIN_READ_TOKEN", scope = "read" }},
]

[models.fake]
provider = "{provider}"
base_url = "{model_url}"
api_key_env = "TEST_MODEL_KEY"
model = "fake-gpt"
timeout = "{model_timeout}"
max_attempts = {model_attempts}
min_backoff = "50ms"
max_backoff = "200ms"
max_retry_after = "1s"
{model_extra}

[[agents]]
name = "assistant"
instructions = "You are a test agent."
model = "{agent_model}"
{agent_extra}

[[connectors]]
id = "{CONNECTOR}"
channel = "custom"
agent = "assistant"
signing_secret_env = "TEST_SECRET"
callback_url = "{callback}"
{extra}
"#,
            redis = self.redis_url,
            max_body = self.max_body_bytes,
            receiver_extra = self.receiver_extra,
            window = self.recovery_window,
            shutdown_grace = self.shutdown_grace,
            poll_interval = self.poll_interval,
            lease = self.session_lease,
            mode = self.turn_mode,
            delivery_attempts = self.delivery_max_attempts,
            schedule = self.retry_schedule,
            provider = self.provider,
            model_url = if self.provider == "anthropic" {
                model.anthropic_base_url()
            } else {
                model.base_url.clone()
            },
            model_timeout = self.model_timeout,
            model_attempts = self.model_attempts,
            callback = platform.callback_url,
            agent_model = self.agent_model,
            agent_extra = self.agent_extra,
            model_extra = self.model_extra,
            extra = self.extra.replace("@CALLBACK@", &platform.callback_url),
            history_messages = self.history_messages,
            turn_job_attempts = self.turn_job_attempts,
        )
    }
}

pub fn test_env(name: &str) -> Option<String> {
    match name {
        "TEST_SECRET" => Some(SECRET.into()),
        "TEST_MODEL_KEY" => Some("sk-test".into()),
        "TEST_TG_TOKEN" => Some(TELEGRAM_TOKEN.into()),
        "TEST_TG_SECRET" => Some(TELEGRAM_SECRET.into()),
        "TEST_SLACK_SECRET" => Some(SLACK_SIGNING_SECRET.into()),
        "TEST_SLACK_TOKEN" => Some(SLACK_BOT_TOKEN.into()),
        "TEST_WA_SECRET" => Some(WHATSAPP_APP_SECRET.into()),
        "TEST_WA_TOKEN" => Some("wa-access-token".into()),
        "TEST_WA_VERIFY" => Some("microclaw-verify".into()),
        "TEST_TWILIO_TOKEN" => Some(TWILIO_AUTH_TOKEN.into()),
        "TEST_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "TEST_ADMIN_READ_TOKEN" => Some(ADMIN_READ_TOKEN.into()),
        "TEST_CHAT_KEY" => Some(CHAT_KEY.into()),
        "TEST_BB_TOKEN" => Some(IMESSAGE_URL_TOKEN.into()),
        "TEST_BB_PASSWORD" => Some(BLUEBUBBLES_PASSWORD.into()),
        "TEST_DISCORD_TOKEN" => Some(DISCORD_BOT_TOKEN.into()),
        "TEST_TEAMS_SECRET" => Some("teams-client-secret".into()),
        _ => None,
    }
}

/// One inbound message of the custom channel.
#[derive(Debug, Clone)]
pub struct TestMessage {
    pub id: String,
    pub sender: String,
    pub conversation: String,
    pub text: String,
    pub group: bool,
    pub attachments: Vec<serde_json::Value>,
}

impl TestMessage {
    pub fn direct(id: &str, sender: &str, text: &str) -> Self {
        Self {
            id: id.into(),
            sender: sender.into(),
            conversation: format!("dm-{sender}"),
            text: text.into(),
            group: false,
            attachments: Vec::new(),
        }
    }

    pub fn with_image(mut self, url: &str) -> Self {
        self.attachments.push(json!({
            "url": url, "content_type": "image/png", "name": "photo.png", "size": 1234
        }));
        self
    }

    pub fn body(&self) -> String {
        json!({
            "type": "message.created",
            "timestamp": "2026-01-01T00:01:01.000Z",
            "data": {
                "message_id": self.id,
                "conversation_id": self.conversation,
                "conversation_type": if self.group { "group" } else { "direct" },
                "thread_id": null,
                "sender": {"id": self.sender, "display_name": "Tester"},
                "text": self.text,
                "attachments": self.attachments,
                "sent_at": "2026-01-01T00:01:00.900Z"
            }
        })
        .to_string()
    }
}

pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub pool: TestPool,
    pub deployment: Arc<Deployment>,
    pub model: FakeModel,
    pub platform: FakePlatform,
    pub http: reqwest::Client,
    pub config_toml: String,
    pub key_prefix: String,
    receiver: Option<(ShutdownTrigger, JoinHandle<anyhow::Result<()>>)>,
    workers: Vec<(ShutdownTrigger, JoinHandle<anyhow::Result<()>>)>,
}

impl TestApp {
    /// The receiver only; start workers with [`TestApp::start_worker`].
    pub async fn spawn(config: TestConfig) -> Self {
        microclaw::install_tls_provider();
        let model = FakeModel::start().await;
        let platform = FakePlatform::start(SECRET).await;
        let db = TestDb::create(config.backend).await;
        let database_url = config
            .database_url
            .as_ref()
            .map_or_else(|| db.url.clone(), |url| url.replace("{db}", &db.name));
        let key_prefix = format!("test-{}", db.name);
        let config_toml = config.toml(&database_url, &model, &platform, &key_prefix);
        let settings = Settings::from_toml(&config_toml, &test_env).expect("test config is valid");
        // In-process roles log only; trace export is tested against a real process.
        drop(microclaw::telemetry::init(
            &settings.log,
            &Default::default(),
        ));
        let deployment = Deployment::new(settings).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = Shutdown::new();
        // As `microclaw all` serves it: the webhooks and the admin API.
        let app = microclaw::receiver::router(deployment.clone())
            .merge(microclaw::admin::router(deployment.clone()));
        let receiver = tokio::spawn({
            let deployment = deployment.clone();
            async move { roles::serve_http(app, listener, shutdown, &deployment).await }
        });
        let pool = match db.backend {
            Backend::Postgres => TestPool::Postgres(PgPool::connect(&db.url).await.unwrap()),
            Backend::Sqlite => TestPool::Sqlite(
                sqlx::SqlitePool::connect(&format!("{}?mode=rw", db.url))
                    .await
                    .unwrap(),
            ),
        };
        TestApp {
            address,
            db,
            pool,
            deployment,
            model,
            platform,
            http: reqwest::Client::new(),
            config_toml,
            key_prefix,
            receiver: Some((trigger, receiver)),
            workers: Vec::new(),
        }
    }

    pub async fn spawn_with_worker(config: TestConfig) -> Self {
        let mut app = Self::spawn(config).await;
        app.start_worker();
        app
    }

    /// Starts one more in-process worker (its own worker id, its own queue listeners).
    pub fn start_worker(&mut self) {
        let deployment = Deployment::with_store(
            self.deployment.settings.clone(),
            self.deployment.store.clone(),
        )
        .unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(roles::run_worker(deployment, None, shutdown));
        self.workers.push((trigger, handle));
    }

    /// Starts one more worker with its own store, on `database_url` (the test
    /// database's name as `{db}`): a worker behind a relay the test controls.
    pub async fn start_worker_on(&mut self, database_url: &str) {
        let url = database_url.replace("{db}", &self.db.name);
        let toml = self.config_toml.replace(
            &format!("url = \"{}\"", self.db.url),
            &format!("url = \"{url}\""),
        );
        assert_ne!(
            toml, self.config_toml,
            "the test database's URL is configured"
        );
        let settings = Settings::from_toml(&toml, &test_env).expect("test config is valid");
        let deployment = Deployment::new(settings).await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(roles::run_worker(deployment, None, shutdown));
        self.workers.push((trigger, handle));
    }

    /// Registers two apalis consumers of queue `queue.a`, `w1` and `w2`, for
    /// tests that run the queue's SQL by hand.
    pub async fn register_consumers_w1_w2(&self) {
        self.execute(
            "INSERT INTO apalis.workers (id, worker_type, storage_name)
             VALUES ('w1', 'queue.a', 'test'), ('w2', 'queue.a', 'test')",
        )
        .await;
    }

    pub async fn stop_workers(&mut self) {
        for (trigger, handle) in self.workers.drain(..) {
            trigger.trigger();
            handle.await.unwrap().unwrap();
        }
    }

    pub async fn post_message(&self, message: &TestMessage) -> reqwest::Response {
        self.post_signed(
            CONNECTOR,
            &message.body(),
            &format!("wh-{}", message.id),
            chrono::Utc::now().timestamp(),
        )
        .await
    }

    pub async fn post_signed(
        &self,
        connector: &str,
        body: &str,
        webhook_id: &str,
        timestamp: i64,
    ) -> reqwest::Response {
        self.post_signed_at(&self.address, connector, body, webhook_id, timestamp)
            .await
    }

    /// Posts a correctly signed webhook to the receiver at `base` (another process).
    pub async fn post_signed_at(
        &self,
        base: &str,
        connector: &str,
        body: &str,
        webhook_id: &str,
        timestamp: i64,
    ) -> reqwest::Response {
        let signature =
            SigningKey::parse(SECRET)
                .unwrap()
                .sign(webhook_id, timestamp, body.as_bytes());
        self.http
            .post(format!("{base}/hooks/{connector}"))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Polls until the platform received `n` replies, or panics at the deadline.
    pub async fn wait_for_replies(&self, n: usize, deadline: Duration) -> Vec<ReceivedReply> {
        let started = Instant::now();
        loop {
            let replies = self.platform.replies();
            if replies.len() >= n {
                return replies;
            }
            assert!(
                started.elapsed() < deadline,
                "expected {n} replies within {deadline:?}, got {}: {replies:?}",
                replies.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until no job is waiting, running or due for a retry.
    pub async fn drain(&self, deadline: Duration) {
        let started = Instant::now();
        loop {
            let open = self
                .count(
                    "SELECT count(*) FROM apalis.jobs
                      WHERE status IN ('Pending', 'Queued', 'Running')
                         OR (status = 'Failed' AND attempts < max_attempts)",
                )
                .await;
            if open == 0 {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "queues did not drain within {deadline:?}: {open} open jobs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Postgres connection of a Postgres-only test.
    pub fn pg(&self) -> &PgPool {
        match &self.pool {
            TestPool::Postgres(pool) => pool,
            TestPool::Sqlite(_) => panic!("this test runs on Postgres only"),
        }
    }

    /// The SQL for this backend: the queue table is `apalis.jobs` on Postgres and
    /// `Jobs` on SQLite, with the same columns and statuses.
    fn dialect(&self, sql: &str) -> String {
        match self.pool {
            TestPool::Postgres(_) => sql.to_owned(),
            TestPool::Sqlite(_) => sql.replace("apalis.jobs", "Jobs"),
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(self.dialect(sql));
        match &self.pool {
            TestPool::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            TestPool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    /// Runs a statement (test set-up that no API offers, such as ageing rows).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(self.dialect(sql));
        match &self.pool {
            TestPool::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            TestPool::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap();
    }

    /// Every delivery attempt as `attempt:outcome:status_code`, in order.
    pub async fn attempt_history(&self) -> Vec<String> {
        self.strings(
            "SELECT attempt || ':' || outcome || ':' || coalesce(status_code, 0)
               FROM delivery_attempts ORDER BY delivery_id, attempt",
        )
        .await
    }

    /// The first column of every row, as text.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        let sql = sqlx::AssertSqlSafe(self.dialect(sql));
        match &self.pool {
            TestPool::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
            TestPool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        }
    }

    pub async fn wait_until(&self, sql: &str, expected: i64, deadline: Duration) {
        let started = Instant::now();
        loop {
            let value = self.count(sql).await;
            if value == expected {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "`{sql}` is {value}, expected {expected} within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes this app's configuration to a file and runs the real binary on it,
    /// with `receiver.listen` set to `listen` when given.
    pub fn spawn_binary(&self, args: &[&str], listen: Option<&str>) -> tokio::process::Child {
        self.binary(args, listen)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Runs the binary to completion with this app's configuration: (success, stdout, stderr).
    pub async fn run_binary(&self, args: &[&str]) -> (bool, String, String) {
        let output = self.binary(args, None).output().await.unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn binary(&self, args: &[&str], listen: Option<&str>) -> tokio::process::Command {
        let dir = std::env::temp_dir().join(format!("microclaw-{}", self.db.name));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", uuid::Uuid::new_v4().simple()));
        let config = match listen {
            Some(address) => self.config_toml.replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{address}\""),
                1,
            ),
            None => self.config_toml.clone(),
        };
        std::fs::write(&path, config).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_microclaw"));
        command
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("DATABASE_URL")
            .env("TEST_SECRET", SECRET)
            .env("TEST_MODEL_KEY", "sk-test")
            .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TEST_ADMIN_READ_TOKEN", ADMIN_READ_TOKEN)
            .env("TEST_CHAT_KEY", CHAT_KEY)
            .env("RUST_LOG", "warn");
        command
    }

    /// Starts `microclaw all` from this app's configuration on a free port with
    /// the extra environment `envs`, its stdout piped; waits until it serves.
    /// Returns the process and its base URL.
    pub async fn start_all(&self, envs: &[(&str, &str)]) -> (tokio::process::Child, String) {
        let listen = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        };
        let child = self
            .binary(&["all"], Some(&listen))
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://{listen}");
        wait_until_serving(&self.http, &base).await;
        (child, base)
    }

    pub async fn stop(mut self) {
        self.stop_workers().await;
        if let Some((trigger, handle)) = self.receiver.take() {
            trigger.trigger();
            handle.await.unwrap().unwrap();
        }
        // After the roles stopped: it holds a SQLite test's store.
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("microclaw-{}", self.db.name)))
            .ok();
        if self.db.backend == Backend::Postgres {
            if let TestPool::Postgres(pool) = &self.pool {
                pool.close().await;
            }
            // Best effort: a test's database is dropped when it ends.
            if let Ok(admin) = PgPool::connect(&format!("{}/postgres", postgres_base())).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.db.name
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
        }
    }
}

/// Polls `{base}/healthz` until a process answers, or panics after 20 s.
pub async fn wait_until_serving(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "nothing serves {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
