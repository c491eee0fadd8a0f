//! `/metrics`: the Prometheus exposition changes as traffic flows. Counters are
//! process-wide and tests run side by side, so each check is "went up by at least".

use std::time::Duration;

use crate::helpers::{TestApp, TestConfig, TestMessage};

/// The value of the sample `series` (name with its labels, as exposed), 0 when absent.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let response = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_webhooks_turns_model_calls_and_deliveries() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    let series = [
        r#"microclaw_webhooks_total{channel="custom",outcome="ok"}"#,
        r#"microclaw_inbound_messages_total{channel="custom",result="accepted"}"#,
        r#"microclaw_turns_total{agent="assistant",outcome="completed"}"#,
        r#"microclaw_model_calls_total{provider="openai",model="fake-gpt",outcome="ok"}"#,
        r#"microclaw_model_tokens_total{provider="openai",model="fake-gpt",direction="input"}"#,
        r#"microclaw_deliveries_total{channel="custom",outcome="delivered"}"#,
        r#"microclaw_webhook_duration_seconds_count{channel="custom"}"#,
    ];
    let before = scrape(&app).await;
    app.post_message(&TestMessage::direct("m1", "ada", "ada:hello"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    app.drain(Duration::from_secs(10)).await;
    let after = scrape(&app).await;
    for series in series {
        assert!(
            sample(&after, series) >= sample(&before, series) + 1.0,
            "{series} did not go up:\n{after}"
        );
    }
    // Queue gauges come from the store at scrape time.
    assert!(
        after.contains(r#"microclaw_queue_waiting_jobs{queue="microclaw.turns"}"#),
        "{after}"
    );
    assert!(after.contains("# TYPE microclaw_turn_duration_seconds histogram"));
    app.stop().await;
}
