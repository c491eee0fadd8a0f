//! Rehydrating a turn's context: the session row, the newest messages, the
//! person's facts, the long-term searches (facts and transcript), and fitting it
//! all into the model's window; for a session with 10 past messages (the
//! baseline) and one with 10,000, in the same run. The memory design promises
//! the second costs about the same as the first.
//!
//! The store also holds 200 other sessions of 20 messages. Recall searches use
//! words that occur in every seeded message (the worst case for ranking).
//!
//! `cargo bench --bench context_assembly` runs on the embedded SQLite store, and
//! on Postgres too when `MICROCLAW_BENCH_POSTGRES` (a server URL such as
//! `postgres://postgres@127.0.0.1:5432`) is set; a scratch database is created and
//! dropped.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use microclaw::{
    config::{DatabaseConfig, MemoryConfig},
    memory::{self, MemoryScope, context},
    providers::{Message, Role},
    store::{PendingEvent, Store},
};
use uuid::Uuid;

const PERSON: &str = "bench-user";
const OTHER_SESSIONS: usize = 200;

/// A store with one person and one direct session of `messages` past messages.
async fn seeded(store: &Store, messages: usize) -> Uuid {
    store.migrate().await.expect("migrate");
    let message = microclaw::channels::InboundMessage {
        platform_message_id: format!("seed-{}", Uuid::now_v7()),
        sender_id: format!("{PERSON}-{}", Uuid::now_v7()),
        sender_name: Some("Bench".into()),
        conversation_id: "dm".into(),
        thread_id: None,
        is_group: false,
        text: "seed".into(),
        attachments: Vec::new(),
        sent_at: None,
    };
    let routing = microclaw::store::Routing {
        connector_id: "web",
        channel: "custom",
        agent: "assistant",
    };
    let microclaw::store::Recorded::Accepted { session_id, .. } = store
        .record_inbound(&routing, &message, 3)
        .await
        .expect("record")
    else {
        panic!("seed message was a duplicate");
    };
    let identity = store
        .identity_of("web", &message.sender_id)
        .await
        .expect("identity")
        .expect("identity exists");
    let turn_id = Uuid::now_v7();
    let rows: Vec<(String, String)> = (0..messages)
        .map(|i| {
            (
                if i % 2 == 0 { "user" } else { "assistant" }.to_owned(),
                format!(
                    "message {i} about topic{} with some ordinary words about plans and lunch",
                    i % 50
                ),
            )
        })
        .collect();
    let facts: Vec<String> = (0..20)
        .map(|i| format!("fact {i}: likes topic{i}"))
        .collect();
    // Written directly, in one transaction: seeding through 5,000 turns would
    // measure the seeding, not the read.
    macro_rules! seed {
        ($pool:expr, $sql:expr) => {{
            let mut tx = $pool.begin().await.expect("begin");
            sqlx::query(sqlx::AssertSqlSafe($sql(
                "INSERT INTO turns (id, session_id, first_seq, last_seq, status, trace_id, started_at)
                 VALUES ($1, $2, 1, 1, 'completed', 'bench', $3)",
            )))
            .bind(turn_id)
            .bind(session_id)
            .bind(chrono::Utc::now())
            .execute(&mut *tx)
            .await
            .expect("turn");
            for (role, content) in &rows {
                sqlx::query(sqlx::AssertSqlSafe($sql(
                    "INSERT INTO messages (session_id, turn_id, role, content) VALUES ($1, $2, $3, $4)",
                )))
                .bind(session_id)
                .bind(turn_id)
                .bind(role)
                .bind(content)
                .execute(&mut *tx)
                .await
                .expect("message");
            }
            for content in &facts {
                sqlx::query(sqlx::AssertSqlSafe($sql(
                    "INSERT INTO memories (id, scope, identity_id, content, created_at)
                     VALUES ($1, 'user', $2, $3, $4)",
                )))
                .bind(Uuid::now_v7())
                .bind(identity)
                .bind(content)
                .bind(chrono::Utc::now())
                .execute(&mut *tx)
                .await
                .expect("fact");
            }
            tx.commit().await.expect("commit");
        }};
    }
    match store {
        Store::Postgres(pool) => seed!(pool, |s: &str| s.to_owned()),
        Store::Sqlite(pool) => seed!(pool, |s: &str| s.replace('$', "?")),
    }
    session_id
}

