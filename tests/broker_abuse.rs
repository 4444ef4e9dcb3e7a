//! What anyone who may publish on the broker can throw at the daemon (issue 8, items 2 and 3):
//! an oversized retained message on a topic it reads must not keep it offline, and a flood of
//! junk on the config topic must not silence the alarm. The master is Alice, code 1234.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Larger than the 1 MiB the daemon accepts; mosquitto's default `message_size_limit` lets it
/// through.
const OVERSIZED: usize = 2 * 1024 * 1024;

/// Puts an oversized retained message on `topic`, then starts the daemon: it must come online,
/// stay online, and answer a keypad entry and a TRIGGER.
fn oversized_retained_message_does_not_keep_the_daemon_offline(topic: impl Fn(&Site) -> String) {
    let broker = Broker::start();
    let mut site = Site::new(broker.port);
    site.set("alarm.entry_delay_s", json!(30));
    site.init("Alice", "1234");
    let probe = Probe::connect(broker.port, &["#"]);
    let topic = topic(&site);
    let mut payload = br#"{"state":"online","code":"QZX-OVERSIZED","action":"arm_away"}"#.to_vec();
    payload.resize(OVERSIZED, b' ');
    probe.publish(&topic, payload, true);
    probe.wait_for(&topic, |m| m.payload.len() == OVERSIZED);

    let daemon = site.start();
    let status = site.topic("status");
    probe.wait_for(&status, |m| m.text() == "online");
    // Today's daemon drops the connection at the retained message, the broker publishes the
    // last will, and it reconnects: `offline`, `online`, `offline`... several times a second.
    let flap = probe.try_wait_for(&status, Duration::from_secs(3), |_| true);
    assert!(
        flap.is_none(),
        "the status changed after `online`: {:?}; log:\n{}",
        flap.map(|m| m.text()),
        daemon.log_text()
    );

    probe.publish_json(
        &site.json_topic(),
        &json!({"code": "1234", "action": "arm_away"}),
    );
    let reply = probe.next(&site.topic("keypad/front/result")).json();
    assert_eq!(reply["result"], "accepted", "{reply}");
    probe.wait_for(&site.topic("alarm/state"), |m| m.text() == "armed_away");
    probe.publish(
        &site.topic("alarm/set"),
        fixture("homeassistant/trigger.json"),
        false,
    );
    probe.wait_for(&site.topic("alarm/state"), |m| m.text() == "pending");

    let log = daemon.log_text();
    let connections = log.matches("connected to").count();
    assert_eq!(connections, 1, "one connection, no flapping; log:\n{log}");
    assert!(
        !log.contains("QZX-OVERSIZED"),
        "the oversized message's content reached the log"
    );
}

#[test]
fn an_oversized_retained_message_on_a_keypad_topic_does_not_keep_the_daemon_offline() {
    oversized_retained_message_does_not_keep_the_daemon_offline(Site::json_topic);
}

#[test]
fn an_oversized_retained_home_assistant_status_does_not_keep_the_daemon_offline() {
    oversized_retained_message_does_not_keep_the_daemon_offline(|s| {
        format!("{}-ha/status", s.base)
    });
}

#[test]
fn an_oversized_retained_zigbee2mqtt_bridge_state_does_not_keep_the_daemon_offline() {
    oversized_retained_message_does_not_keep_the_daemon_offline(|s| {
        format!("{}-z2m/bridge/state", s.base)
    });
}

/// Publishes junk commands on `topic` at QoS 0 from its own connection until `stop` is set
/// (at most `limit` of them, for at most 10 s); returns how many went out.
fn flood(
    port: u16,
    topic: String,
    stop: Arc<AtomicBool>,
    limit: usize,
) -> std::thread::JoinHandle<usize> {
    flood_with(port, topic, stop, limit, |sent| {
        json!({"id": format!("junk-{sent}"), "command": "add_user",
               "name": format!("x{sent}"), "role": "user"})
    })
}

/// Stops a flood and says how many messages it sent, which must have been a real flood.
fn end_flood(stop: &AtomicBool, flooder: std::thread::JoinHandle<usize>) -> usize {
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    assert!(sent > 1000, "the flood was only {sent} messages");
    sent
}

