//! `microclaw admin …`: the command-line client of the admin API (deliveries,
//! turns, queues, usage). It talks HTTP
//! to a running admin endpoint (URL and token from flags or environment), so it
//! works from an operator's machine against any deployment.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{BulkResponse, DeliveryPage, PREFIX};
use crate::store::{
    AdminOutcome, DeliveryDetail, DeliveryFilter, QueueStats, TurnSummary, UsageRow,
};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the admin API's server (without /admin/v1).
    #[arg(
        long,
        global = true,
        env = "MICROCLAW_ADMIN_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub url: String,
    /// An admin token (read, or operate to change anything).
    #[arg(
        long,
        global = true,
        env = "MICROCLAW_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The admin queue: deliveries, failed ones first of all.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Failed turns (the person got the apology): list, show, rerun, discard.
    Turns {
        #[command(subcommand)]
        command: TurnsCommand,
    },
    /// Depth, oldest waiting job's age, running and failed jobs per queue.
    Queues,
    /// Tokens and cost by day, agent and model (the last 30 days).
    Usage,
}

#[derive(Debug, Subcommand)]
pub enum TurnsCommand {
    /// Failed turns nobody acted on yet, newest first (--all-turns: every turn).
    List {
        #[arg(long)]
        agent: Option<String>,
        /// Every turn, completed ones and resolved failures included.
        #[arg(long)]
        all_turns: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One turn with its messages, tool calls and error.
    Show { id: Uuid },
    /// Answer a failed turn's messages again.
    Rerun { id: Uuid },
    /// Mark a failed turn discarded, with a reason.
    Discard {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// pending | delivered | dead | discarded
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub channel: Option<String>,
    #[arg(long)]
    pub connector: Option<String>,
    /// retryable | rate_limited | permanent | exhausted | earlier_part_failed
    #[arg(long)]
    pub error_class: Option<String>,
    /// Created at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl FilterArgs {
    fn filter(&self) -> DeliveryFilter {
        DeliveryFilter {
            status: self.status.clone(),
            channel: self.channel.clone(),
            connector: self.connector.clone(),
            error_class: self.error_class.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// The `next_before` of the previous page.
        #[arg(long)]
        before: Option<Uuid>,
    },
    /// One delivery with its text and every attempt.
    Show { id: Uuid },
    /// Give a dead delivery one new attempt, or every dead one matching the filters.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<Uuid>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Discard a dead delivery (or every dead one matching the filters), with a reason.
    Discard {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<Uuid>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        reason: String,
    },
}

/// Runs one command; what to print.
pub async fn run(args: &ClientArgs, command: AdminCommand) -> anyhow::Result<String> {
    let client = Client { args };
    match command {
        AdminCommand::Queues => {
            let body = client.call(Method::GET, "/queues", None).await?;
            if args.json {
                return Ok(body.to_string());
            }
            let queues: Vec<QueueStats> = serde_json::from_value(body)?;
            Ok(table(
                &[
                    "QUEUE", "WAITING", "DELAYED", "RUNNING", "FAILED", "DONE", "OLDEST",
                ],
                queues
                    .iter()
                    .map(|q| {
                        vec![
                            q.queue.clone(),
                            q.waiting.to_string(),
                            q.delayed.to_string(),
                            q.running.to_string(),
                            q.failed.to_string(),
                            q.done.to_string(),
                            q.oldest_waiting_secs
                                .map_or("-".into(), |s| format!("{s}s")),
                        ]
                    })
                    .collect(),
            ))
        }
        AdminCommand::Deliveries { command } => deliveries(&client, command).await,
        AdminCommand::Turns { command } => turns(&client, command).await,
        AdminCommand::Usage => {
            let body = client.call(Method::GET, "/usage", None).await?;
            if args.json {
                return Ok(body.to_string());
            }
            let rows: Vec<UsageRow> = serde_json::from_value(body)?;
            Ok(table(
                &[
                    "DAY", "AGENT", "MODEL", "CALLS", "INPUT", "OUTPUT", "COST USD",
                ],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.day.clone(),
                            r.agent.clone(),
                            r.model.clone(),
                            r.calls.to_string(),
                            r.input_tokens.to_string(),
                            r.output_tokens.to_string(),
                            format!("{:.4}", r.cost_usd),
                        ]
                    })
                    .collect(),
            ))
        }
    }
}

