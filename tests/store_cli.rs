//! The store, the secret and the CLI (issue 2, points 3 to 5).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use keypad_bridge::codes::LookupKey;
use keypad_bridge::store::{Change, Create, Store};
use keypad_bridge::users::{Role, User};
use serde_json::json;

/// Starts the daemon on `site`, expects it to refuse to start, and returns its log, which
/// must say `why`.
fn refuses_to_start(site: &Site, why: &str) -> String {
    let mut daemon = site.start();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = daemon.exited() {
            break status;
        }
        assert!(
            start.elapsed() < WAIT,
            "the daemon should have refused to start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = daemon.log_text();
    assert!(log.contains(why), "the log should say {why:?}:\n{log}");
    log
}

#[test]
fn init_creates_a_private_secret_and_refuses_a_second_master() {
    let site = Site::new(1);
    site.init("Alice", "1234");
    let mode = std::fs::metadata(site.store_dir().join("secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(site.store_dir().join("secret"))
            .unwrap()
            .len(),
        32
    );
    let (ok, _, err) = site.cli(&["init", "--name", "Eve"], "5678\n");
    assert!(!ok);
    assert!(err.contains("a master already exists"), "{err}");
    let (ok, out, _) = site.cli(&["users"], "");
    assert!(ok);
    assert!(
        out.contains("Alice") && out.contains("master") && !out.contains("Eve"),
        "{out}"
    );
    assert!(!holds_number(&out, "1234"), "{out}");
}

#[test]
fn init_refuses_a_malformed_code_in_plain_words() {
    let site = Site::new(1);
    for bad in ["12", "12 34", "abcd", "1234567"] {
        let (ok, _, err) = site.cli(&["init"], &format!("{bad}\n"));
        assert!(!ok, "{bad}");
        assert!(err.contains("that code cannot be used"), "{err}");
    }
    // Nothing was created: an interrupted init leaves no store without a master behind.
    assert!(!site.store_dir().join("db").exists());
    assert!(!site.store_dir().join("secret").exists());
    let (ok, _, err) = site.cli(&["users"], "");
    assert!(!ok && err.contains("keypad-bridge init"), "{err}");
    site.init("Alice", "0042");
    let (ok, out, _) = site.cli(&["users"], "");
    assert!(ok && out.contains(" master "), "{out}");
}

#[test]
fn init_and_reset_master_warn_of_one_of_the_commonest_pins_without_printing_it() {
    let site = Site::new(1);
    let (ok, out, err) = site.cli(&["init", "--name", "Alice"], "1111\n");
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: the code is one of the commonest PINs"),
        "{err}"
    );
    assert!(
        !holds_number(&out, "1111") && !holds_number(&err, "1111"),
        "{out}{err}"
    );
    let (ok, _, err) = site.cli(&["reset-master"], "80246\n");
    assert!(ok && err.is_empty(), "{err}");
}

#[test]
fn offline_commands_on_a_missing_store_say_how_to_create_it() {
    let site = Site::new(1);
    for cmd in [&["users"][..], &["activity"][..], &["reset-master"][..]] {
        let (ok, _, err) = site.cli(cmd, "1234\n");
        assert!(!ok);
        assert!(err.contains("keypad-bridge init"), "{err}");
    }
}

#[test]
fn a_missing_or_foreign_secret_is_refused_never_replaced() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let secret = site.store_dir().join("secret");
    let original = std::fs::read(&secret).unwrap();

    std::fs::remove_file(&secret).unwrap();
    let log = refuses_to_start(&site, "is missing");
    assert!(log.contains("backup"), "{log}");
    assert!(
        !secret.exists(),
        "the daemon must not create a new secret for an existing store"
    );

    std::fs::write(&secret, [7u8; 32]).unwrap();
    refuses_to_start(&site, "does not belong");
    let (ok, _, err) = site.cli(&["users"], "");
    assert!(!ok && err.contains("does not belong"), "{err}");

    std::fs::write(&secret, &original).unwrap();
    let probe = Probe::connect(broker.port, &["#"]);
    let _daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    probe.publish(
        &site.json_topic(),
        json!({"code": "1234"}).to_string(),
        false,
    );
    let reply = probe.next(&site.topic("keypad/front/result")).json();
    assert_eq!(reply["result"], "accepted");
}

