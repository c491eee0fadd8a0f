//! The turn job: answer a session's unanswered events, one turn at a time, in
//! arrival order, exactly once.
//!
//! A turn job first takes the session's lease (see `store::sessions` for the
//! protocol), reading its first turn's inputs in the same round trip. If
//! another job holds it, that holder is bound to answer this job's event too
//! (it only releases when nothing is left), so this job ends at once; if the
//! holder dies, the queue recovers the holder's own job, which waits for its
//! dead lease to expire and reruns. The holder loops: read unanswered events
//! (all of them in "collect" mode, one in "per_message" mode), call the model while
//! extending the lease, commit the turn fenced by the lease epoch, release or loop.
//! The commit itself releases the lease when nothing is left and no compaction
//! is due, which saves the release its own synchronous commit.
//!
//! When the model keeps failing the user still gets an answer: the configured
//! apology, committed like any reply, with the turn recorded as failed.

use std::{sync::Arc, time::Duration};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data};
use chrono::Utc;
use microclaw_jobs::{Job, TurnJob};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    channels::ReplyTarget,
    config::TurnMode,
    deployment::Deployment,
    identity::{self, Command},
    memory::{self, MemoryScope, compaction, context},
    providers::{
        ChatRequest, Message, Part, Role, StopReason, ToolCall,
        router::{ModelCall, Router},
    },
    store::{
        Committed, Lease, PendingEvent, PlannedDelivery, Release, SessionInfo, Store, StoreError,
        TurnCommit, TurnInputs, TurnRecord,
    },
    tools::{Toolbox, TurnScope},
};

/// What a turn job needs.
#[derive(Clone)]
pub struct TurnContext {
    pub deployment: Arc<Deployment>,
    /// Names this worker process in lease owners.
    pub worker_id: String,
    /// Where committed replies get their first delivery attempt here (Postgres).
    pub first_attempts: Option<Arc<super::first_attempt::FirstAttempts>>,
}

/// Events answered together at most, in collect mode.
const COLLECT_LIMIT: i64 = 100;

pub async fn run(
    job: TurnJob,
    context: Data<TurnContext>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    job.check_schema_version().map_err(AbortError::new)?;
    let span = tracing::info_span!("turn", trace_id = %job.trace_id, session_id = %job.session_id);
    crate::telemetry::continue_trace(&span, &job.trace_id);
    // On its last queue attempt a job that keeps failing (a poison message, not
    // a model failure: those are answered with the apology) gives the earliest
    // unanswered message up: it is committed as a failed turn with the apology,
    // lands in the admin's failed-turn list, and the session moves on.
    let last_attempt = attempt.current() >= context.deployment.settings.worker.turn_job_attempts;
    async move {
        match answer_session(&context, &job, last_attempt).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "turn job failed; the queue retries it");
                super::back_off(attempt.current()).await;
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}

async fn answer_session(
    context: &TurnContext,
    job: &TurnJob,
    last_attempt: bool,
) -> Result<(), StoreError> {
    let deployment = &context.deployment;
    let store = &deployment.store;
    let ttl = deployment.settings.worker.session_lease.0;
    let my_prefix = format!("{}@", job.inbound_event_id);
    let owner = format!("{my_prefix}{}", context.worker_id);
    let first_limit = events_limit(deployment, last_attempt);
    let (lease, inputs) = loop {
        if let Some(taken) = store
            .acquire_lease_for_turn(job.session_id, &owner, ttl, first_limit)
            .await?
        {
            break taken;
        }
        let state = store.lease_state(job.session_id).await?;
        match state.lease_owner {
            Some(holder) if holder.starts_with(&my_prefix) => {
                // An earlier run of this very job holds the lease: its worker died
                // (or is slow). It may have been answering events folded in after
                // this job's own, so even when this job's event is answered, wait
                // for that lease to expire and drain the session.
                let remaining =
                    Duration::from_millis(state.remaining_ms.unwrap_or(0).max(0) as u64);
                tracing::info!(
                    remaining_ms = remaining.as_millis() as u64,
                    "waiting for the lease of this job's earlier run to expire"
                );
                tokio::time::sleep(remaining.clamp(Duration::from_millis(50), ttl)).await;
            }
            Some(holder) => {
                tracing::debug!(%holder, "session busy; its lease holder answers this event");
                return Ok(());
            }
            None if store.event_is_settled(job.inbound_event_id).await? => {
                // Released in between by a holder that answered everything.
                return Ok(());
            }
            None => {}
        }
    };
    let result = drain(context, lease, inputs, last_attempt).await;
    if result.is_err()
        && let Err(e) = store.abandon_lease(lease).await
    {
        tracing::warn!(error = %e, "could not give the lease up; it expires by itself");
    }
    result
}

