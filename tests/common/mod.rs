//! Test harness: a real mosquitto on a free loopback port, the real daemon binary in a temp
//! dir, and a probe client that sees everything the daemon publishes.
//!
//! Every process started here is stopped here, by its pid. A missing mosquitto is a failure
//! that says how to install it, never a skip.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(10);

fn mosquitto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let in_path = std::env::split_paths(&path).map(|dir| dir.join("mosquitto"));
    let usual =
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin"].map(|d| Path::new(d).join("mosquitto"));
    if let Some(found) = usual.into_iter().chain(in_path).find(|p| p.is_file()) {
        return found;
    }
    panic!(
        "mosquitto is not installed, and the tests need a real broker. Install it with \
         `sudo apt-get install -y mosquitto mosquitto-clients` (or run `bash .ci/run`)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A mosquitto broker owned by one test.
pub struct Broker {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    extra: String,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(tempfile::tempdir().unwrap(), "allow_anonymous true\n")
    }

    /// A broker whose config adds `extra` lines (TLS files, password and ACL files, all in
    /// `dir`) after its loopback listener.
    pub fn start_with(dir: tempfile::TempDir, extra: &str) -> Broker {
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = Self::spawn(dir.path(), port, extra) {
                return Broker {
                    port,
                    child,
                    dir,
                    extra: extra.to_owned(),
                };
            }
        }
        panic!("mosquitto did not start on a free port after 5 tries");
    }

    fn spawn(dir: &Path, port: u16, extra: &str) -> Option<Child> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{extra}set_tcp_nodelay true\n\
                 persistence false\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Still ours? Another test's broker may have taken the port first.
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(None) = child.try_wait() {
                    return Some(child);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Stops the broker and starts a new one on the same port (retained messages are lost).
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        loop {
            if let Some(child) = Self::spawn(self.dir.path(), self.port, &self.extra) {
                self.child = child;
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "mosquitto did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message the probe saw.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.text()))
    }
}

#[derive(Default)]
struct Seen {
    all: Vec<Msg>,
    pending: VecDeque<Msg>,
}

/// An MQTT client that records every message on the topics it subscribed to.
pub struct Probe {
    client: Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    pub fn connect(port: u16, filters: &[&str]) -> Probe {
        Probe::connect_with(port, None, filters)
    }

    /// A probe that logs in.
    pub fn connect_as(port: u16, user: &str, password: &str, filters: &[&str]) -> Probe {
        Probe::connect_with(port, Some((user, password)), filters)
    }

    fn connect_with(port: u16, login: Option<(&str, &str)>, filters: &[&str]) -> Probe {
        let id = format!("probe-{}", rand_suffix());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut connection) = Client::new(options, 100);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let record = seen.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let msg = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        let mut seen = record.lock().unwrap();
                        seen.all.push(msg.clone());
                        seen.pending.push_back(msg);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => {
                        if ready.is_none() && !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                            // The broker went away (a test restarts it): try again shortly.
                            std::thread::sleep(Duration::from_millis(100));
                        } else {
                            break;
                        }
                    }
                }
            }
        });
        let filters: Vec<_> = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce))
            .collect();
        if filters.is_empty() {
            client.subscribe("probe/none", QoS::AtLeastOnce).unwrap();
        } else {
            client.subscribe_many(filters).unwrap();
        }
        ready_rx
            .recv_timeout(WAIT)
            .expect("the probe could not subscribe to the broker");
        Probe {
            client,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .unwrap();
    }

    pub fn publish_json(&self, topic: &str, payload: &Value) {
        self.publish(topic, payload.to_string(), false);
    }

    /// Waits for the next message on `topic` that `pred` accepts, skipping others on that
    /// topic; messages on other topics stay queued.
    pub fn wait_for(&self, topic: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.try_wait_for(topic, WAIT, pred).unwrap_or_else(|| {
            let seen: Vec<String> = self
                .all()
                .iter()
                .filter(|m| m.topic == topic)
                .map(|m| m.text())
                .collect();
            panic!("no matching message on {topic} within {WAIT:?}; seen there: {seen:#?}")
        })
    }

    pub fn try_wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let start = Instant::now();
        loop {
            {
                let mut seen = self.seen.lock().unwrap();
                let mut i = 0;
                while i < seen.pending.len() {
                    if seen.pending[i].topic == topic {
                        let msg = seen.pending.remove(i).unwrap();
                        if pred(&msg) {
                            return Some(msg);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next message on `topic`.
    pub fn next(&self, topic: &str) -> Msg {
        self.wait_for(topic, |_| true)
    }

    /// Asserts that nothing arrives on `topic` for `quiet`.
    pub fn assert_silent(&self, topic: &str, quiet: Duration) {
        if let Some(msg) = self.try_wait_for(topic, quiet, |_| true) {
            panic!("unexpected message on {topic}: {}", msg.text());
        }
    }

    /// Every message seen so far.
    pub fn all(&self) -> Vec<Msg> {
        self.seen.lock().unwrap().all.clone()
    }

    /// Forgets queued messages (not the full record).
    pub fn drain(&self) {
        self.seen.lock().unwrap().pending.clear();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}{:x}{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A site: temp dir, config file, base topic; the daemon runs against it.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub config: Value,
    pub port: u16,
}

impl Site {
    /// Three keypads (Zigbee2MQTT `hall`, json `front`, plain `back`), cheap Argon2, no delays.
    pub fn new(port: u16) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let base = format!("kb{}", rand_suffix());
        let config = json!({
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": format!("{base}-daemon"),
                      "base_topic": base, "keepalive_s": 5},
            "store": {"path": dir.path().join("data/db"), "secret_file": dir.path().join("data/secret"),
                      "cache_mb": 4},
            "codes": {"argon2": {"memory_kib": 1024, "iterations": 1, "parallelism": 1}},
            "alarm": {"exit_delay_s": {"armed_away": 0, "armed_home": 0, "armed_night": 0,
                                         "armed_vacation": 0},
                      "entry_delay_s": 0, "trigger_time_s": 600,
                      "modes": ["armed_away", "armed_home", "armed_night", "armed_vacation"]},
            "homeassistant": {"discovery": true, "prefix": format!("{base}-ha")},
            "timezone": "Europe/Paris",
            "keypads": [
                {"name": "hall", "protocol": "zigbee2mqtt", "topic": format!("{base}-z2m/Hall keypad")},
                {"name": "front", "protocol": "json", "topic": format!("{base}-esp/front/code")},
                {"name": "back", "protocol": "plain", "topic": format!("{base}-esp/back/code")},
            ],
            "log": {"level": "debug"},
        });
        Site {
            dir,
            base,
            config,
            port,
        }
    }

    /// Sets a config value by dotted path, e.g. `set("alarm.entry_delay_s", json!(30))`.
    pub fn set(&mut self, path: &str, value: Value) -> &mut Self {
        let mut node = &mut self.config;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            node = node
                .as_object_mut()
                .unwrap()
                .entry(part.to_string())
                .or_insert(json!({}));
        }
        node[parts[parts.len() - 1]] = value;
        self
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, serde_yaml::to_string(&self.config).unwrap()).unwrap();
        path
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.base)
    }

    pub fn z2m_topic(&self) -> String {
        format!("{}-z2m/Hall keypad", self.base)
    }

    pub fn json_topic(&self) -> String {
        format!("{}-esp/front/code", self.base)
    }

    pub fn plain_topic(&self) -> String {
        format!("{}-esp/back/code", self.base)
    }

    /// Runs a CLI command with `stdin`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let command = Command::new(env!("CARGO_BIN_EXE_keypad-bridge"));
        run_cli(command, &self.config_path(), args, stdin)
    }

    /// `keypad-bridge init --name NAME` with the code on stdin.
    pub fn init(&self, name: &str, code: &str) {
        let (ok, out, err) = self.cli(&["init", "--name", name], &format!("{code}\n"));
        assert!(ok, "init failed: {out}{err}");
    }

    pub fn start(&self) -> DaemonProcess {
        DaemonProcess::start(self, "debug")
    }
}