#[test]
fn a_damaged_alarm_state_file_stops_the_daemon_instead_of_coming_up_disarmed() {
    let mut w = World::start(|_| {});
    w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
    assert!(w.daemon.stop());
    let state_file = w.site.store_dir().join("db.alarm.json");
    assert!(std::fs::read_to_string(&state_file)
        .unwrap()
        .contains("armed_away"));
    std::fs::write(&state_file, b"{\"state\": \"arm").unwrap();
    // The store's copy, committed with each change before the file, takes over.
    w.probe.drain();
    w.daemon = w.site.start();
    w.wait_state("armed_away");
    assert!(w.daemon.log_text().contains("using the store's copy"));
    assert!(w.daemon.stop());
    // Without a readable copy in the store, a damaged or missing file stops the daemon.
    let config = keypad_bridge::config::load(&w.site.config_path()).unwrap();
    let store = Store::open(&config, Create::Refused).unwrap();
    store
        .commit(Change {
            meta: vec![("alarm_state", b"{\"alarm".to_vec())],
            ..Change::default()
        })
        .unwrap();
    drop(store);
    std::fs::write(&state_file, b"{\"state\": \"arm").unwrap();
    refuses_to_start(&w.site, "alarm state file");
    std::fs::remove_file(&state_file).unwrap();
    refuses_to_start(&w.site, "missing");
}

#[test]
fn reset_master_gives_the_master_a_new_code() {
    let mut w = World::start(|_| {});
    assert!(w.daemon.stop());
    let (ok, _, err) = w.site.cli(&["reset-master"], "7531\n");
    assert!(ok, "{err}");
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    assert_eq!(
        w.json_keypad(json!({"code": "1234"}))["result"],
        "invalid_code"
    );
    assert_eq!(w.json_keypad(json!({"code": "7531"}))["result"], "accepted");
}

#[test]
fn check_config_lists_every_problem_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "mqtt:\n  hots: localhost\n  port: abc\nlockout:\n  max_failures: 4\n  window: 600\nkeypads:\n  - name: Hall Keypad\n    protocol: zigbee2mqtt\n    topic: zigbee2mqtt/hall\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("line 2, column 3") && text.contains("hots"),
        "{text}"
    );
    assert!(text.contains("line 3") && text.contains("port"), "{text}");
    assert!(
        text.contains("line 6, column 3") && text.contains("window"),
        "{text}"
    );
    assert!(text.contains("line 8") && text.contains("name"), "{text}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
        .args(["--config", example, "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lookup runs in-process so that the test can read the Argon2 counter.
#[test]
fn a_code_check_costs_one_argon2_computation_whatever_the_number_of_users() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let config = keypad_bridge::config::load(&site.config_path()).unwrap();
    let store = Store::open(&config, Create::Refused).unwrap();
    // Two hundred more users, each with a code.
    let now = jiff::Timestamp::now();
    let mut change = Change::default();
    for i in 0..200u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        let id = format!("u_t{i:05}");
        change.put_codes.push((LookupKey(key), id.clone()));
        let mut user = User::new(id, format!("Person {i}"), Role::User, now);
        user.code_key = Some(LookupKey(key).to_hex());
        change.put_users.push(user);
    }
    store.commit(change).unwrap();
    let keyer = store.keyer().clone();
    let daemon = InProcess::start(&site, store);
    let probe = Probe::connect(broker.port, &["#"]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    let before = keyer.computations();
    for (code, result) in [
        ("9999", "invalid_code"),
        ("1234", "accepted"),
        ("4321", "invalid_code"),
    ] {
        probe.publish(&site.json_topic(), json!({"code": code}).to_string(), false);
        let reply = probe.next(&site.topic("keypad/front/result")).json();
        assert_eq!(reply["result"], result);
    }
    assert_eq!(
        keyer.computations() - before,
        3,
        "one computation per attempt"
    );
    // A malformed code is refused before hashing.
    probe.publish(&site.json_topic(), json!({"code": "12"}).to_string(), false);
    probe.next(&site.topic("keypad/front/result"));
    assert_eq!(keyer.computations() - before, 3);
    daemon.stop();
    probe.wait_for(&site.topic("status"), |m| m.text() == "offline");
}

#[test]
fn a_secret_without_its_store_is_a_lost_store_not_a_first_start() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    std::fs::remove_dir_all(site.store_dir().join("db")).unwrap();
    refuses_to_start(&site, "seems lost");
    assert!(
        !site.store_dir().join("db").exists(),
        "no new, empty store was created"
    );
    let (ok, _, err) = site.cli(&["init"], "5678\n");
    assert!(!ok && err.contains("seems lost"), "{err}");
    // Every command gives the one hint that works: init and the daemon refuse, so none of
    // them suggests those.
    for cmd in [
        &["users"][..],
        &["activity"][..],
        &["reset-master"][..],
        &["unlock"][..],
    ] {
        let (ok, _, err) = site.cli(cmd, "5678\n");
        assert!(!ok && err.contains("seems lost"), "{cmd:?}: {err}");
        assert!(
            err.contains("Restore it from your backup"),
            "{cmd:?}: {err}"
        );
        assert!(!err.contains("keypad-bridge init"), "{cmd:?}: {err}");
    }
}

#[test]
fn a_retained_home_assistant_command_is_never_applied() {
    let mut w = World::start(|_| {});
    assert!(w.daemon.stop());
    // Left retained on the broker while the daemon was down (MQTT delivers it, flagged
    // retained, when the daemon subscribes again).
    let cmd = json!({"action": "ARM_AWAY", "code": "1234"}).to_string();
    w.probe.publish(&w.topic("alarm/set"), cmd, true);
    w.probe.drain();
    w.daemon = w.site.start();
    w.wait_state("disarmed");
    w.probe
        .assert_silent(&w.topic("alarm/state"), Duration::from_millis(500));
    // And its code does not linger on the broker: the daemon cleared it.
    let late = Probe::connect(w.broker.port, &[&w.topic("alarm/set")]);
    late.assert_silent(&w.topic("alarm/set"), Duration::from_millis(300));
}

/// Writes an unreadable record under `key` in one of the store's trees (daemon stopped).
fn damage(site: &Site, tree: &str, key: &str) {
    let db = sled::open(site.store_dir().join("db")).unwrap();
    db.open_tree(tree)
        .unwrap()
        .insert(key, &b"{not json"[..])
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn a_store_failure_is_an_internal_error_and_adds_nobody() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    // Damage the stored result of command x1 behind the daemon's back.
    damage(&site, "applied", "x1");
    let probe = Probe::connect(broker.port, &["#"]);
    let mut daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    let cmd =
        json!({"id": "x1", "auth": "1234", "command": "add_user", "name": "Bob", "code": "2468"});
    probe.publish(&site.topic("config/set"), cmd.to_string(), false);
    let result = probe.next(&site.topic("config/result")).json();
    assert_eq!(result["ok"], false);
    assert_eq!(result["error"]["kind"], "internal");
    assert!(daemon.stop());
    let db = sled::open(site.store_dir().join("db")).unwrap();
    assert_eq!(
        db.open_tree("users").unwrap().len(),
        1,
        "Alice only: Bob was not added"
    );
}

#[test]
fn a_damaged_user_record_stops_the_daemon_instead_of_losing_people() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    damage(&site, "users", "u_broken");
    refuses_to_start(&site, "damaged");
}

