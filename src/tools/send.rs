//! `send_message`: the agent messages the person it is talking to on another
//! of their linked channels ("text me that on WhatsApp").
//!
//! The message goes where the person last wrote to us directly on that channel
//! (a platform's direct conversation id is not always their user id), through
//! the normal delivery path: it is planned in the turn's scope and becomes a
//! delivery in the turn's commit, so a turn that is fenced or crashes sends
//! nothing, and its rerun sends it once.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};

use super::{Tool, TurnScope, string_argument};
use crate::{channels::ReplyTarget, providers::ToolSpec};

pub const NAME: &str = "send_message";

pub struct SendMessage;

/// A message a turn's tools asked to send, delivered with the turn's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub connector_id: String,
    pub target: ReplyTarget,
    pub text: String,
}

impl Tool for SendMessage {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: NAME.into(),
            description: "Send a message to the person you are talking to on another of their \
                          linked channels (e.g. \"whatsapp\", \"telegram\", \"sms\"). Only works \
                          for channels they have linked and written to you from."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "channel": {"type": "string", "description": "A channel kind (whatsapp, telegram, slack, twilio, …) or a connector id"},
                    "text": {"type": "string", "description": "The message"}
                },
                "required": ["channel", "text"],
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
            let channel = string_argument(arguments, "channel")?;
            let text = string_argument(arguments, "text")?;
            let unavailable = |e| format!("sending is unavailable: {e}");
            // The person now (a link made earlier in this turn counts).
            let person = scope
                .store
                .identity_of(&scope.connector_id, &scope.sender_id)
                .await
                .map_err(unavailable)?
                .ok_or("I don't know who you are yet, so I can't reach you elsewhere")?;
            let accounts = scope.store.accounts(person).await.map_err(unavailable)?;
            let candidates: Vec<_> = accounts
                .iter()
                .filter(|a| a.connector_id == channel || a.channel == channel)
                .filter(|a| a.connector_id != scope.connector_id)
                .collect();
            if candidates.is_empty() {
                let linked: Vec<String> = accounts
                    .iter()
                    .filter(|a| a.connector_id != scope.connector_id)
                    .map(|a| format!("{} ({})", a.channel, a.connector_id))
                    .collect();
                return Err(match linked.is_empty() {
                    true => format!(
                        "no linked {channel} account: this person has no other linked channel (they can link one with /link)"
                    ),
                    false => format!(
                        "no linked {channel} account; linked channels: {}",
                        linked.join(", ")
                    ),
                });
            }
            for account in candidates {
                let Some((conversation_id, thread_id)) = scope
                    .store
                    .last_direct_conversation(&account.connector_id, &account.sender_id)
                    .await
                    .map_err(unavailable)?
                else {
                    continue;
                };
                let planned = Outbound {
                    connector_id: account.connector_id.clone(),
                    target: ReplyTarget {
                        conversation_id,
                        thread_id,
                        recipient_id: account.sender_id.clone(),
                        is_group: false,
                        in_reply_to: Vec::new(),
                    },
                    text: text.to_owned(),
                };
                if !scope.send(planned) {
                    return Err(format!(
                        "a message to {} is already on its way in this turn; send one message per channel",
                        account.channel
                    ));
                }
                return Ok(format!(
                    "The message will be sent on {} ({}) as soon as this answer is saved.",
                    account.channel, account.connector_id
                ));
            }
            Err(format!(
                "they have never written to me directly on {channel}, so I have nowhere to send it"
            ))
        }
        .boxed()
    }
}
