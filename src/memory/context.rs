//! Context assembly: the memory layers fitted into the model's window.
//!
//! The budget is the route's smallest context window minus its largest reply
//! reserve (`max_tokens`), the agent's instructions, the tool definitions and the
//! messages being answered (those always go in). Each memory layer may use its
//! configured share of that budget (`memory.*_share`); the recent turns get what
//! is left, newest first. What does not fit is dropped, oldest first within a
//! layer, and the drops are logged. The recent window always starts at a user
//! message, so a tool call is never cut from its result.

use crate::{
    config::MemoryConfig,
    providers::{Message, Part, ToolSpec},
    store::HistoryMessage,
};

use super::{Layers, tokens::Tokenizer};

/// The model's room for a turn, and how its tokens are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub context_window: u64,
    pub reply_reserve: u64,
    pub tokenizer: Tokenizer,
}

/// A turn's system prompt and conversation, with what was dropped to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    pub system: String,
    /// History then the messages being answered.
    pub messages: Vec<Message>,
    pub dropped: Dropped,
    /// Estimated prompt tokens.
    pub tokens: u64,
}

/// Items left out to fit the budget, by layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub notes: usize,
    pub facts: usize,
    pub recalled: usize,
    pub summary_chars: usize,
    pub recent: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        *self != Dropped::default()
    }
}

/// Tokens of one message as sent (content plus a few for its framing).
pub fn message_tokens(tokenizer: Tokenizer, message: &Message) -> u64 {
    let count = |text: &str| tokenizer.count(text);
    4 + message
        .parts
        .iter()
        .map(|part| match part {
            Part::Text { text } => count(text),
            Part::Image { .. } => 1_000,
            Part::ToolCall(call) => count(&call.name) + count(&call.arguments.to_string()),
            Part::ToolResult(result) => count(&result.content),
        })
        .sum::<u64>()
}

fn tool_tokens(tokenizer: Tokenizer, tools: &[ToolSpec]) -> u64 {
    let count = |text: &str| tokenizer.count(text);
    tools
        .iter()
        .map(|t| count(&t.name) + count(&t.description) + count(&t.schema.to_string()))
        .sum()
}

/// Adds `lines` under `heading` while they fit `room` tokens, keeping the newest
/// (last) ones; returns the tokens used and how many were dropped.
fn section(
    tokenizer: Tokenizer,
    out: &mut String,
    heading: &str,
    lines: &[String],
    room: u64,
) -> (u64, usize) {
    let count = |text: &str| tokenizer.count(text);
    if lines.is_empty() {
        return (0, 0);
    }
    let mut used = count(heading) + 2;
    let mut kept = Vec::new();
    for line in lines.iter().rev() {
        let cost = count(line) + 1;
        if used + cost > room {
            break;
        }
        used += cost;
        kept.push(line.as_str());
    }
    if kept.is_empty() {
        return (0, lines.len());
    }
    out.push_str("\n\n");
    out.push_str(heading);
    for line in kept.iter().rev() {
        out.push('\n');
        out.push_str(line);
    }
    (used, lines.len() - kept.len())
}

