//! A fast dedup cache in Redis, in front of Postgres.
//!
//! Only a hint: a key is written after the inbound event's transaction committed,
//! so a hit means "already recorded" for sure and the receiver can answer a
//! platform retry without touching Postgres. A miss, a timeout or Redis being down
//! all fall through to Postgres, whose unique index is the real dedup. Nothing is
//! lost or duplicated when Redis is unavailable.

use redis::{AsyncCommands, aio::ConnectionManager};

use crate::config::RedisConfig;

#[derive(Clone)]
pub struct DedupCache {
    connection: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    timeout: std::time::Duration,
}

/// A lazy Redis connection shared by the dedup cache and model health; None when
/// Redis is not configured. Nothing waits for Redis at start.
pub fn connect(config: &RedisConfig) -> anyhow::Result<Option<ConnectionManager>> {
    if config.url.is_empty() {
        return Ok(None);
    }
    let client = redis::Client::open(config.url.as_str())?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout.0))
        .set_response_timeout(Some(config.timeout.0))
        .set_number_of_retries(1);
    Ok(Some(ConnectionManager::new_lazy_with_config(
        client,
        manager_config,
    )?))
}

impl DedupCache {
    pub fn new(config: &RedisConfig, connection: ConnectionManager) -> Self {
        Self {
            connection,
            prefix: config.key_prefix.clone(),
            ttl_secs: config.dedup_ttl.0.as_secs().max(1),
            timeout: config.timeout.0,
        }
    }

    pub fn key(&self, connector_id: &str, platform_message_id: &str) -> String {
        format!("{}:dedup:{connector_id}:{platform_message_id}", self.prefix)
    }

    /// True only when Redis positively knows the event was recorded.
    pub async fn seen(&self, connector_id: &str, platform_message_id: &str) -> bool {
        let key = self.key(connector_id, platform_message_id);
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, connection.exists::<_, bool>(&key)).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "dedup cache unavailable, asking Postgres");
                false
            }
            Err(_) => {
                tracing::debug!("dedup cache timed out, asking Postgres");
                false
            }
        }
    }

    /// Remembers a recorded event; failures are only logged.
    pub async fn remember(&self, connector_id: &str, platform_message_id: &str) {
        let key = self.key(connector_id, platform_message_id);
        let mut connection = self.connection.clone();
        let write = connection.set_ex::<_, _, ()>(&key, 1u8, self.ttl_secs);
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not write the dedup cache"),
            Err(_) => tracing::debug!("writing the dedup cache timed out"),
        }
    }
}
