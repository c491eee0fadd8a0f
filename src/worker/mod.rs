//! The worker role: runs turn and delivery jobs from the store's queue.
//!
//! Pickup latency: on Postgres each queue listens on NOTIFY (apalis' insert
//! trigger), so a new job starts within milliseconds; delayed jobs (delivery
//! retries) are found by a poll every `worker.poll_interval`. The embedded SQLite
//! store (one process) polls every `worker.poll_interval`.
//!
//! Recovery: every worker heartbeats every quarter of `worker.recovery_window` and
//! is taken for dead after three missed beats; live workers then put its jobs back
//! on the queue on their next beat, so a dead worker's jobs run again within the
//! window.
//!
//! Shutdown: on the signal, workers stop fetching and in-flight jobs get
//! `worker.shutdown_grace` to finish; whatever is still running then is dropped
//! and put back on the queue at once, not left for orphan recovery.

pub mod delivery;
pub mod maintenance;
pub mod turn;

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::{BackendExt, poll_strategy::Strategy};
use apalis_postgres::{PostgresStorage, Pubsub};
use apalis_sqlite::SqliteStorage;
use microclaw_jobs::{DeliveryJob, Job, TurnJob};

use crate::{deployment::Deployment, store::Store};

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
    ($monitor:expr, $store:expr, $job:ty, $name:expr, $data:expr, $concurrency:expr, $handler:path, $settings:expr) => {{
        let name: String = $name;
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
                let strategy = Strategy::new()
                    .stream(Pubsub::new(pool.clone(), <$job>::QUEUE.to_owned()))
                    .interval(poll);
                let backend = PostgresStorage::<$job>::new(&pool)
                    .with_config(config)
                    .poll_with_strategy(strategy);
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
                    .poll_with_strategy(Strategy::new().interval(poll));
                WorkerBuilder::new(name.clone())
                    .backend(backend)
                    .data(data.clone())
                    .concurrency(concurrency)
                    .build($handler)
            }),
        }
    }};
}

/// Runs the workers until `shutdown` resolves, then drains within the grace period.
pub async fn run(
    deployment: Arc<Deployment>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = &deployment.settings.worker;
    let store = deployment.store.clone();
    let id = worker_id();
    let turn_name = format!("{id}-turns");
    let delivery_name = format!("{id}-deliveries");
    tracing::info!(worker = %id, backend = store.backend(), "worker starting");

    let turn_context = turn::TurnContext {
        deployment: deployment.clone(),
        worker_id: id.clone(),
    };
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        deployment.settings.memory.clone(),
        deployment.settings.worker.clone(),
        deployment.settings.delivery.max_attempts,
    ));
    let monitor = Monitor::new();
    let monitor = register_queue!(
        monitor,
        store,
        TurnJob,
        turn_name.clone(),
        turn_context,
        settings.turn_concurrency,
        turn::run,
        settings
    );
    let monitor = register_queue!(
        monitor,
        store,
        DeliveryJob,
        delivery_name.clone(),
        deployment.clone(),
        settings.delivery_concurrency,
        delivery::run,
        settings
    );
    let result = monitor
        .shutdown_timeout(settings.shutdown_grace.0)
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("worker stopping: finishing in-flight jobs");
            Ok(())
        })
        .await;
    maintenance.abort();
    let returned = store
        .return_unfinished_jobs(&[turn_name, delivery_name])
        .await?;
    if returned > 0 {
        tracing::warn!(
            jobs = returned,
            "in-flight jobs did not finish in time; returned to the queue"
        );
    }
    tracing::info!(worker = %id, "worker stopped");
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))
}
