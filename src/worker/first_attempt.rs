//! A reply's first delivery attempt, started by the worker that committed the
//! turn instead of a trip through the queue (Postgres).
//!
//! The turn's first delivery job is queued with the turn as always (the durable
//! fallback), but due [`FALLBACK_DELAY`] later, so no consumer is woken for it.
//! Right after the commit this worker claims that job in the queue, the same row
//! a consumer would take (status `Running`, locked by this process's delivery
//! consumer), runs the attempt (`delivery::deliver`, the consumer's code) and
//! marks the job done as the consumer's ack would. The claim is a conditional
//! update of a `Pending` job, so an attempt runs here or in a consumer, never in
//! both:
//! * a consumer that took the job first (the delay passed) wins: the claim finds
//!   nothing pending and nothing runs here;
//! * this process dies mid-attempt: its delivery consumer stops heartbeating and
//!   the job goes back to the queue after `worker.recovery_window`, as any job it
//!   held (the attempt reruns: at least once, as after any crash mid-send);
//! * the claim gets no answer (store error, or a connection lost after the
//!   update committed): it is tried again until the store answers. Each claim
//!   carries its own token (written as the job's `lock_at`), so a retry also
//!   matches the job its own earlier try claimed, and nothing else: a job left
//!   `Running` by a claim whose answer was lost is run here, not stranded until
//!   this worker restarts. Meanwhile the consumer may take the job once due
//!   (a claim that did not commit); then the retry finds it taken and stops;
//! * the attempt fails on the store: its job goes back on the queue at once
//!   (settling the job, done or back, is retried until the store answers);
//! * the delivery consumer puts its unfinished jobs back after a database outage:
//!   it skips the jobs whose attempt runs here (listed from before their claim
//!   is tried), and no job is listed while it does
//!   ([`FirstAttempts::hold_claims`]);
//! * shutdown: attempts get `worker.shutdown_grace`, then are cancelled, and the
//!   caller puts their jobs back.
//!
//! At most `worker.delivery_concurrency` first attempts run at once; when all are
//! busy the turn queues its delivery due at once and a consumer takes it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use microclaw_jobs::DeliveryJob;
use tokio::{
    sync::{OwnedSemaphorePermit, RwLock, RwLockWriteGuard, Semaphore},
    task::JoinSet,
};

use crate::{
    deployment::Deployment,
    store::postgres::deliveries::{Claim, ClaimToken, claim_job, settle_claimed},
};

/// How long a delivery job whose first attempt runs in the committing worker
/// waits in the queue before a consumer may take it (when that worker died
/// before claiming it).
pub const FALLBACK_DELAY: Duration = Duration::from_secs(2);

/// The first attempts running in this worker process.
pub struct FirstAttempts {
    claims: Arc<Claims>,
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// The attempts' tasks; `None` once cancelled at shutdown.
    tasks: Mutex<Option<JoinSet<()>>>,
}

/// What the attempts' tasks share.
struct Claims {
    pool: sqlx::PgPool,
    /// The delivery consumer's apalis worker name: claimed jobs are locked by it.
    consumer: String,
    /// Held (shared) while a job is listed in `running`; held alone while the
    /// consumer puts its unfinished jobs back.
    claiming: RwLock<()>,
    /// The claims of the jobs whose attempt runs here (claimed, or being
    /// claimed).
    running: Mutex<HashSet<Claim>>,
}

