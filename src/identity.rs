//! Linking a person's accounts: the `/link` command and the texts both it and the
//! `link_account` tool answer with.
//!
//! `/link` on one account answers with a one-time code; `/link 123456` (or the
//! code given to the model, which calls `link_account`) from another account
//! redeems it, and from then on both accounts are one person: one direct session
//! per agent, one set of facts (see `store::portable::identity`).

use std::time::Duration;

use crate::{
    config::IdentityConfig,
    store::{LinkOutcome, LinkPolicy, StoreError},
    tools::TurnScope,
};

/// The link-code rules of the configuration.
pub fn link_policy(config: &IdentityConfig) -> LinkPolicy {
    LinkPolicy {
        code_ttl_ms: config.link_code_ttl.0.as_millis() as i64,
        max_failures: i64::from(config.link_max_failures),
        failure_window_ms: config.link_failure_window.0.as_millis() as i64,
    }
}

/// A command a message can carry instead of a question for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/link`: give me a code.
    NewLinkCode,
    /// `/link <code>`: redeem this code.
    RedeemLinkCode(String),
}

impl Command {
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.trim().strip_prefix("/link")?;
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let code = rest.trim();
        Some(if code.is_empty() {
            Command::NewLinkCode
        } else {
            Command::RedeemLinkCode(code.to_owned())
        })
    }

    /// Runs the command for the turn's sender; the reply text.
    pub async fn run(&self, scope: &TurnScope) -> Result<String, StoreError> {
        match self {
            Command::NewLinkCode => new_code(scope).await,
            Command::RedeemLinkCode(code) => redeem(scope, code).await,
        }
    }
}

fn minutes(ms: i64) -> u64 {
    Duration::from_millis(ms.max(0) as u64)
        .as_secs()
        .div_ceil(60)
}

/// The answer in a group conversation, where everyone would see the code.
const NOT_IN_GROUPS: &str =
    "Linking accounts works in a direct message with me, not in a group: send /link there.";

/// A fresh code for the sender; the reply explaining how to use it.
pub async fn new_code(scope: &TurnScope) -> Result<String, StoreError> {
    if scope.memory.conversation_key.is_some() {
        return Ok(NOT_IN_GROUPS.into());
    }
    let Some(identity_id) = scope.sender_identity else {
        return Ok("I can't link this account: I don't know who sent this message.".into());
    };
    let account = format!("{}:{}", scope.connector_id, scope.sender_id);
    let code = scope
        .store
        .create_link_code(
            identity_id,
            &account,
            scope.link_policy,
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
    Ok(format!(
        "Your link code is {code}. Within {} minutes, send \"/link {code}\" from the other \
         account you want to link. The code works once.",
        minutes(scope.link_policy.code_ttl_ms)
    ))
}

/// Redeems `code` from the sender's account; the reply saying what happened.
pub async fn redeem(scope: &TurnScope, code: &str) -> Result<String, StoreError> {
    if scope.memory.conversation_key.is_some() {
        return Ok(NOT_IN_GROUPS.into());
    }
    let outcome = scope
        .store
        .redeem_link_code(
            code,
            &scope.connector_id,
            &scope.sender_id,
            scope.link_policy,
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
    Ok(match outcome {
        LinkOutcome::Linked { .. } | LinkOutcome::AlreadyLinked { .. } => {
            "Linked: your accounts are now one, and I'll remember you across them.".into()
        }
        LinkOutcome::Invalid => format!(
            "That code isn't valid. Codes work once and expire after {} minutes; send \"/link\" \
             on your other account for a new one.",
            minutes(scope.link_policy.code_ttl_ms)
        ),
        LinkOutcome::TooManyAttempts => format!(
            "Too many wrong codes from this account. Please try again in {} minutes.",
            minutes(scope.link_policy.failure_window_ms)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_commands() {
        assert_eq!(Command::parse(" /link "), Some(Command::NewLinkCode));
        assert_eq!(
            Command::parse("/link 123 456"),
            Some(Command::RedeemLinkCode("123 456".into()))
        );
        assert_eq!(Command::parse("/linkedin"), None);
        assert_eq!(Command::parse("please /link"), None);
    }
}
