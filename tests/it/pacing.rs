//! Outbound pacing shared by workers through Redis.

use std::time::{Duration, Instant};

use microclaw::channels::pacing::{Pace, Pacer};

use crate::helpers::redis_url;

fn pacer(prefix: &str, url: &str) -> Pacer {
    let config = microclaw::config::RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        ..Default::default()
    };
    Pacer::new(
        microclaw::dedup::connect(&config).unwrap(),
        prefix,
        Duration::from_millis(200),
    )
}

#[tokio::test]
async fn two_workers_share_one_pace_per_chat_through_redis() {
    let prefix = format!("pace-test-{}", uuid::Uuid::new_v4().simple());
    let (one, two) = (pacer(&prefix, &redis_url()), pacer(&prefix, &redis_url()));
    let chat = [Pace::new("telegram:bot:chat:1", Duration::from_millis(400))];
    one.wait_turn(&chat).await;
    let started = Instant::now();
    two.wait_turn(&chat).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the second worker waited for the first one's slot ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_redis_down_pacing_falls_back_to_the_process() {
    let pacer = pacer("pace-down", "redis://127.0.0.1:1");
    let chat = [Pace::new("slack:C1", Duration::from_millis(150))];
    let started = Instant::now();
    for _ in 0..3 {
        pacer.wait_turn(&chat).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}