#[test]
fn argon2_settings_changed_later_keep_the_recorded_ones_and_say_so() {
    let broker = Broker::start();
    let mut site = Site::new(broker.port);
    site.init("Alice", "1234");
    site.set("codes.argon2.memory_kib", json!(2048));
    site.set("codes.argon2.iterations", json!(3));
    let probe = Probe::connect(broker.port, &["#"]);
    let mut daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    probe.publish(
        &site.json_topic(),
        json!({"code": "1234"}).to_string(),
        false,
    );
    let reply = probe.next(&site.topic("keypad/front/result")).json();
    assert_eq!(
        reply["result"], "accepted",
        "the code still works: the recorded parameters are used"
    );
    assert!(daemon.stop());
    let log = daemon.log_text();
    assert!(
        log.contains("recorded ones stay in use") && log.contains("memory_kib=1024"),
        "{log}"
    );
}

#[test]
fn the_activity_log_keeps_the_newest_max_entries() {
    let mut w = World::start(|s| {
        s.set("activity.max_entries", json!(5));
    });
    for _ in 0..4 {
        w.json_keypad(json!({"code": "1234"}));
    }
    w.json_keypad(json!({"code": "0000"}));
    assert!(w.daemon.stop());
    let (ok, out, err) = w.site.cli(&["activity", "--limit", "100"], "");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].contains("invalid_code"), "{out}");
    assert!(
        !out.contains("user_added"),
        "the oldest entries are gone: {out}"
    );
}

