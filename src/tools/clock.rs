//! `current_time`: the current date and time in an IANA time zone.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};

use super::Tool;
use crate::providers::ToolSpec;

pub const NAME: &str = "current_time";

pub struct CurrentTime;

impl Tool for CurrentTime {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: NAME.into(),
            description: "The current date and time in a time zone.".into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "IANA time zone name, e.g. Europe/Paris or America/New_York; UTC when omitted"
                    }
                },
                "additionalProperties": false
            }),
        }
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        _scope: &'a super::TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move { now_in(arguments, jiff::Timestamp::now()) }.boxed()
    }
}

fn now_in(arguments: &Value, now: jiff::Timestamp) -> Result<String, String> {
    let zone_name = match arguments.get("timezone") {
        None | Some(Value::Null) => "UTC",
        Some(Value::String(name)) => name.as_str(),
        Some(other) => return Err(format!("timezone must be a string, got {other}")),
    };
    let zone = jiff::tz::TimeZone::get(zone_name).map_err(|_| {
        format!("unknown time zone `{zone_name}`; use an IANA name such as Europe/Paris")
    })?;
    let local = now.to_zoned(zone);
    Ok(format!(
        "{} ({zone_name}, {})",
        local.strftime("%Y-%m-%d %H:%M:%S %:z"),
        local.strftime("%A")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> jiff::Timestamp {
        "2026-01-15T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn tells_the_time_in_a_zone() {
        assert_eq!(
            now_in(&json!({"timezone": "Asia/Tokyo"}), at()).unwrap(),
            "2026-01-15 21:00:00 +09:00 (Asia/Tokyo, Thursday)"
        );
        assert_eq!(
            now_in(&json!({}), at()).unwrap(),
            "2026-01-15 12:00:00 +00:00 (UTC, Thursday)"
        );
    }

    #[test]
    fn refuses_unknown_zones_with_a_reason() {
        assert!(
            now_in(&json!({"timezone": "Mars/Olympus"}), at())
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(now_in(&json!({"timezone": 3}), at()).is_err());
    }
}
