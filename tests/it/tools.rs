use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, TestConfig, TestMessage};

/// The model asks for `current_time`, gets its result, then answers; the tool
/// history is stored and given to the model again on the next turn.
async fn tool_call_round_trip(provider: &'static str) {
    let app = TestApp::spawn_with_worker(TestConfig {
        provider,
        ..TestConfig::default()
    })
    .await;
    app.model
        .push_tool_call("current_time", json!({"timezone": "Asia/Tokyo"}));
    app.post_message(&TestMessage::direct(
        "t1",
        "ada",
        "ada:what time is it in Tokyo?",
    ))
    .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert!(
        replies[0].event.data.text.starts_with("answer to"),
        "{replies:?}"
    );

    let calls = app.model.calls();
    assert_eq!(calls.len(), 2, "one call for the tool, one for the answer");
    assert_eq!(calls[0].tools_offered, microclaw::tools::BUILTIN.len());
    assert_eq!(calls[1].tool_results.len(), 1);
    assert!(
        calls[1].tool_results[0].contains("(Asia/Tokyo,"),
        "{:?}",
        calls[1].tool_results
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.strings("SELECT role FROM messages ORDER BY id").await,
        ["user", "assistant", "tool", "assistant"]
    );
    assert_eq!(
        app.strings("SELECT status || ':' || model_attempts FROM turns")
            .await,
        ["completed:2"]
    );

    app.post_message(&TestMessage::direct("t2", "ada", "ada:thanks"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(20)).await;
    let calls = app.model.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[2].tool_results.len(),
        1,
        "the tool history follows the conversation"
    );
    app.stop().await;
}

#[tokio::test]
async fn tool_call_round_trip_over_openai() {
    tool_call_round_trip("openai").await;
}

#[tokio::test]
async fn tool_call_round_trip_over_anthropic() {
    tool_call_round_trip("anthropic").await;
}

#[tokio::test]
async fn a_failing_tool_is_reported_to_the_model_not_to_the_user() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    app.model
        .push_tool_call("current_time", json!({"timezone": "Mars/Olympus"}));
    app.post_message(&TestMessage::direct("t3", "bea", "bea:time on Mars?"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert!(replies[0].event.data.text.starts_with("answer to"));
    let calls = app.model.calls();
    assert!(
        calls[1].tool_results[0].contains("unknown time zone"),
        "{:?}",
        calls[1].tool_results
    );
    app.stop().await;
}

#[tokio::test]
async fn a_model_that_never_stops_calling_tools_ends_at_the_step_limit() {
    let app = TestApp::spawn_with_worker(TestConfig::default()).await;
    for _ in 0..10 {
        app.model.push_tool_call("current_time", json!({}));
    }
    app.post_message(&TestMessage::direct("t4", "cyd", "cyd:loop"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert_eq!(
        replies[0].event.data.text,
        "Sorry, the model is unavailable."
    );
    assert_eq!(
        app.model.calls().len(),
        4,
        "model.max_steps (default 4) calls"
    );
    app.drain(Duration::from_secs(10)).await;
    let error = app.strings("SELECT error FROM turns").await;
    assert!(error[0].contains("after 4 steps"), "{error:?}");
    app.stop().await;
}

#[tokio::test]
async fn anthropic_overload_is_retried() {
    let app = TestApp::spawn_with_worker(TestConfig {
        provider: "anthropic",
        ..TestConfig::default()
    })
    .await;
    app.model
        .push_fault(crate::fakes::ModelFault::Status(529, None));
    app.post_message(&TestMessage::direct("t5", "dan", "dan:hi"))
        .await;
    let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
    assert_eq!(replies[0].event.data.text, "answer to [dan:hi]");
    assert_eq!(app.model.calls().len(), 2);
    app.stop().await;
}

/// What image URLs the model was sent for a message with a picture attached.
async fn images_sent_to_the_model(
    provider: &'static str,
    vision: bool,
) -> (Vec<String>, Vec<String>) {
    let app = TestApp::spawn_with_worker(TestConfig {
        provider,
        model_extra: if vision {
            "vision = true"
        } else {
            "vision = false"
        },
        ..TestConfig::default()
    })
    .await;
    app.post_message(
        &TestMessage::direct("img1", "eli", "eli:what is this?")
            .with_image("https://files.example.com/p.png"),
    )
    .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    let calls = app.model.calls();
    app.stop().await;
    (calls[0].images.clone(), calls[0].user_messages.clone())
}

#[tokio::test]
async fn images_go_to_models_with_vision_in_both_formats() {
    for provider in ["openai", "anthropic"] {
        let (images, _) = images_sent_to_the_model(provider, true).await;
        assert_eq!(images, ["https://files.example.com/p.png"], "{provider}");
    }
}

#[tokio::test]
async fn a_model_without_vision_is_told_about_the_image_in_words() {
    let (images, texts) = images_sent_to_the_model("openai", false).await;
    assert!(images.is_empty());
    assert!(
        texts
            .iter()
            .any(|t| t
                .contains("[attachment: photo.png (image/png) https://files.example.com/p.png]")),
        "{texts:?}"
    );
}

/// "Text me that on Telegram": ada talks on the custom channel, her Telegram
/// account is linked, and the message reaches her Telegram chat through the
/// normal delivery path, beside the reply on the channel she wrote from.
#[tokio::test]
async fn send_message_reaches_a_linked_second_channel() {
    use crate::{
        fakes::FakeApi,
        helpers::{ADMIN_TOKEN, TELEGRAM_SECRET},
    };
    let telegram = FakeApi::start().await;
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "tg"
channel = "telegram"
agent = "assistant"
bot_token_env = "TEST_TG_TOKEN"
secret_token_env = "TEST_TG_SECRET"
api_base_url = "{}"
"#,
            telegram.base_url
        ),
        ..TestConfig::default()
    })
    .await;
    // Ada writes to the bot directly on Telegram once (her private chat 4242).
    let update = json!({"update_id": 7001, "message": {
        "message_id": 11, "date": 1767225661, "text": "ada:hi from telegram",
        "from": {"id": 4242, "is_bot": false, "first_name": "Ada"},
        "chat": {"id": 4242, "type": "private", "first_name": "Ada"}
    }});
    let accepted = app
        .http
        .post(format!("{}/hooks/tg", app.address))
        .header("X-Telegram-Bot-Api-Secret-Token", TELEGRAM_SECRET)
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while telegram.sent_messages().is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not linked yet: the tool says so and nothing more reaches Telegram.
    app.model.push_tool_call(
        "send_message",
        json!({"channel": "telegram", "text": "early"}),
    );
    app.post_message(&TestMessage::direct("s1", "ada", "ada:text me"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    let refused = app.model.calls().last().unwrap().tool_results.clone();
    assert!(
        refused[0].contains("no linked telegram account"),
        "{refused:?}"
    );

    let linked = app
        .http
        .post(format!("{}/admin/v1/identities/link", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"person": "web:ada", "other": "tg:4242"}))
        .send()
        .await
        .unwrap();
    assert_eq!(linked.status(), 200);
    app.model.push_tool_call(
        "send_message",
        json!({"channel": "telegram", "text": "Your booking code is **K42**"}),
    );
    app.post_message(&TestMessage::direct(
        "s2",
        "ada",
        "ada:text me the code on telegram",
    ))
    .await;
    app.wait_for_replies(2, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while telegram.sent_messages().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            telegram.sent_messages()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.drain(Duration::from_secs(10)).await;
    let sent = telegram.sent_messages();
    assert_eq!(
        sent.len(),
        2,
        "one answer to her Telegram message, one sent by the tool"
    );
    assert_eq!(sent[1].1["chat_id"], json!(4242));
    assert_eq!(sent[1].1["text"], "Your booking code is <b>K42</b>");
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM deliveries WHERE connector_id = 'tg' AND status = 'delivered'"
        )
        .await,
        2
    );
    app.stop().await;
}

