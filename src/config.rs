//! Configuration: a TOML file, `MICROCLAW_…` environment overrides, secrets from
//! the environment.
//!
//! Loading happens in two steps. [`RawConfig`] is what the file and the environment
//! say, deserialized with serde defaults for everything optional. [`Settings::resolve`]
//! then validates it as a whole and reads the secrets the file names (`*_env` keys
//! hold the *name* of an environment variable, never the secret itself). Every
//! problem is collected with the key that holds it, so `microclaw config check`
//! can print them all at once, and the runtime refuses to start on any of them.
//!
//! Boot-time invariant enforced here: the worst-case time a turn can spend on the
//! model (timeout × attempts plus the waits between them) must fit inside the
//! worker recovery window, and the session lease must expire within it too, so a
//! dead worker's turn is always rerun by the recovery the queue promises.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// The built-in defaults, fully commented; also shipped as `microclaw.example.toml`.
pub const EXAMPLE_CONFIG: &str = include_str!("../microclaw.example.toml");

/// A problem in the configuration, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A duration written as integer seconds (`30`) or with a unit (`250ms`, `30s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Secs(u64),
            Text(String),
        }
        let text = match Repr::deserialize(deserializer)? {
            Repr::Secs(s) => s.to_string(),
            Repr::Text(text) => text,
        };
        parse_span(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a duration as configuration writes it (`30`, `250ms`, `30s`, `5m`, `1h`).
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 250ms, 30s, 5m or 1h"))?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    }
    .filter(|span| *span <= LONGEST_SPAN)
    .ok_or_else(|| format!("`{text}` is longer than ten years"))
}

/// The longest duration configuration takes: arithmetic on settings (a grace
/// period times four, a deadline from now) cannot overflow below it.
const LONGEST_SPAN: Duration = Duration::from_secs(10 * 365 * 86_400);

// ---------------------------------------------------------------------------
// What the file says
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub receiver: ReceiverConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub analytics: AnalyticsConfig,
    #[serde(default)]
    pub tools: ToolsConfig,
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before the receiver answers 503.
    pub acquire_timeout: Span,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/microclaw".into(),
            max_connections: 20,
            acquire_timeout: Span::secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Empty disables Redis; everything still works (Postgres is the source of truth).
    pub url: String,
    pub key_prefix: String,
    /// How long the receiver's fast dedup cache remembers an event.
    pub dedup_ttl: Span,
    /// A Redis call slower than this is skipped (Postgres decides instead).
    pub timeout: Span,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "microclaw".into(),
            dedup_ttl: Span::secs(24 * 3600),
            timeout: Span::millis(200),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    /// Accepted clock skew of signed webhook timestamps, in both directions.
    pub signature_tolerance: Span,
    pub group_commit: GroupCommitConfig,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 1024 * 1024,
            signature_tolerance: Span::secs(300),
            group_commit: GroupCommitConfig::default(),
        }
    }
}

/// Concurrent webhooks written in one transaction (see `receiver::group_commit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupCommitConfig {
    /// Most inbound messages in one transaction; 1 writes each webhook alone.
    pub max_batch: usize,
    /// How long a batch waits for more members before it is written, under
    /// traffic only (the previous webhook came within `max_wait`, or another
    /// batch is being written); on a quiet receiver a webhook is written at once.
    pub max_wait: Span,
    /// Batches being written at the same time (each holds a database connection).
    pub max_in_flight: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 128,
            max_wait: Span::millis(2),
            max_in_flight: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnMode {
    /// Messages that arrive while a turn runs are answered together in the next turn.
    Collect,
    /// Every message gets its own turn, in arrival order.
    PerMessage,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Address of the worker's health endpoints.
    pub listen: String,
    /// A dead worker's jobs are picked up again within this window.
    pub recovery_window: Span,
    /// How long a session's ordering lease lives without being extended.
    pub session_lease: Span,
    pub turn_concurrency: usize,
    pub delivery_concurrency: usize,
    /// Fallback poll for delayed jobs; new jobs arrive by LISTEN/NOTIFY at once.
    pub poll_interval: Span,
    /// On SIGTERM, in-flight jobs get this long to finish; the rest go back to the queue.
    pub shutdown_grace: Span,
    pub turn_mode: TurnMode,
    /// Messages of recent history given to the model.
    pub history_messages: i64,
    /// Sent to the user when the model keeps failing.
    pub apology: String,
    /// Queue-level attempts of a turn job (database errors, crashes).
    pub turn_job_attempts: usize,
    /// Queue jobs that finished for good are deleted this long after they
    /// finished, by the maintenance pass; 0 keeps them.
    pub finished_jobs_kept_for: Span,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8081".into(),
            recovery_window: Span::secs(300),
            session_lease: Span::secs(60),
            turn_concurrency: 32,
            delivery_concurrency: 32,
            poll_interval: Span::secs(1),
            shutdown_grace: Span::secs(30),
            turn_mode: TurnMode::Collect,
            history_messages: 20,
            apology: "Sorry, I can't answer right now. Please try again in a moment.".into(),
            turn_job_attempts: 10,
            finished_jobs_kept_for: Span::secs(86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts before a delivery is dead (the first send counts).
    pub max_attempts: u32,
    /// Wait before attempt n+1 is `retry_schedule[n-1]` (the last entry repeats), ± jitter.
    pub retry_schedule: Vec<Span>,
    /// Fraction of each wait added or removed at random (0.2 = ±20 %).
    pub jitter: f64,
    /// A platform's Retry-After is honoured up to this long.
    pub max_retry_after: Span,
    /// Rate-limited attempts do not use up `max_attempts`; after this many the
    /// delivery is dead all the same.
    pub max_rate_limited: u32,
    pub request_timeout: Span,
    /// A reply waits for an earlier pending reply to the same conversation for
    /// at most this long after that one was created (0: no waiting).
    pub order_window: Span,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_schedule: [5, 30, 120, 600, 1800, 3600, 7200]
                .into_iter()
                .map(Span::secs)
                .collect(),
            jitter: 0.2,
            max_retry_after: Span::secs(3600),
            max_rate_limited: 20,
            request_timeout: Span::secs(15),
            order_window: Span::secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `microclaw=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,sqlx=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions and every compatible server (Qwen, vLLM, Ollama, llama.cpp).
    Openai,
    /// Anthropic Messages API (Claude).
    Anthropic,
    /// Deterministic, offline; for tests and first runs.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: ProviderKind,
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable that holds the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// More keys for the same model (rotated on 429, benched on auth or billing errors).
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// Tokens the model accepts (prompt and answer).
    #[serde(default = "default_context_window")]
    pub context_window: u64,
    /// How prompts are counted against the window: `auto` (OpenAI's published
    /// encoding for OpenAI model names, else a conservative estimate),
    /// `o200k_base`, `cl100k_base` or `estimate`.
    #[serde(default)]
    pub tokenizer: crate::memory::tokens::TokenizerChoice,
    /// Whether the model accepts images.
    #[serde(default)]
    pub vision: bool,
    /// Whether the model can call tools.
    #[serde(default = "default_true")]
    pub tools: bool,
    /// USD per million input tokens.
    #[serde(default)]
    pub input_price: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_price: f64,
    #[serde(default)]
    pub model: String,
    #[serde(default = "default_model_timeout")]
    pub timeout: Span,
    /// Calls per turn, the first included.
    #[serde(default = "default_model_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_min_backoff")]
    pub min_backoff: Span,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Span,
    /// A Retry-After longer than this is not waited for: the call fails instead.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: Span,
    /// Extra top-level fields sent with every request (temperature, enable_thinking, …).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Extra HTTP headers sent with every request (e.g. OpenAI-Organization, anthropic-beta).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Output token limit of one call (Anthropic requires one).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Model steps of one turn: each tool round trip is a step.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
}

fn default_context_window() -> u64 {
    128_000
}
fn default_true() -> bool {
    true
}

/// How a route picks among its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteStrategy {
    /// In the listed order; the next one when a candidate fails.
    Failover,
    /// Cheapest first by the models' price tables.
    LowestCost,
    /// Fastest first by the recent average latency of each candidate.
    LowestLatency,
}

/// An ordered set of models an agent's turns may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default = "default_strategy")]
    pub strategy: RouteStrategy,
    /// Keys of `[models]`.
    pub candidates: Vec<String>,
    /// Appended to a reply served by a fallback candidate (empty: nothing).
    #[serde(default)]
    pub fallback_note: String,
}

fn default_strategy() -> RouteStrategy {
    RouteStrategy::Failover
}

/// Layered memory: how a turn's context is assembled and how sessions are kept
/// small (see `memory`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Shares of the context budget (the model's window minus its reply reserve,
    /// the instructions and tools) each layer may use at most; the recent turns
    /// get the rest.
    pub notes_share: f64,
    pub facts_share: f64,
    pub recall_share: f64,
    pub summary_share: f64,
    /// Facts (per person) and notes (per conversation) loaded at most.
    pub max_facts: i64,
    /// Long-term items recalled into each turn at most.
    pub recall_items: i64,
    /// Compaction: when more than `compact_after` messages follow the summary,
    /// all but the newest `keep_recent` are folded into it.
    pub compact_after: i64,
    pub keep_recent: i64,
    /// In group conversations: `sender` uses each sender's own facts for their
    /// messages; `off` uses no person's facts.
    pub group_user_facts: GroupFacts,
    /// Transcript messages older than this many days are deleted; 0 keeps them.
    pub retention_days: u32,
    /// How often each worker runs the maintenance passes: retention, and the
    /// purge of finished queue jobs (`worker.finished_jobs_kept_for`).
    pub maintenance_interval: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupFacts {
    Sender,
    Off,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            notes_share: 0.05,
            facts_share: 0.1,
            recall_share: 0.1,
            summary_share: 0.15,
            max_facts: 50,
            recall_items: 5,
            compact_after: 40,
            keep_recent: 12,
            group_user_facts: GroupFacts::Sender,
            retention_days: 0,
            maintenance_interval: Span::secs(3600),
        }
    }
}

/// The admin API (`microclaw admin`, also served by `all` and `dev`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the `admin` role serves `/admin/v1` (`all` serves it on receiver.listen).
    pub listen: String,
    /// Bearer tokens, each read from an environment variable, with its scope.
    pub tokens: Vec<AdminTokenConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8082".into(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    pub token_env: String,
    pub scope: AdminScope,
}

/// What a token may do: `read` sees everything, `operate` may also retry,
/// discard, link and forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminScope {
    Read,
    Operate,
}

/// The resolved admin settings: tokens read from the environment.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: String,
    pub tokens: Vec<(SecretString, AdminScope)>,
}

/// Linking a person's accounts with one-time codes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// How long a link code is valid.
    pub link_code_ttl: Span,
    /// Failed code redemptions allowed per account within `link_failure_window`.
    pub link_max_failures: u32,
    pub link_failure_window: Span,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            link_code_ttl: Span::secs(600),
            link_max_failures: 5,
            link_failure_window: Span::secs(900),
        }
    }
}

/// Trace export. Spans of every message's path (webhook, turn, model calls,
/// delivery attempts) go to an OpenTelemetry collector when an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`
    /// (spans are POSTed to `{endpoint}/v1/traces` as protobuf). Empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// How long spans wait to be exported together.
    pub export_interval: Span,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "microclaw".into(),
            export_interval: Span::secs(5),
        }
    }
}

