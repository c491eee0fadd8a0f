//! The webhooks a load run sends, correctly signed, and the two ways of sending
//! them: open loop (each at its scheduled instant, whatever came before) and
//! closed loop (each client sends its next one when the last was answered).
//!
//! Message `k` of a run goes to session `k % sessions` with sequence number
//! `k / sessions + 1`, so sessions take turns and each sees 1, 2, 3, …; session
//! `i` talks on channel `channels[i % channels.len()]`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use microclaw::channels::standard_webhooks::SigningKey;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use crate::fakes::Token;

/// The channels a load run can send on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Custom,
    Slack,
}

/// Where and how webhooks are sent.
pub struct Sender {
    pub http: reqwest::Client,
    pub receiver_url: String,
    pub custom_key: SigningKey,
    pub slack_signing_secret: String,
    pub channels: Vec<Channel>,
    pub sessions: u32,
    /// The run's start (seconds since the epoch). Platform message ids carry
    /// it, so they differ between runs (a run may start on a copy of an
    /// earlier run's database, which must not take its messages for duplicates).
    pub run_epoch: i64,
}

/// What became of one webhook.
#[derive(Debug, Clone)]
pub struct Sent {
    pub token: Token,
    /// When it was due: open-loop latency counts from here, not from when the
    /// request actually went out.
    pub scheduled: Instant,
    pub answered: Instant,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, with the receiver's `status` (`accepted`, `duplicate`, `ignored`).
    Acknowledged(String),
    Rejected(u16),
    /// No HTTP answer (connection refused or reset, timeout).
    Failed,
}

impl Sender {
    /// The token of message `k` of the run.
    pub fn token(&self, k: u64) -> Token {
        let sessions = u64::from(self.sessions);
        Token {
            session: (k % sessions) as u32,
            seq: (k / sessions + 1) as u32,
        }
    }

    fn channel_of(&self, token: Token) -> Channel {
        self.channels[token.session as usize % self.channels.len()]
    }

    /// The platform's id of the message, as the receiver records it.
    pub fn platform_message_id(&self, token: Token) -> String {
        match self.channel_of(token) {
            Channel::Custom => format!("{}-{token}", self.run_epoch),
            Channel::Slack => format!("D{}:{}", token.session, self.slack_ts(token)),
        }
    }

    fn slack_ts(&self, token: Token) -> String {
        format!("{}.{:06}", self.run_epoch, token.seq)
    }

    fn text(token: Token) -> String {
        format!("{token} hello, what is on my calendar tomorrow?")
    }

    /// The signed webhook carrying `token`.
    fn webhook(&self, token: Token) -> Webhook {
        let now = chrono::Utc::now().timestamp();
        match self.channel_of(token) {
            Channel::Custom => {
                let body = json!({
                    "type": "message.created",
                    "timestamp": chrono::Utc::now(),
                    "data": {
                        "message_id": self.platform_message_id(token),
                        "conversation_id": format!("dm-u{}", token.session),
                        "conversation_type": "direct",
                        "sender": {"id": format!("u{}", token.session), "display_name": "Load"},
                        "text": Self::text(token),
                        "attachments": [],
                    }
                })
                .to_string();
                let webhook_id = format!("wh-{}-{token}", self.run_epoch);
                let signature = self.custom_key.sign(&webhook_id, now, body.as_bytes());
                Webhook {
                    path: "/hooks/custom",
                    headers: vec![
                        ("webhook-id", webhook_id),
                        ("webhook-timestamp", now.to_string()),
                        ("webhook-signature", signature),
                    ],
                    body,
                }
            }
            Channel::Slack => {
                let body = json!({
                    "type": "event_callback",
                    "team_id": "T0LOAD",
                    "api_app_id": "A0LOAD",
                    "event_id": format!("Ev{}{token}", self.run_epoch),
                    "event_time": now,
                    "authorizations": [{"user_id": "UBOT"}],
                    "event": {
                        "type": "message",
                        "channel_type": "im",
                        "channel": format!("D{}", token.session),
                        "user": format!("U{}", token.session),
                        "text": Self::text(token),
                        "ts": self.slack_ts(token),
                    }
                })
                .to_string();
                let timestamp = now.to_string();
                let signature = microclaw::channels::slack::signature(
                    &self.slack_signing_secret,
                    &timestamp,
                    body.as_bytes(),
                );
                Webhook {
                    path: "/hooks/slack",
                    headers: vec![
                        ("X-Slack-Request-Timestamp", timestamp),
                        ("X-Slack-Signature", signature),
                    ],
                    body,
                }
            }
        }
    }

