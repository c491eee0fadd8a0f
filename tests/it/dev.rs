//! `microclaw dev` and `microclaw send` as a user runs them: the real binary, an
//! embedded store in a fresh data directory, no Postgres and no Redis involved.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use microclaw::{channels::standard_webhooks::SigningKey, dev::DevInfo};

use crate::{fakes::FakeModel, helpers::TestMessage};

struct DevInstance {
    data_dir: PathBuf,
    listen: String,
    model: FakeModel,
    child: Option<tokio::process::Child>,
}

fn free_port() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

fn microclaw(data_dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_microclaw"));
    command
        .current_dir(data_dir.parent().unwrap())
        // As on a machine without Postgres: dev must not need or try it.
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        )
        .env_remove("MICROCLAW_CONFIG")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

impl DevInstance {
    async fn new() -> Self {
        microclaw::install_tls_provider();
        let root = std::env::temp_dir().join(format!(
            "microclaw-dev-it-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root).unwrap();
        DevInstance {
            data_dir: root.join("microclaw-data"),
            listen: free_port(),
            model: FakeModel::start().await,
            child: None,
        }
    }

    /// Starts `microclaw dev` with the OpenAI provider pointed at the fake model.
    async fn start(&mut self) {
        let child = microclaw(&self.data_dir)
            .args(["dev", "--listen", &self.listen, "--data-dir"])
            .arg(&self.data_dir)
            .env("OPENAI_API_KEY", "sk-test")
            .env("MICROCLAW_MODELS__OPENAI__BASE_URL", &self.model.base_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("http://{}/readyz", self.listen))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) && self.data_dir.join("dev.json").exists() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "microclaw dev did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }

    async fn crash(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().await.unwrap();
    }

    /// `microclaw send TEXT`: its exit status and what it printed.
    async fn send(&self, text: &str) -> (bool, String) {
        let output = microclaw(&self.data_dir)
            .args(["send", text, "--wait-secs", "20", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .await
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let errors = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.success(), format!("{printed}{errors}"))
    }

    fn info(&self) -> DevInfo {
        serde_json::from_str(&std::fs::read_to_string(self.data_dir.join("dev.json")).unwrap())
            .unwrap()
    }
}

impl Drop for DevInstance {
    fn drop(&mut self) {
        std::fs::remove_dir_all(self.data_dir.parent().unwrap()).ok();
    }
}

#[tokio::test]
async fn send_talks_to_dev_and_history_survives_a_restart() {
    let mut dev = DevInstance::new().await;
    dev.start().await;
    assert_eq!(
        dev.send("you:first").await,
        (true, "answer to [you:first]".to_owned())
    );
    dev.stop().await;

    dev.start().await;
    assert_eq!(
        dev.send("you:second").await,
        (true, "answer to [you:second]".to_owned())
    );
    let calls = dev.model.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].message_count,
        calls[0].message_count + 2,
        "the second turn, after a restart, sees the first question and its answer"
    );
    // The admin API answers with the token dev wrote, and the person is the
    // same one as before the restart.
    let info = dev.info();
    let person: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/admin/v1/identities/{}:you",
            info.address, info.connector
        ))
        .bearer_auth(&info.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        person["accounts"].as_array().map(Vec::len),
        Some(1),
        "{person}"
    );
    // The identity CLI reads the dev store straight from its data directory.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_microclaw"))
        .args([
            "identity",
            "show",
            &format!("{}:you", info.connector),
            "--json",
        ])
        .arg("--data-dir")
        .arg(&dev.data_dir)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["identity"], person["identity"]);
    dev.stop().await;
}

#[tokio::test]
async fn an_acknowledged_message_survives_a_crash_of_dev() {
    let mut dev = DevInstance::new().await;
    dev.model.set_delay(Duration::from_secs(5));
    dev.start().await;
    let info = dev.info();

    let message = TestMessage::direct("crash-1", "zoe", "zoe:are you there");
    let body = message.body();
    let now = chrono::Utc::now().timestamp();
    let signature =
        SigningKey::parse(&info.secret)
            .unwrap()
            .sign("wh-crash-1", now, body.as_bytes());
    let http = reqwest::Client::new();
    let called = dev.model.call_started.notified();
    let accepted = http
        .post(format!("{}/hooks/{}", info.address, info.connector))
        .header("webhook-id", "wh-crash-1")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let event_id = accepted.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::timeout(Duration::from_secs(20), called)
        .await
        .unwrap();
    // The turn is waiting on the model: the process dies without a chance to clean up.
    dev.crash().await;

    dev.model.set_delay(Duration::from_millis(10));
    dev.start().await;
    let reply: serde_json::Value = http
        .get(format!(
            "{}/dev/v1/events/{event_id}/reply?wait_secs=20",
            info.address
        ))
        .bearer_auth(&info.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "answered", "{reply}");
    assert_eq!(reply["reply"], "answer to [zoe:are you there]");
    assert_eq!(
        dev.model.calls().len(),
        2,
        "the interrupted turn ran again after the restart"
    );
    dev.stop().await;
}

