//! The worker role: runs turn and delivery jobs from the Postgres queue.
//!
//! Pickup latency: each queue listens on Postgres NOTIFY (apalis' insert trigger),
//! so a new job starts within milliseconds; delayed jobs (delivery retries) are
//! found by a poll every `worker.poll_interval`.
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
pub mod turn;

use std::sync::Arc;

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::{
    BackendExt,
    poll_strategy::{PollWith, Strategy},
};
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use microclaw_jobs::{DeliveryJob, Job, TurnJob};
use sqlx::PgPool;

use crate::{config::WorkerConfig, deployment::Deployment};

fn queue_config(queue: &str, worker: &WorkerConfig, concurrency: usize) -> Config {
    let mut config = Config::default()
        .queue(queue)
        .heartbeat_interval(worker.recovery_window.0 / 4)
        .batch_size(concurrency.clamp(1, 20));
    config.missed_heartbeats = 3;
    config
}

fn storage<J>(
    pool: &PgPool,
    config: Config,
    worker: &WorkerConfig,
) -> PollWith<PostgresStorage<J>, Strategy> {
    let strategy = Strategy::new()
        .stream(Pubsub::new(pool.clone(), config.queue.to_string()))
        .interval(worker.poll_interval.0);
    PostgresStorage::<J>::new(pool)
        .with_config(config)
        .poll_with_strategy(strategy)
}

/// A name for this worker process, unique across restarts and replicas.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &nonce[..8])
}

/// Runs the workers until `shutdown` resolves, then drains within the grace period.
pub async fn run(
    deployment: Arc<Deployment>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = &deployment.settings.worker;
    let pool = deployment.pool.clone();
    let id = worker_id();
    let turn_name = format!("{id}-turns");
    let delivery_name = format!("{id}-deliveries");
    tracing::info!(worker = %id, "worker starting");

    let turn_context = turn::TurnContext {
        deployment: deployment.clone(),
        worker_id: id.clone(),
    };
    let turn_concurrency = settings.turn_concurrency;
    let delivery_concurrency = settings.delivery_concurrency;
    let turn_config = queue_config(TurnJob::QUEUE, settings, turn_concurrency);
    let delivery_config = queue_config(DeliveryJob::QUEUE, settings, delivery_concurrency);
    let worker_settings = settings.clone();
    let turn_pool = pool.clone();
    let turn_worker_name = turn_name.clone();
    let delivery_pool = pool.clone();
    let delivery_worker_name = delivery_name.clone();
    let delivery_deployment = deployment.clone();
    let delivery_settings = settings.clone();

    let monitor = Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(turn_worker_name.clone())
                .backend(storage::<TurnJob>(
                    &turn_pool,
                    turn_config.clone(),
                    &worker_settings,
                ))
                .data(turn_context.clone())
                .concurrency(turn_concurrency)
                .build(turn::run)
        })
        .register(move |_| {
            WorkerBuilder::new(delivery_worker_name.clone())
                .backend(storage::<DeliveryJob>(
                    &delivery_pool,
                    delivery_config.clone(),
                    &delivery_settings,
                ))
                .data(delivery_deployment.clone())
                .concurrency(delivery_concurrency)
                .build(delivery::run)
        })
        .shutdown_timeout(settings.shutdown_grace.0);
    let result = monitor
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("worker stopping: finishing in-flight jobs");
            Ok(())
        })
        .await;
    let returned = return_unfinished(&pool, &[turn_name, delivery_name]).await?;
    if returned > 0 {
        tracing::warn!(
            jobs = returned,
            "in-flight jobs did not finish in time; returned to the queue"
        );
    }
    tracing::info!(worker = %id, "worker stopped");
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))
}

/// Puts this process's unfinished jobs back on their queues.
async fn return_unfinished(pool: &PgPool, workers: &[String]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
          WHERE lock_by = ANY($1) AND status IN ('Running', 'Queued')",
    )
    .bind(workers)
    .execute(pool)
    .await?
    .rows_affected())
}
