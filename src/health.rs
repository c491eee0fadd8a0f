//! `/healthz` (the process is alive), `/readyz` (the store answers) and
//! `/metrics` (Prometheus, see `metrics`), served by every role.

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::store::Store;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(store)
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
    if store.ping(Duration::from_secs(2)).await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}

async fn metrics(State(store): State<Store>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&store).await,
    )
}