async fn turns(client: &Client<'_>, command: TurnsCommand) -> anyhow::Result<String> {
    let json = client.args.json;
    let body = match &command {
        TurnsCommand::List {
            agent,
            all_turns,
            limit,
        } => {
            let mut path = format!("/turns?limit={limit}");
            if !all_turns {
                path.push_str("&status=failed&unresolved=true");
            }
            if let Some(agent) = agent {
                path.push_str(&format!("&agent={}", urlencode(agent)));
            }
            client.call(Method::GET, &path, None).await?
        }
        TurnsCommand::Show { id } => {
            client
                .call(Method::GET, &format!("/turns/{id}"), None)
                .await?
        }
        TurnsCommand::Rerun { id } => {
            client
                .call(Method::POST, &format!("/turns/{id}/rerun"), None)
                .await?
        }
        TurnsCommand::Discard { id, reason } => {
            client
                .call(
                    Method::POST,
                    &format!("/turns/{id}/discard"),
                    Some(json!({ "reason": reason })),
                )
                .await?
        }
    };
    if json {
        return Ok(body.to_string());
    }
    let turn_row = |t: &TurnSummary| {
        vec![
            t.id.to_string(),
            t.agent.clone(),
            t.status.clone(),
            t.resolution.clone().unwrap_or_else(|| "-".into()),
            t.model.clone().unwrap_or_else(|| "-".into()),
            t.events.to_string(),
            t.error.clone().unwrap_or_default(),
        ]
    };
    const HEADERS: &[&str] = &[
        "ID",
        "AGENT",
        "STATUS",
        "RESOLUTION",
        "MODEL",
        "MESSAGES",
        "ERROR",
    ];
    Ok(match command {
        TurnsCommand::List { .. } => {
            let page: super::TurnPage = serde_json::from_value(body)?;
            table(HEADERS, page.items.iter().map(turn_row).collect())
        }
        TurnsCommand::Show { .. } => {
            let detail: super::TurnDetail = serde_json::from_value(body)?;
            let mut out = table(HEADERS, vec![turn_row(&detail.turn)]);
            out.push('\n');
            out.push_str(&table(
                &["ROLE", "MODEL", "CONTENT"],
                detail
                    .messages
                    .iter()
                    .map(|m| {
                        vec![
                            m.role.clone(),
                            m.model.clone().unwrap_or_else(|| "-".into()),
                            match &m.parts {
                                Some(parts) => parts.0.to_string(),
                                None => m.content.clone(),
                            },
                        ]
                    })
                    .collect(),
            ));
            out
        }
        TurnsCommand::Rerun { id } | TurnsCommand::Discard { id, .. } => {
            let outcome: AdminOutcome = serde_json::from_value(body)?;
            format!("{id}: {}", describe(&outcome))
        }
    })
}

fn describe(outcome: &AdminOutcome) -> String {
    match outcome {
        AdminOutcome::Done { ids } if ids.len() > 1 => format!("done ({} parts)", ids.len()),
        AdminOutcome::Done { .. } => "done".into(),
        AdminOutcome::Skipped { status } => format!("skipped: {status}"),
        AdminOutcome::NotFound => "not found".into(),
    }
}

