//! The daemon: one loop that owns the panel and the store handle, and handles one message at
//! a time (no locks). It decides nothing: the [`Panel`] decides about the alarm, [`admin`]
//! about code management; the loop does the I/O their decisions list.
//!
//! Inputs arrive from the MQTT connection task ([`crate::mqtt`]) and from the alarm's own
//! deadline (timers are data: the loop sleeps until [`Panel::next_deadline`], or until the
//! whole roster's coalesced publish, [`Roster::wait`]). Time is the
//! daemon's [`Clock`]: monotonic, never behind the store's last write, checked against the
//! system clock on each input and every few seconds (a step moves the panel's deadlines with
//! it, [`Panel::shift`]). Durable before
//! acknowledged is the loop's one rule: a decision's store commit comes first (an alarm change
//! the store refuses is undone and refused), then the alarm-state file, then the reply, the
//! events and the other publishes. A code-management command is committed before its result.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jiff::Timestamp;
use serde_json::Value;

use crate::admin::{self, flow, Authority, CommandError};
use crate::clock::{self, Clock};
use crate::codes::{Code, LookupKeyer};
use crate::config::{Config, KeypadConfig};
use crate::events::Source;
use crate::homeassistant;
use crate::mqtt::{self, MqttEvent, Publisher};
use crate::panel::{self, Decision, Panel, Publish, Saved, Step, ALARM_STATE};
use crate::roster::{self, Roster};
use crate::store::{Change, Create, Store, StoreError};
use crate::systemd::Systemd;
use crate::topics::Topics;

/// Opens the store named by the config and runs until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cfg = config.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&cfg, Create::Allowed))
        .await
        .context("the store opener panicked")??;
    run_with_store(config, store, shutdown).await
}

/// Runs the daemon on an open store (tests keep a clone of its [`LookupKeyer`] to count
/// Argon2 computations).
pub async fn run_with_store(
    config: Config,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_clock(config, store, shutdown, Timestamp::now).await
}

/// [`run_with_store`], with the system's wall clock given (tests step it; the daemon itself
/// never reads it but through its [`Clock`]).
pub async fn run_with_clock(
    config: Config,
    store: Store,
    shutdown: impl Future<Output = ()>,
    system: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let tz = config
        .time_zone()
        .map_err(|e| anyhow::anyhow!("cannot use the time zone: {e}"))?;
    let topics = Topics::new(&config);
    let (clock, seen) = Clock::start(system(), Instant::now(), store.last_write());
    if let Some(seen) = seen {
        seen.log();
    }
    let now = clock.at(Instant::now());
    store.vouch(now);
    let saved = Saved::newest(store.load_alarm(), store.meta(ALARM_STATE)?)?;
    let lockouts = store.meta(crate::lockout::META_KEY)?;
    let panel = Panel::restore(&config, tz, topics.clone(), saved, lockouts, now);
    let lanes = mqtt::Lanes::new(&topics, &config);
    let mut systemd = Systemd::from_env();
    systemd.status(crate::systemd::waiting_line(&config));
    let (publisher, mut inbox, task) = mqtt::connect(&config, &topics.status, lanes)?;
    let (users, has_master) = store.census()?;
    let roster = Roster::start(&store, &publisher, &topics, users);
    let mut daemon = Daemon {
        keypads: config.keypads_by_topic(),
        has_master,
        keyer: store.keyer().clone(),
        config,
        topics,
        store,
        publisher: publisher.clone(),
        panel,
        subscriptions: Vec::new(),
        outbox: Vec::new(),
        announced: false,
        queued_before_commit: 0,
        quiet: panel::Quiet::default(),
        systemd,
        roster,
        last_discovery: None,
        clock,
        system: Box::new(system),
        spent: None,
    };
    tracing::info!(state = daemon.panel.state().as_str(), "starting");
    if !daemon.has_master {
        flow::warn_no_master(&daemon.topics);
    }
    // A learning survives nothing: one that a stop cut short has ended.
    if let Some(change) = panel::learning_cut_short(daemon.store.meta(panel::TAG_LEARNING)?, now) {
        daemon.record(change).await;
    }
    // A delay or lockout saved by a clock that was ahead (or read by one that is behind)
    // lasts no longer than its own length; then a delay that ran out while the daemon was
    // down takes effect now. The state itself is published once the subscriptions are
    // acknowledged (`announce`).
    if let Some(decision) = daemon.panel.cap_restored(now) {
        daemon.carry_out(decision).await;
    }
    daemon.tick(now).await;

    tokio::pin!(shutdown);
    // WATCHDOG=1 comes from this loop, between messages: a loop that stalls stops it.
    let watchdog = daemon.systemd.watchdog_every();
    let mut alive = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    // Validity rules follow a corrected wall time within this, even when nothing happens.
    let mut clock_check = tokio::time::interval(clock::CHECK_EVERY);
    clock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = daemon
            .panel
            .next_deadline()
            .map(|at| daemon.clock.until(at, Instant::now()));
        let roster_wait = daemon.roster.wait(Instant::now());
        let wait = wait.into_iter().chain(roster_wait).min();
        let sleep = async move {
            match wait {
                // On the monotonic clock: a step of the wall clock neither ends a delay early
                // nor keeps it running (the step moves the deadlines, `check_clock`). The
                // roster's deadline is a monotonic instant.
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = alive.tick(), if watchdog.is_some() => daemon.systemd.alive(),
            // Messages before deadlines: each message first advances the alarm to the time
            // it arrived, so a code typed before a deadline counts before it.
            event = inbox.next() => match event {
                Some(event) => daemon.on_mqtt(event).await,
                None => anyhow::bail!("the MQTT connection task stopped"),
            },
            () = sleep => {
                daemon.check_clock().await;
                let now = daemon.now();
                daemon.tick(now).await;
                daemon.roster.due(Instant::now());
                daemon.flush().await;
            }
            _ = clock_check.tick() => {
                daemon.check_clock().await;
                daemon.flush().await;
            }
        }
    }

    tracing::info!("shutting down");
    daemon.systemd.stopping();
    daemon.roster.finish(publisher.is_connected()).await;
    mqtt::close(&publisher, inbox, task, &daemon.topics.status).await;
    daemon.store.make_durable()?;
    Ok(())
}

