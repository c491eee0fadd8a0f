//! Reminders and follow-ups: `schedule_message`, `list_scheduled`,
//! `cancel_scheduled`.
//!
//! A scheduled message is planned in the turn's scope and written in the turn's
//! commit (see `store::portable::scheduled`), so a crashed or fenced turn
//! schedules nothing and its rerun schedules once; it is sent when due by every
//! worker's dispatcher as one more
//! part of the reply of the turn that scheduled it: same channel, same
//! conversation, same delivery guarantees (retries, admin queue). Times are
//! given in the person's IANA time zone; people list and cancel their own, and
//! operators every one (`/admin/v1/scheduled`).

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};

use super::{Tool, TurnScope, string_argument};
use crate::{providers::ToolSpec, store::PlannedSchedule};

pub const SCHEDULE: &str = "schedule_message";
pub const LIST: &str = "list_scheduled";
pub const CANCEL: &str = "cancel_scheduled";

/// The latest a message may be scheduled for.
const HORIZON_DAYS: i64 = 366;

pub struct ScheduleMessage;
pub struct ListScheduled;
pub struct CancelScheduled;

/// When `at` (a local date and time, or a timestamp with an offset) in `zone`
/// happens.
fn due_time(at: &str, zone: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let tz = jiff::tz::TimeZone::get(zone)
        .map_err(|_| format!("`{zone}` is not an IANA time zone (e.g. Europe/Rome)"))?;
    let instant = match at.parse::<jiff::Timestamp>() {
        Ok(instant) => instant,
        Err(_) => at
            .replace(' ', "T")
            .parse::<jiff::civil::DateTime>()
            .map_err(|_| format!("`{at}` is not a date and time like 2026-11-26T09:00"))?
            .to_zoned(tz)
            .map_err(|e| format!("`{at}` does not exist in {zone}: {e}"))?
            .timestamp(),
    };
    chrono::DateTime::from_timestamp_millis(instant.as_millisecond())
        .ok_or_else(|| format!("`{at}` is out of range"))
}

/// `due` as the person reads it.
fn local(due: chrono::DateTime<chrono::Utc>, zone: &str) -> String {
    let Ok(tz) = jiff::tz::TimeZone::get(zone) else {
        return due.to_rfc3339();
    };
    match jiff::Timestamp::from_millisecond(due.timestamp_millis()) {
        Ok(instant) => instant
            .to_zoned(tz)
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string(),
        Err(_) => due.to_rfc3339(),
    }
}

impl Tool for ScheduleMessage {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: SCHEDULE.into(),
            description: "Send the person a message later, in this conversation (a reminder \
                          or a follow-up). Give the local date and time and their time zone."
                .into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "at": {"type": "string", "description": "Local date and time, e.g. 2026-11-26T09:00"},
                    "timezone": {"type": "string", "description": "The person's IANA time zone, e.g. Europe/Rome (default UTC)"},
                    "text": {"type": "string", "description": "The message to send then"}
                },
                "required": ["at", "text"],
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
            let at = string_argument(arguments, "at")?;
            let text = string_argument(arguments, "text")?;
            let zone = arguments
                .get("timezone")
                .and_then(Value::as_str)
                .filter(|z| !z.trim().is_empty())
                .unwrap_or("UTC");
            let due = due_time(at, zone)?;
            let now = chrono::Utc::now();
            if due < now - chrono::Duration::minutes(1) {
                return Err(format!("{} is in the past", local(due, zone)));
            }
            if due > now + chrono::Duration::days(HORIZON_DAYS) {
                return Err("that is more than a year away".into());
            }
            let person = scope
                .store
                .identity_of(&scope.connector_id, &scope.sender_id)
                .await
                .map_err(|e| format!("scheduling is unavailable: {e}"))?;
            let id = uuid::Uuid::now_v7();
            scope.schedule(PlannedSchedule {
                id,
                identity_id: person,
                connector_id: scope.connector_id.clone(),
                channel: scope.reply.channel.clone(),
                target: scope.reply.target.clone(),
                text: text.to_owned(),
                due_at: due,
                timezone: zone.to_owned(),
            });
            Ok(format!("Scheduled for {} (id {id}).", local(due, zone)))
        }
        .boxed()
    }
}

impl Tool for ListScheduled {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: LIST.into(),
            description: "List the messages scheduled for the person that are not sent yet.".into(),
            schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        }
    }

    fn call<'a>(
        &'a self,
        _arguments: &'a Value,
        scope: &'a TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move {
            let unavailable = |e| format!("scheduled messages are unavailable: {e}");
            let Some(person) = scope
                .store
                .identity_of(&scope.connector_id, &scope.sender_id)
                .await
                .map_err(unavailable)?
            else {
                return Ok("Nothing is scheduled.".into());
            };
            let pending = scope
                .store
                .scheduled_messages(Some(person), false, 50)
                .await
                .map_err(unavailable)?;
            if pending.is_empty() {
                return Ok("Nothing is scheduled.".into());
            }
            Ok(pending
                .iter()
                .map(|m| format!("{} at {}: {}", m.id, local(m.due_at, &m.timezone), m.text))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        .boxed()
    }
}

impl Tool for CancelScheduled {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: CANCEL.into(),
            description: "Cancel one of the person's scheduled messages by its id.".into(),
            schema: json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "The id list_scheduled gave"}},
                "required": ["id"],
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
            let id: uuid::Uuid = string_argument(arguments, "id")?
                .parse()
                .map_err(|_| "`id` is not a scheduled message id".to_owned())?;
            let unavailable = |e| format!("scheduled messages are unavailable: {e}");
            let person = scope
                .store
                .identity_of(&scope.connector_id, &scope.sender_id)
                .await
                .map_err(unavailable)?
                .ok_or("there is no such scheduled message")?;
            match scope
                .store
                .cancel_scheduled(id, Some(person), "person")
                .await
                .map_err(unavailable)?
            {
                Some(m) if m.status == "cancelled" => Ok(format!(
                    "Cancelled the message for {}.",
                    local(m.due_at, &m.timezone)
                )),
                Some(m) => Err(format!("that message is already {}", m.status)),
                None => Err("there is no such scheduled message".into()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_are_read_in_the_persons_zone() {
        let due = due_time("2026-11-26T09:00", "Europe/Rome").unwrap();
        assert_eq!(due.to_rfc3339(), "2026-11-26T08:00:00+00:00");
        assert_eq!(
            due_time("2026-11-26 09:00", "UTC").unwrap().to_rfc3339(),
            "2026-11-26T09:00:00+00:00"
        );
        let explicit = due_time("2026-11-26T09:00:00Z", "Asia/Tokyo").unwrap();
        assert_eq!(explicit.to_rfc3339(), "2026-11-26T09:00:00+00:00");
        assert_eq!(local(due, "Europe/Rome"), "2026-11-26 09:00 CET");
        assert!(due_time("tomorrow", "UTC").is_err());
        assert!(due_time("2026-11-26T09:00", "Mars/Olympus").is_err());
    }
}
