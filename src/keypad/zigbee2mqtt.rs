//! Zigbee2MQTT keypads (IAS ACE): the device's whole state, with `action`, `action_code`,
//! `action_transaction` when a key was pressed; replies and panel status on `<topic>/set`.
//!
//! Act only when `action` is a non-empty string (Zigbee2MQTT leaves it out of other state
//! messages, older versions send `null`, the legacy mode `""`). `action_code` is a string and
//! keeps its leading zeros. See `tests/fixtures/zigbee2mqtt/` for real messages.

use serde_json::{json, Map, Value};

use super::{Answer, KeypadAction, KeypadInput, Parsed, TypedCode};
use crate::alarm::{AlarmState, ArmMode};

pub fn parse(payload: &[u8]) -> Parsed {
    let value = match super::json_object(payload, "") {
        Ok(value) => value,
        Err(invalid) => return invalid,
    };
    let Value::Object(map) = &value.0 else {
        return Parsed::Ignore;
    };
    let action = match map.get("action") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Parsed::Ignore,
    };
    let action = match action {
        "disarm" => KeypadAction::Disarm,
        "emergency" | "panic" => KeypadAction::Panic,
        other => match ArmMode::find(|w| w.zigbee_action == Some(other)) {
            Some(mode) => KeypadAction::Arm(mode),
            // Not echoed: a misbehaving device may put anything there.
            None => {
                return Parsed::Invalid(
                    "unsupported keypad action; the bridge acts on disarm, arm_all_zones, \
                     arm_day_zones, arm_night_zones, emergency and panic"
                        .into(),
                )
            }
        },
    };
    Parsed::Input(KeypadInput {
        action,
        code: code(map),
        transaction: map
            .get("action_transaction")
            .and_then(Value::as_u64)
            .and_then(|t| u8::try_from(t).ok()),
    })
}

fn code(map: &Map<String, Value>) -> Option<TypedCode> {
    match map.get("action_code") {
        None | Some(Value::Null) => None,
        // A Frient/Develco keypad sends a tag as `+` and hex digits (DESIGN 10b).
        Some(Value::String(s)) if s.starts_with('+') => Some(TypedCode::Tag(s.clone())),
        Some(Value::String(s)) => TypedCode::from_text(s),
        Some(_) => Some(TypedCode::NotText),
    }
}

/// The `arm_mode` reply to an entry with a transaction; none for a panic (the keypad learns
/// the new state, `in_alarm`, from the panel status).
pub fn reply(transaction: u8, action: KeypadAction, answer: Answer) -> Option<String> {
    let mode = match answer {
        Answer::Accepted => match action {
            KeypadAction::Disarm => "disarm",
            KeypadAction::Arm(mode) => mode.words().zigbee,
            KeypadAction::Toggle | KeypadAction::Panic => return None,
        },
        Answer::InvalidCode | Answer::LockedOut => "invalid_code",
        Answer::AlreadyDisarmed => "already_disarmed",
        Answer::NotReady => "not_ready",
        Answer::TagLearned => return None,
    };
    Some(json!({"arm_mode": {"transaction": transaction, "mode": mode}}).to_string())
}

/// The reply to a request that changed nothing, by the alarm state (a tag learned, DESIGN
/// 10b): `already_disarmed`, the armed mode's own word, or `not_ready` while arming, pending
/// or triggered.
pub fn unchanged_reply(transaction: u8, state: AlarmState) -> String {
    let mode = match state {
        AlarmState::Disarmed => "already_disarmed",
        AlarmState::ArmedHome => "arm_day_zones",
        AlarmState::ArmedNight => "arm_night_zones",
        AlarmState::ArmedAway | AlarmState::ArmedVacation => "arm_all_zones",
        AlarmState::Arming | AlarmState::Pending | AlarmState::Triggered => "not_ready",
    };
    json!({"arm_mode": {"transaction": transaction, "mode": mode}}).to_string()
}

/// The panel status (no transaction), sent to every keypad at start-up, on each state change
/// and when Zigbee2MQTT comes back online.
pub fn panel_status(state: AlarmState, seconds_left: Option<u64>) -> String {
    let mode = match state {
        AlarmState::Disarmed => "disarm",
        AlarmState::ArmedHome => ArmMode::ArmedHome.words().zigbee,
        AlarmState::ArmedAway => ArmMode::ArmedAway.words().zigbee,
        AlarmState::ArmedNight => ArmMode::ArmedNight.words().zigbee,
        AlarmState::ArmedVacation => ArmMode::ArmedVacation.words().zigbee,
        AlarmState::Arming => "exit_delay",
        AlarmState::Pending => "entry_delay",
        AlarmState::Triggered => "in_alarm",
    };
    match state {
        AlarmState::Arming | AlarmState::Pending => {
            // The keypad's delay field is one byte.
            let delay = seconds_left.unwrap_or(0).min(255);
            json!({"arm_mode": {"mode": mode, "delay": delay}}).to_string()
        }
        _ => json!({"arm_mode": {"mode": mode}}).to_string(),
    }
}

