//! Tools an agent's model can call during a turn.
//!
//! A tool is one module behind [`Tool`]; [`Toolbox`] holds the tools one agent may
//! use and runs the model's calls. A failing tool never fails the turn: its error
//! goes back to the model as a tool result marked `is_error`, so the model can
//! explain it or try differently.

pub mod clock;

use std::{collections::BTreeMap, sync::Arc};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::providers::{ToolCall, ToolResult, ToolSpec};

pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;

    /// Runs the tool on the model's arguments (a JSON object); the text result or
    /// an error message for the model.
    fn call<'a>(&'a self, arguments: &'a Value) -> BoxFuture<'a, Result<String, String>>;
}

/// The built-in tools, by name.
pub fn builtin(name: &str) -> Option<Arc<dyn Tool>> {
    match name {
        clock::NAME => Some(Arc::new(clock::CurrentTime)),
        _ => None,
    }
}

pub const BUILTIN: &[&str] = &[clock::NAME];

/// The tools of one agent.
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl Toolbox {
    pub fn new(names: &[String]) -> Self {
        Self {
            tools: names
                .iter()
                .filter_map(|name| builtin(name).map(|tool| (name.clone(), tool)))
                .collect(),
        }
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|tool| tool.spec()).collect()
    }

    pub async fn run(&self, call: &ToolCall) -> ToolResult {
        let outcome = match self.tools.get(&call.name) {
            Some(tool) => tool.call(&call.arguments).await,
            None => Err(format!("there is no tool named `{}`", call.name)),
        };
        let (content, is_error) = match outcome {
            Ok(content) => (content, false),
            Err(error) => (error, true),
        };
        ToolResult {
            call_id: call.id.clone(),
            content,
            is_error,
        }
    }
}
