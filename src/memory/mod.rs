//! Layered memory: what a turn knows beyond the messages it answers.
//!
//! * **session**: the transcript's recent messages verbatim after its rolling
//!   summary ([`compaction`] folds older messages into the summary once a session
//!   outgrows `memory.compact_after`, never splitting a tool call from its result);
//! * **user**: facts about one person, shared by all their accounts and sessions;
//! * **conversation**: notes about one group conversation;
//! * **long-term**: every stored fact and the whole transcript, searched by full
//!   text (Postgres `tsvector`, SQLite FTS5); the best matches for the messages
//!   being answered are recalled into the turn.
//!
//! [`rehydrate`] reads the layers with a fixed number of bounded, indexed queries,
//! so its cost does not grow with the length of the history; [`context`] fits them
//! into the model's window. The model writes facts and notes through tools
//! (`tools::memory`); those writes commit in the turn's transaction.
//!
//! Isolation: a direct session sees its own person's facts. A group turn sees the
//! conversation's notes and, with `group_user_facts = "sender"`, the facts of the
//! people whose messages it answers, each under that person's name; never anyone
//! else's.

pub mod compaction;
pub mod context;
pub mod tokens;

use uuid::Uuid;

use crate::{
    config::{GroupFacts, MemoryConfig},
    store::{
        HistoryMessage, MemoryItem, PendingEvent, RecalledMessage, SessionInfo, Store, StoreError,
    },
};

/// The facts about one person in this turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonFacts {
    pub name: String,
    pub facts: Vec<MemoryItem>,
}

/// Everything a turn's context is assembled from.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub notes: Vec<MemoryItem>,
    pub people: Vec<PersonFacts>,
    /// Recalled facts and notes (those already in `people` or `notes` left out).
    pub recalled_memories: Vec<MemoryItem>,
    pub recalled_messages: Vec<RecalledMessage>,
    pub summary: String,
    /// The transcript's newest messages after the summary, oldest first.
    pub recent: Vec<HistoryMessage>,
}

/// Whose facts and which notes a turn may use (see the module's isolation rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryScope {
    /// The people whose facts the turn sees, with the name to show them under.
    pub people: Vec<(Uuid, String)>,
    /// The person `remember` and `recall` act for: the sender of the last message.
    pub person: Option<Uuid>,
    pub conversation_key: Option<String>,
}

impl MemoryScope {
    pub fn of(session: &SessionInfo, events: &[PendingEvent], config: &MemoryConfig) -> Self {
        let last = events.last();
        let name = |e: &PendingEvent| e.sender_name.clone().unwrap_or_else(|| e.sender_id.clone());
        if !session.is_group {
            let person = session.identity_id.or(last.and_then(|e| e.identity_id));
            return Self {
                people: person.zip(last.map(name)).into_iter().collect(),
                person,
                conversation_key: None,
            };
        }
        let mut people: Vec<(Uuid, String)> = Vec::new();
        if config.group_user_facts == GroupFacts::Sender {
            for event in events {
                if let Some(id) = event.identity_id
                    && !people.iter().any(|(known, _)| *known == id)
                {
                    people.push((id, name(event)));
                }
            }
        }
        Self {
            people,
            person: match config.group_user_facts {
                GroupFacts::Sender => last.and_then(|e| e.identity_id),
                GroupFacts::Off => None,
            },
            conversation_key: session.conversation_key.clone(),
        }
    }
}

/// Reads the memory layers for a turn over `events`, given the session's recent
/// history (already read, see `Store::recent_history`).
pub async fn rehydrate(
    store: &Store,
    config: &MemoryConfig,
    session: &SessionInfo,
    scope: &MemoryScope,
    events: &[PendingEvent],
    recent: Vec<HistoryMessage>,
) -> Result<Layers, StoreError> {
    let notes = match &scope.conversation_key {
        Some(key) => store.notes(key, config.max_facts).await?,
        None => Vec::new(),
    };
    let mut people = Vec::with_capacity(scope.people.len());
    for (id, name) in &scope.people {
        people.push(PersonFacts {
            name: name.clone(),
            facts: store.facts(*id, config.max_facts).await?,
        });
    }
    let query: String = events
        .iter()
        .map(|e| e.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let terms = search_terms(&query);
    let known: Vec<Uuid> = notes
        .iter()
        .chain(people.iter().flat_map(|p| &p.facts))
        .map(|item| item.id)
        .collect();
    let recalled_memories = store
        .search_memories(
            &terms,
            scope.person,
            scope.conversation_key.as_deref(),
            config.recall_items,
        )
        .await?
        .into_iter()
        .filter(|item| !known.contains(&item.id))
        .collect();
    // Only what the context does not already hold verbatim.
    let before_id = recent
        .first()
        .map_or(session.summarized_through + 1, |m| m.id);
    let recalled_messages = store
        .search_messages(
            &terms,
            session.transcript_id,
            before_id,
            config.recall_items,
        )
        .await?;
    Ok(Layers {
        notes,
        people,
        recalled_memories,
        recalled_messages,
        summary: session.summary.clone(),
        recent,
    })
}

/// Words of `text` worth searching for: letters and digits, lowercased, three
/// characters or more, without common English stop words; at most 16, in order.
pub fn search_terms(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "are", "but", "not", "you", "your", "all", "any", "can", "had", "her",
        "was", "one", "our", "out", "has", "him", "his", "how", "its", "may", "now", "she", "who",
        "did", "yes", "let", "say", "too", "use", "what", "when", "where", "which", "why", "with",
        "this", "that", "from", "have", "they", "them", "then", "there", "these", "those", "will",
        "would", "could", "should", "about", "into", "just", "than", "been", "were", "does",
        "some", "tell", "know", "please", "thanks",
    ];
    let mut terms: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        let word = word.to_lowercase();
        if word.chars().count() >= 3 && !STOP.contains(&word.as_str()) && !terms.contains(&word) {
            terms.push(word);
            if terms.len() == 16 {
                break;
            }
        }
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_keep_content_words_once() {
        assert_eq!(
            search_terms("What is my dog's name? My DOG is called Rex."),
            ["dog", "name", "called", "rex"]
        );
        assert!(search_terms("is it ok?").is_empty());
        assert_eq!(search_terms("東京の天気"), ["東京の天気"]);
    }
}
