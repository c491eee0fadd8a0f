//! The store: the source of truth for sessions, messages, deliveries and the queue.
//!
//! One interface ([`Store`]), two backends: Postgres in production, an embedded
//! SQLite file for `microclaw dev`. Both keep the same guarantees, and the same
//! storage test suite runs against both.
//!
//! Every state change that carries a guarantee happens in one transaction together
//! with the queue writes it implies (a transactional outbox): the inbound event and
//! its turn job; a turn's messages, its deliveries and their jobs; a delivery
//! attempt's outcome and the job of the next attempt. A job therefore exists if and
//! only if the state that needs it was committed.

pub mod portable;
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::time::Duration;

use apalis_core::task::{Task, builder::TaskBuilder};
use microclaw_jobs::{DeliveryJob, Job};
use uuid::Uuid;

use crate::channels::InboundMessage;
pub use portable::LinkPolicy;
pub use records::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] apalis_postgres::Error),
    #[error("queue: {0}")]
    SqliteQueue(#[from] apalis_sqlite::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group-committed batch this write belonged to failed.
    #[error("batch: {0}")]
    Batch(std::sync::Arc<StoreError>),
}

/// Calls the backend-neutral store function `module::function(pool, args…)` (see
/// `portable`) on whichever backend this store is.
macro_rules! portable {
    ($store:expr, $module:ident :: $function:ident ( $($arg:expr),* $(,)? )) => {
        match $store {
            Store::Postgres(pool) => postgres::$module::$function(pool, $($arg),*).await,
            Store::Sqlite(pool) => sqlite::$module::$function(pool, $($arg),*).await,
        }
    };
}