/// The analytics sink: turn and delivery events streamed to ClickHouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// ClickHouse's HTTP interface, e.g. `http://clickhouse:8123`. Empty: off.
    pub clickhouse_url: String,
    pub database: String,
    /// Created on first use when missing.
    pub table: String,
    /// Environment variables holding ClickHouse's user and password (basic auth).
    pub user_env: Option<String>,
    pub password_env: Option<String>,
    /// Events written in one INSERT at most.
    pub batch_size: usize,
    /// How long an event waits for its batch to fill.
    pub flush_interval: Span,
    /// Events held while ClickHouse is slow or down; past it new events are
    /// dropped and counted (`microclaw_analytics_events_dropped_total`).
    pub buffer: usize,
    /// Whether events carry the reply text. Off: ids, counts and timings only.
    pub include_text: bool,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            clickhouse_url: String::new(),
            database: "default".into(),
            table: "microclaw_events".into(),
            user_env: None,
            password_env: None,
            batch_size: 1000,
            flush_interval: Span::secs(1),
            buffer: 10_000,
            include_text: false,
        }
    }
}

/// Health and limits shared by every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Consecutive failures that open a candidate's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its candidate before letting one probe through.
    pub breaker_cooldown: Span,
    /// How long a key is benched after a billing, quota or auth error.
    pub key_cooldown: Span,
    /// One model step (retries and failover included) ends by this deadline.
    pub step_deadline: Span,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            breaker_failures: 5,
            breaker_cooldown: Span::secs(30),
            key_cooldown: Span::secs(3600),
            step_deadline: Span::secs(120),
        }
    }
}

fn default_max_tokens() -> u32 {
    1024
}
fn default_max_steps() -> u32 {
    4
}

impl ProviderKind {
    /// The API's public base URL, used when `base_url` is not set.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Mock => "",
        }
    }
}

fn default_model_timeout() -> Span {
    Span::secs(60)
}
fn default_model_attempts() -> u32 {
    3
}
fn default_min_backoff() -> Span {
    Span::millis(500)
}
fn default_max_backoff() -> Span {
    Span::secs(10)
}
fn default_max_retry_after() -> Span {
    Span::secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub name: String,
    #[serde(default)]
    pub instructions: String,
    /// Key of an entry in `[models]`.
    pub model: String,
    /// Built-in tools the model may call.
    #[serde(default = "default_tools")]
    pub tools: Vec<String>,
    /// Rules that pick another model or route by channel or connector; the first
    /// that matches wins.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Tokens (input and output) the agent may use per UTC day; 0: no limit.
    #[serde(default)]
    pub daily_token_budget: u64,
    /// Tokens one person may use with this agent per UTC day; 0: no limit.
    #[serde(default)]
    pub daily_user_token_budget: u64,
    /// Sent instead of calling the model once a budget is used up.
    #[serde(default = "default_budget_message")]
    pub budget_message: String,
    /// HTTP functions the model may call: `[[agents.functions]]`.
    #[serde(default)]
    pub functions: Vec<FunctionConfig>,
    /// MCP servers whose tools the model may call: `[[agents.mcp_servers]]`.
    #[serde(default)]
    pub mcp_servers: Vec<McpServerConfig>,
}

