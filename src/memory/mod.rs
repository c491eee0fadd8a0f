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
//! person whose messages it answers, under their name, only when all of them come
//! from that one person (a reply the whole group reads never carries several
//! people's facts); never anyone else's.

pub mod compaction;
pub mod context;
pub mod tokens;

use uuid::Uuid;

use crate::{
    config::{GroupFacts, MemoryConfig},
    store::{
        HistoryMessage, LayerReads, MemoryItem, PendingEvent, RecalledMessage, SessionInfo, Store,
        StoreError,
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
    /// The person whose facts the turn sees, with the name to show them under.
    pub person: Option<(Uuid, String)>,
    /// An event of that person: `remember` writes facts about its sender, so a
    /// merge during the turn is followed (see `MemoryWrite::Fact`).
    pub person_event: Option<Uuid>,
    pub conversation_key: Option<String>,
}

impl MemoryScope {
    /// A direct session acts for its person. A group turn acts for its sender when
    /// every message it answers comes from one person (and `group_user_facts` is
    /// `sender`); a turn answering several people at once, whose reply all of them
    /// read, uses no one's facts.
    pub fn of(session: &SessionInfo, events: &[PendingEvent], config: &MemoryConfig) -> Self {
        let Some(last) = events.last() else {
            return Self {
                person: None,
                person_event: None,
                conversation_key: session.conversation_key.clone(),
            };
        };
        let name = last
            .sender_name
            .clone()
            .unwrap_or_else(|| last.sender_id.clone());
        if !session.is_group {
            return Self {
                person: session
                    .identity_id
                    .or(last.identity_id)
                    .map(|id| (id, name)),
                person_event: Some(last.id),
                conversation_key: None,
            };
        }
        let one_sender = events.iter().all(|e| e.identity_id == last.identity_id);
        let person = match config.group_user_facts {
            GroupFacts::Sender if one_sender => last.identity_id.map(|id| (id, name)),
            _ => None,
        };
        Self {
            person_event: person.as_ref().map(|_| last.id),
            person,
            conversation_key: session.conversation_key.clone(),
        }
    }

    pub fn person_id(&self) -> Option<Uuid> {
        self.person.as_ref().map(|(id, _)| *id)
    }
}

/// Reads the memory layers for a turn over `events`: the session's newest
/// `history_limit` messages after its summary, the scope's facts and notes, and
/// what the long-term recall finds for the events' words (two statements on
/// Postgres, see `Store::memory_layers`).
pub async fn rehydrate(
    store: &Store,
    config: &MemoryConfig,
    session: &SessionInfo,
    scope: &MemoryScope,
    events: &[PendingEvent],
    history_limit: i64,
) -> Result<Layers, StoreError> {
    let query: String = events
        .iter()
        .map(|e| e.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let terms = search_terms(&query);
    let rows = store
        .memory_layers(&LayerReads {
            transcript_id: session.transcript_id,
            summarized_through: session.summarized_through,
            history_limit,
            person: scope.person_id(),
            conversation_key: scope.conversation_key.as_deref(),
            max_facts: config.max_facts,
            terms: &terms,
            recall_items: config.recall_items,
        })
        .await?;
    // Recalled items the context does not already hold.
    let recalled_memories = rows
        .recalled_memories
        .into_iter()
        .filter(|item| {
            !rows
                .notes
                .iter()
                .chain(&rows.facts)
                .any(|known| known.id == item.id)
        })
        .collect();
    let people = scope
        .person
        .as_ref()
        .map(|(_, name)| PersonFacts {
            name: name.clone(),
            facts: rows.facts,
        })
        .into_iter()
        .collect();
    Ok(Layers {
        notes: rows.notes,
        people,
        recalled_memories,
        recalled_messages: rows.recalled_messages,
        summary: session.summary.clone(),
        recent: rows.recent,
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

    fn session(is_group: bool, identity_id: Option<Uuid>) -> SessionInfo {
        SessionInfo {
            agent: "assistant".into(),
            processed_seq: 0,
            is_group,
            identity_id,
            conversation_key: is_group.then(|| "web:room".into()),
            transcript_id: Uuid::now_v7(),
            summary: String::new(),
            summarized_through: 0,
        }
    }

    fn event(sender: &str, identity_id: Uuid) -> PendingEvent {
        PendingEvent {
            id: Uuid::now_v7(),
            seq: 1,
            connector_id: "web".into(),
            platform_message_id: sender.into(),
            sender_id: sender.into(),
            sender_name: Some(sender.into()),
            conversation_id: "room".into(),
            thread_id: None,
            is_group: true,
            text: "hi".into(),
            attachments: sqlx::types::Json(Vec::new()),
            trace_id: "t".into(),
            identity_id: Some(identity_id),
        }
    }

    #[test]
    fn a_group_turn_uses_facts_only_of_its_one_sender() {
        let (ada, bea) = (Uuid::now_v7(), Uuid::now_v7());
        let config = MemoryConfig::default();
        let group = session(true, None);
        let alone = MemoryScope::of(&group, &[event("ada", ada), event("ada", ada)], &config);
        assert_eq!(alone.person_id(), Some(ada));
        assert!(alone.person_event.is_some());
        // Answering two people at once (their reply is read by both): no one's facts.
        let both = MemoryScope::of(&group, &[event("ada", ada), event("bea", bea)], &config);
        assert_eq!((both.person, both.person_event), (None, None));
        assert_eq!(both.conversation_key.as_deref(), Some("web:room"));
        let off = MemoryConfig {
            group_user_facts: GroupFacts::Off,
            ..MemoryConfig::default()
        };
        assert_eq!(
            MemoryScope::of(&group, &[event("ada", ada)], &off).person,
            None
        );
        // A direct session acts for its person, whatever the setting.
        let direct = MemoryScope::of(&session(false, Some(ada)), &[event("ada", ada)], &off);
        assert_eq!(direct.person_id(), Some(ada));
        assert_eq!(direct.conversation_key, None);
    }

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