/// What a turn does before calling the model.
async fn rehydrate(store: &Store, config: &MemoryConfig, session_id: Uuid) -> usize {
    let session = store
        .session_info(session_id)
        .await
        .expect("session")
        .expect("session exists");
    let event = PendingEvent {
        id: Uuid::now_v7(),
        seq: 2,
        connector_id: "web".into(),
        platform_message_id: "now".into(),
        sender_id: PERSON.into(),
        sender_name: Some("Bench".into()),
        conversation_id: "dm".into(),
        thread_id: None,
        is_group: false,
        text: "what did we say about topic7 and lunch plans?".into(),
        attachments: sqlx::types::Json(Vec::new()),
        trace_id: "bench".into(),
        identity_id: session.identity_id,
    };
    let events = [event];
    let scope = MemoryScope::of(&session, &events, config);
    let layers = memory::rehydrate(store, config, &session, &scope, &events, 20)
        .await
        .expect("rehydrate");
    let assembled = context::assemble(
        "You are a helpful assistant.",
        &[],
        &layers,
        vec![Message::text(Role::User, events[0].text.clone())],
        context::Budget {
            context_window: 128_000,
            reply_reserve: 1_024,
            tokenizer: memory::tokens::Tokenizer::O200kBase,
        },
        config,
    );
    assembled.messages.len()
}

fn bench_backend(c: &mut Criterion, runtime: &tokio::runtime::Runtime, name: &str, store: Store) {
    let config = MemoryConfig::default();
    // Other people's sessions, so the store looks like one in use (and Postgres'
    // statistics see many sessions, as in production).
    for _ in 0..OTHER_SESSIONS {
        runtime.block_on(seeded(&store, 20));
    }
    let small = runtime.block_on(seeded(&store, 10));
    let large = runtime.block_on(seeded(&store, 10_000));
    if let Store::Postgres(pool) = &store {
        runtime
            .block_on(sqlx::query("ANALYZE").execute(pool))
            .expect("analyze");
    }
    let mut group = c.benchmark_group(format!("context_assembly/{name}"));
    group.bench_function("10 messages (baseline)", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(rehydrate(&store, &config, small).await) })
    });
    group.bench_function("10,000 messages", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(rehydrate(&store, &config, large).await) })
    });
    group.finish();
}

fn assembly(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = std::env::temp_dir().join(format!("microclaw-bench-{}", Uuid::new_v4().simple()));
    let sqlite = runtime
        .block_on(Store::open(&DatabaseConfig {
            url: format!("sqlite://{}", dir.join("bench.db").display()),
            ..DatabaseConfig::default()
        }))
        .expect("sqlite store");
    bench_backend(c, &runtime, "sqlite", sqlite);
    std::fs::remove_dir_all(&dir).ok();

    if let Ok(server) = std::env::var("MICROCLAW_BENCH_POSTGRES") {
        let name = format!("mc_bench_{}", Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        let store = runtime
            .block_on(Store::open(&DatabaseConfig {
                url: url.clone(),
                ..DatabaseConfig::default()
            }))
            .expect("postgres store");
        runtime
            .block_on(store.create_database_if_missing(&url))
            .expect("create database");
        bench_backend(c, &runtime, "postgres", store.clone());
        runtime.block_on(async {
            if let Store::Postgres(pool) = &store {
                pool.close().await;
            }
            let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
                .await
                .expect("admin");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await
            .expect("drop");
        });
    }
}

criterion_group!(benches, assembly);
criterion_main!(benches);
