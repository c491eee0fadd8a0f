//! `link_account`: the words-based way to link a person's accounts (the `/link`
//! command is the other, see `identity`).

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};

use super::{Tool, TurnScope};
use crate::{identity, providers::ToolSpec};

pub const NAME: &str = "link_account";

pub struct LinkAccount;

impl Tool for LinkAccount {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: NAME.into(),
            description: "Link the person's accounts on different channels so they are one \
                          person with one memory. Without a code: create a one-time code to send \
                          from the other account. With a code (received on another account): \
                          redeem it."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "A six-digit link code to redeem"}
                },
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
            let outcome = match arguments.get("code") {
                None | Some(Value::Null) => identity::new_code(scope).await,
                Some(Value::String(code)) => identity::redeem(scope, code).await,
                Some(other) => return Err(format!("`code` must be a string, got {other}")),
            };
            outcome.map_err(|e| format!("linking is unavailable: {e}"))
        }
        .boxed()
    }
}
