//! HTTP function tools: how users give an agent new abilities without
//! recompiling.
//!
//! A function is declared per agent (`[[agents.functions]]`: name, description,
//! JSON Schema of its arguments, URL, timeout, secret). A call:
//! 1. validates the model's arguments against the schema; invalid arguments
//!    never reach the function, the model gets the validation errors instead;
//! 2. POSTs `{"type": "function.call", "timestamp", "data": {"name",
//!    "arguments", "agent"}}` signed with the Standard Webhooks scheme
//!    (`webhook-id` is the call's idempotency key, also sent as
//!    `Idempotency-Key`), through the tools' egress guard (`tools::egress`);
//! 3. gives the JSON answer back to the model; a non-2xx answer, a timeout or a
//!    refused address comes back as a tool error the model can explain.
//!
//! Function calls are durable (see `Toolbox::run`): a turn rerun after a crash
//! reuses the recorded result instead of calling the function again.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::{Tool, TurnScope};
use crate::{channels::standard_webhooks::SigningKey, config::FunctionConfig, providers::ToolSpec};

pub struct FunctionTool {
    name: String,
    description: String,
    parameters: Value,
    validator: Arc<jsonschema::Validator>,
    url: String,
    timeout: Duration,
    key: SigningKey,
    agent: String,
    egress: super::egress::Egress,
    http: reqwest::Client,
}

impl FunctionTool {
    /// None when the configuration was not validated (no secret, bad schema).
    pub fn new(
        agent: &str,
        config: &FunctionConfig,
        default_timeout: Duration,
        egress: &super::egress::Egress,
        http: reqwest::Client,
    ) -> Option<Self> {
        let key = SigningKey::parse(config.secret.as_ref()?.expose_secret()).ok()?;
        let validator = jsonschema::validator_for(&config.parameters).ok()?;
        Some(Self {
            name: config.name.clone(),
            description: config.description.clone(),
            parameters: config.parameters.clone(),
            validator: Arc::new(validator),
            url: config.url.clone(),
            timeout: config.timeout.map_or(default_timeout, |t| t.0),
            key,
            agent: agent.to_owned(),
            egress: egress.clone(),
            http,
        })
    }

    async fn invoke(&self, arguments: &Value, idempotency_key: &str) -> Result<String, String> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(arguments)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                match at.as_str() {
                    "" => e.to_string(),
                    at => format!("{at}: {e}"),
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(format!(
                "the arguments do not match the function's schema: {}",
                problems.join("; ")
            ));
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("bad function URL: {e}"))?;
        self.egress
            .check_url(&url)
            .map_err(|refused| format!("the function's URL is refused: {refused}"))?;
        let body = json!({
            "type": "function.call",
            "timestamp": chrono::Utc::now(),
            "data": {"name": self.name, "arguments": arguments, "agent": self.agent},
        })
        .to_string();
        let now = chrono::Utc::now().timestamp();
        let request = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency_key)
            .header("webhook-id", idempotency_key)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                self.key.sign(idempotency_key, now, body.as_bytes()),
            )
            .body(body);
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!(
                    "the function did not answer within {}s",
                    self.timeout.as_secs_f64()
                )
            } else {
                // The chain says why (a refused address, a refused redirect).
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                format!("the function could not be reached: {reason}")
            }
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("the function's answer could not be read: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "the function answered HTTP {}: {}",
                status.as_u16(),
                crate::channels::truncate(&text, 500)
            ));
        }
        // JSON as the function sent it; anything else as text.
        Ok(match serde_json::from_str::<Value>(&text) {
            Ok(json) => json.to_string(),
            Err(_) => text,
        })
    }
}

impl Tool for FunctionTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            schema: self.parameters.clone(),
        }
    }

    fn durable(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        _scope: &'a TurnScope,
        call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        self.invoke(arguments, call_key).boxed()
    }
}
