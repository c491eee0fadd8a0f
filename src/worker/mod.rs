//! The worker role: runs turn and delivery jobs from the store's queue.
//!
//! Pickup latency: on Postgres a new job wakes its queue's consumer by NOTIFY
//! (one listener per process, see [`wakeups`]), so it starts within
//! milliseconds; delayed jobs (delivery retries) are found by a poll every
//! `worker.poll_interval`. The embedded SQLite store (one process) polls every
//! `worker.poll_interval`. See [`fetch_triggers`] for why both are ours, not
//! apalis's strategies.
//!
//! Recovery: every worker heartbeats every quarter of `worker.recovery_window` and
//! is taken for dead after three missed beats; live workers then put its jobs back
//! on the queue on their next beat, so a dead worker's jobs run again within the
//! window.
//!
//! Shutdown: on the signal, workers stop fetching and in-flight jobs get
//! `worker.shutdown_grace` to finish; whatever is still running then is dropped
//! and put back on the queue at once, not left for orphan recovery.
//!
//! First delivery attempts: on Postgres the worker that commits a turn makes
//! its reply's first delivery attempt itself, the queued job being the
//! fallback; see [`first_attempt`].
//!
//! Supervision: a queue's consumer that dies on a backend error (the database
//! was away) is restarted with a backoff, its running jobs first put back on
//! the queue; see [`Consumer`].

pub mod delivery;
pub mod fetch_triggers;
pub mod first_attempt;
pub mod maintenance;
pub mod turn;
pub mod wakeups;

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::BackendExt;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use backon::BackoffBuilder;
use microclaw_jobs::{DeliveryJob, Job, TurnJob};

use crate::{deployment::Deployment, roles::Shutdown, store::Store};

/// Heartbeat every quarter of the recovery window; dead after three missed beats.
fn heartbeat(recovery_window: Duration) -> Duration {
    recovery_window / 4
}
const MISSED_HEARTBEATS: usize = 3;

/// The wait before a job that failed on infrastructure (a database error) is
/// handed back to the queue, which re-fetches failed jobs at once: 0.5 s doubling
/// per attempt, at most 30 s, so a database hiccup is ridden out instead of
/// burning every attempt in a second.
pub async fn back_off(attempt: usize) {
    let exponent = attempt.saturating_sub(1).min(6) as u32;
    let wait = Duration::from_millis(500 * 2u64.pow(exponent)).min(Duration::from_secs(30));
    tokio::time::sleep(wait).await;
}

/// A name for this worker process, unique across restarts and replicas.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &nonce[..8])
}

/// Registers one apalis worker for `$job` on `$monitor`, on the deployment's backend.
macro_rules! register_queue {
    ($monitor:expr, $store:expr, $wakeups:expr, $job:ty, $name:expr, $data:expr, $concurrency:expr, $handler:path, $settings:expr) => {{
        let name: String = $name;
        let wakeups: Option<Arc<wakeups::QueueWakeups>> = $wakeups;
        let data = $data;
        let concurrency: usize = $concurrency;
        let beat = heartbeat($settings.recovery_window.0);
        let poll = $settings.poll_interval.0;
        let batch = concurrency.clamp(1, 20);
        match $store.clone() {
            Store::Postgres(pool) => $monitor.register(move |_| {
                let mut config = apalis_postgres::Config::default()
                    .queue(<$job>::QUEUE)
                    .heartbeat_interval(beat)
                    .batch_size(batch);
                config.missed_heartbeats = MISSED_HEARTBEATS;
                let triggers = fetch_triggers::FetchTriggers::new(
                    poll,
                    wakeups.as_ref().map(|w| w.subscribe(<$job>::QUEUE)),
                );
                let backend = PostgresStorage::<$job>::new(&pool)
                    .with_config(config)
                    .poll_with_strategy(triggers);
                WorkerBuilder::new(name.clone())
                    .backend(backend)
                    .data(data.clone())
                    .concurrency(concurrency)
                    .build($handler)
            }),
            Store::Sqlite(pool) => $monitor.register(move |_| {
                let config = apalis_sqlite::Config::default()
                    .queue(<$job>::QUEUE)
                    .heartbeat_interval(beat)
                    .missed_heartbeats(MISSED_HEARTBEATS)
                    .batch_size(batch);
                let backend = SqliteStorage::<$job>::new(&pool)
                    .with_config(config)
                    .poll_with_strategy(fetch_triggers::FetchTriggers::new(poll, None));
                WorkerBuilder::new(name.clone())
                    .backend(backend)
                    .data(data.clone())
                    .concurrency(concurrency)
                    .build($handler)
            }),
        }
    }};
}

