//! Proof that codes stay secret (issue 2, point 8): a whole session at `trace` level, then a
//! search for every code used in the log, in every message the daemon published, in what the
//! broker still retains, and in every byte of the store directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Eight digits (codes.max_length is raised to 8 here) so that no timestamp, id or hash can
/// contain one by chance.
const MASTER: &str = "27182818";
const BOB: &str = "31415926";
const BOB_NEW: &str = "05772156";
const CLEO: &str = "16180339";
const WRONG: &str = "14142135";
/// Bob's own duress code (DESIGN 10a).
const BOB_DURESS: &str = "69314718";
/// Codes put where they do not belong: a name, a user, a command, a field's key.
const SWAPPED: &str = "57721566";
const ALL: [&str; 7] = [MASTER, BOB, BOB_NEW, CLEO, WRONG, BOB_DURESS, SWAPPED];

/// RFID tags (DESIGN 10b): Bob's fob learned at the Frient keypad, Cleo's added by command,
/// one nobody has at the ESPHome reader, one malformed. Searched in every spelling.
const BOB_FOB: &str = "+5EC2E7A9";
const CLEO_CARD: &str = "0d:9e:44:b1:7c:2a";
const STRANGER: &str = "A3-7F-19-C4-5B-D2-E0";
const MALFORMED: &str = "F00DBABE1234XY";
const TAGS: [&str; 4] = [BOB_FOB, CLEO_CARD, STRANGER, MALFORMED];

/// A tag's spellings, lower-cased: as sent, normalised, and with each usual separator.
fn spellings(tag: &str) -> Vec<String> {
    let hex: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase();
    let hex = hex.trim_end_matches("xy").to_owned();
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let mut out = vec![tag.to_lowercase(), hex.clone()];
    for sep in ["-", ":", " "] {
        out.push(pairs.join(sep));
    }
    out
}