/// Fits the layers and the messages being answered (`current`) into `budget`.
pub fn assemble(
    instructions: &str,
    tools: &[ToolSpec],
    layers: &Layers,
    current: Vec<Message>,
    budget: Budget,
    config: &MemoryConfig,
) -> Assembled {
    let tokenizer = budget.tokenizer;
    let count = |text: &str| tokenizer.count(text);
    let message_tokens = |m: &Message| message_tokens(tokenizer, m);
    let fixed = count(instructions)
        + tool_tokens(tokenizer, tools)
        + current.iter().map(message_tokens).sum::<u64>();
    let available = budget
        .context_window
        .saturating_sub(budget.reply_reserve)
        .saturating_sub(fixed);
    let share = |s: f64| (available as f64 * s) as u64;
    let mut system = instructions.to_owned();
    let mut used = 0;
    let mut dropped = Dropped::default();

    let notes: Vec<String> = layers
        .notes
        .iter()
        .map(|n| format!("- [{}] {}", n.handle(), n.content))
        .collect();
    let (tokens, n) = section(
        tokenizer,
        &mut system,
        "## Notes about this conversation",
        &notes,
        share(config.notes_share),
    );
    used += tokens;
    dropped.notes = n;

    let facts_room = share(config.facts_share) / layers.people.len().max(1) as u64;
    for person in &layers.people {
        let lines: Vec<String> = person
            .facts
            .iter()
            .map(|f| format!("- [{}] {}", f.handle(), f.content))
            .collect();
        let (tokens, n) = section(
            tokenizer,
            &mut system,
            &format!(
                "## What you know about {} (use only when answering them)",
                person.name
            ),
            &lines,
            facts_room,
        );
        used += tokens;
        dropped.facts += n;
    }

    // Best first: keep the best, so reverse into "newest last" order for `section`.
    let recalled: Vec<String> = layers
        .recalled_memories
        .iter()
        .map(|m| format!("- [{}] {}", m.handle(), m.content))
        .chain(layers.recalled_messages.iter().map(|m| {
            format!(
                "- ({} {}) {}",
                m.created_at.format("%Y-%m-%d"),
                m.role,
                m.content
            )
        }))
        .rev()
        .collect();
    let (tokens, n) = section(
        tokenizer,
        &mut system,
        "## Recalled from earlier conversations and notes",
        &recalled,
        share(config.recall_share),
    );
    used += tokens;
    dropped.recalled = n;

    if !layers.summary.is_empty() {
        let room = share(config.summary_share);
        let mut summary = layers.summary.as_str();
        // Keep the summary's end (the most recent) when it is too long.
        while count(summary) > room && !summary.is_empty() {
            let cut = summary.len() - summary.len() * 9 / 10;
            let mut at = cut.max(1);
            while !summary.is_char_boundary(at) {
                at += 1;
            }
            summary = &summary[at..];
        }
        dropped.summary_chars = layers.summary.len() - summary.len();
        if !summary.is_empty() {
            system.push_str("\n\n## Summary of the conversation so far\n");
            system.push_str(summary);
            used += count(summary) + 8;
        }
    }

    let mut room = available.saturating_sub(used);
    let mut start = layers.recent.len();
    for (index, message) in layers.recent.iter().enumerate().rev() {
        let Some(message) = message.to_message() else {
            continue;
        };
        let cost = message_tokens(&message);
        if cost > room {
            break;
        }
        room -= cost;
        start = index;
    }
    let window = start_at_user(&layers.recent[start..]);
    dropped.recent = layers.recent.len() - window.len();
    let mut messages: Vec<Message> = window
        .iter()
        .filter_map(HistoryMessage::to_message)
        .collect();
    messages.extend(current);
    let tokens = count(&system)
        + tool_tokens(tokenizer, tools)
        + messages.iter().map(message_tokens).sum::<u64>();
    Assembled {
        system,
        messages,
        dropped,
        tokens,
    }
}

/// The messages from the first user message on: a window that cut a tool call
/// from its result drops both.
pub fn start_at_user(history: &[HistoryMessage]) -> &[HistoryMessage] {
    let first = history
        .iter()
        .position(|m| m.role == "user")
        .unwrap_or(history.len());
    &history[first..]
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::{memory::PersonFacts, providers::Role, store::MemoryItem};

    fn text(id: i64, role: &str, content: &str) -> HistoryMessage {
        HistoryMessage {
            id,
            role: role.into(),
            content: content.into(),
            parts: None,
        }
    }

    fn item(content: &str) -> MemoryItem {
        MemoryItem {
            id: Uuid::now_v7(),
            content: content.into(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn every_layer_appears_when_it_fits() {
        let layers = Layers {
            notes: vec![item("this channel plans the offsite")],
            people: vec![PersonFacts {
                name: "Ada".into(),
                facts: vec![item("prefers tea")],
            }],
            summary: "They discussed the budget.".into(),
            recent: vec![text(1, "user", "hi"), text(2, "assistant", "hello")],
            ..Layers::default()
        };
        let assembled = assemble(
            "Be brief.",
            &[],
            &layers,
            vec![Message::text(Role::User, "what do I drink?")],
            Budget {
                context_window: 8_000,
                reply_reserve: 1_000,
                tokenizer: Tokenizer::O200kBase,
            },
            &MemoryConfig::default(),
        );
        for expected in [
            "Be brief.",
            "this channel plans the offsite",
            "What you know about Ada",
            "prefers tea",
            "They discussed the budget.",
        ] {
            assert!(assembled.system.contains(expected), "{}", assembled.system);
        }
        assert_eq!(assembled.messages.len(), 3);
        assert!(!assembled.dropped.any());
    }

    #[test]
    fn a_small_window_keeps_the_newest_turns_and_drops_the_rest() {
        let recent: Vec<HistoryMessage> = (0..200)
            .map(|i| {
                text(
                    i,
                    if i % 2 == 0 { "user" } else { "assistant" },
                    &format!("message number {i} with some words in it"),
                )
            })
            .collect();
        let layers = Layers {
            recent,
            ..Layers::default()
        };
        let assembled = assemble(
            "",
            &[],
            &layers,
            vec![Message::text(Role::User, "latest")],
            Budget {
                context_window: 1_000,
                reply_reserve: 200,
                tokenizer: Tokenizer::Estimate,
            },
            &MemoryConfig::default(),
        );
        assert!(assembled.tokens <= 800, "{}", assembled.tokens);
        assert!(assembled.dropped.recent > 0);
        assert_eq!(assembled.messages[0].role, Role::User);
        assert_eq!(
            assembled.messages[assembled.messages.len() - 2].joined_text(),
            "message number 199 with some words in it"
        );
    }
}