/// How many unanswered events a turn answers at most; one when it gives the
/// earliest up.
fn events_limit(deployment: &Deployment, give_up_first: bool) -> i64 {
    match deployment.settings.worker.turn_mode {
        _ if give_up_first => 1,
        TurnMode::Collect => COLLECT_LIMIT,
        TurnMode::PerMessage => 1,
    }
}

/// Answers unanswered events until none is left, holding the lease, starting
/// with `inputs` (read as the lease was taken). With `give_up_first`, the
/// earliest one is given up (see `run`).
async fn drain(
    context: &TurnContext,
    lease: Lease,
    mut inputs: TurnInputs,
    mut give_up_first: bool,
) -> Result<(), StoreError> {
    let deployment = &context.deployment;
    let store = &deployment.store;
    let settings = &deployment.settings.worker;
    loop {
        let Some((session, events)) = inputs else {
            tracing::info!("the session was forgotten; nothing to answer");
            return Ok(());
        };
        if !events.is_empty() {
            let committed = answer(context, lease, &session, &events, give_up_first).await?;
            give_up_first = false;
            match committed {
                TurnCommit::Fenced => {
                    tracing::warn!(
                        "lease lost before commit; the new holder answers, this turn wrote nothing"
                    );
                    return Ok(());
                }
                // Nothing arrived meanwhile and no compaction was due.
                TurnCommit::Committed(Committed { released: true, .. }) => return Ok(()),
                TurnCommit::Committed(_) => {}
            }
        }
        match store.release_lease(lease, settings.session_lease.0).await? {
            Release::Released | Release::Lost => return Ok(()),
            Release::MoreWork => {
                inputs = store
                    .turn_inputs(lease.session_id, events_limit(deployment, give_up_first))
                    .await?;
            }
        }
    }
}