#[tokio::test]
async fn the_reply_endpoint_wants_the_dev_secret() {
    let mut dev = DevInstance::new().await;
    dev.start().await;
    let info = dev.info();
    let http = reqwest::Client::new();
    let url = format!(
        "{}/dev/v1/events/{}/reply",
        info.address,
        uuid::Uuid::now_v7()
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth("whsec_wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&info.secret)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_second_dev_on_the_same_data_dir_is_refused() {
    let mut dev = DevInstance::new().await;
    dev.start().await;
    let output = microclaw(&dev.data_dir)
        .args(["dev", "--listen", &free_port(), "--data-dir"])
        .arg(&dev.data_dir)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another `microclaw dev` is running"));
    dev.stop().await;
}

#[tokio::test]
async fn send_prints_the_final_answer_of_a_turn_that_called_a_tool() {
    let mut dev = DevInstance::new().await;
    dev.model
        .push_tool_call("current_time", serde_json::json!({"timezone": "UTC"}));
    dev.start().await;
    let (ok, printed) = dev.send("you:what time is it?").await;
    assert!(ok, "{printed}");
    assert!(
        printed.starts_with("answer to"),
        "the final answer, not the tool step: {printed:?}"
    );
    assert_eq!(dev.model.calls().len(), 2);
    dev.stop().await;
}

/// The web chat in dev: a visitor's conversation is answered, and it is still
/// there, and remembered by the agent, after a restart.
#[tokio::test]
async fn the_web_chat_answers_in_dev_and_keeps_its_history_across_restarts() {
    let mut dev = DevInstance::new().await;
    dev.start().await;
    let http = reqwest::Client::new();
    let base = format!(
        "http://{}/chat/{}",
        dev.listen,
        microclaw::dev::DEV_WEB_CHAT
    );
    let session: serde_json::Value = http
        .post(format!("{base}/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    let say = |id: &'static str, text: &'static str| {
        let request = http
            .post(format!("{base}/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "id": id, "text": text }));
        async move { request.send().await.unwrap().status() }
    };
    let mailbox = || {
        let request = http.get(format!("{base}/messages")).bearer_auth(&token);
        async move {
            let listed: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            listed["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m["role"].as_str().unwrap(),
                        m["text"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let wait_for = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let messages = mailbox().await;
            if messages.len() >= n {
                return messages;
            }
            assert!(std::time::Instant::now() < deadline, "{messages:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(say("w1", "web:first").await, 200);
    assert_eq!(
        wait_for(2).await,
        ["visitor: web:first", "agent: answer to [web:first]"]
    );
    dev.stop().await;

    dev.start().await;
    assert_eq!(
        mailbox().await,
        ["visitor: web:first", "agent: answer to [web:first]"],
        "the conversation survives the restart, and so does the token"
    );
    assert_eq!(say("w2", "web:second").await, 200);
    assert_eq!(wait_for(4).await[3], "agent: answer to [web:second]");
    let calls = dev.model.calls();
    assert_eq!(
        calls[1].message_count,
        calls[0].message_count + 2,
        "the agent remembers the first exchange"
    );
    dev.stop().await;
}

/// What a newcomer sees on start: where to chat, the webhook, the admin page
/// with its token, and how to try it from a terminal.
#[tokio::test]
async fn dev_prints_where_to_chat_the_webhooks_and_the_admin_token() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dev = DevInstance::new().await;
    let mut child = microclaw(&dev.data_dir)
        .args(["dev", "--listen", &dev.listen, "--data-dir"])
        .arg(&dev.data_dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Try it");
            banner.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("dev prints its banner");
    let banner = banner.join("\n");
    let address = format!("http://{}", dev.listen);
    assert!(
        banner.contains("model:    default"),
        "the mock model without a key:\n{banner}"
    );
    assert!(
        banner.contains(&format!("chat:     {address}/chat/chat")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("webhook:  POST {address}/hooks/custom")),
        "{banner}"
    );
    let token = dev.info().admin_token;
    assert!(
        banner.contains(&format!("{address}/admin")) && banner.contains(&token),
        "{banner}"
    );
    // The printed chat URL serves the page.
    let page = reqwest::get(format!("{address}/chat/chat")).await.unwrap();
    assert_eq!(page.status(), 200);
    child.kill().await.unwrap();
}