/// Whether a `<base>/bridge/state` message says Zigbee2MQTT is online: `{"state":"online"}`
/// (Zigbee2MQTT 2) or the bare `online` (1.x).
pub fn bridge_online(payload: &[u8]) -> bool {
    if payload == b"online" {
        return true;
    }
    serde_json::from_slice::<Value>(payload)
        .is_ok_and(|v| v.get("state").and_then(Value::as_str) == Some("online"))
}

/// Replies remembered for a while, by exchange, so that a keypad repeating a request gets
/// the same reply and the request is not applied twice. O(1) per message: entries expire
/// oldest first, and at most [`Replies::CAPACITY`] are kept (a flood of distinct requests
/// pushes out the oldest instead of growing memory). Time is passed in.
#[derive(Debug)]
pub struct Replies<K> {
    ttl: std::time::Duration,
    /// When the reply was given, the reply, and how many repeats got it again.
    by_key: std::collections::HashMap<K, (std::time::Instant, String, u8)>,
    order: std::collections::VecDeque<(std::time::Instant, K)>,
}

impl<K: Clone + Eq + std::hash::Hash> Replies<K> {
    /// 256 transaction numbers for each of a few keypads, with room to spare.
    pub const CAPACITY: usize = 1024;

    pub fn new(ttl: std::time::Duration) -> Replies<K> {
        Replies {
            ttl,
            by_key: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    /// A keypad repeats a request a few times when no reply reaches it; more repeats than
    /// that are a flood, and get no reply (each reply goes out over the radio).
    pub const REPLAYS: u8 = 4;

    /// The reply remembered for `key`, if it was given less than the time to live ago:
    /// `Some(Some(reply))` to send again, `Some(None)` for a repeat past [`Self::REPLAYS`].
    pub fn get(&mut self, key: &K, now: std::time::Instant) -> Option<Option<&str>> {
        self.expire(now);
        let (_, reply, replays) = self.by_key.get_mut(key)?;
        if *replays >= Self::REPLAYS {
            return Some(None);
        }
        *replays += 1;
        Some(Some(reply.as_str()))
    }

    pub fn insert(&mut self, key: K, reply: String, now: std::time::Instant) {
        self.expire(now);
        while self.order.len() >= Self::CAPACITY {
            self.pop_oldest();
        }
        self.order.push_back((now, key.clone()));
        self.by_key.insert(key, (now, reply, 0));
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn expire(&mut self, now: std::time::Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            // A key given again later has a newer entry: only its own entry goes.
            if self.by_key.get(&key).is_some_and(|(t, _, _)| *t == at) {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod replies {
        use super::super::Replies;
        use std::time::{Duration, Instant};

        #[test]
        fn a_reply_is_remembered_for_ten_seconds_and_then_forgotten() {
            let t0 = Instant::now();
            let mut r = Replies::new(Duration::from_secs(10));
            r.insert(("hall", 7u8), "invalid_code".to_owned(), t0);
            assert_eq!(
                r.get(&("hall", 7), t0 + Duration::from_millis(9_999)),
                Some(Some("invalid_code"))
            );
            assert_eq!(r.get(&("front", 7), t0), None);
            assert_eq!(r.get(&("hall", 7), t0 + Duration::from_secs(10)), None);
            assert!(r.is_empty());
        }

        #[test]
        fn a_keypad_gets_a_few_repeats_answered_and_a_flood_of_them_none() {
            let t0 = Instant::now();
            let mut r = Replies::new(Duration::from_secs(10));
            r.insert(3u8, "disarm".to_owned(), t0);
            for _ in 0..Replies::<u8>::REPLAYS {
                assert_eq!(r.get(&3, t0), Some(Some("disarm")));
            }
            for _ in 0..100 {
                assert_eq!(r.get(&3, t0), Some(None));
            }
        }

        #[test]
        fn a_flood_of_distinct_requests_keeps_at_most_the_capacity() {
            let t0 = Instant::now();
            let mut r = Replies::new(Duration::from_secs(10));
            for i in 0..5000u32 {
                r.insert(i, "x".to_owned(), t0);
                assert!(r.len() <= Replies::<u32>::CAPACITY);
            }
            // The newest are kept, the oldest pushed out.
            assert_eq!(r.get(&4999, t0), Some(Some("x")));
            assert_eq!(r.get(&0, t0), None);
        }

        #[test]
        fn a_key_given_again_keeps_its_newer_reply_when_the_older_expires() {
            let t0 = Instant::now();
            let mut r = Replies::new(Duration::from_secs(10));
            r.insert(1u8, "first".to_owned(), t0);
            r.insert(1u8, "second".to_owned(), t0 + Duration::from_secs(5));
            assert_eq!(
                r.get(&1, t0 + Duration::from_secs(11)),
                Some(Some("second"))
            );
            assert_eq!(r.get(&1, t0 + Duration::from_secs(15)), None);
        }
    }

    #[test]
    fn both_forms_of_the_bridge_state_are_understood() {
        assert!(bridge_online(br#"{"state":"online"}"#));
        assert!(bridge_online(b"online"));
        assert!(!bridge_online(br#"{"state":"offline"}"#));
        assert!(!bridge_online(b"offline"));
        assert!(!bridge_online(&[0xff]));
    }

    #[test]
    fn panel_status_maps_every_alarm_state_to_a_keypad_mode() {
        let cases = [
            (
                AlarmState::Disarmed,
                None,
                r#"{"arm_mode":{"mode":"disarm"}}"#,
            ),
            (
                AlarmState::ArmedHome,
                None,
                r#"{"arm_mode":{"mode":"arm_day_zones"}}"#,
            ),
            (
                AlarmState::ArmedNight,
                None,
                r#"{"arm_mode":{"mode":"arm_night_zones"}}"#,
            ),
            (
                AlarmState::ArmedAway,
                None,
                r#"{"arm_mode":{"mode":"arm_all_zones"}}"#,
            ),
            (
                AlarmState::ArmedVacation,
                None,
                r#"{"arm_mode":{"mode":"arm_all_zones"}}"#,
            ),
            (
                AlarmState::Arming,
                Some(30),
                r#"{"arm_mode":{"delay":30,"mode":"exit_delay"}}"#,
            ),
            (
                AlarmState::Pending,
                Some(12),
                r#"{"arm_mode":{"delay":12,"mode":"entry_delay"}}"#,
            ),
            (
                AlarmState::Triggered,
                None,
                r#"{"arm_mode":{"mode":"in_alarm"}}"#,
            ),
        ];
        for (state, left, expected) in cases {
            assert_eq!(panel_status(state, left), expected, "{state:?}");
        }
        // The keypad's delay is one byte.
        assert!(panel_status(AlarmState::Arming, Some(3600)).contains("\"delay\":255"));
    }

    #[test]
    fn replies_echo_the_action_or_name_the_refusal() {
        let arm = |m| KeypadAction::Arm(m);
        assert_eq!(
            reply(9, arm(ArmMode::ArmedHome), Answer::Accepted).unwrap(),
            r#"{"arm_mode":{"mode":"arm_day_zones","transaction":9}}"#
        );
        assert_eq!(
            reply(9, arm(ArmMode::ArmedNight), Answer::Accepted).unwrap(),
            r#"{"arm_mode":{"mode":"arm_night_zones","transaction":9}}"#
        );
        assert_eq!(
            reply(9, arm(ArmMode::ArmedVacation), Answer::Accepted).unwrap(),
            r#"{"arm_mode":{"mode":"arm_all_zones","transaction":9}}"#
        );
        assert_eq!(
            reply(9, KeypadAction::Disarm, Answer::Accepted).unwrap(),
            r#"{"arm_mode":{"mode":"disarm","transaction":9}}"#
        );
        assert_eq!(
            reply(9, KeypadAction::Disarm, Answer::LockedOut).unwrap(),
            r#"{"arm_mode":{"mode":"invalid_code","transaction":9}}"#
        );
        assert_eq!(
            reply(9, KeypadAction::Disarm, Answer::AlreadyDisarmed).unwrap(),
            r#"{"arm_mode":{"mode":"already_disarmed","transaction":9}}"#
        );
        assert_eq!(
            reply(9, arm(ArmMode::ArmedAway), Answer::NotReady).unwrap(),
            r#"{"arm_mode":{"mode":"not_ready","transaction":9}}"#
        );
    }
}