struct Daemon {
    config: Config,
    topics: Topics,
    store: Store,
    keyer: LookupKeyer,
    publisher: Publisher,
    panel: Panel,
    /// The filters of the last subscription request, to name any the broker refuses.
    subscriptions: Vec<String>,
    /// Keypad topic → keypad.
    keypads: HashMap<String, KeypadConfig>,
    /// Messages to publish once the current input is handled.
    outbox: Vec<Publish>,
    /// Whether the start-up announcements (panel status to keypads) went out.
    announced: bool,
    /// Where the current decision's reply goes in the outbox: before its events.
    queued_before_commit: usize,
    /// Whether the store has a master (the bootstrap rule), kept current after each command.
    has_master: bool,
    systemd: Systemd,
    /// The roster's publishes (DESIGN 10e), and the number of users for the status line.
    roster: Roster,
    /// Log lines about input anyone may send, at most one a kind every 10 s.
    quiet: panel::Quiet,
    /// When discovery was last re-sent on a status message: a flood of `online` must not
    /// turn into a flood of publishes.
    last_discovery: Option<Instant>,
    /// The daemon's time ([`Daemon::now`]).
    clock: Clock,
    /// The system's wall clock, only ever compared with `clock` ([`Daemon::check_clock`]).
    system: Box<dyn Fn() -> Timestamp + Send + Sync>,
    /// Where the current keypad message's time goes, while it is handled.
    spent: Option<Spent>,
}

/// Where one keypad entry's time went, logged at debug level on the target
/// `keypad_bridge::timing`, which is off unless named (the benchmark names it): durations
/// only, never a code, its length or whose it was.
struct Spent {
    /// When the MQTT task read the message.
    received: Instant,
    /// From `received` until the loop took the message up (the lanes' queues).
    queued: Duration,
    argon2: Duration,
    /// The store lookup of the key.
    lookup: Duration,
    /// Store commits with their fsyncs.
    commit: Duration,
    /// The alarm-state file, after the commit: the rest of its writing (it is written while
    /// the commit is made durable), then putting it in place.
    state_file: Duration,
}

impl Spent {
    /// For a keypad message read at `received`, when the timings are logged at all.
    fn starting(received: Instant) -> Option<Spent> {
        let wanted = tracing::enabled!(target: crate::config::TIMING_TARGET, tracing::Level::DEBUG);
        wanted.then(|| Spent {
            received,
            queued: received.elapsed(),
            argon2: Duration::ZERO,
            lookup: Duration::ZERO,
            commit: Duration::ZERO,
            state_file: Duration::ZERO,
        })
    }

