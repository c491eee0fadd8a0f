//! Layered memory and identities, end to end: a person's accounts linked by a
//! code, facts written by the model, recall, isolation between people, compaction
//! and forgetting; on both store backends.

use std::time::Duration;

use microclaw::store::{LinkOutcome, LinkPolicy, Store};
use serde_json::json;

use crate::helpers::{Backend, TestApp, TestConfig, TestMessage};

/// A second custom-channel connector ("sms") beside the test's "web".
const SMS: &str = r#"
[[connectors]]
id = "sms"
channel = "custom"
agent = "assistant"
signing_secret_env = "TEST_SECRET"
callback_url = "@CALLBACK@"
"#;

fn config(backend: Backend) -> TestConfig {
    TestConfig {
        backend,
        extra: SMS.into(),
        ..TestConfig::default()
    }
}

/// Posts one message on `connector` and returns the text of the reply it got
/// (the platform's `expected`-th reply).
async fn say(app: &TestApp, connector: &str, message: TestMessage, expected: usize) -> String {
    let response = app
        .post_signed(
            connector,
            &message.body(),
            &format!("wh-{}", message.id),
            chrono::Utc::now().timestamp(),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let replies = app
        .wait_for_replies(expected, Duration::from_secs(20))
        .await;
    replies[expected - 1].event.data.text.clone()
}

fn group(id: &str, sender: &str, text: &str) -> TestMessage {
    TestMessage {
        conversation: "team-room".into(),
        group: true,
        ..TestMessage::direct(id, sender, text)
    }
}

/// Records `message` on the "web" connector straight into the store, as the
/// receiver would; the session it went to.
async fn record_on_web(store: &Store, message: &microclaw::channels::InboundMessage) -> uuid::Uuid {
    let routing = microclaw::store::Routing {
        connector_id: "web",
        channel: "custom",
        agent: "assistant",
    };
    match store.record_inbound(&routing, message, 3).await.unwrap() {
        microclaw::store::Recorded::Accepted { session_id, .. } => session_id,
        other => panic!("not recorded: {other:?}"),
    }
}

/// The link code in a `/link` reply.
fn code_in(reply: &str) -> String {
    reply
        .split(|c: char| !c.is_ascii_digit())
        .find(|word| word.len() == 6)
        .unwrap_or_else(|| panic!("no code in {reply:?}"))
        .to_owned()
}

async fn a_linked_account_continues_the_conversation_with_its_facts(backend: Backend) {
    let app = TestApp::spawn_with_worker(config(backend)).await;
    app.model
        .push_tool_call("remember", json!({"fact": "Ada's dog is called Rex"}));
    say(
        &app,
        "web",
        TestMessage::direct("m1", "ada", "ada:my dog is Rex"),
        1,
    )
    .await;

    // The second account has a fact of its own before the link.
    app.model
        .push_tool_call("remember", json!({"fact": "prefers window seats"}));
    say(
        &app,
        "sms",
        TestMessage::direct("m0", "+15550001", "ada:window seats please"),
        2,
    )
    .await;

    let reply = say(&app, "web", TestMessage::direct("m2", "ada", "/link"), 3).await;
    assert!(reply.starts_with("Your link code is"), "{reply}");
    let code = code_in(&reply);
    let reply = say(
        &app,
        "sms",
        TestMessage::direct("m3", "+15550001", &format!("/link {code}")),
        4,
    )
    .await;
    assert!(reply.starts_with("Linked"), "{reply}");
    assert_eq!(app.model.calls().len(), 4, "commands do not call the model");

    say(
        &app,
        "sms",
        TestMessage::direct("m4", "+15550001", "ada:what is my dog called?"),
        5,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(
        call.system.contains("Ada's dog is called Rex"),
        "{}",
        call.system
    );
    assert!(
        call.texts.iter().any(|t| t == "ada:my dog is Rex"),
        "the turns of the other account are in the context: {:?}",
        call.texts
    );
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.count("SELECT count(*) FROM identities").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 2);
    let ada = app
        .deployment
        .store
        .identity_of("sms", "+15550001")
        .await
        .unwrap()
        .unwrap();
    let found = app
        .deployment
        .store
        .search_memories(&["window".into()], Some(ada), None, 5)
        .await
        .unwrap();
    assert_eq!(
        found.len(),
        1,
        "the merged fact is searchable as the survivor's"
    );
    // The reply went back where the question came from.
    assert_eq!(
        app.strings(
            "SELECT d.connector_id FROM deliveries d JOIN turns t ON t.id = d.turn_id
              ORDER BY t.finished_at DESC LIMIT 1"
        )
        .await,
        ["sms"]
    );
    // The code is used up: a third account can't reuse it.
    let reply = say(
        &app,
        "sms",
        TestMessage::direct("m5", "+15550002", &format!("/link {code}")),
        6,
    )
    .await;
    assert!(reply.starts_with("That code isn't valid"), "{reply}");
    app.stop().await;
}

/// Redeems `code` from the web account `sender` at `now_ms`.
async fn redeem(store: &Store, code: &str, sender: &str, now_ms: i64) -> LinkOutcome {
    store
        .redeem_link_code(code, "web", sender, POLICY, now_ms)
        .await
        .unwrap()
}

/// The configuration's defaults (see `identity` in microclaw.example.toml).
const POLICY: LinkPolicy = LinkPolicy {
    code_ttl_ms: 600_000,
    max_failures: 5,
    failure_window_ms: 900_000,
};

async fn link_codes_expire_are_single_use_and_limit_attempts(backend: Backend) {
    let app = TestApp::spawn(config(backend)).await;
    for (id, sender) in [("a", "ada"), ("b", "bea"), ("c", "cyd")] {
        app.post_message(&TestMessage::direct(id, sender, "hi"))
            .await;
    }
    let store = &app.deployment.store;
    let ada = store.identity_of("web", "ada").await.unwrap().unwrap();
    assert_eq!(
        microclaw::identity::link_policy(&app.deployment.settings.identity),
        POLICY
    );
    let now = 1_800_000_000_000;

    // Expired.
    let code = store
        .create_link_code(ada, "web:ada", POLICY, now)
        .await
        .unwrap();
    assert_eq!(
        redeem(store, &code, "bea", now + POLICY.code_ttl_ms).await,
        LinkOutcome::Invalid
    );
    // Valid: bea becomes ada's identity; the code then works for no one else,
    // and a rerun by bea reports the link again.
    let code = store
        .create_link_code(ada, "web:ada", POLICY, now)
        .await
        .unwrap();
    assert_eq!(
        redeem(store, &code, "bea", now + 1_000).await,
        LinkOutcome::Linked { identity_id: ada }
    );
    assert_eq!(
        redeem(store, &code, "bea", now + 2_000).await,
        LinkOutcome::AlreadyLinked { identity_id: ada }
    );
    assert_eq!(
        redeem(store, &code, "cyd", now + 2_000).await,
        LinkOutcome::Invalid
    );
    assert_eq!(store.identity_of("web", "bea").await.unwrap(), Some(ada));

    // Brute force: after the allowed failures even a valid code is refused, until
    // the window has passed.
    let code = store
        .create_link_code(ada, "web:ada", POLICY, now)
        .await
        .unwrap();
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 1..POLICY.max_failures {
        assert_eq!(
            redeem(store, wrong, "cyd", now + 3_000).await,
            LinkOutcome::Invalid
        );
    }
    assert_eq!(
        redeem(store, &code, "cyd", now + 4_000).await,
        LinkOutcome::TooManyAttempts
    );
    let later = now + 4_000 + POLICY.failure_window_ms;
    let code = store
        .create_link_code(ada, "web:ada", POLICY, later)
        .await
        .unwrap();
    assert_eq!(
        redeem(store, &code, "cyd", later + 1).await,
        LinkOutcome::Linked { identity_id: ada }
    );
    assert_eq!(app.count("SELECT count(*) FROM identities").await, 1);
    app.stop().await;
}

async fn one_persons_facts_never_reach_another(backend: Backend) {
    let app = TestApp::spawn_with_worker(config(backend)).await;
    app.model
        .push_tool_call("remember", json!({"fact": "drinks oolong tea"}));
    say(
        &app,
        "web",
        TestMessage::direct("d1", "ada", "ada:I drink oolong"),
        1,
    )
    .await;
    app.model
        .push_tool_call("remember", json!({"fact": "allergic to peanuts"}));
    say(
        &app,
        "web",
        TestMessage::direct("d2", "bea", "bea:I'm allergic to peanuts"),
        2,
    )
    .await;
    app.model.push_tool_call(
        "remember",
        json!({"fact": "this room plans the offsite", "about": "conversation"}),
    );
    say(
        &app,
        "web",
        group("g1", "bea", "bea:we plan the offsite here"),
        3,
    )
    .await;

    say(
        &app,
        "web",
        group("g2", "bea", "bea:what should I drink?"),
        4,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(
        call.system.contains("allergic to peanuts"),
        "{}",
        call.system
    );
    assert!(
        call.system.contains("this room plans the offsite"),
        "{}",
        call.system
    );
    assert!(!call.system.contains("oolong"), "{}", call.system);

    say(&app, "web", group("g3", "ada", "ada:and me?"), 5).await;
    let call = app.model.calls().pop().unwrap();
    assert!(call.system.contains("oolong"), "{}", call.system);
    assert!(!call.system.contains("peanuts"), "{}", call.system);

    say(
        &app,
        "web",
        TestMessage::direct("d3", "bea", "bea:what do you know about me?"),
        6,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(call.system.contains("peanuts"), "{}", call.system);
    assert!(!call.system.contains("oolong"), "{}", call.system);
    assert!(
        !call.system.contains("offsite"),
        "group notes stay in the group: {}",
        call.system
    );
    app.stop().await;
}

async fn an_old_message_beyond_the_window_is_recalled(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        history_messages: 4,
        ..config(backend)
    })
    .await;
    say(
        &app,
        "web",
        TestMessage::direct(
            "r1",
            "ada",
            "ada:my passport number is X1234567 and it expires in May",
        ),
        1,
    )
    .await;
    for (i, text) in [
        "ada:the weather is nice",
        "ada:let's talk about lunch",
        "ada:pasta sounds good",
    ]
    .iter()
    .enumerate()
    {
        say(
            &app,
            "web",
            TestMessage::direct(&format!("r{}", i + 2), "ada", text),
            i + 2,
        )
        .await;
    }
    say(
        &app,
        "web",
        TestMessage::direct("r5", "ada", "ada:when does my passport expire?"),
        5,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(
        !call.texts.iter().any(|t| t.contains("X1234567")),
        "the old message is outside the verbatim window: {:?}",
        call.texts
    );
    assert!(
        call.system.contains("Recalled") && call.system.contains("X1234567"),
        "{}",
        call.system
    );
    app.model
        .push_tool_call("recall", json!({"query": "passport number"}));
    say(
        &app,
        "web",
        TestMessage::direct("r6", "ada", "ada:look it up"),
        6,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(
        call.tool_results.iter().any(|r| r.contains("X1234567")),
        "{:?}",
        call.tool_results
    );
    app.stop().await;
}

async fn compaction_summarizes_old_turns_and_keeps_tool_pairs_and_recent_turns(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!("{SMS}\n[memory]\ncompact_after = 6\nkeep_recent = 2\n"),
        ..config(backend)
    })
    .await;
    app.model
        .push_tool_call("current_time", json!({"timezone": "Europe/Paris"}));
    say(
        &app,
        "web",
        TestMessage::direct("c1", "ada", "ada:first, what time is it in Paris?"),
        1,
    )
    .await;
    say(
        &app,
        "web",
        TestMessage::direct("c2", "ada", "ada:second question"),
        2,
    )
    .await;
    say(
        &app,
        "web",
        TestMessage::direct("c3", "ada", "ada:third question"),
        3,
    )
    .await;
    // Eight messages now follow the (empty) summary: the turn folded the first six.
    app.wait_until(
        "SELECT count(*) FROM sessions WHERE summary <> ''",
        1,
        Duration::from_secs(20),
    )
    .await;
    let summary = app
        .strings("SELECT summary FROM sessions WHERE summary <> ''")
        .await;
    assert!(
        summary[0].contains("first, what time is it in Paris?"),
        "{summary:?}"
    );
    assert!(summary[0].contains("second question"), "{summary:?}");
    assert!(!summary[0].contains("third question"), "{summary:?}");
    assert_eq!(
        app.strings(
            "SELECT m.role FROM messages m JOIN sessions s ON s.id = m.session_id
              WHERE m.id > s.summarized_through AND s.summary <> '' ORDER BY m.id"
        )
        .await,
        ["user", "assistant"],
        "the verbatim window starts at a user message"
    );
    let compaction = app.model.calls().pop().unwrap();
    assert!(
        compaction.system.contains("running summary"),
        "{}",
        compaction.system
    );
    assert_eq!(compaction.tools_offered, 0);

    say(
        &app,
        "web",
        TestMessage::direct("c4", "ada", "ada:fourth question"),
        4,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(
        call.system.contains("Summary of the conversation so far"),
        "{}",
        call.system
    );
    assert!(
        call.texts.iter().any(|t| t == "ada:third question"),
        "{:?}",
        call.texts
    );
    assert!(
        !call.texts.iter().any(|t| t.contains("second question")),
        "{:?}",
        call.texts
    );
    app.stop().await;
}

async fn forgetting_a_person_deletes_everything_of_theirs(backend: Backend) {
    let app = TestApp::spawn_with_worker(config(backend)).await;
    app.model
        .push_tool_call("remember", json!({"fact": "lives in Lisbon"}));
    say(
        &app,
        "web",
        TestMessage::direct("f1", "ada", "ada:I live in Lisbon"),
        1,
    )
    .await;
    say(&app, "web", group("f2", "ada", "ada:hello room"), 2).await;
    say(&app, "web", TestMessage::direct("f3", "bea", "bea:hi"), 3).await;
    say(&app, "web", group("f4", "bea", "bea:hello all"), 4).await;
    app.drain(Duration::from_secs(10)).await;

    let (ok, shown, stderr) = app.run_binary(&["identity", "show", "web:ada"]).await;
    assert!(ok, "{stderr}");
    assert!(shown.contains("web:ada (custom)"), "{shown}");
    let (ok, out, stderr) = app
        .run_binary(&["identity", "forget", "web:ada", "--json"])
        .await;
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["deleted"]["accounts"], 1, "{report}");
    assert_eq!(report["deleted"]["sessions"], 1, "{report}");
    assert_eq!(report["deleted"]["memories"], 1, "{report}");
    assert_eq!(report["deleted"]["turns"], 2, "{report}");
    assert_eq!(report["deleted"]["messages"], 6, "{report}");
    for sql in [
        "SELECT count(*) FROM messages WHERE content LIKE '%ada:%'",
        "SELECT count(*) FROM inbound_events WHERE sender_id = 'ada'",
        "SELECT count(*) FROM accounts WHERE sender_id = 'ada'",
        "SELECT count(*) FROM memories",
        "SELECT count(*) FROM deliveries WHERE text LIKE '%ada:%'",
    ] {
        assert_eq!(app.count(sql).await, 0, "{sql}");
    }
    // Bea's conversations are untouched.
    assert_eq!(
        app.count("SELECT count(*) FROM messages WHERE content LIKE '%bea:%'")
            .await,
        4
    );
    let (ok, _, stderr) = app.run_binary(&["identity", "show", "web:ada"]).await;
    assert!(!ok && stderr.contains("never written"), "{stderr}");
    // The person can start afresh.
    say(
        &app,
        "web",
        TestMessage::direct("f5", "ada", "ada:hello again"),
        5,
    )
    .await;
    let call = app.model.calls().pop().unwrap();
    assert!(!call.system.contains("Lisbon"), "{}", call.system);
    app.stop().await;
}

crate::on_both_backends!(
    a_linked_account_continues_the_conversation_with_its_facts,
    link_codes_expire_are_single_use_and_limit_attempts,
    one_persons_facts_never_reach_another,
    an_old_message_beyond_the_window_is_recalled,
    compaction_summarizes_old_turns_and_keeps_tool_pairs_and_recent_turns,
    forgetting_a_person_deletes_everything_of_theirs,
);

async fn the_retention_pass_purges_old_messages_only(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!("{SMS}\n[memory]\nretention_days = 30\nmaintenance_interval = \"200ms\"\n"),
        ..config(backend)
    })
    .await;
    say(
        &app,
        "web",
        TestMessage::direct("o1", "ada", "ada:an old message"),
        1,
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    // Age the first exchange past the retention period.
    for sql in [
        "UPDATE messages SET created_at = '2020-01-01T00:00:00.000Z'",
        "UPDATE inbound_events SET received_at = '2020-01-01T00:00:00.000Z'",
        "UPDATE deliveries SET created_at = '2020-01-01T00:00:00.000Z'",
    ] {
        app.execute(sql).await;
    }
    say(
        &app,
        "web",
        TestMessage::direct("o2", "ada", "ada:a new message"),
        2,
    )
    .await;
    app.wait_until(
        "SELECT count(*) FROM messages WHERE content LIKE '%an old message%'",
        0,
        Duration::from_secs(10),
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.strings("SELECT content FROM messages ORDER BY id")
            .await,
        ["ada:a new message", "answer to [ada:a new message]"]
    );
    // The three rows were aged one statement at a time, so a pass may have run
    // between them and left the event or the delivery to the next pass.
    app.wait_until(
        "SELECT count(*) FROM inbound_events",
        1,
        Duration::from_secs(10),
    )
    .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries",
        1,
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;
}

