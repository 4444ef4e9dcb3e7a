//! Keypad messages: one [`KeypadInput`] type for every protocol (DESIGN.md 4).
//!
//! Each protocol module is a pure parser from an MQTT payload to a [`Parsed`] value, plus the
//! reply format the keypad understands. The daemon decides; these modules only translate.

pub mod homeassistant;
pub mod json;
pub mod plain;
pub mod zigbee2mqtt;

use std::fmt;

use crate::alarm::ArmMode;
use crate::codes::{Code, CodeFormatError};
use crate::config::KeypadProtocol;

/// What a person asked for at a keypad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeypadAction {
    Disarm,
    Arm(ArmMode),
    /// Disarm when not disarmed, else arm with `alarm.toggle_mode`.
    Toggle,
    Panic,
}

impl KeypadAction {
    /// The word used in `B/alarm/attributes` `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeypadAction::Disarm => "disarm",
            KeypadAction::Arm(mode) => mode.words().action,
            KeypadAction::Toggle => "toggle",
            KeypadAction::Panic => "panic",
        }
    }
}

/// The code as typed, before the format rules: it may be malformed. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum TypedCode {
    Text(String),
    /// The code field was present but not a string (e.g. a JSON number: leading zeros lost).
    NotText,
    /// An RFID tag's value as the reader sent it (DESIGN 10b): never taken for a code.
    Tag(String),
}

impl fmt::Debug for TypedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypedCode(***)")
    }
}

impl TypedCode {
    /// `None` for an absent or empty code.
    pub fn from_text(text: &str) -> Option<TypedCode> {
        (!text.is_empty()).then(|| TypedCode::Text(text.to_owned()))
    }

    pub fn parse(&self, min: usize, max: usize) -> Result<Code, CodeFormatError> {
        match self {
            TypedCode::Text(text) => Code::parse(text, min, max),
            TypedCode::NotText => Err(CodeFormatError::NotDigits),
            TypedCode::Tag(text) => Code::tag(text),
        }
    }

    pub fn is_tag(&self) -> bool {
        matches!(self, TypedCode::Tag(_))
    }
}

impl Drop for TypedCode {
    fn drop(&mut self) {
        if let TypedCode::Text(text) | TypedCode::Tag(text) = self {
            zeroize::Zeroize::zeroize(text);
        }
    }
}

/// One keypad entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeypadInput {
    pub action: KeypadAction,
    pub code: Option<TypedCode>,
    /// Zigbee2MQTT's `action_transaction`: the keypad waits for a reply carrying it.
    pub transaction: Option<u8>,
}

/// The result of reading one message from a keypad topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Input(KeypadInput),
    /// Not an entry (a state report, an empty action): nothing to do, nothing to answer.
    Ignore,
    /// A message that should have been an entry but cannot be read; the text says why.
    Invalid(String),
}

/// How an entry was answered; each protocol words it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    InvalidCode,
    AlreadyDisarmed,
    LockedOut,
    /// Not done for a reason other than the code: arming while pending or triggered, a mode
    /// that `alarm.modes` does not list, or a state that could not be saved.
    NotReady,
    /// An unknown tag was bound to the person of a running `learn_tag` (DESIGN 10b): the
    /// alarm did not change.
    TagLearned,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Accepted => "accepted",
            Answer::InvalidCode => "invalid_code",
            Answer::AlreadyDisarmed => "already_disarmed",
            Answer::LockedOut => "locked_out",
            Answer::NotReady => "not_ready",
            Answer::TagLearned => "tag_learned",
        }
    }
}

/// A keypad message that must be a JSON object: the object (wiped when dropped), or why not.
/// The reason quotes nothing and gives no position (it would tell a code's length).
fn json_object(payload: &[u8], shape: &str) -> Result<crate::codes::WipedJson, Parsed> {
    let value = crate::codes::WipedJson::parse(payload).map_err(|e| {
        let why = crate::admin::json_problem(&e);
        Parsed::Invalid(format!("the message is not valid JSON ({why})"))
    })?;
    if !value.0.is_object() {
        return Err(Parsed::Invalid(format!(
            "the message must be a JSON object{shape}"
        )));
    }
    Ok(value)
}

pub fn parse(protocol: KeypadProtocol, payload: &[u8]) -> Parsed {
    match protocol {
        KeypadProtocol::Zigbee2mqtt => zigbee2mqtt::parse(payload),
        KeypadProtocol::Json => json::parse(payload),
        KeypadProtocol::Plain => plain::parse(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on a keypad topic, parsing never panics.
        #[test]
        fn any_bytes_on_a_keypad_topic_are_parsed_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for protocol in [KeypadProtocol::Zigbee2mqtt, KeypadProtocol::Json, KeypadProtocol::Plain] {
                let _ = parse(protocol, &bytes);
            }
        }

        /// JSON-shaped input with random values: still no panic, and codes stay masked.
        #[test]
        fn any_json_object_on_a_keypad_topic_is_parsed_without_panicking(
            action in prop_oneof![Just(json_value("\"disarm\"")), Just(json_value("null")), Just(json_value("7")), Just(json_value("\"\"")), Just(json_value("[1]"))],
            code in prop_oneof![Just(json_value("\"0042\"")), Just(json_value("42")), Just(json_value("{}")), Just(json_value("null"))],
            transaction in prop_oneof![Just(json_value("-1")), Just(json_value("256")), Just(json_value("3")), Just(json_value("\"9\""))],
        ) {
            let payload = serde_json::json!({"action": action, "action_code": code, "code": code, "action_transaction": transaction});
            let bytes = payload.to_string().into_bytes();
            for protocol in [KeypadProtocol::Zigbee2mqtt, KeypadProtocol::Json] {
                if let Parsed::Input(input) = parse(protocol, &bytes) {
                    let shown = format!("{:?}", input);
                    prop_assert!(!shown.contains("0042"));
                }
            }
        }
    }

    fn json_value(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }
}
