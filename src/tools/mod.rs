//! Tools an agent's model can call during a turn.
//!
//! A tool is one module behind [`Tool`]; [`Toolbox`] holds the tools one agent may
//! use and runs the model's calls. A failing tool never fails the turn: its error
//! goes back to the model as a tool result marked `is_error`, so the model can
//! explain it or try differently.

pub mod clock;
pub mod link;
pub mod memory;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    memory::MemoryScope,
    providers::{ToolCall, ToolResult, ToolSpec},
    store::{LinkPolicy, MemoryWrite, Store},
};

pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;

    /// Runs the tool on the model's arguments (a JSON object) for the turn in
    /// `scope`; the text result or an error message for the model.
    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        scope: &'a TurnScope,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// What the tools of one turn act on, and the memory writes they made (committed
/// with the turn, see `store::TurnRecord::memory_writes`).
pub struct TurnScope {
    pub store: Store,
    pub memory: MemoryScope,
    pub transcript_id: Uuid,
    /// The account and person the last message came from.
    pub connector_id: String,
    pub sender_id: String,
    pub sender_identity: Option<Uuid>,
    pub link_policy: LinkPolicy,
    writes: Mutex<Vec<MemoryWrite>>,
}

impl TurnScope {
    pub fn new(
        store: Store,
        memory: MemoryScope,
        transcript_id: Uuid,
        event: &crate::store::PendingEvent,
        link_policy: LinkPolicy,
    ) -> Self {
        Self {
            store,
            memory,
            transcript_id,
            connector_id: event.connector_id.clone(),
            sender_id: event.sender_id.clone(),
            sender_identity: event.identity_id,
            link_policy,
            writes: Mutex::new(Vec::new()),
        }
    }

    pub fn write(&self, write: MemoryWrite) {
        self.writes.lock().expect("memory writes lock").push(write);
    }

    pub fn take_writes(&self) -> Vec<MemoryWrite> {
        std::mem::take(&mut *self.writes.lock().expect("memory writes lock"))
    }
}

/// A required string argument, or the error the model gets.
pub(crate) fn string_argument<'a>(arguments: &'a Value, name: &str) -> Result<&'a str, String> {
    match arguments.get(name) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.trim()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(format!("the argument `{name}` is required"))
        }
        Some(other) => Err(format!("`{name}` must be a string, got {other}")),
    }
}

/// The built-in tools, by name.
pub fn builtin(name: &str) -> Option<Arc<dyn Tool>> {
    match name {
        clock::NAME => Some(Arc::new(clock::CurrentTime)),
        memory::REMEMBER => Some(Arc::new(memory::Remember)),
        memory::RECALL => Some(Arc::new(memory::Recall)),
        memory::FORGET => Some(Arc::new(memory::Forget)),
        link::NAME => Some(Arc::new(link::LinkAccount)),
        _ => None,
    }
}

pub const BUILTIN: &[&str] = &[
    clock::NAME,
    memory::REMEMBER,
    memory::RECALL,
    memory::FORGET,
    link::NAME,
];

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

    pub async fn run(&self, call: &ToolCall, scope: &TurnScope) -> ToolResult {
        let outcome = match self.tools.get(&call.name) {
            Some(tool) => tool.call(&call.arguments, scope).await,
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
