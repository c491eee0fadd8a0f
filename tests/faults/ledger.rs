//! The traffic a scenario sends and the obligation ledger it is judged by.
//!
//! Each of `sessions` people writes in a direct conversation of their own,
//! one message after another like a person does: message `m<s>x<q>` is sent
//! (signed, through the custom channel) and resent as a platform would until
//! the receiver acknowledges it, and only then does message `q + 1` follow.
//!
//! The ledger, at the end: every acknowledged message has exactly one reply
//! (or is visible in the admin queue as a dead delivery or a failed turn), no
//! reply answers a message that was never acknowledged, each conversation's
//! replies arrived in the order of its messages, and every reply says what the
//! model said about exactly the messages it claims to answer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use microclaw::channels::standard_webhooks::SigningKey;
use serde_json::json;

use crate::{
    cluster::{APOLOGY, CUSTOM_SECRET},
    fakes::Arrival,
};

/// What became of one message.
#[derive(Debug, Clone)]
pub struct Sent {
    pub session: u32,
    pub seq: u32,
    pub acknowledged: bool,
}

/// An interval during which nothing may be acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub from: Instant,
    pub to: Option<Instant>,
}

#[derive(Default)]
struct Log {
    sent: BTreeMap<String, Sent>,
    /// 2xx answers to requests sent and answered inside an outage.
    acknowledged_in_outage: u64,
    /// 503 answers to requests sent inside an outage.
    unavailable_in_outage: u64,
    outages: Vec<Outage>,
}

/// Sends the suite's webhooks and remembers what was acknowledged.
#[derive(Clone)]
pub struct Traffic {
    http: reqwest::Client,
    receiver_url: String,
    key: Arc<SigningKey>,
    log: Arc<Mutex<Log>>,
}

pub fn message_id(session: u32, seq: u32) -> String {
    format!("m{session}x{seq}")
}

fn conversation(session: u32) -> String {
    format!("dm-{session}")
}