/// Case-insensitive search of a tag in every spelling.
fn holds_tag(haystack: &[u8], tag: &str) -> Option<String> {
    let lower = haystack.to_ascii_lowercase();
    spellings(tag).into_iter().find(|s| contains(&lower, s))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn files_below(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_below(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_code_appears_in_logs_messages_retained_topics_or_store_files() {
    let broker = Broker::start();
    let mut site = Site::new(broker.port);
    site.set("codes.max_length", json!(8));
    site.init("Alice", MASTER);
    let probe = Probe::connect(broker.port, &["#"]);
    let mut daemon = DaemonProcess::start(&site, "trace");
    let t = |rest: &str| site.topic(rest);
    probe.wait_for(&t("status"), |m| m.text() == "online");

    let command = |payload: serde_json::Value, retain: bool| {
        let id = payload["id"].as_str().unwrap().to_owned();
        probe.publish(&t("config/set"), payload.to_string(), retain);
        probe
            .wait_for(&t("config/result"), |m| m.json()["id"] == id.as_str())
            .json()
    };
    let r = command(
        json!({"id": "s1", "auth": MASTER, "command": "add_user", "name": "Bob", "code": BOB, "notify": "mobile_app_bob"}),
        true,
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        json!({"id": "s2", "auth": MASTER, "command": "add_user", "name": "Cleo", "role": "duress", "code": CLEO}),
        false,
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        json!({"id": "s3", "auth": MASTER, "command": "set_code", "user": "Bob", "code": BOB_NEW}),
        true,
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        json!({"id": "s4", "auth": WRONG, "command": "list_users"}),
        false,
    );
    assert_eq!(r["ok"], false);
    let r = command(
        json!({"id": "s5", "auth": MASTER, "command": "add_user", "name": "Dup", "code": BOB_NEW}),
        false,
    );
    assert_eq!(r["error"]["kind"], "duplicate_code");
    let r = command(
        json!({"id": "s6", "auth": MASTER, "command": "activity", "limit": 1000}),
        false,
    );
    assert_eq!(r["ok"], true);
    let r = command(
        json!({"id": "s8", "auth": MASTER, "command": "set_duress_code", "user": "Bob", "code": BOB_DURESS}),
        false,
    );
    assert_eq!(r["ok"], true, "{r}");
    // The duress code as `auth`, and codes in the wrong fields.
    let r = command(
        json!({"id": "s9", "auth": BOB_DURESS, "command": "list_users"}),
        false,
    );
    assert_eq!(r["error"]["kind"], "unauthorized", "Bob is no admin: {r}");
    for (i, swapped) in [
        json!({"command": "set_code", "user": SWAPPED, "code": "1111"}),
        json!({"command": SWAPPED}),
        json!({"command": "add_user", "name": "Eve", SWAPPED: "x"}),
        json!({"command": "add_user", "name": "Eve", "schedule": [{"days": ["mon"], "from": SWAPPED, "to": "18:00"}]}),
        json!({"command": "add_user", "name": "Eve", "valid_until": SWAPPED}),
        json!({"command": "add_user", "name": "Eve", "role": SWAPPED}),
        json!({"command": "add_user", "name": "Eve", "code": 57721566}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut payload = swapped;
        payload["id"] = json!(format!("w{i}"));
        payload["auth"] = json!(MASTER);
        let r = command(payload, false);
        assert_eq!(r["ok"], false, "{r}");
    }

    // Keypad entries of every protocol, right and wrong.
    probe.publish(
        &site.json_topic(),
        json!({"code": BOB_NEW, "action": "arm_away"}).to_string(),
        false,
    );
    probe.wait_for(&t("keypad/front/result"), |m| {
        m.json()["result"] == "accepted"
    });
    probe.publish(&site.plain_topic(), WRONG, false);
    probe.wait_for(&t("keypad/back/result"), |m| {
        m.json()["result"] == "invalid_code"
    });
    probe.publish(
        &site.z2m_topic(),
        json!({"action": "disarm", "action_code": CLEO, "action_transaction": 7, "battery": 90})
            .to_string(),
        false,
    );
    probe.wait_for(&format!("{}/set", site.z2m_topic()), |m| {
        m.text().contains("\"transaction\":7")
    });
    probe.publish(
        &t("alarm/set"),
        json!({"action": "ARM_HOME", "code": MASTER}).to_string(),
        false,
    );
    probe.wait_for(&t("alarm/state"), |m| m.text() == "armed_home");
    probe.publish(
        &t("alarm/set"),
        json!({"action": "DISARM", "code": BOB}).to_string(),
        false,
    );
    probe.wait_for(&t("event"), |m| {
        m.json()["event_type"] == "invalid_code" && m.json()["source"] == "homeassistant"
    });
    // Malformed commands that hold a code must not be echoed into the log.
    let junk = [
        format!("DISARM {MASTER}"),
        format!("{{\"action\":\"DISARM\",\"code\":\"{MASTER}\""),
        MASTER.to_owned(),
    ];
    for payload in junk {
        probe.publish(&t("alarm/set"), payload, false);
    }
    probe.publish(&site.json_topic(), format!("{{\"code\":\"{BOB}\""), false);
    probe.wait_for(&t("keypad/front/result"), |m| {
        m.json()["result"] == "invalid_request"
    });
    let truncated = format!("{{\"id\":\"s7\",\"auth\":\"{MASTER}\"");
    probe.publish(&t("config/set"), truncated, false);
    probe.wait_for(&t("config/result"), |m| {
        m.json()["error"]["kind"] == "invalid_json"
    });
    probe.publish(
        &t("alarm/set"),
        json!({"action": "DISARM", "code": MASTER}).to_string(),
        false,
    );
    probe.wait_for(&t("alarm/state"), |m| m.text() == "disarmed");
    // A duress disarm at a keypad, and the same Zigbee transaction repeated.
    probe.publish(
        &t("alarm/set"),
        json!({"action": "ARM_HOME", "code": BOB_NEW}).to_string(),
        false,
    );
    probe.wait_for(&t("alarm/state"), |m| m.text() == "armed_home");
    let duress = json!({"action": "disarm", "action_code": BOB_DURESS, "action_transaction": 9});
    for _ in 0..6 {
        probe.publish(&site.z2m_topic(), duress.to_string(), false);
    }
    probe.wait_for(&t("event"), |m| m.json()["event_type"] == "duress");
    probe.wait_for(&t("alarm/state"), |m| m.text() == "disarmed");
    probe.publish(
        &site.json_topic(),
        json!({"action": SWAPPED}).to_string(),
        false,
    );
    probe.wait_for(&t("keypad/front/result"), |m| {
        m.json()["result"] == "invalid_request"
    });

    // Tags: learned at the Frient keypad, added by command (retained, so it is cleared),
    // unknown at the json keypad, malformed, used, and refused as a duplicate.
    let r = command(
        json!({"id": "g1", "auth": MASTER, "command": "learn_tag", "user": "Bob", "keypad": "hall"}),
        false,
    );
    assert_eq!(r["ok"], true, "{r}");
    let frient = |transaction: u8| {
        json!({"action": "disarm", "action_code": BOB_FOB, "action_transaction": transaction})
            .to_string()
    };
    probe.publish(&site.z2m_topic(), frient(21), false);
    probe.wait_for(&t("event"), |m| m.json()["event_type"] == "tag_added");
    let r = command(
        json!({"id": "g2", "auth": MASTER, "command": "add_tag", "user": "Cleo", "tag": CLEO_CARD, "label": "card"}),
        true,
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        json!({"id": "g3", "auth": MASTER, "command": "add_tag", "user": "Bob", "tag": MALFORMED}),
        false,
    );
    assert_eq!(r["error"]["kind"], "invalid_code_format", "{r}");
    probe.publish(
        &site.json_topic(),
        json!({"tag": STRANGER, "action": "arm_away"}).to_string(),
        false,
    );
    probe.wait_for(&t("keypad/front/result"), |m| {
        m.json()["result"] == "invalid_code"
    });
    probe.publish(
        &t("alarm/set"),
        json!({"action": "ARM_HOME", "code": MASTER}).to_string(),
        false,
    );
    probe.wait_for(&t("alarm/state"), |m| m.text() == "armed_home");
    probe.publish(&site.z2m_topic(), frient(22), false);
    probe.wait_for(&t("alarm/state"), |m| m.text() == "disarmed");
    let r = command(
        json!({"id": "g4", "auth": MASTER, "command": "add_tag", "user": "Bob", "tag": "0D9E44B17C2A"}),
        false,
    );
    assert_eq!(r["error"]["kind"], "duplicate_code", "{r}");
    assert!(daemon.stop());

    let log = daemon.log_text();
    // Run at `trace`: everything the daemon and its libraries say (sled excepted) is here.
    assert!(log.contains("DEBUG"), "the log should be verbose:\n{log}");
    // sled's own debug and trace records print keys and values (lookup keys, users, the salt)
    // as byte lists that no search for digits would find: they are never written.
    assert!(
        !log.lines().any(|l| l.contains("sled::")),
        "sled's records are in the log"
    );
    let inputs = [
        t("config/set"),
        site.json_topic(),
        site.plain_topic(),
        site.z2m_topic(),
        t("alarm/set"),
    ];
    let published: Vec<Msg> = probe
        .all()
        .into_iter()
        .filter(|m| !inputs.contains(&m.topic))
        .collect();
    assert!(
        published.len() > 20,
        "the session published {} messages",
        published.len()
    );
    let retained = Probe::connect(broker.port, &["#"]);
    std::thread::sleep(Duration::from_millis(300));
    let retained = retained.all();
    assert!(retained.iter().any(|m| m.topic == t("alarm/state")));
    let mut files = Vec::new();
    files_below(&site.store_dir(), &mut files);
    assert!(files.len() >= 3, "{files:?}");

    // A parser's position ("line 1 column 28") tells how long a code before it is.
    for m in &published {
        assert!(
            !m.text().contains("column"),
            "a position on {}: {}",
            m.topic,
            m.text()
        );
    }
    for code in ALL {
        assert!(!log.contains(code), "code {code} appears in the log");
        for m in &published {
            assert!(
                !contains(&m.payload, code),
                "code {code} in a message on {}: {}",
                m.topic,
                m.text()
            );
        }
        for m in &retained {
            assert!(
                !contains(&m.payload, code),
                "code {code} retained on {}: {}",
                m.topic,
                m.text()
            );
        }
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            assert!(
                !contains(&bytes, code),
                "code {code} in the store file {}",
                file.display()
            );
        }
    }
    let sent = probe.all();
    for tag in TAGS {
        // The search finds each tag where it was sent, so it would find a leak.
        assert!(
            sent.iter().any(|m| holds_tag(&m.payload, tag).is_some()),
            "{tag} was never sent"
        );
        if let Some(s) = holds_tag(log.as_bytes(), tag) {
            panic!("tag {tag} appears in the log as {s}");
        }
        for m in published.iter().chain(&retained) {
            if let Some(s) = holds_tag(&m.payload, tag) {
                panic!("tag {tag} as {s} on {}: {}", m.topic, m.text());
            }
        }
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            if let Some(s) = holds_tag(&bytes, tag) {
                panic!("tag {tag} as {s} in the store file {}", file.display());
            }
        }
    }
    // The store holds the people, so the search above looked at real data.
    let db_bytes: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(contains(&db_bytes, "Bob") && contains(&db_bytes, "Cleo"));
}