#[test]
fn the_running_daemon_keeps_at_most_max_entries() {
    let w = World::start(|s| {
        s.set("activity.max_entries", json!(5));
    });
    for _ in 0..4 {
        w.json_keypad(json!({"code": "0000"}));
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = w.command(json!({"id": "act", "auth": "1234", "command": "activity", "limit": 100}));
    assert_eq!(r["entries"].as_array().unwrap().len(), 5, "{r}");
}

#[test]
fn lowering_max_entries_trims_the_log_at_the_next_open() {
    let mut w = World::start(|_| {});
    for _ in 0..3 {
        w.json_keypad(json!({"code": "0000"}));
    }
    assert!(w.daemon.stop());
    let (ok, out, err) = w.site.cli(&["activity", "--limit", "100"], "");
    assert!(ok, "{err}");
    assert!(out.lines().count() > 3, "{out}");
    w.site.set("activity.max_entries", json!(3));
    let (ok, out, err) = w.site.cli(&["activity", "--limit", "100"], "");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
}

/// Four wrong `auth`s lock the admin channel; three wrong codes count against the back keypad.
fn lock_the_admin_channel_and_count_against_the_back_keypad(w: &World) {
    for i in 0..4 {
        let r =
            w.command(json!({"id": format!("junk-{i}"), "auth": "0000", "command": "list_users"}));
        assert_eq!(r["ok"], false, "{r}");
    }
    assert_eq!(w.wait_event("lockout")["source"], "admin");
    for _ in 0..3 {
        w.probe.publish(&w.site.plain_topic(), "0000", false);
        w.probe.next(&w.topic("keypad/back/result"));
    }
}

#[test]
fn unlock_lifts_the_admin_lockout_that_survived_a_restart_and_logs_it() {
    let mut w = World::start(|_| {});
    lock_the_admin_channel_and_count_against_the_back_keypad(&w);
    // While the daemon holds the store, the offline command refuses plainly.
    let (ok, _, err) = w.site.cli(&["unlock", "admin"], "");
    let holder = format!("held by another keypad-bridge (pid {})", w.daemon.pid());
    assert!(!ok && err.contains(&holder), "{err}");
    assert!(err.contains(&format!("`kill {}`", w.daemon.pid())), "{err}");
    assert!(w.daemon.stop());

    let (ok, out, err) = w.site.cli(&["unlock", "admin"], "");
    assert!(ok, "{err}");
    assert!(
        out.starts_with("unlocked admin (was locked until ") && out.lines().count() == 1,
        "{out}"
    );
    let (ok, out, _) = w.site.cli(&["unlock", "admin"], "");
    assert!(
        ok && out.starts_with("admin had nothing to unlock"),
        "{out}"
    );
    let (ok, out, _) = w.site.cli(&["unlock", "keypad:nowhere"], "");
    assert!(ok, "an unknown source is not an error");
    assert!(
        out.contains("keypad:nowhere had nothing to unlock")
            && out.contains("the sources are admin, homeassistant, keypad:hall"),
        "{out}"
    );

    let (ok, out, _) = w.site.cli(&["activity", "--limit", "1"], "");
    assert!(ok);
    assert!(
        out.contains("unlocked") && out.contains("source=admin") && out.contains("by=cli"),
        "{out}"
    );

    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    let r = w.command(json!({"id": "after", "auth": "1234", "command": "list_users"}));
    assert_eq!(r["ok"], true, "the admin channel works again: {r}");
    let r = w.command(json!({"id": "log", "auth": "1234", "command": "activity", "limit": 5}));
    let unlocked: Vec<&serde_json::Value> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "unlocked")
        .collect();
    assert_eq!(unlocked.len(), 1, "{r}");
    assert_eq!(unlocked[0]["source"], "admin");
    assert_eq!(unlocked[0]["by"], "cli");
}

#[test]
fn unlock_without_a_source_clears_every_source_and_forgets_counted_failures() {
    let mut w = World::start(|_| {});
    lock_the_admin_channel_and_count_against_the_back_keypad(&w);
    assert!(w.daemon.stop());

    let (ok, out, err) = w.site.cli(&["unlock"], "");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("unlocked admin (was locked until "),
        "{out}"
    );
    assert!(
        lines[1].starts_with("keypad:back was not locked; forgot its 3 failed attempts"),
        "{out}"
    );
    let (ok, out, _) = w.site.cli(&["activity", "--limit", "2"], "");
    assert!(ok);
    assert_eq!(
        out.matches("unlocked").count(),
        2,
        "one event per source: {out}"
    );
    assert!(out.contains("source=keypad:back"), "{out}");
    let (ok, out, _) = w.site.cli(&["unlock"], "");
    assert!(ok && out.trim() == "nothing was locked", "{out}");

    // The three failures are forgotten: three more do not lock the back keypad.
    w.daemon = w.site.start();
    w.probe
        .wait_for(&w.topic("status"), |m| m.text() == "online");
    for _ in 0..3 {
        w.probe.publish(&w.site.plain_topic(), "0000", false);
        let r = w.probe.next(&w.topic("keypad/back/result")).json();
        assert_eq!(r["result"], "invalid_code");
    }
    w.probe.publish(&w.site.plain_topic(), "1234", false);
    let r = w.probe.next(&w.topic("keypad/back/result")).json();
    assert_eq!(r["result"], "accepted", "{r}");
}

