//! The benchmark of issue 11: what a keypad user feels, against the peers' design, in the
//! memory of a Raspberry Pi.
//!
//! ```sh
//! cargo run --release --example bench -- --quick --json bench-quick.json   # 1 and 300 users
//! cargo run --release --example bench -- --json bench.json                 # 1, 100, 10000 users
//! ```
//!
//! It builds the daemon first (`cargo build --release --bin keypad-bridge`, a no-op when it is
//! up to date) and runs that binary, `target/release/keypad-bridge`, next to this example's own.
//! It starts a real mosquitto (its own config: a free 127.0.0.1 port, `set_tcp_nodelay true`,
//! no persistence) and one daemon per store size, each in a temp dir, and stops every process
//! by its pid. The stores the entries are typed at are built offline through the library before
//! the daemon starts, so that every user has a code: the users whose codes are typed get real
//! lookup keys; the others get random 32-byte keys, which the `codes` tree cannot tell from
//! Argon2 outputs (over MQTT, codes are rationed: 30 per `lockout.window_s`). A last phase
//! builds a store of the largest size over MQTT, `add_user` after `add_user` (DESIGN 10e made
//! that linear). No code is ever printed.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use keypad_bridge::codes::{Code, LookupKey};
use keypad_bridge::store::{Change, Create, Store};
use keypad_bridge::users::{Role, User};
use rand::Rng;
use rumqttc::{Client, Event as MqttEvent, Incoming, MqttOptions, NetworkOptions, QoS};
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(20);

