//! Zigbee2MQTT keypads and lockout (issue 5), with real payloads from `tests/fixtures/`.
//! The master is Alice, code 1234.

mod common;

use std::time::Duration;

use common::*;
use keypad_bridge::alarm::ArmMode;
use keypad_bridge::keypad::{zigbee2mqtt, KeypadAction, Parsed, TypedCode};
use serde_json::json;

fn parse(name: &str) -> Parsed {
    zigbee2mqtt::parse(fixture(&format!("zigbee2mqtt/{name}.json")).as_bytes())
}

fn input(name: &str) -> keypad_bridge::keypad::KeypadInput {
    match parse(name) {
        Parsed::Input(i) => i,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn real_keypad_messages_are_read_with_their_codes_and_transactions() {
    let i = input("kepzb-110__arm_all_zones");
    assert_eq!(i.action, KeypadAction::Arm(ArmMode::ArmedAway));
    assert_eq!(i.code, Some(TypedCode::Text("1234".into())));
    assert_eq!(i.transaction, Some(17));
    assert_eq!(
        input("kepzb-110__arm_day_zones").action,
        KeypadAction::Arm(ArmMode::ArmedHome)
    );
    assert_eq!(input("kepzb-110__arm_night_zones").transaction, Some(255));
    assert_eq!(
        input("kepzb-110__arm_night_zones").action,
        KeypadAction::Arm(ArmMode::ArmedNight)
    );
    assert_eq!(input("3400-d__arm_day_zones").transaction, Some(22));
    assert_eq!(input("zs130000078__arm_all_zones").transaction, Some(0));
    // Leading zeros are kept.
    assert_eq!(
        input("zs130000078__disarm_leading_zeros").code,
        Some(TypedCode::Text("0042".into()))
    );
    // Climax and UEI send no transaction.
    assert_eq!(input("kp-23el-zbs-ace__disarm").transaction, None);
    assert_eq!(input("xhk1-ue__arm_all_zones").transaction, None);
    // Emergency and panic need no code.
    for name in [
        "kepzb-110__emergency",
        "keypad001__panic",
        "zs130000078__panic",
        "kp-23el-zbs-ace__panic",
        "kp-23el-zbs-ace__emergency",
    ] {
        let i = input(name);
        assert_eq!(i.action, KeypadAction::Panic, "{name}");
        assert_eq!(i.code, None);
    }
    // An empty code is no code.
    assert_eq!(input("s9zgbrc01__arm_day_zones_empty_code").code, None);
    // A Frient tag (`+` and hex digits) is a tag, never a code.
    let tag = input("kepzb-110__disarm_rfid_tag");
    assert_eq!(tag.action, KeypadAction::Disarm);
    assert_eq!(tag.code, Some(TypedCode::Tag("+3DD5FCFF".into())));
    assert_eq!(tag.transaction, Some(93));
    // State reports, null and empty actions are not entries.
    for name in [
        "kepzb-110__state_only",
        "xhk1-ue__action_null",
        "kepzb-110__action_empty_string",
    ] {
        assert_eq!(parse(name), Parsed::Ignore, "{name}");
    }
}

#[test]
fn replies_echo_accepted_actions_and_say_invalid_code_or_already_disarmed() {
    let w = World::start(|_| {});
    w.add_user("Bob", "user", "4711");
    w.add_user("Cleo", "arm_only", "0042");
    w.hall_status();

    w.hall("kepzb-110__disarm"); // disarm while disarmed
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 18, "mode": "already_disarmed"}})
    );
    w.hall("kepzb-110__arm_all_zones");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 17, "mode": "arm_all_zones"}})
    );
    w.wait_state("armed_away");
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "arm_all_zones"}})
    );
    let attrs = w
        .probe
        .wait_for(&w.topic("alarm/attributes"), |m| {
            m.json()["user"] == "Alice"
        })
        .json();
    assert_eq!(attrs["source"], "keypad:hall");
    // Cleo (arm only) cannot disarm: told invalid_code, like a wrong code.
    w.hall("zs130000078__disarm_leading_zeros");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 43, "mode": "invalid_code"}})
    );
    assert_eq!(w.wait_event("denied")["reason"], "not_permitted");
    // A wrong code.
    w.hall("zs130000078__arm_all_zones");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 0, "mode": "invalid_code"}})
    );
    // Bob disarms with the Hive keypad's message.
    w.hall("keypad001__disarm");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 121, "mode": "disarm"}})
    );
    w.wait_state("disarmed");
    assert_eq!(w.hall_status(), json!({"arm_mode": {"mode": "disarm"}}));
    assert_eq!(w.wait_event("disarmed")["user"], "Bob");
    // A code outside its validity rules is answered like a wrong one.
    let r = w.command(
        json!({"id": "exp", "auth": "1234", "command": "update_user", "user": "Bob",
                             "valid_until": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    w.hall("keypad001__arm_day_zones");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 120, "mode": "invalid_code"}})
    );
    assert_eq!(w.wait_event("denied")["reason"], "expired");
    // A code that is too short (the documented example's "123") is answered invalid_code.
    w.hall("kepzb-110__documented_example");
    assert_eq!(
        w.hall_reply(),
        json!({"arm_mode": {"transaction": 99, "mode": "invalid_code"}})
    );
}

