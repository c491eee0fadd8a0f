//! Integration tests: real Postgres and Redis, a fresh database per test, the app on
//! port 0, fake model and platform servers on loopback.

mod admin;
mod analytics;
mod browser;
mod cli;
mod db_gate;
mod delivery;
mod dev;
mod discord;
mod fakes;
mod functions;
mod group_commit;
mod helpers;
mod imessage;
mod lost_commit;
mod mcp;
mod memory;
mod metrics;
mod ordering;
mod pacing;
mod pipeline;
mod queue_fetch;
mod queue_finished;
mod queue_wakeups;
mod receiver;
mod router;
mod security;
mod slack;
mod teams;
mod telegram;
mod tools;
mod traces;
mod turn_faults;
mod twilio;
mod webchat;
mod whatsapp;