struct Plan {
    sizes: Vec<usize>,
    entries: usize,
    admin: usize,
    rtt: usize,
    scan_samples: [usize; 3],
    commit: usize,
}

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    let mut json_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = Some(PathBuf::from(args.next().context("--json FILE")?)),
            other => bail!("unknown argument {other:?}; use [--quick] [--json FILE]"),
        }
    }
    let plan = if quick {
        Plan {
            sizes: vec![1, 300],
            entries: 60,
            admin: 20,
            rtt: 200,
            scan_samples: [5, 3, 2],
            commit: 20,
        }
    } else {
        Plan {
            sizes: vec![1, 100, 10000],
            entries: 200,
            // Commands that give a code are rationed to 30 per `lockout.window_s`.
            admin: 30,
            rtt: 1000,
            scan_samples: [15, 7, 3],
            commit: 50,
        }
    };
    let daemon_bin = build_daemon()?;
    let broker = Broker::start()?;
    let probe = Probe::connect(broker.port)?;
    let mut out = Map::new();
    let mut table = Vec::new();

    // 1. Broker round trip.
    let rtt = broker_rtt(&probe, plan.rtt)?;
    table.push(format!(
        "broker_rtt_us          p50 {:>8}  p99 {:>8}",
        rtt.0, rtt.1
    ));
    out.insert("broker_rtt_us".into(), json!({"p50": rtt.0, "p99": rtt.1}));

    let root = tempfile::tempdir()?;
    let mut entry = Map::new();
    let mut breakdown = Map::new();
    let mut admin = Map::new();
    let mut rss = Map::new();
    // Every size's store and daemon first, then the entries and the admin commands taken
    // in turn, one size after the other: a virtual machine's speed drifts over minutes (one
    // Argon2id here took 32 ms in one minute and 41 in another), and the goals compare the
    // sizes with each other and with the Argon2 of the same minutes.
    let mut sites = Vec::new();
    for (run, &size) in plan.sizes.iter().enumerate() {
        let mut site = Site::build(root.path(), run, size, broker.port)?;
        let whole = site.whole_roster_cost(plan.commit)?;
        table.push(format!(
            "whole roster {size:>5}  {} bytes, read and serialised in {} us (off the loop, at most \
             every 2 s)",
            whole.bytes, whole.us
        ));
        site.write_config(&format!("kbb{run}"), 1_000_000, 10, 1)?;
        sites.push(site);
    }
    // 2. One lookup key with the store's parameters, in this (release) process, after every
    // second round of entries. Timed up to the key, as the daemon's own figure is: the wipe
    // of the working memory comes after (`LookupKeyer::key_then`).
    let mut argon2 = {
        let store = sites[0].open()?;
        let code = Code::parse(&sites[0].codes[0], 4, 12).map_err(|e| anyhow::anyhow!("{e}"))?;
        Argon2Probe {
            keyer: store.keyer().clone(),
            code,
            samples: Vec::new(),
        }
    };
    let mut daemons = Vec::new();
    let mut samplers = Vec::new();
    for (site, &size) in sites.iter().zip(&plan.sizes) {
        let daemon = Daemon::start(&daemon_bin, site, &probe)?;
        table.push(format!(
            "announce {size:>5}  whole roster after {} ms, every entry after {} ms",
            daemon.announced.0, daemon.announced.1
        ));
        samplers.push(Sampler::start(daemon.pid()));
        if daemons.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            rss.insert("idle".into(), json!(vm(daemon.pid(), "VmRSS:")));
        }
        daemons.push(daemon);
    }
    // 3. Keypad entries, half right, half wrong, one size after the other.
    let mut typed: Vec<Typed> = sites.iter().map(|_| Typed::default()).collect();
    let mut rng = rand::rng();
    for i in 0..plan.entries {
        for (site, typed) in sites.iter().zip(&mut typed) {
            entry_once(&probe, site, i, &mut rng, typed)?;
        }
        if i % 2 == 1 {
            argon2.sample();
        }
    }
    let argon2_us = percentile(&argon2.samples, 50);
    table.push(format!(
        "argon2_us          all  p50 {argon2_us:>8}  (between the entries)"
    ));
    for ((typed, daemon), &size) in typed.iter().zip(&mut daemons).zip(&plan.sizes) {
        let (p50, p99) = (percentile(&typed.all, 50), percentile(&typed.all, 99));
        table.push(format!(
            "entry_latency_us {size:>5}  p50 {p50:>8}  p99 {p99:>8}  (right {} wrong {})",
            percentile(&typed.right, 50),
            percentile(&typed.wrong, 50)
        ));
        entry.insert(size.to_string(), json!({"p50": p50, "p99": p99}));
        let limit = argon2_us + 5000 + rtt.0;
        table.push(format!(
            "close to the limit {size:>5}: p50 {p50} against Argon2 {argon2_us} + 5000 + RTT {} \
             = {limit}: {}",
            rtt.0,
            if p50 <= limit { "met" } else { "missed" }
        ));
        let parts = entry_breakdown(&daemon.timings(typed.all.len())?, typed)?;
        table.push(format!("entry_breakdown_us {size:>5}  {parts}"));
        breakdown.insert(size.to_string(), parts);
    }
    if let (Some(first), Some(last)) = (typed.first(), typed.last()) {
        let ratio = percentile(&last.all, 50) as f64 / percentile(&first.all, 50) as f64;
        table.push(format!(
            "flat: p50 at the largest store / at the smallest = {ratio:.2}"
        ));
    }
    // 6. Admin: add_user with a code, one size after the other.
    let mut adds: Vec<Vec<u64>> = sites.iter().map(|_| Vec::new()).collect();
    let mut admin_codes = std::collections::HashSet::new();
    for i in 0..plan.admin {
        for (site, adds) in sites.iter().zip(&mut adds) {
            adds.push(admin_once(&probe, site, i, &mut rng, &mut admin_codes)?);
        }
    }
    for (adds, &size) in adds.iter().zip(&plan.sizes) {
        let (p50, p99) = (percentile(adds, 50), percentile(adds, 99));
        table.push(format!(
            "admin_latency_us {size:>5}  p50 {p50:>8}  p99 {p99:>8}"
        ));
        admin.insert(size.to_string(), json!({"p50": p50, "p99": p99}));
    }
    // 5. The maximum while 1000 entries run (one user), and with the largest store.
    {
        let start_max = samplers[0].max();
        let mut typed = Typed::default();
        for i in 0..1000 {
            entry_once(&probe, &sites[0], i, &mut rng, &mut typed)?;
        }
        let pid = daemons[0].pid();
        let max = samplers[0].max().max(start_max).max(vm(pid, "VmHWM:"));
        rss.insert("max_1000_entries".into(), json!(max));
        table.push(format!(
            "rss during 1000 entries: max {max} KiB (entry p50 {} us)",
            percentile(&typed.all, 50)
        ));
    }
    let (sampler, daemon) = (
        samplers.last().context("no size")?,
        daemons.last().context("no size")?,
    );
    let max = sampler.max().max(vm(daemon.pid(), "VmHWM:"));
    rss.insert("max_largest_store".into(), json!(max));
    for (sampler, mut daemon) in samplers.into_iter().zip(daemons) {
        sampler.stop();
        daemon.stop()?;
    }
    let last_site = sites.pop();
    out.insert("argon2_us".into(), json!({"p50": argon2_us}));
    out.insert("entry_latency_us".into(), Value::Object(entry));
    out.insert("entry_breakdown_us".into(), Value::Object(breakdown));
    out.insert("admin_latency_us".into(), Value::Object(admin));

    // 7. The burst, on the largest store, with the default lockout.
    let mut site = last_site.context("no store size")?;
    site.write_config("kbburst", 4, 600, 10)?;
    let mut daemon = Daemon::start(&daemon_bin, &site, &probe)?;
    let sampler = Sampler::start(daemon.pid());
    let burst = burst(&probe, &site, &mut daemon, &sampler)?;
    sampler.stop();
    daemon.stop()?;
    table.push(format!("burst {burst}"));
    rss.insert("max_burst".into(), burst["max_rss_kib"].clone());

    // The largest store again, built over MQTT.
    let size = *plan.sizes.last().context("no store size")?;
    let (line, max_rss, restarted) =
        build_over_mqtt(&daemon_bin, &probe, root.path(), size, broker.port)?;
    table.push(line);
    rss.insert("max_build_over_mqtt".into(), json!(max_rss));
    rss.insert("max_restart_built_over_mqtt".into(), json!(restarted));
    out.insert("rss_kib".into(), Value::Object(rss.clone()));
    out.insert("burst".into(), burst);
    drop(probe);
    drop(broker);

    // 4. The peers' design: a wrong code against N PHC hashes in turn.
    let params = site.params;
    let mut scan = Map::new();
    for (n, samples) in [1usize, 10, 100].into_iter().zip(plan.scan_samples) {
        let p50 = peer_scan(params, n, samples)?;
        table.push(format!("peer_scan_latency_us {n:>3}  p50 {p50:>9}"));
        scan.insert(n.to_string(), json!({"p50": p50}));
    }
    out.insert("peer_scan_latency_us".into(), Value::Object(scan));
    table.push(format!("rss_kib {}", Value::Object(rss)));

    println!("\n{}", table.join("\n"));
    let out = Value::Object(out);
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nwritten to {}", path.display());
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// `cargo build --release --bin keypad-bridge`, then the binary beside this example's own.
fn build_daemon() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "keypad-bridge"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("cannot run cargo to build the daemon")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let exe = std::env::current_exe()?;
    // target/release/examples/bench -> target/release/keypad-bridge
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected example path")?
        .join("keypad-bridge");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

