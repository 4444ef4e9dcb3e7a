//! The daemon: one loop that owns the alarm, the lockouts and the store handle, and handles one
//! message at a time (no locks).
//!
//! Inputs arrive from the MQTT connection task ([`crate::mqtt`]) and from the alarm's own
//! deadline (timers are data: the loop sleeps until [`Alarm::next_deadline`]). A change asked
//! for is made durable before anything is published about it: the alarm-state file first (if
//! that fails, the change is undone and refused), then the store commit of its events and uses
//! (if only that fails, the change stands: the error is logged and the events go out without a
//! log entry); a code-management command is committed before its result. Timed transitions are
//! published even if saving them fails: a siren must not wait for a failing SD card. What a
//! handler wants to publish is collected in an outbox and sent afterwards, keypad reply first.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::admin::{self, Authority, CommandError};
use crate::alarm::{Alarm, AlarmState, ArmMode, Command, Outcome, Timings, Transition};
use crate::codes::LookupKeyer;
use crate::config::{Config, KeypadConfig, KeypadProtocol};
use crate::events::{Event, EventType};
use crate::homeassistant;
use crate::keypad::{
    self, json as json_keypad, zigbee2mqtt, Answer, KeypadAction, Parsed, TypedCode,
};
use crate::lockout::{LockoutRules, Lockouts};
use crate::mqtt::{self, MqttEvent, Publisher};
use crate::store::{Change, Create, Store};
use crate::topics::Topics;
use crate::users::{Credential, Role, Use, User};

/// How long a Zigbee2MQTT `(keypad, transaction)` is remembered: a keypad repeats a request
/// that got no reply, and the repeat must not be applied twice.
const TRANSACTION_MEMORY: Duration = Duration::from_secs(10);
const HOMEASSISTANT: &str = "homeassistant";
/// The `meta` key of the lockout counts.
const LOCKOUTS: &str = crate::lockout::META_KEY;
/// The `meta` key of the store's copy of the alarm state, committed with the events, use
/// counts and lockouts of the same change (the file beside the store follows it).
const ALARM_STATE: &str = "alarm_state";

/// What `B/alarm/attributes` says about the last change, kept with the alarm state.
/// Every field has a default: a damaged or older description never stops the daemon.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attributes {
    pub user: Option<String>,
    pub user_id: Option<String>,
    pub source: Option<String>,
    pub action: Option<String>,
    pub at: Option<Timestamp>,
    pub target_state: Option<String>,
    pub delay_s: u64,
}

/// The alarm-state file: the state machine, the last change and the last user.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Saved {
    alarm: Alarm,
    attributes: Attributes,
    last_user: Option<String>,
    /// The `notify` of the person named in `attributes`, for the events of timed transitions.
    #[serde(default)]
    notify: Option<String>,
    /// Counts saves: of the store's copy and the file, the higher one is the newer.
    #[serde(default)]
    generation: u64,
}

/// One Zigbee2MQTT exchange: the keypad, its transaction number and a keyed digest of what
/// was asked (action and code), so that only a true repeat gets the remembered reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Exchange {
    keypad: String,
    transaction: u8,
    request: u64,
}

/// Why a typed code identified nobody, other than being wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// Not a code by the format rules: no hashing was done.
    Malformed,
    /// The store failed: not the person's fault.
    Internal,
}

/// What a person (or Home Assistant) asked the alarm to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Keypad(KeypadAction),
    Trigger,
}