#[test]
fn a_keypad_without_transactions_gets_no_reply_but_still_works() {
    let w = World::start(|_| {});
    w.add_user("Bob", "user", "123456");
    w.hall_status();
    w.hall("kp-23el-zbs-ace__arm_all_zones");
    w.wait_state("armed_away");
    // Only the panel status, never a reply without a transaction.
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "arm_all_zones"}})
    );
    let set = format!("{}/set", w.site.z2m_topic());
    assert!(w
        .probe
        .all()
        .iter()
        .filter(|m| m.topic == set)
        .all(|m| m.json()["arm_mode"].get("transaction").is_none()));
    // State reports are ignored.
    w.probe.drain();
    w.hall("kepzb-110__state_only");
    w.hall("xhk1-ue__action_null");
    w.probe
        .assert_silent(&w.topic("event"), Duration::from_millis(300));
}

#[test]
fn panic_and_emergency_trigger_at_once_without_a_code() {
    let w = World::start(|_| {});
    w.hall_status();
    w.hall("kepzb-110__emergency");
    w.wait_state("triggered");
    assert_eq!(w.hall_status(), json!({"arm_mode": {"mode": "in_alarm"}}));
    let panic = w.wait_event("panic");
    assert_eq!(panic["source"], "keypad:hall");
    w.wait_event("triggered");
    w.hall("kepzb-110__disarm");
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "disarm");
    w.wait_state("disarmed");
}

#[test]
fn the_panel_status_shows_the_exit_delay_with_seconds_left() {
    let w = World::start(|s| {
        s.set("alarm.exit_delay_s.armed_away", json!(40));
    });
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "disarm"}}),
        "sent once at start-up"
    );
    w.hall("kepzb-110__arm_all_zones");
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "arm_all_zones");
    let status = w.hall_status();
    assert_eq!(status["arm_mode"]["mode"], "exit_delay");
    let delay = status["arm_mode"]["delay"].as_u64().unwrap();
    assert!((38..=40).contains(&delay), "{status}");
    w.wait_state("arming");
}

#[test]
fn a_repeated_transaction_gets_the_same_reply_and_is_applied_once() {
    let w = World::start(|_| {});
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "arm_away"}))["result"],
        "accepted"
    );
    w.wait_state("armed_away");
    w.hall("kepzb-110__disarm");
    let first = w.hall_reply();
    assert_eq!(first["arm_mode"]["mode"], "disarm");
    w.wait_state("disarmed");
    // The keypad repeats the request: applied again, it would be "already_disarmed".
    w.probe.drain();
    w.hall("kepzb-110__disarm");
    assert_eq!(w.hall_reply(), first);
    // (How long the memory lasts, ten seconds, is the panel's unit tests' business.)
    w.probe
        .assert_silent(&w.topic("event"), Duration::from_millis(300));
    let r = w.command(json!({"id": "uses", "auth": "1234", "command": "list_users"}));
    assert_eq!(
        r["users"][0]["uses"], 2,
        "one arm and one disarm, not two disarms"
    );
}