/// Every path below `dir` (itself included) with its permission bits.
fn modes_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes_below(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            ));
        }
    }
    out
}

fn assert_private(paths: &[(std::path::PathBuf, u32)]) {
    for (path, mode) in paths {
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{} has mode {mode:o}", path.display());
    }
}

#[test]
fn a_new_store_is_private_even_under_a_permissive_umask_in_an_open_parent() {
    let site = Site::new(1);
    let parent = site.store_dir();
    std::fs::create_dir(&parent).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_keypad-bridge"))
        .args(["--config", site.config_path().to_str().unwrap(), "init"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"1234\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("tightened"),
        "a new store is not reported as loose: {err}"
    );
    let modes = modes_below(&parent.join("db"));
    assert!(modes.len() > 2, "{modes:?}");
    assert_private(&modes);
    let secret = std::fs::metadata(parent.join("secret")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    // The parent was the owner's to choose: left as it was.
    let parent_mode = std::fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
    assert_eq!(parent_mode, 0o755);
}

#[test]
fn a_loosened_store_and_alarm_file_are_tightened_at_open_and_the_log_says_so() {
    let mut w = World::start(|_| {});
    w.json_keypad(json!({"code": "1234", "action": "arm_away"}));
    assert!(w.daemon.stop());
    let db = w.site.store_dir().join("db");
    let alarm = w.site.store_dir().join("db.alarm.json");
    for (path, mode) in modes_below(&db) {
        let loose = if path.is_dir() { 0o755 } else { mode | 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
    }
    std::fs::set_permissions(&alarm, std::fs::Permissions::from_mode(0o644)).unwrap();

    let (ok, out, err) = w.site.cli(&["users"], "");
    assert!(ok && out.contains("Alice"), "{err}");
    assert!(
        err.contains(&format!("{}", db.display())) && err.contains("0755"),
        "the log names the store and its old mode: {err}"
    );
    assert!(
        err.contains(&format!("{}", alarm.display())) && err.contains("0644"),
        "{err}"
    );
    assert_private(&modes_below(&db));
    let alarm_mode = std::fs::metadata(&alarm).unwrap().permissions().mode() & 0o777;
    assert_eq!(alarm_mode, 0o600);

    // Tightened once: the next open has nothing to say, and the daemon comes up armed.
    let (ok, _, err) = w.site.cli(&["users"], "");
    assert!(ok && err.is_empty(), "{err}");
    w.daemon = w.site.start();
    w.wait_state("armed_away");
}

#[test]
fn check_config_and_run_refuse_a_keypad_on_a_topic_the_bridge_uses_for_something_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clash.yaml");
    std::fs::write(
        &path,
        "keypads:\n  - name: hall\n    protocol: zigbee2mqtt\n    topic: zigbee2mqtt/Hall keypad\n  - name: echo\n    protocol: plain\n    topic: zigbee2mqtt/Hall keypad/set\n  - name: ha\n    protocol: json\n    topic: homeassistant/status\n",
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
            .args(["--config", path.to_str().unwrap(), command])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("line 7, column 12")
                && text.contains("where the bridge answers the Zigbee2MQTT keypad \"hall\""),
            "{command}: {text}"
        );
        assert!(
            text.contains("line 10, column 12") && text.contains("Home Assistant's status topic"),
            "{command}: {text}"
        );
    }
}

/// Runs a CLI command whose stdout is a pipe nobody reads any more (`users | grep -q`,
/// `activity | head -1` after the reader has left); returns (success, stderr).
fn cli_into_a_closed_pipe(site: &Site, args: &[&str]) -> (bool, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
        .arg("--config")
        .arg(site.config_path())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_normal_end_for_every_listing_command() {
    let site = Site::new(1);
    site.init("Alice", "1234");
    for args in [&["users"][..], &["activity"][..], &["unlock"][..]] {
        let (ok, err) = cli_into_a_closed_pipe(&site, args);
        assert!(ok, "{args:?} should end normally: {err}");
        assert!(err.is_empty(), "{args:?} should print nothing: {err}");
    }
}

#[test]
fn no_config_file_says_how_to_point_at_one_and_where_the_example_is() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("config.yaml");
    for args in [&[][..], &["check-config"][..], &["users"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
            .arg("--config")
            .arg(&nowhere)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&nowhere.display().to_string()), "{err}");
        assert!(
            err.contains("--config PATH")
                && err.contains("KEYPAD_BRIDGE_CONFIG")
                && err.contains("config.example.yaml"),
            "{args:?}: {err}"
        );
    }
}
