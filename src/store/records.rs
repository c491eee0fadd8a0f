//! What the store reads and writes, the same for every backend.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::channels::{ReplyTarget, SendError};

/// Who answers an inbound message, and in which session.
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    pub connector_id: &'a str,
    pub channel: &'a str,
    pub agent: &'a str,
}

/// One inbound message of a group-committed batch, with where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub routing: Routing<'a>,
    pub message: &'a crate::channels::InboundMessage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Committed with its turn job.
    Accepted {
        event_id: Uuid,
        session_id: Uuid,
        trace_id: String,
    },
    /// The platform sent this event before; nothing was created.
    Duplicate,
}

/// The session key: a direct conversation belongs to its sender, a group
/// conversation to itself.
pub fn session_key(
    connector_id: &str,
    message: &crate::channels::InboundMessage,
    identity_id: Uuid,
) -> String {
    if message.is_group {
        format!(
            "group:{}",
            conversation_key(connector_id, &message.conversation_id)
        )
    } else {
        format!("direct:{identity_id}")
    }
}

/// Names a group conversation (its notes and its session): "<connector>:<conversation id>".
pub fn conversation_key(connector_id: &str, conversation_id: &str) -> String {
    format!("{connector_id}:{conversation_id}")
}

/// A held session lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub session_id: Uuid,
    pub epoch: i64,
}

/// The lease as another worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub lease_owner: Option<String>,
    /// Time left on the lease, by the store's clock (None when free).
    pub remaining_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Nothing left to answer; the lease is free.
    Released,
    /// New events arrived; the lease is still ours (and extended).
    MoreWork,
    /// Another worker holds the session now.
    Lost,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct PendingEvent {
    pub id: Uuid,
    pub seq: i64,
    pub connector_id: String,
    pub platform_message_id: String,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub conversation_id: String,
    pub thread_id: Option<String>,
    pub is_group: bool,
    pub text: String,
    pub attachments: sqlx::types::Json<Vec<crate::channels::Attachment>>,
    pub trace_id: String,
    /// The person who sent it (None for events recorded before identities existed).
    pub identity_id: Option<Uuid>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionInfo {
    pub agent: String,
    pub processed_seq: i64,
    pub is_group: bool,
    /// The person of a direct session.
    pub identity_id: Option<Uuid>,
    /// The conversation of a group session ("<connector>:<conversation id>").
    pub conversation_key: Option<String>,
    /// Where the transcript lives: this session, or the one it was merged into
    /// when two linked people's direct sessions became one.
    pub transcript_id: Uuid,
    /// The transcript's rolling summary of every message up to `summarized_through`.
    pub summary: String,
    pub summarized_through: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryMessage {
    pub id: i64,
    pub role: String,
    pub content: String,
    /// The structured parts of a tool-calling message; None for plain text.
    pub parts: Option<sqlx::types::Json<Vec<crate::providers::Part>>>,
}

impl HistoryMessage {
    pub fn to_message(&self) -> Option<crate::providers::Message> {
        let role = crate::providers::Role::parse(&self.role)?;
        Some(match &self.parts {
            Some(parts) => crate::providers::Message {
                role,
                parts: parts.0.clone(),
            },
            None => crate::providers::Message::text(role, &self.content),
        })
    }
}

/// What a lease holder's next turn answers: the session (None once it was
/// forgotten) and its unanswered events, in arrival order.
pub type TurnInputs = Option<(SessionInfo, Vec<PendingEvent>)>;

/// Everything one finished turn writes.
#[derive(Debug)]
pub struct TurnRecord<'a> {
    pub turn_id: Uuid,
    pub agent: &'a str,
    pub lease: Lease,
    pub events: &'a [PendingEvent],
    /// The tool-calling steps of the turn, in order: assistant messages with tool
    /// calls and the tool messages with their results.
    pub steps: &'a [crate::providers::Message],
    /// Every model call of the turn, failed attempts included.
    pub model_calls: &'a [crate::providers::router::ModelCall],
    pub reply: &'a str,
    pub model: Option<&'a str>,
    /// The error that made the turn fail (the reply is then the apology).
    pub error: Option<&'a str>,
    pub model_attempts: u32,
    pub started_at: DateTime<Utc>,
    pub trace_id: &'a str,
    /// Where the reply goes and the parts it is split into.
    pub deliveries: Vec<PlannedDelivery>,
    pub delivery_max_attempts: u32,
    pub lease_ttl: Duration,
    /// The committing worker makes the first attempt of each delivery itself
    /// (Postgres only, `worker::first_attempt`): the commit claims the first
    /// parts' jobs for it. `None`: they are due in the queue at once.
    pub first_attempt: Option<FirstAttemptClaim<'a>>,
    /// Memory the turn's tools wrote; committed with the turn.
    pub memory_writes: &'a [MemoryWrite],
    /// Messages the turn's tools scheduled for later.
    pub scheduled: &'a [PlannedSchedule],
    /// What the commit checks before it releases the lease: a turn that may
    /// compact its transcript keeps the lease when compaction is due.
    pub compaction: Option<CompactionCheck>,
}

/// How a turn's commit claims its first parts' jobs for the committing
/// worker (see `store::postgres::deliveries::claim_first_attempts`).
#[derive(Debug, Clone, Copy)]
pub struct FirstAttemptClaim<'a> {
    /// The worker's delivery consumer, whose name locks the claimed jobs.
    pub consumer: &'a str,
    pub token: crate::store::postgres::deliveries::ClaimToken,
    /// A reply waits for the session's earlier replies to the same connector
    /// created after this that are still pending (`delivery.order_window`);
    /// `None` when that wait is off.
    pub order_since: Option<DateTime<Utc>>,
    /// When the jobs are due in the queue, where only a job the commit could
    /// not claim (the consumer not registered yet) runs.
    pub due_after: Duration,
}

