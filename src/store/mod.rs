//! Postgres: the source of truth for sessions, messages, deliveries and the queue.
//!
//! Every state change that carries a guarantee happens in one transaction together
//! with the queue writes it implies (a transactional outbox): the inbound event and
//! its turn job; a turn's messages, its deliveries and their jobs; a delivery
//! attempt's outcome and the job of the next attempt. A job therefore exists if and
//! only if the state that needs it was committed.

pub mod deliveries;
pub mod inbound;
pub mod sessions;

use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use microclaw_jobs::Job;
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] apalis_postgres::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool without waiting for the database: a receiver must start (and
/// answer 503) while Postgres is down.
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout.0)
        .connect_lazy_with(options))
}

/// Creates the configured database when the server does not have it yet.
pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
    use sqlx::migrate::MigrateDatabase;
    if Postgres::database_exists(url).await? {
        return Ok(false);
    }
    Postgres::create_database(url).await?;
    Ok(true)
}

/// Applies the queue's migrations (schema `apalis`) and ours (schema `public`).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the database answers, within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// How a job is put on its queue.
pub struct Enqueue<'a, J: Job> {
    pub job: &'a J,
    pub idempotency_key: String,
    pub max_attempts: usize,
    pub run_after: Option<Duration>,
}

/// Pushes a job inside the caller's transaction: it exists only if the
/// transaction commits.
pub async fn enqueue<J: Job>(
    tx: &mut Transaction<'_, Postgres>,
    enqueue: Enqueue<'_, J>,
) -> Result<(), StoreError> {
    let mut builder = TaskBuilder::new(enqueue.job.encode())
        .max_attempts(enqueue.max_attempts)
        .idempotency_key(enqueue.idempotency_key);
    if let Some(delay) = enqueue.run_after {
        // The queue stores whole seconds; round up so a job never runs before its
        // wait (a platform's Retry-After is a "not before").
        let at = (std::time::SystemTime::now() + delay)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        builder = builder.run_at_timestamp(at.as_secs() + u64::from(at.subsec_nanos() > 0));
    }
    apalis_postgres::queries::push_tasks(&mut **tx, J::QUEUE, vec![builder.build()]).await?;
    Ok(())
}