/// The daemon binary running against a site; stderr goes to a log file.
pub struct DaemonProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn start(site: &Site, rust_log: &str) -> DaemonProcess {
        DaemonProcess::start_with_env(site, rust_log, &[])
    }

    /// As [`DaemonProcess::start`], with more environment variables (e.g. systemd's).
    pub fn start_with_env(site: &Site, rust_log: &str, env: &[(&str, &str)]) -> DaemonProcess {
        let log = site
            .dir
            .path()
            .join(format!("daemon-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keypad-bridge"))
            .arg("--config")
            .arg(site.config_path())
            .arg("run")
            .env("RUST_LOG", rust_log)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        DaemonProcess {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.signal_and_wait(libc::SIGTERM)
    }

    pub fn signal_and_wait(&mut self, signal: i32) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the daemon did not stop within {WAIT:?}");
    }

    /// SIGKILL: a crash or power cut as far as the daemon is concerned.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` (the binary, or a wrapper such as `setpriv … binary`) with `--config config`,
/// `args` and `stdin`; returns (success, stdout, stderr).
pub fn run_cli(
    mut command: Command,
    config: &Path,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    let mut child = command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses at once may exit before it reads its input: a closed pipe then
    // is no failure of the test.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A broker, a site with a master "Alice" (code 1234), a probe on everything, a daemon that
/// is online.
/// Fields drop in order: the daemon and the probe go before the broker.
pub struct World {
    pub daemon: DaemonProcess,
    pub probe: Probe,
    pub site: Site,
    pub broker: Broker,
}

impl World {
    pub fn start(configure: impl FnOnce(&mut Site)) -> World {
        World::start_with(configure, true)
    }

    /// A world whose store has no master yet (the daemon creates the store).
    pub fn without_master(configure: impl FnOnce(&mut Site)) -> World {
        World::start_with(configure, false)
    }

    fn start_with(configure: impl FnOnce(&mut Site), master: bool) -> World {
        let broker = Broker::start();
        let mut site = Site::new(broker.port);
        configure(&mut site);
        if master {
            site.init("Alice", "1234");
        }
        let probe = Probe::connect(broker.port, &["#"]);
        let daemon = site.start();
        probe.wait_for(&site.topic("status"), |m| m.text() == "online");
        World {
            broker,
            site,
            probe,
            daemon,
        }
    }

    pub fn topic(&self, rest: &str) -> String {
        self.site.topic(rest)
    }

    /// Sends a config command and returns its result.
    pub fn command(&self, command: Value) -> Value {
        let id = command["id"].as_str().map(str::to_owned);
        self.probe.publish_json(&self.topic("config/set"), &command);
        self.probe
            .wait_for(&self.topic("config/result"), |m| {
                id.is_none() || m.json()["id"].as_str() == id.as_deref()
            })
            .json()
    }

    /// Restarts the daemon (SIGTERM, start, wait for `online`).
    pub fn restart(&mut self) {
        assert!(self.daemon.stop(), "the daemon did not exit cleanly");
        self.probe.drain();
        self.daemon = self.site.start();
        self.probe
            .wait_for(&self.topic("status"), |m| m.text() == "online");
    }

    /// Types a code on the json keypad and returns its reply.
    pub fn json_keypad(&self, payload: Value) -> Value {
        self.probe.publish_json(&self.site.json_topic(), &payload);
        self.probe.next(&self.topic("keypad/front/result")).json()
    }

    pub fn state(&self) -> String {
        self.probe.next(&self.topic("alarm/state")).text()
    }
}

impl World {
    /// Waits until the alarm state is `expected`.
    pub fn wait_state(&self, expected: &str) {
        self.probe
            .wait_for(&self.topic("alarm/state"), |m| m.text() == expected);
    }

    /// Waits for the next event of `event_type`.
    pub fn wait_event(&self, event_type: &str) -> Value {
        self.probe
            .wait_for(&self.topic("event"), |m| {
                m.json()["event_type"] == event_type
            })
            .json()
    }
}

/// The exact bytes of a fixture under `tests/fixtures/`.
pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

impl World {
    /// Adds a user through the config topic with the master's code; returns the roster entry.
    pub fn add_user(&self, name: &str, role: &str, code: &str) -> Value {
        let id = format!("add-{name}-{}", rand_suffix());
        let r = self.command(json!({"id": id, "auth": "1234", "command": "add_user",
                                    "name": name, "role": role, "code": code}));
        assert_eq!(r["ok"], true, "{r}");
        r["user"].clone()
    }

    /// Publishes a Zigbee2MQTT fixture on the hall keypad's topic.
    pub fn hall(&self, fixture_name: &str) {
        let payload = fixture(&format!("zigbee2mqtt/{fixture_name}.json"));
        self.probe.publish(&self.site.z2m_topic(), payload, false);
    }

    /// The next reply with a transaction on the hall keypad's `/set` topic.
    pub fn hall_reply(&self) -> Value {
        let topic = format!("{}/set", self.site.z2m_topic());
        self.probe
            .wait_for(&topic, |m| {
                m.json()["arm_mode"].get("transaction").is_some()
            })
            .json()
    }

    /// The next panel status (no transaction) on the hall keypad's `/set` topic.
    pub fn hall_status(&self) -> Value {
        let topic = format!("{}/set", self.site.z2m_topic());
        self.probe
            .wait_for(&topic, |m| {
                m.json()["arm_mode"].get("transaction").is_none()
            })
            .json()
    }
}

/// The daemon running inside the test process, so that a test can read the store's Argon2
/// counter ([`keypad_bridge::codes::LookupKeyer::computations`]).
pub struct InProcess {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    daemon: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Opens the site's store and runs the daemon on it; the keyer counts its Argon2 work.
    pub fn on_site(site: &Site) -> (InProcess, keypad_bridge::codes::LookupKeyer) {
        use keypad_bridge::store::{Create, Store};
        let config = keypad_bridge::config::load(&site.config_path()).unwrap();
        let store = Store::open(&config, Create::Refused).unwrap();
        let keyer = store.keyer().clone();
        (InProcess::start(site, store), keyer)
    }

    pub fn start(site: &Site, store: keypad_bridge::store::Store) -> InProcess {
        InProcess::start_with_clock(site, store, jiff::Timestamp::now)
    }

    /// As [`InProcess::start`], with the system's wall clock given: a test steps it.
    pub fn start_with_clock(
        site: &Site,
        store: keypad_bridge::store::Store,
        system: impl Fn() -> jiff::Timestamp + Send + Sync + 'static,
    ) -> InProcess {
        let config = keypad_bridge::config::load(&site.config_path()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let daemon = runtime.spawn(keypad_bridge::daemon::run_with_clock(
            config, store, shutdown, system,
        ));
        InProcess {
            runtime,
            stop,
            daemon,
        }
    }

    /// Stops it as SIGTERM would and checks that it ended cleanly.
    pub fn stop(self) {
        self.stop.send(()).unwrap();
        self.runtime.block_on(self.daemon).unwrap().unwrap();
    }
}

/// Whether `text` holds `number` as a number of its own, not inside a longer one: the log's
/// times have microseconds and the payloads' times fractions of a second, in which four or
/// five digits such as 1234 turn up by chance (a clean-clone CI run failed on it once).
pub fn holds_number(text: &str, number: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(number).any(|(i, _)| {
        let before = i > 0 && bytes[i - 1].is_ascii_digit();
        let after = bytes.get(i + number.len()).is_some_and(u8::is_ascii_digit);
        !before && !after
    })
}
