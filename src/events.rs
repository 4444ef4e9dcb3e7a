//! Events (DESIGN.md 7): what the daemon publishes on `B/event` and appends to the activity log.
//!
//! An event names users, sources and reasons, never a code: the type has no field that could
//! hold one. The store gives each event its `seq` when it is committed.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a request came from. Its lockout is counted under this name, and events and
/// attributes carry it: `keypad:<name>`, `homeassistant`, `admin`, `cli`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A keypad of the config, with its name as events give it (`keypad:<name>`).
    Keypad(String),
    /// `B/alarm/set`: Home Assistant's alarm panel.
    HomeAssistant,
    /// `B/config/set`: code management.
    Admin,
    /// The offline commands.
    Cli,
}

impl Source {
    pub fn keypad(name: &str) -> Source {
        Source::Keypad(format!("keypad:{name}"))
    }
}

impl std::ops::Deref for Source {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Source::Keypad(name) => name,
            Source::HomeAssistant => "homeassistant",
            Source::Admin => "admin",
            Source::Cli => "cli",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// Every event type of DESIGN.md 7, in the order Home Assistant's event entity lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ArmedHome,
    ArmedAway,
    ArmedNight,
    ArmedVacation,
    Arming,
    Disarmed,
    Pending,
    Triggered,
    Panic,
    Duress,
    InvalidCode,
    Denied,
    Lockout,
    TriggerIgnored,
    UserAdded,
    UserUpdated,
    CodeSet,
    CodeCleared,
    UserDeactivated,
    UserReactivated,
    UserDeleted,
    /// A lockout lifted by hand (`keypad-bridge unlock`, DESIGN.md 10d).
    Unlocked,
    /// RFID tags (DESIGN 10b).
    TagAdded,
    TagRemoved,
    TagLearnExpired,
}

impl EventType {
    pub const ALL: [EventType; 25] = [
        EventType::ArmedHome,
        EventType::ArmedAway,
        EventType::ArmedNight,
        EventType::ArmedVacation,
        EventType::Arming,
        EventType::Disarmed,
        EventType::Pending,
        EventType::Triggered,
        EventType::Panic,
        EventType::Duress,
        EventType::InvalidCode,
        EventType::Denied,
        EventType::Lockout,
        EventType::TriggerIgnored,
        EventType::UserAdded,
        EventType::UserUpdated,
        EventType::CodeSet,
        EventType::CodeCleared,
        EventType::UserDeactivated,
        EventType::UserReactivated,
        EventType::UserDeleted,
        EventType::Unlocked,
        EventType::TagAdded,
        EventType::TagRemoved,
        EventType::TagLearnExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ArmedHome => "armed_home",
            EventType::ArmedAway => "armed_away",
            EventType::ArmedNight => "armed_night",
            EventType::ArmedVacation => "armed_vacation",
            EventType::Arming => "arming",
            EventType::Disarmed => "disarmed",
            EventType::Pending => "pending",
            EventType::Triggered => "triggered",
            EventType::Panic => "panic",
            EventType::Duress => "duress",
            EventType::InvalidCode => "invalid_code",
            EventType::Denied => "denied",
            EventType::Lockout => "lockout",
            EventType::TriggerIgnored => "trigger_ignored",
            EventType::UserAdded => "user_added",
            EventType::UserUpdated => "user_updated",
            EventType::CodeSet => "code_set",
            EventType::CodeCleared => "code_cleared",
            EventType::UserDeactivated => "user_deactivated",
            EventType::UserReactivated => "user_reactivated",
            EventType::UserDeleted => "user_deleted",
            EventType::Unlocked => "unlocked",
            EventType::TagAdded => "tag_added",
            EventType::TagRemoved => "tag_removed",
            EventType::TagLearnExpired => "tag_learn_expired",
        }
    }
}

/// One event. Optional fields are left out of the JSON when unknown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_type: EventType,
    pub at: Timestamp,
    /// Position in the activity log; 0 until the store commits the event.
    #[serde(default)]
    pub seq: u64,
    /// The person the event is about (who armed, or whose code was changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `keypad:<name>`, `homeassistant`, `admin` or `cli` (a timed transition keeps the
    /// source of the change that started it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why a code was refused (`denied`: the rule; `invalid_code`: `wrong_code`,
    /// `malformed_code`, `no_code`, `unknown_tag`) or a trigger ignored (the alarm state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The user's notification target, passed through for automations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// End of a lockout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Who made a code-management change (an addition to DESIGN.md 7: the acting user);
    /// `cli` for an `unlocked` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_id: Option<String>,
    /// For `arming` and `pending`: the state the delay leads to and its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_s: Option<u64>,
    /// For `code_set` / `code_cleared` of a duress code: `"duress"` (DESIGN 10a).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub which: Option<String>,
    /// `"tag"` when a tag was used (DESIGN 10b); left out for a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For `tag_added`: `true` when the tag was learned at a keypad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<bool>,
    /// For `tag_added` / `tag_removed`: the tag's id (never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_id: Option<String>,
}

impl Event {
    pub fn new(event_type: EventType, at: Timestamp) -> Event {
        Event {
            event_type,
            at,
            seq: 0,
            user: None,
            user_id: None,
            source: None,
            reason: None,
            notify: None,
            until: None,
            by: None,
            by_id: None,
            target_state: None,
            delay_s: None,
            which: None,
            credential: None,
            learned: None,
            tag_id: None,
        }
    }

    pub fn source(mut self, source: &str) -> Event {
        self.source = Some(source.to_owned());
        self
    }

    pub fn reason(mut self, reason: &str) -> Event {
        self.reason = Some(reason.to_owned());
        self
    }

    /// Names the user the event is about, with their notification target.
    pub fn about(mut self, user: &crate::users::User) -> Event {
        self.user = Some(user.name.clone());
        self.user_id = Some(user.id.clone());
        self.notify = user.notify.clone();
        self
    }

    /// Names who acted, when that is known.
    pub fn by(mut self, actor: Option<&crate::users::User>) -> Event {
        if let Some(actor) = actor {
            self.by = Some(actor.name.clone());
            self.by_id = Some(actor.id.clone());
        }
        self
    }

    /// Whether the event concerns this user, as subject or as actor.
    pub fn involves(&self, user_id: &str) -> bool {
        self.user_id.as_deref() == Some(user_id) || self.by_id.as_deref() == Some(user_id)
    }

    pub fn to_json(&self) -> String {
        // An Event only holds strings, numbers and timestamps: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_serialises_to_its_design_name() {
        for t in EventType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, serde_json::Value::String(t.as_str().into()));
        }
        let names: std::collections::HashSet<_> =
            EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), 25);
    }

    #[test]
    fn unknown_fields_are_left_out_of_the_json() {
        let at: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let json = Event::new(EventType::Lockout, at)
            .source("keypad:hall")
            .to_json();
        assert_eq!(
            json,
            r#"{"event_type":"lockout","at":"2026-11-23T10:00:00Z","seq":0,"source":"keypad:hall"}"#
        );
    }
}