/// The transcript a turn would compact and when (see `memory::compaction`).
#[derive(Debug, Clone, Copy)]
pub struct CompactionCheck {
    pub transcript_id: Uuid,
    /// The summary's mark as the turn read it.
    pub summarized_through: i64,
    /// Compaction is due past this many messages after the mark.
    pub compact_after: i64,
}

impl CompactionCheck {
    /// Counting stops here: past it the count says no more than "due".
    pub fn cap(&self) -> i64 {
        self.compact_after * 4
    }
}

impl TurnRecord<'_> {
    pub fn status(&self) -> &'static str {
        if self.error.is_some() {
            "failed"
        } else {
            "completed"
        }
    }

    pub fn event_status(&self) -> &'static str {
        if self.error.is_some() {
            "failed"
        } else {
            "answered"
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub connector_id: String,
    pub channel: String,
    pub target: ReplyTarget,
    pub parts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnCommit {
    Committed(Committed),
    /// The lease was lost: another worker owns the session, nothing was written.
    Fenced,
}

/// What a committed turn left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// The first parts' jobs the commit claimed for the committing worker
    /// (see [`TurnRecord::first_attempt`]).
    pub claimed: Vec<ClaimedDelivery>,
    /// The lease was released with the commit: nothing arrived after the
    /// turn's events and no compaction is due. Otherwise the holder goes on
    /// (compacts, answers the newcomers) and releases later.
    pub released: bool,
    /// The transcript's messages after the summary mark, counted up to
    /// [`CompactionCheck::cap`], when the turn was given a check.
    pub unsummarized: Option<i64>,
}

/// A first part's job that a turn's commit claimed for the committing worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub job: microclaw_jobs::DeliveryJob,
    /// The job's id in the queue.
    pub queue_id: String,
    /// The attempt, when the commit also began it (no earlier reply of the
    /// session held it back): what [`begin_attempt`](crate::store::Store::begin_attempt)
    /// would have answered.
    pub begun: Option<DeliveryRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub connector_id: String,
    pub channel: String,
    pub target: sqlx::types::Json<ReplyTarget>,
    pub part: i32,
    pub text: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Attempts so far that the platform answered with a rate limit.
    pub rate_limited: i32,
    pub trace_id: String,
    /// No later part of the same reply follows: delivering this one queues nothing.
    pub last_part: bool,
}

/// What became of a delivery attempt.
#[derive(Debug)]
pub enum AttemptOutcome<'a> {
    Delivered,
    /// Failed; the next attempt runs after the wait.
    RetryAfter(&'a SendError, Duration),
    /// Failed for good (permanent error, or the last attempt).
    Dead(&'a SendError, DeadReason),
}

impl AttemptOutcome<'_> {
    /// The attempt row's outcome label, status code and error text.
    pub fn attempt_fields(&self) -> (&'static str, Option<i32>, Option<String>) {
        match self {
            AttemptOutcome::Delivered => ("delivered", None, None),
            AttemptOutcome::RetryAfter(e, _) | AttemptOutcome::Dead(e, _) => (
                e.class(),
                e.status().map(i32::from),
                Some(without_nul(&e.to_string()).into_owned()),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    Permanent,
    Exhausted,
}

impl DeadReason {
    pub fn error_class(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
        }
    }
}

/// What became of an inbound event, with the reply that answered it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventReply {
    /// pending | answered | failed
    pub status: String,
    pub reply: Option<String>,
}

/// Text as Postgres can store it: TEXT and JSONB refuse NUL characters, which a
/// platform, a model or an error body may still send. Applied to everything
/// written from outside input, so a stray NUL never turns into a write that
/// fails on every retry.
pub fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "").into()
    } else {
        text.into()
    }
}

