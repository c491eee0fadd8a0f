//! The Discord Gateway: ordinary messages (direct messages, and mentions of the
//! bot in servers) exist only on Discord's websocket, not as webhooks. The
//! `discord-gateway` role (also run by `all` and `dev`) holds one connection per
//! Discord connector with `gateway = true` and feeds each message into the same
//! durable path as the receiver: `receiver::accept`, with the same dedup on the
//! message id, so a message is acknowledged to nobody but recorded exactly once.
//!
//! The session: HELLO gives the heartbeat interval; we IDENTIFY (token, intents
//! for guild and direct messages and their content) or, after a disconnect,
//! RESUME with the session id and the last sequence number; heartbeats carry
//! that number, and a heartbeat that was not acknowledged by the next one means
//! a dead ("zombie") connection, which is dropped and resumed. Discord's
//! RECONNECT and resumable INVALID_SESSION resume; the rest identify afresh.
//! Reconnects wait with exponential backoff and jitter; close codes that mean
//! the configuration is wrong (bad token, bad intents) stop the connector with
//! an error instead of hammering Discord.
//!
//! No message is lost to a database outage: the sequence number only moves past
//! an event once it was recorded. When recording keeps failing the connection is
//! dropped unadvanced and resumed, and Discord replays the events after the last
//! recorded one (the dedup makes replays harmless). Messages sent while no
//! gateway was connected for longer than Discord keeps a session are not
//! replayed by Discord; run the role continuously (two replicas are safe).

use std::{sync::Arc, time::Duration};

use backon::BackoffBuilder;
use futures::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

use crate::{
    channels::{Attachment, InboundMessage},
    config::ChannelKind,
    deployment::Deployment,
    roles::Shutdown,
};

pub const DEFAULT_GATEWAY_URL: &str = "wss://gateway.discord.gg";
/// GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT (privileged: enable it in
/// the Developer Portal).
pub const INTENTS: u64 = (1 << 9) | (1 << 12) | (1 << 15);
/// Close codes after which reconnecting cannot help.
const FATAL_CLOSE_CODES: [u16; 6] = [4004, 4010, 4011, 4012, 4013, 4014];
/// How long recording one message may keep failing before the connection is
/// dropped, unadvanced, to be resumed (and the message replayed) later.
const RECORD_PATIENCE: Duration = Duration::from_secs(10);

/// Runs a gateway session for every Discord connector with `gateway = true`
/// until shutdown.
pub async fn run(deployment: Arc<Deployment>, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut sessions = tokio::task::JoinSet::new();
    for connector in deployment.connectors.values() {
        let settings = &connector.settings;
        if settings.config.channel != ChannelKind::Discord || !settings.config.gateway {
            continue;
        }
        let Some(token) = settings.bot_token.clone() else {
            anyhow::bail!(
                "connector `{}` sets gateway = true but has no bot token",
                settings.config.id
            );
        };
        let session = Session {
            deployment: deployment.clone(),
            connector_id: settings.config.id.clone(),
            url: settings
                .config
                .gateway_url
                .clone()
                .unwrap_or_else(|| DEFAULT_GATEWAY_URL.to_owned()),
            token,
            resume: None,
            bot_user_id: None,
            established: false,
        };
        sessions.spawn(session.run(shutdown.clone()));
    }
    if sessions.is_empty() {
        return Ok(());
    }
    tracing::info!(connections = sessions.len(), "discord gateway running");
    while let Some(ended) = sessions.join_next().await {
        ended??;
    }
    Ok(())
}

/// What a session needs to RESUME.
#[derive(Debug, Clone)]
struct Resume {
    session_id: String,
    url: String,
    seq: u64,
}

struct Session {
    deployment: Arc<Deployment>,
    connector_id: String,
    url: String,
    token: SecretString,
    resume: Option<Resume>,
    bot_user_id: Option<String>,
    /// Whether the current connection reached READY or RESUMED.
    established: bool,
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    /// Reconnect and resume where it stopped.
    Resume,
    /// Reconnect with a new session.
    Identify,
    /// Reconnecting cannot help (bad token, bad intents).
    Fatal(String),
}

