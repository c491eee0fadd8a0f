//! Store code written once for both backends.
//!
//! The files in this folder are compiled twice, as `store::postgres::X` and
//! `store::sqlite::X` (`#[path]` modules), each against its backend's `dialect`:
//! the database type, a `sql()` that turns `$1` placeholders into the backend's,
//! row-lock clauses (empty on SQLite, whose write transactions hold the whole-file
//! write lock from `BEGIN IMMEDIATE`), and `begin()` for a write transaction.
//! Portable SQL binds its timestamps from Rust instead of calling `now()`.

/// Which backend a copy of the portable code was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Link-code rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPolicy {
    /// How long a code is valid, in milliseconds.
    pub code_ttl_ms: i64,
    /// Failed redemptions allowed per account within `failure_window_ms`.
    pub max_failures: i64,
    pub failure_window_ms: i64,
}