impl Traffic {
    pub fn new(receiver_url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            receiver_url: receiver_url.to_owned(),
            key: Arc::new(SigningKey::parse(CUSTOM_SECRET).unwrap()),
            log: Arc::default(),
        }
    }

    /// Marks the start of an outage (the database is down): from now until
    /// [`Traffic::outage_over`], no request may be acknowledged.
    pub fn outage_begins(&self) {
        self.log.lock().unwrap().outages.push(Outage {
            from: Instant::now(),
            to: None,
        });
    }

    pub fn outage_over(&self) {
        if let Some(outage) = self.log.lock().unwrap().outages.last_mut() {
            outage.to = Some(Instant::now());
        }
    }

    fn in_outage(&self, sent: Instant, answered: Instant) -> bool {
        self.log
            .lock()
            .unwrap()
            .outages
            .iter()
            .any(|o| sent >= o.from && o.to.is_none_or(|to| answered <= to))
    }

    /// One signed POST of message `id`; the receiver's status, or None when no
    /// HTTP answer came.
    pub async fn post(&self, session: u32, seq: u32, text: &str) -> Option<u16> {
        let id = message_id(session, seq);
        let body = json!({
            "type": "message.created",
            "timestamp": chrono::Utc::now(),
            "data": {
                "message_id": id,
                "conversation_id": conversation(session),
                "conversation_type": "direct",
                "sender": {"id": format!("u{session}"), "display_name": "Faults"},
                "text": text,
                "attachments": [],
            }
        })
        .to_string();
        let now = chrono::Utc::now().timestamp();
        let webhook_id = format!("wh-{id}");
        let signature = self.key.sign(&webhook_id, now, body.as_bytes());
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{}/hooks/custom", self.receiver_url))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        if self.in_outage(started, Instant::now()) {
            let mut log = self.log.lock().unwrap();
            match answer {
                Some(200..300) => log.acknowledged_in_outage += 1,
                Some(503) => log.unavailable_in_outage += 1,
                _ => {}
            }
        }
        answer
    }

    /// Sends message `seq` of `session` until it is acknowledged, resending
    /// with a growing pause like a platform, for at most `patience`.
    pub async fn deliver(&self, session: u32, seq: u32, text: &str, patience: Duration) -> bool {
        let id = message_id(session, seq);
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        let acknowledged = loop {
            if self
                .post(session, seq, text)
                .await
                .is_some_and(|s| (200..300).contains(&s))
            {
                break true;
            }
            if started.elapsed() > patience {
                break false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        };
        let mut log = self.log.lock().unwrap();
        let entry = log.sent.entry(id).or_insert_with(|| Sent {
            session,
            seq,
            acknowledged: false,
        });
        entry.acknowledged |= acknowledged;
        acknowledged
    }

    /// `sessions` people each send a message every `sessions / rate` seconds for
    /// `duration`; returns when the last one was acknowledged. `text` gives a
    /// message's text from its id.
    pub async fn run(
        &self,
        sessions: u32,
        rate: f64,
        duration: Duration,
        text: fn(&str) -> String,
    ) {
        let every = Duration::from_secs_f64(f64::from(sessions) / rate);
        let until = Instant::now() + duration;
        let mut people = tokio::task::JoinSet::new();
        for session in 0..sessions {
            let traffic = self.clone();
            // Spread the people over one interval.
            let offset = every.mul_f64(f64::from(session) / f64::from(sessions));
            people.spawn(async move {
                tokio::time::sleep(offset).await;
                let mut next = Instant::now();
                let mut seq = 1;
                while Instant::now() < until {
                    let id = message_id(session, seq);
                    traffic
                        .deliver(session, seq, &text(&id), Duration::from_secs(90))
                        .await;
                    seq += 1;
                    next += every;
                    tokio::time::sleep_until(next.into()).await;
                }
            });
        }
        while people.join_next().await.is_some() {}
    }

    /// Every message sent so far, by id.
    pub fn sent(&self) -> BTreeMap<String, Sent> {
        self.log.lock().unwrap().sent.clone()
    }

    pub fn unavailable_in_outage(&self) -> u64 {
        self.log.lock().unwrap().unavailable_in_outage
    }

    pub fn acknowledged_in_outage(&self) -> u64 {
        self.log.lock().unwrap().acknowledged_in_outage
    }
}

/// What the admin queue shows as explicitly failed, by message id.
#[derive(Debug, Default, Clone)]
pub struct Failures {
    /// Messages whose reply is a dead delivery.
    pub dead: BTreeSet<String>,
    /// Messages whose reply was dead until an operator retried it. A dead reply
    /// no longer holds back the later replies of its conversation (see
    /// `worker::delivery`), so a retried one arrives after them by design: its
    /// order is judged only against the other retried replies.
    pub retried: BTreeSet<String>,
}

/// The ledger's verdict on one scenario.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub messages: usize,
    pub acknowledged: usize,
    /// Acknowledged messages with exactly one reply.
    pub answered: usize,
    /// Of those, answered with the apology (a failed turn).
    pub apologies: usize,
    /// Acknowledged messages whose reply is dead, visible in the admin queue.
    pub dead: usize,
    /// Messages answered by more than one delivery.
    pub duplicates: usize,
    /// Acknowledged messages with neither a reply nor a visible failure.
    pub lost: usize,
    /// Replies that arrived before a reply to an earlier message of their conversation.
    pub order_violations: usize,
    /// Replies whose text is not what the model said about the messages they answer.
    pub content_violations: usize,
    /// Replies to messages nobody sent.
    pub orphans: usize,
    /// The same delivery received again (same `webhook-id`: a platform dedups it).
    pub resent: usize,
    /// 2xx answers given while the database was down.
    pub acknowledged_in_outage: u64,
}

