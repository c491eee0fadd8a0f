//! Discord end to end: signed interactions into the real receiver, and messages
//! from a fake Gateway websocket into the `discord-gateway` role; turns on a real
//! worker, replies at a fake Discord API.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::{
    fakes::FakeApi,
    helpers::{DISCORD_BOT_TOKEN, DISCORD_PUBLIC_KEY, DISCORD_SEED, TestApp, TestConfig},
};

const SAMPLE: &str = include_str!("../fixtures/discord.json");

async fn spawn(discord: &FakeApi) -> TestApp {
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "discord"
channel = "discord"
agent = "assistant"
public_key = "{DISCORD_PUBLIC_KEY}"
command = "ask"
bot_token_env = "TEST_DISCORD_TOKEN"
api_base_url = "{}"
"#,
            discord.base_url
        ),
        ..TestConfig::default()
    })
    .await
}

/// A snowflake made now, as Discord makes interaction ids.
fn fresh_id() -> String {
    let since_epoch = chrono::Utc::now().timestamp_millis() - 1_420_070_400_000;
    ((since_epoch as u64) << 22 | fastrand::u64(..1 << 22)).to_string()
}

/// The sample command with `id` and `prompt`.
fn command(id: &str, prompt: &str) -> String {
    let mut interaction: Value = serde_json::from_str(SAMPLE).unwrap();
    interaction["id"] = json!(id);
    interaction["data"]["options"][0]["value"] = json!(prompt);
    interaction.to_string()
}

async fn post_signed(app: &TestApp, body: &str) -> reqwest::Response {
    let key = SigningKey::from_bytes(&hex32(DISCORD_SEED));
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = key.sign(format!("{timestamp}{body}").as_bytes());
    let hex: String = signature
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    app.http
        .post(format!("{}/hooks/discord", app.address))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", timestamp)
        .header("x-signature-ed25519", hex)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    out
}

async fn wait_for_sends(discord: &FakeApi, n: usize) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = discord.sent_messages();
        if sent.len() >= n {
            return sent;
        }
        assert!(std::time::Instant::now() < deadline, "sent: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_slash_command_is_deferred_then_answered_in_its_interaction() {
    let discord = FakeApi::start().await;
    let app = spawn(&discord).await;
    let id = fresh_id();
    let response = post_signed(&app, &command(&id, "what broke? @everyone")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"type": 5}),
        "deferred: Discord shows \"thinking…\""
    );
    let sent = wait_for_sends(&discord, 1).await;
    let (path, body) = &sent[0];
    let token = serde_json::from_str::<Value>(SAMPLE).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        path,
        &format!("/webhooks/1290000000000000001/{token}/messages/@original")
    );
    assert_eq!(discord.methods()[0], "PATCH");
    assert_eq!(body["content"], "answer to [what broke? @everyone]");
    assert_eq!(
        body["allowed_mentions"],
        json!({"parse": []}),
        "model output can't ping anyone"
    );
    assert_eq!(discord.authorizations()[0], "", "no bot token on webhooks");
    app.stop().await;
}