impl Request {
    fn word(self) -> &'static str {
        match self {
            Request::Keypad(action) => action.as_str(),
            Request::Trigger => "trigger",
        }
    }
}

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
    let tz = config
        .time_zone()
        .map_err(|e| anyhow::anyhow!("cannot use the time zone: {e}"))?;
    let topics = Topics::new(&config);
    let now = Timestamp::now();
    let saved = load_saved(&store)?.unwrap_or(Saved {
        alarm: Alarm::new(now),
        attributes: Attributes::default(),
        last_user: None,
        notify: None,
        generation: 0,
    });
    let (publisher, mut inbox, task) = mqtt::connect(&config, &topics.status, &topics.config_set)?;
    let a = &config.alarm;
    let timings = Timings::new(
        |mode| a.exit_delay_s.get(mode),
        a.entry_delay_s,
        a.trigger_time_s,
    );
    let rules = LockoutRules::from_config(&config.lockout);
    // A lockout survives a restart: cutting the power must not give a guesser a fresh count.
    let lockouts = Lockouts::restore(rules, store.meta(LOCKOUTS)?.as_deref());
    let keyer = store.keyer().clone();
    let mut daemon = Daemon {
        keypads: config
            .keypads
            .iter()
            .map(|k| (k.topic.clone(), k.clone()))
            .collect(),
        zigbee2mqtt_bridges: zigbee2mqtt_bridges(&config),
        config,
        topics,
        store,
        keyer,
        publisher: publisher.clone(),
        alarm: saved.alarm,
        attributes: saved.attributes,
        last_user: saved.last_user,
        notify: saved.notify,
        generation: saved.generation,
        subscriptions: Vec::new(),
        timings,
        lockouts,
        tz,
        transactions: zigbee2mqtt::Replies::new(TRANSACTION_MEMORY),
        digest_keys: std::collections::hash_map::RandomState::new(),
        ignored_triggers: HashMap::new(),
        outbox: Vec::new(),
        announced: false,
        has_master: false,
    };
    tracing::info!(state = daemon.alarm.state.as_str(), "starting");
    daemon.has_master = daemon.store.master()?.is_some();
    if !daemon.has_master {
        tracing::warn!(
            "no master yet: create the main code with `keypad-bridge init`; until then, anyone \
             who can publish on {} can create the master",
            daemon.topics.config_set
        );
    }
    // A delay that ran out while the daemon was down takes effect now.
    // The state itself is published once the subscriptions are acknowledged (`announce`).
    daemon.on_deadline(now).await;

    tokio::pin!(shutdown);
    loop {
        let deadline = daemon.alarm.next_deadline();
        let sleep = async move {
            match deadline {
                // At most a second at a time: the wall clock may be stepped (a Pi without
                // a real-time clock, then NTP), and deadlines are wall-clock times.
                Some(at) => tokio::time::sleep(until(at).min(Duration::from_secs(1))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = inbox.control.recv() => match event {
                Some(event) => daemon.on_mqtt(event).await,
                None => anyhow::bail!("the MQTT connection task stopped"),
            },
            // Messages before deadlines: each message first advances the alarm to the time
            // it arrived, so a code typed before a deadline counts before it. Keypads and
            // the alarm before code management: a flood of commands cannot silence them.
            event = inbox.urgent.recv() => match event {
                Some(event) => daemon.on_mqtt(event).await,
                None => anyhow::bail!("the MQTT connection task stopped"),
            },
            event = inbox.admin.recv() => match event {
                Some(event) => daemon.on_mqtt(event).await,
                None => anyhow::bail!("the MQTT connection task stopped"),
            },
            () = sleep => daemon.on_deadline(Timestamp::now()).await,
        }
    }

    tracing::info!("shutting down");
    // The inbox stays open until the connection task has sent `offline` and DISCONNECT.
    publisher
        .publish(&daemon.topics.status, "offline", true)
        .await;
    publisher.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .is_err()
    {
        tracing::warn!("the MQTT connection did not close within 5 s");
    }
    drop(inbox);
    daemon.store.make_durable()?;
    Ok(())
}

fn until(at: Timestamp) -> Duration {
    let now = Timestamp::now();
    if at <= now {
        return Duration::ZERO;
    }
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::from_secs(3600))
}

struct Daemon {
    config: Config,
    topics: Topics,
    store: Store,
    keyer: LookupKeyer,
    publisher: Publisher,
    alarm: Alarm,
    attributes: Attributes,
    last_user: Option<String>,
    notify: Option<String>,
    /// The alarm state's save counter ([`Saved::generation`]).
    generation: u64,
    /// The filters of the last subscription request, to name any the broker refuses.
    subscriptions: Vec<String>,
    timings: Timings,
    lockouts: Lockouts,
    tz: TimeZone,
    /// Keypad topic → keypad.
    keypads: HashMap<String, KeypadConfig>,
    /// `<base>/bridge/state` of each Zigbee2MQTT instance with a keypad: when it comes back
    /// online, the keypads get the panel status again (Linkind and Hive keypads blink an
    /// error until they do; Zigbee2MQTT issues #6242, #8997).
    zigbee2mqtt_bridges: Vec<String>,
    /// Replies sent to Zigbee2MQTT keypads, by (keypad, transaction).
    transactions: zigbee2mqtt::Replies<Exchange>,
    /// Keys the in-memory digests of keypad requests (never stored, never sent).
    digest_keys: std::collections::hash_map::RandomState,
    /// When each source last had a `trigger_ignored` event recorded, per alarm state.
    ignored_triggers: HashMap<String, Timestamp>,
    /// Messages to publish after the current change is handled: (topic, payload, retained).
    outbox: Vec<(String, Vec<u8>, bool)>,
    /// Whether the start-up announcements (panel status to keypads) went out.
    announced: bool,
    /// Whether the store has a master (the bootstrap rule), kept current after each command.
    has_master: bool,
}

