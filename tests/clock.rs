//! A clock the bridge can trust (issue 10, item 4): a system clock behind the store's last
//! write is not trusted, a step of the system clock shortens or lengthens nothing that runs,
//! and a delay or lockout saved by a clock that was ahead lasts no longer than its own length
//! after a restart. The master is Alice, code 1234.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jiff::{SignedDuration, Timestamp};
use keypad_bridge::store::{Change, Create, Store};
use serde_json::{json, Value};

fn open_store(site: &Site) -> Store {
    let config = keypad_bridge::config::load(&site.config_path()).unwrap();
    Store::open(&config, Create::Refused).unwrap()
}

fn at(event: &Value) -> Timestamp {
    event["at"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_system_clock_behind_the_stores_last_write_is_not_trusted_and_an_expired_code_stays_refused() {
    let mut w = World::start(|_| {});
    let until = Timestamp::now() + SignedDuration::from_hours(1);
    let bob = w.command(
        json!({"id": "b1", "auth": "1234", "command": "add_user", "name": "Bob",
                                "code": "2468", "valid_until": until.to_string()}),
    );
    assert_eq!(bob["ok"], true, "{bob}");
    assert_eq!(
        w.json_keypad(json!({"code": "2468", "action": "arm_away"}))["result"],
        "accepted"
    );
    assert!(w.daemon.stop());
    // The store last wrote a day after what the system clock says now: the clock is a day
    // behind, as on a Raspberry Pi that booted without its time. Bob's code expired then.
    let last_write = Timestamp::now() + SignedDuration::from_hours(24);
    let store = open_store(&w.site);
    store.vouch(last_write);
    store.commit(Change::default()).unwrap();
    drop(store);

    let (ok, out, err) = w.site.cli(&["users"], "");
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.contains("Bob")).unwrap();
    assert!(line.contains("<- expired"), "{out}");
    assert!(err.contains("before the store's last write"), "{err}");

    w.probe.drain();
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    assert_eq!(
        w.json_keypad(json!({"code": "2468", "action": "disarm"}))["result"],
        "invalid_code"
    );
    let denied = w.wait_event("denied");
    assert_eq!(
        (denied["user"].as_str(), denied["reason"].as_str()),
        (Some("Bob"), Some("expired"))
    );
    assert!(at(&denied) >= last_write, "stamped with the bridge's time");
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "disarm"}))["result"],
        "accepted"
    );
    let log = w.daemon.log_text();
    assert!(
        log.contains("before the store's last write") && log.contains("not trusting it"),
        "{log}"
    );
    assert!(
        !holds_number(&log, "2468") && !holds_number(&log, "1234"),
        "{log}"
    );
}

#[test]
fn a_lockout_saved_far_ahead_lasts_no_longer_than_its_duration_after_a_restart() {
    let mut w = World::start(|s| {
        s.set("lockout.duration_s", json!(3));
        s.set("lockout.max_duration_s", json!(3));
    });
    for _ in 0..4 {
        let reply = w.json_keypad(json!({"code": "9999", "action": "arm_away"}));
        assert_eq!(reply["result"], "invalid_code");
    }
    w.wait_event("lockout");
    assert!(w.daemon.stop());
    // Saved by a clock ten days ahead: the lock would last ten days.
    let store = open_store(&w.site);
    let mut lockouts: Value =
        serde_json::from_slice(&store.meta("lockouts").unwrap().unwrap()).unwrap();
    let later = (Timestamp::now() + SignedDuration::from_hours(240)).to_string();
    lockouts["keypad:front"]["locked_until"] = json!(later);
    lockouts["keypad:front"]["last_lock_end"] = json!(later);
    store
        .commit(Change {
            meta: vec![("lockouts", serde_json::to_vec(&lockouts).unwrap())],
            ..Change::default()
        })
        .unwrap();
    drop(store);

    w.probe.drain();
    let restarted = Instant::now();
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    let alice = json!({"code": "1234", "action": "arm_away"});
    assert_eq!(
        w.json_keypad(alice.clone())["result"],
        "locked_out",
        "the lock survives the restart"
    );
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if w.json_keypad(alice.clone())["result"] == "accepted" {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(8),
            "still locked out {:?} after the restart",
            restarted.elapsed()
        );
    }
    assert!(w.daemon.log_text().contains("the saved lockout ran until"));
}