/// [`flood`] with the messages `make` gives.
fn flood_with(
    port: u16,
    topic: String,
    stop: Arc<AtomicBool>,
    limit: usize,
    make: impl Fn(usize) -> serde_json::Value + Send + 'static,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut options =
            rumqttc::MqttOptions::new(format!("flood-{}", rand_suffix()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = rumqttc::Client::new(options, 1000);
        let poller = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        let mut sent = 0;
        let start = Instant::now();
        while sent < limit
            && !stop.load(Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(10)
        {
            let junk = make(sent);
            if client
                .publish(&topic, rumqttc::QoS::AtMostOnce, false, junk.to_string())
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let _ = client.disconnect();
        let _ = poller.join();
        sent
    })
}

#[test]
fn a_flood_on_the_config_topic_does_not_silence_triggers_or_keypad_entries() {
    let w = World::start(|s| {
        s.set("alarm.entry_delay_s", json!(30));
    });
    w.wait_state("disarmed");
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(
        w.broker.port,
        w.topic("config/set"),
        stop.clone(),
        2_000_000,
    );
    // The flood has reached the daemon once it answers junk.
    w.probe.wait_for(&w.topic("config/result"), |_| true);

    let start = Instant::now();
    for round in 0..3 {
        let reply = w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
        assert_eq!(reply["result"], "accepted", "round {round}: {reply}");
        w.wait_state("armed_away");
        w.probe.publish(
            &w.topic("alarm/set"),
            fixture("homeassistant/trigger.json"),
            false,
        );
        w.wait_state("pending");
        let reply = w.json_keypad(json!({"code": "1234", "action": "disarm"}));
        assert_eq!(reply["result"], "accepted", "round {round}: {reply}");
        w.wait_state("disarmed");
    }
    let elapsed = start.elapsed();
    let sent = end_flood(&stop, flooder);
    assert!(
        elapsed < Duration::from_secs(5),
        "the alarm inputs took {elapsed:?} during the flood"
    );

    let log = w.daemon.log_text();
    let warnings = log.lines().filter(|l| l.contains("dropp")).count();
    assert!(
        warnings <= 3,
        "{warnings} drop warnings for a flood of {sent} (expected at most 3):\n{}",
        log.lines()
            .filter(|l| l.contains("dropp"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A panic needs no code, so anyone who may publish on one keypad's topic can send floods of
/// them: the other keypads and the owner's commands are still answered (each keypad has a
/// queue of its own, and the queues take turns), and a panic while the siren sounds is no
/// new change (no store write, no activity entry, no panel status to every keypad).
#[test]
fn a_panic_flood_on_one_keypad_silences_no_other_keypad_nor_the_owners_commands() {
    let w = World::start(|_| {});
    w.wait_state("disarmed");
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood_with(
        w.broker.port,
        w.site.z2m_topic(),
        stop.clone(),
        2_000_000,
        |_| json!({"action": "panic"}),
    );
    w.wait_state("triggered");
    let start = Instant::now();
    let event_topic = w.topic("event");
    let events_seen = || {
        w.probe
            .all()
            .iter()
            .filter(|m| m.topic == event_topic)
            .count()
    };
    let events_before = events_seen();
    for round in 0..3 {
        let reply = w.json_keypad(json!({"code": "1234", "action": "disarm"}));
        assert_eq!(reply["result"], "accepted", "round {round}: {reply}");
        let listed = w.command(json!({"id": format!("l{round}"), "auth": "1234",
                                      "command": "list_users"}));
        assert_eq!(listed["ok"], true, "round {round}: {listed}");
    }
    let elapsed = start.elapsed();
    let sent = end_flood(&stop, flooder);
    assert!(
        elapsed < Duration::from_secs(5),
        "three disarms and three commands took {elapsed:?} during the flood"
    );
    // Each disarm lets one panic of the flood trigger again: a handful of events, not one
    // (or two) for each of the flood's messages.
    let events = events_seen() - events_before;
    assert!(
        events < 40,
        "{events} events for {sent} panics and three disarms"
    );
}

/// MQTT 5 keeps MQTT 3.1.1's retain flag (Retain As Published off): a message published while
/// the daemon is subscribed arrives with it off, even if the publisher set it, so a live entry
/// is applied; the retained copy, sent again on the next subscription, is not.
#[test]
fn a_live_keypad_entry_published_retained_is_applied_once_and_its_retained_copy_never() {
    let mut w = World::start(|_| {});
    w.wait_state("disarmed");
    w.probe.publish(
        &w.site.json_topic(),
        json!({"code": "1234", "action": "arm_away"}).to_string(),
        true,
    );
    let reply = w.probe.next(&w.topic("keypad/front/result")).json();
    assert_eq!(reply["result"], "accepted", "{reply}");
    w.wait_state("armed_away");
    w.restart();
    w.wait_state("armed_away");
    w.probe
        .assert_silent(&w.topic("keypad/front/result"), Duration::from_millis(500));
    w.probe.publish(&w.site.json_topic(), Vec::new(), true);
}

/// Connects with `client_id`, which makes the broker drop the client that had it, then leaves.
fn take_over(port: u16, client_id: &str) {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    let start = Instant::now();
    let mut connected = false;
    while start.elapsed() < WAIT {
        match connection.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_)))) if !connected => {
                connected = true;
                client.disconnect().unwrap();
            }
            Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("the takeover connection failed: {e}"),
        }
    }
    panic!("the takeover connection did not complete within {WAIT:?}");
}

#[test]
fn a_connection_dropped_right_after_connecting_does_not_reset_the_backoff_and_says_so() {
    let w = World::start(|_| {});
    let client_id = w.site.config["mqtt"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = w.topic("status");
    let mut retries = Vec::new();
    for _ in 0..2 {
        w.probe.drain();
        take_over(w.broker.port, &client_id);
        w.probe.wait_for(&status, |m| m.text() == "online");
        let log = w.daemon.log_text();
        retries = log
            .lines()
            .filter(|l| l.contains("dropped") && l.contains("after connecting"))
            .map(str::to_owned)
            .collect();
    }
    assert_eq!(retries.len(), 2, "{}", w.daemon.log_text());
    let broker = format!("127.0.0.1:{} (no TLS", w.broker.port);
    assert!(retries.iter().all(|l| l.contains(&broker)), "{retries:#?}");
    assert!(retries[0].ends_with("retrying in 0.25 s"), "{retries:#?}");
    assert!(
        retries[1].ends_with("retrying in 0.5 s"),
        "a connection that lasted less than 30 s must not reset the backoff: {retries:#?}"
    );
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// (Red team, round 2.) A Zigbee2MQTT message repeating one transaction is answered from memory with an
/// INFO line each time, unthrottled (no hashing, no lockout): anyone who may publish on the
/// keypad topic writes one journal line per message.
#[test]
fn a_repeated_zigbee_transaction_is_logged_at_most_once_every_ten_seconds() {
    let w = World::start(|_| {});
    let payload = json!({"action": "disarm", "action_code": "9999", "action_transaction": 7});
    w.probe.publish_json(&w.site.z2m_topic(), &payload);
    w.hall_reply();
    for _ in 0..300 {
        w.probe.publish_json(&w.site.z2m_topic(), &payload);
    }
    // A keypad that missed the reply repeats a few times: those get it; a flood gets nothing
    // more (each reply goes out over the radio).
    let set = format!("{}/set", w.site.z2m_topic());
    let mut replies = 0;
    while w
        .probe
        .try_wait_for(&set, Duration::from_millis(700), |_| true)
        .is_some()
    {
        replies += 1;
    }
    assert_eq!(replies, 4, "replies to 300 repeats");
    let lines = count(&w.daemon.log_text(), "repeated transaction");
    assert!(
        lines <= 2,
        "{lines} log lines for 300 repeats of one Zigbee transaction in a few seconds"
    );
}

/// (Red team, round 2.) Commands on `B/config/set` without `auth`, or not JSON at all, come from anyone
/// who may publish there; each writes an INFO or WARN line, unthrottled.
#[test]
fn junk_on_the_config_topic_is_logged_at_most_once_a_kind_every_ten_seconds() {
    let w = World::start(|_| {});
    // In rounds that fit the command lane (64 waiting), so that none is dropped.
    for round in 0..8 {
        for i in 0..25 {
            let id = format!("j{round}-{i}");
            w.probe.publish_json(
                &w.topic("config/set"),
                &json!({"id": id, "command": "list_users"}),
            );
            w.probe.publish(&w.topic("config/set"), "not json", false);
        }
        let last = format!("j{round}-24");
        w.probe.wait_for(&w.topic("config/result"), |m| {
            m.json()["id"] == last.as_str()
        });
    }
    let last = w.command(json!({"id": "last", "command": "list_users"}));
    assert_eq!(last["error"]["kind"], "unauthorized");
    let log = w.daemon.log_text();
    let unauthorized = count(&log, "`auth` is required");
    let invalid = count(&log, "refused a command");
    assert!(
        unauthorized + invalid <= 4,
        "{unauthorized} lines about commands without auth and {invalid} about non-JSON ones \
         for 400 junk messages"
    );
}
