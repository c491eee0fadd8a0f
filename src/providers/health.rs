//! Candidate health shared by every worker: circuit breakers, latency averages and
//! benched API keys.
//!
//! The state lives in Redis so that all workers see one picture: when one worker
//! finds a provider down, the others stop sending it traffic too. Redis only holds
//! state that may be lost. When it cannot be reached, each process keeps the same
//! state locally and nothing fails; after a Redis error the process stays local for
//! a few seconds instead of waiting on Redis in every call.
//!
//! Breaker: `breaker_failures` consecutive failures open it for `breaker_cooldown`;
//! after that one probe is let through (claimed with SET NX, so only one worker
//! probes); a success closes it, a failure opens it again.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::{AsyncCommands, aio::ConnectionManager};

use crate::config::RouterConfig;

/// Weight of the newest sample in the latency moving average.
const LATENCY_WEIGHT: f64 = 0.3;
/// How long a process stays local after a Redis error.
const REDIS_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone)]
struct LocalCandidate {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    latency_ms: Option<f64>,
    benched_keys: HashMap<String, Instant>,
}

pub struct Health {
    redis: Option<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    failures_to_open: u32,
    cooldown: Duration,
    local: Mutex<HashMap<String, LocalCandidate>>,
    redis_down_until: Mutex<Option<Instant>>,
}

/// Whether a candidate may be called now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// The cooldown passed and this caller holds the one probe.
    Probe,
    /// Open: skip this candidate.
    Open,
}