    async fn send(&self, token: Token, scheduled: Instant) -> Sent {
        let webhook = self.webhook(token);
        let mut request = self
            .http
            .post(format!("{}{}", self.receiver_url, webhook.path))
            .header("content-type", "application/json");
        for (name, value) in webhook.headers {
            request = request.header(name, value);
        }
        let outcome = match request.body(webhook.body).send().await {
            Ok(response) if response.status().is_success() => {
                let answer: Answer = response.json().await.unwrap_or_default();
                Outcome::Acknowledged(answer.status)
            }
            Ok(response) => Outcome::Rejected(response.status().as_u16()),
            Err(_) => Outcome::Failed,
        };
        Sent {
            token,
            scheduled,
            answered: Instant::now(),
            outcome,
        }
    }

    /// Sends the webhook carrying `token` on `connection` (opened when there is
    /// none, dropped after an error): a closed-loop client's keep-alive
    /// connection, written and read as plain HTTP/1.1.
    async fn send_on(&self, connection: &mut Option<Connection>, token: Token) -> Sent {
        let scheduled = Instant::now();
        let webhook = self.webhook(token);
        let outcome = match self.exchange(connection, &webhook).await {
            Ok((status, _)) if !(200..300).contains(&status) => Outcome::Rejected(status),
            Ok((_, body)) => Outcome::Acknowledged(
                serde_json::from_slice::<Answer>(&body)
                    .unwrap_or_default()
                    .status,
            ),
            Err(_) => {
                *connection = None;
                Outcome::Failed
            }
        };
        Sent {
            token,
            scheduled,
            answered: Instant::now(),
            outcome,
        }
    }

    /// One request and its response's status and body.
    async fn exchange(
        &self,
        connection: &mut Option<Connection>,
        webhook: &Webhook,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let connection = match connection {
            Some(connection) => connection,
            None => connection.insert(Connection::open(&self.receiver_url).await?),
        };
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            webhook.path,
            connection.host,
            webhook.body.len()
        );
        for (name, value) in &webhook.headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.push_str(&webhook.body);
        connection.stream.write_all(request.as_bytes()).await?;
        connection.read_response().await
    }
}

/// A signed webhook: where it goes, its signature headers, its body.
struct Webhook {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// What of the receiver's answer a run records.
#[derive(Default, serde::Deserialize)]
struct Answer {
    #[serde(default)]
    status: String,
}

/// A closed-loop client's HTTP/1.1 keep-alive connection to the receiver.
/// Cheaper per request than a pooled client, so the load generator, which
/// shares the machine's two cores with what it measures, takes less of them.
struct Connection {
    stream: tokio::net::TcpStream,
    host: String,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(base_url: &str) -> std::io::Result<Self> {
        let host = base_url
            .strip_prefix("http://")
            .unwrap_or(base_url)
            .trim_end_matches('/')
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host,
            buffer: Vec::with_capacity(1024),
        })
    }

    /// Reads one response with a `content-length`: its status and body.
    async fn read_response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).map_err(|_| invalid("head"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("status line"))?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| invalid("content-length"))?;
        while self.buffer.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Ok((status, body))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

/// Sends `messages` webhooks at `rate` a second, each launched at its scheduled
/// instant in a task of its own; returns every outcome.
pub async fn open_loop(sender: Arc<Sender>, rate: f64, messages: u64) -> Vec<Sent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(50);
    for k in 0..messages {
        let scheduled = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let (sender, tx) = (sender.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = sender.send(sender.token(k), scheduled).await;
            let _ = tx.send(sent);
        });
    }
    drop(tx);
    let mut sent = Vec::with_capacity(messages as usize);
    while let Some(one) = rx.recv().await {
        sent.push(one);
    }
    sent
}

/// `clients` concurrent clients, each sending its next webhook as soon as the
/// previous one was answered, until `duration` has passed, each on a
/// keep-alive connection of its own. The connections are opened one after the
/// other before the clock starts: opened all at once, a few of them waited
/// about a second to be accepted, which is the listen queue, not ingest.
pub async fn closed_loop(sender: Arc<Sender>, clients: usize, duration: Duration) -> Vec<Sent> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Connection::open(&sender.receiver_url).await.ok());
    }
    let next = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let (sender, next) = (sender.clone(), next.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while Instant::now() < end {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    sent.push(sender.send_on(&mut connection, sender.token(k)).await);
                }
                sent
            })
        })
        .collect();
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.expect("a client task panicked"));
    }
    sent
}