/// "Remind me in a few seconds": the reminder is a row in the store, so it
/// survives the worker stopping, and is delivered once when due, in the
/// conversation it was asked in; another one is listed and cancelled by an
/// operator.
async fn a_scheduled_message_survives_a_restart_and_arrives_when_due(
    backend: crate::helpers::Backend,
) {
    use crate::helpers::ADMIN_TOKEN;
    let mut app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(3);
    let later = chrono::Utc::now() + chrono::Duration::hours(5);
    app.model.push_tool_call(
        "schedule_message",
        json!({"at": due.format("%Y-%m-%dT%H:%M:%S").to_string(), "timezone": "UTC", "text": "Time to stretch"}),
    );
    app.post_message(&TestMessage::direct(
        "sch1",
        "ada",
        "ada:remind me in 3 seconds",
    ))
    .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    let scheduled = app.model.calls().last().unwrap().tool_results.clone();
    assert!(scheduled[0].starts_with("Scheduled for"), "{scheduled:?}");

    // No worker while it comes due: nothing is sent, nothing is lost.
    app.stop_workers().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.platform.replies().len(), 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM scheduled_messages WHERE status = 'pending'")
            .await,
        1
    );
    app.start_worker();
    let replies = app.wait_for_replies(2, Duration::from_secs(20)).await;
    assert_eq!(replies[1].event.data.text, "Time to stretch");
    assert_eq!(
        replies[1].event.data.conversation_id, replies[0].event.data.conversation_id,
        "in the conversation it was asked in"
    );

    // Another one, far away: the person can list it; an operator cancels it.
    app.model.push_tool_call(
        "schedule_message",
        json!({"at": later.format("%Y-%m-%d %H:%M").to_string(), "timezone": "Europe/Rome", "text": "Dentist"}),
    );
    app.post_message(&TestMessage::direct("sch2", "ada", "ada:and the dentist"))
        .await;
    app.wait_for_replies(3, Duration::from_secs(20)).await;
    app.model.push_tool_call("list_scheduled", json!({}));
    app.post_message(&TestMessage::direct(
        "sch3",
        "ada",
        "ada:what is scheduled?",
    ))
    .await;
    app.wait_for_replies(4, Duration::from_secs(20)).await;
    let listed = app.model.calls().last().unwrap().tool_results.clone();
    let listed = listed.last().unwrap();
    assert!(
        listed.contains("Dentist") && !listed.contains("stretch"),
        "{listed}"
    );
    let id = listed.split(' ').next().unwrap().to_owned();
    let cancelled: serde_json::Value = app
        .http
        .post(format!("{}/admin/v1/scheduled/{id}/cancel", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let all: serde_json::Value = app
        .http
        .get(format!("{}/admin/v1/scheduled?status=all", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "cancelled"]);
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.platform.replies().len(),
        4,
        "the stretch reminder came once"
    );
    app.stop().await;
}

crate::on_both_backends!(a_scheduled_message_survives_a_restart_and_arrives_when_due);
