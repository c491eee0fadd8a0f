//! What wakes a queue consumer to fetch: a notification for its queue
//! (Postgres, see [`wakeups`](super::wakeups)) and every `worker.poll_interval`.
//! These triggers decide when the consumer's task is woken, not whether a wake
//! fetches: apalis 1.0 fetches on every poll of a consumer's stream while
//! nothing is buffered (`Persisted::poll_next` in `apalis-core`), whatever the
//! strategy answers, so a job's progress waking the task fetches too.
//!
//! Guarantee: a consumer with room for a job fetches at least once every
//! `poll_interval`, whatever else happens, so a job that falls due later (a
//! delivery retry, a first attempt's fallback, a job put back after a cancelled
//! attempt) waits at most that long once due, and a missed notification costs
//! at most that long.
//!
//! apalis's own strategies do not give that. An apalis consumer only fetches
//! when its task is woken, so every timer a strategy holds must have the
//! consumer's waker registered. apalis's interval replaces its timer when it
//! fires without polling the new one (which is what registers the waker), and
//! its combined strategy stops polling at the first source that fired. When the
//! fetch that follows completes within the same poll (it can: the connection had
//! the answer at once), nothing polls the new timer again and the consumer
//! sleeps until its next heartbeat (`recovery_window / 4`): seen as a job due in
//! two seconds fetched thirty seconds later. Here every source is polled until
//! it is pending, on every poll, so each one always holds the current waker.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures::Stream;
use tokio::time::{Interval, MissedTickBehavior};

use super::wakeups::Wakeups;

/// The fetch triggers of one consumer.
pub struct FetchTriggers {
    notifications: Option<Wakeups>,
    interval: Interval,
}

impl FetchTriggers {
    /// Fetch every `poll_interval`, and on each of `notifications` when given.
    pub fn new(poll_interval: Duration, notifications: Option<Wakeups>) -> Self {
        let mut interval = tokio::time::interval(poll_interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            notifications,
            interval,
        }
    }
}

impl PollStrategy for FetchTriggers {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = false;
        // Polled until pending: a source that fired re-arms, and only the poll
        // that finds it pending registers the consumer's waker.
        if let Some(notifications) = &mut self.notifications {
            while let Poll::Ready(Some(())) = Pin::new(&mut *notifications).poll_next(cx) {
                fired = true;
            }
        }
        while self.interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
