//! The production store: Postgres, with the queue in schema `apalis`
//! (apalis-postgres). Jobs are pushed inside the transaction that records the
//! state needing them, so a job exists if and only if that state committed.

#[path = "../portable/admin.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod admin;
pub mod deliveries;
#[path = "../portable/identity.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod identity;
pub mod inbound;
pub mod layers;
#[path = "../portable/memory.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod memory;
#[path = "../portable/scheduled.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod scheduled;
pub mod sessions;
#[path = "../portable/tool_results.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod tool_results;
#[path = "../portable/webchat.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, see store::portable"
)]
pub mod webchat;

/// What the backend-neutral store code (`store::portable`) needs from Postgres.
pub(crate) mod dialect {
    use crate::store::StoreError;
    pub use crate::store::portable::Backend;

    pub type Db = sqlx::Postgres;
    pub const BACKEND: Backend = Backend::Postgres;
    pub const FOR_SHARE: &str = " FOR SHARE";
    pub const FOR_UPDATE: &str = " FOR UPDATE";
    pub const FOR_NO_KEY_UPDATE: &str = " FOR NO KEY UPDATE";

    pub fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(text.to_owned())
    }

    pub async fn begin(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        Ok(pool.begin().await?)
    }

    /// Queues a job in the caller's transaction, under `idempotency_key`, due
    /// after `run_after`.
    pub async fn enqueue<J: microclaw_jobs::Job>(
        tx: &mut sqlx::Transaction<'static, Db>,
        job: &J,
        idempotency_key: String,
        max_attempts: usize,
        run_after: Option<std::time::Duration>,
    ) -> Result<(), StoreError> {
        super::enqueue(
            tx,
            super::Enqueue {
                job,
                idempotency_key,
                max_attempts,
                run_after,
            },
        )
        .await
    }
}

use std::time::Duration;

use microclaw_jobs::Job;
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::StoreError;
use crate::config::DatabaseConfig;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pooled connection idle for longer than this is pinged before it is handed
/// out; one in steady use is not.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(2);

/// Opens a pool without waiting for the database: a receiver must start (and
/// answer 503) while Postgres is down.
///
/// sqlx pings every pooled connection before handing it out, a round trip per
/// transaction (and per statement run on the pool); under load that was about a
/// fifth of all round trips. Here only a connection that sat idle is pinged. A
/// connection that broke while in steady use (Postgres restarted) fails its next
/// statement instead, is discarded by the pool, and the caller's usual error path
/// applies: the receiver answers 503 (the platform resends), a job is retried.
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout.0)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
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
    let task = super::queue_task(
        enqueue.job,
        enqueue.idempotency_key,
        enqueue.max_attempts,
        enqueue.run_after,
    );
    apalis_postgres::queries::push_tasks(&mut **tx, J::QUEUE, vec![task]).await?;
    Ok(())
}

/// Pushes several jobs of one kind in one statement inside the caller's
/// transaction, each with its idempotency key, due now or after `run_after`.
pub async fn enqueue_many<J: Job>(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[(J, String)],
    max_attempts: usize,
    run_after: Option<Duration>,
) -> Result<(), StoreError> {
    let tasks = jobs
        .iter()
        .map(|(job, key)| super::queue_task(job, key.clone(), max_attempts, run_after))
        .collect();
    apalis_postgres::queries::push_tasks(&mut **tx, J::QUEUE, tasks).await?;
    Ok(())
}

/// Puts the unfinished jobs of the named workers back on their queues, but for
/// the delivery jobs claimed with one of `claims` (first delivery attempts
/// still running, or a commit claiming them).
pub async fn return_unfinished(
    pool: &PgPool,
    workers: &[String],
    claims: &[deliveries::ClaimToken],
) -> Result<u64, StoreError> {
    let tokens: Vec<_> = claims.iter().map(|token| token.at()).collect();
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
          WHERE lock_by = ANY($1) AND status IN ('Running', 'Queued')
            AND NOT (job_type = $3 AND lock_at IS NOT NULL AND lock_at = ANY($2))",
    )
    .bind(workers)
    .bind(&tokens)
    .bind(<microclaw_jobs::DeliveryJob as Job>::QUEUE)
    .execute(pool)
    .await?
    .rows_affected())
}
