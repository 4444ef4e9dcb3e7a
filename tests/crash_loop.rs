//! Crash loop (issue 8, item 13): the daemon is killed with SIGKILL at random moments while
//! code-management commands and keypad entries stream in, and after each restart every
//! acknowledged change must be there (DESIGN 2b, 6) and the alarm must be in the last
//! acknowledged state (DESIGN 5).
//!
//! "Acknowledged" is what the probe saw before the daemon's last will (`offline`) came: the broker
//! sends the will after everything the dead connection had delivered, so nothing acknowledged is
//! still on its way. An `ok` result on `B/config/result`, a reply on the json keypad's result
//! topic. A change that was sent but not acknowledged may or may not be there, but not half of it:
//! a command re-sent with its id after the restart is replayed exactly when its change is visible,
//! and a keypad entry took effect exactly when its use was counted (an entry kept in part does not
//! stop the loop: each one is printed when found, and the test fails at the end with all of them).
//! Wrong codes are part of the stream, so the lockout is raised out of reach.
//!
//! The RNG seed is printed, and `CRASH_LOOP_SEED` replays it; the kill moments also depend on
//! timing, so a seed reproduces the stream, not always the same crash.

mod common;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MASTER_CODE: &str = "1234";
/// Commands sent and not yet answered, at most.
const MAX_IN_FLIGHT: usize = 4;
/// Users alive at once (the master aside), at most: `list_users` after every restart stays small.
const MAX_LIVE: usize = 12;
/// Deletions only above this many live users.
const MIN_LIVE_TO_DELETE: usize = 6;
const MAX_KILL_DELAY_MS: u64 = 300;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Add,
    SetCode(String),
    Deactivate,
    Reactivate,
    Delete,
}

impl Op {
    fn command(&self) -> &'static str {
        match self {
            Op::Add => "add_user",
            Op::SetCode(_) => "set_code",
            Op::Deactivate => "deactivate_user",
            Op::Reactivate => "reactivate_user",
            Op::Delete => "delete_user",
        }
    }
}

/// A command sent on `B/config/set`.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    person: usize,
    op: Op,
    payload: Value,
}

/// A code typed on the json keypad; `expect` is the new state when it must be accepted, `None`
/// when it must be refused.
#[derive(Clone, Debug)]
struct Entry {
    person: usize,
    code: String,
    action: &'static str,
    expect: Option<&'static str>,
}

/// What the test knows for sure (acknowledged) about one person; index 0 is the master.
#[derive(Debug)]
struct Person {
    name: String,
    /// Known once `add_user` is acknowledged.
    id: Option<String>,
    code: String,
    /// Codes replaced by an acknowledged `set_code`.
    retired: Vec<String>,
    active: bool,
    deleted: bool,
    uses: u64,
    /// A command or a keypad entry about this person is unanswered.
    busy: bool,
}

#[derive(Debug, Default)]
struct Figures {
    acked_commands: u64,
    acked_entries: u64,
    resent: u64,
    resent_replayed: u64,
    unacked_entries: u64,
    unacked_entries_applied: u64,
    roster_checks: u64,
    code_checks: u64,
}

