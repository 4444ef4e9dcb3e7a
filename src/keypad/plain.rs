//! `plain` keypads: the payload is the code itself and the action is always `toggle`.

use super::{KeypadAction, KeypadInput, Parsed, TypedCode};

pub fn parse(payload: &[u8]) -> Parsed {
    if payload.is_empty() {
        return Parsed::Ignore;
    }
    // One trailing line ending is what `mosquitto_pub -l` or a shell `echo` adds.
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
    let code = match std::str::from_utf8(payload) {
        Ok(text) => TypedCode::from_text(text),
        Err(_) => Some(TypedCode::NotText),
    };
    Parsed::Input(KeypadInput {
        action: KeypadAction::Toggle,
        code,
        transaction: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_code_with_one_line_ending_dropped() {
        let Parsed::Input(input) = parse(b"0042\n") else {
            panic!()
        };
        assert_eq!(input.action, KeypadAction::Toggle);
        assert_eq!(input.code, Some(TypedCode::Text("0042".into())));
    }

    #[test]
    fn a_windows_line_ending_is_dropped_too() {
        let Parsed::Input(input) = parse(b"0042\r\n") else {
            panic!()
        };
        assert_eq!(input.code, Some(TypedCode::Text("0042".into())));
    }

    #[test]
    fn invalid_utf8_is_a_malformed_code_and_empty_is_ignored() {
        let Parsed::Input(input) = parse(&[0xff, 0x31]) else {
            panic!()
        };
        assert_eq!(input.code, Some(TypedCode::NotText));
        assert_eq!(parse(b""), Parsed::Ignore);
    }
}
