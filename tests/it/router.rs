//! The router against fake model servers, one per candidate, driven directly.

use std::time::Duration;

use microclaw::{
    config::Settings,
    providers::{
        ChatRequest, Message, Role,
        health::{Admission, Health},
        router::{Router, StepOutcome},
    },
};

use crate::{
    fakes::{FakeModel, ModelFault},
    helpers::{SECRET, redis_url},
};

fn env(name: &str) -> Option<String> {
    match name {
        "MICROCLAW_CUSTOM_SECRET" => Some(SECRET.into()),
        "KEY_ONE" => Some("key-one".into()),
        "KEY_TWO" => Some("key-two".into()),
        _ => None,
    }
}

/// A `[models.NAME]` table for a fake, with short timeouts.
fn model(name: &str, provider: &str, fake: &FakeModel, extra: &str) -> String {
    let url = if provider == "anthropic" {
        fake.anthropic_base_url()
    } else {
        fake.base_url.clone()
    };
    format!(
        r#"
[models.{name}]
provider = "{provider}"
base_url = "{url}"
model = "{name}-model"
api_key_env = "KEY_ONE"
timeout = "1s"
max_attempts = 2
min_backoff = "10ms"
max_backoff = "50ms"
max_retry_after = "1s"
{extra}
"#
    )
}

struct Setup {
    settings: Settings,
}

impl Setup {
    fn new(models: &[String], route: &str, redis: &str) -> Self {
        let prefix = format!("router-test-{}", uuid::Uuid::new_v4().simple());
        let text = format!(
            r#"
[redis]
url = "{redis}"
key_prefix = "{prefix}"
timeout = "100ms"

[router]
breaker_failures = 2
breaker_cooldown = "1s"
key_cooldown = "1h"
step_deadline = "20s"

[worker]
recovery_window = "1m"
{models}
[routes.main]
{route}
"#,
            models = models.join("\n")
        );
        Self {
            settings: Settings::from_toml(&text, &env).expect("router test config is valid"),
        }
    }

    /// A router with its own health state (as another worker process would have).
    fn router(&self) -> Router {
        microclaw::install_tls_provider();
        let redis = microclaw::dedup::connect(&self.settings.redis).unwrap();
        let health = Health::new(
            &self.settings.router,
            redis,
            &self.settings.redis.key_prefix,
            self.settings.redis.timeout.0,
        );
        Router::new(&self.settings, &reqwest::Client::new(), health)
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        system: None,
        messages: vec![Message::text(Role::User, text)],
        tools: vec![],
        trace_id: "router-test".into(),
    }
}

fn trail(outcome: &StepOutcome) -> Vec<String> {
    outcome
        .calls
        .iter()
        .map(|c| format!("{}:{}", c.candidate, c.outcome))
        .collect()
}

#[tokio::test]
async fn overload_and_server_errors_fail_over_in_order() {
    let (a, b, c) = (
        FakeModel::start().await,
        FakeModel::start().await,
        FakeModel::start().await,
    );
    a.always(Some(ModelFault::Status(529, None)));
    b.always_fail(500);
    let setup = Setup::new(
        &[
            model("a", "anthropic", &a, ""),
            model("b", "openai", &b, ""),
            model("c", "openai", &c, ""),
        ],
        r#"candidates = ["a", "b", "c"]"#,
        &redis_url(),
    );
    let outcome = setup.router().complete("main", &request("x:hello")).await;
    assert_eq!(
        outcome.result.as_ref().unwrap().text(),
        "answer to [x:hello]"
    );
    assert_eq!(outcome.served_by.as_deref(), Some("c"));
    assert!(outcome.fallback);
    assert_eq!(
        trail(&outcome),
        [
            "a:overloaded",
            "a:overloaded",
            "b:server_error",
            "b:server_error",
            "c:ok"
        ]
    );
}