/// A slot for one turn's first attempts, taken before its commit; free again
/// when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FirstAttempts {
    pub fn new(pool: sqlx::PgPool, consumer: String, concurrency: usize) -> Self {
        Self {
            claims: Arc::new(Claims {
                pool,
                consumer,
                claiming: RwLock::new(()),
                running: Mutex::default(),
            }),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            tasks: Mutex::new(Some(JoinSet::new())),
        }
    }

    /// A slot when one is free: the turn then queues its deliveries delayed by
    /// [`FALLBACK_DELAY`] and hands them to [`start`](Self::start) once committed.
    pub fn slot(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Slot { _permit: permit })
    }

    /// Runs the first attempt of each of `jobs` (committed with the slot's turn),
    /// one after the other, in the background.
    pub fn start(&self, slot: Slot, deployment: Arc<Deployment>, jobs: Vec<DeliveryJob>) {
        let mut tasks = lock(&self.tasks);
        // Cancelled at shutdown: the jobs run from the queue after their delay.
        let (false, Some(tasks)) = (jobs.is_empty(), tasks.as_mut()) else {
            return;
        };
        // Reap the finished ones, so the set holds only what runs.
        while tasks.try_join_next().is_some() {}
        let claims = self.claims.clone();
        tasks.spawn(async move {
            let _slot = slot;
            for job in jobs {
                claims.attempt(&deployment, &job).await;
            }
        });
    }

    /// For the delivery consumer putting its unfinished jobs back: the claims
    /// of the jobs whose attempt runs here (claimed, or being claimed), and a
    /// guard that keeps new claims waiting until it is dropped (after the jobs
    /// were put back).
    pub async fn hold_claims(&self) -> (RwLockWriteGuard<'_, ()>, Vec<Claim>) {
        let guard = self.claims.claiming.write().await;
        let running = lock(&self.claims.running).iter().cloned().collect();
        (guard, running)
    }

    /// At shutdown: no new slots; waits up to `grace` for the slots taken (turns
    /// committing, attempts running) to come back, then cancels what still runs
    /// (its jobs are left claimed, for the caller to put back on the queue).
    pub async fn finish(&self, grace: Duration) {
        // Waiting for every slot takes each as it comes back, so no new one is
        // handed out meanwhile; closing keeps it so.
        let every_slot = self
            .slots
            .clone()
            .acquire_many_owned(self.concurrency as u32);
        let _ = tokio::time::timeout(grace, every_slot).await;
        self.slots.close();
        let Some(mut tasks) = lock(&self.tasks).take() else {
            return;
        };
        while tasks.try_join_next().is_some() {}
        if !tasks.is_empty() {
            tracing::warn!(
                attempts = tasks.len(),
                "first delivery attempts still running after the grace period; cancelled"
            );
            tasks.shutdown().await;
        }
    }
}

impl Claims {
    async fn attempt(&self, deployment: &Deployment, job: &DeliveryJob) {
        let token = ClaimToken::now();
        // Listed before the claim is tried: a claim whose answer is lost may
        // still have committed, and the consumer must leave that job alone.
        let _running = {
            let _claiming = self.claiming.read().await;
            Running::mark(
                &self.running,
                Claim {
                    idempotency_key: job.idempotency_key(),
                    token,
                },
            )
        };
        let mut waits = super::RestartWaits::new();
        let claimed = loop {
            match claim_job(&self.pool, job, &self.consumer, token).await {
                Ok(Some(claimed)) => break claimed,
                // A consumer took it first.
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(delivery_id = %job.delivery_id, error = %e, "could not claim the first delivery attempt's job; trying again");
                    waits.sleep().await;
                }
            }
        };
        let sent = super::delivery::run_claimed(deployment, job).await;
        // Until settled the job stays claimed, and nothing else would run it
        // again while the consumer lives: keep trying (shutdown cancels this,
        // and the worker then puts the job back).
        let mut waits = super::RestartWaits::new();
        while let Err(e) = settle_claimed(&self.pool, &claimed, sent.is_ok()).await {
            tracing::warn!(delivery_id = %job.delivery_id, error = %e, "could not settle a first delivery attempt's job; trying again");
            waits.sleep().await;
        }
    }
}

/// A job listed as claimed here, from before its claim is tried until its
/// attempt settled (or its task is cancelled).
struct Running<'a> {
    running: &'a Mutex<HashSet<Claim>>,
    claim: Claim,
}

impl<'a> Running<'a> {
    fn mark(running: &'a Mutex<HashSet<Claim>>, claim: Claim) -> Self {
        lock(running).insert(claim.clone());
        Self { running, claim }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.running).remove(&self.claim);
    }
}
