//! The Home Assistant examples (issue 4, point 6) and the example config stay in step with
//! the daemon: they parse, and every topic and event type they name exists.

use std::path::Path;

use keypad_bridge::events::EventType;

fn yaml_files() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/homeassistant");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn walk(value: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    out.push((k.to_owned(), v.to_owned()));
                }
                walk(v, out);
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

#[test]
fn every_home_assistant_example_parses_and_names_real_topics_and_event_types() {
    let files = yaml_files();
    assert!(files.len() >= 4, "{files:?}");
    // Each of these is used by some example; one person's roster entry is
    // `keypad-bridge/config/users/<id>` (DESIGN 10e). The whole roster is not among them: an
    // example that needs one person reads that person's topic.
    let topics = [
        "keypad-bridge/event",
        "keypad-bridge/config/set",
        "keypad-bridge/config/result",
        "keypad-bridge/config/users/<id>",
    ];
    let known = |topic: &str| {
        let person = topic
            .strip_prefix("keypad-bridge/config/users/u_")
            .is_some_and(|id| id.len() == 6 && id.chars().all(|c| c.is_ascii_hexdigit()));
        if person {
            return Some("keypad-bridge/config/users/<id>");
        }
        topics
            .iter()
            .chain(&["keypad-bridge/status"])
            .find(|t| **t == topic)
            .copied()
    };
    let event_types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    let mut seen_topics = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut pairs = Vec::new();
        walk(&value, &mut pairs);
        for (key, v) in &pairs {
            // `topic`, `state_topic`, `availability_topic`, ...
            if key.ends_with("topic") {
                let topic = known(v)
                    .unwrap_or_else(|| panic!("{}: unknown topic {v} ({key})", file.display()));
                seen_topics.push(topic.to_owned());
            }
            // Every quoted event type a template compares with must exist.
            for part in v.split('\'').skip(1).step_by(2) {
                if part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && v.contains("event_type")
                {
                    assert!(
                        event_types.contains(&part),
                        "{}: no event type {part:?}",
                        file.display()
                    );
                }
            }
        }
    }
    for topic in topics {
        assert!(
            seen_topics.iter().any(|t| t == topic),
            "no example uses {topic}"
        );
    }
}

#[test]
fn the_add_user_script_sends_only_fields_that_add_user_takes() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/homeassistant/script_add_user.yaml"),
    )
    .unwrap();
    assert!(text.contains("'add_user'"), "{text}");
    assert!(text.contains("topic: keypad-bridge/config/set") && text.contains("retain: false"));
    // The payload is built as a dict: each key it sets must be one that add_user takes.
    let takes = ["id", "command", "auth", "name", "role", "code", "notify"];
    let mut sent = Vec::new();
    for key in takes {
        if text.contains(&format!("'{key}':")) || text.contains(&format!("dict(cmd, {key}=")) {
            sent.push(key);
        }
    }
    assert_eq!(
        sent, takes,
        "the script sends every add_user field it offers"
    );
    for line in text.lines().filter(|l| l.contains("dict(cmd, ")) {
        let key = line
            .split("dict(cmd, ")
            .nth(1)
            .unwrap()
            .split('=')
            .next()
            .unwrap();
        assert!(takes.contains(&key), "add_user does not take {key:?}");
    }
}