impl Daemon {
    async fn on_mqtt(&mut self, event: MqttEvent) {
        // Deadlines that passed before this arrived are applied before it is decided.
        let at = match &event {
            MqttEvent::Message { at, .. } => (*at).max(self.alarm.changed_at),
            _ => Timestamp::now(),
        };
        self.on_deadline(at).await;
        match event {
            MqttEvent::Connected => self.subscribe().await,
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
                ..
            } => {
                tracing::debug!(topic, bytes = payload.len(), retain, "message");
                self.on_message(&topic, &payload, retain, at).await;
                // The payload may hold a code: overwritten before its memory is released.
                zeroize::Zeroize::zeroize(&mut payload);
                self.flush().await;
            }
        }
    }

    async fn subscribe(&mut self) {
        let mut topics = vec![
            self.topics.alarm_set.clone(),
            self.topics.config_set.clone(),
        ];
        if self.config.homeassistant.discovery {
            topics.push(self.topics.ha_status.clone());
        }
        topics.extend(self.config.keypads.iter().map(|k| k.topic.clone()));
        topics.extend(self.zigbee2mqtt_bridges.iter().cloned());
        self.publisher.subscribe(&topics).await;
        self.subscriptions = topics;
    }

    /// After the subscriptions are acknowledged: `online`, discovery, the retained state.
    async fn announce(&mut self) {
        self.outbox
            .push((self.topics.status.clone(), b"online".to_vec(), true));
        self.queue_discovery();
        self.queue_state();
        self.queue_roster().await;
        if !self.announced {
            self.queue_panel_status();
            self.announced = true;
        }
        self.flush().await;
    }

    async fn flush(&mut self) {
        for (topic, payload, retain) in std::mem::take(&mut self.outbox) {
            self.publisher.publish(&topic, payload, retain).await;
        }
    }

    fn push(&mut self, topic: String, payload: impl Into<Vec<u8>>, retain: bool) {
        self.outbox.push((topic, payload.into(), retain));
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8], retain: bool, at: Timestamp) {
        if topic == self.topics.alarm_set {
            if retain {
                tracing::warn!("ignoring a retained command on {topic}: commands are live exchanges (and a retained code stays on the broker)");
                return;
            }
            self.on_alarm_set(payload, at).await;
        } else if topic == self.topics.config_set {
            self.on_config_set(payload).await;
        } else if topic == self.topics.ha_status {
            if payload == b"online" {
                tracing::info!("Home Assistant is online: publishing discovery");
                self.queue_discovery();
            }
        } else if self.zigbee2mqtt_bridges.iter().any(|t| t == topic) {
            if zigbee2mqtt::bridge_online(payload) {
                tracing::info!(topic, "Zigbee2MQTT is online: sending the panel status");
                self.queue_panel_status();
            }
        } else if let Some(keypad) = self.keypads.get(topic).cloned() {
            if retain {
                // A keypad entry is a live exchange: an old retained one is never applied.
                tracing::debug!(keypad = keypad.name, "ignoring a retained keypad message");
                return;
            }
            self.on_keypad(&keypad, payload, at).await;
        }
    }

    async fn on_keypad(&mut self, keypad: &KeypadConfig, payload: &[u8], at: Timestamp) {
        let input = match keypad::parse(keypad.protocol, payload) {
            Parsed::Input(input) => input,
            Parsed::Ignore => return,
            Parsed::Invalid(why) => {
                tracing::warn!(keypad = keypad.name, "unreadable keypad message: {why}");
                if keypad.protocol != KeypadProtocol::Zigbee2mqtt {
                    let reply = json_keypad::invalid(&why, self.alarm.state);
                    self.publisher
                        .publish(&self.topics.keypad_result(&keypad.name), reply, false)
                        .await;
                }
                return;
            }
        };
        // The same transaction with the same action and code is the keypad repeating itself;
        // a different request that reuses the number is a new exchange.
        let memory_key = input.transaction.map(|t| Exchange {
            keypad: keypad.name.clone(),
            transaction: t,
            request: self.exchange_digest(&input),
        });
        if let Some(key) = &memory_key {
            let remembered = self.transactions.get(key, std::time::Instant::now());
            if let Some(reply) = remembered.map(str::to_owned) {
                tracing::info!(
                    keypad = keypad.name,
                    "repeated transaction: same reply, not applied again"
                );
                let topic = Topics::zigbee2mqtt_set(&keypad.topic);
                self.publisher.publish(&topic, reply, false).await;
                return;
            }
        }
        let source = format!("keypad:{}", keypad.name);
        let answer = self
            .attempt(
                &source,
                Request::Keypad(input.action),
                input.code.clone(),
                at,
            )
            .await;
        let (topic, reply) = match keypad.protocol {
            KeypadProtocol::Zigbee2mqtt => {
                match input
                    .transaction
                    .and_then(|t| zigbee2mqtt::reply(t, input.action, answer))
                {
                    Some(reply) => (Topics::zigbee2mqtt_set(&keypad.topic), reply),
                    None => return,
                }
            }
            KeypadProtocol::Json | KeypadProtocol::Plain => (
                self.topics.keypad_result(&keypad.name),
                json_keypad::reply(answer, self.alarm.state),
            ),
        };
        if let Some(key) = memory_key {
            self.transactions
                .insert(key, reply.clone(), std::time::Instant::now());
        }
        // The reply goes before the state publishes queued in the outbox.
        self.publisher.publish(&topic, reply, false).await;
    }

    async fn on_alarm_set(&mut self, payload: &[u8], at: Timestamp) {
        if payload.is_empty() {
            return;
        }
        let (action, code) = match parse_alarm_set(payload) {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::warn!("ignoring a command on {}: {why}", self.topics.alarm_set);
                return;
            }
        };
        let answer = self.attempt(HOMEASSISTANT, action, code, at).await;
        tracing::debug!(answer = answer.as_str(), "Home Assistant command handled");
    }

    fn exchange_digest(&self, input: &keypad::KeypadInput) -> u64 {
        use std::hash::BuildHasher;
        let code = match &input.code {
            Some(TypedCode::Text(text)) => text.as_str(),
            Some(TypedCode::NotText) => "\u{0}",
            None => "",
        };
        self.digest_keys.hash_one((input.action.as_str(), code))
    }

    /// One attempt to change the alarm: the lockout, the code, the person's rules, the change.
    async fn attempt(
        &mut self,
        source: &str,
        request: Request,
        code: Option<TypedCode>,
        now: Timestamp,
    ) -> Answer {
        let command = match request {
            Request::Trigger => {
                return self
                    .change(Command::Trigger, None, source, request, now)
                    .await
            }
            Request::Keypad(KeypadAction::Panic) => {
                return self
                    .change(Command::Panic, None, source, request, now)
                    .await
            }
            Request::Keypad(KeypadAction::Disarm) => Command::Disarm,
            Request::Keypad(KeypadAction::Arm(mode)) => Command::Arm(mode),
            Request::Keypad(KeypadAction::Toggle) => match self.alarm.state {
                AlarmState::Disarmed => Command::Arm(self.config.alarm.toggle_mode),
                _ => Command::Disarm,
            },
        };
        // A toggle is recorded as what it did.
        let request = match command {
            Command::Disarm => Request::Keypad(KeypadAction::Disarm),
            Command::Arm(mode) => Request::Keypad(KeypadAction::Arm(mode)),
            Command::Trigger | Command::Panic => request,
        };
        if let Command::Arm(mode) = command {
            if !self.config.alarm.modes.contains(&mode) {
                tracing::warn!(
                    source,
                    mode = mode.as_str(),
                    "refusing a mode that alarm.modes does not list"
                );
                return Answer::NotReady;
            }
        }
        // Changing the mode of an armed (or arming) alarm passes through a weaker state (an
        // exit delay, or a mode with fewer zones): it takes a code that may disarm.
        let lowers_protection = matches!(command, Command::Disarm)
            || (matches!(command, Command::Arm(_)) && self.alarm.state != AlarmState::Disarmed);
        if code.is_none() && !lowers_protection && !self.config.alarm.code_arm_required {
            return self.change(command, None, source, request, now).await;
        }
        if let Err(locked) = self.lockouts.check(source, now) {
            tracing::info!(source, until = %locked.until, "refused without checking: locked out");
            return Answer::LockedOut;
        }
        let Some(code) = code else {
            return self.refuse(source, now, None, "no_code").await;
        };
        let (user, credential) = match self.identify(&code).await {
            Ok(Some(found)) => found,
            Ok(None) => return self.refuse(source, now, None, "wrong_code").await,
            Err(Lookup::Malformed) => {
                return self.refuse(source, now, None, "malformed_code").await
            }
            // Not the person's fault: refused, but not counted toward the lockout.
            Err(Lookup::Internal) => return Answer::InvalidCode,
        };
        let what = if lowers_protection {
            Use::Disarm
        } else {
            Use::Arm
        };
        if let Err(reason) = user.check(what, now, &self.tz) {
            return self
                .refuse(source, now, Some((&user, reason.as_str())), "")
                .await;
        }
        self.change(command, Some((user, credential)), source, request, now)
            .await
    }

    /// One Argon2id computation (off the runtime) and one lookup.
    async fn identify(&self, code: &TypedCode) -> Result<Option<(User, Credential)>, Lookup> {
        let c = &self.config.codes;
        let code = code
            .parse(c.min_length, c.max_length)
            .map_err(|_| Lookup::Malformed)?;
        let keyer = self.keyer.clone();
        let store = self.store.clone();
        blocking(move || store.credential_by_key(&keyer.key(&code)))
            .await
            .map_err(|e| {
                tracing::error!("cannot look up a code: {e}");
                Lookup::Internal
            })
    }

    /// A refused attempt: an `invalid_code` or `denied` event, and one more failure.
    async fn refuse(
        &mut self,
        source: &str,
        now: Timestamp,
        denied: Option<(&User, &str)>,
        why: &str,
    ) -> Answer {
        let mut events = Vec::new();
        match denied {
            Some((user, reason)) => {
                tracing::info!(
                    source,
                    user = user.name,
                    reason,
                    "code refused by its rules"
                );
                events.push(
                    Event::new(EventType::Denied, now)
                        .source(source)
                        .about(user)
                        .reason(reason),
                );
            }
            None => {
                tracing::info!(source, why, "invalid code");
                events.push(
                    Event::new(EventType::InvalidCode, now)
                        .source(source)
                        .reason(why),
                );
            }
        }
        events.extend(self.count_failure(source, now));
        self.record(Change {
            events,
            meta: vec![(LOCKOUTS, self.lockouts.to_json())],
            ..Change::default()
        })
        .await;
        Answer::InvalidCode
    }

    /// One more failure for `source`; the `lockout` event when it starts a lockout.
    fn count_failure(&mut self, source: &str, now: Timestamp) -> Option<Event> {
        let locked = self.lockouts.record_failure(source, now)?;
        tracing::warn!(source, until = %locked.until, "locked out after repeated wrong codes");
        let mut event = Event::new(EventType::Lockout, now).source(source);
        event.until = Some(locked.until);
        Some(event)
    }

    /// Applies an accepted command to the alarm, durably, and queues what to publish.
    async fn change(
        &mut self,
        command: Command,
        user: Option<(User, Credential)>,
        source: &str,
        request: Request,
        now: Timestamp,
    ) -> Answer {
        let duress_code = matches!(user, Some((_, Credential::Duress)));
        let user = user.map(|(user, _)| user);
        let before = (
            self.alarm.clone(),
            self.attributes.clone(),
            self.last_user.clone(),
            self.notify.clone(),
            self.lockouts.clone(),
        );
        let outcome = self.alarm.handle(command, now, &self.timings);
        let mut change = Change::default();
        let answer = match outcome {
            Outcome::Changed(transitions) => {
                if command == Command::Panic {
                    let panic = Event::new(EventType::Panic, now).source(source);
                    change.events.push(panic);
                }
                if let Some(user) = &user {
                    if (user.role == Role::Duress || duress_code) && command == Command::Disarm {
                        // Silent: only this event tells; state, attributes (with the person's
                        // own name), the use count and the keypad's reply are those of any
                        // disarm.
                        change
                            .events
                            .push(duress_event(user, duress_code, source, now));
                    }
                    self.last_user = Some(user.name.clone());
                    let mut used = user.clone();
                    used.uses += 1;
                    change.put_users.push(used);
                    // Only a code that changed something restarts the doubling; no success
                    // erases a failure (DESIGN 4).
                    self.lockouts.record_success(source);
                    change.meta.push((LOCKOUTS, self.lockouts.to_json()));
                }
                self.notify = user.as_ref().and_then(|u| u.notify.clone());
                self.attributes = Attributes {
                    user: user.as_ref().map(|u| u.name.clone()),
                    user_id: user.as_ref().map(|u| u.id.clone()),
                    source: Some(source.to_owned()),
                    action: Some(request.word().to_owned()),
                    at: Some(now),
                    target_state: Some(self.target_state().as_str().to_owned()),
                    delay_s: self.alarm.seconds_left(now).unwrap_or(0),
                };
                change.events.extend(self.transition_events(&transitions));
                // The new state, its events, the use count and the lockouts in one commit
                // (DESIGN 2b): a power cut keeps all of them or none. If it fails, nothing
                // happened.
                change.meta.push((ALARM_STATE, self.next_saved()));
                if let Err(e) = self.commit(change).await {
                    tracing::error!(error = %e, "cannot record a change of the alarm: refused");
                    (
                        self.alarm,
                        self.attributes,
                        self.last_user,
                        self.notify,
                        self.lockouts,
                    ) = before;
                    self.generation -= 1;
                    return Answer::NotReady;
                }
                self.save_state_file().await;
                self.queue_states(&transitions);
                self.queue_panel_status();
                Answer::Accepted
            }
            Outcome::Unchanged => Answer::Accepted,
            Outcome::AlreadyDisarmed => Answer::AlreadyDisarmed,
            Outcome::NotReady => Answer::NotReady,
            Outcome::TriggerIgnored => {
                // Unauthenticated input: at most one logged event per source every 10 s, so
                // a flood cannot wear the SD card or push real entries out of the log.
                let key = format!("{source} {}", self.alarm.state.as_str());
                let recent = self
                    .ignored_triggers
                    .get(&key)
                    .is_some_and(|last| now.duration_since(*last).as_secs() < 10);
                if recent {
                    tracing::debug!(source, "trigger ignored (not logged again)");
                } else {
                    self.ignored_triggers.insert(key, now);
                    let event = Event::new(EventType::TriggerIgnored, now)
                        .source(source)
                        .reason(self.alarm.state.as_str());
                    change.events.push(event);
                    self.record(change).await;
                }
                Answer::Accepted
            }
        };
        let state = self.alarm.state.as_str();
        let answer_word = answer.as_str();
        match &user {
            Some(user) => tracing::info!(
                source,
                user = user.name,
                answer = answer_word,
                state,
                "{}",
                request.word()
            ),
            None => tracing::info!(source, answer = answer_word, state, "{}", request.word()),
        }
        answer
    }

    /// The state the current change leads to (the armed mode while arming).
    fn target_state(&self) -> AlarmState {
        match (self.alarm.state, self.alarm.mode) {
            (AlarmState::Arming, Some(mode)) => mode.state(),
            (state, _) => state,
        }
    }

    /// Deadlines that have passed: exit delay over, entry delay over, siren time over.
    async fn on_deadline(&mut self, now: Timestamp) {
        let transitions = self.alarm.advance(now, &self.timings);
        if transitions.is_empty() {
            return;
        }
        let events = self.transition_events(&transitions);
        // Time has passed whatever the disk says: a siren must not wait for a failing SD
        // card. The state is published even if saving it failed (the error is logged), so
        // Home Assistant still sees the alarm.
        let saved = self.next_saved();
        self.record(Change {
            events,
            meta: vec![(ALARM_STATE, saved)],
            ..Change::default()
        })
        .await;
        self.save_state_file().await;
        self.queue_states(&transitions);
        self.queue_panel_status();
        self.flush().await;
    }

    fn transition_events(&self, transitions: &[Transition]) -> Vec<Event> {
        transitions
            .iter()
            .map(|t| {
                let event_type = match t.to {
                    AlarmState::Disarmed => EventType::Disarmed,
                    AlarmState::Arming => EventType::Arming,
                    AlarmState::ArmedHome => EventType::ArmedHome,
                    AlarmState::ArmedAway => EventType::ArmedAway,
                    AlarmState::ArmedNight => EventType::ArmedNight,
                    AlarmState::ArmedVacation => EventType::ArmedVacation,
                    AlarmState::Pending => EventType::Pending,
                    AlarmState::Triggered => EventType::Triggered,
                };
                let mut event = Event::new(event_type, t.at);
                event.user = self.attributes.user.clone();
                event.user_id = self.attributes.user_id.clone();
                event.source = self.attributes.source.clone();
                event.notify = self.notify.clone();
                if let Some(delay) = t.delay_s {
                    event.delay_s = Some(delay);
                    event.target_state = Some(match t.to {
                        AlarmState::Pending => "triggered".to_owned(),
                        _ => self.target_state().as_str().to_owned(),
                    });
                }
                event
            })
            .collect()
    }

    /// The alarm state as saved, with the next save counter.
    fn next_saved(&mut self) -> Vec<u8> {
        self.generation += 1;
        let saved = Saved {
            alarm: self.alarm.clone(),
            attributes: self.attributes.clone(),
            last_user: self.last_user.clone(),
            notify: self.notify.clone(),
            generation: self.generation,
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// Writes the alarm-state file beside the store, after the store's copy is committed. If
    /// it fails, the store's newer copy is what the next start uses (the error is logged).
    async fn save_state_file(&self) {
        let saved = Saved {
            alarm: self.alarm.clone(),
            attributes: self.attributes.clone(),
            last_user: self.last_user.clone(),
            notify: self.notify.clone(),
            generation: self.generation,
        };
        let store = self.store.clone();
        if let Err(e) = blocking(move || store.save_alarm(&saved)).await {
            tracing::error!(error = %e, "cannot write the alarm-state file (the store keeps the state)");
        }
    }

    /// Commits a change durably, then queues its events (and the roster, when a user
    /// changed).
    async fn commit(&mut self, change: Change) -> Result<(), crate::store::StoreError> {
        let users_changed = !change.put_users.is_empty();
        let store = self.store.clone();
        let events = blocking(move || store.commit(change)).await?;
        for event in events {
            let topic = self.topics.event.clone();
            self.push(topic, event.to_json(), false);
        }
        if users_changed {
            self.queue_roster().await;
        }
        Ok(())
    }

    /// Commits a change of what already happened; if the store refuses it, the error is
    /// logged and the events still go out, without a place in the activity log.
    async fn record(&mut self, change: Change) {
        if change.events.is_empty() && change.put_users.is_empty() && change.meta.is_empty() {
            return;
        }
        let events_copy = change.events.clone();
        if let Err(e) = self.commit(change).await {
            tracing::error!(error = %e, "cannot record a change in the store");
            for event in events_copy {
                let topic = self.topics.event.clone();
                self.push(topic, event.to_json(), false);
            }
        }
    }

    /// The states passed through (several when deadlines were caught up, e.g. pending,
    /// triggered, armed after a long stop: a siren automation must see `triggered`), then the
    /// current state with its attributes.
    fn queue_states(&mut self, transitions: &[Transition]) {
        if let Some((_, passed)) = transitions.split_last() {
            for t in passed {
                self.push(self.topics.alarm_state.clone(), t.to.as_str(), true);
            }
        }
        self.queue_state();
    }

    fn queue_state(&mut self) {
        let t = self.topics.clone();
        self.push(t.alarm_state, self.alarm.state.as_str(), true);
        let attributes = serde_json::to_string(&self.attributes).unwrap_or_default();
        self.push(t.alarm_attributes, attributes, true);
        if let Some(name) = self.last_user.clone() {
            self.push(t.alarm_last_user, name, true);
        }
    }

    fn queue_panel_status(&mut self) {
        let now = Timestamp::now();
        let status = zigbee2mqtt::panel_status(self.alarm.state, self.alarm.seconds_left(now));
        let topics: Vec<String> = self
            .config
            .keypads
            .iter()
            .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt)
            .map(|k| Topics::zigbee2mqtt_set(&k.topic))
            .collect();
        for topic in topics {
            self.push(topic, status.clone(), false);
        }
    }

    fn queue_discovery(&mut self) {
        if !self.config.homeassistant.discovery {
            return;
        }
        for d in homeassistant::discovery(&self.config, &self.topics) {
            self.push(d.topic, d.payload.to_string(), true);
        }
    }

    async fn queue_roster(&mut self) {
        let store = self.store.clone();
        match blocking(move || store.users()).await {
            Ok(users) => {
                let roster: Vec<_> = users.iter().map(User::roster_entry).collect();
                let payload = json!({ "users": roster }).to_string();
                self.push(self.topics.config_users.clone(), payload, true);
            }
            Err(e) => tracing::error!("cannot read the users for the roster: {e}"),
        }
    }

    async fn on_config_set(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let result = self.config_command(payload).await;
        self.push(self.topics.config_result.clone(), result.to_string(), false);
        // No code may linger on the broker: clear the (possibly retained) command.
        self.push(self.topics.config_set.clone(), Vec::new(), true);
    }

    async fn config_command(&mut self, payload: &[u8]) -> Value {
        let request = match admin::parse(payload) {
            Ok(request) => request,
            Err((partial, error)) => {
                tracing::warn!(kind = error.kind(), "refused a command: {error}");
                return admin::failure(&partial, &error);
            }
        };
        // Who is asking comes first: nothing about an id or its stored result (not even
        // whether it was used) reaches a sender who is not authorised.
        let outcome = match self.authorise(&request).await {
            Ok(authority) => match self.replay(&request).await {
                Ok(Some(result)) => return result,
                Ok(None) => self.apply_command(&request, authority).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match outcome {
            // No success resets the admin channel's failures: they expire with
            // `lockout.window_s`. Otherwise an admin could alternate guesses of the master's
            // code (wrong `auth`, `duplicate_code`) with commands of their own, forever.
            Ok(result) => result,
            Err(error) => {
                if let CommandError::DuplicateCode(_) = error {
                    // Each answer says whether a code exists: count it like a wrong code,
                    // or the admin channel would be an unlimited code-guessing oracle.
                    let lockout = self.count_failure(admin::SOURCE, Timestamp::now());
                    self.record(Change {
                        events: lockout.into_iter().collect(),
                        meta: vec![(LOCKOUTS, self.lockouts.to_json())],
                        ..Change::default()
                    })
                    .await;
                }
                tracing::info!(
                    id = request.id,
                    command = request.command,
                    kind = error.kind(),
                    "command refused: {error}"
                );
                admin::failure(&request.partial(), &error)
            }
        }
    }

    /// The stored result of an id already applied, for an authorised sender. The fingerprint
    /// leaves out every code field: comparing it can never tell whether a guessed code is
    /// the one a command carried. The same command with another code is therefore replayed,
    /// not applied (the result says `replayed`: a new code needs a new id).
    async fn replay(&mut self, request: &admin::Request) -> Result<Option<Value>, CommandError> {
        let store = self.store.clone();
        let id = request.id.clone();
        let Some(stored) = blocking(move || store.applied(&id)).await? else {
            return Ok(None);
        };
        let fingerprint = self.keyer.digest(&request.fingerprint_input()).to_hex();
        if stored["fingerprint"].as_str() != Some(fingerprint.as_str()) {
            return Err(CommandError::InvalidField(
                "this id was already used for another command; use a new id".into(),
            ));
        }
        tracing::info!(
            id = request.id,
            "command already applied: re-publishing its result"
        );
        let mut result = stored["result"].clone();
        if let Value::Object(map) = &mut result {
            map.insert("replayed".into(), json!(true));
        }
        Ok(Some(result))
    }

    /// Who the command acts for: `auth` checked like a keypad code, against the `admin` lockout.
    async fn authorise(&mut self, request: &admin::Request) -> Result<Authority, CommandError> {
        let now = Timestamp::now();
        // Every path, `trust_broker` included: `duplicate_code` answers count as failures.
        if let Err(locked) = self.lockouts.check(admin::SOURCE, now) {
            return Err(CommandError::LockedOut(format!(
                "too many wrong codes: commands are refused until {}",
                locked.until
            )));
        }
        let Some(auth) = &request.auth else {
            if self.config.admin.trust_broker {
                return Ok(Authority::Broker);
            }
            // Answered from memory: a flood of commands without `auth` costs no store read.
            if request.is_master_bootstrap() && !self.has_master {
                return Ok(Authority::Bootstrap);
            }
            return Err(CommandError::Unauthorized(
                "`auth` is required: the code of the master or of an admin".into(),
            ));
        };
        let refused = match self.identify(auth).await {
            Ok(Some((user, credential))) => match user.check(Use::Manage, now, &self.tz) {
                Ok(()) => {
                    if credential == Credential::Duress {
                        // Coerced into managing codes: it works as their code, and tells.
                        let event = duress_event(&user, true, admin::SOURCE, now);
                        self.record(Change {
                            events: vec![event],
                            ..Change::default()
                        })
                        .await;
                    }
                    return Ok(Authority::User(Box::new(user)));
                }
                Err(reason) => Some((user, reason.as_str())),
            },
            Ok(None) | Err(Lookup::Malformed) => None,
            Err(Lookup::Internal) => {
                return Err(CommandError::Internal(
                    "the code could not be checked; see the daemon's log".into(),
                ))
            }
        };
        let answer = match &refused {
            Some((user, reason)) => {
                self.refuse(admin::SOURCE, now, Some((user, reason)), "")
                    .await
            }
            None => self.refuse(admin::SOURCE, now, None, "wrong_code").await,
        };
        debug_assert_eq!(answer, Answer::InvalidCode);
        Err(CommandError::Unauthorized(
            "`auth` is not the code of an active master or admin".into(),
        ))
    }

    async fn apply_command(
        &mut self,
        request: &admin::Request,
        authority: Authority,
    ) -> Result<Value, CommandError> {
        let fingerprint = self.keyer.digest(&request.fingerprint_input()).to_hex();
        let store = self.store.clone();
        let keyer = self.keyer.clone();
        let codes = self.config.codes.clone();
        let req = request.clone();
        // Hashing a new code and reading the store block: off the runtime.
        let applied = blocking(move || {
            let ctx = admin::Context {
                store: &store,
                keyer: &keyer,
                min_length: codes.min_length,
                max_length: codes.max_length,
                now: Timestamp::now(),
            };
            admin::apply(&ctx, &req, &authority)
        })
        .await?;
        let Some(mut change) = applied.change else {
            return Ok(applied.result);
        };
        let stored = json!({"fingerprint": fingerprint, "result": applied.result});
        change.applied = Some((request.id.clone(), stored));
        let store = self.store.clone();
        let events = blocking(move || store.commit(change)).await?;
        tracing::info!(
            id = request.id,
            command = request.command,
            "command applied"
        );
        if request.is_master_bootstrap() {
            self.has_master = true;
        }
        for event in events {
            self.push(self.topics.event.clone(), event.to_json(), false);
        }
        self.queue_roster().await;
        Ok(applied.result)
    }
}

/// Runs blocking work (Argon2, sled, fsync) off the runtime; a panic there becomes an error.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<crate::store::StoreError>,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(E::from(crate::store::StoreError::Task(e.to_string()))),
    }
}