/// An MCP server reached over the Streamable HTTP transport; its tools appear to
/// the model as `<name>__<tool>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Letters, digits and - (it prefixes the tool names).
    pub name: String,
    /// The server's MCP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: String,
    /// How long one request may take; `tools.default_timeout` when unset.
    #[serde(default)]
    pub timeout: Option<Span>,
    /// Env var holding a bearer token for the server, if it wants one.
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<SecretString>,
}

/// An HTTP function tool: the model's arguments, checked against `parameters`,
/// are POSTed to `url` signed with the Standard Webhooks scheme; the JSON answer
/// goes back to the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// The tool's name as the model sees it (letters, digits, _ and -).
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    #[serde(default = "empty_object_schema")]
    pub parameters: serde_json::Value,
    pub url: String,
    /// How long one call may take; `tools.default_timeout` when unset.
    #[serde(default)]
    pub timeout: Option<Span>,
    /// Env var holding the `whsec_…` secret calls are signed with.
    pub secret_env: String,
    /// The secret, read from `secret_env` when the configuration is resolved.
    #[serde(skip)]
    pub secret: Option<SecretString>,
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Limits and egress rules for every tool that reaches out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Hosts tool calls may reach (`api.example.com`, or `*.example.com` for its
    /// subdomains); empty: any public host.
    pub allowed_hosts: Vec<String>,
    /// Private, loopback and link-local addresses (or networks, CIDR) tools may
    /// reach anyway; everything else of that kind is refused, also after a
    /// redirect or a DNS answer.
    pub allowed_private_networks: Vec<String>,
    /// Tool calls one turn may make; later calls get an error the model can explain.
    pub max_calls_per_turn: u32,
    /// Longest tool result kept and given to the model, in characters.
    pub max_result_chars: usize,
    /// A function's timeout when it sets none.
    pub default_timeout: Span,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_private_networks: Vec::new(),
            max_calls_per_turn: 8,
            max_result_chars: 16_000,
            default_timeout: Span::secs(10),
        }
    }
}

fn default_budget_message() -> String {
    "I've reached my usage limit for today. Please try again tomorrow.".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A channel kind, e.g. "custom".
    #[serde(default)]
    pub channel: Option<String>,
    /// A connector id.
    #[serde(default)]
    pub connector: Option<String>,
    /// A key of `[models]` or `[routes]`.
    pub model: String,
}

impl AgentConfig {
    /// The model or route that answers on `connector` of kind `channel`.
    pub fn route_for(&self, channel: &str, connector: &str) -> &str {
        self.rules
            .iter()
            .find(|rule| {
                rule.channel.as_deref().is_none_or(|c| c == channel)
                    && rule.connector.as_deref().is_none_or(|c| c == connector)
            })
            .map_or(self.model.as_str(), |rule| rule.model.as_str())
    }
}

fn default_tools() -> Vec<String> {
    crate::tools::BUILTIN
        .iter()
        .map(|t| t.to_string())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Any surface a user builds: Standard Webhooks in, signed JSON callback out.
    Custom,
    /// Telegram Bot API: webhook updates in, `sendMessage` out.
    Telegram,
    /// Slack Events API in, `chat.postMessage` out.
    Slack,
    /// WhatsApp Cloud API: Meta webhooks in, Graph `/messages` out.
    Whatsapp,
    /// SMS through Twilio: form webhooks in, the Messages API out.
    Twilio,
    /// The built-in web chat: a page and a JSON/SSE API served by the receiver.
    Webchat,
    /// iMessage through a self-hosted BlueBubbles server: webhooks in, its REST API out.
    Imessage,
    /// Discord: slash-command interactions in (and gateway messages, through the
    /// `discord-gateway` role), interaction follow-ups and channel messages out.
    Discord,
    /// Microsoft Teams through the Bot Framework: JWT-authenticated activities in,
    /// the Connector API out.
    Teams,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Custom => "custom",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Slack => "slack",
            ChannelKind::Whatsapp => "whatsapp",
            ChannelKind::Twilio => "twilio",
            ChannelKind::Webchat => "webchat",
            ChannelKind::Imessage => "imessage",
            ChannelKind::Discord => "discord",
            ChannelKind::Teams => "teams",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub id: String,
    pub channel: ChannelKind,
    /// Name of the agent that answers on this connector.
    pub agent: String,
    /// Env var holding the secret inbound webhooks are signed with (custom: a
    /// `whsec_…` secret; Slack: the app's signing secret; WhatsApp: the Meta app secret;
    /// Twilio: the account's Auth Token, which also authenticates sends; web chat:
    /// the key, 32 characters or more, that signs visitors' session tokens).
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Where replies are POSTed (custom channel).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Env var holding the `whsec_…` secret replies are signed with; defaults to the
    /// inbound signing secret.
    #[serde(default)]
    pub callback_secret_env: Option<String>,
    /// Env var holding the API token (Telegram bot token; Slack `xoxb-…`; WhatsApp
    /// system-user access token; iMessage: the BlueBubbles server password).
    #[serde(default)]
    pub bot_token_env: Option<String>,
    /// Env var holding the webhook secret token given to `setWebhook` (Telegram), or
    /// the token in the webhook URL's `?token=` (iMessage).
    #[serde(default)]
    pub secret_token_env: Option<String>,
    /// Env var holding the verify token of the webhook subscription handshake (WhatsApp).
    #[serde(default)]
    pub verify_token_env: Option<String>,
    /// The webhook URL exactly as configured at the platform (Twilio signs it).
    #[serde(default)]
    pub public_url: Option<String>,
    /// The account the connector sends as (Twilio `AC…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    /// The platform API's base URL (tests point it at a fake; iMessage: the
    /// BlueBubbles server, required).
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// The application's public key, hex, from the Developer Portal (Discord): it
    /// verifies the Ed25519 signature of every interaction.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The slash command the agent answers (Discord), e.g. `ask` for `/ask`.
    #[serde(default)]
    pub command: Option<String>,
    /// Also answer direct messages and mentions, over the Gateway websocket held
    /// by the `discord-gateway` role (Discord; needs the bot token and the
    /// Message Content intent).
    #[serde(default)]
    pub gateway: bool,
    /// The Gateway's URL (tests point it at a fake).
    #[serde(default)]
    pub gateway_url: Option<String>,
    /// The bot's Microsoft App ID (Teams): the audience of inbound tokens and the
    /// client id of outbound ones.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Where the Bot Framework publishes its signing keys (Teams; tests serve
    /// their own).
    #[serde(default)]
    pub openid_metadata_url: Option<String>,
    /// The OAuth token endpoint (Teams; for a single-tenant bot,
    /// `https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Hosts the bot's token may be sent to (Teams; a host or its subdomains).
    #[serde(default)]
    pub service_url_hosts: Option<Vec<String>>,
    /// The bot's username: in groups it answers only messages that mention it (Telegram).
    #[serde(default)]
    pub bot_username: Option<String>,
}

// ---------------------------------------------------------------------------
// Validated settings
// ---------------------------------------------------------------------------

