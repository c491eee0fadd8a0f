//! The router: picks a model for each step of a turn and owns the only retry loop.
//!
//! A route is an ordered list of candidates (models). The strategy orders them:
//! as listed (failover), cheapest first by the price table, or fastest first by
//! the shared latency average. Candidates that lack what the step needs (tools,
//! vision, a context window large enough for the prompt) are left out, and so are
//! candidates whose circuit breaker is open.
//!
//! Each failure is classified before anything is decided:
//!
//! | class | same candidate | then |
//! |---|---|---|
//! | rate limited | next key at once, else wait max(backoff, Retry-After) if within `max_retry_after` | next candidate |
//! | overloaded, server error, timeout, malformed answer | exponential backoff with full jitter, up to `max_attempts` | next candidate |
//! | context window | no | the next candidate with a larger window |
//! | quota / billing, auth | key benched for `router.key_cooldown`, next key | next candidate |
//! | bad request, content policy | no | none: the step fails |
//!
//! Everything happens before `router.step_deadline`. Providers make exactly one
//! HTTP call per attempt (no hidden client retries), and every attempt is recorded
//! as a [`ModelCall`] with its key id (never the key), tokens, cost and latency.

use std::{collections::HashMap, sync::Arc, time::Instant};
use tracing::Instrument;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};

use super::{
    ChatRequest, ChatResponse, Part, Provider, ProviderError, ProviderErrorKind, anthropic,
    health::{Admission, Health},
    mock, openai,
};
use crate::config::{
    ModelSettings, ProviderKind, RouteConfig, RouteStrategy, RouterConfig, Settings,
};

/// One model a route can use.
pub struct Candidate {
    pub name: String,
    pub settings: ModelSettings,
    provider: Arc<dyn Provider>,
}

impl Candidate {
    pub fn new(settings: &ModelSettings, http: &reqwest::Client) -> Self {
        let provider: Arc<dyn Provider> = match settings.config.provider {
            ProviderKind::Openai => Arc::new(openai::OpenAiProvider::new(settings, http.clone())),
            ProviderKind::Anthropic => {
                Arc::new(anthropic::AnthropicProvider::new(settings, http.clone()))
            }
            ProviderKind::Mock => Arc::new(mock::MockProvider),
        };
        Self {
            name: settings.name.clone(),
            settings: settings.clone(),
            provider,
        }
    }

    fn provider_name(&self) -> &'static str {
        match self.settings.config.provider {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Mock => "mock",
        }
    }

    /// USD for a call's tokens by this model's price table.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.settings.config.input_price
            + output_tokens as f64 * self.settings.config.output_price)
            / 1_000_000.0
    }
}

/// What a step needs from a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    /// Estimated prompt tokens (about four characters a token).
    pub prompt_tokens: u64,
}

impl Needs {
    pub fn of(request: &ChatRequest) -> Self {
        let mut chars = request.system.as_ref().map_or(0, String::len);
        let mut vision = false;
        for message in &request.messages {
            for part in &message.parts {
                chars += match part {
                    Part::Text { text } => text.len(),
                    Part::Image { .. } => {
                        vision = true;
                        4 * 1000
                    }
                    Part::ToolCall(call) => call.name.len() + call.arguments.to_string().len(),
                    Part::ToolResult(result) => result.content.len(),
                };
            }
        }
        for tool in &request.tools {
            chars += tool.name.len() + tool.description.len() + tool.schema.to_string().len();
        }
        Self {
            tools: !request.tools.is_empty(),
            vision,
            prompt_tokens: (chars / 4) as u64,
        }
    }
}

/// One attempt, as recorded with its turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub candidate: String,
    pub provider: &'static str,
    pub model: String,
    /// The environment variable that held the key, never the key.
    pub key_id: Option<String>,
    /// "ok", or the failure class.
    pub outcome: String,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_usd: f64,
    pub started_at: DateTime<Utc>,
}

