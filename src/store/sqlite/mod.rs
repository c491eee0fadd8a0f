//! The embedded store for `microclaw dev`: one SQLite file holding our tables and
//! the queue (apalis-sqlite's `Jobs` and `Workers`), so a job is written in the
//! same transaction as the state that needs it, exactly as on Postgres.
//!
//! Durability: apalis-sqlite's `setup()` switches `synchronous` off on the
//! connection it runs on. MicroClaw runs that setup on a throwaway connection and
//! opens its own pool in WAL mode with `synchronous = FULL` on every connection, so
//! a committed (acknowledged) message survives a crash of the process.
//!
//! Concurrency: SQLite has one writer at a time. Every write transaction starts
//! with `BEGIN IMMEDIATE`, so it takes the write lock up front and waits
//! (`busy_timeout`) instead of failing when another transaction commits first; the
//! session lease protocol then holds exactly as with Postgres row locks. Lease
//! times are unix milliseconds from this process's clock (one process owns the file).

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

/// What the backend-neutral store code (`store::portable`) needs from SQLite.
pub(crate) mod dialect {
    use crate::store::StoreError;
    pub use crate::store::portable::Backend;

    pub type Db = sqlx::Sqlite;
    pub const BACKEND: Backend = Backend::Sqlite;
    /// Write transactions hold the file's write lock (`BEGIN IMMEDIATE`).
    pub const FOR_SHARE: &str = "";
    pub const FOR_UPDATE: &str = "";
    pub const FOR_NO_KEY_UPDATE: &str = "";

    /// `$1` → `?1`: SQLite numbers `?NNN` parameters explicitly, so each keeps
    /// its position however often and in whatever order it appears.
    pub fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(text.replace('$', "?"))
    }

    pub async fn begin(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        super::begin_write(pool).await
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
        super::enqueue(tx, job, idempotency_key, max_attempts, run_after).await
    }
}

use std::{path::Path, str::FromStr, time::Duration};

use microclaw_jobs::Job;
use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::StoreError;

fn options(path: &Path) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(
        SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10)),
    )
}

/// Opens (and creates when missing) the store file.
pub async fn open(path: &Path) -> Result<SqlitePool, StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options(path)?)
        .await?)
}

/// Applies the queue's migrations and ours. Both track themselves in the same
/// `_sqlx_migrations` table (SQLite has no schemas), so each ignores the other's rows.
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    // apalis' setup sets `synchronous = OFF` on whatever connection runs it; give it
    // one that is closed right after.
    let setup_pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let mut queue = apalis_sqlite::SqliteStorage::migrations();
    queue.set_ignore_missing(true);
    for pragma in [
        "PRAGMA journal_mode = 'WAL';",
        "PRAGMA temp_store = MEMORY;",
    ] {
        sqlx::query(pragma).execute(&setup_pool).await?;
    }
    queue.run(&setup_pool).await?;
    let mut ours = sqlx::migrate!("./migrations/sqlite");
    ours.set_ignore_missing(true);
    ours.run(&setup_pool).await?;
    setup_pool.close().await;
    Ok(())
}

pub async fn ping(pool: &SqlitePool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// A write transaction that holds the write lock from its first statement.
pub async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// Pushes a job inside the caller's transaction.
pub async fn enqueue<J: Job>(
    tx: &mut Transaction<'_, Sqlite>,
    job: &J,
    idempotency_key: String,
    max_attempts: usize,
    run_after: Option<Duration>,
) -> Result<(), StoreError> {
    let task = super::queue_task(job, idempotency_key, max_attempts, run_after);
    apalis_sqlite::queries::push_tasks(&mut **tx, J::QUEUE, &[task]).await?;
    Ok(())
}

/// Puts the unfinished jobs of the named workers back on their queues (no job
/// is claimed outside a consumer here: first attempts run on Postgres only).
pub async fn return_unfinished(pool: &SqlitePool, workers: &[String]) -> Result<u64, StoreError> {
    let mut returned = 0;
    let mut tx = begin_write(pool).await?;
    for worker in workers {
        returned += sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
              WHERE lock_by = ?1 AND status IN ('Running', 'Queued')",
        )
        .bind(worker)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(returned)
}

/// After a restart of the one process that owns the file, nothing can still be
/// running: put every job that was in flight back on its queue and free every
/// session lease, instead of waiting for the recovery window.
pub async fn recover_after_restart(pool: &SqlitePool) -> Result<u64, StoreError> {
    let mut tx = begin_write(pool).await?;
    let jobs = sqlx::query(
        "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
          WHERE status IN ('Running', 'Queued')",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE sessions SET lease_owner = NULL, lease_expires_ms = NULL WHERE lease_owner IS NOT NULL")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(jobs)
}

/// Now, as the lease columns store it.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
