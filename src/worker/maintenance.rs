//! The maintenance passes every worker runs on timers.
//!
//! * **Stranded sessions**, every half `worker.recovery_window`: a session whose
//!   oldest unanswered message is older than the recovery window while nobody
//!   holds its lease has lost its turn job (the job failed on the store for all
//!   its attempts, e.g. through a long database outage). A fresh turn job is
//!   queued for it, at most one per session per window (its idempotency key
//!   names the window); a spare job finds the session answered or busy and ends.
//! * **Retention**, every `memory.maintenance_interval` when
//!   `memory.retention_days` is set: transcript messages older than that (with
//!   their settled inbound events and finished deliveries) are deleted. It never
//!   touches a pending event or delivery.
//! * **Finished queue jobs**, every `memory.maintenance_interval` when
//!   `worker.finished_jobs_kept_for` is set: jobs that finished for good (done,
//!   killed, failed with no attempt left) that long ago are deleted, in batches,
//!   so the queue's table holds the recent past and not every job ever run (two
//!   a message). A job's row also turns away a second job under its
//!   idempotency key, and a rerun queues its next job again only within the
//!   recovery window, so the setting may not be shorter than the window.
//!
//! * **Scheduled messages**, every `worker.poll_interval`: due messages become
//!   deliveries (see `store::portable::scheduled`), each in its own transaction
//!   with its row taken under a lock, so two workers never send one twice.
//!
//! All are idempotent, so several workers running them at once is harmless.

use std::time::Duration;

use crate::{
    config::{MemoryConfig, WorkerConfig},
    store::Store,
};

/// Runs the passes forever (the worker aborts this when it stops).
pub async fn run(
    store: Store,
    memory: MemoryConfig,
    worker: WorkerConfig,
    delivery_max_attempts: u32,
) {
    let window = worker.recovery_window.0;
    let mut sweep = tokio::time::interval((window / 2).max(Duration::from_millis(100)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maintenance = tokio::time::interval(memory.maintenance_interval.0);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let jobs_kept_for = worker.finished_jobs_kept_for.0;
    let mut scheduled =
        tokio::time::interval(worker.poll_interval.0.max(Duration::from_millis(100)));
    scheduled.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = scheduled.tick() => dispatch_scheduled(&store, delivery_max_attempts).await,
            _ = sweep.tick() => requeue_stranded(&store, window, worker.turn_job_attempts).await,
            _ = maintenance.tick() => {
                if memory.retention_days > 0 {
                    purge(&store, &memory).await;
                }
                if !jobs_kept_for.is_zero() {
                    purge_finished_jobs(&store, jobs_kept_for).await;
                }
            }
        }
    }
}

async fn requeue_stranded(store: &Store, window: Duration, turn_job_attempts: usize) {
    let now = chrono::Utc::now();
    let cutoff = now - chrono::Duration::from_std(window).unwrap_or_default();
    let bucket = now.timestamp_millis() / (window.as_millis().max(1) as i64);
    match store
        .requeue_stranded_sessions(cutoff, bucket, turn_job_attempts)
        .await
    {
        Ok(0) => {}
        Ok(queued) => tracing::warn!(
            sessions = queued,
            "sessions had unanswered messages without a turn job; queued new turns"
        ),
        Err(e) => tracing::debug!(error = %e, "stranded-session sweep failed; it runs again later"),
    }
}

async fn dispatch_scheduled(store: &Store, delivery_max_attempts: u32) {
    match store
        .dispatch_scheduled(chrono::Utc::now(), delivery_max_attempts as i32, 100)
        .await
    {
        Ok(0) => {}
        Ok(sent) => tracing::info!(sent, "scheduled messages queued for delivery"),
        Err(e) => {
            tracing::debug!(error = %e, "scheduled-message dispatch failed; it runs again later")
        }
    }
}

async fn purge(store: &Store, memory: &MemoryConfig) {
    let cutoff =
        chrono::Utc::now() - Duration::from_secs(u64::from(memory.retention_days) * 86_400);
    match store.purge_older_than(cutoff).await {
        Ok(report) if report.messages + report.inbound_events + report.deliveries > 0 => {
            tracing::info!(
                messages = report.messages,
                inbound_events = report.inbound_events,
                deliveries = report.deliveries,
                retention_days = memory.retention_days,
                "retention purge"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retention purge failed; it runs again later"),
    }
}

/// Finished jobs deleted by one statement: a pass runs batches until one
/// comes back short, so no statement holds many rows' locks or writes much at
/// a time.
const FINISHED_JOBS_BATCH: i64 = 5_000;

async fn purge_finished_jobs(store: &Store, kept_for: Duration) {
    // Configuration bounds every span to ten years, which chrono takes.
    let Ok(kept_for_chrono) = chrono::Duration::from_std(kept_for) else {
        return;
    };
    let cutoff = chrono::Utc::now() - kept_for_chrono;
    let mut deleted = 0;
    let mut after = String::new();
    loop {
        match store
            .purge_finished_jobs(cutoff, &after, FINISHED_JOBS_BATCH)
            .await
        {
            Ok(batch) => {
                deleted += batch.deleted;
                match batch.resume_after {
                    Some(last) => after = last,
                    None => break,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purge of finished queue jobs failed; it runs again later");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, kept_for = ?kept_for, "finished queue jobs purged");
    }
}
