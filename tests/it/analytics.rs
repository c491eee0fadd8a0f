//! The ClickHouse analytics sink against a real ClickHouse server (Debian's
//! `clickhouse-server`, started here on free ports with a private data
//! directory): turn and delivery events arrive as rows; with ClickHouse stopped
//! turns are still answered, the bounded buffer drops and counts what does not
//! fit, and the held batch is written once ClickHouse is back.

use std::{path::PathBuf, time::Duration};

use crate::{
    helpers::{TestApp, TestConfig, TestMessage},
    metrics::{sample, scrape},
};

/// A private ClickHouse server process.
struct ClickHouse {
    dir: PathBuf,
    http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
    process: Option<tokio::process::Child>,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ClickHouse {
    async fn start() -> Self {
        microclaw::install_tls_provider();
        let dir = std::env::temp_dir().join(format!("microclaw-ch-{}", uuid::Uuid::new_v4()));
        let mut server = Self {
            dir,
            http_port: free_port(),
            tcp_port: free_port(),
            interserver_port: free_port(),
            process: None,
            http: reqwest::Client::new(),
        };
        server.run().await;
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    async fn run(&mut self) {
        for sub in ["data", "tmp", "uf", "fs"] {
            std::fs::create_dir_all(self.dir.join(sub)).unwrap();
        }
        let d = self.dir.display();
        let process = tokio::process::Command::new("clickhouse-server")
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={d}/data/"))
            .arg(format!("--tmp_path={d}/tmp/"))
            .arg(format!("--user_files_path={d}/uf/"))
            .arg(format!("--format_schema_path={d}/fs/"))
            .arg(format!("--logger.log={d}/ch.log"))
            .arg(format!("--logger.errorlog={d}/err.log"))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.interserver_port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("clickhouse-server runs (apt-get install clickhouse-server; .ci/run does)");
        self.process = Some(process);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.query("SELECT 1").await.as_deref() != Some("1\n") {
            assert!(
                std::time::Instant::now() < deadline,
                "ClickHouse did not start; see {d}/err.log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await.unwrap();
        }
    }

    async fn query(&self, sql: &str) -> Option<String> {
        let response = self
            .http
            .post(format!("{}/", self.url()))
            .body(sql.to_owned())
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())?;
        response.text().await.ok()
    }

    /// Rows of `sql` (which must end in `FORMAT JSONEachRow`).
    async fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        self.query(sql)
            .await
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    async fn count(&self, kind: &str) -> usize {
        self.query(&format!(
            "SELECT count() FROM default.microclaw_events WHERE kind = '{kind}'"
        ))
        .await
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn send(app: &TestApp, id: &str) -> String {
    let message = TestMessage::direct(id, &format!("user-{id}"), &format!("user-{id}:hello"));
    let response = app
        .post_signed(
            crate::helpers::CONNECTOR,
            &message.body(),
            &format!("wh-{id}"),
            chrono::Utc::now().timestamp(),
        )
        .await;
    assert!(response.status().is_success());
    let accepted: serde_json::Value = response.json().await.unwrap();
    accepted["trace_id"].as_str().unwrap().to_owned()
}

async fn wait_until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn turns_and_deliveries_stream_to_clickhouse_and_survive_it_stopping() {
    let mut clickhouse = ClickHouse::start().await;
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            "[analytics]\nclickhouse_url = \"{}\"\nbatch_size = 2\nflush_interval = \"100ms\"\nbuffer = 4\n",
            clickhouse.url()
        ),
        ..TestConfig::default()
    })
    .await;

    let traces = [send(&app, "ch1").await, send(&app, "ch2").await];
    app.wait_for_replies(2, Duration::from_secs(20)).await;
    wait_until("two turn and two delivery rows", async || {
        clickhouse.count("turn").await == 2 && clickhouse.count("delivery").await == 2
    })
    .await;
    let turns = clickhouse
        .rows(
            "SELECT trace_id, agent, channel, connector, model, provider, outcome, \
                    input_tokens, output_tokens, model_calls, attempt, text, session_id \
               FROM default.microclaw_events WHERE kind = 'turn' ORDER BY trace_id \
             FORMAT JSONEachRow",
        )
        .await;
    let mut expected = traces.to_vec();
    expected.sort();
    assert_eq!(
        turns
            .iter()
            .map(|t| t["trace_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        expected
    );
    for turn in &turns {
        assert_eq!(turn["agent"], "assistant", "{turn}");
        assert_eq!(turn["channel"], "custom");
        assert_eq!(turn["connector"], crate::helpers::CONNECTOR);
        assert_eq!(turn["outcome"], "completed");
        assert_eq!(turn["provider"], "openai");
        assert_ne!(turn["model"], "");
        assert_eq!(turn["model_calls"], 1);
        assert_eq!(turn["attempt"], 1, "one inbound message answered");
        // 64-bit integers come back quoted.
        assert_ne!(turn["input_tokens"], "0", "{turn}");
        assert_ne!(turn["output_tokens"], "0", "{turn}");
        assert_eq!(turn["text"], "", "no message text unless include_text");
        assert_ne!(turn["session_id"], "");
    }
    let deliveries = clickhouse
        .rows(
            "SELECT trace_id, outcome, attempt, error_class, text \
               FROM default.microclaw_events WHERE kind = 'delivery' ORDER BY trace_id \
             FORMAT JSONEachRow",
        )
        .await;
    for (delivery, trace) in deliveries.iter().zip(&expected) {
        assert_eq!(delivery["trace_id"], trace.as_str());
        assert_eq!(delivery["outcome"], "delivered");
        assert_eq!(delivery["attempt"], 1);
        assert_eq!(delivery["error_class"], "");
        assert_eq!(delivery["text"], "");
    }

    // ClickHouse goes away: turns are still answered, at most batch_size + buffer
    // events wait, and the rest are dropped and counted.
    let dropped = |metrics: &str| {
        sample(
            metrics,
            "microclaw_analytics_events_total{outcome=\"dropped\"}",
        )
    };
    let written = |metrics: &str| {
        sample(
            metrics,
            "microclaw_analytics_events_total{outcome=\"written\"}",
        )
    };
    let before = scrape(&app).await;
    clickhouse.stop().await;
    for i in 0..8 {
        send(&app, &format!("down{i}")).await;
    }
    app.wait_for_replies(10, Duration::from_secs(30)).await;
    wait_until("16 events recorded, at least 10 dropped", async || {
        dropped(&scrape(&app).await) - dropped(&before) >= 10.0
    })
    .await;
    let while_down = scrape(&app).await;
    assert!(
        sample(&while_down, "microclaw_analytics_write_failures_total")
            > sample(&before, "microclaw_analytics_write_failures_total")
    );

    // Back again: the batch it held is written without anyone's help.
    clickhouse.run().await;
    wait_until("the held batch is written", async || {
        clickhouse.count("turn").await + clickhouse.count("delivery").await > 4
    })
    .await;
    wait_until("counted as written", async || {
        written(&scrape(&app).await) > written(&while_down)
    })
    .await;
    let total = clickhouse.count("turn").await + clickhouse.count("delivery").await;
    assert!(
        total <= 4 + 6,
        "at most batch_size + buffer events were held: {total}"
    );
    app.stop().await;
    clickhouse.stop().await;
}
