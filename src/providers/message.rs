//! The one internal message model every provider translates to and from.
//!
//! A conversation is a list of [`Message`]s, each a role and its [`Part`]s: text,
//! images by URL, tool calls (arguments always a JSON object) and tool results.
//! The system prompt is a separate field of the request, as Anthropic has it;
//! OpenAI's adapter puts it first. Tool results are their own `Tool` messages here;
//! each adapter regroups them the way its wire format wants. Messages are stored in
//! this shape (as JSON) so the tool history follows the user across providers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// Results of the tool calls of the preceding assistant message.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(role: &str) -> Option<Self> {
        match role {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    /// An image the model fetches by URL (models with vision).
    Image {
        url: String,
    },
    ToolCall(ToolCall),
    ToolResult(ToolResult),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    #[serde(default)]
    pub is_error: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            parts: vec![Part::Text { text: text.into() }],
        }
    }

    /// The text parts, joined.
    pub fn joined_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.parts.iter().filter_map(|p| match p {
            Part::ToolCall(call) => Some(call),
            _ => None,
        })
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub schema: Value,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A final answer.
    EndTurn,
    /// It wants the tool calls in its message run.
    ToolUse,
    /// The answer was cut at the token limit.
    MaxTokens,
    /// Withheld or refused.
    ContentFilter,
    Other(String),
}

/// Tool-call arguments as a JSON object, whatever the server sent: an empty
/// string is `{}`, unparsable text is kept under `_raw`.
pub fn arguments_object(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Default::default());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => serde_json::json!({ "_raw": other }),
        Err(_) => serde_json::json!({ "_raw": raw }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_are_always_objects() {
        assert_eq!(arguments_object(""), json!({}));
        assert_eq!(arguments_object("  "), json!({}));
        assert_eq!(arguments_object(r#"{"tz":"UTC"}"#), json!({"tz": "UTC"}));
        assert_eq!(arguments_object("not json"), json!({"_raw": "not json"}));
        assert_eq!(arguments_object("[1]"), json!({"_raw": [1]}));
    }

    #[test]
    fn parts_serialize_with_a_type_tag() {
        let message = Message {
            role: Role::Assistant,
            parts: vec![
                Part::Text {
                    text: "checking".into(),
                },
                Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "current_time".into(),
                    arguments: json!({"timezone": "UTC"}),
                }),
            ],
        };
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(
            value,
            json!({"role": "assistant", "parts": [
                {"type": "text", "text": "checking"},
                {"type": "tool_call", "id": "c1", "name": "current_time", "arguments": {"timezone": "UTC"}}
            ]})
        );
        assert_eq!(serde_json::from_value::<Message>(value).unwrap(), message);
    }
}