/// Message parts with every NUL removed (JSONB refuses `\u0000` too).
pub fn without_nul_parts(parts: &[crate::providers::Part]) -> Vec<crate::providers::Part> {
    let json = serde_json::to_string(parts).unwrap_or_default();
    if !json.contains("\\u0000") {
        return parts.to_vec();
    }
    serde_json::from_str(&json.replace("\\u0000", "")).unwrap_or_default()
}

/// A change to stored memory, made by a tool during a turn and committed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryWrite {
    /// A fact about the person who sent inbound event `about_event`: resolved to
    /// their identity when the turn commits, so a merge during the turn is followed.
    Fact {
        about_event: Uuid,
        content: String,
    },
    /// A note about one group conversation.
    Note {
        conversation_key: String,
        content: String,
    },
    Forget {
        id: Uuid,
    },
}

/// What a turn's memory layers are read from (see `memory::rehydrate`).
#[derive(Debug, Clone, Copy)]
pub struct LayerReads<'a> {
    pub transcript_id: Uuid,
    /// The summary's mark: the recent messages are those after it.
    pub summarized_through: i64,
    pub history_limit: i64,
    /// Whose facts the turn sees.
    pub person: Option<Uuid>,
    /// Whose notes the turn sees.
    pub conversation_key: Option<&'a str>,
    pub max_facts: i64,
    /// The words the long-term recall searches for (`memory::search_terms`).
    pub terms: &'a [String],
    pub recall_items: i64,
}

/// The rows a turn's memory layers are built from, each list in the order the
/// single reads give it (see `Store::memory_layers`).
#[derive(Debug, Clone, Default)]
pub struct LayerRows {
    /// The transcript's newest messages after the summary, oldest first.
    pub recent: Vec<HistoryMessage>,
    /// The person's newest facts, oldest first.
    pub facts: Vec<MemoryItem>,
    /// The conversation's newest notes, oldest first.
    pub notes: Vec<MemoryItem>,
    /// Facts and notes matching the terms, best first.
    pub recalled_memories: Vec<MemoryItem>,
    /// Older transcript messages (before `recent`) matching the terms, best first.
    pub recalled_messages: Vec<RecalledMessage>,
}

impl LayerRows {
    /// Where the message recall ends: it reaches up to the oldest message the
    /// context holds verbatim (or the summary's mark when it holds none).
    pub fn recall_before(&self, summarized_through: i64) -> i64 {
        self.recent.first().map_or(summarized_through + 1, |m| m.id)
    }
}

/// A stored fact or note.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryItem {
    pub id: Uuid,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

impl MemoryItem {
    /// The short handle the model uses to name an item (`forget`).
    pub fn handle(&self) -> String {
        self.id.simple().to_string()[24..].to_owned()
    }
}

/// A transcript message found by a long-term search.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecalledMessage {
    pub id: i64,
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A message a turn schedules for later, written with the turn's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSchedule {
    pub id: Uuid,
    pub identity_id: Option<Uuid>,
    pub connector_id: String,
    pub channel: String,
    pub target: ReplyTarget,
    pub text: String,
    pub due_at: DateTime<Utc>,
    pub timezone: String,
}

/// A message the agent scheduled for later.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ScheduledMessage {
    pub id: Uuid,
    pub connector_id: String,
    pub channel: String,
    pub text: String,
    pub due_at: DateTime<Utc>,
    /// The IANA time zone the person gave the time in.
    pub timezone: String,
    /// `pending`, `sent` or `cancelled`.
    pub status: String,
    pub identity_id: Option<Uuid>,
    pub session_id: Uuid,
    pub delivery_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `person` or `operator`.
    pub cancelled_by: Option<String>,
}

/// One message of a web chat visitor's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct WebchatMessage {
    pub seq: i64,
    /// `visitor` or `agent`.
    pub role: String,
    /// `in:<the page's message id>` or `out:<delivery id>`.
    pub key: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// One platform account of a person.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct Account {
    pub connector_id: String,
    pub sender_id: String,
    pub channel: String,
    pub display_name: Option<String>,
}

impl Account {
    /// "<connector>:<sender id>".
    pub fn key(&self) -> String {
        format!("{}:{}", self.connector_id, self.sender_id)
    }
}

/// What redeeming a link code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// Both accounts are now one person, `identity_id`.
    Linked { identity_id: Uuid },
    /// The code was already redeemed by this very account (a rerun of its turn).
    AlreadyLinked { identity_id: Uuid },
    /// Unknown, used or expired; the failure counts towards the attempt limit.
    Invalid,
    /// Too many failed attempts from this account recently.
    TooManyAttempts,
}

/// What `forget` deleted, by kind.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ForgetReport {
    pub accounts: u64,
    pub sessions: u64,
    pub inbound_events: u64,
    pub messages: u64,
    pub turns: u64,
    pub deliveries: u64,
    pub memories: u64,
    pub summaries_dropped: u64,
}