impl Verdict {
    /// Whether the ledger balances: nothing lost, nothing twice, in order, intact.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        for (count, what) in [
            (self.lost, "lost"),
            (self.duplicates, "answered twice"),
            (self.order_violations, "out of order"),
            (self.content_violations, "with altered content"),
            (self.orphans, "replies to messages nobody sent"),
        ] {
            if count > 0 {
                violations.push(format!("{count} {what}"));
            }
        }
        if self.acknowledged_in_outage > 0 {
            violations.push(format!(
                "{} acknowledged while the database was down",
                self.acknowledged_in_outage
            ));
        }
        if self.acknowledged == 0 {
            violations.push("nothing was acknowledged".into());
        }
        violations
    }
}

/// Whether the ledger is complete: every acknowledged message is answered or
/// visibly failed.
pub fn settled(sent: &BTreeMap<String, Sent>, arrivals: &[Arrival], failures: &Failures) -> bool {
    let answered: BTreeSet<&str> = arrivals
        .iter()
        .flat_map(|a| a.in_reply_to.iter().map(String::as_str))
        .collect();
    sent.iter()
        .filter(|(_, s)| s.acknowledged)
        .all(|(id, _)| answered.contains(id.as_str()) || failures.dead.contains(id))
}

/// Balances the ledger.
pub fn judge(traffic: &Traffic, arrivals: &[Arrival], failures: &Failures) -> Verdict {
    let sent = traffic.sent();
    let mut verdict = Verdict {
        messages: sent.len(),
        acknowledged: sent.values().filter(|s| s.acknowledged).count(),
        acknowledged_in_outage: traffic.acknowledged_in_outage(),
        ..Verdict::default()
    };
    // Each delivery once (first arrival), in arrival order; a resend of the same
    // delivery id is counted and set aside.
    let mut seen = BTreeSet::new();
    let mut deliveries: Vec<&Arrival> = Vec::new();
    for arrival in arrivals {
        if seen.insert((arrival.delivery_id.clone(), arrival.part)) {
            deliveries.push(arrival);
        } else {
            verdict.resent += 1;
        }
    }
    let mut replies_to: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut latest_seq: HashMap<(&str, bool), u32> = HashMap::new();
    for arrival in &deliveries {
        for id in &arrival.in_reply_to {
            replies_to
                .entry(id.as_str())
                .or_default()
                .insert(arrival.delivery_id.as_str());
        }
        if arrival.in_reply_to.iter().any(|id| !sent.contains_key(id)) {
            verdict.orphans += 1;
        }
        // Content: the model's answer about exactly these messages, or the apology.
        let expected = format!("ok {}", arrival.in_reply_to.join(" "));
        if arrival.text != expected && arrival.text != APOLOGY {
            verdict.content_violations += 1;
        }
        // Order: a reply must not answer only messages older than one already
        // answered in its conversation (among the operator's retries, for a
        // retried reply).
        let newest = arrival
            .in_reply_to
            .iter()
            .filter_map(|id| sent.get(id).map(|s| s.seq))
            .max()
            .unwrap_or(0);
        let retried = !arrival.in_reply_to.is_empty()
            && arrival
                .in_reply_to
                .iter()
                .all(|id| failures.retried.contains(id));
        let latest = latest_seq
            .entry((arrival.conversation.as_str(), retried))
            .or_insert(0);
        if newest < *latest {
            verdict.order_violations += 1;
        }
        *latest = (*latest).max(newest);
    }
    for id in sent
        .iter()
        .filter(|(_, s)| s.acknowledged)
        .map(|(id, _)| id)
    {
        match replies_to.get(id.as_str()).map(BTreeSet::len) {
            Some(1) => {
                verdict.answered += 1;
                let apology = deliveries
                    .iter()
                    .any(|a| a.text == APOLOGY && a.in_reply_to.contains(id));
                verdict.apologies += usize::from(apology);
            }
            Some(_) => verdict.duplicates += 1,
            None if failures.dead.contains(id) => verdict.dead += 1,
            None => verdict.lost += 1,
        }
    }
    verdict
}
