//! Tools an agent's model can call during a turn.
//!
//! A tool is one module behind [`Tool`]; [`Toolbox`] holds the tools one agent may
//! use (built-in tools and its HTTP functions) and runs the model's calls. A
//! failing tool never fails the turn: its error goes back to the model as a tool
//! result marked `is_error`, so the model can explain it or try differently.
//!
//! Guarantees of [`Toolbox::run`]:
//! - **No repeated side effects.** Each call of a turn has an idempotency key
//!   (the turn's first message, the call's position in the turn, the tool and
//!   its arguments). A *durable* tool's result (HTTP functions: they act on the
//!   world) is recorded in the store as soon as it completes; a turn rerun after
//!   a crash that makes the same call gets the recorded result, and the function
//!   is not called again. The key is also sent to the function, so it can
//!   deduplicate on its side.
//! - **Bounded.** At most `tools.max_calls_per_turn` calls per turn; results are
//!   cut at `tools.max_result_chars`.

pub mod clock;
pub mod egress;
pub mod function;
pub mod link;
pub mod mcp;
pub mod memory;
pub mod schedule;
pub mod send;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use futures::future::BoxFuture;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    config::{AgentConfig, ToolsConfig},
    memory::MemoryScope,
    providers::{ToolCall, ToolResult, ToolSpec},
    store::{LinkPolicy, MemoryWrite, Store},
};

pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;

    /// Runs the tool on the model's arguments (a JSON object) for the turn in
    /// `scope`; the text result or an error message for the model. `call_key`
    /// identifies this call across reruns of the turn.
    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        scope: &'a TurnScope,
        call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>>;

    /// Whether the tool acts outside the turn's transaction, so its result must
    /// be recorded as soon as it completes and reused by a rerun.
    fn durable(&self) -> bool {
        false
    }
}

/// Where a turn's reply goes (and messages it schedules for later).
#[derive(Debug, Clone)]
pub struct ReplyPlace {
    pub session_id: Uuid,
    /// The connector's channel kind, e.g. `telegram`.
    pub channel: String,
    pub target: crate::channels::ReplyTarget,
    pub trace_id: String,
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
    /// The turn's first message: the same in every rerun of the turn.
    pub turn_key: Uuid,
    /// Where the turn's reply goes.
    pub reply: ReplyPlace,
    writes: Mutex<Vec<MemoryWrite>>,
    outbox: Mutex<Vec<send::Outbound>>,
    schedules: Mutex<Vec<crate::store::PlannedSchedule>>,
    calls: AtomicU32,
}

impl TurnScope {
    pub fn new(
        store: Store,
        memory: MemoryScope,
        transcript_id: Uuid,
        event: &crate::store::PendingEvent,
        turn_key: Uuid,
        reply: ReplyPlace,
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
            turn_key,
            reply,
            writes: Mutex::new(Vec::new()),
            outbox: Mutex::new(Vec::new()),
            schedules: Mutex::new(Vec::new()),
            calls: AtomicU32::new(0),
        }
    }

    pub fn write(&self, write: MemoryWrite) {
        self.writes.lock().expect("memory writes lock").push(write);
    }

    pub fn take_writes(&self) -> Vec<MemoryWrite> {
        std::mem::take(&mut *self.writes.lock().expect("memory writes lock"))
    }

    /// Plans a message for the turn's commit; false when one to that connector
    /// is already planned (a turn makes one delivery per connector).
    pub fn send(&self, message: send::Outbound) -> bool {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if outbox
            .iter()
            .any(|m| m.connector_id == message.connector_id)
        {
            return false;
        }
        outbox.push(message);
        true
    }

    /// The messages the turn's tools planned.
    pub fn take_outbox(&self) -> Vec<send::Outbound> {
        std::mem::take(&mut *self.outbox.lock().expect("outbox lock"))
    }

    /// Schedules a message with the turn's commit (`schedule_message`).
    pub fn schedule(&self, message: crate::store::PlannedSchedule) {
        self.schedules.lock().expect("schedules lock").push(message);
    }

    /// The messages the turn's tools scheduled.
    pub fn take_schedules(&self) -> Vec<crate::store::PlannedSchedule> {
        std::mem::take(&mut *self.schedules.lock().expect("schedules lock"))
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
        send::NAME => Some(Arc::new(send::SendMessage)),
        schedule::SCHEDULE => Some(Arc::new(schedule::ScheduleMessage)),
        schedule::LIST => Some(Arc::new(schedule::ListScheduled)),
        schedule::CANCEL => Some(Arc::new(schedule::CancelScheduled)),
        _ => None,
    }
}