/// Runs one turn over `events` and commits it; with `give_up`, commits it failed
/// with the apology at once.
async fn answer(
    context: &TurnContext,
    lease: Lease,
    session: &SessionInfo,
    events: &[PendingEvent],
    give_up: bool,
) -> Result<TurnCommit, StoreError> {
    let agent_name = session.agent.as_str();
    let deployment = &context.deployment;
    let store = &deployment.store;
    let settings = &deployment.settings;
    let started_at = Utc::now();
    let trace_id = events
        .last()
        .map(|e| e.trace_id.clone())
        .unwrap_or_default();

    let last = events.last().expect("a turn answers at least one event");
    let connector = deployment.connectors.get(&last.connector_id);
    let channel = connector.map_or("", |c| c.channel.kind().as_str());
    let target = ReplyTarget {
        conversation_id: last.conversation_id.clone(),
        thread_id: last.thread_id.clone(),
        recipient_id: last.sender_id.clone(),
        is_group: last.is_group,
        in_reply_to: events
            .iter()
            .filter(|e| e.connector_id == last.connector_id)
            .map(|e| e.platform_message_id.clone())
            .collect(),
    };
    if let Some(connector) = connector {
        // Best effort and off the turn's path: a slow platform must not slow the turn.
        let channel = connector.channel.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), channel.typing(&target)).await;
        });
    }
    let agent = settings.agents.get(agent_name);
    let route = agent
        .map(|a| a.route_for(channel, &last.connector_id))
        .filter(|route| deployment.router.has_route(route));
    let scope = TurnScope::new(
        store.clone(),
        MemoryScope::of(session, events, &settings.memory),
        session.transcript_id,
        last,
        events.first().map_or(last.id, |e| e.id),
        crate::tools::ReplyPlace {
            session_id: lease.session_id,
            channel: channel.to_owned(),
            target: target.clone(),
            trace_id: trace_id.clone(),
        },
        identity::link_policy(&settings.identity),
    );
    // A command answers a message of its own; folded in with others, it goes to
    // the model with them (which can call `link_account`).
    let command = match events {
        [only] => Command::parse(&only.text),
        _ => None,
    };
    let AgentOutcome {
        steps,
        reply,
        model,
        error,
        attempts,
        calls,
    } = match (agent, route) {
        _ if give_up => AgentOutcome {
            steps: Vec::new(),
            reply: settings.worker.apology.clone(),
            model: None,
            error: Some(format!(
                "given up after {} attempts of the turn job failed",
                settings.worker.turn_job_attempts
            )),
            attempts: 0,
            calls: Vec::new(),
        },
        (Some(_), Some(_)) if let Some(command) = &command => AgentOutcome {
            steps: Vec::new(),
            reply: command.run(&scope).await?,
            model: None,
            error: None,
            attempts: 0,
            calls: Vec::new(),
        },
        (Some(agent), Some(route))
            if let Some(exhausted) = budget_exhausted(store, agent, last).await? =>
        {
            tracing::warn!(%exhausted, "budget used up; answering without a model call");
            AgentOutcome {
                steps: Vec::new(),
                reply: agent.budget_message.clone(),
                model: Some(route.to_owned()),
                error: Some(exhausted),
                attempts: 0,
                calls: Vec::new(),
            }
        }
        (Some(agent), Some(route)) => {
            // Built with the deployment for every configured agent.
            let toolbox = deployment
                .toolboxes
                .get(agent_name)
                .cloned()
                .unwrap_or_default();
            let request =
                turn_request(deployment, agent, route, session, &scope, events, &toolbox).await?;
            let run = run_agent(
                &deployment.router,
                route,
                &toolbox,
                &scope,
                request,
                &settings.worker.apology,
            );
            let Some(outcome) =
                keep_lease_while(store, lease, settings.worker.session_lease.0, run).await
            else {
                return Ok(TurnCommit::Fenced);
            };
            outcome
        }
        _ => AgentOutcome {
            steps: Vec::new(),
            reply: settings.worker.apology.clone(),
            model: None,
            error: Some(format!(
                "agent `{agent_name}` or its model is not configured"
            )),
            attempts: 0,
            calls: Vec::new(),
        },
    };
    if let Some(error) = &error {
        tracing::warn!(%error, "turn failed; sending the apology");
    }

    let mut deliveries = match connector {
        Some(connector) => vec![PlannedDelivery {
            connector_id: last.connector_id.clone(),
            channel: connector.channel.kind().as_str().to_owned(),
            target,
            parts: connector.channel.split(&reply),
        }],
        None => {
            tracing::error!(connector = %last.connector_id, "connector is no longer configured; the reply is stored but not delivered");
            Vec::new()
        }
    };
    // Messages the tools planned (send_message), delivered like replies.
    for message in scope.take_outbox() {
        let Some(connector) = deployment.connectors.get(&message.connector_id) else {
            continue;
        };
        if deliveries
            .iter()
            .any(|d| d.connector_id == message.connector_id)
        {
            continue;
        }
        deliveries.push(PlannedDelivery {
            connector_id: message.connector_id,
            channel: connector.channel.kind().as_str().to_owned(),
            target: message.target,
            parts: connector.channel.split(&message.text),
        });
    }
    let turn_id = Uuid::now_v7();
    let memory_writes = scope.take_writes();
    let scheduled = scope.take_schedules();
    let first_attempt = match &context.first_attempts {
        Some(first_attempts) if !deliveries.is_empty() => first_attempts.slot().await,
        _ => None,
    };
    let committed = store
        .commit_turn(TurnRecord {
            turn_id,
            agent: agent_name,
            lease,
            events,
            steps: &steps,
            model_calls: &calls,
            reply: &reply,
            model: model.as_deref(),
            error: error.as_deref(),
            model_attempts: attempts,
            started_at,
            trace_id: &trace_id,
            deliveries,
            delivery_max_attempts: settings.delivery.max_attempts,
            lease_ttl: settings.worker.session_lease.0,
            first_attempt: first_attempt
                .as_ref()
                .map(|slot| slot.claim(settings.delivery.order_window.0)),
            memory_writes: &memory_writes,
            scheduled: &scheduled,
            compaction: (route.is_some() && command.is_none())
                .then(|| compaction::check(&settings.memory, session)),
        })
        .await;
    if let (Some(slot), Some(first_attempts)) = (first_attempt, &context.first_attempts) {
        match &committed {
            Ok(TurnCommit::Committed(turn)) => {
                first_attempts.start(slot, deployment.clone(), turn.claimed.clone());
            }
            // It may have committed, with its jobs claimed for this worker.
            Err(_) => first_attempts.recover(slot),
            Ok(TurnCommit::Fenced) => {}
        }
    }
    let committed = committed?;
    crate::metrics::turn(
        agent_name,
        match (&committed, &error) {
            (TurnCommit::Fenced, _) => "fenced",
            (TurnCommit::Committed(_), Some(_)) => "failed",
            (TurnCommit::Committed(_), None) => "completed",
        },
        (Utc::now() - started_at).to_std().unwrap_or_default(),
    );
    if let TurnCommit::Committed(turn) = &committed {
        if let Some(analytics) = &deployment.analytics {
            analytics.record(turn_event(
                TurnFacts {
                    turn_id,
                    session_id: lease.session_id,
                    agent: agent_name,
                    channel,
                    connector: &last.connector_id,
                    trace_id: &trace_id,
                    events: events.len(),
                    model: model.as_deref(),
                    error: error.is_some(),
                    reply: &reply,
                    started_at,
                },
                &calls,
            ));
        }
        tracing::info!(
            %turn_id,
            events = events.len(),
            model = model.as_deref().unwrap_or("-"),
            model_attempts = attempts,
            failed = error.is_some(),
            elapsed_ms = (Utc::now() - started_at).num_milliseconds(),
            "turn committed"
        );
        if let Some(route) = route
            && let Some(total) = turn.unsummarized
            && let Err(e) =
                compaction::compact_if_needed(deployment, route, lease, session, total, &trace_id)
                    .await
        {
            tracing::warn!(error = %e, "compaction failed; the next turn tries again");
        }
    }
    Ok(committed)
}

