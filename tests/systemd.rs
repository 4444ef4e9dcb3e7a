//! The daemon under systemd (issue 10, items 1 and 2): `Type=notify` over the socket systemd
//! gives in `NOTIFY_SOCKET`, with its watchdog (`WATCHDOG_USEC`), and log lines for journald
//! (`JOURNAL_STREAM`), against a real mosquitto and the real binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// systemd's end of the notify socket: every datagram the daemon sent, in order.
struct Systemd {
    socket: UnixDatagram,
    got: Vec<String>,
}

impl Systemd {
    fn bind(site: &Site) -> (Systemd, String) {
        let path = site.dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let systemd = Systemd {
            socket,
            got: Vec::new(),
        };
        (systemd, path.to_str().unwrap().to_owned())
    }

    /// Reads datagrams for `time`.
    fn listen(&mut self, time: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < time {
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.got.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_owned),
                );
            }
        }
    }

    /// Reads until a line starts with `prefix` (bounded).
    fn wait_for(&mut self, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.got.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(
                start.elapsed() < WAIT,
                "no {prefix} from the daemon; it sent {:?}",
                self.got
            );
            self.listen(Duration::from_millis(100));
        }
    }

    fn count(&self, line: &str) -> usize {
        self.got.iter().filter(|l| *l == line).count()
    }
}

#[test]
fn systemd_hears_ready_only_once_online_then_the_watchdog_and_the_stop() {
    let mut broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let (mut systemd, path) = Systemd::bind(&site);
    broker.stop();
    let mut daemon = DaemonProcess::start_with_env(
        &site,
        "info",
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")],
    );
    // No broker: a status that says what it waits for, the watchdog, and no READY.
    let waiting = systemd.wait_for("STATUS=");
    assert_eq!(
        waiting,
        format!("STATUS=waiting for the broker at 127.0.0.1:{}", broker.port)
    );
    systemd.listen(Duration::from_millis(1200));
    assert_eq!(systemd.count("READY=1"), 0, "{:?}", systemd.got);
    assert!(
        systemd.count("WATCHDOG=1") >= 2,
        "WATCHDOG=1 at half of WatchdogSec: {:?}",
        systemd.got
    );
    // The broker comes: online is published, then READY=1 and the status of the alarm.
    broker.restart();
    let probe = Probe::connect(broker.port, &[&site.topic("status")]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    systemd.wait_for("READY=1");
    assert!(
        systemd
            .got
            .contains(&"STATUS=online, disarmed, 1 users".to_owned()),
        "{:?}",
        systemd.got
    );
    let watchdogs = systemd.count("WATCHDOG=1");
    systemd.listen(Duration::from_millis(1100));
    assert!(
        systemd.count("WATCHDOG=1") >= watchdogs + 2,
        "the loop keeps saying it is alive"
    );
    assert!(daemon.stop());
    systemd.wait_for("STOPPING=1");
    assert_eq!(systemd.count("READY=1"), 1);
}

#[test]
fn under_journald_each_line_carries_its_priority_and_no_colour_or_time_of_its_own() {
    let broker = Broker::start();
    let site = Site::new(broker.port);
    site.init("Alice", "1234");
    let probe = Probe::connect(broker.port, &["#"]);
    let mut daemon = DaemonProcess::start_with_env(&site, "info", &[("JOURNAL_STREAM", "8:1234")]);
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    // A warning: an unreadable keypad message.
    probe.publish(&site.json_topic(), "{\"code\": ", false);
    probe.wait_for(&site.topic("keypad/front/result"), |m| {
        m.json()["result"] == json!("invalid_request")
    });
    assert!(daemon.stop());
    let log = daemon.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let priority = line.get(..3).unwrap_or_default();
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "a line without its priority: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "colours: {line:?}");
        assert!(
            !line[3..].starts_with("20"),
            "a timestamp of its own: {line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("unreadable keypad message")),
        "{log}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("<6>") && l.contains("connected")));
}
