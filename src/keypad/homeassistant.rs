//! Home Assistant's alarm panel as a keypad: `B/alarm/set` carries what was typed on its
//! dashboard (`{"action": "DISARM", "code": "1234"}` from the `REMOTE_CODE` command template, or
//! the bare action), and `TRIGGER` from automations. See `tests/fixtures/homeassistant/`.

use serde_json::Value;

use super::{KeypadAction, TypedCode};
use crate::alarm::ArmMode;
use crate::codes::WipedJson;

/// What a person (or Home Assistant) asked the alarm to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Keypad(KeypadAction),
    /// An automation saw a door open.
    Trigger,
}

impl Request {
    /// The word in `B/alarm/attributes` `action`.
    pub fn word(self) -> &'static str {
        match self {
            Request::Keypad(action) => action.as_str(),
            Request::Trigger => "trigger",
        }
    }
}

/// Reads `B/alarm/set`: `{"action": "DISARM", "code": "1234"}` or the bare action. A code of
/// `""` or `"None"` is no code. The error never quotes the payload: it may hold a code.
pub fn parse(payload: &[u8]) -> Result<(Request, Option<TypedCode>), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_owned())?;
    let parsed = WipedJson::parse(text.as_bytes());
    // Borrowed, not copied: a misconfigured sender may put the code in `action`.
    let (action, code): (&str, _) = match parsed.as_ref().map(|v| &v.0) {
        Ok(Value::Object(map)) => {
            let action = match map.get("action") {
                Some(Value::String(a)) => a.as_str(),
                _ => return Err("`action` must be a string".into()),
            };
            let code = match map.get("code") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) if c.is_empty() || c == "None" => None,
                Some(Value::String(c)) => Some(TypedCode::Text(c.clone())),
                Some(_) => Some(TypedCode::NotText),
            };
            (action, code)
        }
        Ok(Value::String(action)) => (action.as_str(), None),
        _ => (text.trim(), None),
    };
    let is = |word: &str| action.eq_ignore_ascii_case(word);
    let request = match ArmMode::find(|w| is(w.ha_command)) {
        Some(mode) => Request::Keypad(KeypadAction::Arm(mode)),
        None if is("DISARM") => Request::Keypad(KeypadAction::Disarm),
        None if is("TRIGGER") => Request::Trigger,
        None => {
            return Err(
                "unknown action; expected ARM_AWAY, ARM_HOME, ARM_NIGHT, ARM_VACATION, \
                        DISARM or TRIGGER"
                    .into(),
            );
        }
    };
    Ok((request, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/homeassistant/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    proptest! {
        /// Nothing on `B/alarm/set` panics the reader.
        #[test]
        fn any_bytes_on_the_alarm_command_topic_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn an_unknown_action_is_not_echoed_because_it_may_hold_a_code() {
        let why = parse(b"DISARM 4711").unwrap_err();
        assert!(!why.contains("4711"), "{why}");
        let why = parse(br#"{"action": "4711"}"#).unwrap_err();
        assert!(!why.contains("4711"), "{why}");
    }

    #[test]
    fn home_assistant_remote_code_payloads_are_read() {
        let (r, code) = parse(br#"{"action":"DISARM","code":"0042"}"#).unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Disarm));
        assert_eq!(code, Some(TypedCode::Text("0042".into())));
        let (r, code) = parse(br#"{"action":"ARM_HOME","code":"None"}"#).unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Arm(ArmMode::ArmedHome)));
        assert_eq!(code, None);
        let (r, code) = parse(b"ARM_AWAY").unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Arm(ArmMode::ArmedAway)));
        assert_eq!(code, None);
        assert_eq!(parse(b"TRIGGER").unwrap().0, Request::Trigger);
        let (r, _) = parse(br#"{"action":"arm_night","code":"1234"}"#).unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Arm(ArmMode::ArmedNight)));
        let (r, _) = parse(b"ARM_VACATION").unwrap();
        assert_eq!(
            r,
            Request::Keypad(KeypadAction::Arm(ArmMode::ArmedVacation))
        );
        assert!(parse(b"OPEN_SESAME").is_err());
        assert!(parse(&[0xff]).is_err());
    }

    #[test]
    fn the_fixtures_from_home_assistant_are_read_as_sent() {
        let cases: [(&str, Request, Option<&str>); 6] = [
            (
                "arm_away_bare.txt",
                Request::Keypad(KeypadAction::Arm(ArmMode::ArmedAway)),
                None,
            ),
            (
                "arm_away_with_code.json",
                Request::Keypad(KeypadAction::Arm(ArmMode::ArmedAway)),
                Some("9999"),
            ),
            (
                "arm_home_without_code.json",
                Request::Keypad(KeypadAction::Arm(ArmMode::ArmedHome)),
                None,
            ),
            (
                "disarm_leading_zeros.json",
                Request::Keypad(KeypadAction::Disarm),
                Some("0042"),
            ),
            (
                "disarm_with_code.json",
                Request::Keypad(KeypadAction::Disarm),
                Some("1234"),
            ),
            ("trigger.json", Request::Trigger, None),
        ];
        for (name, request, code) in cases {
            let (r, c) = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r, request, "{name}");
            assert_eq!(c, code.map(|c| TypedCode::Text(c.into())), "{name}");
        }
    }
}