/// A validated configuration with its secrets read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub receiver: ReceiverConfig,
    pub worker: WorkerConfig,
    pub delivery: DeliveryConfig,
    pub log: LogConfig,
    pub models: BTreeMap<String, ModelSettings>,
    /// Every route by name: the `[routes]` and one single-candidate route per model.
    pub routes: BTreeMap<String, RouteConfig>,
    pub router: RouterConfig,
    pub memory: MemoryConfig,
    pub identity: IdentityConfig,
    pub admin: AdminSettings,
    pub telemetry: TelemetryConfig,
    pub analytics: AnalyticsSettings,
    pub tools: ToolsConfig,
    pub agents: BTreeMap<String, AgentConfig>,
    pub connectors: BTreeMap<String, ConnectorSettings>,
}

/// The analytics sink's configuration with its credentials read.
#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    pub config: AnalyticsConfig,
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub name: String,
    pub config: ModelConfig,
    /// (environment variable name as the key's id, key), in rotation order.
    pub api_keys: Vec<(String, SecretString)>,
}

impl ModelSettings {
    /// The longest one model step of a turn can take: every attempt timing out, and
    /// the longest permitted wait between attempts. (A turn with tool calls runs
    /// several steps; its session lease is extended throughout, and the queue only
    /// recovers jobs of workers that stopped heartbeating.)
    pub fn worst_case_model_time(&self) -> Duration {
        let attempts = self.config.max_attempts.max(1);
        let wait = self.config.max_backoff.0.max(self.config.max_retry_after.0);
        self.config.timeout.0 * attempts + wait * (attempts - 1)
    }
}

#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub config: ConnectorConfig,
    pub signing_secret: Option<SecretString>,
    pub callback_secret: Option<SecretString>,
    pub bot_token: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub verify_token: Option<SecretString>,
}

impl ConnectorSettings {
    /// The platform API's base URL: `api_base_url` when set, else `default`.
    pub fn api_base_url(&self, default: &str) -> String {
        self.config
            .api_base_url
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_owned()
    }
}

fn url_token(value: &str) -> Result<(), String> {
    if value.len() < 24
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(
            "must be 24 or more letters, digits, - or _ (it goes in the webhook URL)".into(),
        );
    }
    Ok(())
}

fn token_key(value: &str) -> Result<(), String> {
    if value.len() < 32 {
        return Err("must be at least 32 characters (it signs visitors' session tokens)".into());
    }
    Ok(())
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn whsec_secret(value: &str) -> Result<(), String> {
    crate::channels::standard_webhooks::SigningKey::parse(value)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn telegram_secret_token(value: &str) -> Result<(), String> {
    let valid = (1..=256).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err("a Telegram secret token is 1-256 characters of A-Z a-z 0-9 _ -".into())
    }
}

fn non_empty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err("is empty".into())
    } else {
        Ok(())
    }
}