/// What a committed turn's analytics event is made of, beside its model calls.
struct TurnFacts<'a> {
    turn_id: Uuid,
    session_id: Uuid,
    agent: &'a str,
    channel: &'a str,
    connector: &'a str,
    trace_id: &'a str,
    events: usize,
    model: Option<&'a str>,
    error: bool,
    reply: &'a str,
    started_at: chrono::DateTime<Utc>,
}

/// The analytics event of a committed turn: tokens, cost and model time summed
/// over its model calls (retries and failover included).
fn turn_event(turn: TurnFacts<'_>, calls: &[ModelCall]) -> crate::analytics::Event {
    let now = Utc::now();
    let answered_by = calls.iter().rev().find(|c| c.outcome == "ok");
    crate::analytics::Event {
        event_time: now,
        kind: "turn",
        id: turn.turn_id.to_string(),
        trace_id: turn.trace_id.to_owned(),
        session_id: turn.session_id.to_string(),
        agent: turn.agent.to_owned(),
        channel: turn.channel.to_owned(),
        connector: turn.connector.to_owned(),
        model: answered_by
            .map(|c| c.model.clone())
            .or_else(|| turn.model.map(str::to_owned))
            .unwrap_or_default(),
        provider: answered_by
            .map(|c| c.provider.to_owned())
            .unwrap_or_default(),
        input_tokens: calls
            .iter()
            .filter_map(|c| c.input_tokens)
            .sum::<i64>()
            .max(0) as u64,
        output_tokens: calls
            .iter()
            .filter_map(|c| c.output_tokens)
            .sum::<i64>()
            .max(0) as u64,
        cost_usd: calls.iter().map(|c| c.cost_usd).sum(),
        latency_ms: (now - turn.started_at).num_milliseconds().max(0) as u64,
        model_latency_ms: calls.iter().map(|c| c.latency_ms).sum::<i64>().max(0) as u64,
        model_calls: calls.len() as u32,
        attempt: turn.events as u32,
        outcome: if turn.error { "failed" } else { "completed" },
        error_class: match turn.error {
            // The last failure class the router saw, or why no model answered.
            true => calls
                .iter()
                .rev()
                .find(|c| c.outcome != "ok")
                .map_or_else(|| "no_model_answer".to_owned(), |c| c.outcome.clone()),
            false => String::new(),
        },
        text: turn.reply.to_owned(),
    }
}