/// The outcome of one model step.
#[derive(Debug)]
pub struct StepOutcome {
    pub result: Result<ChatResponse, ProviderError>,
    pub calls: Vec<ModelCall>,
    /// The candidate that answered.
    pub served_by: Option<String>,
    /// Whether it was not the route's first choice.
    pub fallback: bool,
}

pub struct Router {
    candidates: HashMap<String, Arc<Candidate>>,
    routes: HashMap<String, RouteConfig>,
    health: Health,
    config: RouterConfig,
}

fn error_class(kind: ProviderErrorKind) -> &'static str {
    match kind {
        ProviderErrorKind::RateLimited => "rate_limited",
        ProviderErrorKind::Overloaded => "overloaded",
        ProviderErrorKind::Server => "server_error",
        ProviderErrorKind::Timeout => "timeout",
        ProviderErrorKind::QuotaExhausted => "quota_exhausted",
        ProviderErrorKind::Auth => "auth",
        ProviderErrorKind::BadRequest => "bad_request",
        ProviderErrorKind::ContextWindow => "context_window",
        ProviderErrorKind::ContentPolicy => "content_policy",
        ProviderErrorKind::Malformed => "malformed",
    }
}

/// Why the router left a candidate.
enum Leave {
    /// Try the next candidate.
    Next(ProviderError),
    /// Only candidates with a larger context window than this may follow.
    Larger(ProviderError, u64),
    /// No candidate may follow.
    Stop(ProviderError),
}