#[tokio::test]
async fn a_timeout_fails_over_within_the_deadline() {
    let (a, b) = (FakeModel::start().await, FakeModel::start().await);
    a.set_delay(Duration::from_secs(3));
    let setup = Setup::new(
        &[model("a", "openai", &a, ""), model("b", "openai", &b, "")],
        r#"candidates = ["a", "b"]"#,
        &redis_url(),
    );
    let started = std::time::Instant::now();
    let outcome = setup.router().complete("main", &request("x:slow")).await;
    assert_eq!(outcome.served_by.as_deref(), Some("b"));
    assert_eq!(trail(&outcome), ["a:timeout", "a:timeout", "b:ok"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "within the step deadline"
    );
}

async fn context_errors_go_to_a_larger_window(wire: &str) {
    let (a, b, c) = (
        FakeModel::start().await,
        FakeModel::start().await,
        FakeModel::start().await,
    );
    a.always(Some(ModelFault::ContextTooLong));
    let setup = Setup::new(
        &[
            model("a", wire, &a, "context_window = 8000"),
            model("b", "openai", &b, "context_window = 4000"),
            model("c", "openai", &c, "context_window = 200000"),
        ],
        r#"candidates = ["a", "b", "c"]"#,
        &redis_url(),
    );
    let outcome = setup.router().complete("main", &request("x:long")).await;
    assert_eq!(outcome.served_by.as_deref(), Some("c"));
    assert_eq!(
        trail(&outcome),
        ["a:context_window", "c:ok"],
        "no retry, smaller window skipped"
    );
    assert!(b.calls().is_empty());
}

#[tokio::test]
async fn context_errors_go_to_a_larger_window_over_openai() {
    context_errors_go_to_a_larger_window("openai").await;
}

#[tokio::test]
async fn context_errors_go_to_a_larger_window_over_anthropic() {
    context_errors_go_to_a_larger_window("anthropic").await;
}

#[tokio::test]
async fn quota_errors_never_retry_and_bench_the_key() {
    for wire in ["openai", "anthropic"] {
        let (a, b) = (FakeModel::start().await, FakeModel::start().await);
        a.always(Some(ModelFault::QuotaExhausted));
        let setup = Setup::new(
            &[model("a", wire, &a, ""), model("b", "openai", &b, "")],
            r#"candidates = ["a", "b"]"#,
            &redis_url(),
        );
        let router = setup.router();
        let outcome = router.complete("main", &request("x:one")).await;
        assert_eq!(trail(&outcome), ["a:quota_exhausted", "b:ok"], "{wire}");
        let outcome = router.complete("main", &request("x:two")).await;
        assert_eq!(
            trail(&outcome),
            ["b:ok"],
            "{wire}: the benched key is not tried again"
        );
        assert_eq!(a.calls().len(), 1);
        assert_eq!(
            outcome.calls[0].key_id.as_deref(),
            Some("KEY_ONE"),
            "the key's id, never the key"
        );
    }
}

#[tokio::test]
async fn keys_rotate_on_429() {
    let a = FakeModel::start().await;
    a.push_fault(ModelFault::Status(429, None));
    let setup = Setup::new(
        &[model("a", "openai", &a, r#"api_key_envs = ["KEY_TWO"]"#)],
        r#"candidates = ["a"]"#,
        &redis_url(),
    );
    let outcome = setup.router().complete("main", &request("x:keys")).await;
    assert_eq!(trail(&outcome), ["a:rate_limited", "a:ok"]);
    let keys: Vec<String> = a.calls().into_iter().map(|c| c.api_key).collect();
    assert_eq!(keys, ["key-one", "key-two"]);
}

/// Two failing calls open a's breaker: the next step skips a; after the cooldown
/// one probe goes to a, succeeds, and closes the breaker.
async fn breaker_cycle(redis: &str) {
    let (a, b) = (FakeModel::start().await, FakeModel::start().await);
    a.always_fail(500);
    let setup = Setup::new(
        &[model("a", "openai", &a, ""), model("b", "openai", &b, "")],
        r#"candidates = ["a", "b"]"#,
        redis,
    );
    let router = setup.router();
    let first = router.complete("main", &request("x:1")).await;
    assert_eq!(trail(&first), ["a:server_error", "a:server_error", "b:ok"]);
    let second = router.complete("main", &request("x:2")).await;
    assert_eq!(
        trail(&second),
        ["b:ok"],
        "a is skipped while its breaker is open"
    );

    a.heal();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = router.complete("main", &request("x:3")).await;
    assert_eq!(trail(&third), ["a:ok"], "one probe after the cooldown");
    let fourth = router.complete("main", &request("x:4")).await;
    assert_eq!(trail(&fourth), ["a:ok"], "closed again");
}

#[tokio::test]
async fn the_breaker_opens_skips_and_closes_after_the_cooldown() {
    breaker_cycle(&redis_url()).await;
}

#[tokio::test]
async fn with_redis_down_the_router_keeps_working_on_local_state() {
    breaker_cycle("redis://127.0.0.1:1").await;
}

#[tokio::test]
async fn two_routers_share_breaker_state_through_redis() {
    let (a, b) = (FakeModel::start().await, FakeModel::start().await);
    a.always_fail(503);
    let setup = Setup::new(
        &[model("a", "openai", &a, ""), model("b", "openai", &b, "")],
        r#"candidates = ["a", "b"]"#,
        &redis_url(),
    );
    let (one, two) = (setup.router(), setup.router());
    let worker_one = tokio::spawn(async move { one.complete("main", &request("x:1")).await });
    let outcome = worker_one.await.unwrap();
    assert_eq!(outcome.served_by.as_deref(), Some("b"));
    assert_eq!(two.health().admission("a").await, Admission::Open);
    let worker_two = tokio::spawn(async move { two.complete("main", &request("x:2")).await });
    let outcome = worker_two.await.unwrap();
    assert_eq!(
        trail(&outcome),
        ["b:ok"],
        "the other router skips a without trying it"
    );
    assert_eq!(a.calls().len(), 2);
}

#[tokio::test]
async fn lowest_cost_picks_the_cheapest_candidate() {
    let (pricey, cheap) = (FakeModel::start().await, FakeModel::start().await);
    let setup = Setup::new(
        &[
            model(
                "pricey",
                "openai",
                &pricey,
                "input_price = 10.0\noutput_price = 30.0",
            ),
            model(
                "cheap",
                "openai",
                &cheap,
                "input_price = 0.1\noutput_price = 0.4",
            ),
        ],
        "strategy = \"lowest_cost\"\ncandidates = [\"pricey\", \"cheap\"]",
        &redis_url(),
    );
    let outcome = setup.router().complete("main", &request("x:cost")).await;
    assert_eq!(outcome.served_by.as_deref(), Some("cheap"));
    assert!(pricey.calls().is_empty());
    let call = &outcome.calls[0];
    let expected = (12.0 * 0.1 + 5.0 * 0.4) / 1_000_000.0;
    assert!(
        (call.cost_usd - expected).abs() < 1e-12,
        "cost from the price table: {}",
        call.cost_usd
    );
}

#[tokio::test]
async fn lowest_latency_picks_the_fastest_candidate() {
    let (slow, fast) = (FakeModel::start().await, FakeModel::start().await);
    slow.set_delay(Duration::from_millis(300));
    let setup = Setup::new(
        &[
            model("slow", "openai", &slow, ""),
            model("fast", "openai", &fast, ""),
        ],
        "strategy = \"lowest_latency\"\ncandidates = [\"slow\", \"fast\"]",
        &redis_url(),
    );
    let router = setup.router();
    // Unmeasured candidates go first, so both get measured.
    let served: Vec<String> = {
        let mut served = Vec::new();
        for i in 0..4 {
            let outcome = router.complete("main", &request(&format!("x:{i}"))).await;
            served.push(outcome.served_by.unwrap());
        }
        served
    };
    assert_eq!(served, ["slow", "fast", "fast", "fast"]);
}

mod in_turns {
    use std::time::Duration;

    use crate::{
        fakes::{FakeModel, ModelFault},
        helpers::{Backend, TestApp, TestConfig, TestMessage},
    };

    async fn model_calls_are_recorded_with_their_turn(backend: Backend) {
        let app = TestApp::spawn_with_worker(TestConfig {
            backend,
            ..TestConfig::default()
        })
        .await;
        app.model.push_fault(ModelFault::Status(429, None));
        app.post_message(&TestMessage::direct("mc1", "eva", "eva:hi"))
            .await;
        app.wait_for_replies(1, Duration::from_secs(20)).await;
        app.drain(Duration::from_secs(10)).await;
        assert_eq!(
            app.strings(
                "SELECT candidate || ':' || provider || ':' || outcome || ':' || coalesce(key_id, '-')
                   || ':' || coalesce(input_tokens, -1) || ':' || user_key
                   FROM model_calls ORDER BY id"
            )
            .await,
            [
                "fake:openai:rate_limited:TEST_MODEL_KEY:-1:web:eva",
                "fake:openai:ok:TEST_MODEL_KEY:12:web:eva"
            ]
        );
        assert_eq!(
            app.count("SELECT count(*) FROM model_calls m JOIN turns t ON t.id = m.turn_id")
                .await,
            2,
            "every call belongs to its turn"
        );
        app.stop().await;
    }

    crate::on_both_backends!(model_calls_are_recorded_with_their_turn);

    #[tokio::test]
    async fn a_budget_stops_model_calls_with_a_clear_message() {
        let app = TestApp::spawn_with_worker(TestConfig {
            agent_extra: "daily_user_token_budget = 20\nbudget_message = \"Budget used up for today.\"",
            ..TestConfig::default()
        })
        .await;
        for (i, expected) in [
            "answer to [fay:1]",
            "answer to [fay:2]",
            "Budget used up for today.",
        ]
        .iter()
        .enumerate()
        {
            let n = i + 1;
            app.post_message(&TestMessage::direct(
                &format!("b{n}"),
                "fay",
                &format!("fay:{n}"),
            ))
            .await;
            let replies = app.wait_for_replies(n, Duration::from_secs(20)).await;
            assert_eq!(&replies[i].event.data.text, expected);
        }
        assert_eq!(
            app.model.calls().len(),
            2,
            "no model call once the budget is used up"
        );
        // Another person still has budget.
        app.post_message(&TestMessage::direct("b4", "gus", "gus:hi"))
            .await;
        let replies = app.wait_for_replies(4, Duration::from_secs(20)).await;
        assert_eq!(replies[3].event.data.text, "answer to [gus:hi]");
        app.stop().await;
    }

    #[tokio::test]
    async fn a_reply_from_a_fallback_model_carries_the_note() {
        let backup = FakeModel::start().await;
        let app = TestApp::spawn_with_worker(TestConfig {
            agent_model: "main",
            extra: format!(
                r#"
[models.backup]
provider = "openai"
base_url = "{}"
model = "backup-model"
timeout = "1s"
max_attempts = 1

[routes.main]
candidates = ["fake", "backup"]
fallback_note = "(answered by a backup model)"
"#,
                backup.base_url
            ),
            ..TestConfig::default()
        })
        .await;
        app.model.always_fail(500);
        app.post_message(&TestMessage::direct("fb1", "hal", "hal:hi"))
            .await;
        let replies = app.wait_for_replies(1, Duration::from_secs(20)).await;
        assert_eq!(
            replies[0].event.data.text,
            "answer to [hal:hi]\n\n(answered by a backup model)"
        );
        app.stop().await;
    }
}
