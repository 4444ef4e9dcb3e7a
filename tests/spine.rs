//! The spine (issue 2): a code typed on a keypad arms or disarms the alarm and names the person,
//! against a real mosquitto, with the real binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn a_right_code_on_a_json_keypad_arms_then_disarms_and_names_the_person() {
    let w = World::start(|_| {});
    w.wait_state("disarmed");

    let reply = w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
    assert_eq!(reply, json!({"result": "accepted", "state": "armed_away"}));
    w.wait_state("armed_away");
    let attrs = w
        .probe
        .wait_for(&w.topic("alarm/attributes"), |m| {
            m.json()["action"] == "arm_away"
        })
        .json();
    assert_eq!(attrs["user"], "Alice");
    assert_eq!(attrs["source"], "keypad:front");
    assert_eq!(attrs["target_state"], "armed_away");
    assert!(attrs["user_id"].as_str().unwrap().starts_with("u_"));
    let event = w.wait_event("armed_away");
    assert_eq!(event["user"], "Alice");
    assert_eq!(event["source"], "keypad:front");

    // No action: toggle, which disarms an armed alarm.
    let reply = w.json_keypad(json!({"code": "1234"}));
    assert_eq!(reply, json!({"result": "accepted", "state": "disarmed"}));
    w.wait_state("disarmed");
    // Retained: whoever subscribes later learns who disarmed last.
    let late = Probe::connect(w.broker.port, &[&w.topic("alarm/last_user")]);
    let last = late.next(&w.topic("alarm/last_user"));
    assert!(last.retain);
    assert_eq!(last.text(), "Alice");
    let event = w.wait_event("disarmed");
    assert_eq!(event["user"], "Alice");
}

#[test]
fn a_wrong_code_gets_invalid_code_and_changes_nothing() {
    let w = World::start(|_| {});
    w.wait_state("disarmed");
    let reply = w.json_keypad(json!({"code": "9999", "action": "arm_away"}));
    assert_eq!(
        reply,
        json!({"result": "invalid_code", "state": "disarmed"})
    );
    let event = w.wait_event("invalid_code");
    assert_eq!(event["source"], "keypad:front");
    assert!(event.get("user").is_none());
    w.probe
        .assert_silent(&w.topic("alarm/state"), Duration::from_millis(300));
}

#[test]
fn a_plain_keypad_toggles_with_the_bare_code() {
    let w = World::start(|_| {});
    w.wait_state("disarmed");
    w.probe.publish(&w.site.plain_topic(), "1234", false);
    let reply = w.probe.next(&w.topic("keypad/back/result")).json();
    assert_eq!(reply, json!({"result": "accepted", "state": "armed_away"}));
    w.wait_state("armed_away");
    w.probe.publish(&w.site.plain_topic(), "1234", false);
    let reply = w.probe.next(&w.topic("keypad/back/result")).json();
    assert_eq!(reply["state"], "disarmed");
    w.probe.publish(&w.site.plain_topic(), "0000", false);
    let reply = w.probe.next(&w.topic("keypad/back/result")).json();
    assert_eq!(reply["result"], "invalid_code");
}

#[test]
fn status_is_retained_online_and_offline_after_sigterm_and_after_a_crash() {
    let mut w = World::start(|_| {});
    // The state goes out just after `online`: once it has passed the broker, a new subscriber
    // gets the retained copies, not the live publish.
    w.wait_state("disarmed");
    // A new subscriber gets the retained status, state and attributes.
    let late = Probe::connect(w.broker.port, &[&w.topic("status"), &w.topic("alarm/#")]);
    let status = late.next(&w.topic("status"));
    assert!(status.retain);
    assert_eq!(status.text(), "online");
    let state = late.next(&w.topic("alarm/state"));
    assert!(state.retain);
    assert_eq!(state.text(), "disarmed");

    assert!(w.daemon.stop(), "SIGTERM should end the daemon cleanly");
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "offline");

    // A crash: the broker publishes the last will.
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    w.daemon.kill();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "offline");
    let late = Probe::connect(w.broker.port, &[&w.topic("status")]);
    assert_eq!(late.next(&w.topic("status")).text(), "offline");
}

#[test]
fn sigint_also_publishes_offline() {
    let mut w = World::start(|_| {});
    assert!(w.daemon.signal_and_wait(libc::SIGINT));
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "offline");
}

#[test]
fn after_the_broker_restarts_the_daemon_subscribes_again() {
    let mut w = World::start(|_| {});
    w.broker.restart();
    // The probe reconnects by itself but loses its subscription: use a new one.
    let probe = Probe::connect(w.broker.port, &["#"]);
    probe.wait_for(&w.topic("status"), |m| m.text() == "online");
    probe.publish_json(
        &w.site.json_topic(),
        &json!({"code": "1234", "action": "arm_home"}),
    );
    let reply = probe.next(&w.topic("keypad/front/result")).json();
    assert_eq!(reply["result"], "accepted");
    assert_eq!(reply["state"], "armed_home");
}