    fn log(&self) {
        if self.argon2.is_zero() {
            return; // nothing was checked: a refusal from memory or a junk message
        }
        let us = |d: Duration| d.as_micros() as u64;
        tracing::debug!(
            target: crate::config::TIMING_TARGET,
            queued_us = us(self.queued),
            argon2_us = us(self.argon2),
            lookup_us = us(self.lookup),
            commit_us = us(self.commit),
            state_file_us = us(self.state_file),
            reply_us = us(self.received.elapsed()),
            "keypad entry"
        );
    }
}

impl Daemon {
    /// The daemon's time: what decisions, validity rules and records use, never the system
    /// clock's directly ([`crate::clock`]). Commits record at least this as their time.
    fn now(&self) -> Timestamp {
        let now = self.clock.at(Instant::now());
        self.store.vouch(now);
        now
    }

    /// Compares the system clock with the daemon's time, and says what it does about a
    /// difference: a step it follows moves the panel's deadlines with it (their time left is
    /// kept, and so are they, for a restart).
    async fn check_clock(&mut self) {
        let seen = self
            .clock
            .check((self.system)(), Instant::now(), self.store.last_write());
        // Told to the store before the shift is committed: after a step back it followed,
        // the store must not record the time from before the step.
        self.now();
        if let Some(by) = seen.and_then(|seen| seen.log()) {
            if let Some(decision) = self.panel.shift(by) {
                self.carry_out(decision).await;
            }
        }
    }

    async fn on_mqtt(&mut self, event: MqttEvent) {
        self.check_clock().await;
        // Deadlines that passed before this arrived are applied before it is decided.
        let at = match &event {
            MqttEvent::Message { received, .. } => {
                self.clock.at(*received).max(self.panel.changed_at())
            }
            _ => self.now(),
        };
        self.tick(at).await;
        match event {
            MqttEvent::Connected => self.subscribe().await,
            MqttEvent::Lost => self
                .systemd
                .status(crate::systemd::waiting_line(&self.config)),
            MqttEvent::Subscribed { refused } => {
                for i in refused {
                    let topic = self.subscriptions.get(i).map_or("?", String::as_str);
                    tracing::error!(topic, "the broker refused the subscription (check its ACL): messages on it will not be seen");
                }
                self.announce().await
            }
            MqttEvent::Message {
                topic,
                mut payload,
                retain,
                received,
            } => {
                let keypad = self.keypads.get(&topic).map(|k| Source::keypad(&k.name));
                if keypad.is_some() {
                    self.spent = Spent::starting(received);
                }
                let source = keypad.or_else(|| self.topics.source_of(&topic));
                let span = tracing::debug_span!("message", topic, source = source.as_deref());
                let _enter = span.enter();
                // No byte count: on a plain keypad it is the length of the code.
                tracing::debug!(retain, "message");
                self.on_message(&topic, &payload, retain, at).await;
                // The payload may hold a code: overwritten before its memory is released.
                zeroize::Zeroize::zeroize(&mut payload);
            }
        }
        // At once after a change, and on time even if messages keep the loop from sleeping.
        self.roster.due(Instant::now());
        self.flush().await;
        if let Some(spent) = self.spent.take() {
            spent.log();
        }
    }

    async fn subscribe(&mut self) {
        let topics = self.topics.subscriptions(&self.config);
        self.publisher.subscribe(&topics).await;
        self.subscriptions = topics;
    }

    /// After the subscriptions are acknowledged: `online`, discovery, the retained state.
    async fn announce(&mut self) {
        self.push(&self.topics.status.clone(), "online", true);
        self.queue_discovery();
        self.outbox.extend(self.panel.state_publishes());
        if !self.announced {
            let now = self.now();
            self.outbox.extend(self.panel.panel_status(now));
            self.announced = true;
        }
        // `online` and the state are queued: systemd hears READY=1 once they are out.
        self.flush().await;
        // Then the whole roster and every person's entry, for a broker that lost them.
        self.roster.connected(Instant::now());
        let line = self.status_line();
        self.systemd.ready(line);
    }

    fn status_line(&self) -> String {
        crate::systemd::online_line(self.panel.state(), self.roster.users())
    }

    async fn flush(&mut self) {
        for p in std::mem::take(&mut self.outbox) {
            self.publisher.publish(&p.topic, p.payload, p.retain).await;
        }
    }