/// Fields drop in order: the daemon and the probe go before the broker.
struct Run {
    daemon: DaemonProcess,
    previous_log: Option<std::path::PathBuf>,
    probe: Probe,
    site: Site,
    _broker: Broker,
    seed: u64,
    rng: StdRng,
    people: Vec<Person>,
    /// The last acknowledged alarm state.
    state: String,
    in_flight: Vec<Sent>,
    entry: Option<Entry>,
    dirty: BTreeSet<usize>,
    next_code: u32,
    next_id: u64,
    kills: usize,
    figures: Figures,
    /// Unanswered changes that were applied in part (reported at the end).
    half_kept: Vec<String>,
    /// What the test did and saw, for the failure message.
    history: Vec<String>,
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Run {
    fn start(seed: u64) -> Run {
        let broker = Broker::start();
        let mut site = Site::new(broker.port);
        // Refused codes are part of the stream: they must never lock the keypad here.
        site.set("lockout.max_failures", json!(1_000_000));
        site.set("lockout.window_s", json!(60));
        site.init("Alice", MASTER_CODE);
        let topics: Vec<String> = [
            "status",
            "config/result",
            "keypad/front/result",
            "alarm/state",
        ]
        .iter()
        .map(|t| site.topic(t))
        .collect();
        let filters: Vec<&str> = topics.iter().map(String::as_str).collect();
        let probe = Probe::connect(broker.port, &filters);
        let daemon = DaemonProcess::start(&site, "info");
        let mut run = Run {
            daemon,
            previous_log: None,
            probe,
            site,
            _broker: broker,
            seed,
            rng: StdRng::seed_from_u64(seed),
            people: vec![Person {
                name: "Alice".into(),
                id: None,
                code: MASTER_CODE.into(),
                retired: Vec::new(),
                active: true,
                deleted: false,
                uses: 0,
                busy: false,
            }],
            state: "disarmed".into(),
            in_flight: Vec::new(),
            entry: None,
            dirty: BTreeSet::new(),
            next_code: 0,
            next_id: 0,
            kills: 0,
            figures: Figures::default(),
            history: Vec::new(),
            half_kept: Vec::new(),
        };
        let first = run.wait_online();
        if first != "disarmed" {
            run.fail(format!("a new store starts {first}, not disarmed"));
        }
        let roster = run.roster();
        match roster.as_slice() {
            [alice] if alice["name"] == "Alice" && alice["role"] == "master" => {
                run.people[0].id = alice["id"].as_str().map(str::to_owned);
            }
            _ => run.fail(format!("a new store holds only the master: {roster:?}")),
        }
        run
    }

    fn fail(&self, what: impl Display) -> ! {
        let previous = self
            .previous_log
            .as_ref()
            .map(|p| tail(p, 30))
            .unwrap_or_default();
        let history = &self.history[self.history.len().saturating_sub(60)..];
        panic!(
            "crash loop failed after {} kills (seed {}; rerun with CRASH_LOOP_SEED={}): {what}\n\
             --- what the test did and saw, last lines ---\n{}\n\
             --- the killed daemon's log, last lines ---\n{previous}\n\
             --- the current daemon's log, last lines ---\n{}",
            self.kills,
            self.seed,
            self.seed,
            history.join("\n"),
            tail(&self.daemon.log, 30)
        );
    }

    fn topic(&self, rest: &str) -> String {
        self.site.topic(rest)
    }

    fn fresh_code(&mut self) -> String {
        self.next_code += 1;
        // Six digits, never reused, never the master's.
        format!("{}", 300_000 + self.next_code)
    }

    fn fresh_id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}-{}", self.next_id)
    }

    /// Waits for `online`, then returns the state the daemon announces (it follows `online`).
    fn wait_online(&mut self) -> String {
        let status = self.topic("status");
        let start = Instant::now();
        loop {
            if let Some(exit) = self.daemon.exited() {
                self.fail(format!("the daemon did not come back up ({exit})"));
            }
            let online = self
                .probe
                .try_wait_for(&status, Duration::from_millis(50), |m| m.text() == "online");
            if online.is_some() {
                break;
            }
            if start.elapsed() > WAIT {
                self.fail(format!("the daemon was not online within {WAIT:?}"));
            }
        }
        let state = self.topic("alarm/state");
        match self.probe.try_wait_for(&state, WAIT, |_| true) {
            Some(m) => m.text(),
            None => self.fail("no alarm state after `online`"),
        }
    }

    /// Sends a command and waits for its result (nothing else may be in flight).
    fn command_now(&mut self, payload: &Value) -> Value {
        let id = payload["id"].as_str().unwrap().to_owned();
        self.probe.publish_json(&self.topic("config/set"), payload);
        let topic = self.topic("config/result");
        match self
            .probe
            .try_wait_for(&topic, WAIT, |m| m.json()["id"] == id)
        {
            Some(m) => m.json(),
            None => self.fail(format!("no result for {id} within {WAIT:?}")),
        }
    }

    fn roster(&mut self) -> Vec<Value> {
        let id = self.fresh_id("list");
        let payload = json!({"id": id, "auth": MASTER_CODE, "command": "list_users"});
        let result = self.command_now(&payload);
        match result["users"].as_array() {
            Some(users) if result["ok"] == true => users.clone(),
            _ => self.fail(format!("list_users failed: {result}")),
        }
    }

    fn entry_for(&self, person: usize, code: String, valid: bool) -> Entry {
        let disarmed = self.state == "disarmed";
        Entry {
            person,
            code,
            action: if disarmed { "arm_away" } else { "disarm" },
            expect: valid.then_some(if disarmed { "armed_away" } else { "disarmed" }),
        }
    }

    fn send_entry(&mut self, entry: Entry) {
        let payload = json!({"code": entry.code, "action": entry.action});
        self.probe.publish_json(&self.site.json_topic(), &payload);
        let name = &self.people[entry.person].name;
        self.history.push(format!(
            "typed {payload} ({name}, expecting {:?})",
            entry.expect
        ));
        if entry.person != 0 {
            self.people[entry.person].busy = true;
        }
        self.entry = Some(entry);
    }

    fn on_reply(&mut self, reply: Value) {
        let Some(entry) = self.entry.take() else {
            self.fail(format!("a keypad reply nobody asked for: {reply}"));
        };
        let expected = match entry.expect {
            Some(state) => json!({"result": "accepted", "state": state}),
            None => json!({"result": "invalid_code", "state": self.state}),
        };
        if reply != expected {
            self.fail(format!(
                "{} typed by {} ({:?}): expected {expected}, got {reply}",
                entry.action, self.people[entry.person].name, entry
            ));
        }
        self.history.push(format!("keypad reply {reply}"));
        if let Some(state) = entry.expect {
            self.state = state.to_owned();
            self.people[entry.person].uses += 1;
        }
        self.people[entry.person].busy = false;
        self.figures.acked_entries += 1;
    }

    /// Types a code and waits for the reply.
    fn type_now(&mut self, person: usize, code: String, valid: bool) {
        let entry = self.entry_for(person, code, valid);
        self.send_entry(entry);
        let topic = self.topic("keypad/front/result");
        match self.probe.try_wait_for(&topic, WAIT, |_| true) {
            Some(m) => self.on_reply(m.json()),
            None => self.fail(format!("no keypad reply within {WAIT:?}")),
        }
        self.figures.code_checks += 1;
    }

    fn send_command(&mut self, person: usize, op: Op) {
        let id = self.fresh_id("cmd");
        let mut payload = json!({"id": id, "auth": MASTER_CODE, "command": op.command()});
        let p = &self.people[person];
        match &op {
            Op::Add => {
                payload["name"] = json!(p.name);
                payload["code"] = json!(p.code);
            }
            Op::SetCode(code) => {
                payload["user"] = json!(p.id);
                payload["code"] = json!(code);
            }
            Op::Deactivate | Op::Reactivate | Op::Delete => payload["user"] = json!(p.id),
        }
        self.probe.publish_json(&self.topic("config/set"), &payload);
        let name = &self.people[person].name;
        self.history.push(format!("sent {payload} ({name})"));
        self.people[person].busy = true;
        self.in_flight.push(Sent {
            id,
            person,
            op,
            payload,
        });
    }

    /// Records an acknowledged command.
    fn acknowledge(&mut self, sent: &Sent, result: &Value) {
        if result["ok"] != true {
            self.fail(format!("{} was refused: {result}", sent.payload));
        }
        self.history
            .push(format!("acknowledged {} ({})", sent.id, result["user"]));
        let p = &mut self.people[sent.person];
        match &sent.op {
            Op::Add => match result["user"]["id"].as_str() {
                Some(id) if result["user"]["name"] == p.name.as_str() => p.id = Some(id.into()),
                _ => self.fail(format!("add_user answered without the user: {result}")),
            },
            Op::SetCode(code) => {
                let old = std::mem::replace(&mut p.code, code.clone());
                p.retired.push(old);
                // A new code starts its count of uses again (for `max_uses`).
                p.uses = 0;
            }
            Op::Deactivate => p.active = false,
            Op::Reactivate => p.active = true,
            Op::Delete => p.deleted = true,
        }
        self.people[sent.person].busy = false;
        self.dirty.insert(sent.person);
        self.figures.acked_commands += 1;
    }

    fn on_result(&mut self, result: Value) {
        let Some(at) = self.in_flight.iter().position(|s| result["id"] == s.id) else {
            self.fail(format!("a result nobody waited for: {result}"));
        };
        let sent = self.in_flight.remove(at);
        self.acknowledge(&sent, &result);
    }

    /// Takes every result and reply the probe holds.
    fn pump(&mut self) {
        let results = self.topic("config/result");
        let replies = self.topic("keypad/front/result");
        let states = self.topic("alarm/state");
        while let Some(m) = self.probe.try_wait_for(&results, Duration::ZERO, |_| true) {
            self.on_result(m.json());
        }
        while let Some(m) = self.probe.try_wait_for(&replies, Duration::ZERO, |_| true) {
            self.on_reply(m.json());
        }
        // Each state publish follows the reply that acknowledged it, with the same state.
        while self
            .probe
            .try_wait_for(&states, Duration::ZERO, |_| true)
            .is_some()
        {}
    }

    fn live(&self) -> usize {
        self.people[1..].iter().filter(|p| !p.deleted).count()
    }

    fn idle(&self) -> Vec<usize> {
        (1..self.people.len())
            .filter(|&i| {
                let p = &self.people[i];
                p.id.is_some() && !p.deleted && !p.busy
            })
            .collect()
    }

    fn send_some_command(&mut self) {
        let idle = self.idle();
        let roll = self.rng.random_range(0..9);
        if idle.is_empty() || roll < 3 {
            if self.live() < MAX_LIVE {
                let n = self.people.len();
                let code = self.fresh_code();
                self.people.push(Person {
                    name: format!("P{n}"),
                    id: None,
                    code,
                    retired: Vec::new(),
                    active: true,
                    deleted: false,
                    uses: 0,
                    busy: false,
                });
                self.send_command(n, Op::Add);
            }
            return;
        }
        let person = idle[self.rng.random_range(0..idle.len())];
        let op = match roll {
            3..=5 => Op::SetCode(self.fresh_code()),
            8 if self.live() > MIN_LIVE_TO_DELETE => Op::Delete,
            _ if self.people[person].active => Op::Deactivate,
            _ => Op::Reactivate,
        };
        self.send_command(person, op);
    }

    fn send_some_entry(&mut self) {
        let mut candidates = self.idle();
        candidates.push(0);
        let person = candidates[self.rng.random_range(0..candidates.len())];
        let old = self.rng.random_bool(0.2);
        let p = &self.people[person];
        let entry = match p.retired.last() {
            Some(code) if old => self.entry_for(person, code.clone(), false),
            _ => self.entry_for(person, p.code.clone(), p.active),
        };
        self.send_entry(entry);
    }

    /// Streams commands and entries until a random moment, then kills the daemon; returns what
    /// was sent and not acknowledged.
    fn stream_then_kill(&mut self) -> (Vec<Sent>, Option<Entry>) {
        let delay = if self.rng.random_bool(0.5) {
            self.rng.random_range(0..=30)
        } else {
            self.rng.random_range(0..=MAX_KILL_DELAY_MS)
        };
        let kill_at = Instant::now() + Duration::from_millis(delay);
        while Instant::now() < kill_at {
            self.pump();
            if self.in_flight.len() < MAX_IN_FLIGHT && self.rng.random_bool(0.6) {
                self.send_some_command();
            }
            if self.entry.is_none() && self.rng.random_bool(0.6) {
                self.send_some_entry();
            }
            let pause = self.rng.random_range(0..=3);
            std::thread::sleep(Duration::from_millis(pause));
        }
        self.daemon.kill();
        self.kills += 1;
        self.history
            .push(format!("SIGKILL {} after {delay} ms", self.kills));
        // The last will comes after everything the dead connection delivered.
        let status = self.topic("status");
        if self
            .probe
            .try_wait_for(&status, WAIT, |m| m.text() == "offline")
            .is_none()
        {
            self.fail("no `offline` will after SIGKILL");
        }
        self.pump();
        self.probe.drain();
        (std::mem::take(&mut self.in_flight), self.entry.take())
    }

    fn restart(&mut self) -> String {
        self.previous_log = Some(self.daemon.log.clone());
        self.daemon = DaemonProcess::start(&self.site, "info");
        self.wait_online()
    }

    /// After a restart: the state, the roster, then what was not acknowledged, re-sent.
    fn check(&mut self, restored: String, unacked: Vec<Sent>, entry: Option<Entry>) {
        let entry_applied = entry
            .as_ref()
            .is_some_and(|e| e.expect == Some(restored.as_str()));
        if restored != self.state && !entry_applied {
            self.fail(format!(
                "the alarm came back {restored}; the last acknowledged state was {} \
                 (unacknowledged keypad entry: {entry:?})",
                self.state
            ));
        }
        let roster = self.roster();
        for user in &roster {
            let known = self
                .people
                .iter()
                .position(|p| user["name"] == p.name.as_str());
            let Some(i) = known else {
                self.fail(format!("a user nobody added: {user}"));
            };
            let p = &self.people[i];
            if p.deleted {
                self.fail(format!(
                    "{} was deleted (acknowledged) but is back: {user}",
                    p.name
                ));
            }
            if p.id.is_none() && !unacked.iter().any(|s| s.person == i && s.op == Op::Add) {
                self.fail(format!("{} exists but was never added: {user}", p.name));
            }
        }
        let mut visible = Vec::new();
        let mut checked = 0;
        let mut half_kept = None;
        for (i, p) in self.people.iter().enumerate() {
            let found = roster.iter().find(|u| u["name"] == p.name.as_str());
            visible.push(found.cloned());
            let pending = unacked.iter().find(|s| s.person == i).map(|s| &s.op);
            let (Some(id), Some(user)) = (&p.id, found) else {
                if p.id.is_some() && !p.deleted && pending != Some(&Op::Delete) {
                    self.fail(format!(
                        "{} ({:?}) was acknowledged and is missing after the restart; roster: {roster:?}",
                        p.name, p.id
                    ));
                }
                continue;
            };
            checked += 1;
            if user["id"] != id.as_str() || user["has_code"] != true {
                self.fail(format!("{} came back as {user}", p.name));
            }
            let toggled = matches!(pending, Some(Op::Deactivate | Op::Reactivate));
            if !toggled && user["active"] != p.active {
                self.fail(format!(
                    "{} was acknowledged active: {}, and came back {user}",
                    p.name, p.active
                ));
            }
            let used = u64::from(entry_applied && entry.as_ref().is_some_and(|e| e.person == i));
            // An unanswered set_code that was applied started the count again.
            let recoded = matches!(pending, Some(Op::SetCode(_))) && user["uses"] == 0;
            if user["uses"] == p.uses + used || recoded {
                continue;
            }
            if used == 1 && user["uses"] == p.uses {
                // Not an acknowledged change lost, but half of one kept: the loop goes on, and
                // the test fails at the end.
                half_kept = Some(format!(
                    "after SIGKILL {}: the alarm came back {restored}, so the unanswered {} by \
                     {} took effect, but its use was not counted ({user}): the alarm-state file \
                     and the store commit of the same change are not durable together",
                    self.kills,
                    entry.as_ref().map_or("", |e| e.action),
                    p.name
                ));
                continue;
            }
            self.fail(format!(
                "{} has {} acknowledged uses{}, and came back {user}",
                p.name,
                p.uses,
                if used == 1 {
                    " plus the unanswered entry that took effect"
                } else {
                    ""
                }
            ));
        }
        self.figures.roster_checks += checked;
        let lost_use = half_kept.is_some();
        if let Some(what) = half_kept {
            eprintln!("crash loop, seed {}: {what}", self.seed);
            self.half_kept.push(what);
        }
        if let Some(e) = &entry {
            self.figures.unacked_entries += 1;
            if entry_applied {
                self.figures.unacked_entries_applied += 1;
                if !lost_use {
                    self.people[e.person].uses += 1;
                }
            }
            self.people[e.person].busy = false;
        }
        self.history.push(format!(
            "restarted: {restored}, not acknowledged: {entry:?}"
        ));
        self.state = restored;
        // Not acknowledged: sent again with the same id, it is replayed exactly when its change
        // is visible in the store (change and applied id in one commit), or applied now.
        for sent in unacked {
            let result = self.command_now(&sent.payload);
            let replayed = result["replayed"] == true;
            let user = &visible[sent.person];
            let seen = match &sent.op {
                Op::Add => Some(user.is_some()),
                Op::Delete => Some(user.is_none()),
                Op::Deactivate => user.as_ref().map(|u| u["active"] == false),
                Op::Reactivate => user.as_ref().map(|u| u["active"] == true),
                Op::SetCode(_) => None,
            };
            if seen.is_some_and(|seen| seen != replayed) {
                self.fail(format!(
                    "{} re-sent after the crash: replayed {replayed}, but its change was {}in \
                     the store before (user: {user:?}): {result}",
                    sent.payload,
                    if seen == Some(true) { "" } else { "not " }
                ));
            }
            if sent.op == Op::Add && replayed {
                let before = user.as_ref().map(|u| u["id"].clone());
                if before != Some(result["user"]["id"].clone()) {
                    self.fail(format!("{} replayed another user: {result}", sent.payload));
                }
            }
            self.figures.resent += 1;
            self.figures.resent_replayed += u64::from(replayed);
            self.acknowledge(&sent, &result);
        }
    }

    /// Every person changed since the last check, and a few others, type their codes: the
    /// current one works exactly when they are active and not deleted, a replaced one never.
    fn check_codes(&mut self) {
        let mut targets = std::mem::take(&mut self.dirty);
        let live: Vec<usize> = (0..self.people.len())
            .filter(|&i| self.people[i].id.is_some() && !self.people[i].deleted)
            .collect();
        for _ in 0..2 {
            targets.insert(live[self.rng.random_range(0..live.len())]);
        }
        for i in targets {
            let p = &self.people[i];
            let (code, valid, old) = (p.code.clone(), p.active && !p.deleted, p.retired.last());
            let old = old.cloned();
            self.type_now(i, code, valid);
            if let Some(old) = old {
                self.type_now(i, old, false);
            }
        }
    }

    fn report(&self, elapsed: Duration) -> String {
        let f = &self.figures;
        format!(
            "seed {}: {} SIGKILLs in {:.1} s; {} acknowledged commands and {} acknowledged keypad \
             entries; {} unanswered commands re-sent ({} replayed, {} applied then); {} unanswered \
             keypad entries ({} had taken effect); {} roster entries and {} codes checked after \
             restarts; nothing acknowledged was lost; {} unanswered changes kept in part",
            self.seed,
            self.kills,
            elapsed.as_secs_f64(),
            f.acked_commands,
            f.acked_entries,
            f.resent,
            f.resent_replayed,
            f.resent - f.resent_replayed,
            f.unacked_entries,
            f.unacked_entries_applied,
            f.roster_checks,
            f.code_checks,
            self.half_kept.len()
        )
    }
}