crate::on_both_backends!(the_retention_pass_purges_old_messages_only);

async fn linking_three_accounts_in_two_steps_makes_one_person(backend: Backend) {
    let app = TestApp::spawn_with_worker(config(backend)).await;
    say(&app, "web", TestMessage::direct("l1", "ada", "ada:one"), 1).await;
    say(&app, "web", TestMessage::direct("l2", "bea", "bea:two"), 2).await;
    say(
        &app,
        "sms",
        TestMessage::direct("l3", "cyd", "cyd:three"),
        3,
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    let store = &app.deployment.store;
    let id = |connector: &'static str, sender: &'static str| async move {
        store.identity_of(connector, sender).await.unwrap().unwrap()
    };
    let (ada, bea, cyd) = (
        id("web", "ada").await,
        id("web", "bea").await,
        id("sms", "cyd").await,
    );
    // The younger one joins the older one, whatever the order of the arguments.
    assert_eq!(store.link_identities(cyd, bea).await.unwrap(), Some(bea));
    assert_eq!(store.link_identities(bea, ada).await.unwrap(), Some(ada));
    assert_eq!(app.count("SELECT count(*) FROM identities").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE merged_into IS NOT NULL")
            .await,
        2
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT session_id) FROM messages")
            .await,
        1,
        "one transcript"
    );
    // The third account continues the one conversation.
    say(&app, "sms", TestMessage::direct("l4", "cyd", "cyd:four"), 4).await;
    let call = app.model.calls().pop().unwrap();
    for earlier in ["ada:one", "bea:two", "cyd:three"] {
        assert!(call.texts.iter().any(|t| t == earlier), "{:?}", call.texts);
    }
    // Unlinking gives the account a person of its own again.
    let alone = store.unlink_account("sms", "cyd").await.unwrap().unwrap();
    assert_ne!(alone, ada);
    assert_eq!(store.identity_of("sms", "cyd").await.unwrap(), Some(alone));
    assert_eq!(app.count("SELECT count(*) FROM identities").await, 2);
    // Link codes are refused in groups, where everyone would see them.
    let reply = say(&app, "web", group("l5", "ada", "/link"), 5).await;
    assert!(reply.contains("direct message"), "{reply}");
    app.stop().await;
}