#[test]
fn several_keypads_of_different_protocols_are_each_attributed_by_name() {
    let w = World::start(|_| {});
    w.add_user("Bob", "user", "4711");
    w.hall("kepzb-110__arm_all_zones");
    w.wait_state("armed_away");
    assert_eq!(w.wait_event("armed_away")["source"], "keypad:hall");
    w.probe.publish(
        &w.site.plain_topic(),
        fixture("esphome/keypad-front__plain.txt"),
        false,
    );
    w.wait_state("disarmed");
    let e = w.wait_event("disarmed");
    assert_eq!(
        (e["source"].as_str(), e["user"].as_str()),
        (Some("keypad:back"), Some("Bob"))
    );
    w.probe.publish(
        &w.site.json_topic(),
        fixture("esphome/keypad-front__arm_away.json"),
        false,
    );
    w.wait_state("armed_away");
    let e = w.wait_event("armed_away");
    assert_eq!(
        (e["source"].as_str(), e["user"].as_str()),
        (Some("keypad:front"), Some("Alice"))
    );
}

#[test]
fn four_wrong_codes_lock_the_keypad_and_only_that_keypad() {
    let w = World::start(|_| {});
    w.hall_status();
    for t in 1..=4u8 {
        let msg = json!({"action": "disarm", "action_code": "9999", "action_transaction": t});
        w.probe.publish_json(&w.site.z2m_topic(), &msg);
        assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    }
    let lockout = w.wait_event("lockout");
    assert_eq!(lockout["source"], "keypad:hall");
    let until: jiff::Timestamp = lockout["until"].as_str().unwrap().parse().unwrap();
    let left = until.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((80..=90).contains(&left), "locked for 90 s, {left} s left");
    // Even the right code is refused while locked, and no second lockout event follows.
    w.probe.drain();
    let msg = json!({"action": "arm_all_zones", "action_code": "1234", "action_transaction": 5});
    w.probe.publish_json(&w.site.z2m_topic(), &msg);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    w.probe
        .assert_silent(&w.topic("alarm/state"), Duration::from_millis(300));
    // Another keypad is not locked.
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "arm_home"}))["result"],
        "accepted"
    );
    let lockouts = w
        .probe
        .all()
        .into_iter()
        .filter(|m| m.topic == w.topic("event") && m.json()["event_type"] == "lockout")
        .count();
    assert_eq!(lockouts, 1);
}

/// In-process, to read the store's Argon2 counter: a locked source is refused without hashing.
#[test]
fn a_locked_out_json_keypad_is_told_locked_out_without_any_hashing() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let (daemon, keyer) = InProcess::on_site(&site);
    let probe = Probe::connect(broker.port, &["#"]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    let result = site.topic("keypad/front/result");
    let start = keyer.computations();
    for code in ["1111", "2222", "3333", "4444"] {
        probe.publish_json(&site.json_topic(), &json!({"code": code}));
        assert_eq!(probe.next(&result).json()["result"], "invalid_code");
    }
    assert_eq!(keyer.computations() - start, 4);
    probe.wait_for(&site.topic("event"), |m| {
        m.json()["event_type"] == "lockout"
    });
    for code in ["1234", "5555", "1234"] {
        probe.publish_json(&site.json_topic(), &json!({"code": code}));
        assert_eq!(probe.next(&result).json()["result"], "locked_out");
    }
    assert_eq!(
        keyer.computations() - start,
        4,
        "no Argon2 computation while locked out"
    );
    daemon.stop();
}

#[test]
fn a_valid_code_that_changes_nothing_does_not_reset_the_count_of_wrong_codes() {
    let w = World::start(|_| {});
    for t in 1..=3u8 {
        let msg = json!({"action": "disarm", "action_code": "9999", "action_transaction": t});
        w.probe.publish_json(&w.site.z2m_topic(), &msg);
        assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    }
    // A right code while already disarmed: nothing happens, and the count stays.
    let msg = json!({"action": "disarm", "action_code": "1234", "action_transaction": 4});
    w.probe.publish_json(&w.site.z2m_topic(), &msg);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "already_disarmed");
    let msg = json!({"action": "disarm", "action_code": "9998", "action_transaction": 5});
    w.probe.publish_json(&w.site.z2m_topic(), &msg);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    assert_eq!(w.wait_event("lockout")["source"], "keypad:hall");
}