#[tokio::test]
async fn past_the_token_lifetime_the_reply_is_a_channel_message_with_the_bot_token() {
    let discord = FakeApi::start().await;
    let app = spawn(&discord).await;
    // The sample's id was made long ago: its token is no longer valid.
    discord.script(
        429,
        json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false}),
    );
    assert_eq!(post_signed(&app, SAMPLE).await.status(), 200);
    let sent = wait_for_sends(&discord, 2).await;
    for (path, body) in &sent {
        assert_eq!(path, "/channels/1180000000000000777/messages");
        assert_eq!(body["content"], "answer to [summarise today's incidents]");
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        assert_eq!(body["enforce_nonce"], true);
        assert!(
            body.get("message_reference").is_none(),
            "an interaction is not a message"
        );
    }
    assert_eq!(
        sent[0].1["nonce"], sent[1].1["nonce"],
        "the retry reuses the nonce"
    );
    assert_eq!(
        discord.authorizations()[1],
        format!("Bot {DISCORD_BOT_TOKEN}")
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(discord.sent_messages().len(), 2, "429 once, then delivered");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn ping_bad_signatures_and_other_commands_start_no_turn() {
    let discord = FakeApi::start().await;
    let app = spawn(&discord).await;
    let ping =
        r#"{"application_id":"1290000000000000001","id":"1","type":1,"version":1,"token":"x"}"#;
    let pong = post_signed(&app, ping).await;
    assert_eq!(pong.status(), 200);
    assert_eq!(pong.json::<Value>().await.unwrap(), json!({"type": 1}));

    // Discord checks endpoints with bad signatures: they must get 401.
    let forged = app
        .http
        .post(format!("{}/hooks/discord", app.address))
        .header(
            "x-signature-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("x-signature-ed25519", "00".repeat(64))
        .body(SAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let unsigned = app
        .http
        .post(format!("{}/hooks/discord", app.address))
        .body(SAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 400);

    let mut other: Value = serde_json::from_str(SAMPLE).unwrap();
    other["id"] = json!(fresh_id());
    other["data"]["name"] = json!("weather");
    let answered: Value = post_signed(&app, &other.to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answered["type"], 4);
    assert_eq!(answered["data"]["flags"], 64, "only the user sees it");
    assert_eq!(app.count("SELECT COUNT(*) FROM inbound_events").await, 0);
    app.stop().await;
}

/// A fake Gateway: HELLO, then a script per connection. The first connection
/// (IDENTIFY) gets READY and a direct message, answers one heartbeat and closes
/// with a resumable code; the second (RESUME) replays that message, then sends a
/// mention, a server message without one, and the bot's own message.
struct FakeGateway {
    url: String,
    /// Every payload the client sent, per connection.
    received: Arc<Mutex<Vec<Vec<Value>>>>,
}

fn dispatch(seq: u64, kind: &str, data: Value) -> Message {
    Message::text(json!({"op": 0, "s": seq, "t": kind, "d": data}).to_string())
}

fn gateway_message(
    id: &str,
    channel: &str,
    guild: Option<&str>,
    author: &str,
    content: &str,
    mentions: &[&str],
) -> Value {
    json!({
        "id": id, "channel_id": channel, "guild_id": guild,
        "author": {"id": author, "username": author, "bot": author == "bot-1"},
        "content": content,
        "mentions": mentions.iter().map(|m| json!({"id": m, "username": m})).collect::<Vec<_>>(),
        "attachments": [], "timestamp": "2026-11-25T12:00:00+00:00",
    })
}

impl FakeGateway {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
        let log = received.clone();
        let resume_url = url.clone();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                connection += 1;
                let log = log.clone();
                let resume_url = resume_url.clone();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                tokio::spawn(async move {
                    let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    socket
                        .send(Message::text(
                            json!({"op": 10, "d": {"heartbeat_interval": 300}}).to_string(),
                        ))
                        .await
                        .unwrap();
                    let mut scripted = false;
                    while let Some(Ok(frame)) = socket.next().await {
                        let Message::Text(text) = frame else { continue };
                        let payload: Value = serde_json::from_str(&text).unwrap();
                        log.lock().unwrap()[index].push(payload.clone());
                        match payload["op"].as_u64().unwrap() {
                            2 if connection == 1 && !scripted => {
                                scripted = true;
                                let ready = json!({
                                    "session_id": "sess-1",
                                    "resume_gateway_url": resume_url,
                                    "user": {"id": "bot-1", "username": "microclaw", "bot": true},
                                });
                                socket.send(dispatch(1, "READY", ready)).await.unwrap();
                                let dm = gateway_message(
                                    "m-dm",
                                    "dm-chan",
                                    None,
                                    "ada",
                                    "hello bot",
                                    &[],
                                );
                                socket
                                    .send(dispatch(2, "MESSAGE_CREATE", dm))
                                    .await
                                    .unwrap();
                            }
                            6 if !scripted => {
                                scripted = true;
                                let dm = gateway_message(
                                    "m-dm",
                                    "dm-chan",
                                    None,
                                    "ada",
                                    "hello bot",
                                    &[],
                                );
                                let mention = gateway_message(
                                    "m-guild",
                                    "guild-chan",
                                    Some("g-1"),
                                    "bob",
                                    "<@bot-1> status?",
                                    &["bot-1"],
                                );
                                let chatter = gateway_message(
                                    "m-chatter",
                                    "guild-chan",
                                    Some("g-1"),
                                    "bob",
                                    "lunch?",
                                    &[],
                                );
                                let own = gateway_message(
                                    "m-own",
                                    "dm-chan",
                                    None,
                                    "bot-1",
                                    "answer to [hello bot]",
                                    &[],
                                );
                                for (seq, message) in
                                    [(2, dm), (3, mention), (4, chatter), (5, own)]
                                {
                                    socket
                                        .send(dispatch(seq, "MESSAGE_CREATE", message))
                                        .await
                                        .unwrap();
                                }
                                socket
                                    .send(dispatch(6, "RESUMED", Value::Null))
                                    .await
                                    .unwrap();
                            }
                            1 => {
                                socket
                                    .send(Message::text(json!({"op": 11}).to_string()))
                                    .await
                                    .unwrap();
                                // Once a heartbeat carries the DM's sequence number
                                // (earlier ones may carry READY's).
                                if connection == 1 && payload["d"] == 2 {
                                    // A resumable close (Discord restarts a node).
                                    socket
                                        .close(Some(CloseFrame {
                                            code: CloseCode::from(4000),
                                            reason: "unknown error".into(),
                                        }))
                                        .await
                                        .ok();
                                    return;
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        FakeGateway { url, received }
    }

    fn received(&self) -> Vec<Vec<Value>> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn the_gateway_identifies_heartbeats_resumes_and_records_each_message_once() {
    let discord = FakeApi::start().await;
    let gateway = FakeGateway::start().await;
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "discord"
channel = "discord"
agent = "assistant"
public_key = "{DISCORD_PUBLIC_KEY}"
command = "ask"
bot_token_env = "TEST_DISCORD_TOKEN"
api_base_url = "{}"
gateway = true
gateway_url = "{}"
"#,
            discord.base_url, gateway.url
        ),
        ..TestConfig::default()
    })
    .await;
    let (stop, shutdown) = microclaw::roles::Shutdown::new();
    let role = tokio::spawn(microclaw::discord_gateway::run(
        app.deployment.clone(),
        shutdown,
    ));

    let sent = wait_for_sends(&discord, 2).await;
    let mut sent: Vec<(String, Value)> = sent;
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sent[0].0, "/channels/dm-chan/messages");
    assert_eq!(sent[0].1["content"], "answer to [hello bot]");
    assert_eq!(sent[0].1["message_reference"]["message_id"], "m-dm");
    assert_eq!(sent[1].0, "/channels/guild-chan/messages");
    assert_eq!(
        sent[1].1["content"], "answer to [status?]",
        "the mention is taken out"
    );
    assert_eq!(sent[1].1["message_reference"]["message_id"], "m-guild");
    for (_, body) in &sent {
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    }

    let connections = gateway.received();
    assert!(connections.len() >= 2, "{connections:?}");
    let identify = &connections[0][0];
    assert_eq!(identify["op"], 2);
    assert_eq!(identify["d"]["token"], DISCORD_BOT_TOKEN);
    assert_eq!(identify["d"]["intents"], 37376);
    let heartbeats: Vec<&Value> = connections[0]
        .iter()
        .filter(|p| p["op"] == 1)
        .map(|p| &p["d"])
        .collect();
    assert!(
        heartbeats.last() == Some(&&json!(2))
            && heartbeats
                .iter()
                .all(|d| d.is_null() || **d == 1 || **d == 2),
        "heartbeats carry the last sequence number: {heartbeats:?}"
    );
    let resume = &connections[1][0];
    assert_eq!(resume["op"], 6);
    assert_eq!(resume["d"]["session_id"], "sess-1");
    assert_eq!(resume["d"]["seq"], 2);

    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.model.calls().len(),
        2,
        "the replayed message made no second turn"
    );
    assert_eq!(discord.sent_messages().len(), 2);
    stop.trigger();
    role.await.unwrap().unwrap();
    app.stop().await;
}

/// A connection whose heartbeats are never acknowledged is a zombie: the role
/// drops it and resumes the session on a new one.
#[tokio::test]
async fn an_unacknowledged_heartbeat_makes_the_gateway_resume() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let openings: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = openings.clone();
    let resume_url = url.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            let resume_url = resume_url.clone();
            tokio::spawn(async move {
                let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let hello = json!({"op": 10, "d": {"heartbeat_interval": 150}});
                socket.send(Message::text(hello.to_string())).await.unwrap();
                let Some(Ok(Message::Text(text))) = socket.next().await else {
                    return;
                };
                let opening: Value = serde_json::from_str(&text).unwrap();
                log.lock().unwrap().push(opening.clone());
                if opening["op"] == 2 {
                    let ready = json!({"session_id": "zombie-1", "resume_gateway_url": resume_url, "user": {"id": "bot-1"}});
                    socket.send(dispatch(7, "READY", ready)).await.unwrap();
                    // Never acknowledge a heartbeat; keep the socket open.
                    while socket.next().await.is_some() {}
                } else {
                    socket
                        .send(dispatch(8, "RESUMED", Value::Null))
                        .await
                        .unwrap();
                    while let Some(Ok(frame)) = socket.next().await {
                        if let Message::Text(text) = frame
                            && serde_json::from_str::<Value>(&text).unwrap()["op"] == 1
                        {
                            let ack = json!({"op": 11}).to_string();
                            socket.send(Message::text(ack)).await.unwrap();
                        }
                    }
                }
            });
        }
    });
    let discord = FakeApi::start().await;
    let app = TestApp::spawn(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "discord"
channel = "discord"
agent = "assistant"
public_key = "{DISCORD_PUBLIC_KEY}"
command = "ask"
bot_token_env = "TEST_DISCORD_TOKEN"
api_base_url = "{}"
gateway = true
gateway_url = "{url}"
"#,
            discord.base_url
        ),
        ..TestConfig::default()
    })
    .await;
    let (stop, shutdown) = microclaw::roles::Shutdown::new();
    let role = tokio::spawn(microclaw::discord_gateway::run(
        app.deployment.clone(),
        shutdown,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while openings.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnect: {:?}",
            openings.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resume = openings.lock().unwrap()[1].clone();
    assert_eq!(resume["op"], 6, "resumed, not identified again");
    assert_eq!(resume["d"]["session_id"], "zombie-1");
    assert_eq!(resume["d"]["seq"], 7);
    stop.trigger();
    role.await.unwrap().unwrap();
    app.stop().await;
}