async fn deliveries(client: &Client<'_>, command: DeliveriesCommand) -> anyhow::Result<String> {
    let json = client.args.json;
    match command {
        DeliveriesCommand::List {
            filter,
            limit,
            before,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            let filter = filter.filter();
            for (name, value) in [
                ("status", &filter.status),
                ("channel", &filter.channel),
                ("connector", &filter.connector),
                ("error_class", &filter.error_class),
            ] {
                if let Some(value) = value {
                    query.push((name, value.clone()));
                }
            }
            if let Some(since) = filter.since {
                query.push(("since", since.to_rfc3339()));
            }
            if let Some(until) = filter.until {
                query.push(("until", until.to_rfc3339()));
            }
            if let Some(before) = before {
                query.push(("before", before.to_string()));
            }
            let path = format!(
                "/deliveries?{}",
                query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            );
            let body = client.call(Method::GET, &path, None).await?;
            if json {
                return Ok(body.to_string());
            }
            let page: DeliveryPage = serde_json::from_value(body)?;
            let mut out = table(
                &[
                    "ID",
                    "STATUS",
                    "CHANNEL",
                    "CONNECTOR",
                    "PART",
                    "ATTEMPTS",
                    "ERROR",
                    "CREATED",
                ],
                page.items
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.status.clone(),
                            d.channel.clone(),
                            d.connector_id.clone(),
                            d.part.to_string(),
                            format!("{}/{}", d.attempts, d.max_attempts),
                            d.error_class.clone().unwrap_or_else(|| "-".into()),
                            d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    })
                    .collect(),
            );
            if let Some(next) = page.next_before {
                out.push_str(&format!("\nmore: --before {next}"));
            }
            Ok(out)
        }
        DeliveriesCommand::Show { id } => {
            let body = client
                .call(Method::GET, &format!("/deliveries/{id}"), None)
                .await?;
            if json {
                return Ok(body.to_string());
            }
            let d: DeliveryDetail = serde_json::from_value(body)?;
            let mut out = format!(
                "delivery {}\n  status:    {}{}\n  channel:   {} (connector {}), part {}\n  attempts:  {}/{}\n  trace:     {}\n  target:    {}\n  text:      {}\n",
                d.summary.id,
                d.summary.status,
                d.summary
                    .error_class
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default(),
                d.summary.channel,
                d.summary.connector_id,
                d.summary.part,
                d.summary.attempts,
                d.summary.max_attempts,
                d.trace_id,
                d.target,
                d.text
            );
            if let Some(reason) = &d.summary.discard_reason {
                out.push_str(&format!("  discarded: {reason}\n"));
            }
            out.push_str(&table(
                &["ATTEMPT", "STARTED", "OUTCOME", "STATUS", "ERROR"],
                d.history
                    .iter()
                    .map(|a| {
                        vec![
                            a.attempt.to_string(),
                            a.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            a.outcome.clone().unwrap_or_else(|| "running".into()),
                            a.status_code.map_or("-".into(), |c| c.to_string()),
                            a.error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect(),
            ));
            Ok(out)
        }
        DeliveriesCommand::Retry { id, all, filter } => {
            act(client, "retry", id, all, &filter, None).await
        }
        DeliveriesCommand::Discard {
            id,
            all,
            filter,
            reason,
        } => act(client, "discard", id, all, &filter, Some(reason)).await,
    }
}

/// A retry or discard of one delivery, or of every dead one matching `filter`.
async fn act(
    client: &Client<'_>,
    action: &str,
    id: Option<Uuid>,
    all: bool,
    filter: &FilterArgs,
    reason: Option<String>,
) -> anyhow::Result<String> {
    let json = client.args.json;
    let outcomes: Vec<(Uuid, AdminOutcome)> = match (id, all) {
        (Some(id), false) => {
            let body = client
                .call(
                    Method::POST,
                    &format!("/deliveries/{id}/{action}"),
                    reason.as_ref().map(|r| json!({ "reason": r })),
                )
                .await?;
            if json {
                return Ok(body.to_string());
            }
            vec![(id, serde_json::from_value(body)?)]
        }
        _ => {
            let body = client
                .call(
                    Method::POST,
                    &format!("/deliveries/{action}"),
                    Some(json!({ "filter": filter.filter(), "reason": reason })),
                )
                .await?;
            if json {
                return Ok(body.to_string());
            }
            let response: BulkResponse = serde_json::from_value(body)?;
            response
                .results
                .into_iter()
                .map(|r| (r.id, r.outcome))
                .collect()
        }
    };
    Ok(table(
        &["ID", "RESULT"],
        outcomes
            .into_iter()
            .map(|(id, outcome)| vec![id.to_string(), format!("{action} {}", describe(&outcome))])
            .collect(),
    ))
}

struct Client<'a> {
    args: &'a ClientArgs,
}

impl Client<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Some(token) = &self.args.token else {
            anyhow::bail!("an admin token is needed: --token or MICROCLAW_ADMIN_TOKEN");
        };
        let url = format!("{}{PREFIX}{path}", self.args.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {url}: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!(
                "{status}: {}",
                body["detail"]
                    .as_str()
                    .unwrap_or("the admin API refused the request")
            );
        }
        Ok(body)
    }
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    if rows.is_empty() {
        out.push("(none)".into());
    }
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}
