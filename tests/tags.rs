//! RFID tags (issue 12, DESIGN 10b) through the broker: learned at a keypad, then used.
//! The master is Alice, code 1234.

mod common;

use common::*;
use serde_json::json;

/// The Frient fixture with another transaction number (a new exchange, not a repeat).
fn frient_tag(transaction: u8) -> String {
    fixture("zigbee2mqtt/kepzb-110__disarm_rfid_tag.json").replace(
        "\"action_transaction\":93",
        &format!("\"action_transaction\":{transaction}"),
    )
}

/// Done means (issue 12): the owner starts learning a tag for Carol; she holds her fob to
/// the hall keypad and presses disarm; from then on the fob disarms as Carol, and each check
/// still costs one Argon2id. In-process, to read the Argon2 counter.
#[test]
fn a_tag_learned_at_the_hall_keypad_then_disarms_as_its_person_with_one_argon2_each() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let (daemon, keyer) = InProcess::on_site(&site);
    let probe = Probe::connect(broker.port, &["#"]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    let command = |c: serde_json::Value| {
        let id = c["id"].as_str().unwrap().to_owned();
        probe.publish_json(&site.topic("config/set"), &c);
        probe
            .wait_for(&site.topic("config/result"), |m| {
                m.json()["id"] == id.as_str()
            })
            .json()
    };
    let r = command(
        json!({"id": "c1", "auth": "1234", "command": "add_user", "name": "Carol", "code": "1357"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        json!({"id": "c2", "auth": "1234", "command": "learn_tag", "user": "Carol", "keypad": "hall"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["learning"]["keypad"], "hall");
    let set = format!("{}/set", site.z2m_topic());
    let reply = |t: u8| {
        probe
            .wait_for(&set, |m| m.json()["arm_mode"]["transaction"] == t)
            .json()
    };

    let before = keyer.computations();
    probe.publish(&site.z2m_topic(), frient_tag(93), false);
    // Learned: the alarm does not change, the keypad hears what a no-op gets.
    assert_eq!(reply(93)["arm_mode"]["mode"], "already_disarmed");
    let added = probe
        .wait_for(&site.topic("event"), |m| {
            m.json()["event_type"] == "tag_added"
        })
        .json();
    assert_eq!(added["user"], "Carol");
    assert_eq!(added["learned"], true);
    assert_eq!(added["source"], "keypad:hall");
    assert_eq!(keyer.computations() - before, 1);
    let roster = probe
        .wait_for(&site.topic("config/users"), |m| {
            m.text().contains("\"tags\":[{")
        })
        .json();
    let carol = roster["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "Carol")
        .unwrap()
        .clone();
    assert_eq!(carol["tags"].as_array().unwrap().len(), 1);
    assert!(carol["tags"][0]["id"].as_str().unwrap().starts_with("t_"));

    // Armed by Alice's code at the json keypad, then disarmed with Carol's fob.
    probe.publish_json(
        &site.json_topic(),
        &json!({"code": "1234", "action": "arm_away"}),
    );
    probe.wait_for(&site.topic("alarm/state"), |m| m.text() == "armed_away");
    let before = keyer.computations();
    probe.publish(&site.z2m_topic(), frient_tag(94), false);
    assert_eq!(reply(94)["arm_mode"]["mode"], "disarm");
    probe.wait_for(&site.topic("alarm/state"), |m| m.text() == "disarmed");
    let disarmed = probe
        .wait_for(&site.topic("event"), |m| {
            m.json()["event_type"] == "disarmed"
        })
        .json();
    assert_eq!(disarmed["user"], "Carol", "{disarmed}");
    assert_eq!(disarmed["credential"], "tag");
    let attributes = probe
        .wait_for(&site.topic("alarm/attributes"), |m| {
            m.json()["user"] == "Carol"
        })
        .json();
    assert_eq!(attributes["credential"], "tag");
    assert_eq!(
        keyer.computations() - before,
        1,
        "a tag check is one Argon2id"
    );

    // The learning is over: another unknown tag is refused and counted.
    probe.publish(
        &site.z2m_topic(),
        frient_tag(95).replace("+3DD5FCFF", "+0BADF00D"),
        false,
    );
    assert_eq!(reply(95)["arm_mode"]["mode"], "invalid_code");
    let refused = probe
        .wait_for(&site.topic("event"), |m| {
            m.json()["event_type"] == "invalid_code"
        })
        .json();
    assert_eq!(refused["reason"], "unknown_tag");
    daemon.stop();
}

#[test]
fn an_unknown_tag_never_arms_even_without_code_arm_required_and_counts_toward_the_lockout() {
    let w = World::start(|s| {
        s.set("alarm.code_arm_required", json!(false));
    });
    let r = w.json_keypad(json!({"tag": "74-10-37-94", "action": "arm_away"}));
    assert_eq!(r["result"], "invalid_code", "{r}");
    let e = w.wait_event("invalid_code");
    assert_eq!(e["reason"], "unknown_tag");
    for _ in 0..3 {
        w.json_keypad(json!({"tag": "74-10-37-95", "action": "arm_away"}));
    }
    w.wait_event("lockout");
    let r = w.json_keypad(json!({"tag": "74-10-37-94"}));
    assert_eq!(r["result"], "locked_out");
    // Nothing armed, by nobody.
    assert_eq!(w.probe.next(&w.topic("alarm/state")).text(), "disarmed");
}

#[test]
fn an_added_tag_works_in_any_spelling_until_it_is_removed_and_tags_disarm_false_keeps_it_to_arming()
{
    let w = World::start(|s| {
        s.set("tags", json!({"disarm": false}));
    });
    w.add_user("Bob", "user", "4711");
    let r = w.command(
        json!({"id": "t1", "auth": "1234", "command": "add_tag", "user": "Bob",
                             "tag": "74:10:37:94", "label": "keyring"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let tag_id = r["user"]["tags"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["user"]["tags"][0]["label"], "keyring");
    let dup = w.command(
        json!({"id": "t2", "auth": "1234", "command": "add_tag", "user": "Alice",
                               "tag": "74-10-37-94"}),
    );
    assert_eq!(dup["error"]["kind"], "duplicate_code", "{dup}");
    let bad = w.command(
        json!({"id": "t3", "auth": "1234", "command": "add_tag", "user": "Bob",
                               "tag": "74-10"}),
    );
    assert_eq!(bad["error"]["kind"], "invalid_code_format", "{bad}");

    let r = w.json_keypad(json!({"tag": "74-10-37-94", "action": "arm_home"}));
    assert_eq!(r["result"], "accepted", "{r}");
    w.wait_state("armed_home");
    let r = w.json_keypad(json!({"tag": "74103794", "action": "disarm"}));
    assert_eq!(r["result"], "invalid_code", "tags.disarm: false");
    let denied = w.wait_event("denied");
    assert_eq!(denied["user"], "Bob");
    assert_eq!(denied["credential"], "tag");
    let r = w.json_keypad(json!({"code": "4711", "action": "disarm"}));
    assert_eq!(r["result"], "accepted");

    let r = w.command(
        json!({"id": "t4", "auth": "1234", "command": "remove_tag", "user": "Bob", "tag": tag_id}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["user"]["tags"], json!([]));
    w.wait_event("tag_removed");
    let r = w.json_keypad(json!({"tag": "74-10-37-94", "action": "arm_home"}));
    assert_eq!(r["result"], "invalid_code");
}

#[test]
fn a_learning_ends_with_tag_learn_expired_when_its_window_ends_and_at_a_restart() {
    let mut w = World::start(|_| {});
    w.add_user("Carol", "user", "1357");
    let r = w.command(
        json!({"id": "l1", "auth": "1234", "command": "learn_tag", "user": "Carol", "within_s": 1}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let e = w.wait_event("tag_learn_expired");
    assert_eq!(e["user"], "Carol");
    let r = w.json_keypad(json!({"tag": "74-10-37-94"}));
    assert_eq!(r["result"], "invalid_code", "{r}");

    let r = w.command(json!({"id": "l2", "auth": "1234", "command": "learn_tag", "user": "Carol"}));
    assert_eq!(r["ok"], true, "{r}");
    w.restart();
    let e = w.wait_event("tag_learn_expired");
    assert_eq!(e["user"], "Carol");
    // A json keypad is told `tag_learned` while a learning runs.
    let r = w.command(json!({"id": "l3", "auth": "1234", "command": "learn_tag", "user": "Carol", "keypad": "front"}));
    assert_eq!(r["ok"], true, "{r}");
    let r = w.json_keypad(json!({"tag": "74-10-37-96"}));
    assert_eq!(r, json!({"result": "tag_learned", "state": "disarmed"}));
    let r = w.command(json!({"id": "l4", "auth": "1234", "command": "learn_tag", "user": "Carol", "keypad": "nowhere"}));
    assert_eq!(r["error"]["kind"], "not_found", "{r}");
}
