//! The delivery retry schedule: data with jitter, and the platform's Retry-After.
//!
//! The wait before attempt n+1 is `retry_schedule[n-1]` (the last entry repeats),
//! moved by up to ± `jitter` of itself so that deliveries that failed together do
//! not retry together. A platform's Retry-After wins when it is longer, up to
//! `max_retry_after`.

use std::time::Duration;

use crate::config::DeliveryConfig;

/// The wait after failed attempt `attempt` (1-based).
pub fn delivery_wait(
    config: &DeliveryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let index = (attempt.max(1) as usize - 1).min(config.retry_schedule.len().saturating_sub(1));
    let base = config
        .retry_schedule
        .get(index)
        .map(|s| s.0)
        .unwrap_or_default();
    let spread = (fastrand::f64() * 2.0 - 1.0) * config.jitter;
    let jittered = base.mul_f64((1.0 + spread).max(0.0));
    match retry_after {
        Some(wait) => jittered.max(wait.min(config.max_retry_after.0)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Span;

    fn config(schedule: &[u64], jitter: f64) -> DeliveryConfig {
        DeliveryConfig {
            retry_schedule: schedule.iter().map(|s| Span::secs(*s)).collect(),
            jitter,
            max_retry_after: Span::secs(60),
            ..DeliveryConfig::default()
        }
    }

    #[test]
    fn follows_the_schedule_and_repeats_its_last_entry() {
        let c = config(&[5, 30], 0.0);
        assert_eq!(delivery_wait(&c, 1, None), Duration::from_secs(5));
        assert_eq!(delivery_wait(&c, 2, None), Duration::from_secs(30));
        assert_eq!(delivery_wait(&c, 7, None), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let c = config(&[100], 0.2);
        let waits: Vec<Duration> = (0..200).map(|_| delivery_wait(&c, 1, None)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(80) && *w <= Duration::from_secs(120))
        );
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    #[test]
    fn retry_after_wins_when_longer_up_to_the_cap() {
        let c = config(&[5], 0.0);
        assert_eq!(
            delivery_wait(&c, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(5)
        );
        assert_eq!(
            delivery_wait(&c, 1, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
        assert_eq!(
            delivery_wait(&c, 1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }
}
