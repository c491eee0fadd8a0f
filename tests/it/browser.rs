//! Pages driven in a real headless Chromium over the DevTools protocol. The
//! `/admin` page: sign in, see the dead delivery, click Retry, and the fake
//! platform receives the message. The web chat: send a message, see the reply
//! arrive live, reload and see the conversation again. Needs Debian's
//! `chromium` (installed by `.ci/run`).

use std::{process::Stdio, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    admin::with_dead_delivery,
    fakes::PlatformMode,
    helpers::{ADMIN_TOKEN, Backend, TestApp, TestConfig, WEB_CHAT},
};

/// One DevTools connection to a page.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("Chromium answers")
                .expect("the DevTools socket stays open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )
        .await["result"]["value"]
            .clone()
    }

    /// Polls until `condition` is true in the page.
    async fn wait_for(&mut self, condition: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.eval(condition).await != json!(true) {
            assert!(
                std::time::Instant::now() < deadline,
                "page never satisfied `{condition}`: {}",
                self.eval("document.body ? document.body.innerText : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    chromium: tokio::process::Child,
    profile: std::path::PathBuf,
    page: Page,
}

impl Browser {
    async fn launch(http: &reqwest::Client) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "microclaw-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut chromium = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // This machine's network is closed: no background fetches.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium must be installed (Debian package `chromium`, see .ci/run)");
        let mut lines = BufReader::new(chromium.stderr.take().unwrap()).lines();
        let browser_url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("Chromium exited before it listened");
        })
        .await
        .expect("Chromium starts");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http_base = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let targets: Value = http
            .get(format!("http://{http_base}/json/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(&page_url).await.unwrap();
        Browser {
            chromium,
            profile,
            page: Page { socket, next_id: 0 },
        }
    }

    async fn close(mut self) {
        self.chromium.kill().await.ok();
        std::fs::remove_dir_all(&self.profile).ok();
    }
}

#[tokio::test]
async fn the_admin_page_retries_a_dead_delivery_in_a_real_browser() {
    let app = with_dead_delivery(Backend::Postgres).await;
    let mut browser = Browser::launch(&app.http).await;
    let page = &mut browser.page;
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/admin", app.address)}),
    )
    .await;
    page.wait_for("document.getElementById('token') !== null")
        .await;
    page.eval(&format!(
        "document.getElementById('token').value = '{ADMIN_TOKEN}'; document.getElementById('sign-in').click(); true"
    ))
    .await;
    page.wait_for("document.querySelector('tr.dead button.retry') !== null")
        .await;
    let shown = page
        .eval("document.querySelector('tr.dead').innerText")
        .await;
    assert!(
        shown.as_str().unwrap().contains("permanent"),
        "the dead delivery is shown with its error: {shown}"
    );

    app.platform.set_mode(PlatformMode::Accept);
    let before = app.platform.replies().len();
    page.eval("document.querySelector('tr.dead button.retry').click(); true")
        .await;
    page.wait_for("document.getElementById('status') !== null")
        .await;
    let replies = app
        .wait_for_replies(before + 1, Duration::from_secs(20))
        .await;
    assert!(
        replies[before]
            .event
            .data
            .text
            .starts_with("answer to [ada:hello]")
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.platform.replies().len(),
        before + 1,
        "delivered exactly once"
    );
    page.call("Page.reload", json!({})).await;
    page.wait_for("document.getElementById('status') !== null && document.getElementById('status').innerText === 'delivered'")
        .await;

    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_web_chat_page_answers_in_a_real_browser() {
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: WEB_CHAT.into(),
        ..TestConfig::default()
    })
    .await;
    let mut browser = Browser::launch(&app.http).await;
    let page = &mut browser.page;
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/chat/chat", app.address)}),
    )
    .await;
    // The page has its session once the token is stored.
    page.wait_for("localStorage.getItem('microclaw-webchat-chat') !== null")
        .await;
    page.eval(
        "document.getElementById('text').value = 'hello from the browser'; \
         document.getElementById('send').click(); true",
    )
    .await;
    page.wait_for(
        "[...document.querySelectorAll('.msg.agent')].some(m => m.textContent === 'answer to [hello from the browser]')",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('.msg.visitor').length")
            .await,
        json!(1),
        "the visitor's own message is shown once"
    );
    // A reload keeps the visitor and shows the conversation from the store.
    page.call("Page.reload", json!({})).await;
    page.wait_for(
        "[...document.querySelectorAll('.msg')].map(m => m.className + ':' + m.textContent).join('|') === \
         'msg visitor:hello from the browser|msg agent:answer to [hello from the browser]'",
    )
    .await;
    assert_eq!(app.model.calls().len(), 1);
    browser.close().await;
    app.stop().await;
}