/// A store on one of the two backends.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Store {
    /// Opens the store `database.url` names: `postgres://…` (lazily: a receiver
    /// must start, and answer 503, while Postgres is down) or `sqlite://PATH`.
    pub async fn open(config: &crate::config::DatabaseConfig) -> Result<Self, StoreError> {
        match config.url.strip_prefix("sqlite://") {
            Some(path) => Ok(Store::Sqlite(
                sqlite::open(std::path::Path::new(path)).await?,
            )),
            None => Ok(Store::Postgres(postgres::connect_lazy(config)?)),
        }
    }

    /// Creates the database when the server does not have it yet (Postgres; a
    /// SQLite file is created when opened).
    pub async fn create_database_if_missing(&self, url: &str) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(_) => postgres::create_database_if_missing(url).await,
            Store::Sqlite(_) => Ok(false),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the queue's migrations and ours.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => postgres::migrate(pool).await,
            Store::Sqlite(pool) => sqlite::migrate(pool).await,
        }
    }

    /// Whether the store answers, within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        match self {
            Store::Postgres(pool) => postgres::ping(pool, timeout).await,
            Store::Sqlite(pool) => sqlite::ping(pool, timeout).await,
        }
    }

    /// Records an inbound event and its turn job in one transaction, unless the
    /// platform sent it before.
    pub async fn record_inbound(
        &self,
        routing: &Routing<'_>,
        message: &InboundMessage,
        turn_job_attempts: usize,
    ) -> Result<Recorded, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::inbound::record(pool, routing, message, turn_job_attempts).await
            }
            Store::Sqlite(pool) => {
                sqlite::inbound::record(pool, routing, message, turn_job_attempts).await
            }
        }
    }

    /// Records a batch of inbound events and their turn jobs in one transaction
    /// (group commit); each answer in the batch's order. On error nothing of the
    /// batch is recorded.
    pub async fn record_inbound_batch(
        &self,
        batch: &[Arrival<'_>],
        turn_job_attempts: usize,
    ) -> Result<Vec<Recorded>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::inbound::record_batch(pool, batch, turn_job_attempts).await
            }
            Store::Sqlite(pool) => {
                sqlite::inbound::record_batch(pool, batch, turn_job_attempts).await
            }
        }
    }

    /// Whether an inbound event has been answered (or given up on).
    pub async fn event_is_settled(&self, event_id: Uuid) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::event_is_settled(pool, event_id).await,
            Store::Sqlite(pool) => sqlite::sessions::event_is_settled(pool, event_id).await,
        }
    }

    /// Takes a session's lease when it is free or expired, bumping its epoch.
    pub async fn try_acquire_lease(
        &self,
        session_id: Uuid,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::sessions::try_acquire(pool, session_id, owner, ttl).await
            }
            Store::Sqlite(pool) => {
                sqlite::sessions::try_acquire(pool, session_id, owner, ttl).await
            }
        }
    }

    /// Takes a session's lease as [`try_acquire_lease`](Self::try_acquire_lease)
    /// does and reads what the new holder's first turn answers, as
    /// [`turn_inputs`](Self::turn_inputs) does: one round trip on Postgres.
    pub async fn acquire_lease_for_turn(
        &self,
        session_id: Uuid,
        owner: &str,
        ttl: Duration,
        limit: i64,
    ) -> Result<Option<(Lease, TurnInputs)>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::sessions::acquire_for_turn(pool, session_id, owner, ttl, limit).await
            }
            Store::Sqlite(_) => {
                let Some(lease) = self.try_acquire_lease(session_id, owner, ttl).await? else {
                    return Ok(None);
                };
                Ok(Some((lease, self.turn_inputs(session_id, limit).await?)))
            }
        }
    }

    pub async fn lease_state(&self, session_id: Uuid) -> Result<LeaseState, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::lease_state(pool, session_id).await,
            Store::Sqlite(pool) => sqlite::sessions::lease_state(pool, session_id).await,
        }
    }

    /// Extends a held lease; false when it was lost (expired and taken by another).
    pub async fn extend_lease(&self, lease: Lease, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::extend(pool, lease, ttl).await,
            Store::Sqlite(pool) => sqlite::sessions::extend(pool, lease, ttl).await,
        }
    }

    /// Frees the lease when nothing is left to answer.
    pub async fn release_lease(&self, lease: Lease, ttl: Duration) -> Result<Release, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::release(pool, lease, ttl).await,
            Store::Sqlite(pool) => sqlite::sessions::release(pool, lease, ttl).await,
        }
    }

    /// Gives a lease up without finishing (after an error), so the retry can take it.
    pub async fn abandon_lease(&self, lease: Lease) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::abandon(pool, lease).await,
            Store::Sqlite(pool) => sqlite::sessions::abandon(pool, lease).await,
        }
    }

    /// Scheduled messages, soonest first: of one person or all; pending only
    /// unless `all_statuses`.
    pub async fn scheduled_messages(
        &self,
        identity_id: Option<Uuid>,
        all_statuses: bool,
        limit: i64,
    ) -> Result<Vec<ScheduledMessage>, StoreError> {
        portable!(self, scheduled::list(identity_id, all_statuses, limit))
    }

    /// Cancels a pending scheduled message (only `identity_id`'s when given).
    pub async fn cancel_scheduled(
        &self,
        id: Uuid,
        identity_id: Option<Uuid>,
        by: &str,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        portable!(self, scheduled::cancel(id, identity_id, by))
    }

    /// Turns due scheduled messages into deliveries; how many.
    pub async fn dispatch_scheduled(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        delivery_max_attempts: i32,
        limit: i64,
    ) -> Result<u64, StoreError> {
        portable!(
            self,
            scheduled::dispatch_due(now, delivery_max_attempts, limit)
        )
    }

    /// The recorded result of a durable tool call: (content, is_error).
    pub async fn tool_result(&self, call_key: &str) -> Result<Option<(String, bool)>, StoreError> {
        portable!(self, tool_results::tool_result(call_key))
    }

    /// Records a durable tool call's result (the first record of a key stays).
    pub async fn record_tool_result(
        &self,
        call_key: &str,
        tool: &str,
        content: &str,
        is_error: bool,
    ) -> Result<(), StoreError> {
        portable!(
            self,
            tool_results::record_tool_result(call_key, tool, content, is_error)
        )
    }

    /// Appends to a web chat visitor's mailbox; idempotent on `message_key`.
    pub async fn webchat_append(
        &self,
        connector_id: &str,
        visitor_id: &str,
        role: &str,
        message_key: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        portable!(
            self,
            webchat::webchat_append(connector_id, visitor_id, role, message_key, text)
        )
    }

    /// A web chat visitor's messages after `after_seq`, oldest first.
    pub async fn webchat_messages(
        &self,
        connector_id: &str,
        visitor_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<WebchatMessage>, StoreError> {
        portable!(
            self,
            webchat::webchat_messages(connector_id, visitor_id, after_seq, limit)
        )
    }

    /// A web chat visitor's newest `limit` messages, oldest first.
    pub async fn webchat_recent(
        &self,
        connector_id: &str,
        visitor_id: &str,
        limit: i64,
    ) -> Result<Vec<WebchatMessage>, StoreError> {
        portable!(
            self,
            webchat::webchat_recent(connector_id, visitor_id, limit)
        )
    }

    /// A session with its transcript's summary; None once it was forgotten.
    pub async fn session_info(&self, session_id: Uuid) -> Result<Option<SessionInfo>, StoreError> {
        portable!(self, memory::session_info(session_id))
    }

    /// What a lease holder's next turn answers: the session (None once it was
    /// forgotten) and up to `limit` of its unanswered events, in arrival order,
    /// as of one moment. One round trip on Postgres.
    pub async fn turn_inputs(
        &self,
        session_id: Uuid,
        limit: i64,
    ) -> Result<TurnInputs, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::turn_inputs(pool, session_id, limit).await,
            Store::Sqlite(pool) => {
                let Some(session) = sqlite::memory::session_info(pool, session_id).await? else {
                    return Ok(None);
                };
                let events = sqlite::sessions::pending_events(
                    pool,
                    session_id,
                    session.processed_seq,
                    limit,
                )
                .await?;
                Ok(Some((session, events)))
            }
        }
    }

    /// Unanswered events after `after_seq`, in arrival order.
    pub async fn pending_events(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::sessions::pending_events(pool, session_id, after_seq, limit).await
            }
            Store::Sqlite(pool) => {
                sqlite::sessions::pending_events(pool, session_id, after_seq, limit).await
            }
        }
    }

    /// The rows of a turn's memory layers: two statements on Postgres (see
    /// `postgres::layers`), the portable reads one after the other on SQLite.
    pub async fn memory_layers(&self, reads: &LayerReads<'_>) -> Result<LayerRows, StoreError> {
        let pool = match self {
            Store::Postgres(pool) => return postgres::layers::read(pool, reads).await,
            Store::Sqlite(pool) => pool,
        };
        let mut layers = LayerRows {
            recent: sqlite::memory::recent_history(
                pool,
                reads.transcript_id,
                reads.summarized_through,
                reads.history_limit,
            )
            .await?,
            facts: match reads.person {
                Some(id) => sqlite::memory::facts(pool, id, reads.max_facts).await?,
                None => Vec::new(),
            },
            notes: match reads.conversation_key {
                Some(key) => sqlite::memory::notes(pool, key, reads.max_facts).await?,
                None => Vec::new(),
            },
            recalled_memories: sqlite::memory::search_memories(
                pool,
                reads.terms,
                reads.person,
                reads.conversation_key,
                reads.recall_items,
            )
            .await?,
            recalled_messages: Vec::new(),
        };
        layers.recalled_messages = sqlite::memory::search_messages(
            pool,
            reads.terms,
            reads.transcript_id,
            layers.recall_before(reads.summarized_through),
            reads.recall_items,
        )
        .await?;
        Ok(layers)
    }

    /// The newest `limit` messages of a transcript after message `after_id`,
    /// oldest first.
    pub async fn recent_history(
        &self,
        transcript_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<HistoryMessage>, StoreError> {
        portable!(self, memory::recent_history(transcript_id, after_id, limit))
    }

    /// The oldest `limit` messages after the summary mark, oldest first.
    pub async fn oldest_unsummarized(
        &self,
        transcript_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<HistoryMessage>, StoreError> {
        portable!(
            self,
            memory::oldest_unsummarized(transcript_id, after_id, limit)
        )
    }

    /// Stores a transcript's new summary, fenced by the session lease; false when fenced.
    pub async fn save_summary(
        &self,
        lease: Lease,
        transcript_id: Uuid,
        built_on: (&str, i64),
        summary: &str,
        through: i64,
    ) -> Result<bool, StoreError> {
        portable!(
            self,
            memory::save_summary(lease, transcript_id, built_on, summary, through)
        )
    }

    /// The fact or note a handle names, within the given person and conversation.
    pub async fn find_memory(
        &self,
        handle: &str,
        identity_id: Option<Uuid>,
        conversation_key: Option<&str>,
    ) -> Result<Option<MemoryItem>, StoreError> {
        portable!(
            self,
            memory::find_by_handle(handle, identity_id, conversation_key)
        )
    }

    /// Facts and notes matching any search term, best first.
    pub async fn search_memories(
        &self,
        terms: &[String],
        identity_id: Option<Uuid>,
        conversation_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MemoryItem>, StoreError> {
        portable!(
            self,
            memory::search_memories(terms, identity_id, conversation_key, limit)
        )
    }

    /// Transcript messages before `before_id` matching any search term, best first.
    pub async fn search_messages(
        &self,
        terms: &[String],
        transcript_id: Uuid,
        before_id: i64,
        limit: i64,
    ) -> Result<Vec<RecalledMessage>, StoreError> {
        portable!(
            self,
            memory::search_messages(terms, transcript_id, before_id, limit)
        )
    }

    /// Deletes transcript messages (and settled events, finished deliveries) older
    /// than `cutoff`.
    pub async fn purge_older_than(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<PurgeReport, StoreError> {
        portable!(self, memory::purge_older_than(cutoff))
    }

    /// Deliveries matching `filter`, newest first, after the cursor `before`.
    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        portable!(self, admin::list_deliveries(filter, before, limit))
    }

    /// The dead deliveries matching `filter`, `limit` at most.
    pub async fn dead_delivery_ids(
        &self,
        filter: &DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        portable!(self, admin::dead_delivery_ids(filter, limit))
    }

    pub async fn show_delivery(&self, id: Uuid) -> Result<Option<DeliveryDetail>, StoreError> {
        portable!(self, admin::show_delivery(id))
    }

    /// One new attempt for a dead delivery's reply (see `portable::admin`).
    pub async fn retry_delivery(&self, id: Uuid) -> Result<AdminOutcome, StoreError> {
        portable!(self, admin::retry_delivery(id))
    }

    pub async fn discard_delivery(
        &self,
        id: Uuid,
        reason: &str,
    ) -> Result<AdminOutcome, StoreError> {
        portable!(self, admin::discard_delivery(id, reason))
    }

    /// Claims an Idempotency-Key; the stored answer when it was seen before.
    pub async fn claim_admin_request(
        &self,
        key: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        portable!(self, admin::claim_request(key))
    }

    pub async fn finish_admin_request(&self, key: &str, response: &str) -> Result<(), StoreError> {
        portable!(self, admin::finish_request(key, response))
    }

    /// Queues a turn job for sessions whose unanswered messages lost theirs (see
    /// `worker::maintenance`); how many.
    pub async fn requeue_stranded_sessions(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        bucket: i64,
        turn_job_attempts: usize,
    ) -> Result<u64, StoreError> {
        portable!(
            self,
            admin::requeue_stranded_sessions(cutoff, bucket, turn_job_attempts)
        )
    }

    /// Deletes up to `limit` queue jobs that finished for good before `cutoff`,
    /// in id order after `after` (see `worker::maintenance`).
    pub async fn purge_finished_jobs(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        after: &str,
        limit: i64,
    ) -> Result<PurgedJobs, StoreError> {
        portable!(self, admin::purge_finished_jobs(cutoff, after, limit))
    }

    /// Whether an earlier reply of the same session and connector, created after
    /// `not_before`, is still pending.
    pub async fn earlier_delivery_pending(
        &self,
        delivery_id: Uuid,
        not_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        portable!(
            self,
            admin::earlier_delivery_pending(delivery_id, not_before)
        )
    }

    /// Runs a delivery attempt's job again after `wait`, without starting it now.
    pub async fn defer_delivery(
        &self,
        job: &DeliveryJob,
        wait: Duration,
    ) -> Result<(), StoreError> {
        portable!(self, admin::defer_delivery(job, wait))
    }

    pub async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        portable!(self, admin::queue_stats())
    }

    /// Turns matching `filter`, newest first, after the cursor `before`.
    pub async fn list_turns(
        &self,
        filter: &TurnFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<TurnSummary>, StoreError> {
        portable!(self, admin::list_turns(filter, before, limit))
    }

    /// A turn with the messages it wrote (tool calls included).
    pub async fn show_turn(
        &self,
        id: Uuid,
    ) -> Result<Option<(TurnSummary, Vec<TranscriptMessage>)>, StoreError> {
        portable!(self, admin::show_turn(id))
    }

    /// Answers a failed turn's messages again: each is recorded anew (platform id
    /// `rerun:<turn>:<original>`, so a rerun requested twice records them once)
    /// and goes through the normal pipeline, in order with the session; then the
    /// turn is marked `rerun`.
    pub async fn rerun_turn(
        &self,
        id: Uuid,
        turn_job_attempts: usize,
    ) -> Result<AdminOutcome, StoreError> {
        let (agent, events) = match portable!(self, admin::failed_turn_events(id))? {
            Ok(found) => found,
            Err(outcome) => return Ok(outcome),
        };
        for event in events {
            let message = InboundMessage {
                platform_message_id: format!("rerun:{id}:{}", event.platform_message_id),
                sender_id: event.sender_id,
                sender_name: event.sender_name,
                conversation_id: event.conversation_id,
                thread_id: event.thread_id,
                is_group: event.is_group,
                text: event.text,
                attachments: event.attachments.0,
                sent_at: None,
            };
            let routing = Routing {
                connector_id: &event.connector_id,
                channel: &event.channel,
                agent: &agent,
            };
            self.record_inbound(&routing, &message, turn_job_attempts)
                .await?;
        }
        portable!(self, admin::resolve_turn(id, "rerun", None))?;
        Ok(AdminOutcome::Done { ids: vec![id] })
    }

    /// Marks a failed turn discarded, keeping the reason.
    pub async fn discard_turn(&self, id: Uuid, reason: &str) -> Result<AdminOutcome, StoreError> {
        if portable!(self, admin::resolve_turn(id, "discarded", Some(reason)))? {
            return Ok(AdminOutcome::Done { ids: vec![id] });
        }
        Ok(match self.show_turn(id).await? {
            None => AdminOutcome::NotFound,
            Some((turn, _)) => AdminOutcome::Skipped {
                status: match turn.resolution {
                    Some(resolution) => format!("{}, {resolution}", turn.status),
                    None => turn.status,
                },
            },
        })
    }

    /// Sessions, newest first, after the cursor `before`.
    pub async fn list_sessions(
        &self,
        agent: Option<&str>,
        identity_id: Option<Uuid>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        portable!(
            self,
            admin::list_sessions(agent, identity_id, before, limit)
        )
    }

    /// The newest `limit` messages of a session's transcript, oldest first.
    pub async fn transcript(
        &self,
        session_id: Uuid,
        limit: i64,
    ) -> Result<Vec<TranscriptMessage>, StoreError> {
        portable!(self, admin::transcript(session_id, limit))
    }

    /// Tokens, calls and cost by UTC day, agent and model, from `since` on.
    pub async fn usage(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        portable!(self, admin::usage(since))
    }

    /// The identity of an account, if it has written to us.
    pub async fn identity_of(
        &self,
        connector_id: &str,
        sender_id: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        portable!(self, identity::identity_of(connector_id, sender_id))
    }

    /// The accounts of an identity; empty for an unknown one.
    pub async fn accounts(&self, identity_id: Uuid) -> Result<Vec<Account>, StoreError> {
        portable!(self, identity::accounts(identity_id))
    }

    /// Where `sender_id` last wrote to us directly on `connector_id`:
    /// (conversation, thread).
    pub async fn last_direct_conversation(
        &self,
        connector_id: &str,
        sender_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        portable!(
            self,
            identity::last_direct_conversation(connector_id, sender_id)
        )
    }

    /// A fresh one-time link code for `identity_id`.
    pub async fn create_link_code(
        &self,
        identity_id: Uuid,
        account: &str,
        policy: LinkPolicy,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        portable!(
            self,
            identity::create_link_code(identity_id, account, policy, now_ms)
        )
    }

    /// Redeems a link code from an account, merging the two identities.
    pub async fn redeem_link_code(
        &self,
        code: &str,
        connector_id: &str,
        sender_id: &str,
        policy: LinkPolicy,
        now_ms: i64,
    ) -> Result<LinkOutcome, StoreError> {
        portable!(
            self,
            identity::redeem_link_code(code, connector_id, sender_id, policy, now_ms)
        )
    }

    /// Merges two identities (an operator's link); None when either is unknown.
    pub async fn link_identities(&self, a: Uuid, b: Uuid) -> Result<Option<Uuid>, StoreError> {
        portable!(self, identity::link(a, b))
    }

    /// Gives an account an identity of its own; None for an unknown account.
    pub async fn unlink_account(
        &self,
        connector_id: &str,
        sender_id: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        portable!(self, identity::unlink(connector_id, sender_id))
    }

    /// Deletes everything of one person; None for an unknown identity.
    pub async fn forget_identity(
        &self,
        identity_id: Uuid,
    ) -> Result<Option<ForgetReport>, StoreError> {
        portable!(self, identity::forget(identity_id))
    }

    /// Commits a turn in one transaction fenced by the lease epoch.
    pub async fn commit_turn(&self, turn: TurnRecord<'_>) -> Result<TurnCommit, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::sessions::commit_turn(pool, turn).await,
            Store::Sqlite(pool) => sqlite::sessions::commit_turn(pool, turn).await,
        }
    }

    /// Marks the start of a delivery attempt; None when there is nothing to send.
    pub async fn begin_attempt(
        &self,
        job: &DeliveryJob,
    ) -> Result<Option<DeliveryRow>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::deliveries::begin_attempt(pool, job).await,
            Store::Sqlite(pool) => sqlite::deliveries::begin_attempt(pool, job).await,
        }
    }

    /// Records an attempt's outcome and schedules what follows, atomically;
    /// `last_part` is the [`DeliveryRow`]'s (a delivered last part queues
    /// nothing). A job `claimed` outside the queue's consumer (first attempts,
    /// on Postgres only) is marked done with it.
    pub async fn finish_attempt(
        &self,
        job: &DeliveryJob,
        outcome: AttemptOutcome<'_>,
        last_part: bool,
        claimed: Option<&postgres::deliveries::ClaimedJob>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::deliveries::finish_attempt(pool, job, outcome, last_part, claimed).await
            }
            Store::Sqlite(pool) => {
                debug_assert!(claimed.is_none(), "no first attempts on SQLite");
                sqlite::deliveries::finish_attempt(pool, job, outcome, last_part).await
            }
        }
    }

    /// The status of an inbound event and the assistant message of the turn that
    /// answered it; None for an unknown event.
    pub async fn event_reply(&self, event_id: Uuid) -> Result<Option<EventReply>, StoreError> {
        // The turn's final answer: its last assistant message without tool parts.
        const SQL: &str = "SELECT e.status, m.content AS reply
                             FROM inbound_events e
                             LEFT JOIN messages m ON m.turn_id = e.turn_id AND m.role = 'assistant'
                                                 AND m.parts IS NULL
                            WHERE e.id = $1
                            ORDER BY m.id DESC
                            LIMIT 1";
        Ok(match self {
            Store::Postgres(pool) => {
                sqlx::query_as(SQL)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(SQL)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }

    /// Tokens (input and output) recorded since `since` for `agent`, and for one
    /// person (`user_key`, "<connector>:<sender id>") with it.
    pub async fn tokens_used_since(
        &self,
        agent: &str,
        user_key: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(i64, i64), StoreError> {
        const SQL: &str = "SELECT CAST(COALESCE(SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)), 0) AS BIGINT),
                                  CAST(COALESCE(SUM(CASE WHEN user_key = $3
                                       THEN COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0) ELSE 0 END), 0) AS BIGINT)
                             FROM model_calls WHERE agent = $1 AND started_at >= $2";
        Ok(match self {
            Store::Postgres(pool) => {
                sqlx::query_as(SQL)
                    .bind(agent)
                    .bind(since)
                    .bind(user_key)
                    .fetch_one(pool)
                    .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(SQL.replace('$', "?")))
                    .bind(agent)
                    .bind(since)
                    .bind(user_key)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// Puts the unfinished jobs of the named queue workers back on their queues,
    /// but for those held by one of `claims` (first delivery attempts, which
    /// exist on Postgres only).
    pub async fn return_unfinished_jobs(
        &self,
        workers: &[String],
        claims: &[postgres::deliveries::ClaimToken],
    ) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::return_unfinished(pool, workers, claims).await,
            Store::Sqlite(pool) => {
                debug_assert!(claims.is_empty(), "no first attempts on SQLite");
                sqlite::return_unfinished(pool, workers).await
            }
        }
    }
}

/// A queue task for `job`, due now or after `run_after`.
pub(crate) fn queue_task<J: Job>(
    job: &J,
    idempotency_key: String,
    max_attempts: usize,
    run_after: Option<Duration>,
) -> Task<Vec<u8>> {
    let mut builder = TaskBuilder::new(job.encode())
        .max_attempts(max_attempts)
        .idempotency_key(idempotency_key);
    if let Some(delay) = run_after {
        // The queues store whole seconds; round up so a job never runs before its
        // wait (a platform's Retry-After is a "not before").
        let at = (std::time::SystemTime::now() + delay)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        builder = builder.run_at_timestamp(at.as_secs() + u64::from(at.subsec_nanos() > 0));
    }
    builder.build()
}

/// Queue attempts of a delivery job: one per delivery attempt, retries are
/// scheduled by the delivery worker with their own waits. More queue attempts only
/// happen when a worker died mid-send or the store failed (with backoff, see
/// `worker::back_off`).
pub(crate) const DELIVERY_JOB_ATTEMPTS: usize = 8;
