//! `/healthz` (the process is alive) and `/readyz` (the store answers), served by
//! every role.

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::store::Store;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(store)
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
    if store.ping(Duration::from_secs(2)).await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}
