//! The mock model: deterministic, offline, for tests and first runs.
//!
//! It answers the latest user message of the conversation. Several messages folded
//! into one turn are answered together, so the folding is visible in the reply.

use futures::{FutureExt, future::BoxFuture};

use super::{ChatRequest, ChatResponse, Message, Provider, ProviderError, Role, StopReason};

pub struct MockProvider;

impl Provider for MockProvider {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
        _key: Option<&'a secrecy::SecretString>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move { Ok(answer(request)) }.boxed()
    }
}

fn answer(request: &ChatRequest) -> ChatResponse {
    let unanswered: Vec<String> = request
        .messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::User)
        .map(Message::joined_text)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let text = if unanswered.is_empty() {
        "(mock) Nothing to answer.".to_owned()
    } else {
        format!("(mock) You said: {}", unanswered.join(" / "))
    };
    let input_tokens = request
        .messages
        .iter()
        .map(|m| m.joined_text().split_whitespace().count() as u64)
        .sum();
    let output_tokens = text.split_whitespace().count() as u64;
    ChatResponse {
        message: Message::text(Role::Assistant, text),
        stop: StopReason::EndTurn,
        model: "mock".into(),
        input_tokens: Some(input_tokens),
        output_tokens: Some(output_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_unanswered_user_message_in_order() {
        let request = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::text(Role::User, "old"),
                Message::text(Role::Assistant, "(mock) You said: old"),
                Message::text(Role::User, "one"),
                Message::text(Role::User, "two"),
            ],
            tools: vec![],
            trace_id: "t".into(),
        };
        let response = answer(&request);
        assert_eq!(response.text(), "(mock) You said: one / two");
        assert_eq!(response.model, "mock");
        assert_eq!(answer(&request), response);
    }
}