fn time_us(f: impl FnOnce()) -> u64 {
    let start = Instant::now();
    f();
    start.elapsed().as_micros() as u64
}

/// Nearest-rank percentile.
fn percentile(samples: &[u64], p: usize) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A mosquitto of our own, killed by its pid when dropped.
struct Broker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> anyhow::Result<Broker> {
        let dir = tempfile::tempdir()?;
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("mosquitto is not installed: sudo apt-get install -y mosquitto")?;
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                     persistence false\nlog_dest stderr\nlog_type error\n\
                     message_size_limit 0\n"
                ),
            )?;
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if child.try_wait()?.is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Broker {
                        port,
                        child,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("mosquitto did not start on a free port after 5 tries")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Msg {
    topic: String,
    payload: Vec<u8>,
    at: Instant,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// One MQTT client (nodelay) whose received messages arrive, timestamped, on a channel.
struct Probe {
    client: Client,
    rx: mpsc::Receiver<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn connect(port: u16) -> anyhow::Result<Probe> {
        let mut options =
            MqttOptions::new(format!("bench-{}", std::process::id()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        // The whole roster of 10000 users is about 3 MB.
        options.set_max_packet_size(16 * 1024 * 1024, 1024 * 1024);
        let (client, mut connection) = Client::new(options, 2000);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for event in connection.iter() {
                let msg = match event {
                    Ok(MqttEvent::Incoming(Incoming::Publish(p))) => Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        at: Instant::now(),
                    },
                    Ok(MqttEvent::Incoming(Incoming::SubAck(_))) => Msg {
                        topic: "$suback".into(),
                        payload: Vec::new(),
                        at: Instant::now(),
                    },
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        Ok(Probe {
            client,
            rx,
            thread: Some(thread),
        })
    }

    fn subscribe(&self, filters: &[String]) -> anyhow::Result<()> {
        for f in filters {
            self.client.subscribe(f.as_str(), QoS::AtLeastOnce)?;
        }
        let mut acks = 0;
        while acks < filters.len() {
            self.wait(|m| m.topic == "$suback", WAIT)
                .context("no SUBACK from the broker")?;
            acks += 1;
        }
        Ok(())
    }

    fn unsubscribe(&self, filter: &str) -> anyhow::Result<()> {
        self.client.unsubscribe(filter)?;
        Ok(())
    }

    fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())?;
        Ok(())
    }

    /// The next message `pred` accepts within `timeout`; others are dropped.
    fn wait(&self, pred: impl Fn(&Msg) -> bool, timeout: Duration) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(msg) if pred(&msg) => return Some(msg),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn broker_rtt(probe: &Probe, n: usize) -> anyhow::Result<(u64, u64)> {
    let topic = format!("bench-{}/rtt", std::process::id());
    probe.subscribe(std::slice::from_ref(&topic))?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("ping {i}");
        let start = Instant::now();
        probe.publish(&topic, body.clone())?;
        let msg = probe
            .wait(|m| m.topic == topic && m.payload == body.as_bytes(), WAIT)
            .context("a ping did not come back")?;
        samples.push(msg.at.duration_since(start).as_micros() as u64);
    }
    Ok((percentile(&samples, 50), percentile(&samples, 99)))
}

/// A store of `size` users in its own dir, and the codes the benchmark types (never printed).
struct Site {
    dir: PathBuf,
    port: u16,
    base: String,
    params: keypad_bridge::codes::Argon2Params,
    /// Real codes: the master's first, then a few users'.
    codes: Vec<String>,
    used: std::collections::HashSet<String>,
    /// `admin.trust_broker` in the config written next.
    trust_broker: bool,
}

fn random_code(rng: &mut impl Rng) -> String {
    format!("{:06}", rng.random_range(0..1_000_000u32))
}

impl Site {
    fn build(root: &Path, run: usize, size: usize, port: u16) -> anyhow::Result<Site> {
        let dir = root.join(format!("site{run}"));
        std::fs::create_dir_all(&dir)?;
        let mut site = Site {
            dir,
            port,
            base: String::new(),
            params: keypad_bridge::codes::Argon2Params {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1,
            },
            codes: Vec::new(),
            used: Default::default(),
            trust_broker: false,
        };
        site.write_config("kbbuild", 1_000_000, 10, 1)?;
        let config = keypad_bridge::config::load(&site.dir.join("config.yaml"))?;
        let store = Store::open(&config, Create::Allowed)?;
        let mut rng = rand::rng();
        let now = jiff::Timestamp::now();
        let real = size.min(10);
        let mut change = Change::default();
        let started = Instant::now();
        for i in 0..size {
            let role = if i == 0 { Role::Master } else { Role::User };
            let mut user = User::new(store.new_user_id()?, format!("user{i:05}"), role, now);
            let key = if i < real {
                let code = loop {
                    let c = random_code(&mut rng);
                    if site.used.insert(c.clone()) {
                        break c;
                    }
                };
                let parsed = Code::parse(&code, 4, 6).map_err(|e| anyhow::anyhow!("{e}"))?;
                site.codes.push(code);
                store.keyer().key(&parsed)
            } else {
                LookupKey(rng.random())
            };
            user.code_key = Some(key.to_hex());
            change.put_codes.push((key, user.id.clone()));
            change.put_users.push(user);
            if change.put_users.len() == 1000 {
                store.commit(std::mem::take(&mut change))?;
            }
        }
        if !change.put_users.is_empty() {
            store.commit(change)?;
        }
        println!(
            "store of {size} users built offline in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(site)
    }

    fn open(&self) -> anyhow::Result<Store> {
        let config = keypad_bridge::config::load(&self.dir.join("config.yaml"))?;
        Ok(Store::open(&config, Create::Refused)?)
    }

    /// The id of the user whose entry the daemon publishes last on connecting.
    fn newest_user(&self) -> anyhow::Result<String> {
        let store = self.open()?;
        let users = store.users()?;
        Ok(users.last().context("no user")?.id.clone())
    }

    /// The daemon's config: `keypads` json keypads kp0.., the given lockout, no delays.
    fn write_config(
        &mut self,
        base: &str,
        max_failures: u32,
        window_s: u64,
        keypads: usize,
    ) -> anyhow::Result<()> {
        self.base = base.to_owned();
        let keypads: Vec<Value> = (0..keypads)
            .map(|k| json!({"name": format!("kp{k}"), "protocol": "json", "topic": format!("{base}-kp/kp{k}")}))
            .collect();
        let config = json!({
            "mqtt": {"host": "127.0.0.1", "port": self.port, "client_id": format!("{base}-daemon"),
                     "base_topic": base},
            "store": {"path": self.dir.join("db"), "secret_file": self.dir.join("secret")},
            "codes": {"argon2": {"memory_kib": self.params.memory_kib,
                                 "iterations": self.params.iterations,
                                 "parallelism": self.params.parallelism}},
            "lockout": {"max_failures": max_failures, "window_s": window_s},
            "admin": {"trust_broker": self.trust_broker},
            "alarm": {"exit_delay_s": {"armed_away": 0, "armed_home": 0, "armed_night": 0,
                                       "armed_vacation": 0}, "entry_delay_s": 0},
            "homeassistant": {"discovery": false},
            "timezone": "UTC",
            "keypads": keypads,
            "log": {"level": "info"},
        });
        // JSON is YAML.
        std::fs::write(self.dir.join("config.yaml"), config.to_string())?;
        Ok(())
    }

    fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.base)
    }

    fn keypad_topic(&self, k: usize) -> String {
        format!("{}-kp/kp{k}", self.base)
    }

    fn wrong_code(&self, rng: &mut impl Rng) -> String {
        loop {
            let c = random_code(rng);
            if !self.used.contains(&c) {
                return c;
            }
        }
    }

    /// The whole roster read and serialised as the daemon does it (one user at a time, off
    /// the loop, at most every 2 s), measured through the library before the daemon starts.
    fn whole_roster_cost(&self, n: usize) -> anyhow::Result<WholeRoster> {
        let store = self.open()?;
        let topics = keypad_bridge::topics::Topics::new(&keypad_bridge::config::load(
            &self.dir.join("config.yaml"),
        )?);
        let size = store.census()?.0;
        let mut bytes = 0;
        let samples: Vec<u64> = (0..n)
            .map(|_| {
                time_us(|| {
                    let mut roster = keypad_bridge::roster::Whole::new(size);
                    store
                        .each_user(|u| {
                            roster.push(&keypad_bridge::roster::entry(&topics, u).payload)
                        })
                        .expect("users");
                    bytes = roster.finish().len();
                })
            })
            .collect();
        Ok(WholeRoster {
            us: percentile(&samples, 50),
            bytes,
        })
    }
}

struct WholeRoster {
    us: u64,
    bytes: usize,
}

/// One lookup key computed in this process, timed up to the key (the wipe of the working
/// memory comes after it, as in the daemon).
struct Argon2Probe {
    keyer: keypad_bridge::codes::LookupKeyer,
    code: Code,
    samples: Vec<u64>,
}

impl Argon2Probe {
    fn sample(&mut self) {
        let start = Instant::now();
        let us = self
            .keyer
            .key_then(&self.code, |key| {
                std::hint::black_box(key);
                start.elapsed()
            })
            .as_micros() as u64;
        self.samples.push(us);
    }
}

/// What the daemon says about one keypad entry on `keypad_bridge::timing` (µs): durations
/// only.
#[derive(Clone, Copy, Default)]
struct Timing {
    queued: u64,
    argon2: u64,
    lookup: u64,
    commit: u64,
    state_file: u64,
    reply: u64,
}

impl Timing {
    fn parse(line: &str) -> Option<Timing> {
        let field = |name: &str| -> Option<u64> {
            let at = line.find(&format!(" {name}="))? + name.len() + 2;
            line[at..].split(' ').next()?.parse().ok()
        };
        Some(Timing {
            queued: field("queued_us")?,
            argon2: field("argon2_us")?,
            lookup: field("lookup_us")?,
            commit: field("commit_us")?,
            state_file: field("state_file_us")?,
            reply: field("reply_us")?,
        })
    }
}

/// Where an entry's time goes, right and wrong codes apart (p50s of each part, entry by
/// entry, so the parts need not add up to the total's p50), as the daemon timed it:
/// `argon2`; `commit_fsync`, the store commit with its fsyncs and, for a right code, the
/// alarm-state file replaced (`state_file`); and `rest`, the whole minus those two:
/// `lookup` (the key in the store), `loop` (the daemon's queues, parsing, deciding, handing the
/// reply to its MQTT client) and `mqtt` (both ways through the broker: the benchmark's time
/// minus the daemon's).
fn entry_breakdown(timings: &[Timing], typed: &Typed) -> anyhow::Result<Value> {
    if timings.len() != typed.all.len() {
        bail!(
            "the daemon timed {} entries, {} were typed",
            timings.len(),
            typed.all.len()
        );
    }
    let part = |good: bool, f: &dyn Fn(&Timing, u64) -> i64| {
        let mut xs: Vec<i64> = timings
            .iter()
            .zip(&typed.all)
            .zip(&typed.good)
            .filter(|(_, &g)| g == good)
            .map(|((t, &total), _)| f(t, total))
            .collect();
        xs.sort_unstable();
        xs.get(xs.len() / 2).copied().unwrap_or(0)
    };
    let kind = |good: bool| {
        let store = |t: &Timing| (t.commit + t.state_file) as i64;
        let loop_ = |t: &Timing| t.reply as i64 - t.argon2 as i64 - t.lookup as i64 - store(t);
        let mut parts = json!({
            "total": part(good, &|_, total| total as i64),
            "argon2": part(good, &|t, _| t.argon2 as i64),
            "commit_fsync": part(good, &|t, _| store(t)),
            "rest": part(good, &|t, total| total as i64 - t.argon2 as i64 - store(t)),
            "lookup": part(good, &|t, _| t.lookup as i64),
            "loop": part(good, &|t, _| loop_(t)),
            "queued": part(good, &|t, _| t.queued as i64),
            "mqtt": part(good, &|t, total| total as i64 - t.reply as i64),
        });
        if good {
            parts["state_file"] = json!(part(good, &|t, _| t.state_file as i64));
        }
        parts
    };
    Ok(json!({"right": kind(true), "wrong": kind(false)}))
}

/// The release daemon on a site; SIGTERM then SIGKILL by pid.
struct Daemon {
    child: Option<Child>,
    /// Its stderr, with the `keypad_bridge::timing` lines.
    log: PathBuf,
    /// How many of those lines [`Daemon::timings`] has returned.
    timed: usize,
    /// Milliseconds after `online` until the whole roster, and until the last user's entry,
    /// arrived: what the daemon publishes on connecting.
    announced: (u64, u64),
}

impl Daemon {
    /// Starts the daemon and waits until it has published every roster entry.
    fn start(bin: &Path, site: &Site, probe: &Probe) -> anyhow::Result<Daemon> {
        let newest = site.topic(&format!("config/users/{}", site.newest_user()?));
        let whole = site.topic("config/users");
        probe.subscribe(&[
            site.topic("status"),
            site.topic("keypad/+/result"),
            site.topic("config/result"),
            site.topic("event"),
            whole.clone(),
            newest.clone(),
        ])?;
        let log_path = site.dir.join(format!("{}.log", site.base));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(site.dir.join("config.yaml"))
            .arg("run")
            // Where each entry's time goes, from the daemon itself.
            .env("RUST_LOG", "info,keypad_bridge::timing=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut daemon = Daemon {
            child: Some(child),
            log: log_path,
            timed: 0,
            announced: (0, 0),
        };
        let status = site.topic("status");
        let (mut online, mut got_whole, mut got_newest) = (None, None, None);
        while online.is_none() || got_whole.is_none() || got_newest.is_none() {
            let msg = probe
                .wait(
                    |m| m.topic == status || m.topic == whole || m.topic == newest,
                    WAIT,
                )
                .context(
                    "the daemon did not come online and publish the roster (see its log in the \
                     site dir)",
                )?;
            if msg.topic == status {
                if msg.payload == b"online" {
                    online.get_or_insert(msg.at);
                }
            } else if msg.topic == whole {
                got_whole.get_or_insert(msg.at);
            } else {
                got_newest.get_or_insert(msg.at);
            }
        }
        let since = |at: Option<Instant>| {
            at.zip(online).map_or(0, |(at, online)| {
                at.saturating_duration_since(online).as_millis() as u64
            })
        };
        daemon.announced = (since(got_whole), since(got_newest));
        probe.unsubscribe(&whole)?;
        probe.unsubscribe(&newest)?;
        probe.drain();
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The entries the daemon timed that were not returned yet, as its log has them now.
    fn untaken(&self) -> anyhow::Result<Vec<Timing>> {
        let log = std::fs::read_to_string(&self.log)?;
        Ok(log
            .lines()
            .filter(|l| l.contains("keypad_bridge::timing"))
            .skip(self.timed)
            .filter_map(Timing::parse)
            .collect())
    }

    /// Every entry the daemon timed since the last call (each timed entry cost one Argon2).
    fn timed_since(&mut self) -> anyhow::Result<Vec<Timing>> {
        let timings = self.untaken()?;
        self.timed += timings.len();
        Ok(timings)
    }

    /// The next `n` entries the daemon timed (it logs each once its reply is handed to its
    /// MQTT client, so the last line may come a moment after the reply).
    fn timings(&mut self, n: usize) -> anyhow::Result<Vec<Timing>> {
        let start = Instant::now();
        loop {
            let mut timings = self.untaken()?;
            if timings.len() >= n || start.elapsed() > Duration::from_secs(2) {
                timings.truncate(n);
                self.timed += timings.len();
                return Ok(timings);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the daemon did not stop on SIGTERM within {WAIT:?}")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A field of /proc/PID/status in KiB (VmRSS:, VmHWM:); 0 if gone.
fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Samples a process's VmRSS every 20 ms.
struct Sampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(vm(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Entries typed, in order: latencies in µs, and whether each was a right code.
#[derive(Default)]
struct Typed {
    all: Vec<u64>,
    right: Vec<u64>,
    wrong: Vec<u64>,
    good: Vec<bool>,
}

/// Entry `i` on the site's keypad kp0: a right code when `i` is even, else a wrong one.
fn entry_once(
    probe: &Probe,
    site: &Site,
    i: usize,
    rng: &mut impl Rng,
    typed: &mut Typed,
) -> anyhow::Result<()> {
    let reply = site.topic("keypad/kp0/result");
    let good = i.is_multiple_of(2);
    let code = if good {
        site.codes[(i / 2) % site.codes.len()].clone()
    } else {
        site.wrong_code(rng)
    };
    let payload = json!({"code": code}).to_string();
    let start = Instant::now();
    probe.publish(&site.keypad_topic(0), payload)?;
    let msg = probe
        .wait(|m| m.topic == reply, WAIT)
        .context("no reply from the keypad")?;
    let us = msg.at.duration_since(start).as_micros() as u64;
    let result = msg.json()["result"].as_str().unwrap_or("").to_owned();
    let expected = if good { "accepted" } else { "invalid_code" };
    if result != expected {
        bail!(
            "{} entry {i}: expected {expected}, got {result:?}",
            site.base
        );
    }
    typed.all.push(us);
    typed.good.push(good);
    if good {
        &mut typed.right
    } else {
        &mut typed.wrong
    }
    .push(us);
    Ok(())
}

/// One add_user with a new code (`codes`: those given so far) on the site; its latency in µs.
fn admin_once(
    probe: &Probe,
    site: &Site,
    i: usize,
    rng: &mut impl Rng,
    codes: &mut std::collections::HashSet<String>,
) -> anyhow::Result<u64> {
    let result_topic = site.topic("config/result");
    let code = loop {
        let c = site.wrong_code(rng);
        if codes.insert(c.clone()) {
            break c;
        }
    };
    let id = format!("{}-add-{i}", site.base);
    let command = json!({"id": id, "auth": site.codes[0], "command": "add_user",
                         "name": format!("{}-added-{i}", site.base), "code": code});
    let start = Instant::now();
    probe.publish(&site.topic("config/set"), command.to_string())?;
    let msg = probe
        .wait(
            |m| m.topic == result_topic && m.json()["id"] == id.as_str(),
            WAIT,
        )
        .context("no result for add_user")?;
    if msg.json()["ok"] != true {
        bail!("add_user failed: {}", msg.json()["error"]);
    }
    Ok(msg.at.duration_since(start).as_micros() as u64)
}

/// 10 keypads × 100 entries as fast as possible, right and wrong mixed, an add_user every
/// 100 entries; the default lockout.
fn burst(
    probe: &Probe,
    site: &Site,
    daemon: &mut Daemon,
    sampler: &Sampler,
) -> anyhow::Result<Value> {
    let pid = daemon.pid();
    daemon.timed_since()?;
    let mut rng = rand::rng();
    let cpu_before = cpu_s(pid);
    let mut sent = 0;
    let mut admin_sent = 0;
    let mut taken = site.used.clone();
    for i in 0..100 {
        for k in 0..10 {
            let code = if (i + k) % 3 == 0 {
                site.codes[(i + k) % site.codes.len()].clone()
            } else {
                site.wrong_code(&mut rng)
            };
            probe.publish(&site.keypad_topic(k), json!({"code": code}).to_string())?;
            sent += 1;
        }
        if i % 10 == 0 {
            let code = loop {
                let c = random_code(&mut rng);
                if taken.insert(c.clone()) {
                    break c;
                }
            };
            let command = json!({"id": format!("burst-{i}"), "auth": site.codes[0],
                                 "command": "add_user", "name": format!("burst-{i}"),
                                 "code": code});
            probe.publish(&site.topic("config/set"), command.to_string())?;
            admin_sent += 1;
        }
    }
    let mut per_keypad = [0usize; 10];
    let (mut answered, mut hashed, mut lockouts, mut admin_results) = (0, 0, 0, 0);
    let event = site.topic("event");
    let result = site.topic("config/result");
    let quiet = Duration::from_secs(5);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(msg) = probe.wait(|_| true, quiet) else {
            break;
        };
        if msg.topic == event {
            if msg.json()["event_type"] == "lockout" {
                lockouts += 1;
            }
        } else if msg.topic == result {
            admin_results += 1;
        } else if let Some(k) =
            (0..10).find(|&k| msg.topic == site.topic(&format!("keypad/kp{k}/result")))
        {
            per_keypad[k] += 1;
            answered += 1;
            if msg.json()["result"] != "locked_out" {
                hashed += 1;
            }
        }
    }
    let cpu = cpu_s(pid) - cpu_before;
    let max_rss = sampler.max().max(vm(pid, "VmHWM:"));
    let exact = per_keypad.iter().all(|&n| n == 100);
    // The daemon timed each keypad entry it checked (one Argon2 each); each add_user costs
    // two (its `auth` and the new code).
    let keypad_keys = daemon.timed_since()?.len();
    let computations = keypad_keys + 2 * admin_results;
    println!(
        "burst: replies per keypad {per_keypad:?} (exactly 100 each: {exact}), \
         add_user {admin_results}/{admin_sent} answered, {keypad_keys} keypad codes checked \
         ({hashed} answers other than locked_out)"
    );
    Ok(json!({
        "sent": sent,
        "answered": answered,
        "lockouts": lockouts,
        "argon2_computations": computations,
        "cpu_s": (cpu * 100.0).round() / 100.0,
        "max_rss_kib": max_rss,
    }))
}

/// A store of `size` users built over MQTT: the master offline (the first code is the seed),
/// then `size - 1` `add_user` commands without codes (codes are rationed), with
/// `admin.trust_broker` (no `auth` to hash) and up to 16 in flight (the daemon's queue for
/// `B/config/set` holds 64 messages). Then the daemon is restarted on that store, with every
/// entry retained on the broker, and left 3 s after it published them all again. Returns a
/// line for the table and the daemon's peak RSS in KiB while building and after the restart.
fn build_over_mqtt(
    bin: &Path,
    probe: &Probe,
    root: &Path,
    size: usize,
    port: u16,
) -> anyhow::Result<(String, u64, u64)> {
    let mut site = Site::build(root, 99, 1, port)?;
    site.trust_broker = true;
    site.write_config("kbbmqtt", 4, 600, 1)?;
    let mut daemon = Daemon::start(bin, &site, probe)?;
    let sampler = Sampler::start(daemon.pid());
    let result = site.topic("config/result");
    let to_add = size.saturating_sub(1);
    let chunk = (to_add / 10).max(1);
    let start = Instant::now();
    let (mut sent, mut done) = (0, 0);
    let mut marks = vec![Duration::ZERO];
    while done < to_add {
        while sent < to_add && sent - done < 16 {
            let command = json!({"id": format!("mqtt-{sent}"), "command": "add_user",
                                 "name": format!("member{sent:05}")});
            probe.publish(&site.topic("config/set"), command.to_string())?;
            sent += 1;
        }
        let msg = probe.wait(|m| m.topic == result, WAIT).with_context(|| {
            format!("no result for an add_user over MQTT ({done} of {to_add} answered)")
        })?;
        if msg.json()["ok"] != true {
            bail!("add_user failed: {}", msg.json()["error"]);
        }
        done += 1;
        if done % chunk == 0 {
            marks.push(start.elapsed());
            println!(
                "  {done} of {to_add} added over MQTT after {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let total = start.elapsed();
    let max_rss = sampler.max().max(vm(daemon.pid(), "VmHWM:"));
    sampler.stop();
    daemon.stop()?;
    let mut daemon = Daemon::start(bin, &site, probe)?;
    std::thread::sleep(Duration::from_secs(3));
    // VmHWM: the peak since the process started, its connection included.
    let restarted = vm(daemon.pid(), "VmHWM:");
    daemon.stop()?;
    let per_add = |i: usize| (marks[i] - marks[i - 1]).as_secs_f64() * 1000.0 / chunk as f64;
    let line = if marks.len() > 2 {
        format!(
            "built {size} users over MQTT in {:.1} s: {:.2} ms an add_user for the first {chunk}, \
             {:.2} ms for the last {chunk} (no codes, trust_broker, 16 in flight); max RSS {max_rss} KiB",
            total.as_secs_f64(),
            per_add(1),
            per_add(marks.len() - 1),
        )
    } else {
        format!(
            "built {size} users over MQTT in {:.1} s",
            total.as_secs_f64()
        )
    };
    let line = format!("{line}; restarted on it: max RSS {restarted} KiB");
    println!("{line}");
    Ok((line, max_rss, restarted))
}

/// The peers' design: a wrong code verified against `n` per-user Argon2id PHC hashes in turn
/// (a fresh working memory each time, as `verify_password` does); p50 in µs.
fn peer_scan(
    params: keypad_bridge::codes::Argon2Params,
    n: usize,
    samples: usize,
) -> anyhow::Result<u64> {
    let p = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut rng = rand::rng();
    let hashes: Vec<String> = (0..n)
        .map(|_| {
            let salt: [u8; 16] = rng.random();
            hasher
                .hash_password_with_salt(random_code(&mut rng).as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::new();
    for _ in 0..samples {
        let wrong = b"99999999"; // 8 digits: no stored code has 8
        out.push(time_us(|| {
            let matched = hashes
                .iter()
                .filter(|h| hasher.verify_password(wrong, h.as_str()).is_ok())
                .count();
            assert_eq!(matched, 0);
        }));
        let _ = std::io::stdout().flush();
    }
    Ok(percentile(&out, 50))
}