/// The first model request of a turn: the memory layers rehydrated and fitted
/// with the events into the route's window (see `memory::context`).
async fn turn_request(
    deployment: &Deployment,
    agent: &crate::config::AgentConfig,
    route: &str,
    session: &SessionInfo,
    scope: &TurnScope,
    events: &[PendingEvent],
    toolbox: &Toolbox,
) -> Result<ChatRequest, StoreError> {
    let settings = &deployment.settings;
    let store = &deployment.store;
    let layers = memory::rehydrate(
        store,
        &settings.memory,
        session,
        &scope.memory,
        events,
        settings.worker.history_messages,
    )
    .await?;
    let vision = deployment.router.supports_vision(route);
    let tools = toolbox.specs().await;
    let assembled = context::assemble(
        &agent.instructions,
        &tools,
        &layers,
        events.iter().map(|e| user_message(e, vision)).collect(),
        deployment.router.context_budget(route),
        &settings.memory,
    );
    if assembled.dropped.any() {
        tracing::info!(
            dropped_notes = assembled.dropped.notes,
            dropped_facts = assembled.dropped.facts,
            dropped_recalled = assembled.dropped.recalled,
            dropped_summary_chars = assembled.dropped.summary_chars,
            dropped_recent = assembled.dropped.recent,
            prompt_tokens = assembled.tokens,
            "context trimmed to fit the model's window"
        );
    }
    Ok(ChatRequest {
        system: (!assembled.system.is_empty()).then_some(assembled.system),
        messages: assembled.messages,
        tools,
        trace_id: events
            .last()
            .map(|e| e.trace_id.clone())
            .unwrap_or_default(),
    })
}

/// What the model loop of one turn produced.
struct AgentOutcome {
    /// Tool-calling steps (assistant calls and tool results), in order.
    steps: Vec<Message>,
    /// The final answer, or the apology when the model failed.
    reply: String,
    model: Option<String>,
    error: Option<String>,
    /// Model calls made, retries and failover included.
    attempts: u32,
    calls: Vec<ModelCall>,
}

/// Which daily budget of `agent` is used up, if any.
async fn budget_exhausted(
    store: &Store,
    agent: &crate::config::AgentConfig,
    last: &PendingEvent,
) -> Result<Option<String>, StoreError> {
    if agent.daily_token_budget == 0 && agent.daily_user_token_budget == 0 {
        return Ok(None);
    }
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let user_key = format!("{}:{}", last.connector_id, last.sender_id);
    let (agent_tokens, user_tokens) = store
        .tokens_used_since(&agent.name, &user_key, midnight)
        .await?;
    Ok(
        if agent.daily_token_budget > 0 && agent_tokens >= agent.daily_token_budget as i64 {
            Some(format!(
                "daily token budget of agent `{}` used up ({agent_tokens} of {})",
                agent.name, agent.daily_token_budget
            ))
        } else if agent.daily_user_token_budget > 0
            && user_tokens >= agent.daily_user_token_budget as i64
        {
            Some(format!(
                "daily token budget of {user_key} with agent `{}` used up ({user_tokens} of {})",
                agent.name, agent.daily_user_token_budget
            ))
        } else {
            None
        },
    )
}

