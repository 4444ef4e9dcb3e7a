//! The roster that scales (DESIGN 10e), against a real broker and the real binary: each
//! person's entry on `B/config/users/<id>` after every change, the whole roster on
//! `B/config/users` coalesced to one publish every 2 s at most, and a roster larger than the
//! broker takes held back without costing the connection. The master is Alice, code 1234.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn ok(result: Value) -> Value {
    assert_eq!(result["ok"], true, "command failed: {result}");
    result["user"].clone()
}

fn own_topic(w: &World, user: &Value) -> String {
    w.topic(&format!("config/users/{}", user["id"].as_str().unwrap()))
}

/// A probe that connects now: it receives only what the broker retains.
fn retained(w: &World, topic: &str) -> Option<Msg> {
    let late = Probe::connect(w.broker.port, &[topic]);
    late.try_wait_for(topic, Duration::from_millis(500), |_| true)
}

/// Waits until the daemon's log holds `text`.
fn wait_for_log(w: &World, text: &str) {
    let start = Instant::now();
    while !w.daemon.log_text().contains(text) {
        assert!(
            start.elapsed() < WAIT,
            "no {text:?} in the log within {WAIT:?}:\n{}",
            w.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A world whose broker has `limit` (a mosquitto.conf line), without discovery (its payloads
/// are larger than the limits used here).
fn world_with_broker_limit(limit: &str) -> World {
    let broker = Broker::start_with(
        tempfile::tempdir().unwrap(),
        &format!("allow_anonymous true\n{limit}\n"),
    );
    let mut site = Site::new(broker.port);
    site.set("homeassistant.discovery", json!(false));
    site.init("Alice", "1234");
    let probe = Probe::connect(broker.port, &["#"]);
    let daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    World {
        daemon,
        probe,
        site,
        broker,
    }
}

#[test]
fn each_change_publishes_that_persons_entry_retained_on_their_own_topic_and_deleting_empties_it() {
    let w = World::start(|_| {});
    let bob =
        ok(w.command(json!({"id": "r1", "auth": "1234", "command": "add_user", "name": "Bob"})));
    let topic = own_topic(&w, &bob);
    assert_eq!(
        w.probe.next(&topic).json(),
        bob,
        "the entry is the result's"
    );
    assert_eq!(
        retained(&w, &topic).unwrap().json(),
        bob,
        "and it is retained"
    );

    let renamed = ok(w.command(
        json!({"id": "r2", "auth": "1234", "command": "update_user", "user": "Bob",
               "name": "Robert", "notify": "mobile_app_robert"}),
    ));
    assert_eq!(w.probe.next(&topic).json(), renamed);
    let coded = ok(w.command(
        json!({"id": "r3", "auth": "1234", "command": "set_code", "user": "Robert",
               "code": "2468"}),
    ));
    assert_eq!(coded["has_code"], true);
    let entry = w.probe.next(&topic);
    assert_eq!(entry.json(), coded);
    assert!(!holds_number(&entry.text(), "2468"), "never the code");
    assert_eq!(retained(&w, &topic).unwrap().json(), coded);

    ok(w.command(json!({"id": "r4", "auth": "1234", "command": "delete_user", "user": "Robert"})));
    let gone = w.probe.next(&topic);
    assert!(gone.payload.is_empty(), "{}", gone.text());
    assert!(
        retained(&w, &topic).is_none(),
        "the broker forgets a deleted person"
    );
    // The whole roster follows: Alice alone again.
    let roster = w.probe.wait_for(&w.topic("config/users"), |m| {
        m.json()["users"].as_array().unwrap().len() == 1
    });
    assert_eq!(roster.json()["users"][0]["name"], "Alice");
}

#[test]
fn a_burst_of_adds_gives_fewer_whole_rosters_than_adds_and_the_last_lists_everyone() {
    let w = World::start(|_| {});
    let whole = w.topic("config/users");
    let before = w.probe.all().len();
    for i in 0..10 {
        w.probe.publish_json(
            &w.topic("config/set"),
            &json!({"id": format!("b{i}"), "auth": "1234", "command": "add_user",
                    "name": format!("Guest {i}")}),
        );
    }
    let mut added = Vec::new();
    while added.len() < 10 {
        added.push(ok(w.probe.next(&w.topic("config/result")).json()));
    }
    for user in &added {
        assert_eq!(
            w.probe.wait_for(&own_topic(&w, user), |_| true).json(),
            *user
        );
    }
    let last = w.probe.wait_for(&whole, |m| {
        m.json()["users"].as_array().unwrap().len() == 11
    });
    let names: Vec<_> = last.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = vec!["Alice".to_owned()];
    expected.extend((0..10).map(|i| format!("Guest {i}")));
    assert_eq!(names, expected);
    // Every entry in it is the full one, as on the person's own topic.
    for user in &added {
        assert!(last.json()["users"].as_array().unwrap().contains(user));
    }
    let published = w.probe.all()[before..]
        .iter()
        .filter(|m| m.topic == whole)
        .count();
    assert!(
        (1..10).contains(&published),
        "{published} whole rosters for 10 adds"
    );
}

#[test]
fn whole_rosters_after_changes_are_at_least_two_seconds_apart() {
    let w = World::start(|_| {});
    let whole = w.topic("config/users");
    // The connection's roster went out just now: the first change waits for its 2 s.
    let mut seen = Vec::new();
    for i in 0..3 {
        ok(w.command(
            json!({"id": format!("g{i}"), "auth": "1234", "command": "add_user",
                   "name": format!("Guest {i}")}),
        ));
        let n = i + 2;
        w.probe
            .wait_for(&whole, |m| m.json()["users"].as_array().unwrap().len() == n);
        seen.push(Instant::now());
    }
    for pair in seen.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(1500),
            "{gap:?} between rosters"
        );
    }
}

#[test]
fn a_right_code_at_a_keypad_counts_in_that_persons_own_entry() {
    let w = World::start(|_| {});
    let bob = w.add_user("Bob", "user", "2468");
    let topic = own_topic(&w, &bob);
    assert_eq!(w.probe.next(&topic).json()["uses"], 0);
    let reply = w.json_keypad(json!({"code": "2468", "action": "arm_home"}));
    assert_eq!(reply["result"], "accepted", "{reply}");
    let entry = w.probe.next(&topic).json();
    assert_eq!(entry["uses"], 1, "{entry}");
    assert_eq!(entry["name"], "Bob");
    assert_eq!(retained(&w, &topic).unwrap().json(), entry);
    // A wrong code changes nobody's entry.
    let reply = w.json_keypad(json!({"code": "1357", "action": "disarm"}));
    assert_eq!(reply["result"], "invalid_code");
    w.probe.assert_silent(&topic, Duration::from_millis(300));
}

#[test]
fn after_a_restart_of_the_bridge_or_of_the_broker_the_whole_roster_and_every_entry_are_back() {
    let mut w = World::start(|_| {});
    let bob = w.add_user("Bob", "user", "2468");
    let topic = own_topic(&w, &bob);
    w.restart();
    let roster = w.probe.next(&w.topic("config/users")).json();
    assert_eq!(roster["users"].as_array().unwrap().len(), 2, "{roster}");
    assert_eq!(w.probe.next(&topic).json(), bob);

    // A broker without persistence forgets every retained message when it restarts.
    w.broker.restart();
    let late = Probe::connect(w.broker.port, &[&w.topic("status")]);
    late.wait_for(&w.topic("status"), |m| m.text() == "online");
    let late = Probe::connect(w.broker.port, &[&w.topic("config/users/#")]);
    let roster = late.next(&w.topic("config/users")).json();
    assert_eq!(roster["users"][1], bob);
    assert_eq!(late.next(&topic).json(), bob);
}

#[test]
fn a_roster_over_the_brokers_max_packet_size_is_held_back_with_a_warning_and_the_bridge_stays_online(
) {
    // mosquitto announces max_packet_size in CONNACK: a larger packet would cost the connection.
    let w = world_with_broker_limit("max_packet_size 1000");
    let status = w.topic("status");
    let whole = w.topic("config/users");
    assert_eq!(w.probe.next(&whole).json()["users"][0]["name"], "Alice");
    let mut added = Vec::new();
    for name in ["Bob", "Carol", "Dave", "Erin"] {
        added.push(ok(w.command(
            json!({"id": name, "auth": "1234", "command": "add_user", "name": name}),
        )));
    }
    wait_for_log(&w, "is larger than the 1000 bytes the broker takes");
    let log = w.daemon.log_text();
    assert!(log.contains("max_packet_size"), "{log}");
    // Each person's entry still goes out, and the bridge stays connected.
    for user in &added {
        assert_eq!(retained(&w, &own_topic(&w, user)).unwrap().json(), *user);
    }
    w.probe.assert_silent(&status, Duration::from_millis(500));
    assert_eq!(w.daemon.log_text().matches("connected to").count(), 1);
    // The roster the broker kept would be out of date: it is cleared.
    assert!(retained(&w, &whole).is_none());
    let reply = w.json_keypad(json!({"code": "1234", "action": "arm_home"}));
    assert_eq!(reply["result"], "accepted");
}

#[test]
fn a_roster_over_the_brokers_message_size_limit_does_not_cost_the_bridge_its_connection() {
    // mosquitto's message_size_limit is not announced: the broker drops the roster.
    let w = world_with_broker_limit("message_size_limit 1000");
    let status = w.topic("status");
    let mut added = Vec::new();
    for name in ["Bob", "Carol", "Dave", "Erin"] {
        added.push(ok(w.command(
            json!({"id": name, "auth": "1234", "command": "add_user", "name": name}),
        )));
    }
    wait_for_log(&w, "published the whole roster (5 users");
    let flap = w
        .probe
        .try_wait_for(&status, Duration::from_millis(700), |_| true);
    assert!(
        flap.is_none(),
        "status {:?}; log:\n{}",
        flap.map(|m| m.text()),
        w.daemon.log_text()
    );
    let log = w.daemon.log_text();
    assert_eq!(log.matches("connected to").count(), 1, "{log}");
    for user in &added {
        assert_eq!(retained(&w, &own_topic(&w, user)).unwrap().json(), *user);
    }
    // Nothing tells the bridge: the broker keeps the last whole roster that fitted.
    let kept = retained(&w, &w.topic("config/users")).unwrap().json();
    assert!(kept["users"].as_array().unwrap().len() < 5, "{kept}");
    let reply = w.json_keypad(json!({"code": "1234", "action": "arm_home"}));
    assert_eq!(reply["result"], "accepted");
}

#[test]
fn a_list_of_users_larger_than_the_broker_takes_is_answered_with_an_error_that_says_where_to_look()
{
    // Dropped, it left the owner with no answer at all.
    let w = world_with_broker_limit("max_packet_size 1000");
    for name in ["Bob", "Carol", "Dave", "Erin", "Fay", "Gus", "Hal", "Ivy"] {
        ok(w.command(json!({"id": name, "auth": "1234", "command": "add_user", "name": name})));
    }
    let r = w.command(json!({"id": "all", "auth": "1234", "command": "list_users"}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["command"], "list_users");
    assert_eq!(r["error"]["kind"], "result_too_large", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("B/config/users/<id>"), "{message}");
    assert!(message.contains("1000 bytes"), "{message}");
    // What fits still goes out whole.
    let r = w.command(json!({"id": "few", "auth": "1234", "command": "activity", "limit": 1}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["entries"].as_array().map(Vec::len), Some(1));
    let r = w.command(json!({"id": "many", "auth": "1234", "command": "activity", "limit": 1000}));
    assert_eq!(r["error"]["kind"], "result_too_large", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("`limit`"));
}