crate::on_both_backends!(linking_three_accounts_in_two_steps_makes_one_person);

/// A database at the schema before identities (migrations up to 0004), holding
/// one direct and one group conversation; dropped by the caller.
async fn database_before_identities(backend: Backend) -> (Store, String) {
    let name = format!("mc_test_{}", uuid::Uuid::new_v4().simple());
    let url = match backend {
        Backend::Postgres => {
            let admin =
                sqlx::PgPool::connect(&format!("{}/postgres", crate::helpers::postgres_base()))
                    .await
                    .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            format!("{}/{name}", crate::helpers::postgres_base())
        }
        Backend::Sqlite => format!(
            "sqlite://{}",
            std::env::temp_dir()
                .join(format!("microclaw-{name}"))
                .join("store.db")
                .display()
        ),
    };
    let store = Store::open(&microclaw::config::DatabaseConfig {
        url: url.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = |mut migrator: sqlx::migrate::Migrator| {
        migrator.migrations = migrator
            .migrations
            .iter()
            .filter(|m| m.version < 20261125000005)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        migrator
    };
    let (direct, group, turn) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let (ada_event, bea_event) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let statements = [
        "INSERT INTO sessions (id, agent, session_key, is_group, last_inbound_seq, processed_seq)
         VALUES ($1, 'assistant', 'direct:web:ada', $3, 1, 1)",
        "INSERT INTO sessions (id, agent, session_key, is_group, last_inbound_seq, processed_seq)
         VALUES ($2, 'assistant', 'group:web:room', $4, 1, 1)",
        "INSERT INTO inbound_events (id, connector_id, channel, platform_message_id, session_id, seq,
                                     sender_id, sender_name, conversation_id, is_group, text,
                                     trace_id, status, turn_id)
         VALUES ($6, 'web', 'custom', 'p1', $1, 1, 'ada', 'Ada', 'dm-ada', $3, 'ada:hello', 't',
                 'answered', $5)",
        "INSERT INTO inbound_events (id, connector_id, channel, platform_message_id, session_id, seq,
                                     sender_id, sender_name, conversation_id, is_group, text,
                                     trace_id, status)
         VALUES ($7, 'web', 'custom', 'p2', $2, 1, 'bea', 'Bea', 'room', $4, 'bea:hi all', 't',
                 'answered')",
        "INSERT INTO turns (id, session_id, first_seq, last_seq, status, trace_id, started_at)
         VALUES ($5, $1, 1, 1, 'completed', 't', $8)",
        "INSERT INTO messages (session_id, turn_id, role, content, inbound_event_id)
         VALUES ($1, $5, 'user', 'ada:hello', $6)",
        "INSERT INTO messages (session_id, turn_id, role, content)
         VALUES ($1, $5, 'assistant', 'hello Ada')",
    ];
    macro_rules! old_database {
        ($pool:expr, $migrator:expr, $dialect:expr) => {{
            before($migrator).run($pool).await.unwrap();
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe($dialect(statement)))
                    .bind(direct)
                    .bind(group)
                    .bind(false)
                    .bind(true)
                    .bind(turn)
                    .bind(ada_event)
                    .bind(bea_event)
                    .bind(chrono::Utc::now())
                    .execute($pool)
                    .await
                    .unwrap();
            }
        }};
    }
    match &store {
        Store::Postgres(pool) => {
            old_database!(pool, sqlx::migrate!("./migrations/postgres"), |s: &str| s
                .to_owned())
        }
        Store::Sqlite(pool) => {
            old_database!(pool, sqlx::migrate!("./migrations/sqlite"), |s: &str| s
                .replace('$', "?"))
        }
    }
    (store, name)
}