pub const BUILTIN: &[&str] = &[
    clock::NAME,
    memory::REMEMBER,
    memory::RECALL,
    memory::FORGET,
    link::NAME,
    send::NAME,
    schedule::SCHEDULE,
    schedule::LIST,
    schedule::CANCEL,
];

/// The tools of one agent.
#[derive(Clone)]
pub struct Toolbox {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    mcp: Vec<Arc<mcp::McpServer>>,
    max_calls: u32,
    max_result_chars: usize,
}

impl Default for Toolbox {
    /// No tools.
    fn default() -> Self {
        let limits = ToolsConfig::default();
        Self {
            tools: BTreeMap::new(),
            mcp: Vec::new(),
            max_calls: limits.max_calls_per_turn,
            max_result_chars: limits.max_result_chars,
        }
    }
}

impl Toolbox {
    /// The built-in tools `agent.tools` names and the agent's HTTP functions,
    /// which reach out through `http`, the client `egress` built.
    pub fn for_agent(
        agent: &AgentConfig,
        config: &ToolsConfig,
        egress: &egress::Egress,
        http: &reqwest::Client,
    ) -> Self {
        let mut tools: BTreeMap<String, Arc<dyn Tool>> = agent
            .tools
            .iter()
            .filter_map(|name| builtin(name).map(|tool| (name.clone(), tool)))
            .collect();
        for config_fn in &agent.functions {
            if let Some(tool) = function::FunctionTool::new(
                &agent.name,
                config_fn,
                config.default_timeout.0,
                egress,
                http.clone(),
            ) {
                tools.insert(config_fn.name.clone(), Arc::new(tool));
            }
        }
        let mcp = agent
            .mcp_servers
            .iter()
            .map(|server| {
                Arc::new(mcp::McpServer::new(
                    server,
                    config.default_timeout.0,
                    egress,
                    http.clone(),
                ))
            })
            .collect();
        Self {
            tools,
            mcp,
            max_calls: config.max_calls_per_turn,
            max_result_chars: config.max_result_chars,
        }
    }

    /// The model's message as the session's tool history keeps it: tool call
    /// arguments longer than `tools.max_result_chars` are replaced by a note with
    /// their beginning (the call itself ran with the whole arguments).
    pub fn for_history(&self, message: &crate::providers::Message) -> crate::providers::Message {
        let mut kept = message.clone();
        for part in &mut kept.parts {
            if let crate::providers::Part::ToolCall(call) = part {
                let text = call.arguments.to_string();
                if text.chars().count() > self.max_result_chars {
                    let head: String = text.chars().take(self.max_result_chars / 2).collect();
                    call.arguments = serde_json::json!({
                        "_cut": format!("arguments of {} characters; they began: {head}", text.chars().count())
                    });
                }
            }
        }
        kept
    }

    /// What the model is offered: the agent's tools and its MCP servers' tools
    /// (listed from each server, cached).
    pub async fn specs(&self) -> Vec<ToolSpec> {
        let mut specs: Vec<ToolSpec> = self.tools.values().map(|tool| tool.spec()).collect();
        for server in &self.mcp {
            specs.extend(server.tool_specs().await);
        }
        specs
    }

