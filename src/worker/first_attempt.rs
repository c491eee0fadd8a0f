//! A reply's first delivery attempt, made by the worker that committed the turn
//! instead of a trip through the queue (Postgres).
//!
//! The turn's first delivery jobs are queued with the turn as always (the
//! durable fallback), and the same transaction claims them for this process:
//! the rows a consumer would take, status `Running`, locked by this process's
//! delivery consumer with the slot's [`ClaimToken`] as `lock_at`. Where no
//! earlier reply of the session holds the reply back (the order wait, see
//! `worker::delivery`), the commit also begins the attempt, as
//! `begin_attempt` would; right after the commit this worker sends
//! (`delivery::run_claimed`, the consumer's code) and marks the job done as the
//! consumer's ack would, in the statement that records the attempt's outcome.
//! So a first attempt adds no transaction of its own, and no consumer can run
//! the job meanwhile:
//! * this process dies mid-attempt: its delivery consumer stops heartbeating and
//!   the job goes back to the queue after `worker.recovery_window`, as any job it
//!   held (the attempt reruns: at least once, as after any crash mid-send);
//! * the commit gets no answer (store error, or a connection lost after the
//!   commit): whether it committed is unknown, so the jobs claimed with the
//!   slot's token, if any, are put back on the queue, due now; that is retried
//!   until the store answers (and matches nothing when the commit did not
//!   happen). The turn job itself fails and is retried, as any failed commit;
//! * the delivery consumer is not registered yet (the worker is starting): the
//!   commit claims nothing and the jobs run from the queue [`FALLBACK_DELAY`]
//!   later (due later so that no consumer is woken for a claimed job);
//! * the attempt fails on the store (its outcome, and so the job's end, may or
//!   may not have been recorded): its job goes back on the queue at once, unless
//!   already done; an attempt that sent nothing (the reply was no longer
//!   pending, or waits for an earlier one) marks its job done. Either is
//!   retried until the store answers;
//! * the delivery consumer puts its unfinished jobs back after a database outage
//!   or at shutdown: it skips the jobs claimed with a token listed here (listed
//!   from before the commit is tried until the attempts settled), and no token
//!   is listed while it does ([`FirstAttempts::hold_claims`]);
//! * shutdown: attempts get `worker.shutdown_grace`, then are cancelled, and the
//!   caller puts their jobs back.
//!
//! At most `worker.delivery_concurrency` turns' first attempts run at once; when
//! all are busy the turn queues its delivery due at once and a consumer takes it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, RwLock, RwLockWriteGuard, Semaphore},
    task::JoinSet,
};

use super::delivery::{Attempted, run_claimed};
use crate::{
    deployment::Deployment,
    store::{
        ClaimedDelivery, FirstAttemptClaim,
        postgres::deliveries::{ClaimToken, ClaimedJob, release_claims, settle_claimed},
    },
};

/// How long a first delivery job the commit could not claim waits in the queue
/// before a consumer takes it.
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
    /// Held (shared) while a token is listed in `running`; held alone while
    /// the consumer puts its unfinished jobs back.
    claiming: RwLock<()>,
    /// The tokens of the jobs whose attempts run here (claimed, or being
    /// claimed by a commit).
    running: Mutex<HashSet<ClaimToken>>,
}

/// A slot for one turn's first attempts, taken before its commit, with the
/// token the commit claims their jobs with (listed as running here until the
/// slot is dropped); free again when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    running: Running,
}