async fn an_upgrade_gives_earlier_senders_an_identity_and_keeps_their_history(backend: Backend) {
    let (store, name) = database_before_identities(backend).await;
    store.migrate().await.unwrap();

    let ada = store
        .identity_of("web", "ada")
        .await
        .unwrap()
        .expect("ada has an identity");
    let bea = store
        .identity_of("web", "bea")
        .await
        .unwrap()
        .expect("bea has an identity");
    assert_ne!(ada, bea);
    // Ada's next message continues her old session, with its history.
    let message = microclaw::channels::InboundMessage {
        platform_message_id: "p3".into(),
        sender_id: "ada".into(),
        sender_name: Some("Ada".into()),
        conversation_id: "dm-ada".into(),
        thread_id: None,
        is_group: false,
        text: "ada:again".into(),
        attachments: Vec::new(),
        sent_at: None,
    };
    let session_id = record_on_web(&store, &message).await;
    let session = store.session_info(session_id).await.unwrap().unwrap();
    assert_eq!(session.identity_id, Some(ada));
    let history = store
        .recent_history(session.transcript_id, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        ["ada:hello", "hello Ada"]
    );
    // The group session knows its conversation; forgetting reaches old messages.
    let group = microclaw::channels::InboundMessage {
        platform_message_id: "p4".into(),
        sender_id: "bea".into(),
        conversation_id: "room".into(),
        is_group: true,
        ..message
    };
    let group_session = record_on_web(&store, &group).await;
    let info = store.session_info(group_session).await.unwrap().unwrap();
    assert_eq!(info.conversation_key.as_deref(), Some("web:room"));
    let report = store.forget_identity(ada).await.unwrap().unwrap();
    assert_eq!((report.messages, report.sessions), (2, 1), "{report:?}");

    match &store {
        Store::Postgres(pool) => {
            pool.close().await;
            let admin =
                sqlx::PgPool::connect(&format!("{}/postgres", crate::helpers::postgres_base()))
                    .await
                    .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await
            .unwrap();
        }
        Store::Sqlite(pool) => {
            pool.close().await;
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("microclaw-{name}"))).ok();
        }
    }
}

