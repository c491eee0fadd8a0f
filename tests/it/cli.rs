use std::{process::Stdio, time::Duration};

use crate::helpers::{TestApp, TestConfig, TestMessage};

fn microclaw() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microclaw"));
    command.env_remove("DATABASE_URL").env_remove("MICROCLAW_CONFIG");
    command
}

#[test]
fn config_check_prints_every_problem_with_its_key() {
    let dir = std::env::temp_dir().join(format!("microclaw-cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[worker]
turn_mode = "sometimes"

[[agents]]
name = "a"
model = "nope"

[[connectors]]
id = "web"
channel = "custom"
agent = "a"
signing_secret_env = "MC_TEST_UNSET_SECRET"
"#,
    )
    .unwrap();
    let output = microclaw().args(["config", "check", "--config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("worker.turn_mode"), "{stderr}");

    std::fs::write(
        &path,
        r#"
[[agents]]
name = "a"
model = "nope"

[[connectors]]
id = "web"
channel = "custom"
agent = "a"
signing_secret_env = "MC_TEST_UNSET_SECRET"
callback_url = "http://127.0.0.1:9/replies"
"#,
    )
    .unwrap();
    let output = microclaw().args(["config", "check", "--config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agents[0].model"), "{stderr}");
    assert!(stderr.contains("connectors[0].signing_secret_env"), "{stderr}");
    assert!(stderr.contains("MC_TEST_UNSET_SECRET"), "{stderr}");

    let output = microclaw()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("MC_TEST_UNSET_SECRET", crate::helpers::SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agents[0].model"), "{stderr}");
    assert!(!stderr.contains("signing_secret_env"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_example_config_checks_clean() {
    let output = microclaw()
        .args(["config", "check", "--config", "microclaw.example.toml"])
        .env("MICROCLAW_CUSTOM_SECRET", crate::helpers::SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

#[test]
fn every_subcommand_has_useful_help() {
    for args in [&["--help"][..], &["receiver", "--help"], &["worker", "--help"], &["all", "--help"], &["migrate", "--help"], &["config", "check", "--help"]] {
        let output = microclaw().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(output.stdout.len() > 200, "{args:?}: {}", String::from_utf8_lossy(&output.stdout));
    }
}

#[tokio::test]
async fn sigterm_lets_the_process_finish_its_work_and_exit() {
    let app = TestApp::spawn(TestConfig::default()).await;
    app.model.set_delay(Duration::from_millis(800));
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let dir = std::env::temp_dir().join(format!("microclaw-term-{}", app.db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("microclaw.toml");
    std::fs::write(&path, app.config_toml.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""), 1)).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_microclaw"))
        .args(["all", "--config"])
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env("TEST_SECRET", crate::helpers::SECRET)
        .env("TEST_MODEL_KEY", "sk-test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Wait until the process serves, then give it a message whose turn is in flight.
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http.get(format!("http://{listen}/healthz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "process did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let called = app.model.call_started.notified();
    let message = TestMessage::direct("t1", "xena", "xena:bye");
    let body = message.body();
    let now = chrono::Utc::now().timestamp();
    let signature = microclaw::channels::standard_webhooks::SigningKey::parse(crate::helpers::SECRET)
        .unwrap()
        .sign("wh-t1", now, body.as_bytes());
    let accepted = http
        .post(format!("http://{listen}/hooks/web"))
        .header("webhook-id", "wh-t1")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    tokio::time::timeout(Duration::from_secs(20), called).await.unwrap();

    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process exits within its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The in-flight turn finished before exit: its reply was committed.
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 1);
    std::fs::remove_dir_all(dir).ok();
    app.stop().await;
}
