//! Observability: `/metrics` changes as traffic flows (counters are
//! process-wide and tests run side by side, so each check is "went up by at least"),
//! and one trace id runs through the logs of a webhook, its turn and its delivery.

use std::time::Duration;

use crate::helpers::{TestApp, TestConfig, TestMessage};

/// The value of the sample `series` (name with its labels, as exposed), 0 when absent.
pub(crate) fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn scrape(app: &TestApp) -> String {
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

/// One trace id from the webhook through the turn to the delivery, in the JSON
/// logs of a real `microclaw all` process.
#[tokio::test]
async fn the_webhook_turn_and_delivery_logs_share_one_trace_id() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let (child, base) = app
        .start_all(&[
            ("MICROCLAW_LOG__FORMAT", "json"),
            ("RUST_LOG", "info,sqlx=warn"),
        ])
        .await;
    let message = TestMessage::direct("tr1", "ada", "ada:trace me");
    let response = app
        .post_signed_at(
            &base,
            crate::helpers::CONNECTOR,
            &message.body(),
            "wh-tr1",
            chrono::Utc::now().timestamp(),
        )
        .await;
    let accepted: serde_json::Value = response.json().await.unwrap();
    let trace_id = accepted["trace_id"].as_str().unwrap().to_owned();
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = child;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let logs: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let trace_of = |message: &str| -> Vec<String> {
        logs.iter()
            .filter(|l| l["fields"]["message"] == message)
            .filter_map(|l| {
                l["fields"]["trace_id"]
                    .as_str()
                    .or(l["span"]["trace_id"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    };
    for message in ["inbound accepted", "turn committed", "delivered"] {
        assert_eq!(
            trace_of(message),
            [trace_id.as_str()],
            "{message}: {logs:?}"
        );
    }
    app.stop().await;
}

/// The Helm chart's KEDA trigger scales workers on this query
/// (`worker.keda.query` in helm/microclaw/values.yaml): it must count the jobs
/// waiting in MicroClaw's queues in the real apalis schema.
#[tokio::test]
async fn the_charts_queue_depth_query_counts_waiting_jobs() {
    let values = include_str!("../../helm/microclaw/values.yaml");
    let mut lines = values
        .lines()
        .skip_while(|l| l.trim() != "query: >-")
        .skip(1);
    let mut query = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            break;
        }
        query.push(line.trim());
    }
    let query = query.join(" ");
    assert!(
        query.starts_with("SELECT COUNT(*) FROM apalis.jobs"),
        "{query}"
    );
    let app = TestApp::spawn(TestConfig::default()).await;
    assert_eq!(app.count(&query).await, 0);
    for n in 0..3 {
        let message = TestMessage::direct(&format!("q{n}"), &format!("user{n}"), "hello");
        assert_eq!(app.post_message(&message).await.status(), 200);
    }
    assert_eq!(
        app.count(&query).await,
        3,
        "three turn jobs wait for a worker"
    );
    app.stop().await;
}
