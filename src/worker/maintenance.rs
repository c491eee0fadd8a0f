//! The maintenance pass every worker runs on a timer: the retention purge.
//!
//! With `memory.retention_days` set, transcript messages older than that (with
//! their settled inbound events and finished deliveries) are deleted every
//! `memory.maintenance_interval`. The purge is a set of idempotent DELETEs, so
//! several workers running it at once is harmless; it never touches a pending
//! event or delivery.

use std::time::Duration;

use crate::{config::MemoryConfig, store::Store};

/// Runs the pass every interval, forever (the worker aborts it when it stops).
pub async fn run(store: Store, config: MemoryConfig) {
    if config.retention_days == 0 {
        return;
    }
    let mut timer = tokio::time::interval(config.maintenance_interval.0);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let cutoff =
            chrono::Utc::now() - Duration::from_secs(u64::from(config.retention_days) * 86_400);
        match store.purge_older_than(cutoff).await {
            Ok(report) if report.messages + report.inbound_events + report.deliveries > 0 => {
                tracing::info!(
                    messages = report.messages,
                    inbound_events = report.inbound_events,
                    deliveries = report.deliveries,
                    retention_days = config.retention_days,
                    "retention purge"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed; it runs again later"),
        }
    }
}