impl Slot {
    /// What the turn's commit claims the jobs with; `order_window` is
    /// `delivery.order_window`.
    pub fn claim(&self, order_window: Duration) -> FirstAttemptClaim<'_> {
        FirstAttemptClaim {
            consumer: &self.running.claims.consumer,
            token: self.running.token,
            order_since: (!order_window.is_zero()).then(|| {
                chrono::Utc::now() - chrono::Duration::from_std(order_window).unwrap_or_default()
            }),
            due_after: FALLBACK_DELAY,
        }
    }
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

    /// A slot when one is free: the turn's commit then claims its first
    /// deliveries' jobs (see [`Slot::claim`]), and the turn hands them to
    /// [`start`](Self::start) once committed, or the slot to
    /// [`recover`](Self::recover) when the commit got no answer.
    pub async fn slot(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        // Listed before the commit is tried: a commit whose answer is lost may
        // still have claimed jobs, and the consumer must leave those alone.
        let _claiming = self.claims.claiming.read().await;
        Some(Slot {
            _permit: permit,
            running: Running::mark(self.claims.clone(), ClaimToken::now()),
        })
    }

    /// Runs the first attempt of each of `jobs` (claimed by the slot's
    /// committed turn), one after the other, in the background.
    pub fn start(&self, slot: Slot, deployment: Arc<Deployment>, jobs: Vec<ClaimedDelivery>) {
        let (claims, token) = (self.claims.clone(), slot.running.token);
        self.spawn(async move {
            let _slot = slot;
            for job in jobs {
                claims.attempt(&deployment, job, token).await;
            }
        });
    }

    /// After a commit that got no answer: puts the jobs it may have claimed
    /// back on the queue, in the background, trying until the store answers.
    pub fn recover(&self, slot: Slot) {
        let (claims, token) = (self.claims.clone(), slot.running.token);
        self.spawn(async move {
            let _slot = slot;
            let mut waits = super::RestartWaits::new();
            loop {
                match release_claims(&claims.pool, &claims.consumer, token).await {
                    Ok(0) => return,
                    Ok(returned) => {
                        tracing::warn!(
                            jobs = returned,
                            "a turn's commit that got no answer had committed; its first delivery jobs are back on the queue"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not put back the first delivery jobs of a commit that got no answer; trying again");
                        waits.sleep().await;
                    }
                }
            }
        });
    }

    /// Runs `task` (which holds its slot) in the background. Cancelled at
    /// shutdown, or dropped after it: its slot's token is no longer listed,
    /// and the worker puts the jobs back.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        let Some(tasks) = tasks.as_mut() else {
            return;
        };
        // Reap the finished ones, so the set holds only what runs.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// For the delivery consumer putting its unfinished jobs back: the tokens
    /// of the jobs whose attempts run here (claimed, or being claimed by a
    /// commit), and a guard that keeps new slots waiting until it is dropped
    /// (after the jobs were put back).
    pub async fn hold_claims(&self) -> (RwLockWriteGuard<'_, ()>, Vec<ClaimToken>) {
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
    async fn attempt(&self, deployment: &Deployment, job: ClaimedDelivery, token: ClaimToken) {
        let claimed = ClaimedJob {
            queue_id: job.queue_id,
            worker: self.consumer.clone(),
            token,
        };
        let done = match run_claimed(deployment, &job.job, job.begun, Some(&claimed)).await {
            // Marked done with the attempt's outcome.
            Ok(Attempted::Recorded) => return,
            Ok(Attempted::NothingSent) => true,
            Err(_) => false,
        };
        // Until settled the job stays claimed, and nothing else would run it
        // again while the consumer lives: keep trying (shutdown cancels this,
        // and the worker then puts the job back).
        let mut waits = super::RestartWaits::new();
        while let Err(e) = settle_claimed(&self.pool, &claimed, done).await {
            tracing::warn!(delivery_id = %job.job.delivery_id, error = %e, "could not settle a first delivery attempt's job; trying again");
            waits.sleep().await;
        }
    }
}

/// A token listed as claiming here, from before its commit is tried until its
/// attempts settled (or their task is cancelled).
struct Running {
    claims: Arc<Claims>,
    token: ClaimToken,
}

impl Running {
    fn mark(claims: Arc<Claims>, token: ClaimToken) -> Self {
        lock(&claims.running).insert(token);
        Self { claims, token }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.claims.running).remove(&self.token);
    }
}