/// Runs the workers until `shutdown`, then drains within the grace period.
pub async fn run(deployment: Arc<Deployment>, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = &deployment.settings.worker;
    let store = deployment.store.clone();
    let id = worker_id();
    tracing::info!(worker = %id, backend = store.backend(), "worker starting");

    let deliveries_name = format!("{id}-deliveries");
    let (wakeups, first_attempts) = match &store {
        Store::Postgres(pool) => (
            Some(Arc::new(wakeups::QueueWakeups::listen(pool.clone()))),
            Some(Arc::new(first_attempt::FirstAttempts::new(
                pool.clone(),
                deliveries_name.clone(),
                settings.delivery_concurrency,
            ))),
        ),
        Store::Sqlite(_) => (None, None),
    };
    let turn_context = turn::TurnContext {
        deployment: deployment.clone(),
        worker_id: id.clone(),
        first_attempts: first_attempts.clone(),
    };
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        deployment.settings.memory.clone(),
        deployment.settings.worker.clone(),
        deployment.settings.delivery.max_attempts,
    ));
    let turns = Consumer {
        queue: TurnJob::QUEUE,
        name: format!("{id}-turns"),
        store: store.clone(),
        grace: settings.shutdown_grace.0,
        first_attempts: None,
    };
    let turn_monitor = {
        let (store, name, settings) = (store.clone(), turns.name.clone(), settings.clone());
        let wakeups = wakeups.clone();
        move || {
            register_queue!(
                Monitor::new(),
                store,
                wakeups.clone(),
                TurnJob,
                name.clone(),
                turn_context.clone(),
                settings.turn_concurrency,
                turn::run,
                settings
            )
        }
    };
    let deliveries = Consumer {
        queue: DeliveryJob::QUEUE,
        name: deliveries_name,
        store: store.clone(),
        grace: settings.shutdown_grace.0,
        first_attempts: first_attempts.clone(),
    };
    let delivery_monitor = {
        let (store, name, settings) = (store.clone(), deliveries.name.clone(), settings.clone());
        let deployment = deployment.clone();
        let wakeups = wakeups.clone();
        move || {
            register_queue!(
                Monitor::new(),
                store,
                wakeups.clone(),
                DeliveryJob,
                name.clone(),
                deployment.clone(),
                settings.delivery_concurrency,
                delivery::run,
                settings
            )
        }
    };
    let grace = settings.shutdown_grace.0;
    let (turns_ended, deliveries_ended, ()) = tokio::join!(
        turns.run(turn_monitor, shutdown.clone()),
        deliveries.run(delivery_monitor, shutdown.clone()),
        async {
            if let Some(first_attempts) = &first_attempts {
                shutdown.wait().await;
                first_attempts.finish(grace).await;
            }
        },
    );
    maintenance.abort();
    turns_ended?;
    deliveries_ended?;
    if first_attempts.is_some() {
        // First attempts cancelled after the grace period left their jobs
        // claimed; those go back on the queue now.
        deliveries.return_unfinished_at_shutdown().await?;
    }
    tracing::info!(worker = %id, "worker stopped");
    Ok(())
}