fn crash_loop(kills: usize) {
    let seed = match std::env::var("CRASH_LOOP_SEED") {
        Ok(s) => s.parse().expect("CRASH_LOOP_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    eprintln!("crash loop seed {seed} (CRASH_LOOP_SEED={seed} replays the stream)");
    let start = Instant::now();
    let mut run = Run::start(seed);
    while run.kills < kills {
        let (unacked, entry) = run.stream_then_kill();
        let restored = run.restart();
        run.check(restored, unacked, entry);
        run.check_codes();
    }
    if !run.daemon.stop() {
        run.fail("the daemon did not stop cleanly at the end");
    }
    let report = run.report(start.elapsed());
    println!("crash loop: {report}");
    assert!(
        run.half_kept.is_empty(),
        "crash loop (seed {seed}): {} unanswered changes were kept in part, not all or \
         nothing:\n{}\n({report})",
        run.half_kept.len(),
        run.half_kept.join("\n")
    );
}

#[test]
fn every_acknowledged_change_survives_sigkill_at_random_moments() {
    crash_loop(12);
}

#[test]
#[ignore = "long: 500 SIGKILLs, about 12 minutes on 2 cores; run with `cargo test --test crash_loop -- --ignored`"]
fn every_acknowledged_change_survives_five_hundred_sigkills() {
    crash_loop(500);
}
