//! MicroClaw: a durable runtime for AI agents that live in chat.
//!
//! Receivers verify webhooks and enqueue every inbound message as a durable job
//! before answering; workers run turns against a model and deliver replies, with
//! the guarantees of DESIGN.md ("Guarantees") holding under concurrency and crashes.

pub mod admin;
pub mod analytics;
pub mod channels;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod deployment;
pub mod dev;
pub mod discord_gateway;
pub mod health;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod providers;
pub mod receiver;
pub mod retry;
pub mod roles;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod worker;

/// Installs ring as the process-wide TLS provider. reqwest is built without a
/// default provider so the dependency tree holds ring only; it must be installed
/// before the first HTTP client is built. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
