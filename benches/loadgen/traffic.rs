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
use tokio::sync::mpsc;

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
    /// Slack message timestamps start here (seconds), so they differ between runs.
    pub slack_epoch: i64,
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
            Channel::Custom => token.to_string(),
            Channel::Slack => format!("D{}:{}", token.session, self.slack_ts(token)),
        }
    }

    fn slack_ts(&self, token: Token) -> String {
        format!("{}.{:06}", self.slack_epoch, token.seq)
    }

    fn text(token: Token) -> String {
        format!("{token} hello, what is on my calendar tomorrow?")
    }

    /// The signed webhook carrying `token`.
    fn request(&self, token: Token) -> reqwest::RequestBuilder {
        let now = chrono::Utc::now().timestamp();
        match self.channel_of(token) {
            Channel::Custom => {
                let body = json!({
                    "type": "message.created",
                    "timestamp": chrono::Utc::now(),
                    "data": {
                        "message_id": token.to_string(),
                        "conversation_id": format!("dm-u{}", token.session),
                        "conversation_type": "direct",
                        "sender": {"id": format!("u{}", token.session), "display_name": "Load"},
                        "text": Self::text(token),
                        "attachments": [],
                    }
                })
                .to_string();
                let webhook_id = format!("wh-{token}");
                let signature = self.custom_key.sign(&webhook_id, now, body.as_bytes());
                self.http
                    .post(format!("{}/hooks/custom", self.receiver_url))
                    .header("content-type", "application/json")
                    .header("webhook-id", webhook_id)
                    .header("webhook-timestamp", now.to_string())
                    .header("webhook-signature", signature)
                    .body(body)
            }
            Channel::Slack => {
                let body = json!({
                    "type": "event_callback",
                    "team_id": "T0LOAD",
                    "api_app_id": "A0LOAD",
                    "event_id": format!("Ev{token}"),
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
                self.http
                    .post(format!("{}/hooks/slack", self.receiver_url))
                    .header("content-type", "application/json")
                    .header("X-Slack-Request-Timestamp", timestamp)
                    .header("X-Slack-Signature", signature)
                    .body(body)
            }
        }
    }

    async fn send(&self, token: Token, scheduled: Instant) -> Sent {
        let outcome = match self.request(token).send().await {
            Ok(response) if response.status().is_success() => {
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                Outcome::Acknowledged(answer["status"].as_str().unwrap_or("").to_owned())
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
/// previous one was answered, until `duration` has passed.
pub async fn closed_loop(sender: Arc<Sender>, clients: usize, duration: Duration) -> Vec<Sent> {
    let next = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (sender, next) = (sender.clone(), next.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while Instant::now() < end {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    sent.push(sender.send(sender.token(k), Instant::now()).await);
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
