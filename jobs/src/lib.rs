//! The durable job contract of MicroClaw.
//!
//! Every job that crosses a queue is defined here, once, with an explicit queue
//! name and a schema version. Receivers, workers and outside producers share these
//! definitions. The queue name is spelled out instead of being derived from the
//! Rust type name (apalis' default), so renaming or moving a type never strands
//! jobs that are already queued.
//!
//! Compatibility rule: a job written by an older release must still decode after an
//! upgrade. Fields are only ever added with a serde default; a change that cannot be
//! expressed that way bumps [`Job::SCHEMA_VERSION`] and keeps decoding the old shape.
//! The tests at the bottom pin the serialized JSON of every job.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// A payload that travels through a durable queue.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The queue (apalis `job_type`) the job is pushed to and consumed from.
    const QUEUE: &'static str;
    /// The newest schema version this release writes and understands.
    const SCHEMA_VERSION: u32;

    /// The schema version this instance was written with.
    fn schema_version(&self) -> u32;

    /// Refuses a job written by a newer release than this one.
    fn check_schema_version(&self) -> Result<(), UnsupportedSchemaVersion> {
        if self.schema_version() > Self::SCHEMA_VERSION {
            return Err(UnsupportedSchemaVersion {
                queue: Self::QUEUE,
                found: self.schema_version(),
                supported: Self::SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// The job encoded the way the queue stores it (JSON bytes).
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("job payloads are plain data and always serialize")
    }
}

/// A job written by a newer release than the one trying to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedSchemaVersion {
    pub queue: &'static str,
    pub found: u32,
    pub supported: u32,
}

impl std::fmt::Display for UnsupportedSchemaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job on queue {} has schema version {}, this release understands up to {}",
            self.queue, self.found, self.supported
        )
    }
}

impl std::error::Error for UnsupportedSchemaVersion {}

fn version_one() -> u32 {
    1
}

/// Run a turn for a session: answer every inbound event of the session that has not
/// been answered yet. Pushed by the receiver in the transaction that records the
/// inbound event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnJob {
    #[serde(rename = "v", default = "version_one")]
    pub schema_version: u32,
    pub session_id: Uuid,
    /// The inbound event whose arrival created this job.
    pub inbound_event_id: Uuid,
    /// The correlation id carried from the inbound event to every delivery.
    pub trace_id: String,
}

impl TurnJob {
    pub fn new(session_id: Uuid, inbound_event_id: Uuid, trace_id: impl Into<String>) -> Self {
        Self {
            schema_version: Self::SCHEMA_VERSION,
            session_id,
            inbound_event_id,
            trace_id: trace_id.into(),
        }
    }
}

impl Job for TurnJob {
    const QUEUE: &'static str = "microclaw.turns";
    const SCHEMA_VERSION: u32 = 1;

    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// Make one delivery attempt of an outbound reply. Each attempt is its own job; the
/// delivery row in Postgres carries the state and the attempt history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    #[serde(rename = "v", default = "version_one")]
    pub schema_version: u32,
    pub delivery_id: Uuid,
    /// The attempt this job makes (1 for the first).
    pub attempt: u32,
    pub trace_id: String,
}

impl DeliveryJob {
    pub fn new(delivery_id: Uuid, attempt: u32, trace_id: impl Into<String>) -> Self {
        Self {
            schema_version: Self::SCHEMA_VERSION,
            delivery_id,
            attempt,
            trace_id: trace_id.into(),
        }
    }

    /// The queue idempotency key: one job per (delivery, attempt), so a replayed
    /// scheduling step never creates a second job for the same attempt.
    pub fn idempotency_key(&self) -> String {
        format!("delivery:{}:{}", self.delivery_id, self.attempt)
    }
}

impl Job for DeliveryJob {
    const QUEUE: &'static str = "microclaw.deliveries";
    const SCHEMA_VERSION: u32 = 1;

    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn turn_job_json_is_pinned() {
        let job = TurnJob::new(id(1), id(2), "trace-1");
        assert_eq!(
            String::from_utf8(job.encode()).unwrap(),
            r#"{"v":1,"session_id":"00000000-0000-0000-0000-000000000001","inbound_event_id":"00000000-0000-0000-0000-000000000002","trace_id":"trace-1"}"#
        );
    }

    #[test]
    fn delivery_job_json_is_pinned() {
        let job = DeliveryJob::new(id(3), 2, "trace-2");
        assert_eq!(
            String::from_utf8(job.encode()).unwrap(),
            r#"{"v":1,"delivery_id":"00000000-0000-0000-0000-000000000003","attempt":2,"trace_id":"trace-2"}"#
        );
        assert_eq!(
            job.idempotency_key(),
            "delivery:00000000-0000-0000-0000-000000000003:2"
        );
    }

    #[test]
    fn jobs_queued_by_release_0_1_still_decode() {
        let turn: TurnJob = serde_json::from_str(
            r#"{"v":1,"session_id":"00000000-0000-0000-0000-000000000001","inbound_event_id":"00000000-0000-0000-0000-000000000002","trace_id":"t"}"#,
        )
        .unwrap();
        assert_eq!(turn, TurnJob::new(id(1), id(2), "t"));
        let delivery: DeliveryJob = serde_json::from_str(
            r#"{"v":1,"delivery_id":"00000000-0000-0000-0000-000000000003","attempt":1,"trace_id":"t"}"#,
        )
        .unwrap();
        assert_eq!(delivery, DeliveryJob::new(id(3), 1, "t"));
    }

    #[test]
    fn queue_names_are_explicit_and_distinct() {
        assert_eq!(TurnJob::QUEUE, "microclaw.turns");
        assert_eq!(DeliveryJob::QUEUE, "microclaw.deliveries");
    }

    #[test]
    fn a_job_from_a_newer_release_is_refused() {
        let mut job = TurnJob::new(id(1), id(2), "t");
        assert!(job.check_schema_version().is_ok());
        job.schema_version = 2;
        let err = job.check_schema_version().unwrap_err();
        assert_eq!(err.found, 2);
        assert!(err.to_string().contains("microclaw.turns"));
    }
}