impl Router {
    pub fn new(settings: &Settings, http: &reqwest::Client, health: Health) -> Self {
        Self {
            candidates: settings
                .models
                .values()
                .map(|m| (m.name.clone(), Arc::new(Candidate::new(m, http))))
                .collect(),
            routes: settings.routes.clone().into_iter().collect(),
            health,
            config: settings.router.clone(),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether `name` is a route (every model is one too).
    pub fn has_route(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// Model steps a turn on this route may take: the first candidate's setting.
    pub fn max_steps(&self, route: &str) -> u32 {
        self.routes
            .get(route)
            .and_then(|r| r.candidates.first())
            .and_then(|c| self.candidates.get(c))
            .map_or(1, |c| c.settings.config.max_steps.max(1))
    }

    /// Whether any candidate of the route accepts images.
    pub fn supports_vision(&self, route: &str) -> bool {
        self.routes.get(route).is_some_and(|r| {
            r.candidates
                .iter()
                .filter_map(|c| self.candidates.get(c))
                .any(|c| c.settings.config.vision)
        })
    }

    /// The room a turn on this route has: the smallest context window of its
    /// candidates (so any fallback fits too), the largest reply reserve, and
    /// their common tokenizer.
    pub fn context_budget(&self, route: &str) -> crate::memory::context::Budget {
        let candidates: Vec<&Candidate> = self
            .routes
            .get(route)
            .map(|r| {
                r.candidates
                    .iter()
                    .filter_map(|c| self.candidates.get(c).map(|c| c.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        crate::memory::context::Budget {
            context_window: candidates
                .iter()
                .map(|c| c.settings.config.context_window)
                .min()
                .unwrap_or(8_192),
            reply_reserve: candidates
                .iter()
                .map(|c| u64::from(c.settings.config.max_tokens))
                .max()
                .unwrap_or(1_024),
            tokenizer: crate::memory::tokens::Tokenizer::common(candidates.iter().map(|c| {
                let config = &c.settings.config;
                crate::memory::tokens::Tokenizer::of(
                    config.tokenizer,
                    config.provider,
                    &config.model,
                )
            })),
        }
    }

    pub fn fallback_note(&self, route: &str) -> &str {
        self.routes
            .get(route)
            .map_or("", |r| r.fallback_note.as_str())
    }

    /// The route's candidates that can serve `needs`, in the strategy's order.
    pub async fn ordered(&self, route: &RouteConfig, needs: Needs) -> Vec<Arc<Candidate>> {
        let mut eligible: Vec<Arc<Candidate>> = route
            .candidates
            .iter()
            .filter_map(|name| self.candidates.get(name).cloned())
            .filter(|c| {
                let config = &c.settings.config;
                (config.tools || !needs.tools)
                    && (config.vision || !needs.vision)
                    && config.context_window > needs.prompt_tokens
            })
            .collect();
        match route.strategy {
            RouteStrategy::Failover => {}
            RouteStrategy::LowestCost => {
                let estimate = |c: &Candidate| {
                    c.cost(needs.prompt_tokens, u64::from(c.settings.config.max_tokens))
                };
                eligible.sort_by(|a, b| estimate(a).total_cmp(&estimate(b)));
            }
            RouteStrategy::LowestLatency => {
                let mut timed = Vec::with_capacity(eligible.len());
                for candidate in eligible {
                    // Unmeasured candidates go first, so each gets measured.
                    let latency = self.health.latency_ms(&candidate.name).await.unwrap_or(0.0);
                    timed.push((latency, candidate));
                }
                timed.sort_by(|a, b| a.0.total_cmp(&b.0));
                eligible = timed.into_iter().map(|(_, c)| c).collect();
            }
        }
        eligible
    }

    /// One model step on `route_name`: retries, key rotation and failover, until
    /// an answer, a final error, or the step deadline.
    pub async fn complete(&self, route_name: &str, request: &ChatRequest) -> StepOutcome {
        let mut calls = Vec::new();
        let Some(route) = self.routes.get(route_name) else {
            return StepOutcome {
                result: Err(ProviderError::new(
                    ProviderErrorKind::BadRequest,
                    format!("no route or model named `{route_name}`"),
                )),
                calls,
                served_by: None,
                fallback: false,
            };
        };
        let needs = Needs::of(request);
        let deadline = Instant::now() + self.config.step_deadline.0;
        let ordered = self.ordered(route, needs).await;
        let first_choice = route.candidates.first().cloned();
        let mut last_error = ProviderError::new(
            ProviderErrorKind::BadRequest,
            format!(
                "no candidate of route `{route_name}` can serve this step (tools: {}, vision: {}, ~{} prompt tokens)",
                needs.tools, needs.vision, needs.prompt_tokens
            ),
        );
        let mut min_window = 0;
        for candidate in ordered {
            if candidate.settings.config.context_window <= min_window {
                continue;
            }
            if self.health.admission(&candidate.name).await == Admission::Open {
                tracing::info!(candidate = %candidate.name, trace_id = %request.trace_id, "breaker open; skipping");
                last_error = ProviderError::new(
                    ProviderErrorKind::Overloaded,
                    format!(
                        "`{}` is cooling down after repeated failures",
                        candidate.name
                    ),
                );
                continue;
            }
            match self
                .try_candidate(&candidate, request, deadline, &mut calls)
                .await
            {
                Ok(response) => {
                    return StepOutcome {
                        result: Ok(response),
                        calls,
                        fallback: first_choice.as_deref() != Some(candidate.name.as_str()),
                        served_by: Some(candidate.name.clone()),
                    };
                }
                Err(Leave::Next(e)) => last_error = e,
                Err(Leave::Larger(e, window)) => {
                    min_window = window;
                    last_error = e;
                }
                Err(Leave::Stop(e)) => {
                    last_error = e;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        StepOutcome {
            result: Err(last_error),
            calls,
            served_by: None,
            fallback: false,
        }
    }

    async fn try_candidate(
        &self,
        candidate: &Candidate,
        request: &ChatRequest,
        deadline: Instant,
        calls: &mut Vec<ModelCall>,
    ) -> Result<ChatResponse, Leave> {
        let config = &candidate.settings.config;
        let keys = &candidate.settings.api_keys;
        let mut key_index = 0;
        while key_index < keys.len()
            && self
                .health
                .key_benched(&candidate.name, &keys[key_index].0)
                .await
        {
            key_index += 1;
        }
        if !keys.is_empty() && key_index == keys.len() {
            return Err(Leave::Next(ProviderError::new(
                ProviderErrorKind::QuotaExhausted,
                format!("every key of `{}` is benched", candidate.name),
            )));
        }
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(config.min_backoff.0)
            .with_max_delay(config.max_backoff.0)
            .with_max_times(config.max_attempts.saturating_sub(1) as usize)
            .build();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Leave::Stop(ProviderError::new(
                    ProviderErrorKind::Timeout,
                    "the step deadline passed",
                )));
            }
            let key = keys.get(key_index);
            let started = Instant::now();
            let started_at = Utc::now();
            let timeout = config.timeout.0.min(remaining);
            let span = tracing::info_span!(
                "model_call",
                otel.kind = "client",
                candidate = %candidate.name,
                provider = candidate.provider_name(),
                model = %config.model,
                outcome = tracing::field::Empty,
            );
            let result = match tokio::time::timeout(
                timeout,
                candidate
                    .provider
                    .complete(request, key.map(|(_, k)| k))
                    .instrument(span.clone()),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no answer within {}s", timeout.as_secs_f64()),
                )),
            };
            let latency = started.elapsed();
            let mut call = ModelCall {
                candidate: candidate.name.clone(),
                provider: candidate.provider_name(),
                model: config.model.clone(),
                key_id: key.map(|(id, _)| id.clone()),
                outcome: "ok".into(),
                error: None,
                latency_ms: latency.as_millis() as i64,
                input_tokens: None,
                output_tokens: None,
                cost_usd: 0.0,
                started_at,
            };
            span.record(
                "outcome",
                match &result {
                    Ok(_) => "ok",
                    Err(e) => error_class(e.kind),
                },
            );
            let error = match result {
                Ok(response) => {
                    let (input, output) = (
                        response.input_tokens.unwrap_or(0),
                        response.output_tokens.unwrap_or(0),
                    );
                    call.input_tokens = response.input_tokens.map(|t| t as i64);
                    call.output_tokens = response.output_tokens.map(|t| t as i64);
                    call.cost_usd = candidate.cost(input, output);
                    crate::metrics::model_call(&call);
                    calls.push(call);
                    self.health.record_success(&candidate.name, latency).await;
                    return Ok(response);
                }
                Err(error) => error,
            };
            call.outcome = error_class(error.kind).into();
            call.error = Some(error.message.clone());
            crate::metrics::model_call(&call);
            calls.push(call);
            tracing::warn!(
                candidate = %candidate.name,
                trace_id = %request.trace_id,
                class = error_class(error.kind),
                error = %error,
                "model call failed"
            );
            if matches!(
                error.kind,
                ProviderErrorKind::Overloaded
                    | ProviderErrorKind::Server
                    | ProviderErrorKind::Timeout
                    | ProviderErrorKind::RateLimited
                    | ProviderErrorKind::Malformed
            ) {
                self.health.record_failure(&candidate.name).await;
            }
            let next_key = |from: usize| from + 1 < keys.len();
            match error.kind {
                ProviderErrorKind::BadRequest | ProviderErrorKind::ContentPolicy => {
                    return Err(Leave::Stop(error));
                }
                ProviderErrorKind::ContextWindow => {
                    return Err(Leave::Larger(error, config.context_window));
                }
                ProviderErrorKind::QuotaExhausted | ProviderErrorKind::Auth => {
                    if let Some((key_id, _)) = key {
                        self.health
                            .bench_key(&candidate.name, key_id, self.config.key_cooldown.0)
                            .await;
                    }
                    if next_key(key_index) {
                        key_index += 1;
                        continue;
                    }
                    return Err(Leave::Next(error));
                }
                ProviderErrorKind::RateLimited if next_key(key_index) => {
                    key_index += 1;
                    continue;
                }
                _ => {}
            }
            // Retry the same candidate after a wait, or move on.
            let Some(planned) = backoff.next() else {
                return Err(Leave::Next(error));
            };
            let jittered = planned.mul_f64(fastrand::f64());
            let wait = match error.retry_after {
                Some(wait) if wait > config.max_retry_after.0 => return Err(Leave::Next(error)),
                Some(wait) => jittered.max(wait),
                None => jittered,
            };
            if Instant::now() + wait >= deadline {
                return Err(Leave::Next(error));
            }
            tokio::time::sleep(wait).await;
        }
    }
}
