use std::time::Duration;

use crate::helpers::{TestApp, TestConfig, TestMessage};

fn microclaw() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microclaw"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("MICROCLAW_CONFIG");
    command
}

/// Runs `microclaw config check` on `text`; returns success and stderr.
fn config_check(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let path = std::env::temp_dir().join(format!(
        "microclaw-cfg-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).unwrap();
    let output = microclaw()
        .args(["config", "check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const AGENT_AND_CONNECTOR: &str = r#"
[[agents]]
name = "a"
model = "nope"

[[connectors]]
id = "web"
channel = "custom"
agent = "a"
signing_secret_env = "MC_TEST_UNSET_SECRET"
callback_url = "http://127.0.0.1:9/replies"
"#;

#[test]
fn config_check_prints_every_problem_with_its_key() {
    let (ok, stderr) = config_check(
        &format!("[worker]\nturn_mode = \"sometimes\"\n{AGENT_AND_CONNECTOR}"),
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("worker.turn_mode"), "{stderr}");

    let (ok, stderr) = config_check(AGENT_AND_CONNECTOR, &[]);
    assert!(!ok);
    assert!(stderr.contains("agents[0].model"), "{stderr}");
    assert!(
        stderr.contains("connectors[0].signing_secret_env"),
        "{stderr}"
    );
    assert!(stderr.contains("MC_TEST_UNSET_SECRET"), "{stderr}");

    let (ok, stderr) = config_check(
        AGENT_AND_CONNECTOR,
        &[("MC_TEST_UNSET_SECRET", crate::helpers::SECRET)],
    );
    assert!(!ok);
    assert!(stderr.contains("agents[0].model"), "{stderr}");
    assert!(!stderr.contains("signing_secret_env"), "{stderr}");
}

#[test]
fn the_example_config_checks_clean() {
    let output = microclaw()
        .args(["config", "check", "--config", "microclaw.example.toml"])
        .env("MICROCLAW_CUSTOM_SECRET", crate::helpers::SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

#[test]
fn every_subcommand_has_useful_help() {
    for args in [
        &["--help"][..],
        &["receiver", "--help"],
        &["worker", "--help"],
        &["all", "--help"],
        &["migrate", "--help"],
        &["config", "check", "--help"],
    ] {
        let output = microclaw().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            output.stdout.len() > 200,
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[tokio::test]
async fn sigterm_lets_the_process_finish_its_work_and_exit() {
    let mut app = TestApp::spawn(TestConfig::default()).await;
    app.model.set_delay(Duration::from_millis(800));
    let (mut child, _) = start_all_with_a_turn_in_flight(&app).await;
    terminate(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process exits within its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The in-flight turn finished before exit: its reply was committed, and its
    // delivery is sent by whichever worker runs next.
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 1);
    app.start_worker();
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    app.stop().await;
}

/// Runs `microclaw all` as a child process and gives it a message whose turn is
/// waiting on the model.
async fn start_all_with_a_turn_in_flight(app: &TestApp) -> (tokio::process::Child, String) {
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let child = app.spawn_binary(&["all"], Some(&listen));

    // Wait until the process serves, then give it a message whose turn is in flight.
    crate::helpers::wait_until_serving(&app.http, &format!("http://{listen}")).await;
    let called = app.model.call_started.notified();
    let message = TestMessage::direct("t1", "xena", "xena:bye");
    let accepted = app
        .post_signed_at(
            &format!("http://{listen}"),
            "web",
            &message.body(),
            "wh-t1",
            chrono::Utc::now().timestamp(),
        )
        .await;
    assert_eq!(accepted.status(), 200);
    tokio::time::timeout(Duration::from_secs(20), called)
        .await
        .unwrap();

    (child, listen)
}

fn terminate(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
}

#[tokio::test]
async fn sigterm_returns_jobs_that_outlive_the_grace_period_to_the_queue() {
    let app = TestApp::spawn(TestConfig::default()).await;
    // Every model call times out (1.5 s each, three attempts): longer than the 2 s grace.
    app.model.set_delay(Duration::from_secs(3));
    let (mut child, _) = start_all_with_a_turn_in_flight(&app).await;
    terminate(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process exits after its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(app.count("SELECT count(*) FROM turns").await, 0);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM apalis.jobs
              WHERE job_type = 'microclaw.turns' AND status = 'Pending' AND lock_by IS NULL"
        )
        .await,
        1,
        "the unfinished turn is back on the queue at once, not left to orphan recovery"
    );
    app.stop().await;
}
