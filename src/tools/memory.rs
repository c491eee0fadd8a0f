//! `remember`, `recall` and `forget`: the model's hands on the memory layers.
//!
//! `remember` and `forget` do not write at once: they add to the turn's memory
//! writes, which commit in the turn's transaction (a turn that is fenced or rerun
//! after a crash writes nothing twice). They act only within the turn's scope: the
//! person who sent the last message and, in a group, its conversation.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};

use super::{Tool, TurnScope, string_argument};
use crate::{memory::search_terms, providers::ToolSpec, store::MemoryWrite};

pub const REMEMBER: &str = "remember";
pub const RECALL: &str = "recall";
pub const FORGET: &str = "forget";

/// Longest fact or note kept, in characters.
const MAX_FACT_CHARS: usize = 500;

pub struct Remember;

impl Tool for Remember {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: REMEMBER.into(),
            description: "Store a lasting fact about the person you are talking to (name, \
                          preferences, commitments), or, in a group conversation, a note about \
                          the conversation (its purpose, standing instructions)."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "fact": {"type": "string", "description": "One short, self-contained statement"},
                    "about": {"type": "string", "enum": ["person", "conversation"],
                              "description": "person (default) or conversation"}
                },
                "required": ["fact"],
                "additionalProperties": false
            }),
        }
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        scope: &'a TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move {
            let fact = string_argument(arguments, "fact")?;
            if fact.chars().count() > MAX_FACT_CHARS {
                return Err(format!("a fact is at most {MAX_FACT_CHARS} characters"));
            }
            let about = arguments
                .get("about")
                .and_then(Value::as_str)
                .unwrap_or("person");
            let write = match about {
                "person" => MemoryWrite::Fact {
                    about_event: scope.memory.person_event.ok_or(
                        "facts about people can't be stored here (facts are off in this group, \
                         or these messages come from several people)",
                    )?,
                    content: fact.to_owned(),
                },
                "conversation" => MemoryWrite::Note {
                    conversation_key: scope.memory.conversation_key.clone().ok_or(
                        "conversation notes are for group conversations; use about=person",
                    )?,
                    content: fact.to_owned(),
                },
                other => return Err(format!("`about` is person or conversation, not `{other}`")),
            };
            scope.write(write);
            Ok(format!("Remembered: {fact}"))
        }
        .boxed()
    }
}

pub struct Recall;

impl Tool for Recall {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: RECALL.into(),
            description: "Search long-term memory: stored facts and notes, and earlier messages \
                          of this conversation."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for"}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        scope: &'a TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move {
            let terms = search_terms(string_argument(arguments, "query")?);
            if terms.is_empty() {
                return Err("the query has no words to search for".into());
            }
            let store_error = |e: crate::store::StoreError| format!("memory is unavailable: {e}");
            let memories = scope
                .store
                .search_memories(
                    &terms,
                    scope.memory.person_id(),
                    scope.memory.conversation_key.as_deref(),
                    10,
                )
                .await
                .map_err(store_error)?;
            let messages = scope
                .store
                .search_messages(&terms, scope.transcript_id, i64::MAX, 10)
                .await
                .map_err(store_error)?;
            if memories.is_empty() && messages.is_empty() {
                return Ok("Nothing found.".into());
            }
            let mut out = Vec::new();
            for item in memories {
                out.push(format!("[{}] {}", item.handle(), item.content));
            }
            for message in messages {
                out.push(format!(
                    "({} {}) {}",
                    message.created_at.format("%Y-%m-%d %H:%M"),
                    message.role,
                    message.content
                ));
            }
            Ok(out.join("\n"))
        }
        .boxed()
    }
}

pub struct Forget;

impl Tool for Forget {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: FORGET.into(),
            description: "Delete a stored fact or note, by the id shown in brackets before it."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "The id in brackets, e.g. 3f2a91c04d5e"}
                },
                "required": ["id"],
                "additionalProperties": false
            }),
        }
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        scope: &'a TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move {
            let handle = string_argument(arguments, "id")?;
            let item = scope
                .store
                .find_memory(
                    handle.trim_matches(|c| c == '[' || c == ']'),
                    scope.memory.person_id(),
                    scope.memory.conversation_key.as_deref(),
                )
                .await
                .map_err(|e| format!("memory is unavailable: {e}"))?
                .ok_or_else(|| format!("no fact or note has the id `{handle}`"))?;
            scope.write(MemoryWrite::Forget { id: item.id });
            Ok(format!("Forgotten: {}", item.content))
        }
        .boxed()
    }
}
