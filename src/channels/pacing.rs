//! Outbound pacing: at most one send per interval per key (a conversation, a bot
//! account), shared by every worker.
//!
//! A send claims its slot with `SET key NX PX interval` in Redis; when the key is
//! taken, it waits for the key's remaining lifetime and tries again. So however
//! many workers deliver, a chat sees at most one message per interval. When Redis
//! cannot be reached, each process paces on its own (a map of next free instants),
//! which keeps one process within the limits and never blocks a delivery on Redis.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;

/// One limit a send must respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pace {
    pub key: String,
    pub interval: Duration,
}

impl Pace {
    pub fn new(key: impl Into<String>, interval: Duration) -> Self {
        Self {
            key: key.into(),
            interval,
        }
    }
}

pub struct Pacer {
    redis: Option<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    local: Mutex<HashMap<String, Instant>>,
}

/// The longest a send waits for its slot before going ahead regardless (a stuck
/// key must not hold deliveries forever).
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Pacer {
    pub fn new(redis: Option<ConnectionManager>, prefix: &str, timeout: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            timeout,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until every pace allows one more send, and claims it.
    pub async fn wait_turn(&self, paces: &[Pace]) {
        for pace in paces {
            self.claim(pace).await;
        }
    }

    async fn claim(&self, pace: &Pace) {
        let started = Instant::now();
        let key = format!("{}:pace:{}", self.prefix, pace.key);
        let interval_ms = pace.interval.as_millis().max(1) as u64;
        while let Some(mut redis) = self.redis.clone() {
            let claimed = tokio::time::timeout(
                self.timeout,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(interval_ms)
                    .query_async::<Option<String>>(&mut redis),
            )
            .await;
            match claimed {
                Ok(Ok(Some(_))) => return,
                Ok(Ok(None)) => {
                    let left: i64 = tokio::time::timeout(
                        self.timeout,
                        redis::cmd("PTTL").arg(&key).query_async::<i64>(&mut redis),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(interval_ms as i64);
                    if started.elapsed() >= MAX_WAIT {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(
                        left.clamp(1, interval_ms as i64) as u64
                    ))
                    .await;
                }
                _ => {
                    tracing::debug!(key = %pace.key, "pacing in Redis unavailable; pacing in this process");
                    break;
                }
            }
        }
        let wait = {
            let mut local = self.local.lock().expect("pacer lock");
            let now = Instant::now();
            let next = local.get(&key).copied().unwrap_or(now).max(now);
            local.insert(key, next + pace.interval);
            next - now
        };
        tokio::time::sleep(wait.min(MAX_WAIT)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_one_process_paces_itself() {
        let pacer = Pacer::new(None, "t", Duration::from_millis(50));
        let pace = [Pace::new("chat:1", Duration::from_millis(100))];
        let started = Instant::now();
        for _ in 0..3 {
            pacer.wait_turn(&pace).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
}