    /// The tool the model called by `name`: one of the agent's, or an MCP
    /// server's (`<server>__<tool>`).
    fn find(&self, name: &str) -> Option<Arc<dyn Tool>> {
        if let Some(tool) = self.tools.get(name) {
            return Some(tool.clone());
        }
        let (server, tool) = name.split_once(mcp::SEPARATOR)?;
        let server = self.mcp.iter().find(|s| s.name() == server)?;
        Some(Arc::new(mcp::McpTool {
            server: server.clone(),
            tool: tool.to_owned(),
        }))
    }

    pub async fn run(&self, call: &ToolCall, scope: &TurnScope) -> ToolResult {
        let position = scope.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (content, is_error) = match self.find(&call.name) {
            _ if position > self.max_calls => (
                format!(
                    "this turn already made {} tool calls, the most allowed; answer with what you have",
                    self.max_calls
                ),
                true,
            ),
            None => (format!("there is no tool named `{}`", call.name), true),
            Some(tool) => {
                let key = call_key(scope.turn_key, position, call);
                self.call_once(tool.as_ref(), call, scope, &key).await
            }
        };
        ToolResult {
            call_id: call.id.clone(),
            content,
            is_error,
        }
    }

    /// Runs a call, or for a durable tool reuses the result an earlier run of
    /// this turn recorded.
    async fn call_once(
        &self,
        tool: &dyn Tool,
        call: &ToolCall,
        scope: &TurnScope,
        key: &str,
    ) -> (String, bool) {
        if tool.durable() {
            match scope.store.tool_result(key).await {
                Ok(Some(recorded)) => {
                    tracing::info!(tool = %call.name, %key, "tool result reused from an earlier run of this turn");
                    return recorded;
                }
                Ok(None) => {}
                Err(e) => {
                    return (
                        format!("the tool cannot run now (its results cannot be recorded): {e}"),
                        true,
                    );
                }
            }
        }
        let (mut content, is_error) = match tool.call(&call.arguments, scope, key).await {
            Ok(content) => (content, false),
            Err(error) => (error, true),
        };
        if content.chars().count() > self.max_result_chars {
            content = content
                .chars()
                .take(self.max_result_chars)
                .collect::<String>()
                + " [cut: the result was longer]";
        }
        if tool.durable()
            && let Err(e) = scope
                .store
                .record_tool_result(key, &call.name, &content, is_error)
                .await
        {
            tracing::error!(tool = %call.name, %key, error = %e, "could not record a tool result; a rerun of this turn would call the tool again");
        }
        (content, is_error)
    }
}

/// The idempotency key of a call: the turn, the call's position in it, the tool
/// and its arguments. A rerun making the same calls gets the same keys.
fn call_key(turn_key: Uuid, position: u32, call: &ToolCall) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(turn_key.as_bytes());
    hash.update(position.to_be_bytes());
    hash.update(call.name.as_bytes());
    hash.update([0]);
    hash.update(call.arguments.to_string().as_bytes());
    let digest = hash.finalize();
    format!(
        "call_{}",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Message, Part, Role};

    #[test]
    fn long_tool_arguments_are_cut_in_the_stored_history() {
        let toolbox = Toolbox {
            max_result_chars: 40,
            ..Toolbox::default()
        };
        let call = |arguments: Value| Message {
            role: Role::Assistant,
            parts: vec![Part::ToolCall(ToolCall {
                id: "c1".into(),
                name: "lookup".into(),
                arguments,
            })],
        };
        let short = call(serde_json::json!({"q": "ok"}));
        assert_eq!(toolbox.for_history(&short), short);
        let long = call(serde_json::json!({"q": "x".repeat(500)}));
        let Part::ToolCall(kept) = &toolbox.for_history(&long).parts[0] else {
            panic!("still a tool call");
        };
        let note = kept.arguments["_cut"].as_str().unwrap();
        assert!(note.starts_with("arguments of 508 characters"), "{note}");
        assert!(note.len() < 120);
        assert_eq!(kept.id, "c1");
    }
}