/// The silent `duress` event. A person's own duress code (DESIGN 10a) names them but carries no
/// `notify`: the coerced person's phone may be in the intruder's hands.
fn duress_event(user: &User, own_duress_code: bool, source: &str, now: Timestamp) -> Event {
    let mut event = Event::new(EventType::Duress, now)
        .source(source)
        .about(user);
    if own_duress_code {
        event.notify = None;
    }
    event
}

/// The saved alarm state: the newer of the store's copy and the file beside it. A damaged or
/// missing file is not fatal while the store has its copy (it is committed first).
fn load_saved(store: &Store) -> anyhow::Result<Option<Saved>> {
    let copy: Option<Saved> = match store.meta(ALARM_STATE)? {
        Some(bytes) => match serde_json::from_slice(&bytes) {
            Ok(saved) => Some(saved),
            Err(e) => {
                tracing::warn!(error = %e, "the store's copy of the alarm state is unreadable; using the alarm-state file");
                None
            }
        },
        None => None,
    };
    let file = store.load_alarm::<Saved>();
    Ok(match (file, copy) {
        (Ok(Some(file)), Some(copy)) if copy.generation > file.generation => {
            tracing::warn!("the alarm-state file is older than the store's copy (a power cut between the two writes): using the store's");
            Some(copy)
        }
        (Ok(Some(file)), _) => Some(file),
        (Ok(None), copy) => copy,
        (Err(e), Some(copy)) => {
            tracing::warn!(error = %e, "using the store's copy of the alarm state");
            Some(copy)
        }
        (Err(e), None) => return Err(e.into()),
    })
}