/// Where the environment comes from: the process, or a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl RawConfig {
    /// The built-in defaults (`microclaw.example.toml`), the file on top (if it
    /// exists; tables merge, arrays such as `[[connectors]]` replace the defaults'),
    /// then `MICROCLAW_SECTION__KEY` environment overrides.
    /// `DATABASE_URL` is honoured as the conventional spelling of `database.url`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_layers(path, None)
    }

    /// Like [`RawConfig::load`] with a `preset` between the defaults and the file
    /// (`microclaw dev` uses one). With a preset, `DATABASE_URL` is not consulted:
    /// the preset chose the store.
    pub fn load_layers(path: &Path, preset: Option<&str>) -> Result<Self, ConfigErrors> {
        let mut figment = Figment::from(Toml::string(EXAMPLE_CONFIG));
        if let Some(preset) = preset {
            figment = figment.merge(Toml::string(preset));
        }
        if path.exists() {
            figment = figment.merge(Toml::file_exact(path));
        } else if path != Path::new(DEFAULT_PATH) {
            return Err(ConfigErrors(vec![ConfigProblem {
                key: "--config".into(),
                message: format!("file {} does not exist", path.display()),
            }]));
        }
        if preset.is_none()
            && let Ok(url) = std::env::var("DATABASE_URL")
        {
            figment = figment.merge(("database.url", url));
        }
        // Only `SECTION__KEY` variables are configuration; MICROCLAW_CUSTOM_SECRET and
        // the like are secrets that `*_env` keys point at.
        figment = figment.merge(
            Env::prefixed("MICROCLAW_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        Self::extract(figment)
    }

    /// The built-in defaults with `text` on top (no environment overrides).
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::extract(Figment::from(Toml::string(EXAMPLE_CONFIG)).merge(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigErrors> {
        figment.extract().map_err(|errors| {
            ConfigErrors(
                errors
                    .into_iter()
                    .map(|e| ConfigProblem {
                        key: if e.path.is_empty() {
                            "(top level)".into()
                        } else {
                            e.path.join(".")
                        },
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })
    }
}

pub const DEFAULT_PATH: &str = "microclaw.toml";

impl Settings {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::resolve(RawConfig::load(path)?, &process_env)
    }

    pub fn from_toml(text: &str, env: EnvLookup<'_>) -> Result<Self, ConfigErrors> {
        Self::resolve(RawConfig::from_toml(text)?, env)
    }

    /// Validates the configuration as a whole and reads its secrets.
    pub fn resolve(raw: RawConfig, env: EnvLookup<'_>) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let mut problem =
            |key: String, message: String| problems.push(ConfigProblem { key, message });

        if raw.database.url.is_empty() {
            problem("database.url".into(), "must be set".into());
        } else if !raw.database.url.starts_with("postgres://")
            && !raw.database.url.starts_with("postgresql://")
            && !raw.database.url.starts_with("sqlite://")
        {
            problem(
                "database.url".into(),
                "must be a postgres:// URL (or sqlite://PATH for the embedded store)".into(),
            );
        }
        if raw.database.max_connections < 4 {
            problem(
                "database.max_connections".into(),
                "must be at least 4 (listeners and workers hold connections)".into(),
            );
        }
        if !raw.redis.url.is_empty() && !raw.redis.url.starts_with("redis://") {
            problem("redis.url".into(), "must be a redis:// URL or empty".into());
        }
        if raw.receiver.listen.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "receiver.listen".into(),
                format!(
                    "`{}` is not an address such as 0.0.0.0:8080",
                    raw.receiver.listen
                ),
            );
        }
        if raw.worker.listen.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "worker.listen".into(),
                format!(
                    "`{}` is not an address such as 0.0.0.0:8081",
                    raw.worker.listen
                ),
            );
        }
        if raw.receiver.max_body_bytes == 0 {
            problem("receiver.max_body_bytes".into(), "must be positive".into());
        }
        let group_commit = &raw.receiver.group_commit;
        if !(1..=1000).contains(&group_commit.max_batch) {
            problem(
                "receiver.group_commit.max_batch".into(),
                "must be between 1 (no grouping) and 1000".into(),
            );
        }
        if group_commit.max_wait.0 > Duration::from_secs(1) {
            problem(
                "receiver.group_commit.max_wait".into(),
                "must be at most 1s (every webhook's answer waits up to this long)".into(),
            );
        }
        if group_commit.max_in_flight == 0
            || group_commit.max_in_flight >= raw.database.max_connections as usize
        {
            problem(
                "receiver.group_commit.max_in_flight".into(),
                "must be at least 1 and below database.max_connections".into(),
            );
        }
        if raw.worker.recovery_window.0 < Duration::from_secs(3) {
            problem(
                "worker.recovery_window".into(),
                "must be at least 3s (three heartbeats of one second)".into(),
            );
        }
        if raw.worker.session_lease.0 > raw.worker.recovery_window.0 {
            problem(
                "worker.session_lease".into(),
                "must not exceed worker.recovery_window, or a dead worker's session stays locked after its turn is recovered".into(),
            );
        }
        if raw.worker.shutdown_grace.0 * 4 >= raw.worker.recovery_window.0 * 3 {
            problem(
                "worker.shutdown_grace".into(),
                "must be below three quarters of worker.recovery_window: a draining worker stops heartbeating, and its jobs would be taken for a dead worker's".into(),
            );
        }
        let kept_for = raw.worker.finished_jobs_kept_for.0;
        if !kept_for.is_zero() && kept_for < raw.worker.recovery_window.0 {
            problem(
                "worker.finished_jobs_kept_for".into(),
                "must be 0 (keep them) or at least worker.recovery_window: a job run again after a crash queues its next job under the same idempotency key, which only the finished job's row turns away".into(),
            );
        }
        if raw.worker.session_lease.0 < Duration::from_secs(1) {
            problem("worker.session_lease".into(), "must be at least 1s".into());
        }
        if raw.worker.turn_concurrency == 0 {
            problem("worker.turn_concurrency".into(), "must be positive".into());
        }
        if raw.worker.delivery_concurrency == 0 {
            problem(
                "worker.delivery_concurrency".into(),
                "must be positive".into(),
            );
        }
        if raw.worker.history_messages < 0 {
            problem(
                "worker.history_messages".into(),
                "must not be negative".into(),
            );
        }
        let memory = &raw.memory;
        for (name, share) in [
            ("notes_share", memory.notes_share),
            ("facts_share", memory.facts_share),
            ("recall_share", memory.recall_share),
            ("summary_share", memory.summary_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                problem(format!("memory.{name}"), "must be between 0 and 1".into());
            }
        }
        let shares =
            memory.notes_share + memory.facts_share + memory.recall_share + memory.summary_share;
        if shares > 0.8 {
            problem(
                "memory".into(),
                format!(
                    "the layer shares add up to {shares:.2}; keep them at most 0.8 so recent turns fit"
                ),
            );
        }
        for (name, value) in [
            ("max_facts", memory.max_facts),
            ("recall_items", memory.recall_items),
            ("keep_recent", memory.keep_recent),
        ] {
            if value < 0 {
                problem(format!("memory.{name}"), "must not be negative".into());
            }
        }
        if memory.compact_after <= memory.keep_recent.max(1) {
            problem(
                "memory.compact_after".into(),
                format!(
                    "must be greater than memory.keep_recent ({}) and 1",
                    memory.keep_recent
                ),
            );
        }
        if memory.maintenance_interval.0.is_zero() {
            problem(
                "memory.maintenance_interval".into(),
                "must be positive".into(),
            );
        }
        if raw.identity.link_code_ttl.0.is_zero() {
            problem("identity.link_code_ttl".into(), "must be positive".into());
        }
        if raw.identity.link_max_failures == 0 {
            problem(
                "identity.link_max_failures".into(),
                "must be positive".into(),
            );
        }
        let telemetry = &raw.telemetry;
        if !telemetry.otlp_endpoint.is_empty() && !is_http_url(&telemetry.otlp_endpoint) {
            problem(
                "telemetry.otlp_endpoint".into(),
                format!("`{}` is not an http(s) URL", telemetry.otlp_endpoint),
            );
        }
        if telemetry.export_interval.0.is_zero() {
            problem(
                "telemetry.export_interval".into(),
                "must be positive".into(),
            );
        }
        let sink = &raw.analytics;
        let mut analytics = AnalyticsSettings {
            config: sink.clone(),
            user: None,
            password: None,
        };
        if !sink.clickhouse_url.is_empty() {
            if !is_http_url(&sink.clickhouse_url) {
                problem(
                    "analytics.clickhouse_url".into(),
                    format!("`{}` is not an http(s) URL", sink.clickhouse_url),
                );
            }
            for (name, value) in [("database", &sink.database), ("table", &sink.table)] {
                // Spliced into SQL: plain identifiers only.
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    problem(
                        format!("analytics.{name}"),
                        format!("`{value}` is not a plain identifier (letters, digits, _)"),
                    );
                }
            }
            if sink.batch_size == 0 || sink.buffer == 0 {
                problem(
                    "analytics.batch_size".into(),
                    "batch_size and buffer must be positive".into(),
                );
            }
            if sink.flush_interval.0.is_zero() {
                problem("analytics.flush_interval".into(), "must be positive".into());
            }
            for (name, var) in [
                ("user_env", &sink.user_env),
                ("password_env", &sink.password_env),
            ] {
                if let Some(var) = var {
                    match env(var) {
                        Some(value) if name == "user_env" => analytics.user = Some(value),
                        Some(value) => analytics.password = Some(SecretString::from(value)),
                        None => problem(
                            format!("analytics.{name}"),
                            format!("environment variable {var} is not set"),
                        ),
                    }
                }
            }
        }
        for (n, network) in raw.tools.allowed_private_networks.iter().enumerate() {
            if crate::tools::egress::Network::parse(network).is_none() {
                problem(
                    format!("tools.allowed_private_networks[{n}]"),
                    format!("`{network}` is not an IP address or CIDR network"),
                );
            }
        }
        if raw.tools.max_calls_per_turn == 0 {
            problem("tools.max_calls_per_turn".into(), "must be positive".into());
        }
        let mut admin = AdminSettings {
            listen: raw.admin.listen.clone(),
            tokens: Vec::new(),
        };
        for (i, token) in raw.admin.tokens.iter().enumerate() {
            match env(&token.token_env) {
                // Short tokens can be guessed; the API is an operator's door.
                Some(value) if value.len() >= 16 => {
                    admin.tokens.push((SecretString::from(value), token.scope))
                }
                Some(_) => problem(
                    format!("admin.tokens[{i}].token_env"),
                    format!(
                        "the token in {} is shorter than 16 characters",
                        token.token_env
                    ),
                ),
                None => problem(
                    format!("admin.tokens[{i}].token_env"),
                    format!("environment variable {} is not set", token.token_env),
                ),
            }
        }
        if raw.worker.turn_job_attempts == 0 {
            problem("worker.turn_job_attempts".into(), "must be positive".into());
        }
        if raw.delivery.max_attempts == 0 {
            problem("delivery.max_attempts".into(), "must be at least 1".into());
        }
        if raw.delivery.retry_schedule.is_empty() && raw.delivery.max_attempts > 1 {
            problem(
                "delivery.retry_schedule".into(),
                "must list at least one wait when delivery.max_attempts > 1".into(),
            );
        }
        if !(0.0..1.0).contains(&raw.delivery.jitter) {
            problem("delivery.jitter".into(), "must be in [0, 1)".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            problem(
                "log.level".into(),
                format!(
                    "`{}` is not a log filter such as info or microclaw=debug",
                    raw.log.level
                ),
            );
        }

        let mut models = BTreeMap::new();
        for (name, model) in &raw.models {
            let key = |field: &str| format!("models.{name}.{field}");
            let mut api_keys = Vec::new();
            match model.provider {
                ProviderKind::Openai | ProviderKind::Anthropic => {
                    if !model.base_url.is_empty() && !is_http_url(&model.base_url) {
                        problem(key("base_url"), "must be an http(s) URL".into());
                    }
                    if model.model.is_empty() {
                        problem(
                            key("model"),
                            "must name the model, e.g. gpt-4o-mini or claude-sonnet-4-5".into(),
                        );
                    }
                    for (header, value) in &model.headers {
                        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
                            || axum::http::HeaderValue::from_str(value).is_err()
                        {
                            problem(
                                format!("models.{name}.headers.{header}"),
                                "is not a valid HTTP header".into(),
                            );
                        }
                    }
                    let vars =
                        model
                            .api_key_env
                            .iter()
                            .map(|var| (key("api_key_env"), var))
                            .chain(
                                model.api_key_envs.iter().enumerate().map(|(i, var)| {
                                    (format!("models.{name}.api_key_envs[{i}]"), var)
                                }),
                            );
                    for (field, var) in vars {
                        match env(var) {
                            Some(value) if !value.is_empty() => {
                                api_keys.push((var.clone(), SecretString::from(value)))
                            }
                            _ => problem(field, format!("environment variable {var} is not set")),
                        }
                    }
                }
                ProviderKind::Mock => {}
            }
            if model.max_attempts == 0 {
                problem(key("max_attempts"), "must be at least 1".into());
            }
            if model.max_steps == 0 {
                problem(key("max_steps"), "must be at least 1".into());
            }
            if model.max_tokens == 0 {
                problem(key("max_tokens"), "must be positive".into());
            }
            if model.timeout.0.is_zero() {
                problem(key("timeout"), "must be positive".into());
            }
            if model.min_backoff.0 > model.max_backoff.0 {
                problem(key("min_backoff"), "must not exceed max_backoff".into());
            }
            let mut config = model.clone();
            if config.base_url.is_empty() {
                config.base_url = config.provider.default_base_url().to_owned();
            }
            let settings = ModelSettings {
                name: name.clone(),
                config,
                api_keys,
            };
            models.insert(name.clone(), settings);
        }

        let mut agents = BTreeMap::new();
        if raw.agents.is_empty() {
            problem("agents".into(), "declare at least one [[agents]]".into());
        }
        for (i, agent) in raw.agents.iter().enumerate() {
            if agent.name.is_empty() {
                problem(format!("agents[{i}].name"), "must not be empty".into());
            }
            let known =
                |target: &str| raw.models.contains_key(target) || raw.routes.contains_key(target);
            for (r, rule) in agent.rules.iter().enumerate() {
                if !known(&rule.model) {
                    problem(
                        format!("agents[{i}].rules[{r}].model"),
                        format!("`{}` is not a key of [models] or [routes]", rule.model),
                    );
                }
            }
            if !known(&agent.model) {
                problem(
                    format!("agents[{i}].model"),
                    format!("`{}` is not a key of [models] or [routes]", agent.model),
                );
            }
            for (t, tool) in agent.tools.iter().enumerate() {
                if crate::tools::builtin(tool).is_none() {
                    problem(
                        format!("agents[{i}].tools[{t}]"),
                        format!(
                            "`{tool}` is not a built-in tool (known: {})",
                            crate::tools::BUILTIN.join(", ")
                        ),
                    );
                }
            }
            let mut agent = agent.clone();
            let mut names: Vec<String> = agent.tools.clone();
            for (f, function) in agent.functions.iter_mut().enumerate() {
                let key = |field: &str| format!("agents[{i}].functions[{f}].{field}");
                let name_ok = !function.name.is_empty()
                    && function.name.len() <= 64
                    && function
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !name_ok {
                    problem(
                        key("name"),
                        "must be 1 to 64 letters, digits, _ or -".into(),
                    );
                } else if names.contains(&function.name)
                    || crate::tools::builtin(&function.name).is_some()
                {
                    problem(
                        key("name"),
                        format!("`{}` is already a tool of this agent", function.name),
                    );
                }
                if let Err(e) = jsonschema::validator_for(&function.parameters) {
                    problem(key("parameters"), format!("not a valid JSON Schema: {e}"));
                } else if function.parameters["type"] != "object" {
                    problem(
                        key("parameters"),
                        "must describe an object (\"type\": \"object\")".into(),
                    );
                }
                if !is_http_url(&function.url) {
                    problem(
                        key("url"),
                        format!("`{}` is not an http(s) URL", function.url),
                    );
                }
                match env(&function.secret_env) {
                    Some(value) => match whsec_secret(&value) {
                        Ok(()) => function.secret = Some(SecretString::from(value)),
                        Err(e) => problem(
                            key("secret_env"),
                            format!("environment variable {}: {e}", function.secret_env),
                        ),
                    },
                    None => problem(
                        key("secret_env"),
                        format!("environment variable {} is not set", function.secret_env),
                    ),
                }
                names.push(function.name.clone());
            }
            let mut servers: Vec<String> = Vec::new();
            for (m, server) in agent.mcp_servers.iter_mut().enumerate() {
                let key = |field: &str| format!("agents[{i}].mcp_servers[{m}].{field}");
                let name_ok = !server.name.is_empty()
                    && server.name.len() <= 32
                    && server
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !name_ok {
                    problem(key("name"), "must be 1 to 32 letters, digits or -".into());
                } else if servers.contains(&server.name) {
                    problem(key("name"), format!("`{}` is declared twice", server.name));
                }
                servers.push(server.name.clone());
                if !is_http_url(&server.url) {
                    problem(
                        key("url"),
                        format!("`{}` is not an http(s) URL", server.url),
                    );
                }
                if let Some(var) = &server.token_env {
                    match env(var) {
                        Some(value) => server.token = Some(SecretString::from(value)),
                        None => problem(
                            key("token_env"),
                            format!("environment variable {var} is not set"),
                        ),
                    }
                }
            }
            let name = agent.name.clone();
            if agents.insert(name.clone(), agent).is_some() {
                problem(
                    format!("agents[{i}].name"),
                    format!("`{name}` is declared twice"),
                );
            }
        }

        let mut routes: BTreeMap<String, RouteConfig> = raw
            .models
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    RouteConfig {
                        strategy: RouteStrategy::Failover,
                        candidates: vec![name.clone()],
                        fallback_note: String::new(),
                    },
                )
            })
            .collect();
        for (name, route) in &raw.routes {
            if raw.models.contains_key(name) {
                problem(
                    format!("routes.{name}"),
                    "has the name of a model; routes and models share one namespace".into(),
                );
            }
            if route.candidates.is_empty() {
                problem(
                    format!("routes.{name}.candidates"),
                    "must list at least one model".into(),
                );
            }
            for (c, candidate) in route.candidates.iter().enumerate() {
                if !raw.models.contains_key(candidate) {
                    problem(
                        format!("routes.{name}.candidates[{c}]"),
                        format!("`{candidate}` is not a key of [models]"),
                    );
                }
            }
            routes.insert(name.clone(), route.clone());
        }
        if raw.router.breaker_failures == 0 {
            problem(
                "router.breaker_failures".into(),
                "must be at least 1".into(),
            );
        }

        // Only the routes agents use can hold a turn.
        let used: std::collections::BTreeSet<&str> = raw
            .agents
            .iter()
            .flat_map(|a| {
                std::iter::once(a.model.as_str()).chain(a.rules.iter().map(|r| r.model.as_str()))
            })
            .collect();
        for name in used {
            let Some(route) = routes.get(name) else {
                continue;
            };
            let all_candidates: Duration = route
                .candidates
                .iter()
                .filter_map(|c| models.get(c))
                .map(ModelSettings::worst_case_model_time)
                .sum();
            let worst = all_candidates.min(raw.router.step_deadline.0);
            if worst >= raw.worker.recovery_window.0 {
                let key = if raw.routes.contains_key(name) {
                    format!("routes.{name}")
                } else {
                    format!("models.{name}.timeout")
                };
                problem(
                    key,
                    format!(
                        "worst-case model time for one step ({}s: timeout × max_attempts + waits over every candidate, at most router.step_deadline) is not below worker.recovery_window ({}s); a live turn could be taken for a dead one",
                        worst.as_secs_f64(),
                        raw.worker.recovery_window.0.as_secs_f64()
                    ),
                );
            }
        }

        let mut connectors = BTreeMap::new();
        if raw.connectors.is_empty() {
            problem(
                "connectors".into(),
                "declare at least one [[connectors]]".into(),
            );
        }
        for (i, connector) in raw.connectors.iter().enumerate() {
            let key = |field: &str| format!("connectors[{i}].{field}");
            if connector.id.is_empty()
                || !connector
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problem(
                    key("id"),
                    "must be non-empty and use only letters, digits, - and _ (it is part of the webhook URL)".into(),
                );
            }
            if !raw.agents.iter().any(|a| a.name == connector.agent) {
                problem(
                    key("agent"),
                    format!("`{}` is not the name of an agent", connector.agent),
                );
            }
            let mut secret =
                |field: &str,
                 var: &Option<String>,
                 required: bool,
                 validate: fn(&str) -> Result<(), String>| match var {
                    Some(var) => match env(var) {
                        Some(value) => match validate(&value) {
                            Ok(()) => Some(SecretString::from(value)),
                            Err(e) => {
                                problem(key(field), format!("environment variable {var}: {e}"));
                                None
                            }
                        },
                        None => {
                            problem(key(field), format!("environment variable {var} is not set"));
                            None
                        }
                    },
                    None if required => {
                        problem(
                            key(field),
                            "must name the environment variable that holds the secret".into(),
                        );
                        None
                    }
                    None => None,
                };
            use ChannelKind::*;
            let kind = connector.channel;
            // Which secrets each channel needs, and how each is checked.
            let signing_secret = match kind {
                Custom => secret(
                    "signing_secret_env",
                    &connector.signing_secret_env,
                    true,
                    whsec_secret,
                ),
                Slack | Whatsapp | Twilio => secret(
                    "signing_secret_env",
                    &connector.signing_secret_env,
                    true,
                    non_empty,
                ),
                // Signs visitors' session tokens.
                Webchat => secret(
                    "signing_secret_env",
                    &connector.signing_secret_env,
                    true,
                    token_key,
                ),
                Telegram | Imessage | Discord | Teams => None,
            };
            let callback_secret = match kind {
                Custom => secret(
                    "callback_secret_env",
                    &connector.callback_secret_env,
                    false,
                    whsec_secret,
                )
                .or_else(|| signing_secret.clone()),
                _ => None,
            };
            let bot_token = match kind {
                // iMessage: the BlueBubbles server password; Teams: the app's
                // client secret.
                Slack | Whatsapp | Telegram | Imessage | Teams => {
                    secret("bot_token_env", &connector.bot_token_env, true, non_empty)
                }
                // Sends past an interaction's 15 minutes, and the gateway.
                Discord => secret("bot_token_env", &connector.bot_token_env, false, non_empty),
                Custom | Twilio | Webchat => None,
            };
            let webhook_secret = match kind {
                Telegram => secret(
                    "secret_token_env",
                    &connector.secret_token_env,
                    true,
                    telegram_secret_token,
                ),
                // iMessage: the token in the webhook URL (BlueBubbles signs nothing).
                Imessage => secret(
                    "secret_token_env",
                    &connector.secret_token_env,
                    true,
                    url_token,
                ),
                _ => None,
            };

            let verify_token = match kind {
                Whatsapp => secret(
                    "verify_token_env",
                    &connector.verify_token_env,
                    true,
                    non_empty,
                ),
                _ => None,
            };
            if kind == Discord {
                let key_ok = connector
                    .public_key
                    .as_deref()
                    .is_some_and(|k| k.len() == 64 && k.chars().all(|c| c.is_ascii_hexdigit()));
                if !key_ok {
                    problem(
                        key("public_key"),
                        "must be the application's public key: 64 hex digits".into(),
                    );
                }
                if connector.gateway && connector.bot_token_env.is_none() {
                    problem(
                        key("bot_token_env"),
                        "must be set when gateway = true (the Gateway logs in as the bot)".into(),
                    );
                }
                if connector.command.as_deref().is_none_or(str::is_empty) {
                    problem(
                        key("command"),
                        "must name the slash command the agent answers, e.g. \"ask\"".into(),
                    );
                }
            }
            if kind == Teams && connector.app_id.as_deref().is_none_or(str::is_empty) {
                problem(key("app_id"), "must be the bot's Microsoft App ID".into());
            }
            for (field, url) in [
                ("openid_metadata_url", &connector.openid_metadata_url),
                ("token_url", &connector.token_url),
                ("gateway_url", &connector.gateway_url),
            ] {
                if let Some(url) = url
                    && !is_http_url(url)
                    && !url.starts_with("ws://")
                    && !url.starts_with("wss://")
                {
                    problem(key(field), format!("`{url}` is not a URL"));
                }
            }
            if kind == Imessage && connector.api_base_url.is_none() {
                problem(
                    key("api_base_url"),
                    "must be the BlueBubbles server's URL, e.g. https://mac.example.com:1234"
                        .into(),
                );
            }
            if kind == Twilio {
                if connector.public_url.is_none() {
                    problem(
                        key("public_url"),
                        "must be the webhook URL exactly as configured in Twilio".into(),
                    );
                }
                if connector.account_sid.is_none() {
                    problem(key("account_sid"), "must be set (AC…)".into());
                }
            }
            if let Some(url) = &connector.api_base_url
                && !is_http_url(url)
            {
                problem(key("api_base_url"), "must be an http(s) URL".into());
            }
            match (kind, &connector.callback_url) {
                (Custom, None) => problem(
                    key("callback_url"),
                    "must be set for the custom channel".into(),
                ),
                (_, Some(url)) if !is_http_url(url) => {
                    problem(key("callback_url"), "must be an http(s) URL".into())
                }
                _ => {}
            }
            let settings = ConnectorSettings {
                config: connector.clone(),
                signing_secret,
                callback_secret,
                bot_token,
                webhook_secret,
                verify_token,
            };
            if connectors.insert(connector.id.clone(), settings).is_some() {
                problem(key("id"), format!("`{}` is declared twice", connector.id));
            }
        }

        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(Settings {
            database: raw.database,
            redis: raw.redis,
            receiver: raw.receiver,
            worker: raw.worker,
            delivery: raw.delivery,
            log: raw.log,
            models,
            routes,
            router: raw.router,
            memory: raw.memory,
            identity: raw.identity,
            admin,
            telemetry: raw.telemetry,
            analytics,
            tools: raw.tools,
            agents,
            connectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_example_config_is_valid() {
        let env = env_with(&[("MICROCLAW_CUSTOM_SECRET", SECRET)]);
        let settings = Settings::from_toml(EXAMPLE_CONFIG, &env).unwrap();
        assert!(settings.connectors.contains_key("custom"));
        assert_eq!(settings.worker.turn_mode, TurnMode::Collect);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [worker]
            recovery_window = "10s"
            session_lease = "20s"
            finished_jobs_kept_for = "5s"
            [models.main]
            provider = "openai"
            api_key_env = "NOPE_KEY"
            [[agents]]
            name = "a"
            model = "missing"
            [[agents]]
            name = "b"
            model = "main"
            [[connectors]]
            id = "bad id"
            channel = "custom"
            agent = "c"
            signing_secret_env = "UNSET"
        "#;
        let errors = Settings::from_toml(text, &env_with(&[])).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "worker.session_lease",
            "worker.shutdown_grace",
            "worker.finished_jobs_kept_for",
            "models.main.model",
            "models.main.api_key_env",
            "models.main.timeout",
            "agents[0].model",
            "connectors[0].id",
            "connectors[0].agent",
            "connectors[0].signing_secret_env",
            "connectors[0].callback_url",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn memory_and_identity_limits_name_their_keys() {
        let text = r#"
            [memory]
            facts_share = 1.5
            recall_share = 0.5
            compact_after = 4
            keep_recent = 10
            group_user_facts = "sender"
            [identity]
            link_max_failures = 0
            link_code_ttl = "0s"
        "#;
        let env = env_with(&[("MICROCLAW_CUSTOM_SECRET", SECRET)]);
        let errors = Settings::from_toml(text, &env).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "memory.facts_share",
            "memory",
            "memory.compact_after",
            "identity.link_max_failures",
            "identity.link_code_ttl",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        let errors = RawConfig::from_toml("[memory]\ngroup_user_facts = \"everyone\"").unwrap_err();
        assert_eq!(errors.0[0].key, "memory.group_user_facts");
    }

    #[test]
    fn function_mistakes_name_their_keys() {
        let text = r#"
            [tools]
            allowed_private_networks = ["10.0.0.0/99"]
            max_calls_per_turn = 0
            [[agents]]
            name = "a"
            model = "default"
            [[agents.functions]]
            name = "current_time"
            description = "clashes with a built-in tool"
            url = "https://fn.example.com/a"
            secret_env = "FN_SECRET"
            [[agents.functions]]
            name = "bad schema"
            description = "d"
            parameters = { type = "object", properties = { n = { type = "no-such-type" } } }
            url = "ftp://fn.example.com/b"
            secret_env = "MISSING"
            [[agents.mcp_servers]]
            name = "files server"
            url = "mcp.example.com"
            token_env = "NO_SUCH_TOKEN"
        "#;
        let env = env_with(&[("MICROCLAW_CUSTOM_SECRET", SECRET), ("FN_SECRET", SECRET)]);
        let errors = Settings::from_toml(text, &env).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "tools.allowed_private_networks[0]",
            "tools.max_calls_per_turn",
            "agents[0].functions[0].name",
            "agents[0].functions[1].name",
            "agents[0].functions[1].parameters",
            "agents[0].functions[1].url",
            "agents[0].functions[1].secret_env",
            "agents[0].mcp_servers[0].name",
            "agents[0].mcp_servers[0].url",
            "agents[0].mcp_servers[0].token_env",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn telemetry_and_analytics_mistakes_name_their_keys() {
        let text = r#"
            [telemetry]
            otlp_endpoint = "collector:4318"
            [analytics]
            clickhouse_url = "http://clickhouse:8123"
            table = "events; DROP TABLE users"
            batch_size = 0
            password_env = "CLICKHOUSE_PASSWORD"
        "#;
        let env = env_with(&[("MICROCLAW_CUSTOM_SECRET", SECRET)]);
        let errors = Settings::from_toml(text, &env).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "telemetry.otlp_endpoint",
            "analytics.table",
            "analytics.batch_size",
            "analytics.password_env",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        // Off by default; the password is read from its variable when set.
        let settings = Settings::from_toml("", &env).unwrap();
        assert!(settings.analytics.config.clickhouse_url.is_empty());
        assert!(settings.telemetry.otlp_endpoint.is_empty());
        let env = env_with(&[
            ("MICROCLAW_CUSTOM_SECRET", SECRET),
            ("CH_USER", "microclaw"),
            ("CH_PASSWORD", "hunter2"),
        ]);
        let settings = Settings::from_toml(
            "[analytics]\nclickhouse_url = \"http://ch:8123\"\nuser_env = \"CH_USER\"\npassword_env = \"CH_PASSWORD\"",
            &env,
        )
        .unwrap();
        assert_eq!(settings.analytics.user.as_deref(), Some("microclaw"));
        assert!(settings.analytics.password.is_some());
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let errors = RawConfig::from_toml("[worker]\nturn_concurrency = \"many\"").unwrap_err();
        assert_eq!(errors.0[0].key, "worker.turn_concurrency");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let errors = RawConfig::from_toml("[worker]\nturn_concurency = 3").unwrap_err();
        assert!(errors.to_string().contains("turn_concurency"), "{errors}");
    }

    #[test]
    fn rules_pick_a_route_by_channel_or_connector() {
        let text = r#"
            [models.cheap]
            provider = "mock"
            [models.smart]
            provider = "mock"
            [[agents]]
            name = "a"
            model = "smart"
            rules = [{ connector = "sms-us", model = "cheap" }, { channel = "custom", model = "cheap" }]
            [[connectors]]
            id = "web"
            channel = "custom"
            agent = "a"
            signing_secret_env = "S"
            callback_url = "http://127.0.0.1:9/r"
        "#;
        let settings = Settings::from_toml(text, &env_with(&[("S", SECRET)])).unwrap();
        let agent = &settings.agents["a"];
        assert_eq!(agent.route_for("custom", "web"), "cheap");
        assert_eq!(agent.route_for("slack", "sms-us"), "cheap");
        assert_eq!(agent.route_for("slack", "team"), "smart");
        assert!(
            settings.routes.contains_key("smart"),
            "every model is a route of one"
        );
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_span("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_span("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_span("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_span("30").unwrap(), Duration::from_secs(30));
        assert!(parse_span("5 weeks").is_err());
        assert!(parse_span("soon").is_err());
        assert!(parse_span("87601h").is_err());
        assert!(parse_span("9999999999999999999h").is_err());
        assert_eq!(parse_span("24h").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn a_malformed_secret_names_its_variable() {
        let text = EXAMPLE_CONFIG;
        let errors =
            Settings::from_toml(text, &env_with(&[("MICROCLAW_CUSTOM_SECRET", "whsec_!!")]))
                .unwrap_err();
        assert!(
            errors
                .0
                .iter()
                .any(|p| p.key == "connectors[0].signing_secret_env"
                    && p.message.contains("MICROCLAW_CUSTOM_SECRET")),
            "{errors}"
        );
    }
}
