//! Queue wake-ups on Postgres: one `LISTEN` per worker process, and each queue's
//! consumer woken only by jobs of its own queue.
//!
//! An apalis consumer fetches whenever it is woken, and fetches again until a
//! fetch comes back empty. apalis's own listener (a connection per consumer)
//! wakes every consumer for every job inserted into any queue, so a message cost
//! each consumer of each worker process two fetch transactions per job of *any*
//! queue, most of them empty: about ten of the eighteen transactions a message
//! cost under load (BENCHMARKS.md). Here one connection per process listens, and
//! a notification wakes only the consumer of the queue it names.
//!
//! A wake-up that arrives while a fetch is already running is spent on that
//! fetch, which may have started before the job was committed and miss it; so
//! each wake-up is followed by one more, [`RECHECK_AFTER`] later (a fetch takes
//! a few milliseconds), which costs at most one extra fetch per burst of jobs.
//!
//! Each time the listener starts listening (at start, and after it lost its
//! connection and reconnected by itself) it wakes every subscribed consumer
//! once: a job queued while nobody listened was notified to no one, and would
//! otherwise wait for the next poll. At start this closes a race: a consumer's
//! first fetch can run before the listener listens, and a job committed
//! between the two was found by neither until the next poll or heartbeat (the
//! likely cause of one `queue_wakeups` failure in a loaded CI run, whose polls
//! are an hour apart). Test: `queue_wakeups::a_job_queued_while_nobody_listened_starts_when_the_listener_is_back`.
//!
//! Nothing depends on a wake-up for correctness: each consumer also polls every
//! `worker.poll_interval` ([`FetchTriggers`](super::fetch_triggers::FetchTriggers),
//! which combines the two), which finds delayed retries and whatever a lost
//! wake-up left (`queue_wakeups` tests reconnection with the poll an hour
//! apart).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::mpsc;

/// The channel apalis's insert trigger notifies (see migration `queue_wakeups`).
const INSERT_CHANNEL: &str = "apalis::job::insert";

/// The second wake-up after a notification, for a fetch that was running when
/// the first one came.
pub const RECHECK_AFTER: Duration = Duration::from_millis(50);

/// The process's listener; consumers subscribe to their queue's wake-ups.
pub struct QueueWakeups {
    subscribers: Arc<Mutex<HashMap<String, mpsc::Sender<()>>>>,
    listener: tokio::task::JoinHandle<()>,
}

impl QueueWakeups {
    /// Starts listening on `pool`'s database; reconnects by itself.
    pub fn listen(pool: PgPool) -> Self {
        let subscribers: Arc<Mutex<HashMap<String, mpsc::Sender<()>>>> = Arc::default();
        let listener = tokio::spawn(listen(pool, subscribers.clone()));
        Self {
            subscribers,
            listener,
        }
    }

    /// The wake-ups of `queue`, for its (re)built consumer: a later subscription
    /// to the same queue replaces this one.
    pub fn subscribe(&self, queue: &str) -> Wakeups {
        // One pending wake-up is enough: a woken consumer fetches until empty.
        let (sender, receiver) = mpsc::channel(1);
        lock(&self.subscribers).insert(queue.to_owned(), sender);
        Wakeups {
            notified: receiver,
            recheck: None,
        }
    }
}

impl Drop for QueueWakeups {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A queue's wake-ups, as the stream apalis's poll strategy drives.
pub struct Wakeups {
    notified: mpsc::Receiver<()>,
    /// The second wake-up of the latest notification.
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl futures::Stream for Wakeups {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        if let Poll::Ready(notified) = self.notified.poll_recv(cx) {
            if notified.is_some() {
                self.recheck = Some(Box::pin(tokio::time::sleep(RECHECK_AFTER)));
            }
            return Poll::Ready(notified);
        }
        match self
            .recheck
            .as_mut()
            .map(|recheck| recheck.as_mut().poll(cx))
        {
            Some(Poll::Ready(())) => {
                self.recheck = None;
                Poll::Ready(Some(()))
            }
            _ => Poll::Pending,
        }
    }
}

/// What of a notification's payload matters here.
#[derive(serde::Deserialize)]
struct Inserted {
    job_type: String,
}

fn wake(subscribers: &Mutex<HashMap<String, mpsc::Sender<()>>>, queue: &str) {
    if let Some(sender) = lock(subscribers).get(queue) {
        // Full: a wake-up is already pending. Closed: the consumer is being rebuilt.
        let _ = sender.try_send(());
    }
}

async fn listen(pool: PgPool, subscribers: Arc<Mutex<HashMap<String, mpsc::Sender<()>>>>) {
    let mut waits = super::RestartWaits::new();
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "queue listener cannot connect; consumers poll meanwhile");
                waits.sleep().await;
                continue;
            }
        };
        if let Err(e) = listener.listen(INSERT_CHANNEL).await {
            tracing::warn!(error = %e, "queue listener cannot LISTEN; consumers poll meanwhile");
            waits.sleep().await;
            continue;
        }
        waits = super::RestartWaits::new();
        // Jobs queued while nobody listened were notified to no one.
        for sender in lock(&subscribers).values() {
            let _ = sender.try_send(());
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    // Not from the insert trigger: nothing to wake.
                    if let Ok(inserted) = serde_json::from_str::<Inserted>(notification.payload()) {
                        wake(&subscribers, &inserted.job_type);
                    }
                }
                // The connection was lost: listen again on a new one.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "queue listener lost its connection; reconnecting");
                    waits.sleep().await;
                    break;
                }
            }
        }
    }
}