/// The bridge-state topic of every Zigbee2MQTT instance that has a keypad, taking the first
/// level of the keypad's topic as Zigbee2MQTT's base topic (`zigbee2mqtt/Hall keypad` →
/// `zigbee2mqtt/bridge/state`).
fn zigbee2mqtt_bridges(config: &Config) -> Vec<String> {
    let mut bridges: Vec<String> = config
        .keypads
        .iter()
        .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt)
        .filter_map(|k| k.topic.split('/').next())
        .map(|base| format!("{base}/bridge/state"))
        .collect();
    bridges.sort();
    bridges.dedup();
    bridges
}

/// Reads `B/alarm/set`: `{"action": "DISARM", "code": "1234"}` or the bare action.
fn parse_alarm_set(payload: &[u8]) -> Result<(Request, Option<TypedCode>), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_owned())?;
    let parsed = crate::codes::WipedJson::parse(text.as_bytes());
    // Borrowed, not copied: a misconfigured sender may put the code in `action`.
    let (action, code): (&str, _) = match parsed.as_ref().map(|v| &v.0) {
        Ok(Value::Object(map)) => {
            let action = match map.get("action") {
                Some(Value::String(a)) => a.as_str(),
                _ => return Err("`action` must be a string".into()),
            };
            let code = match map.get("code") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) if c.is_empty() || c == "None" => None,
                Some(Value::String(c)) => Some(TypedCode::Text(c.clone())),
                Some(_) => Some(TypedCode::NotText),
            };
            (action, code)
        }
        Ok(Value::String(action)) => (action.as_str(), None),
        _ => (text.trim(), None),
    };
    let is = |word: &str| action.eq_ignore_ascii_case(word);
    let request = match () {
        () if is("ARM_AWAY") => Request::Keypad(KeypadAction::Arm(ArmMode::ArmedAway)),
        () if is("ARM_HOME") => Request::Keypad(KeypadAction::Arm(ArmMode::ArmedHome)),
        () if is("ARM_NIGHT") => Request::Keypad(KeypadAction::Arm(ArmMode::ArmedNight)),
        () if is("ARM_VACATION") => Request::Keypad(KeypadAction::Arm(ArmMode::ArmedVacation)),
        () if is("DISARM") => Request::Keypad(KeypadAction::Disarm),
        () if is("TRIGGER") => Request::Trigger,
        () => {
            // The text is not echoed: a malformed payload may hold a code.
            return Err(format!(
                "unknown action ({} characters); expected ARM_AWAY, ARM_HOME, ARM_NIGHT, \
                 ARM_VACATION, DISARM or TRIGGER",
                action.chars().count()
            ));
        }
    };
    Ok((request, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Nothing on `B/alarm/set` panics the reader.
        #[test]
        fn any_bytes_on_the_alarm_command_topic_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_alarm_set(&bytes);
        }
    }

    #[test]
    fn an_unknown_action_is_not_echoed_because_it_may_hold_a_code() {
        let why = parse_alarm_set(b"DISARM 4711").unwrap_err();
        assert!(!why.contains("4711"), "{why}");
    }

    #[test]
    fn home_assistant_remote_code_payloads_are_read() {
        let (r, code) = parse_alarm_set(br#"{"action":"DISARM","code":"0042"}"#).unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Disarm));
        assert_eq!(code, Some(TypedCode::Text("0042".into())));
        let (r, code) = parse_alarm_set(br#"{"action":"ARM_HOME","code":"None"}"#).unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Arm(ArmMode::ArmedHome)));
        assert_eq!(code, None);
        let (r, code) = parse_alarm_set(b"ARM_AWAY").unwrap();
        assert_eq!(r, Request::Keypad(KeypadAction::Arm(ArmMode::ArmedAway)));
        assert_eq!(code, None);
        assert_eq!(parse_alarm_set(b"TRIGGER").unwrap().0, Request::Trigger);
        assert!(parse_alarm_set(b"OPEN_SESAME").is_err());
        assert!(parse_alarm_set(&[0xff]).is_err());
    }
}