#[test]
fn a_retained_keypad_message_is_never_applied() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let probe = Probe::connect(broker.port, &["#"]);
    // Typed while the daemon was down, and left retained on the broker.
    probe.publish(
        &site.json_topic(),
        json!({"code": "1234", "action": "arm_away"}).to_string(),
        true,
    );
    let _daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    probe.wait_for(&site.topic("alarm/state"), |m| m.text() == "disarmed");
    probe.assert_silent(
        &site.topic("keypad/front/result"),
        Duration::from_millis(500),
    );
    probe.assert_silent(&site.topic("alarm/state"), Duration::from_millis(100));
    probe.publish(&site.json_topic(), Vec::new(), true);
}

#[test]
fn every_entry_is_in_the_activity_log_shown_by_the_cli() {
    let mut w = World::start(|_| {});
    w.json_keypad(json!({"code": "1234", "action": "arm_night"}));
    w.json_keypad(json!({"code": "5555", "action": "disarm"}));
    w.json_keypad(json!({"code": "1234", "action": "disarm"}));
    w.wait_event("disarmed");
    // The offline CLI refuses while the daemon holds the store...
    let (ok, _, err) = w.site.cli(&["activity"], "");
    assert!(!ok);
    let holder = format!("held by another keypad-bridge (pid {})", w.daemon.pid());
    assert!(err.contains(&holder), "{err}");
    // ...and works once it is stopped.
    assert!(w.daemon.stop());
    let (ok, out, err) = w.site.cli(&["activity", "--limit", "10"], "");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("disarmed") && lines[0].contains("user=Alice"),
        "{out}"
    );
    assert!(
        out.contains("invalid_code") && out.contains("source=keypad:front"),
        "{out}"
    );
    assert!(out.contains("armed_night"), "{out}");
    assert!(
        out.contains("user_added") && out.contains("source=cli"),
        "{out}"
    );
    let (ok, out, _) = w.site.cli(&["activity", "--limit", "1"], "");
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn with_no_arguments_the_binary_runs_the_daemon_with_the_config_from_the_environment() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let probe = Probe::connect(broker.port, &["#"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
        .env("KEYPAD_BRIDGE_CONFIG", site.config_path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let online = probe.try_wait_for(&site.topic("status"), WAIT, |m| m.text() == "online");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(online.is_some(), "the daemon did not come online");
    assert!(status.success());
}

#[test]
fn an_unreadable_json_keypad_message_is_answered_and_changes_nothing() {
    let w = World::start(|_| {});
    w.wait_state("disarmed");
    for junk in [
        &b"{\"code\": \"1234\""[..],
        b"[1,2]",
        &[0xff, 0xfe][..],
        b"{\"action\": \"open\"}",
    ] {
        w.probe.publish(&w.site.json_topic(), junk.to_vec(), false);
        let reply = w.probe.next(&w.topic("keypad/front/result")).json();
        assert_eq!(reply["result"], "invalid_request");
        assert_eq!(reply["state"], "disarmed");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| !m.contains("1234")),
            "{reply}"
        );
    }
    w.probe
        .assert_silent(&w.topic("event"), Duration::from_millis(300));
}

/// With no broker to tell, a stop is at once: no wait for a connection that does not exist,
/// and no retry after `shutting down`.
#[test]
fn a_stop_while_the_broker_is_unreachable_is_at_once() {
    let mut broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    broker.stop();
    let mut daemon = site.start();
    let start = std::time::Instant::now();
    while !daemon.log_text().contains("cannot connect") {
        assert!(start.elapsed() < WAIT, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = std::time::Instant::now();
    assert!(daemon.stop(), "a clean exit");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "the stop took {took:?}");
    let log = daemon.log_text();
    let after = &log[log.find("shutting down").expect("the log says it stops")..];
    assert!(!after.contains("retrying"), "{after}");
}

#[test]
fn a_fresh_store_on_the_same_broker_clears_the_last_user_of_the_old_one() {
    let mut w = World::start(|_| {});
    w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
    w.wait_state("armed_away");
    w.probe
        .wait_for(&w.topic("alarm/last_user"), |m| m.text() == "Alice");
    assert!(w.daemon.stop());
    let dir = w.site.store_dir();
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    std::fs::remove_file(dir.join("secret")).unwrap();
    std::fs::remove_file(dir.join("db.alarm.json")).unwrap();
    w.site.init("Bob", "8642");
    w.probe.drain();
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    let cleared = w.probe.wait_for(&w.topic("alarm/last_user"), |_| true);
    assert!(cleared.payload.is_empty(), "{:?}", cleared.text());
    // A client that subscribes now finds no last user: nobody armed with this store.
    let late = Probe::connect(w.broker.port, &[&w.topic("alarm/last_user")]);
    late.assert_silent(&w.topic("alarm/last_user"), Duration::from_millis(500));
}