/// An inbound event as the model sees it: its text, and its attachments as images
/// (when the route has a model with vision) or as a line naming them.
fn user_message(event: &PendingEvent, vision: bool) -> Message {
    let mut parts = Vec::new();
    if !event.text.is_empty() {
        parts.push(Part::Text {
            text: event.text.clone(),
        });
    }
    for attachment in event.attachments.iter() {
        let is_image = attachment
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("image/"));
        match (&attachment.url, is_image && vision) {
            (Some(url), true) => parts.push(Part::Image { url: url.clone() }),
            _ => parts.push(Part::Text {
                text: format!(
                    "{}[attachment: {} ({}){}]",
                    if parts.is_empty() { "" } else { "\n" },
                    attachment.name.as_deref().unwrap_or("unnamed"),
                    attachment.content_type.as_deref().unwrap_or("unknown type"),
                    attachment
                        .url
                        .as_deref()
                        .map(|u| format!(" {u}"))
                        .unwrap_or_default()
                ),
            }),
        }
    }
    Message {
        role: Role::User,
        parts,
    }
}

/// The agent loop: call the model; while it asks for tools (and steps remain),
/// run them and call it again with their results.
async fn run_agent(
    router: &Router,
    route: &str,
    toolbox: &Toolbox,
    scope: &TurnScope,
    mut request: ChatRequest,
    apology: &str,
) -> AgentOutcome {
    let max_steps = router.max_steps(route);
    let mut steps = Vec::new();
    let mut calls = Vec::new();
    let failed =
        |steps, calls: Vec<ModelCall>, model: Option<String>, error: String| AgentOutcome {
            steps,
            reply: apology.to_owned(),
            model,
            error: Some(error),
            attempts: calls.len() as u32,
            calls,
        };
    for step in 1..=max_steps {
        let outcome = router.complete(route, &request).await;
        calls.extend(outcome.calls);
        let response = match outcome.result {
            Ok(response) => response,
            Err(e) => return failed(steps, calls, Some(route.to_owned()), e.to_string()),
        };
        let served_by = outcome.served_by.unwrap_or_else(|| route.to_owned());
        let tool_calls: Vec<ToolCall> = response.message.tool_calls().cloned().collect();
        if tool_calls.is_empty() || response.stop != StopReason::ToolUse {
            let mut text = response.text();
            if text.trim().is_empty() {
                return failed(
                    steps,
                    calls,
                    Some(served_by),
                    "the model returned an empty answer".into(),
                );
            }
            let note = router.fallback_note(route);
            if outcome.fallback && !note.is_empty() {
                text = format!("{text}\n\n{note}");
            }
            return AgentOutcome {
                steps,
                reply: text,
                model: Some(response.model),
                error: None,
                attempts: calls.len() as u32,
                calls,
            };
        }
        if step == max_steps {
            return failed(
                steps,
                calls,
                Some(served_by),
                format!("the model still asked for tools after {max_steps} steps"),
            );
        }
        let mut results = Vec::with_capacity(tool_calls.len());
        for call in &tool_calls {
            let result = toolbox.run(call, scope).await;
            tracing::info!(tool = %call.name, is_error = result.is_error, "tool called");
            results.push(Part::ToolResult(result));
        }
        let results = Message {
            role: Role::Tool,
            parts: results,
        };
        // The next step sees the calls whole; the stored history keeps them bounded.
        steps.push(toolbox.for_history(&response.message));
        request.messages.push(response.message);
        request.messages.push(results.clone());
        steps.push(results);
    }
    failed(
        steps,
        calls,
        Some(route.to_owned()),
        "no model step ran".into(),
    )
}

/// Runs `work` while extending the lease every third of its lifetime. None when the
/// lease was lost meanwhile (the work is dropped; another worker owns the session).
async fn keep_lease_while<T>(
    store: &Store,
    lease: Lease,
    ttl: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let keep = async {
        loop {
            tokio::time::sleep(ttl / 3).await;
            match store.extend_lease(lease, ttl).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "could not extend the session lease"),
            }
        }
    };
    tokio::select! {
        output = work => Some(output),
        () = keep => None,
    }
}