    fn push(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.outbox.push(Publish {
            topic: topic.to_owned(),
            payload: payload.into(),
            retain,
        });
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8], retain: bool, at: Timestamp) {
        let mono = Instant::now();
        if topic == self.topics.alarm_set {
            let step = self.panel.alarm_set(payload, retain, at, mono);
            self.step(step, at).await;
        } else if topic == self.topics.config_set {
            self.on_config_set(payload).await;
        } else if topic == self.topics.ha_status {
            if payload == b"online" && panel::due(&mut self.last_discovery, mono) {
                tracing::info!("Home Assistant is online: publishing discovery");
                self.queue_discovery();
            }
        } else if let Some(status) = self.panel.bridge_state(topic, payload, at, mono) {
            self.outbox.extend(status);
        } else if let Some(keypad) = self.keypads.get(topic).cloned() {
            let step = self
                .panel
                .keypad_message(&keypad, payload, retain, at, mono);
            self.step(step, at).await;
        }
    }

    /// Carries an attempt through: identify its code if the panel asks, then do what it decided.
    async fn step(&mut self, step: Step, at: Timestamp) {
        let decision = match step {
            Step::Done(decision) => *decision,
            Step::Identify(pending, code) => {
                let learner = self.panel.learning_for(&pending, at).map(str::to_owned);
                let identified = self.identify_code(code, learner).await;
                self.panel
                    .finish_identified(pending, identified, at, Instant::now())
            }
        };
        self.carry_out(decision).await;
    }

    /// One Argon2id computation (off the runtime) and one lookup; for a code that is nobody's,
    /// the user of a learning too. The answer comes back before the working memory is wiped.
    async fn identify_code(&mut self, code: Code, learner: Option<String>) -> panel::Identified {
        let keyer = self.keyer.clone();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            keyer.key_then(&code, |key| {
                let hashed = started.elapsed();
                let identified = (|| {
                    let found = store.credential_by_key(&key)?;
                    let learner = match (&found, learner) {
                        (None, Some(id)) => store.user(&id)?.map(|user| (user, key)),
                        _ => None,
                    };
                    Ok::<_, StoreError>(panel::Identified {
                        found: Ok(found),
                        learner,
                    })
                })();
                let _ = tx.send((identified, hashed, started.elapsed() - hashed));
            })
        });
        // A panic while hashing or reading drops the sender: an error like the store's.
        let (identified, hashed, lookup) = rx.await.unwrap_or_else(|_| {
            let panicked = StoreError::Task("the code lookup panicked".into());
            (Err(panicked), Duration::ZERO, Duration::ZERO)
        });
        if let Some(spent) = &mut self.spent {
            spent.argon2 += hashed;
            spent.lookup += lookup;
        }
        identified.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot look up a code");
            panel::Identified {
                found: Err(()),
                learner: None,
            }
        })
    }

    /// Durable before acknowledged: the commit, the alarm-state file, then the reply, the
    /// events and the other publishes. The new alarm-state file is written and fsync'd while
    /// the commit is made durable, and put in place only once the commit is.
    async fn carry_out(&mut self, mut decision: Decision) {
        let change = std::mem::take(&mut decision.change);
        let must_commit = decision.must_commit;
        let staging = decision.save_state.then(|| {
            let saved = self.panel.saved();
            let store = self.store.clone();
            started_blocking(move || store.stage_alarm(&saved))
        });
        let committed = self.commit(change).await;
        let started = Instant::now();
        // Awaited whatever the commit did: one staging of the file at a time.
        let staged = match staging {
            Some(task) => Some(task.await),
            None => None,
        };
        match committed {
            Ok(()) => {}
            Err(e) if must_commit => {
                tracing::error!(error = %e, "cannot record a change of the alarm: refused");
                if let Some(Ok(staged)) = staged {
                    staged.discard();
                }
                let refusal = self.panel.store_failed(decision, Instant::now());
                self.outbox.extend(refusal.reply);
                return;
            }
            // What happened already (a refusal, a delay that ran out) is still told.
            Err(_) => {}
        }
        if let Some(staged) = staged {
            if self.publisher.is_connected() {
                let line = self.status_line();
                self.systemd.status(line);
            }
            let store = self.store.clone();
            let installed = match staged {
                Ok(staged) => blocking(move || store.install_alarm(staged)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = installed {
                tracing::error!(error = %e, "cannot write the alarm-state file (the store keeps the state)");
            }
            if let Some(spent) = &mut self.spent {
                spent.state_file += started.elapsed();
            }
        }
        // The reply before the events and states queued by the commit.
        if let Some(reply) = decision.reply {
            self.outbox.insert(self.queued_before_commit, reply);
        }
        self.outbox.extend(decision.publish);
    }

    /// Commits a change durably, then queues its events (and the users' roster entries, when
    /// a user changed). If the store refuses it, the events are still queued, without a place
    /// in the activity log, and the error is returned.
    async fn commit(&mut self, change: Change) -> Result<(), StoreError> {
        self.queued_before_commit = self.outbox.len();
        if change.is_empty() {
            return Ok(());
        }
        let users_changed = roster::changed_users(&self.topics, &change);
        let unrecorded = change.events.clone();
        let store = self.store.clone();
        let started = Instant::now();
        let result = blocking(move || store.commit(change)).await;
        if let Some(spent) = &mut self.spent {
            spent.commit += started.elapsed();
        }
        let events = match &result {
            Ok(events) => events.clone(),
            Err(e) => {
                tracing::error!(error = %e, "cannot record a change in the store");
                unrecorded
            }
        };
        for event in events {
            self.push(&self.topics.event.clone(), event.to_json(), false);
        }
        if result.is_ok() && !users_changed.is_empty() {
            self.roster.changed(users_changed, Instant::now());
        }
        result.map(|_| ())
    }

    /// Commits what already happened; a store failure is logged and the events still go out.
    async fn record(&mut self, change: Change) {
        let _ = self.commit(change).await;
    }

    /// Deadlines that passed by `now`.
    async fn tick(&mut self, now: Timestamp) {
        if let Some(decision) = self.panel.tick(now) {
            self.carry_out(decision).await;
        }
    }

    fn queue_discovery(&mut self) {
        if !self.config.homeassistant.discovery {
            return;
        }
        for d in homeassistant::discovery(&self.config, &self.topics) {
            self.push(&d.topic, d.payload, true);
        }
    }

    async fn on_config_set(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let outcome = flow::handle(self, payload, self.now(), Instant::now()).await;
        let mut result = outcome.result.to_string();
        if let Some(max) = self.publisher.packet_limit() {
            let size = mqtt::packet_size(&self.topics.config_result, result.len());
            if size > max as usize {
                result = admin::fitted(&outcome.result, size, max).to_string();
            }
        }
        self.push(&self.topics.config_result.clone(), result, false);
        // No code may linger on the broker: clear the (possibly retained) command.
        self.push(&self.topics.config_set.clone(), Vec::new(), true);
        if let Some(event) = outcome.duress {
            // Silent, and after the result: the same latency as with the person's own code.
            self.flush().await;
            self.record(Change {
                events: vec![event],
                ..Change::default()
            })
            .await;
        }
    }
}

impl flow::Desk for Daemon {
    fn config(&self) -> &Config {
        &self.config
    }

    fn panel(&mut self) -> &mut Panel {
        &mut self.panel
    }

    fn quiet(&mut self) -> &mut panel::Quiet {
        &mut self.quiet
    }

    fn has_master(&self) -> bool {
        self.has_master
    }

    fn master_created(&mut self) {
        self.has_master = true;
    }

    async fn identify(&mut self, code: Code) -> panel::Found {
        self.identify_code(code, None).await.found
    }

    async fn stored(&mut self, id: &str) -> Result<Option<Value>, StoreError> {
        let store = self.store.clone();
        let id = id.to_owned();
        blocking(move || store.applied(&id)).await
    }

    async fn apply(
        &mut self,
        request: &admin::Request,
        authority: &Authority,
        now: Timestamp,
        under_duress: bool,
    ) -> Result<admin::Applied, CommandError> {
        let (store, keyer) = (self.store.clone(), self.keyer.clone());
        let (request, authority) = (request.clone(), authority.clone());
        // Hashing a new code and reading the store block: off the runtime.
        blocking(move || {
            let ctx = admin::Context {
                store: &store,
                keyer: &keyer,
                now,
                under_duress,
            };
            admin::apply(&ctx, &request, &authority)
        })
        .await
    }

    async fn commit(&mut self, change: Change) -> Result<(), StoreError> {
        Daemon::commit(self, change).await
    }

    fn fingerprint(&self, request: &admin::Request) -> String {
        self.keyer.digest(&request.fingerprint_input()).to_hex()
    }
}

/// Runs blocking work (Argon2, sled, fsync) off the runtime; a panic there becomes an error.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<StoreError>,
{
    started_blocking(f).await
}

/// [`blocking`], started at once (it runs while the caller does something else) and awaited
/// later.
fn started_blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> impl Future<Output = Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static + From<StoreError>,
{
    let task = tokio::task::spawn_blocking(f);
    async move {
        match task.await {
            Ok(result) => result,
            Err(e) => Err(E::from(StoreError::Task(e.to_string()))),
        }
    }
}