#[derive(Debug, Deserialize)]
struct Payload {
    op: u8,
    #[serde(default)]
    d: Value,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default)]
    t: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GatewayMessage {
    id: String,
    channel_id: String,
    #[serde(default)]
    guild_id: Option<String>,
    author: Author,
    #[serde(default)]
    content: String,
    #[serde(default)]
    mentions: Vec<Author>,
    #[serde(default)]
    attachments: Vec<GatewayAttachment>,
    #[serde(default)]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize)]
struct Author {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    global_name: Option<String>,
    #[serde(default)]
    bot: bool,
}

#[derive(Debug, Deserialize)]
struct GatewayAttachment {
    url: String,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

/// A gateway message as MicroClaw's inbound message, if the agent should answer
/// it: not from a bot (itself included), and in a server only when it mentions
/// the bot (the mention is taken out of the text).
fn normalize(message: GatewayMessage, bot_user_id: Option<&str>) -> Option<InboundMessage> {
    if message.author.bot || Some(message.author.id.as_str()) == bot_user_id {
        return None;
    }
    let mut text = message.content;
    if message.guild_id.is_some() {
        let bot = bot_user_id?;
        if !message.mentions.iter().any(|m| m.id == bot) {
            return None;
        }
        for mention in [format!("<@{bot}>"), format!("<@!{bot}>")] {
            text = text.replace(&mention, "");
        }
        text = text.trim().to_owned();
    }
    let attachments: Vec<Attachment> = message
        .attachments
        .into_iter()
        .map(|a| Attachment {
            url: Some(a.url),
            content_type: a.content_type,
            name: a.filename,
            size: a.size,
        })
        .collect();
    if text.trim().is_empty() && attachments.is_empty() {
        return None;
    }
    Some(InboundMessage {
        platform_message_id: message.id,
        sender_id: message.author.id,
        sender_name: message.author.global_name.or(message.author.username),
        conversation_id: message.channel_id,
        thread_id: None,
        is_group: message.guild_id.is_some(),
        text,
        attachments,
        sent_at: message.timestamp,
    })
}

fn reconnect_waits() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Session {
    async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut waits = reconnect_waits();
        loop {
            let ended = tokio::select! {
                ended = self.connect() => ended,
                () = shutdown.clone().wait() => return Ok(()),
            };
            // A connection that got as far as READY or RESUMED resets the backoff.
            if std::mem::take(&mut self.established) {
                waits = reconnect_waits();
            }
            let wait = match ended {
                Ok(Ended::Fatal(reason)) => {
                    tracing::error!(connector = %self.connector_id, %reason, "discord gateway stopped: reconnecting cannot help");
                    anyhow::bail!(
                        "discord gateway of `{}` stopped: {reason}",
                        self.connector_id
                    );
                }
                Ok(Ended::Resume) => waits.next().unwrap_or_default(),
                Ok(Ended::Identify) => {
                    self.resume = None;
                    // Discord asks for a random 1-5 s before identifying again.
                    Duration::from_millis(1000 + fastrand::u64(..4000))
                }
                Err(e) => {
                    let wait = waits.next().unwrap_or(Duration::from_secs(60));
                    tracing::warn!(connector = %self.connector_id, error = %e, wait_ms = wait.as_millis() as u64, "discord gateway disconnected; reconnecting");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.clone().wait() => return Ok(()),
            }
        }
    }

    /// One websocket connection, from HELLO to its end.
    async fn connect(&mut self) -> anyhow::Result<Ended> {
        let base = self
            .resume
            .as_ref()
            .map_or(self.url.as_str(), |r| r.url.as_str());
        let url = format!("{}/?v=10&encoding=json", base.trim_end_matches('/'));
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let (mut sink, mut stream) = socket.split();
        let hello = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no HELLO within 30s"))?
            .ok_or_else(|| anyhow::anyhow!("closed before HELLO"))??;
        let hello: Payload = match hello {
            Message::Text(text) => serde_json::from_str(&text)?,
            other => anyhow::bail!("expected HELLO, got {other:?}"),
        };
        let interval = hello.d["heartbeat_interval"]
            .as_u64()
            .filter(|ms| *ms > 0 && hello.op == 10)
            .map(Duration::from_millis)
            .ok_or_else(|| anyhow::anyhow!("expected HELLO with a heartbeat_interval"))?;
        let token = self.token.expose_secret();
        let opening = match &self.resume {
            Some(resume) => json!({"op": 6, "d": {
                "token": token, "session_id": resume.session_id, "seq": resume.seq,
            }}),
            None => json!({"op": 2, "d": {
                "token": token,
                "intents": INTENTS,
                "properties": {"os": std::env::consts::OS, "browser": "microclaw", "device": "microclaw"},
            }}),
        };
        sink.send(Message::text(opening.to_string())).await?;

        // The first heartbeat after a random part of the interval, as Discord asks.
        let first = interval.mul_f64(fastrand::f64());
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
        let mut acknowledged = true;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if !acknowledged {
                        tracing::warn!(connector = %self.connector_id, "discord gateway: heartbeat not acknowledged; reconnecting");
                        return Ok(Ended::Resume);
                    }
                    acknowledged = false;
                    sink.send(Message::text(self.heartbeat())).await?;
                }
                frame = stream.next() => {
                    let Some(frame) = frame else { return Ok(Ended::Resume) };
                    match frame? {
                        Message::Text(text) => {
                            let payload: Payload = serde_json::from_str(&text)?;
                            match payload.op {
                                0 => {
                                    if let Some(ended) = self.dispatch(payload).await {
                                        return Ok(ended);
                                    }
                                }
                                1 => sink.send(Message::text(self.heartbeat())).await?,
                                7 => return Ok(Ended::Resume),
                                9 if payload.d.as_bool() == Some(true) => return Ok(Ended::Resume),
                                9 => return Ok(Ended::Identify),
                                11 => acknowledged = true,
                                _ => {}
                            }
                        }
                        Message::Close(frame) => return Ok(closed(frame)),
                        _ => {}
                    }
                }
            }
        }
    }

    fn heartbeat(&self) -> String {
        json!({"op": 1, "d": self.resume.as_ref().map(|r| r.seq)}).to_string()
    }

    /// Handles one dispatch; Some when the connection must end.
    async fn dispatch(&mut self, payload: Payload) -> Option<Ended> {
        match payload.t.as_deref() {
            Some("READY") => {
                self.bot_user_id = payload.d["user"]["id"].as_str().map(str::to_owned);
                self.resume = Some(Resume {
                    session_id: payload.d["session_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    url: payload.d["resume_gateway_url"]
                        .as_str()
                        .unwrap_or(&self.url)
                        .to_owned(),
                    seq: payload.s.unwrap_or(0),
                });
                self.established = true;
                tracing::info!(connector = %self.connector_id, "discord gateway ready");
            }
            Some("RESUMED") => {
                self.established = true;
                tracing::info!(connector = %self.connector_id, "discord gateway resumed");
            }
            Some("MESSAGE_CREATE") => {
                match serde_json::from_value::<GatewayMessage>(payload.d) {
                    Ok(message) => {
                        if let Some(message) = normalize(message, self.bot_user_id.as_deref())
                            && !self.record(&message).await
                        {
                            // Not recorded: leave the sequence number before it and
                            // resume later, so Discord sends it again.
                            return Some(Ended::Resume);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(connector = %self.connector_id, error = %e, "discord gateway: unreadable MESSAGE_CREATE skipped");
                    }
                }
            }
            _ => {}
        }
        if let (Some(resume), Some(seq)) = (&mut self.resume, payload.s) {
            resume.seq = resume.seq.max(seq);
        }
        None
    }

    /// Records a message through the receiver's path; false when the store kept
    /// failing for `RECORD_PATIENCE`.
    async fn record(&self, message: &InboundMessage) -> bool {
        let Some(connector) = self.deployment.connectors.get(&self.connector_id) else {
            return true;
        };
        let started = tokio::time::Instant::now();
        let mut waits = reconnect_waits();
        loop {
            let arrived = std::time::SystemTime::now();
            match crate::receiver::accept(
                &self.deployment,
                connector,
                &self.connector_id,
                message.clone(),
                arrived,
            )
            .await
            {
                Ok(_) => return true,
                Err(e) if started.elapsed() < RECORD_PATIENCE => {
                    tracing::warn!(connector = %self.connector_id, error = %e, "discord gateway: could not record a message; retrying");
                    let wait = waits.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                }
                Err(e) => {
                    tracing::error!(connector = %self.connector_id, error = %e, "discord gateway: could not record a message; reconnecting to have it replayed");
                    return false;
                }
            }
        }
    }
}

/// What a close frame from Discord means.
fn closed(frame: Option<CloseFrame>) -> Ended {
    let Some(frame) = frame else {
        return Ended::Resume;
    };
    let code = u16::from(frame.code);
    match code {
        code if FATAL_CLOSE_CODES.contains(&code) => {
            Ended::Fatal(format!("close code {code}: {}", frame.reason))
        }
        // Invalid sequence, session timed out: a new session.
        4007 | 4009 => Ended::Identify,
        _ => Ended::Resume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(guild: bool, content: &str, mentions: &[&str], bot: bool) -> GatewayMessage {
        serde_json::from_value(json!({
            "id": "m1",
            "channel_id": "c1",
            "guild_id": if guild { json!("g1") } else { Value::Null },
            "author": {"id": "u1", "username": "ada", "bot": bot},
            "content": content,
            "mentions": mentions.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn direct_messages_and_mentions_are_answered_bots_are_not() {
        let dm = normalize(message(false, "hello", &[], false), Some("bot")).unwrap();
        assert!(!dm.is_group);
        assert_eq!(dm.text, "hello");
        let mention = normalize(
            message(true, "<@bot> what's up", &["bot"], false),
            Some("bot"),
        );
        assert_eq!(mention.unwrap().text, "what's up");
        let nick = normalize(message(true, "hey <@!bot>", &["bot"], false), Some("bot"));
        assert_eq!(nick.unwrap().text, "hey");
        assert!(normalize(message(true, "chatter", &[], false), Some("bot")).is_none());
        assert!(normalize(message(false, "beep", &[], true), Some("bot")).is_none());
        assert!(normalize(message(true, "<@bot>", &["bot"], false), Some("bot")).is_none());
    }

    #[test]
    fn close_codes_decide_between_resume_identify_and_stop() {
        let frame = |code: u16| {
            Some(CloseFrame {
                code: code.into(),
                reason: "r".into(),
            })
        };
        assert!(matches!(closed(frame(4004)), Ended::Fatal(_)));
        assert!(matches!(closed(frame(4014)), Ended::Fatal(_)));
        assert!(matches!(closed(frame(4009)), Ended::Identify));
        assert!(matches!(closed(frame(4000)), Ended::Resume));
        assert!(matches!(closed(None), Ended::Resume));
    }
}
