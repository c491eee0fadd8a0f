//! `/healthz` (the process is alive) and `/readyz` (the database answers), served by
//! every role.

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use sqlx::PgPool;

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(pool)
}

async fn ready(State(pool): State<PgPool>) -> (StatusCode, &'static str) {
    if crate::store::ping(&pool, Duration::from_secs(2)).await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}