/// One queue's consumer: an apalis monitor with one worker on the queue, kept
/// running until shutdown.
///
/// apalis ends a worker for good when its backend fails (a fetch or a
/// heartbeat while the database is away, a pool that timed out), and the
/// process would go on without consuming that queue. So each queue runs in its
/// own monitor, and a monitor that ends before shutdown is rebuilt after a
/// backoff ([`RestartWaits`]), once the jobs its worker was running (their
/// futures died with it) are back on the queue. A consumer that has run for a
/// while starts its backoff over.
struct Consumer {
    queue: &'static str,
    /// The apalis worker name, kept across restarts: jobs locked by it are ours.
    name: String,
    store: Store,
    grace: Duration,
    /// First delivery attempts running outside the consumer, whose jobs it
    /// leaves alone (the delivery queue on Postgres).
    first_attempts: Option<Arc<first_attempt::FirstAttempts>>,
}

/// Backoff between restarts of a queue consumer, and between tries of
/// whatever must wait for the database to answer (the queue listener's
/// reconnections, see [`wakeups`]; a first attempt's claim and settle, see
/// [`first_attempt`]): 250 ms doubling with jitter, at most 15 s, never ending.
struct RestartWaits(backon::ExponentialBackoff);

/// The longest wait of [`RestartWaits`].
const MAX_RESTART_WAIT: Duration = Duration::from_secs(15);

impl RestartWaits {
    fn new() -> Self {
        Self(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(MAX_RESTART_WAIT)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    fn next_wait(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX_RESTART_WAIT)
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

/// A consumer that ran this long before it died starts its backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Consumer {
    async fn run(&self, monitor: impl Fn() -> Monitor, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut waits = RestartWaits::new();
        loop {
            let started = tokio::time::Instant::now();
            let (signal, queue) = (shutdown.clone(), self.queue);
            // With a shutdown timeout the monitor ends when its worker ends,
            // whether by the signal or by an error (which apalis logs).
            let _ = monitor()
                .shutdown_timeout(self.grace)
                .run_with_signal(async move {
                    signal.wait().await;
                    tracing::info!(queue, "worker stopping: finishing in-flight jobs");
                    Ok(())
                })
                .await;
            if shutdown.is_triggered() {
                return self.return_unfinished_at_shutdown().await;
            }
            if started.elapsed() >= HEALTHY_RUN {
                waits = RestartWaits::new();
            }
            crate::metrics::queue_consumer_restart(self.queue);
            tracing::error!(
                queue = self.queue,
                "queue consumer died on a backend error; restarting it once the database answers"
            );
            // Restart once the dead worker's jobs are back (the database may
            // still be away: keep waiting).
            loop {
                let wait = waits.next_wait();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.clone().wait() => return self.return_unfinished_at_shutdown().await,
                }
                if self.return_unfinished().await.is_ok() {
                    break;
                }
            }
        }
    }

    /// At shutdown, the jobs still running after the grace period go back on
    /// the queue at once; a pool that is busy for a moment gets a few tries.
    async fn return_unfinished_at_shutdown(&self) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.return_unfinished().await {
                Err(_) if tries < 3 => tokio::time::sleep(Duration::from_millis(500)).await,
                ended => return ended,
            }
        }
    }

    /// Puts the jobs this consumer's worker was running back on the queue (but
    /// for those whose first attempt runs outside it).
    async fn return_unfinished(&self) -> anyhow::Result<()> {
        let (_claims_held, claims) = match &self.first_attempts {
            Some(first_attempts) => {
                let (guard, claims) = first_attempts.hold_claims().await;
                (Some(guard), claims)
            }
            None => (None, Vec::new()),
        };
        let returned = self
            .store
            .return_unfinished_jobs(std::slice::from_ref(&self.name), &claims)
            .await
            .map_err(|e| {
                tracing::warn!(queue = self.queue, error = %e, "could not return unfinished jobs to the queue");
                e
            })?;
        if returned > 0 {
            tracing::warn!(
                queue = self.queue,
                jobs = returned,
                "unfinished jobs returned to the queue"
            );
        }
        Ok(())
    }
}
