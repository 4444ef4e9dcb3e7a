//! `json` keypads (ESPHome and friends): `{"code": "1234", "action": "arm_away"}`.
//!
//! `action` is optional (default `toggle`); other keys, such as ESPHome's `end_key`, are ignored.
//! The reply on `B/keypad/<name>/result` is `{"result": R, "state": S}`.

use serde_json::{json, Value};

use super::{Answer, KeypadAction, KeypadInput, Parsed, TypedCode};
use crate::alarm::{AlarmState, ArmMode};

pub fn parse(payload: &[u8]) -> Parsed {
    if payload.is_empty() {
        return Parsed::Ignore;
    }
    let value = match super::json_object(
        payload,
        " like {\"code\": \"<digits>\", \"action\": \"arm_away\"}",
    ) {
        Ok(value) => value,
        Err(invalid) => return invalid,
    };
    let Value::Object(map) = &value.0 else {
        return Parsed::Ignore;
    };
    let action = match map.get("action") {
        None | Some(Value::Null) => KeypadAction::Toggle,
        Some(Value::String(s)) => match action_from_str(s) {
            Some(action) => action,
            None => {
                // Not echoed: a misconfigured keypad may put the code there.
                return Parsed::Invalid(
                    "unknown action; use one of disarm, arm_away, arm_home, arm_night, \
                     arm_vacation, toggle, panic"
                        .into(),
                );
            }
        },
        Some(_) => return Parsed::Invalid("`action` must be a string".into()),
    };
    let code = match (map.get("code"), map.get("tag")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        // A reader's tag (DESIGN 10b): never taken for a code.
        (None | Some(Value::Null), Some(Value::String(s))) if !s.is_empty() => {
            Some(TypedCode::Tag(s.clone()))
        }
        (None | Some(Value::Null), Some(_)) => Some(TypedCode::Tag(String::new())),
        (Some(_), Some(tag)) if !tag.is_null() => {
            return Parsed::Invalid("a message carries a `code` or a `tag`, not both".into())
        }
        (Some(Value::String(s)), _) => TypedCode::from_text(s),
        (Some(_), _) => Some(TypedCode::NotText),
    };
    Parsed::Input(KeypadInput {
        action,
        code,
        transaction: None,
    })
}

fn action_from_str(s: &str) -> Option<KeypadAction> {
    Some(match s {
        "disarm" => KeypadAction::Disarm,
        "toggle" => KeypadAction::Toggle,
        "panic" => KeypadAction::Panic,
        _ => KeypadAction::Arm(ArmMode::find(|w| w.action == s)?),
    })
}

/// The reply to an entry.
pub fn reply(answer: Answer, state: AlarmState) -> String {
    json!({"result": answer.as_str(), "state": state.as_str()}).to_string()
}

/// The reply to a message that could not be read (an addition to DESIGN.md 4: `result` is
/// `invalid_request` and `message` says why).
pub fn invalid(message: &str, state: AlarmState) -> String {
    json!({"result": "invalid_request", "message": message, "state": state.as_str()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &str) -> KeypadInput {
        match parse(payload.as_bytes()) {
            Parsed::Input(input) => input,
            other => panic!("{payload}: {other:?}"),
        }
    }

    #[test]
    fn esphome_key_collector_payload_arms_away_and_ignores_end_key() {
        let i = input(include_str!(
            "../../tests/fixtures/esphome/keypad-front__arm_away.json"
        ));
        assert_eq!(i.action, KeypadAction::Arm(ArmMode::ArmedAway));
        assert_eq!(i.code, Some(TypedCode::Text("1234".into())));
    }

    #[test]
    fn action_defaults_to_toggle_and_a_number_code_is_malformed() {
        let i = input(r#"{"code": 1234}"#);
        assert_eq!(i.action, KeypadAction::Toggle);
        assert_eq!(i.code, Some(TypedCode::NotText));
    }

    #[test]
    fn every_documented_action_is_read() {
        let cases = [
            ("disarm", KeypadAction::Disarm),
            ("arm_away", KeypadAction::Arm(ArmMode::ArmedAway)),
            ("arm_home", KeypadAction::Arm(ArmMode::ArmedHome)),
            ("arm_night", KeypadAction::Arm(ArmMode::ArmedNight)),
            ("arm_vacation", KeypadAction::Arm(ArmMode::ArmedVacation)),
            ("toggle", KeypadAction::Toggle),
            ("panic", KeypadAction::Panic),
        ];
        for (word, action) in cases {
            let i = input(&format!(r#"{{"code": "1234", "action": "{word}"}}"#));
            assert_eq!(i.action, action, "{word}");
            assert_eq!(action.as_str(), word);
        }
    }

    #[test]
    fn unreadable_messages_say_why() {
        for bad in [
            "{",
            "[1]",
            r#"{"action":"open_sesame","code":"1234"}"#,
            r#"{"action":5}"#,
        ] {
            assert!(matches!(parse(bad.as_bytes()), Parsed::Invalid(_)), "{bad}");
        }
        assert!(matches!(parse(&[0xff, 0xfe]), Parsed::Invalid(_)));
    }

    #[test]
    fn esphome_rc522_tag_message_is_a_tag_never_a_code() {
        let i = input(include_str!(
            "../../tests/fixtures/esphome/rc522-front__on_tag.json"
        ));
        assert_eq!(i.action, KeypadAction::Disarm);
        assert_eq!(i.code, Some(TypedCode::Tag("74-10-37-94".into())));
        assert!(matches!(
            parse(br#"{"code": "1234", "tag": "74-10-37-94"}"#),
            Parsed::Invalid(_)
        ));
        assert_eq!(
            input(r#"{"tag": 7410}"#).code,
            Some(TypedCode::Tag(String::new()))
        );
    }

    #[test]
    fn replies_name_the_result_and_the_state() {
        assert_eq!(
            reply(Answer::Accepted, AlarmState::Disarmed),
            r#"{"result":"accepted","state":"disarmed"}"#
        );
    }
}
