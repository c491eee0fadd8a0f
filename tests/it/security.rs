//! Secrets stay out of the logs: a real `microclaw all` process at debug level
//! with known secret values answers a signed webhook through the model and the
//! platform and serves the admin API, and no line it writes holds a secret.

use std::{process::Stdio, time::Duration};

use crate::helpers::{
    ADMIN_READ_TOKEN, ADMIN_TOKEN, CONNECTOR, SECRET, TestApp, TestConfig, TestMessage,
    wait_until_serving,
};

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let logs = std::env::temp_dir().join(format!("microclaw-{}-logs.txt", app.db.name));
    let log_file = std::fs::File::create(&logs).unwrap();
    let mut child = app
        .binary(&["all"], Some(&listen))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    wait_until_serving(&app.http, &base).await;

    // A webhook signed with the connector's secret, answered by the model (called
    // with its API key) and delivered signed with the secret.
    let message = TestMessage::direct("sec-1", "ivan", "hello");
    let response = app
        .post_signed_at(
            &base,
            CONNECTOR,
            &message.body(),
            "wh-sec-1",
            chrono::Utc::now().timestamp(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.platform.replies().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no reply delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin API, with each token, and refused with a wrong one.
    for token in [ADMIN_TOKEN, ADMIN_READ_TOKEN, "not-the-token"] {
        app.http
            .get(format!("{base}/admin/v1/queues"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    child.kill().await.unwrap();

    let written = std::fs::read_to_string(&logs).unwrap();
    std::fs::remove_file(&logs).ok();
    assert!(
        written.contains("inbound accepted") && written.contains("DEBUG"),
        "the process logged at debug level:\n{written}"
    );
    let secret_key = SECRET.trim_start_matches("whsec_");
    for secret in [SECRET, secret_key, "sk-test", ADMIN_TOKEN, ADMIN_READ_TOKEN] {
        let leaked: Vec<&str> = written.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "`{secret}` is in the logs: {leaked:#?}");
    }
    app.stop().await;
}