/// The review's finding: someone with a code of their own (a house-sitter) guessed three codes,
/// typed their own to arm or disarm, and started again: a success erased the count.
#[test]
fn a_success_that_changes_the_alarm_does_not_erase_earlier_wrong_codes() {
    let w = World::start(|s| {
        s.set("alarm.exit_delay_s.armed_away", json!(0));
    });
    w.add_user("Sitter", "user", "2468");
    let mut t = 0u8;
    let mut send = |action: &str, code: &str| {
        t += 1;
        let msg = json!({"action": action, "action_code": code, "action_transaction": t});
        w.probe.publish_json(&w.site.z2m_topic(), &msg);
        w.hall_reply()["arm_mode"]["mode"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for guess in ["1111", "2222", "3333"] {
        assert_eq!(send("arm_all_zones", guess), "invalid_code");
    }
    assert_eq!(send("arm_all_zones", "2468"), "arm_all_zones");
    w.wait_state("armed_away");
    assert_eq!(send("disarm", "4444"), "invalid_code");
    assert_eq!(w.wait_event("lockout")["source"], "keypad:hall");
    // Locked: the sitter's own code is refused too until the lockout ends.
    assert_eq!(send("disarm", "2468"), "invalid_code");
    w.probe
        .assert_silent(&w.topic("alarm/state"), Duration::from_millis(300));
}

#[test]
fn a_new_request_reusing_a_transaction_number_is_a_new_exchange() {
    let w = World::start(|_| {});
    let wrong = json!({"action": "arm_all_zones", "action_code": "9999", "action_transaction": 7});
    w.probe.publish_json(&w.site.z2m_topic(), &wrong);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    // The owner types the right code; the keypad happens to reuse number 7.
    let right = json!({"action": "arm_all_zones", "action_code": "1234", "action_transaction": 7});
    w.probe.publish_json(&w.site.z2m_topic(), &right);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "arm_all_zones");
    w.wait_state("armed_away");
}

#[test]
fn the_panel_status_follows_the_end_of_the_exit_delay() {
    let w = World::start(|s| {
        s.set("alarm.exit_delay_s.armed_away", json!(1));
    });
    assert_eq!(w.hall_status()["arm_mode"]["mode"], "disarm");
    w.hall("kepzb-110__arm_all_zones");
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "arm_all_zones");
    assert_eq!(w.hall_status()["arm_mode"]["mode"], "exit_delay");
    w.wait_state("armed_away");
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "arm_all_zones"}})
    );
}

#[test]
fn malformed_codes_count_toward_the_lockout_and_are_logged() {
    let w = World::start(|_| {});
    for _ in 0..4 {
        assert_eq!(
            w.json_keypad(json!({"code": "1", "action": "arm_away"}))["result"],
            "invalid_code"
        );
    }
    let ev = w.wait_event("invalid_code");
    assert_eq!(ev["reason"], "malformed_code", "{ev}");
    let r = w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
    assert_eq!(r["result"], "locked_out", "{r}");
}

#[test]
fn when_zigbee2mqtt_comes_back_online_the_keypads_get_the_panel_status_again() {
    let w = World::start(|_| {});
    assert_eq!(w.hall_status(), json!({"arm_mode": {"mode": "disarm"}}));
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "arm_home"}))["result"],
        "accepted"
    );
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "arm_day_zones"}})
    );
    let bridge = format!("{}-z2m/bridge/state", w.site.base);
    w.probe.publish(&bridge, r#"{"state":"offline"}"#, false);
    w.probe.publish(&bridge, r#"{"state":"online"}"#, false);
    assert_eq!(
        w.hall_status(),
        json!({"arm_mode": {"mode": "arm_day_zones"}})
    );
    w.probe.drain();
    w.probe.assert_silent(
        &format!("{}/set", w.site.z2m_topic()),
        Duration::from_millis(300),
    );
}

#[test]
fn cutting_the_power_does_not_lift_a_lockout() {
    let mut w = World::start(|_| {});
    for t in 1..=4u8 {
        let msg = json!({"action": "disarm", "action_code": "9999", "action_transaction": t});
        w.probe.publish_json(&w.site.z2m_topic(), &msg);
        assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
    }
    w.wait_event("lockout");
    w.daemon.kill();
    w.probe.drain();
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    // Still locked after the restart: even the right code is refused.
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "arm_away"}))["result"],
        "accepted"
    );
    let msg = json!({"action": "arm_all_zones", "action_code": "1234", "action_transaction": 9});
    w.probe.publish_json(&w.site.z2m_topic(), &msg);
    assert_eq!(w.hall_reply()["arm_mode"]["mode"], "invalid_code");
}