#[test]
fn an_exit_delay_saved_far_ahead_lasts_no_longer_than_configured_after_a_restart() {
    let mut w = World::start(|s| {
        s.set("alarm.exit_delay_s.armed_away", json!(3));
    });
    assert_eq!(
        w.json_keypad(json!({"code": "1234", "action": "arm_away"}))["result"],
        "accepted"
    );
    w.wait_state("arming");
    assert!(w.daemon.stop());
    // Saved by a clock ten days ahead: the exit delay would run for ten days.
    let file = w.site.store_dir().join("db.alarm.json");
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        saved["alarm"]["state"], "arming",
        "stopped within the delay"
    );
    let later = Timestamp::now() + SignedDuration::from_hours(240);
    saved["alarm"]["deadline"] = json!(later.to_string());
    std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();

    w.probe.drain();
    let restarted = Timestamp::now();
    w.daemon = w.site.start();
    w.wait_state("arming");
    let armed = w.wait_event("armed_away");
    let after = at(&armed).duration_since(restarted).as_secs_f64();
    assert!(after < 4.0, "armed {after} s after the restart");
    w.wait_state("armed_away");
    assert!(w
        .daemon
        .log_text()
        .contains("the saved exit delay ran until"));
}

#[test]
fn a_step_of_the_system_clock_ends_no_lockout_and_validity_rules_follow_it() {
    let broker = Broker::start();
    let mut site = Site::new(broker.port);
    site.set("lockout.duration_s", json!(3));
    site.set("lockout.max_duration_s", json!(3));
    site.init("Alice", "1234");
    // The system clock, as far as the daemon can tell: the real one plus what the test says.
    let offset = Arc::new(AtomicI64::new(0));
    let system = {
        let offset = offset.clone();
        move || Timestamp::now() + SignedDuration::from_secs(offset.load(Ordering::Relaxed))
    };
    let daemon = InProcess::start_with_clock(&site, open_store(&site), system);
    let probe = Probe::connect(broker.port, &["#"]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    let command = json!({"id": "b1", "auth": "1234", "command": "add_user", "name": "Bob",
                         "code": "2468",
                         "valid_from": (Timestamp::now() + SignedDuration::from_hours(1)).to_string()});
    probe.publish_json(&site.topic("config/set"), &command);
    let result = probe.next(&site.topic("config/result")).json();
    assert_eq!(result["ok"], true, "{result}");
    let front = |code: &str, action: &str| {
        probe.publish_json(&site.json_topic(), &json!({"code": code, "action": action}));
        probe.next(&site.topic("keypad/front/result")).json()["result"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let back = |code: &str| {
        probe.publish(&site.plain_topic(), code.to_owned(), false);
        probe.next(&site.topic("keypad/back/result")).json()["result"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(front("2468", "arm_away"), "invalid_code");
    let denied = probe.wait_for(&site.topic("event"), |m| m.json()["event_type"] == "denied");
    assert_eq!(denied.json()["reason"], "not_yet_valid");
    for _ in 0..4 {
        assert_eq!(back("9999"), "invalid_code");
    }
    let locked = Instant::now();
    assert_eq!(back("1234"), "locked_out");

    // NTP steps the clock two hours ahead.
    offset.store(7200, Ordering::Relaxed);
    assert_eq!(
        back("1234"),
        "locked_out",
        "the step does not end the lockout"
    );
    assert_eq!(
        front("2468", "arm_away"),
        "accepted",
        "valid_from follows the corrected time"
    );
    let armed = probe.wait_for(&site.topic("event"), |m| {
        m.json()["event_type"] == "armed_away"
    });
    let ahead = Timestamp::now() + SignedDuration::from_mins(110);
    assert!(at(&armed.json()) > ahead, "{}", armed.text());
    // The lockout ends three seconds after it began, not two hours.
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if back("1234") == "accepted" {
            break;
        }
        assert!(
            locked.elapsed() < Duration::from_secs(8),
            "still locked out"
        );
    }
    assert!(locked.elapsed() >= Duration::from_secs(2));

    // Back two hours, behind what the bridge has written since: not followed.
    offset.store(0, Ordering::Relaxed);
    assert_eq!(front("2468", "arm_away"), "accepted");
    let armed = probe.wait_for(&site.topic("event"), |m| {
        m.json()["event_type"] == "armed_away"
    });
    assert!(at(&armed.json()) > ahead, "{}", armed.text());
    daemon.stop();
}
