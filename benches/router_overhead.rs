//! The router's own overhead per model call: the same request to the same
//! OpenAI-compatible server on loopback, once through the provider client directly
//! (the baseline) and once through the router (candidate ordering, breaker
//! admission, the attempt loop, latency bookkeeping and call recording; health
//! kept in-process, no Redis). `cargo bench --bench router_overhead`.

use std::hint::black_box;

use axum::{Json, Router as HttpRouter, routing::post};
use criterion::{Criterion, criterion_group, criterion_main};
use microclaw::{
    config::Settings,
    providers::{
        ChatRequest, Message, Provider, Role, health::Health, openai::OpenAiProvider,
        router::Router,
    },
};
use serde_json::{Value, json};

async fn completion(Json(_): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "pong"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    }))
}

fn overhead(c: &mut Criterion) {
    microclaw::install_tls_provider();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = HttpRouter::new().route("/v1/chat/completions", post(completion));
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    });
    let env = |name: &str| {
        (name == "MICROCLAW_CUSTOM_SECRET")
            .then(|| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned())
    };
    let settings = Settings::from_toml(
        &format!(
            r#"
[models.bench]
provider = "openai"
base_url = "http://{address}/v1"
model = "bench"
"#
        ),
        &env,
    )
    .expect("bench config is valid");
    let http = reqwest::Client::new();
    let provider = OpenAiProvider::new(&settings.models["bench"], http.clone());
    let router = Router::new(
        &settings,
        &http,
        Health::new(&settings.router, None, "bench", settings.redis.timeout.0),
    );
    let request = ChatRequest {
        system: Some("Answer with one word.".into()),
        messages: vec![Message::text(Role::User, "ping")],
        tools: vec![],
        trace_id: "bench".into(),
    };

    let mut group = c.benchmark_group("router_overhead");
    group.bench_function("baseline_provider_client", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(provider.complete(&request, None).await.expect("answer")) })
    });
    group.bench_function("through_router", |b| {
        b.to_async(&runtime).iter(|| async {
            let outcome = router.complete("bench", &request).await;
            black_box(outcome.result.expect("answer"))
        })
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