impl Health {
    pub fn new(
        config: &RouterConfig,
        redis: Option<ConnectionManager>,
        prefix: &str,
        timeout: Duration,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            timeout,
            failures_to_open: config.breaker_failures.max(1),
            cooldown: config.breaker_cooldown.0,
            local: Mutex::new(HashMap::new()),
            redis_down_until: Mutex::new(None),
        }
    }

    fn key(&self, candidate: &str, what: &str) -> String {
        format!("{}:model:{candidate}:{what}", self.prefix)
    }

    /// The Redis connection, unless Redis is off or recently failed.
    fn shared(&self) -> Option<ConnectionManager> {
        let down = self.redis_down_until.lock().expect("health lock");
        if down.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        self.redis.clone()
    }

    /// Runs a Redis command within the timeout; None (and local mode for a while)
    /// when Redis does not answer.
    async fn redis<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "health state in Redis unavailable; using local state");
                *self.redis_down_until.lock().expect("health lock") =
                    Some(Instant::now() + REDIS_BACKOFF);
                None
            }
            Err(_) => {
                tracing::debug!("health state in Redis timed out; using local state");
                *self.redis_down_until.lock().expect("health lock") =
                    Some(Instant::now() + REDIS_BACKOFF);
                None
            }
        }
    }

    fn with_local<T>(&self, candidate: &str, f: impl FnOnce(&mut LocalCandidate) -> T) -> T {
        let mut local = self.local.lock().expect("health lock");
        f(local.entry(candidate.to_owned()).or_default())
    }

    /// Whether `candidate` may be called now (and the breaker gauge, see `metrics`).
    pub async fn admission(&self, candidate: &str) -> Admission {
        let admission = self.shared_or_local_admission(candidate).await;
        crate::metrics::breaker(candidate, admission == Admission::Open);
        admission
    }

    async fn shared_or_local_admission(&self, candidate: &str) -> Admission {
        if let Some(mut redis) = self.shared() {
            let open_until: Option<Option<i64>> = self
                .redis(redis.hget(self.key(candidate, "breaker"), "open_until_ms"))
                .await;
            if let Some(open_until) = open_until {
                let now = chrono::Utc::now().timestamp_millis();
                return match open_until {
                    None => Admission::Closed,
                    Some(until) if until > now => Admission::Open,
                    Some(_) => {
                        let claimed: Option<bool> = self
                            .redis(
                                redis::cmd("SET")
                                    .arg(self.key(candidate, "probe"))
                                    .arg(1)
                                    .arg("NX")
                                    .arg("PX")
                                    .arg(self.cooldown.as_millis().max(1) as u64)
                                    .query_async::<Option<String>>(&mut redis),
                            )
                            .await
                            .map(|set| set.is_some());
                        match claimed {
                            Some(true) => Admission::Probe,
                            Some(false) => Admission::Open,
                            None => self.local_admission(candidate),
                        }
                    }
                };
            }
        }
        self.local_admission(candidate)
    }

    fn local_admission(&self, candidate: &str) -> Admission {
        self.with_local(candidate, |c| match c.open_until {
            None => Admission::Closed,
            Some(until) if Instant::now() < until => Admission::Open,
            Some(_) if c.probing => Admission::Open,
            Some(_) => {
                c.probing = true;
                Admission::Probe
            }
        })
    }

    pub async fn record_success(&self, candidate: &str, latency: Duration) {
        let sample = latency.as_secs_f64() * 1000.0;
        self.with_local(candidate, |c| {
            c.failures = 0;
            c.open_until = None;
            c.probing = false;
            c.latency_ms = Some(
                c.latency_ms
                    .map_or(sample, |avg| avg + LATENCY_WEIGHT * (sample - avg)),
            );
        });
        if let Some(mut redis) = self.shared() {
            let latency_key = self.key(candidate, "latency");
            let previous: Option<Option<f64>> = self.redis(redis.get(&latency_key)).await;
            if let Some(previous) = previous {
                let average = previous.map_or(sample, |avg| avg + LATENCY_WEIGHT * (sample - avg));
                let _: Option<()> = self.redis(redis.set(&latency_key, average)).await;
                let _: Option<()> = self
                    .redis(
                        redis.del(&[self.key(candidate, "breaker"), self.key(candidate, "probe")]),
                    )
                    .await;
            }
        }
    }

    pub async fn record_failure(&self, candidate: &str) {
        let threshold = self.failures_to_open;
        let cooldown = self.cooldown;
        self.with_local(candidate, |c| {
            c.failures += 1;
            if c.probing || c.failures >= threshold {
                c.open_until = Some(Instant::now() + cooldown);
                c.probing = false;
            }
        });
        if let Some(mut redis) = self.shared() {
            let breaker = self.key(candidate, "breaker");
            let failures: Option<u32> = self.redis(redis.hincr(&breaker, "failures", 1)).await;
            let probing: Option<bool> =
                self.redis(redis.exists(self.key(candidate, "probe"))).await;
            if let Some(failures) = failures
                && (failures >= threshold || probing == Some(true))
            {
                let until = chrono::Utc::now().timestamp_millis() + cooldown.as_millis() as i64;
                let _: Option<()> = self
                    .redis(redis.hset(&breaker, "open_until_ms", until))
                    .await;
                let _: Option<()> = self.redis(redis.del(self.key(candidate, "probe"))).await;
            }
        }
    }

    /// The moving average of recent call latency, in milliseconds.
    pub async fn latency_ms(&self, candidate: &str) -> Option<f64> {
        if let Some(mut redis) = self.shared()
            && let Some(value) = self
                .redis(redis.get::<_, Option<f64>>(self.key(candidate, "latency")))
                .await
        {
            return value;
        }
        self.with_local(candidate, |c| c.latency_ms)
    }

    /// Takes a key out of rotation for `cooldown` (billing, quota or auth errors).
    pub async fn bench_key(&self, candidate: &str, key_id: &str, cooldown: Duration) {
        self.with_local(candidate, |c| {
            c.benched_keys
                .insert(key_id.to_owned(), Instant::now() + cooldown);
        });
        if let Some(mut redis) = self.shared() {
            let _: Option<()> = self
                .redis(redis.pset_ex(
                    self.key(candidate, &format!("key:{key_id}:benched")),
                    1,
                    cooldown.as_millis().max(1) as u64,
                ))
                .await;
        }
    }

    pub async fn key_benched(&self, candidate: &str, key_id: &str) -> bool {
        if let Some(mut redis) = self.shared()
            && let Some(benched) = self
                .redis(
                    redis.exists::<_, bool>(self.key(candidate, &format!("key:{key_id}:benched"))),
                )
                .await
        {
            return benched;
        }
        self.with_local(candidate, |c| {
            c.benched_keys
                .get(key_id)
                .is_some_and(|until| Instant::now() < *until)
        })
    }
}
