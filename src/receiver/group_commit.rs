//! Group commit: concurrent webhooks share one transaction.
//!
//! Guarantee: a webhook is answered 2xx only after the transaction holding its
//! event and turn job committed. Its answer travels back on a oneshot channel that
//! the writer fills only once `Store::record_inbound_batch` returned, which is
//! after `COMMIT` succeeded. A batch that fails answers every member with the
//! error (503 at the receiver): none of them was recorded, and the platforms
//! retry. A member whose webhook request went away meanwhile is still written;
//! the platform's retry then finds it recorded and gets 2xx.
//!
//! Batching: a collector takes the first waiting message, then whatever else
//! arrives until the batch has `max_batch` members or `max_wait` passed, and hands
//! the batch to a writer task. At most `max_in_flight` batches are written at once,
//! so under load the next batch fills while the previous ones commit, and one
//! commit (one WAL flush) answers many webhooks. The collector waits for more
//! members only under traffic: when the previous webhook came less than
//! `max_wait` before this one, or another batch is being written. A webhook
//! arriving on a quiet receiver is written at once, so light traffic pays no
//! `max_wait`. With `max_batch = 1` the receiver
//! writes each webhook in its own transaction instead and this module is unused.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};

use crate::{
    channels::InboundMessage,
    config::GroupCommitConfig,
    store::{Arrival, Recorded, Routing, Store, StoreError},
};

/// Hands inbound messages to the batch writer.
pub struct GroupCommit {
    sender: mpsc::Sender<Pending>,
}

/// A message waiting for its batch, and where its answer goes.
struct Pending {
    connector_id: String,
    channel: String,
    agent: String,
    message: InboundMessage,
    answer: oneshot::Sender<Result<Recorded, Arc<StoreError>>>,
}

impl GroupCommit {
    /// Starts the collector on the current runtime.
    pub fn start(store: Store, config: &GroupCommitConfig, turn_job_attempts: usize) -> Self {
        let (sender, receiver) = mpsc::channel(config.max_batch * (config.max_in_flight + 1));
        tokio::spawn(collect(receiver, store, config.clone(), turn_job_attempts));
        Self { sender }
    }

    /// Records the message in the next batch; returns once that batch committed
    /// (or failed).
    pub async fn record(
        &self,
        routing: &Routing<'_>,
        message: InboundMessage,
    ) -> Result<Recorded, StoreError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            connector_id: routing.connector_id.to_owned(),
            channel: routing.channel.to_owned(),
            agent: routing.agent.to_owned(),
            message,
            answer,
        };
        if self.sender.send(pending).await.is_err() {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        match answered.await {
            Ok(Ok(recorded)) => Ok(recorded),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            // The writer is gone (the process is stopping): nothing is known to be
            // committed, so the platform must retry.
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolClosed)),
        }
    }
}

async fn collect(
    mut receiver: mpsc::Receiver<Pending>,
    store: Store,
    config: GroupCommitConfig,
    turn_job_attempts: usize,
) {
    let writers = Arc::new(Semaphore::new(config.max_in_flight));
    let mut last_arrival: Option<Instant> = None;
    while let Some(first) = receiver.recv().await {
        let arrived = Instant::now();
        let traffic = last_arrival.is_some_and(|previous| arrived - previous < config.max_wait.0);
        last_arrival = Some(arrived);
        let writer = Arc::clone(&writers)
            .acquire_owned()
            .await
            .expect("the writers' semaphore is never closed");
        let mut batch = Vec::with_capacity(config.max_batch);
        batch.push(first);
        let others_writing = writers.available_permits() + 1 < config.max_in_flight;
        let wait = if traffic || others_writing {
            config.max_wait.0
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + wait;
        while batch.len() < config.max_batch {
            let next = match receiver.try_recv() {
                Ok(pending) => pending,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(pending)) => pending,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            last_arrival = Some(Instant::now());
            batch.push(next);
        }
        let store = store.clone();
        tokio::spawn(async move {
            write(&store, batch, turn_job_attempts).await;
            drop(writer);
        });
    }
}

/// Writes one batch and answers each member.
async fn write(store: &Store, batch: Vec<Pending>, turn_job_attempts: usize) {
    let started = std::time::Instant::now();
    let result = {
        let arrivals: Vec<Arrival<'_>> = batch
            .iter()
            .map(|pending| Arrival {
                routing: Routing {
                    connector_id: &pending.connector_id,
                    channel: &pending.channel,
                    agent: &pending.agent,
                },
                message: &pending.message,
            })
            .collect();
        store
            .record_inbound_batch(&arrivals, turn_job_attempts)
            .await
    };
    crate::metrics::group_commit(batch.len(), started.elapsed(), result.is_ok());
    match result {
        Ok(answers) => {
            for (pending, recorded) in batch.into_iter().zip(answers) {
                let _ = pending.answer.send(Ok(recorded));
            }
        }
        Err(e) => {
            tracing::warn!(members = batch.len(), error = %e, "group commit failed; every member answered 503");
            let e = Arc::new(e);
            for pending in batch {
                let _ = pending.answer.send(Err(Arc::clone(&e)));
            }
        }
    }
}