crate::on_both_backends!(an_upgrade_gives_earlier_senders_an_identity_and_keeps_their_history);

/// A turn's memory layers as `Store::memory_layers` reads them (one statement on
/// Postgres, the portable reads one after the other on SQLite): each layer
/// bounded, in its order, and only within the person and conversation asked for.
async fn the_memory_layers_are_bounded_ordered_and_scoped(backend: Backend) {
    let app = TestApp::spawn(config(backend)).await;
    let store = app.deployment.store.clone();
    let mut sessions = Vec::new();
    for sender in ["ada", "bea"] {
        let message = microclaw::channels::InboundMessage {
            platform_message_id: format!("layers-{sender}"),
            sender_id: sender.into(),
            sender_name: None,
            conversation_id: format!("dm-{sender}"),
            thread_id: None,
            is_group: false,
            text: "hello".into(),
            attachments: Vec::new(),
            sent_at: None,
        };
        let session_id = record_on_web(&store, &message).await;
        sessions.push(store.session_info(session_id).await.unwrap().unwrap());
    }
    let (ada, bea) = (&sessions[0], &sessions[1]);
    let ada_id = ada.identity_id.expect("ada has an identity");
    let bea_id = bea.identity_id.expect("bea has an identity");
    // Ada's transcript, oldest first; the search words are "apple" and "pear".
    let transcript = [
        "apple zulu",
        "kiwi yankee",
        "apple pear",
        "pear xray",
        "lemon whisky",
        "apple victor",
        "mango uniform",
        "grape tango",
    ];
    // Facts and notes, in the order they were written.
    let memories: [(&str, Option<uuid::Uuid>, Option<&str>, &str); 7] = [
        ("f0", Some(ada_id), None, "apple sierra"),
        ("n0", None, Some("web:room"), "apple pear november"),
        ("f1", Some(ada_id), None, "romeo quebec"),
        ("fb", Some(bea_id), None, "apple pear oscar"),
        ("n1", None, Some("web:room"), "mike lima"),
        ("f2", Some(ada_id), None, "pear papa"),
        ("n2", None, Some("web:room"), "kilo juliet"),
    ];
    let turn_id = uuid::Uuid::now_v7();
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    macro_rules! seed {
        ($pool:expr, $sql:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe($sql(
                "INSERT INTO turns (id, session_id, first_seq, last_seq, status, trace_id, started_at)
                 VALUES ($1, $2, 1, 1, 'completed', 'test', $3)",
            )))
            .bind(turn_id)
            .bind(ada.transcript_id)
            .bind(start)
            .execute(&mut *tx)
            .await
            .unwrap();
            for (i, content) in transcript.iter().enumerate() {
                sqlx::query(sqlx::AssertSqlSafe($sql(
                    "INSERT INTO messages (session_id, turn_id, role, content) VALUES ($1, $2, $3, $4)",
                )))
                .bind(ada.transcript_id)
                .bind(turn_id)
                .bind(if i % 2 == 0 { "user" } else { "assistant" })
                .bind(content)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            for (i, (_, person, conversation, content)) in memories.iter().enumerate() {
                sqlx::query(sqlx::AssertSqlSafe($sql(
                    "INSERT INTO memories (id, scope, identity_id, conversation_key, content, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )))
                .bind(uuid::Uuid::now_v7())
                .bind(if person.is_some() { "user" } else { "conversation" })
                .bind(person)
                .bind(conversation)
                .bind(content)
                .bind(start + chrono::Duration::seconds(i as i64))
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }};
    }
    match &app.pool {
        crate::helpers::TestPool::Postgres(pool) => seed!(pool, |s: &str| s.to_owned()),
        crate::helpers::TestPool::Sqlite(pool) => seed!(pool, |s: &str| s.replace('$', "?")),
    }
    let ids: Vec<i64> = store
        .recent_history(ada.transcript_id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), transcript.len());
    let terms = microclaw::memory::search_terms("an apple or a pear?");
    assert_eq!(terms, ["apple", "pear"]);
    let reads = microclaw::store::LayerReads {
        transcript_id: ada.transcript_id,
        summarized_through: ids[1],
        history_limit: 3,
        person: Some(ada_id),
        conversation_key: Some("web:room"),
        max_facts: 2,
        terms: &terms,
        recall_items: 2,
    };
    let texts = |items: &[microclaw::store::MemoryItem]| -> Vec<String> {
        items.iter().map(|m| m.content.clone()).collect()
    };

    let layers = store.memory_layers(&reads).await.unwrap();
    let recent: Vec<&str> = layers.recent.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(recent, ["apple victor", "mango uniform", "grape tango"]);
    assert_eq!(
        layers
            .recent
            .iter()
            .map(|m| m.role.as_str())
            .collect::<Vec<_>>(),
        ["assistant", "user", "assistant"]
    );
    assert_eq!(texts(&layers.facts), ["romeo quebec", "pear papa"]);
    assert_eq!(texts(&layers.notes), ["mike lima", "kilo juliet"]);
    // Both words first, then the newer of two single matches; never Bea's fact.
    assert_eq!(
        texts(&layers.recalled_memories),
        ["apple pear november", "pear papa"]
    );
    // Only messages older than the recent ones, the summarized ones included.
    let recalled: Vec<&str> = layers
        .recalled_messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(recalled, ["apple pear", "pear xray"]);

    // A longer window moves the recall's bound with it.
    let wide = store
        .memory_layers(&microclaw::store::LayerReads {
            history_limit: 100,
            recall_items: 5,
            ..reads
        })
        .await
        .unwrap();
    assert_eq!(wide.recent.len(), 6);
    assert_eq!(wide.recent[0].id, ids[2]);
    let recalled: Vec<&str> = wide
        .recalled_messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(recalled, ["apple zulu"]);
    assert_eq!(
        texts(&wide.recalled_memories),
        ["apple pear november", "pear papa", "apple sierra"]
    );

    // No person, no conversation, nothing to search for: the transcript only.
    let bare = store
        .memory_layers(&microclaw::store::LayerReads {
            person: None,
            conversation_key: None,
            terms: &[],
            ..reads
        })
        .await
        .unwrap();
    assert_eq!(bare.recent.len(), 3);
    assert!(
        bare.facts.is_empty()
            && bare.notes.is_empty()
            && bare.recalled_memories.is_empty()
            && bare.recalled_messages.is_empty(),
        "{bare:?}"
    );
    // Bea's layers hold none of Ada's.
    let beas = store
        .memory_layers(&microclaw::store::LayerReads {
            transcript_id: bea.transcript_id,
            summarized_through: 0,
            person: Some(bea_id),
            conversation_key: None,
            ..reads
        })
        .await
        .unwrap();
    assert!(beas.recent.is_empty(), "{beas:?}");
    assert_eq!(texts(&beas.facts), ["apple pear oscar"]);
    assert_eq!(texts(&beas.recalled_memories), ["apple pear oscar"]);
    assert!(beas.recalled_messages.is_empty(), "{beas:?}");
}

crate::on_both_backends!(the_memory_layers_are_bounded_ordered_and_scoped);
