//! Compaction: keeps a session's verbatim window small by folding its oldest
//! messages into the rolling summary, with the model.
//!
//! Runs in the worker right after a turn committed (its reply is already queued
//! for delivery), still under the session lease, when more than
//! `memory.compact_after` messages follow the summary mark: the turn's commit
//! counts them ([`check`]) and keeps the lease only then, releasing it with the
//! commit otherwise. It folds all but the
//! newest `memory.keep_recent` messages, cutting only just before a user message,
//! so a tool call and its result always stay on the same side. The new summary and
//! mark are written fenced by the lease: a worker that lost the session writes
//! nothing. When the model fails, nothing changes and the next turn tries again.
//! Folded messages stay in the transcript, searchable as long-term memory.

use crate::{
    config::MemoryConfig,
    deployment::Deployment,
    providers::{ChatRequest, Message, Part, Role},
    store::{CompactionCheck, HistoryMessage, Lease, SessionInfo, StoreError},
};

/// Characters of one message given to the summarizer at most.
const MESSAGE_CHARS: usize = 2_000;

const INSTRUCTIONS: &str = "You maintain the running summary of a conversation between \
a user and an assistant. Rewrite the summary so it also covers the new messages. Keep \
names, facts about the people, decisions, commitments, open questions and what tools \
returned; drop small talk. Write at most 250 words of plain prose. Reply with the \
summary only.";

/// How many of `unsummarized` (oldest first) to fold so that at least
/// `keep_recent` stay verbatim and the kept part starts at a user message; None
/// when no such cut exists.
pub fn fold_count(
    unsummarized: &[HistoryMessage],
    total: usize,
    keep_recent: usize,
) -> Option<usize> {
    let target = total
        .checked_sub(keep_recent)?
        .min(unsummarized.len().saturating_sub(1));
    (1..=target).rev().find(|&k| unsummarized[k].role == "user")
}

/// The check a turn's commit makes for [`compact_if_needed`] (the commit keeps
/// the lease when compaction is due).
pub fn check(config: &MemoryConfig, session: &SessionInfo) -> CompactionCheck {
    CompactionCheck {
        transcript_id: session.transcript_id,
        summarized_through: session.summarized_through,
        compact_after: config.compact_after,
    }
}

/// Folds the oldest messages of the session's transcript into its summary when
/// the session outgrew `memory.compact_after`, given the `total` of messages
/// after the summary mark its turn's commit counted. Returns whether it did.
pub async fn compact_if_needed(
    deployment: &Deployment,
    route: &str,
    lease: Lease,
    session: &SessionInfo,
    total: i64,
    trace_id: &str,
) -> Result<bool, StoreError> {
    let (store, router, config) = (
        &deployment.store,
        &deployment.router,
        &deployment.settings.memory,
    );
    if total <= config.compact_after {
        return Ok(false);
    }
    let total = total as usize;
    let keep = config.keep_recent as usize;
    // One past the target, to see where the kept part would start.
    let window = store
        .oldest_unsummarized(
            session.transcript_id,
            session.summarized_through,
            (total - keep + 1) as i64,
        )
        .await?;
    let Some(count) = fold_count(&window, total, keep) else {
        return Ok(false);
    };
    let folded = &window[..count];
    let through = folded.last().map_or(0, |m| m.id);
    let request = ChatRequest {
        system: Some(INSTRUCTIONS.into()),
        messages: vec![Message::text(
            Role::User,
            transcript(&session.summary, folded),
        )],
        tools: Vec::new(),
        trace_id: trace_id.to_owned(),
    };
    let outcome = router.complete(route, &request).await;
    let summary = match outcome.result {
        Ok(response) if !response.text().trim().is_empty() => response.text(),
        Ok(_) => {
            tracing::warn!("the summarizer returned nothing; compaction waits for the next turn");
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(error = %e, "summarizing failed; compaction waits for the next turn");
            return Ok(false);
        }
    };
    let saved = store
        .save_summary(
            lease,
            session.transcript_id,
            (&session.summary, session.summarized_through),
            summary.trim(),
            through,
        )
        .await?;
    if saved {
        tracing::info!(folded = count, through, "session compacted");
    }
    Ok(saved)
}

/// The summarizer's input: the summary so far and the messages to fold in.
fn transcript(summary: &str, messages: &[HistoryMessage]) -> String {
    let mut out = String::new();
    if !summary.is_empty() {
        out.push_str("Summary so far:\n");
        out.push_str(summary);
        out.push_str("\n\n");
    }
    out.push_str("New messages:\n");
    for message in messages {
        let text = match message.to_message() {
            Some(m) => m
                .parts
                .iter()
                .map(|part| match part {
                    Part::Text { text } => text.clone(),
                    Part::Image { url } => format!("[image {url}]"),
                    Part::ToolCall(call) => format!("[called {}({})]", call.name, call.arguments),
                    Part::ToolResult(result) => format!("[tool result: {}]", result.content),
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => message.content.clone(),
        };
        let text: String = text.chars().take(MESSAGE_CHARS).collect();
        out.push_str(&format!("{}: {}\n", message.role, text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: i64, role: &str) -> HistoryMessage {
        HistoryMessage {
            id,
            role: role.into(),
            content: format!("{role} {id}"),
            parts: None,
        }
    }

    #[test]
    fn the_cut_falls_before_a_user_message_and_keeps_the_newest() {
        // user, assistant(tool call), tool, assistant, user, assistant, user, assistant
        let roles = [
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
        ];
        let all: Vec<HistoryMessage> = roles
            .iter()
            .enumerate()
            .map(|(i, r)| m(i as i64 + 1, r))
            .collect();
        // Keep 3: the target is 5 folded; message 6 (index 5) is an assistant, so
        // the cut moves back to index 4 (a user message).
        assert_eq!(fold_count(&all[..6], 8, 3), Some(4));
        // Keep 5: target 3 lands inside the tool exchange (index 3 is an
        // assistant); the only earlier user boundary is index 0: nothing to fold.
        assert_eq!(fold_count(&all[..4], 8, 5), None);
        // Keeping everything folds nothing.
        assert_eq!(fold_count(&all, 8, 8), None);
    }
}