/// What a retention purge deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub messages: u64,
    pub inbound_events: u64,
    pub deliveries: u64,
}

/// One batch of a purge of finished queue jobs (see `worker::maintenance`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgedJobs {
    pub deleted: u64,
    /// The last job id the batch looked at, where the next batch starts; None
    /// when the batch was short: the pass is done.
    pub resume_after: Option<String>,
}

/// A delivery as the admin queue lists it.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct DeliverySummary {
    pub id: Uuid,
    pub turn_id: Uuid,
    pub session_id: Uuid,
    pub connector_id: String,
    pub channel: String,
    /// Which part of the reply (long replies are split per the platform's limit).
    pub part: i32,
    /// pending | delivered | dead | discarded
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// retryable | rate_limited | permanent | exhausted | earlier_part_failed
    pub error_class: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub dead_at: Option<DateTime<Utc>>,
    pub discard_reason: Option<String>,
}

/// One attempt of a delivery.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct DeliveryAttempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// delivered | retryable | rate_limited | permanent (None while running)
    pub outcome: Option<String>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// A delivery with its reply text, where it goes, and every attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub summary: DeliverySummary,
    pub text: String,
    /// Where the reply goes: conversation, thread, recipient, the messages it answers.
    #[schema(value_type = Object)]
    pub target: serde_json::Value,
    pub trace_id: String,
    pub delivered_at: Option<DateTime<Utc>>,
    pub history: Vec<DeliveryAttempt>,
}

/// Which deliveries to list or act on; every field narrows.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::IntoParams,
    utoipa::ToSchema,
)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// pending | delivered | dead | discarded
    pub status: Option<String>,
    pub channel: Option<String>,
    pub connector: Option<String>,
    pub error_class: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// What an admin action did to one delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum AdminOutcome {
    /// Done: for a retry, the deliveries set to go again (the reply's earliest
    /// dead part, which gets one new attempt, and the later parts waiting on it).
    Done {
        ids: Vec<Uuid>,
    },
    /// Left alone: only dead deliveries are retried or discarded.
    Skipped {
        status: String,
    },
    NotFound,
}

/// One queue's state.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct QueueStats {
    pub queue: String,
    /// Due and waiting for a worker.
    pub waiting: i64,
    /// Scheduled for later (retries, Retry-After waits).
    pub delayed: i64,
    pub running: i64,
    pub failed: i64,
    pub done: i64,
    /// Seconds the oldest due job has waited.
    pub oldest_waiting_secs: Option<i64>,
}

/// A turn as the failed-turn list shows it.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct TurnSummary {
    pub id: Uuid,
    pub session_id: Uuid,
    pub agent: String,
    /// completed | failed
    pub status: String,
    pub model: Option<String>,
    pub error: Option<String>,
    pub model_attempts: i32,
    /// How many inbound messages the turn answered.
    pub events: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// rerun | discarded, once an operator acted.
    pub resolution: Option<String>,
    pub resolution_reason: Option<String>,
}

/// Which turns to list; every field narrows.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::IntoParams,
    utoipa::ToSchema,
)]
#[into_params(parameter_in = Query)]
pub struct TurnFilter {
    /// completed | failed
    pub status: Option<String>,
    pub agent: Option<String>,
    /// Only turns nobody acted on yet (true), or only those acted on (false).
    pub unresolved: Option<bool>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A session as the admin lists it.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionSummary {
    pub id: Uuid,
    pub agent: String,
    pub session_key: String,
    pub is_group: bool,
    pub identity_id: Option<Uuid>,
    pub conversation_key: Option<String>,
    pub merged_into: Option<Uuid>,
    pub last_inbound_seq: i64,
    pub processed_seq: i64,
    pub updated_at: DateTime<Utc>,
}

/// One transcript message: tool calls and results in `parts`, and which model
/// wrote an assistant message.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct TranscriptMessage {
    pub id: i64,
    pub turn_id: Uuid,
    /// user | assistant | tool
    pub role: String,
    pub content: String,
    #[schema(value_type = Option<Object>)]
    pub parts: Option<sqlx::types::Json<serde_json::Value>>,
    pub model: Option<String>,
    pub sender_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Tokens and cost of one agent and model on one UTC day.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct UsageRow {
    /// YYYY-MM-DD (UTC)
    pub day: String,
    pub agent: String,
    pub model: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// An inbound message of a failed turn, to be answered again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RerunEvent {
    pub connector_id: String,
    pub channel: String,
    pub platform_message_id: String,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub conversation_id: String,
    pub thread_id: Option<String>,
    pub is_group: bool,
    pub text: String,
    pub attachments: sqlx::types::Json<Vec<crate::channels::Attachment>>,
}
