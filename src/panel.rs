//! The panel: every decision about the alarm, without I/O (rumqttc's `state.rs` beside its
//! `eventloop.rs`). It owns the alarm, the lockouts, the attributes and last user, the Zigbee
//! transaction memory and the trigger rate limit; time is passed in.
//!
//! Identifying a code takes an Argon2id computation the panel cannot do itself, so an attempt
//! is decided in two steps: [`Panel::begin`] answers at once ([`Step::Done`]) or asks for the
//! code to be identified ([`Step::Identify`]); the loop computes the lookup key off the runtime
//! and hands the user found to [`Panel::finish`]. [`Panel::tick`] applies the deadlines that
//! passed. Each [`Decision`] lists what the loop must do, in order: commit its [`Change`] (the
//! events, use counts, lockouts and alarm state of one change, durable together), write the
//! alarm-state file, then send the reply, the events and the other publishes. If the commit of
//! an alarm change fails, [`Panel::store_failed`] undoes it and gives the refusal instead:
//! nothing is acknowledged that is not on disk.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::alarm::{Alarm, AlarmState, ArmMode, Command, Outcome, Timings, Transition};
use crate::codes::Code;
use crate::config::{Config, KeypadConfig, KeypadProtocol};
use crate::events::{Event, EventType, Source};
use crate::keypad::homeassistant::{self, Request};
use crate::keypad::{
    self, json as json_keypad, zigbee2mqtt, Answer, KeypadAction, KeypadInput, Parsed, TypedCode,
};
use crate::lockout::{Locked, LockoutRules, Lockouts};
use crate::store::{Change, StoreError};
use crate::topics::Topics;
use crate::users::{Credential, DenyReason, Role, Use, User};

/// How long a Zigbee2MQTT `(keypad, transaction)` is remembered: a keypad repeats a request
/// that got no reply, and the repeat must not be applied twice.
pub const TRANSACTION_MEMORY: Duration = Duration::from_secs(10);
/// At most this many commands that give someone a code, per `lockout.window_s`. Each answer
/// says whether the code was free (`duplicate_code` or not), so an admin setting codes on a
/// user of their own would otherwise sweep the master's 4-digit code in minutes.
pub const CODE_SETS_PER_WINDOW: usize = 30;
/// At most one `trigger_ignored` event per source and state in this time.
const IGNORED_TRIGGER_QUIET_S: i64 = 10;
/// The `meta` key of the store's copy of the alarm state, committed with the events, use
/// counts and lockouts of the same change (the file beside the store follows it).
pub const ALARM_STATE: &str = "alarm_state";
/// The `meta` key marking a running `learn_tag` (empty when none): a learning survives
/// nothing, and one that a restart cut short is told as `tag_learn_expired`.
pub const TAG_LEARNING: &str = "tag_learning";

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
    /// `"tag"` when the change was made with a tag (DESIGN 10b); never the tag itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The saved alarm state: the state machine, the last change and the last user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub alarm: Alarm,
    pub attributes: Attributes,
    pub last_user: Option<String>,
    /// The `notify` of the person named in `attributes`, for the events of timed transitions.
    #[serde(default)]
    pub notify: Option<String>,
    /// Counts saves: of the store's copy and the file, the higher one is the newer.
    #[serde(default)]
    pub generation: u64,
}

impl Saved {
    /// The newer of the alarm-state file and the store's copy (committed first, so a power
    /// cut between the two leaves the file older). A damaged or missing file is not fatal
    /// while the store's copy is readable.
    pub fn newest(
        file: Result<Option<Saved>, StoreError>,
        copy: Option<Vec<u8>>,
    ) -> Result<Option<Saved>, StoreError> {
        let copy: Option<Saved> = copy.and_then(|bytes| match serde_json::from_slice(&bytes) {
            Ok(saved) => Some(saved),
            Err(e) => {
                tracing::warn!(error = %e, "the store's copy of the alarm state is unreadable; using the alarm-state file");
                None
            }
        });
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
            (Err(e), None) => return Err(e),
        })
    }

    pub fn new(now: Timestamp) -> Saved {
        Saved {
            alarm: Alarm::new(now),
            attributes: Attributes::default(),
            last_user: None,
            notify: None,
            generation: 0,
        }
    }
}

/// The rules of the `alarm:` and `codes:` config sections that decisions need.
#[derive(Clone, Debug)]
pub struct Rules {
    pub modes: Vec<ArmMode>,
    pub code_arm_required: bool,
    pub toggle_mode: ArmMode,
    pub min_length: usize,
    pub max_length: usize,
    pub timings: Timings,
    pub tz: TimeZone,
    /// `tags.disarm`: whether a tag may disarm (DESIGN 10b).
    pub tags_disarm: bool,
}

impl Rules {
    pub fn from_config(config: &Config, tz: TimeZone) -> Rules {
        let a = &config.alarm;
        Rules {
            modes: a.modes.clone(),
            code_arm_required: a.code_arm_required,
            toggle_mode: a.toggle_mode,
            min_length: config.codes.min_length,
            max_length: config.codes.max_length,
            timings: Timings::new(
                |mode| a.exit_delay_s.get(mode),
                a.entry_delay_s,
                a.trigger_time_s,
            ),
            tz,
            tags_disarm: config.tags.disarm,
        }
    }
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Publish {
    fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>, retain: bool) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            retain,
        }
    }
}

/// What the loop must do for one input, in order.
#[derive(Debug, Default)]
pub struct Decision {
    /// Committed first; its events are published once they have their `seq`.
    pub change: Change,
    /// An alarm change: if the commit fails, give the decision to [`Panel::store_failed`]
    /// instead of publishing it. Otherwise (a refusal, a timed transition: something that
    /// already happened) it is published anyway.
    pub must_commit: bool,
    /// Replace the alarm-state file after the commit.
    pub save_state: bool,
    /// The answer to the keypad, sent before anything else.
    pub reply: Option<Publish>,
    /// After the events: states, attributes, last user, panel status.
    pub publish: Vec<Publish>,
    /// How the attempt was answered (for the log and the tests).
    pub answer: Option<Answer>,
    undo: Option<Box<Undo>>,
    /// Who should get a reply if the store refuses the change.
    reply_to: Option<ReplyTo>,
}

impl Decision {
    fn answered(answer: Answer) -> Decision {
        Decision {
            answer: Some(answer),
            ..Decision::default()
        }
    }
}

/// Why a code was refused: it is nobody's (an `invalid_code` event), or its person's rules
/// refuse it now (a `denied` event naming them).
#[derive(Clone, Copy, Debug)]
pub enum Refused<'a> {
    Invalid(Invalid),
    Denied(&'a User, DenyReason),
}

/// The `reason` of an `invalid_code` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A request that needs a code came without one.
    NoCode,
    /// Not a code by the format rules (letters, too short or long).
    MalformedCode,
    /// Well-formed, and nobody's.
    WrongCode,
    /// A tag nobody has (or no reader could give).
    UnknownTag,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::NoCode => "no_code",
            Invalid::MalformedCode => "malformed_code",
            Invalid::WrongCode => "wrong_code",
            Invalid::UnknownTag => "unknown_tag",
        }
    }
}

/// The first step of an attempt.
#[derive(Debug)]
pub enum Step {
    Done(Box<Decision>),
    /// Compute the code's lookup key, find its user, then call [`Panel::finish`].
    Identify(Pending, Code),
}

/// The result of identifying a code: the user and which of their secrets it was, nobody, or
/// a store that failed (not the person's fault: refused, not counted).
pub type Found = Result<Option<(User, Credential)>, ()>;

/// A code identified, with what a learning needs: when [`Panel::learning_for`] named a user
/// and the code was nobody's, that user and the code's lookup key.
#[derive(Debug)]
pub struct Identified {
    pub found: Found,
    pub learner: Option<(User, crate::codes::LookupKey)>,
}

/// An attempt waiting for its code to be identified.
#[derive(Debug)]
pub struct Pending {
    source: Source,
    command: Command,
    request: Request,
    lowers_protection: bool,
    reply_to: ReplyTo,
    /// A tag rather than a code (DESIGN 10b).
    tag: bool,
}

/// A running `learn_tag` (DESIGN 10b): the next unknown tag presented before `until` (at
/// `keypad`, or any) is bound to the user. Kept in memory only: a learning survives nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Learning {
    pub user_id: String,
    pub user: String,
    /// A keypad's `name`; `None` = any keypad.
    pub keypad: Option<String>,
    pub until: Timestamp,
    /// Who started it (name, id), for the `tag_added` event.
    pub by: Option<(String, String)>,
}

/// Where the answer to an attempt goes.
#[derive(Clone, Debug)]
enum ReplyTo {
    HomeAssistant,
    Keypad {
        name: String,
        protocol: KeypadProtocol,
        topic: String,
        action: KeypadAction,
        transaction: Option<u8>,
        /// The Zigbee exchange to remember the reply under.
        exchange: Option<Exchange>,
    },
}

/// One Zigbee2MQTT exchange: the keypad, its transaction number and a keyed digest of what
/// was asked (action and code), so that only a true repeat gets the remembered reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Exchange {
    keypad: String,
    transaction: u8,
    request: u64,
}

/// What an alarm change replaced, to put back if the store refuses it.
#[derive(Debug)]
struct Undo {
    alarm: Alarm,
    attributes: Attributes,
    last_user: Option<String>,
    notify: Option<String>,
    lockouts: Lockouts,
    generation: u64,
}

pub struct Panel {
    rules: Rules,
    topics: Topics,
    /// `<topic>/set` of every Zigbee2MQTT keypad, for the panel status.
    zigbee2mqtt_sets: Vec<String>,
    alarm: Alarm,
    attributes: Attributes,
    last_user: Option<String>,
    notify: Option<String>,
    generation: u64,
    lockouts: Lockouts,
    transactions: zigbee2mqtt::Replies<Exchange>,
    /// Keys the in-memory digests of keypad requests (never stored, never sent).
    digest_keys: std::collections::hash_map::RandomState,
    /// When each source last had a `trigger_ignored` event recorded, per alarm state.
    ignored_triggers: HashMap<(String, AlarmState), Timestamp>,
    quiet: Quiet,
    /// Each actor's ration of commands that give someone a code.
    code_sets: HashMap<String, Ration>,
    window_s: u64,
    learning: Option<Learning>,
    /// `<base>/bridge/state` of each Zigbee2MQTT instance with a keypad: when it comes back
    /// online, the keypads get the panel status again (Linkind and Hive keypads blink an
    /// error until they do; Zigbee2MQTT issues #6242, #8997).
    bridges: Vec<String>,
    /// When the panel status was last re-sent for a bridge: a flood of `online` must not
    /// turn into a flood of publishes.
    last_panel_status: Option<Instant>,
}

impl Panel {
    /// The panel as the store left it: the saved alarm state (or a disarmed one) and the
    /// lockouts, which survive a restart (cutting the power must not give a guesser a fresh
    /// count).
    pub fn restore(
        config: &Config,
        tz: TimeZone,
        topics: Topics,
        saved: Option<Saved>,
        lockouts: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Panel {
        let rules = LockoutRules::from_config(&config.lockout);
        Panel::new(
            Rules::from_config(config, tz),
            topics,
            &config.keypads,
            saved.unwrap_or_else(|| Saved::new(now)),
            Lockouts::restore(rules, lockouts.as_deref()),
        )
    }

    pub fn new(
        rules: Rules,
        topics: Topics,
        keypads: &[KeypadConfig],
        saved: Saved,
        lockouts: Lockouts,
    ) -> Panel {
        Panel {
            rules,
            topics,
            zigbee2mqtt_sets: keypads
                .iter()
                .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt)
                .map(|k| Topics::zigbee2mqtt_set(&k.topic))
                .collect(),
            alarm: saved.alarm,
            attributes: saved.attributes,
            last_user: saved.last_user,
            notify: saved.notify,
            generation: saved.generation,
            transactions: zigbee2mqtt::Replies::new(TRANSACTION_MEMORY),
            digest_keys: std::collections::hash_map::RandomState::new(),
            ignored_triggers: HashMap::new(),
            code_sets: HashMap::new(),
            quiet: Quiet::default(),
            window_s: rules_window_s(&lockouts),
            lockouts,
            learning: None,
            bridges: Topics::zigbee2mqtt_bridges(keypads),
            last_panel_status: None,
        }
    }

    /// A command from `actor` (a user id, `broker` or `bootstrap`) that gives someone a code
    /// (see [`CODE_SETS_PER_WINDOW`]). Each actor has a ration of their own, so an admin
    /// cannot keep the master from setting codes. Past the ration, code-setting is refused
    /// for `lockout.window_s`, twice as long each further time (up to a day). `Err` holds when
    /// the next one may come, and the `lockout` event to record when this is the first refusal.
    pub fn code_set(
        &mut self,
        actor: &str,
        now: Timestamp,
    ) -> Result<(), (Timestamp, Option<Box<Event>>)> {
        let secs = |s: u64| jiff::SignedDuration::from_secs(i64::try_from(s).unwrap_or(i64::MAX));
        let window = secs(self.window_s);
        let ration = self.code_sets.entry(actor.to_owned()).or_default();
        if let Some(until) = ration.blocked_until.filter(|&until| now < until) {
            return Err((until, None));
        }
        while ration
            .sets
            .front()
            .is_some_and(|&at| now.duration_since(at) >= window)
        {
            ration.sets.pop_front();
        }
        if ration.sets.len() < CODE_SETS_PER_WINDOW {
            ration.sets.push_back(now);
            return Ok(());
        }
        let block_s = 2u64
            .checked_pow(ration.strikes)
            .and_then(|factor| self.window_s.checked_mul(factor))
            .unwrap_or(u64::MAX)
            .min(24 * 3600);
        ration.strikes = ration.strikes.saturating_add(1);
        ration.sets.clear();
        let until = now.checked_add(secs(block_s)).unwrap_or(Timestamp::MAX);
        ration.blocked_until = Some(until);
        tracing::warn!(actor, until = %until, "too many codes set in a short time: refusing more for a while");
        let mut event = Event::new(EventType::Lockout, now)
            .source(&Source::Admin)
            .reason("too_many_codes_set");
        event.until = Some(until);
        Err((until, Some(Box::new(event))))
    }

    /// The zone validity rules and schedules are read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.rules.tz
    }

    pub fn state(&self) -> AlarmState {
        self.alarm.state
    }

    /// When the last change happened: a message is never decided before it.
    pub fn changed_at(&self) -> Timestamp {
        self.alarm.changed_at
    }

    pub fn next_deadline(&self) -> Option<Timestamp> {
        let learning = self.learning.as_ref().map(|l| l.until);
        match (self.alarm.next_deadline(), learning) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts a learning, replacing any other (one at a time).
    pub fn start_learning(&mut self, learning: Learning) {
        self.learning = Some(learning);
    }

    pub fn learning(&self) -> Option<&Learning> {
        self.learning.as_ref()
    }

    /// The user an unknown tag in `pending` would be bound to: a tag, at the learning's keypad
    /// (or any), before its end.
    pub fn learning_for(&self, pending: &Pending, now: Timestamp) -> Option<&str> {
        let learning = self.learning.as_ref()?;
        let ReplyTo::Keypad { name, .. } = &pending.reply_to else {
            return None;
        };
        let here = learning.keypad.as_ref().is_none_or(|k| k == name);
        (pending.tag && here && now < learning.until).then_some(learning.user_id.as_str())
    }

    /// The second step of an attempt, a learning included: an unknown tag while a learning
    /// runs is bound to the learning's user instead of refused.
    pub fn finish_identified(
        &mut self,
        pending: Pending,
        identified: Identified,
        now: Timestamp,
        mono: Instant,
    ) -> Decision {
        match identified {
            Identified {
                found: Ok(None),
                learner: Some((user, key)),
            } => self.finish_learned(pending, user, key, now, mono),
            Identified { found, .. } => self.finish(pending, found, now, mono),
        }
    }

    /// The unknown tag of `pending` (its lookup key `key`) is bound to `user`, the learning's
    /// user: the tag is added, the alarm does not change, and the keypad is answered as for a
    /// request that changes nothing. A user who has no room left gets the usual refusal.
    fn finish_learned(
        &mut self,
        pending: Pending,
        mut user: User,
        key: crate::codes::LookupKey,
        now: Timestamp,
        mono: Instant,
    ) -> Decision {
        if user.tags.len() >= crate::users::MAX_TAGS {
            tracing::warn!(
                user = user.name,
                "a tag to learn, but the user has 8 tags already: refused"
            );
            return self.finish(pending, Ok(None), now, mono);
        }
        let Some(learning) = self.learning.take() else {
            return self.finish(pending, Ok(None), now, mono);
        };
        let id = new_tag_id(&user);
        user.tags.push(crate::users::Tag {
            id: id.clone(),
            label: None,
            added_at: now,
            key: key.to_hex(),
        });
        user.updated_at = now;
        let mut event = Event::new(EventType::TagAdded, now)
            .source(&pending.source)
            .about(&user);
        if let Some((name, by_id)) = learning.by {
            event.by = Some(name);
            event.by_id = Some(by_id);
        }
        event.learned = Some(true);
        event.tag_id = Some(id);
        event.credential = Some("tag".to_owned());
        tracing::info!(source = %pending.source, user = user.name, "tag learned");
        let mut change = Change::default();
        change
            .put_codes
            .push((key, crate::store::code_entry(&user.id, Credential::Tag)));
        change.put_users.push(user);
        change.events.push(event);
        change.meta.push((TAG_LEARNING, Vec::new()));
        let decision = Decision {
            change,
            answer: Some(Answer::TagLearned),
            ..Decision::default()
        };
        self.answer(decision, &pending.reply_to, mono)
    }

    /// The alarm state as saved (for the alarm-state file).
    pub fn saved(&self) -> Saved {
        Saved {
            alarm: self.alarm.clone(),
            attributes: self.attributes.clone(),
            last_user: self.last_user.clone(),
            notify: self.notify.clone(),
            generation: self.generation,
        }
    }

    /// Everything retained about the alarm, all from the store: state, attributes, last user.
    pub fn state_publishes(&self) -> Vec<Publish> {
        let t = &self.topics;
        let mut out = vec![
            Publish::new(&t.alarm_state, self.alarm.state.as_str(), true),
            Publish::new(
                &t.alarm_attributes,
                serde_json::to_string(&self.attributes).unwrap_or_default(),
                true,
            ),
        ];
        // Empty while nobody ever armed: it clears what an earlier store left retained.
        let last_user = self.last_user.as_deref().unwrap_or_default();
        out.push(Publish::new(&t.alarm_last_user, last_user, true));
        out
    }

    /// The panel status for every Zigbee2MQTT keypad.
    /// A message on a Zigbee2MQTT bridge's state topic: the panel status again when it says
    /// online (at most every [`RESEND_EVERY`]). `None`: not a bridge's topic.
    pub fn bridge_state(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Timestamp,
        mono: Instant,
    ) -> Option<Vec<Publish>> {
        if !self.bridges.iter().any(|t| t == topic) {
            return None;
        }
        if !zigbee2mqtt::bridge_online(payload) || !due(&mut self.last_panel_status, mono) {
            return Some(Vec::new());
        }
        tracing::info!(topic, "Zigbee2MQTT is online: sending the panel status");
        Some(self.panel_status(now))
    }

    pub fn panel_status(&self, now: Timestamp) -> Vec<Publish> {
        let status = zigbee2mqtt::panel_status(self.alarm.state, self.alarm.seconds_left(now));
        self.zigbee2mqtt_sets
            .iter()
            .map(|topic| Publish::new(topic, status.as_str(), false))
            .collect()
    }

    /// Deadlines that passed by `now`: exit delay over, entry delay over, siren time over.
    /// Time has passed whatever the disk says: the decision is published even if its commit
    /// fails (a siren must not wait for a failing SD card).
    pub fn tick(&mut self, now: Timestamp) -> Option<Decision> {
        let expired = self.learning.as_ref().is_some_and(|l| now >= l.until);
        let expired = expired
            .then(|| self.learning.take())
            .flatten()
            .map(|l| learn_expired(&l, now));
        let transitions = self.alarm.advance(now, &self.rules.timings);
        if transitions.is_empty() {
            return expired.map(|event| Decision {
                change: Change {
                    events: vec![event],
                    meta: vec![(TAG_LEARNING, Vec::new())],
                    ..Change::default()
                },
                ..Decision::default()
            });
        }
        let mut change = Change {
            events: self.transition_events(&transitions),
            ..Change::default()
        };
        if let Some(event) = expired {
            change.events.push(event);
            change.meta.push((TAG_LEARNING, Vec::new()));
        }
        change.meta.push((ALARM_STATE, self.next_saved()));
        Some(Decision {
            change,
            save_state: true,
            publish: self.state_and_status(&transitions, now),
            ..Decision::default()
        })
    }

    /// The wall clock was stepped by `by` and the daemon's clock followed it ([`crate::clock`]):
    /// every running deadline and window moves with it (the alarm's delay, the lockouts and
    /// their failures, the code-setting rations, the trigger rate limit, a learning), so what
    /// is left of each is unchanged. The decision keeps the moved alarm state and lockouts,
    /// for a restart; `None` when nothing runs.
    pub fn shift(&mut self, by: SignedDuration) -> Option<Decision> {
        let moved = |t: &mut Timestamp| *t = crate::clock::shift(*t, by);
        self.alarm.shift(by);
        self.lockouts.shift(by);
        for ration in self.code_sets.values_mut() {
            ration.sets.iter_mut().for_each(moved);
            ration.blocked_until.iter_mut().for_each(moved);
        }
        self.ignored_triggers.values_mut().for_each(moved);
        if let Some(learning) = &mut self.learning {
            moved(&mut learning.until);
        }
        self.keep_moved(self.alarm.next_deadline().is_some())
    }

    /// At start-up, on the saved state: a running delay ends no later than its configured
    /// length after `now`, and a lockout no later than its own duration (at most
    /// `lockout.max_duration_s`): a state saved by a clock that was ahead, or read by one that
    /// is behind, must not make either last longer. What ran out while the daemon was down
    /// still takes effect ([`Panel::tick`]: DESIGN 5). The decision keeps what was cut.
    pub fn cap_restored(&mut self, now: Timestamp) -> Option<Decision> {
        let state = self.alarm.state;
        let alarm_cut = self.alarm.cap(now, &self.rules.timings);
        if let (Some(was), Some(until)) = (alarm_cut, self.alarm.next_deadline()) {
            let what = match state {
                AlarmState::Arming => "exit delay",
                AlarmState::Pending => "entry delay",
                _ => "siren time",
            };
            tracing::warn!(
                "the saved {what} ran until {was:.0}, longer than its configured length from \
                 now (the clock was ahead when it was saved, or is behind now): it ends at \
                 {until:.0}"
            );
        }
        let capped = self.lockouts.cap(now);
        for c in &capped {
            tracing::warn!(
                source = c.source,
                "the saved lockout ran until {:.0}, longer than its {} s from now (the clock \
                 was ahead when it was saved, or is behind now): it ends at {:.0}",
                c.was,
                c.duration_s,
                c.until
            );
        }
        if alarm_cut.is_none() && capped.is_empty() {
            return None;
        }
        self.keep_moved(alarm_cut.is_some())
    }

    /// The alarm state (when `alarm` is set) and the lockouts, to keep after they moved.
    fn keep_moved(&mut self, alarm: bool) -> Option<Decision> {
        let mut change = Change::default();
        if alarm {
            change.meta.push((ALARM_STATE, self.next_saved()));
        }
        if !self.lockouts.is_empty() {
            change
                .meta
                .push((crate::lockout::META_KEY, self.lockouts.to_json()));
        }
        if change.meta.is_empty() {
            return None;
        }
        Some(Decision {
            change,
            save_state: alarm,
            ..Decision::default()
        })
    }

    /// An entry from a keypad.
    pub fn begin_keypad(
        &mut self,
        keypad: &KeypadConfig,
        input: KeypadInput,
        now: Timestamp,
        mono: Instant,
    ) -> Step {
        // The same transaction with the same action and code is the keypad repeating itself;
        // a different request that reuses the number is a new exchange.
        let exchange = input.transaction.map(|transaction| Exchange {
            keypad: keypad.name.clone(),
            transaction,
            request: self.exchange_digest(&input),
        });
        if let Some(key) = &exchange {
            if let Some(repeat) = self.transactions.get(key, mono) {
                let reply = repeat.map(|reply| {
                    Publish::new(Topics::zigbee2mqtt_set(&keypad.topic), reply, false)
                });
                if let Some(more) = self.quiet.allow("repeated transaction", mono) {
                    tracing::info!(
                        keypad = keypad.name,
                        more,
                        "repeated transaction: same reply, not applied again"
                    );
                }
                return Step::Done(Box::new(Decision {
                    reply,
                    ..Decision::default()
                }));
            }
        }
        let reply_to = ReplyTo::Keypad {
            name: keypad.name.clone(),
            protocol: keypad.protocol,
            topic: keypad.topic.clone(),
            action: input.action,
            transaction: input.transaction,
            exchange,
        };
        self.begin(
            Source::keypad(&keypad.name),
            Request::Keypad(input.action),
            input.code.clone(),
            reply_to,
            now,
            mono,
        )
    }

    /// A message on `B/alarm/set`, Home Assistant's keypad. A retained one is never applied
    /// (commands are live exchanges) and is cleared, so that no code stays on the broker.
    pub fn alarm_set(
        &mut self,
        payload: &[u8],
        retain: bool,
        now: Timestamp,
        mono: Instant,
    ) -> Step {
        let mut nothing = Decision::default();
        if retain {
            if let Some(more) = self.quiet.allow("retained alarm command", mono) {
                tracing::warn!(more, "ignoring a retained command on {}: commands are live exchanges; clearing it, so that no code stays on the broker", self.topics.alarm_set);
            }
            if !payload.is_empty() {
                nothing
                    .publish
                    .push(Publish::new(&self.topics.alarm_set, Vec::new(), true));
            }
            return Step::Done(Box::new(nothing));
        }
        if payload.is_empty() {
            return Step::Done(Box::new(nothing));
        }
        match homeassistant::parse(payload) {
            Ok((request, code)) => self.begin_homeassistant(request, code, now, mono),
            Err(why) => {
                if let Some(more) = self.quiet.allow("unreadable alarm command", mono) {
                    tracing::warn!(
                        more,
                        "ignoring a command on {}: {why}",
                        self.topics.alarm_set
                    );
                }
                Step::Done(Box::new(nothing))
            }
        }
    }

    /// A message on a keypad's topic. A retained one is never applied (an entry is a live
    /// exchange); an unreadable one is answered on json and plain keypads.
    pub fn keypad_message(
        &mut self,
        keypad: &KeypadConfig,
        payload: &[u8],
        retain: bool,
        now: Timestamp,
        mono: Instant,
    ) -> Step {
        let mut nothing = Decision::default();
        if retain {
            tracing::debug!(keypad = keypad.name, "ignoring a retained keypad message");
            return Step::Done(Box::new(nothing));
        }
        match keypad::parse(keypad.protocol, payload) {
            Parsed::Input(input) => return self.begin_keypad(keypad, input, now, mono),
            Parsed::Ignore => {}
            Parsed::Invalid(why) => {
                if let Some(more) = self.quiet.allow("unreadable keypad message", mono) {
                    tracing::warn!(
                        keypad = keypad.name,
                        more,
                        "unreadable keypad message: {why}"
                    );
                }
                if keypad.protocol != KeypadProtocol::Zigbee2mqtt {
                    let reply = json_keypad::invalid(&why, self.state());
                    let topic = self.topics.keypad_result(&keypad.name);
                    nothing.reply = Some(Publish::new(&topic, reply, false));
                }
            }
        }
        Step::Done(Box::new(nothing))
    }

    /// A command from Home Assistant's panel (`B/alarm/set`).
    pub fn begin_homeassistant(
        &mut self,
        request: Request,
        code: Option<TypedCode>,
        now: Timestamp,
        mono: Instant,
    ) -> Step {
        self.begin(
            Source::HomeAssistant,
            request,
            code,
            ReplyTo::HomeAssistant,
            now,
            mono,
        )
    }

    fn begin(
        &mut self,
        source: Source,
        request: Request,
        code: Option<TypedCode>,
        reply_to: ReplyTo,
        now: Timestamp,
        mono: Instant,
    ) -> Step {
        let command = match request {
            Request::Trigger => Command::Trigger,
            Request::Keypad(KeypadAction::Panic) => Command::Panic,
            Request::Keypad(KeypadAction::Disarm) => Command::Disarm,
            Request::Keypad(KeypadAction::Arm(mode)) => Command::Arm(mode),
            Request::Keypad(KeypadAction::Toggle) => match self.alarm.state {
                AlarmState::Disarmed => Command::Arm(self.rules.toggle_mode),
                _ => Command::Disarm,
            },
        };
        if matches!(command, Command::Trigger | Command::Panic) {
            let decision = self.change(command, None, &source, request, now, mono);
            return self.done(decision, &reply_to, mono);
        }
        // A toggle is recorded as what it did.
        let request = match command {
            Command::Disarm => Request::Keypad(KeypadAction::Disarm),
            Command::Arm(mode) => Request::Keypad(KeypadAction::Arm(mode)),
            Command::Trigger | Command::Panic => request,
        };
        if let Command::Arm(mode) = command {
            if !self.rules.modes.contains(&mode) {
                tracing::warn!(
                    %source,
                    mode = mode.as_str(),
                    "refusing a mode that alarm.modes does not list"
                );
                return self.done(Decision::answered(Answer::NotReady), &reply_to, mono);
            }
        }
        // Changing the mode of an armed (or arming) alarm passes through a weaker state (an
        // exit delay, or a mode with fewer zones): it takes a code that may disarm.
        let lowers_protection = matches!(command, Command::Disarm)
            || (matches!(command, Command::Arm(_)) && self.alarm.state != AlarmState::Disarmed);
        if code.is_none() && !lowers_protection && !self.rules.code_arm_required {
            let decision = self.change(command, None, &source, request, now, mono);
            return self.done(decision, &reply_to, mono);
        }
        if let Some(locked) = self.locked(&source, now) {
            if let Some(more) = self.quiet.allow("locked out", mono) {
                tracing::info!(%source, until = %locked.until, more, "refused without checking: locked out");
            }
            return self.done(Decision::answered(Answer::LockedOut), &reply_to, mono);
        }
        let Some(code) = code else {
            let decision = self.refuse(&source, now, Refused::Invalid(Invalid::NoCode));
            return self.done(decision, &reply_to, mono);
        };
        let tag = code.is_tag();
        let Ok(code) = code.parse(self.rules.min_length, self.rules.max_length) else {
            // A tag no reader could give is a tag nobody has.
            let why = if tag {
                Invalid::UnknownTag
            } else {
                Invalid::MalformedCode
            };
            let decision = self.refuse(&source, now, Refused::Invalid(why));
            return self.done(decision, &reply_to, mono);
        };
        Step::Identify(
            Pending {
                source,
                command,
                request,
                lowers_protection,
                reply_to,
                tag,
            },
            code,
        )
    }

    /// The second step of an attempt: the code identified `found`.
    pub fn finish(
        &mut self,
        pending: Pending,
        found: Found,
        now: Timestamp,
        mono: Instant,
    ) -> Decision {
        let Pending {
            source,
            command,
            request,
            lowers_protection,
            reply_to,
            tag,
        } = pending;
        let decision = match found {
            Ok(None) if tag => self.refuse(&source, now, Refused::Invalid(Invalid::UnknownTag)),
            Ok(None) => self.refuse(&source, now, Refused::Invalid(Invalid::WrongCode)),
            Ok(Some((user, Credential::Tag))) if lowers_protection && !self.rules.tags_disarm => {
                let why = Refused::Denied(&user, DenyReason::NotPermitted);
                let mut decision = self.refuse(&source, now, why);
                decision.change.events[0].credential = Some("tag".to_owned());
                decision
            }
            Err(()) => Decision::answered(Answer::InvalidCode),
            Ok(Some((user, credential))) => {
                let what = if lowers_protection {
                    Use::Disarm
                } else {
                    Use::Arm
                };
                match user.check(what, now, &self.rules.tz) {
                    Err(reason) => {
                        let mut decision =
                            self.refuse(&source, now, Refused::Denied(&user, reason));
                        if credential == Credential::Tag {
                            decision.change.events[0].credential = Some("tag".to_owned());
                        }
                        decision
                    }
                    Ok(()) => self.change(
                        command,
                        Some((user, credential)),
                        &source,
                        request,
                        now,
                        mono,
                    ),
                }
            }
        };
        self.answer(decision, &reply_to, mono)
    }

    /// The store refused the commit of an alarm change: nothing happened. Gives the
    /// decision to carry out instead (the refusal).
    pub fn store_failed(&mut self, decision: Decision, mono: Instant) -> Decision {
        if let Some(undo) = decision.undo {
            let undo = *undo;
            self.alarm = undo.alarm;
            self.attributes = undo.attributes;
            self.last_user = undo.last_user;
            self.notify = undo.notify;
            self.lockouts = undo.lockouts;
            self.generation = undo.generation;
        }
        let refusal = Decision::answered(Answer::NotReady);
        match &decision.reply_to {
            Some(reply_to) => self.answer(refusal, reply_to, mono),
            None => refusal,
        }
    }

    /// `Some` while `source` is locked out: refuse without hashing.
    pub fn locked(&self, source: &Source, now: Timestamp) -> Option<Locked> {
        self.lockouts.check(source, now).err()
    }

    /// A refused code from the admin channel or a keypad: the event, one more failure and the
    /// lockout it may start. `denied` names the user whose rules refused it.
    pub fn refusal(&mut self, source: &Source, now: Timestamp, why: Refused<'_>) -> Change {
        let mut events = Vec::new();
        match why {
            Refused::Denied(user, reason) => {
                let reason = reason.as_str();
                tracing::info!(
                    %source,
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
            Refused::Invalid(why) => {
                let why = why.as_str();
                tracing::info!(%source, why, "invalid code");
                events.push(
                    Event::new(EventType::InvalidCode, now)
                        .source(source)
                        .reason(why),
                );
            }
        }
        let mut change = self.failure(source, now);
        events.append(&mut change.events);
        change.events = events;
        change
    }

    /// One more failure for `source` (e.g. a `duplicate_code` answer): the lockout counts to
    /// keep, and the `lockout` event when it starts one.
    pub fn failure(&mut self, source: &Source, now: Timestamp) -> Change {
        let mut change = Change::default();
        if let Some(locked) = self.lockouts.record_failure(source, now) {
            tracing::warn!(%source, until = %locked.until, "locked out after repeated wrong codes");
            let mut event = Event::new(EventType::Lockout, now).source(source);
            event.until = Some(locked.until);
            change.events.push(event);
        }
        change
            .meta
            .push((crate::lockout::META_KEY, self.lockouts.to_json()));
        change
    }

    fn refuse(&mut self, source: &Source, now: Timestamp, why: Refused<'_>) -> Decision {
        Decision {
            change: self.refusal(source, now, why),
            answer: Some(Answer::InvalidCode),
            ..Decision::default()
        }
    }

    fn done(&mut self, decision: Decision, reply_to: &ReplyTo, mono: Instant) -> Step {
        Step::Done(Box::new(self.answer(decision, reply_to, mono)))
    }

    /// The reply for `reply_to`, remembered for a Zigbee exchange.
    fn answer(&mut self, mut decision: Decision, reply_to: &ReplyTo, mono: Instant) -> Decision {
        let answer = decision.answer.unwrap_or(Answer::Accepted);
        decision.reply_to = Some(reply_to.clone());
        let ReplyTo::Keypad {
            name,
            protocol,
            topic,
            action,
            transaction,
            exchange,
        } = reply_to
        else {
            tracing::debug!(answer = answer.as_str(), "Home Assistant command handled");
            return decision;
        };
        decision.reply = match protocol {
            KeypadProtocol::Zigbee2mqtt if answer == Answer::TagLearned => transaction
                .map(|t| zigbee2mqtt::unchanged_reply(t, self.alarm.state))
                .map(|reply| Publish::new(Topics::zigbee2mqtt_set(topic), reply, false)),
            KeypadProtocol::Zigbee2mqtt => transaction
                .and_then(|t| zigbee2mqtt::reply(t, *action, answer))
                .map(|reply| Publish::new(Topics::zigbee2mqtt_set(topic), reply, false)),
            KeypadProtocol::Json | KeypadProtocol::Plain => Some(Publish::new(
                self.topics.keypad_result(name),
                json_keypad::reply(answer, self.alarm.state),
                false,
            )),
        };
        if let (Some(key), Some(reply)) = (exchange, &decision.reply) {
            let text = String::from_utf8_lossy(&reply.payload).into_owned();
            self.transactions.insert(key.clone(), text, mono);
        }
        decision
    }

    /// Applies an accepted command to the alarm and lists what to keep and publish.
    fn change(
        &mut self,
        command: Command,
        user: Option<(User, Credential)>,
        source: &Source,
        request: Request,
        now: Timestamp,
        mono: Instant,
    ) -> Decision {
        let duress_code = matches!(user, Some((_, Credential::Duress)));
        let with_tag = matches!(user, Some((_, Credential::Tag)));
        let user = user.map(|(user, _)| user);
        let undo = Undo {
            alarm: self.alarm.clone(),
            attributes: self.attributes.clone(),
            last_user: self.last_user.clone(),
            notify: self.notify.clone(),
            lockouts: self.lockouts.clone(),
            generation: self.generation,
        };
        let outcome = self.alarm.handle(command, now, &self.rules.timings);
        let mut decision = Decision::default();
        let answer = match outcome {
            Outcome::Changed(transitions) => {
                let change = &mut decision.change;
                if command == Command::Panic {
                    change
                        .events
                        .push(Event::new(EventType::Panic, now).source(source));
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
                    // Only a code that changed something may restart the doubling; no
                    // success erases a failure (DESIGN 4).
                    self.lockouts.record_success(source, now);
                    change
                        .meta
                        .push((crate::lockout::META_KEY, self.lockouts.to_json()));
                }
                self.notify = user.as_ref().and_then(|u| u.notify.clone());
                self.attributes = Attributes {
                    user: user.as_ref().map(|u| u.name.clone()),
                    user_id: user.as_ref().map(|u| u.id.clone()),
                    source: Some(source.to_string()),
                    action: Some(request.word().to_owned()),
                    at: Some(now),
                    target_state: Some(self.target_state().as_str().to_owned()),
                    delay_s: self.alarm.seconds_left(now).unwrap_or(0),
                    credential: with_tag.then(|| "tag".to_owned()),
                };
                let events = self.transition_events(&transitions);
                // The new state, its events, the use count and the lockouts in one commit
                // (DESIGN 2b): a power cut keeps all of them or none.
                let saved = self.next_saved();
                decision.change.events.extend(events);
                decision.change.meta.push((ALARM_STATE, saved));
                decision.must_commit = true;
                decision.save_state = true;
                decision.undo = Some(Box::new(undo));
                decision.publish = self.state_and_status(&transitions, now);
                Answer::Accepted
            }
            Outcome::Unchanged => Answer::Accepted,
            Outcome::AlreadyDisarmed => Answer::AlreadyDisarmed,
            Outcome::NotReady => Answer::NotReady,
            Outcome::TriggerIgnored => {
                // Unauthenticated input: at most one logged event per source and state every
                // 10 s, so a flood cannot wear the SD card or push real entries out of the log.
                let key = (source.to_string(), self.alarm.state);
                let recent = self.ignored_triggers.get(&key).is_some_and(|last| {
                    now.duration_since(*last).as_secs() < IGNORED_TRIGGER_QUIET_S
                });
                if recent {
                    tracing::debug!(%source, "trigger ignored (not logged again)");
                } else {
                    self.ignored_triggers.retain(|_, last| {
                        now.duration_since(*last).as_secs() < IGNORED_TRIGGER_QUIET_S
                    });
                    self.ignored_triggers.insert(key, now);
                    let event = Event::new(EventType::TriggerIgnored, now)
                        .source(source)
                        .reason(self.alarm.state.as_str());
                    decision.change.events.push(event);
                }
                Answer::Accepted
            }
        };
        let state = self.alarm.state.as_str();
        // A request that changed nothing (a repeated trigger, arming what is armed) may come
        // in floods from anyone: logged at most once every 10 s.
        let logged = decision.must_commit || self.quiet.allow("unchanged", mono).is_some();
        match &user {
            Some(user) if logged => tracing::info!(
                %source,
                user = user.name,
                answer = answer.as_str(),
                state,
                "{}",
                request.word()
            ),
            None if logged => {
                tracing::info!(
                    %source,
                    answer = answer.as_str(),
                    state,
                    "{}",
                    request.word()
                )
            }
            _ => {}
        }
        decision.answer = Some(answer);
        decision
    }

    /// The states passed through (several when deadlines were caught up, e.g. pending,
    /// triggered, armed after a long stop: a siren automation must see `triggered`), the
    /// current state with its attributes, then the panel status.
    fn state_and_status(&self, transitions: &[Transition], now: Timestamp) -> Vec<Publish> {
        let mut out = Vec::new();
        if let Some((_, passed)) = transitions.split_last() {
            for t in passed {
                out.push(Publish::new(&self.topics.alarm_state, t.to.as_str(), true));
            }
        }
        out.extend(self.state_publishes());
        out.extend(self.panel_status(now));
        out
    }

    /// The alarm state as saved, with the next save counter.
    fn next_saved(&mut self) -> Vec<u8> {
        self.generation += 1;
        serde_json::to_vec(&self.saved()).unwrap_or_default()
    }

    /// The state the current change leads to: the armed mode while arming, `triggered` while
    /// pending.
    fn target_state(&self) -> AlarmState {
        match (self.alarm.state, self.alarm.mode) {
            (AlarmState::Arming, Some(mode)) => mode.state(),
            // The entry delay leads to the siren, as the `pending` event says.
            (AlarmState::Pending, _) => AlarmState::Triggered,
            (state, _) => state,
        }
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
                event.credential = self.attributes.credential.clone();
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

    fn exchange_digest(&self, input: &KeypadInput) -> u64 {
        let code = match &input.code {
            Some(TypedCode::Text(text)) => text.as_str(),
            Some(TypedCode::NotText) => "\u{0}",
            Some(TypedCode::Tag(text)) => text.as_str(),
            None => "",
        };
        let tag = input.code.as_ref().is_some_and(TypedCode::is_tag);
        self.digest_keys
            .hash_one((input.action.as_str(), tag, code))
    }
}

/// The `tag_learn_expired` event of a learning that ended without a tag.
/// The least time between two re-publishes asked for by a status message.
pub const RESEND_EVERY: Duration = Duration::from_secs(5);

/// Whether a re-publish asked for at `now` is due, the last one having been at `last`.
pub fn due(last: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_some_and(|at| now.saturating_duration_since(at) < RESEND_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// The change that ends a learning a stop cut short (its `meta` marker, `marker`), if any.
pub fn learning_cut_short(marker: Option<Vec<u8>>, now: Timestamp) -> Option<Change> {
    let marker = marker.filter(|bytes| !bytes.is_empty())?;
    let mut change = Change {
        meta: vec![(TAG_LEARNING, Vec::new())],
        ..Change::default()
    };
    if let Ok(learning) = serde_json::from_slice::<Learning>(&marker) {
        tracing::info!(
            user = learning.user,
            "a tag learning ended with the restart"
        );
        change.events.push(learn_expired(&learning, now));
    }
    Some(change)
}

pub fn learn_expired(learning: &Learning, now: Timestamp) -> Event {
    let mut event = Event::new(EventType::TagLearnExpired, now).source(&Source::Admin);
    event.user = Some(learning.user.clone());
    event.user_id = Some(learning.user_id.clone());
    if let Some((name, id)) = &learning.by {
        event.by = Some(name.clone());
        event.by_id = Some(id.clone());
    }
    event
}

/// A tag id not yet among the user's: `t_` and six hex digits.
pub fn new_tag_id(user: &User) -> String {
    use rand::RngCore;
    loop {
        let n = rand::rng().next_u32() & 0x00ff_ffff;
        let id = format!("t_{n:06x}");
        if !user.tags.iter().any(|t| t.id == id) {
            return id;
        }
    }
}

fn rules_window_s(lockouts: &Lockouts) -> u64 {
    lockouts.rules().window_s
}

/// One actor's recent code-setting commands ([`Panel::code_set`]).
#[derive(Debug, Default)]
struct Ration {
    sets: std::collections::VecDeque<Timestamp>,
    blocked_until: Option<Timestamp>,
    /// Times the ration ran out: the exponent of the refusal's length.
    strikes: u32,
}

/// Log lines about input anyone may send (junk, repeats, attempts while locked out): at most
/// one line a kind every 10 s, saying how many were left out, so a flood can neither fill the
/// SD card nor make journald's rate limit drop the lines that matter. Time is passed in.
#[derive(Debug, Default)]
pub struct Quiet {
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl Quiet {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(n)` when a line of this kind may be logged now, `n` being how many were left
    /// out since the last one.
    pub fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((last, left_out)) if now.saturating_duration_since(*last) < Self::EVERY => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The silent `duress` event. A person's own duress code (DESIGN 10a) names them but carries no
/// `notify`: the coerced person's phone may be in the intruder's hands.
pub fn duress_event(user: &User, own_duress_code: bool, source: &Source, now: Timestamp) -> Event {
    let mut event = Event::new(EventType::Duress, now)
        .source(source)
        .about(user);
    if own_duress_code {
        event.notify = None;
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::ArmMode;
    use crate::users::Role;
    use serde_json::Value;

    const CONFIG: &str = r#"
mqtt: {base_topic: kb}
alarm:
  modes: [armed_away, armed_home, armed_night]
  exit_delay_s: {armed_away: 30, armed_home: 0, armed_night: 0, armed_vacation: 30}
  entry_delay_s: 30
  trigger_time_s: 600
timezone: Europe/Paris
keypads:
  - {name: hall, protocol: zigbee2mqtt, topic: "zigbee2mqtt/Hall keypad"}
  - {name: front, protocol: json, topic: "esp/front/code"}
"#;

    fn config_with(extra: &str) -> Config {
        crate::config::parse(&format!("{CONFIG}{extra}")).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn panel_of(config: &Config) -> Panel {
        let tz = config.time_zone().unwrap();
        Panel::new(
            Rules::from_config(config, tz),
            Topics::new(config),
            &config.keypads,
            Saved::new(t(0)),
            Lockouts::new(crate::lockout::LockoutRules::from_config(&config.lockout)),
        )
    }

    fn panel() -> (Panel, Config) {
        let config = config_with("");
        (panel_of(&config), config)
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + secs).unwrap()
    }

    fn person(name: &str, role: Role) -> User {
        let mut user = User::new(format!("u_{name}"), name.to_owned(), role, t(-1000));
        user.code_key = Some("00".repeat(32));
        user.notify = Some(format!("mobile_app_{name}"));
        user
    }

    fn input(action: KeypadAction, code: Option<&str>, transaction: Option<u8>) -> KeypadInput {
        KeypadInput {
            action,
            code: code.map(|c| TypedCode::Text(c.to_owned())),
            transaction,
        }
    }

    const AWAY: KeypadAction = KeypadAction::Arm(ArmMode::ArmedAway);
    const DISARM: KeypadAction = KeypadAction::Disarm;

    /// A test clock for the monotonic side (transaction memory).
    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    fn clock() -> Clock {
        Clock(Instant::now())
    }

    /// One entry on keypad `name`, identified as `found` if the panel asks.
    fn entry(
        p: &mut Panel,
        config: &Config,
        name: &str,
        input: KeypadInput,
        found: Option<Found>,
        now: Timestamp,
        mono: Instant,
    ) -> Decision {
        let keypad = config.keypads.iter().find(|k| k.name == name).unwrap();
        match p.begin_keypad(keypad, input, now, mono) {
            Step::Done(decision) => {
                assert!(found.is_none(), "the panel answered without identifying");
                *decision
            }
            Step::Identify(pending, _code) => {
                let found = found.expect("the panel asked to identify a code");
                p.finish(pending, found, now, mono)
            }
        }
    }

    /// A json keypad entry by `user` (or a wrong code when `None`).
    fn front(
        p: &mut Panel,
        c: &Config,
        action: KeypadAction,
        user: Option<&User>,
        now: Timestamp,
    ) -> Decision {
        let found = Ok(user.map(|u| (u.clone(), Credential::Code)));
        entry(
            p,
            c,
            "front",
            input(action, Some("2468"), None),
            Some(found),
            now,
            Instant::now(),
        )
    }

    fn event_types(d: &Decision) -> Vec<&'static str> {
        d.change
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect()
    }

    fn json_reply(d: &Decision) -> Value {
        serde_json::from_slice(&d.reply.as_ref().expect("a reply").payload).unwrap()
    }

    fn published(d: &Decision, topic: &str) -> Vec<String> {
        d.publish
            .iter()
            .filter(|p| p.topic == topic)
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    }

    fn meta_keys(d: &Decision) -> Vec<&'static str> {
        d.change.meta.iter().map(|(k, _)| *k).collect()
    }

    fn tag_input(action: KeypadAction, tag: &str, transaction: Option<u8>) -> KeypadInput {
        KeypadInput {
            action,
            code: Some(TypedCode::Tag(tag.to_owned())),
            transaction,
        }
    }

    fn key() -> crate::codes::LookupKey {
        crate::codes::LookupKey([7; 32])
    }

    #[test]
    fn a_known_tag_disarms_as_its_user_and_the_events_say_tag() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        front(&mut p, &c, AWAY, Some(&bob), t(0));
        p.tick(t(31));
        let d = entry(
            &mut p,
            &c,
            "hall",
            tag_input(DISARM, "+3DD5FCFF", Some(93)),
            Some(Ok(Some((bob.clone(), Credential::Tag)))),
            t(40),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::Accepted));
        assert_eq!(p.state(), AlarmState::Disarmed);
        let disarmed = &d.change.events[0];
        assert_eq!(disarmed.event_type, EventType::Disarmed);
        assert_eq!(disarmed.user.as_deref(), Some("bob"));
        assert_eq!(disarmed.credential.as_deref(), Some("tag"));
        assert_eq!(p.saved().attributes.credential.as_deref(), Some("tag"));
        let reply = String::from_utf8(d.reply.unwrap().payload).unwrap();
        assert!(
            reply.contains("\"disarm\"") && reply.contains("93"),
            "{reply}"
        );
    }

    #[test]
    fn an_unknown_tag_is_invalid_code_unknown_tag_and_counts() {
        let (mut p, c) = panel();
        for i in 0..3 {
            let d = entry(
                &mut p,
                &c,
                "front",
                tag_input(DISARM, "74-10-37-94", None),
                Some(Ok(None)),
                t(i),
                Instant::now(),
            );
            assert_eq!(d.answer, Some(Answer::InvalidCode));
            assert_eq!(d.change.events[0].reason.as_deref(), Some("unknown_tag"));
        }
        // A malformed tag is a tag nobody has: refused without hashing, counted.
        let d = entry(
            &mut p,
            &c,
            "front",
            tag_input(DISARM, "+XYZ", None),
            None,
            t(4),
            Instant::now(),
        );
        assert_eq!(d.change.events[0].reason.as_deref(), Some("unknown_tag"));
        assert!(
            event_types(&d).contains(&"lockout"),
            "{:?}",
            event_types(&d)
        );
        assert!(p.locked(&Source::keypad("front"), t(5)).is_some());
    }

    #[test]
    fn without_code_arm_required_an_unknown_tag_does_not_arm() {
        let mut c = config_with("");
        c.alarm.code_arm_required = false;
        let mut p = panel_of(&c);
        let d = entry(
            &mut p,
            &c,
            "front",
            tag_input(AWAY, "74-10-37-94", None),
            Some(Ok(None)),
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(p.state(), AlarmState::Disarmed);
    }

    #[test]
    fn with_tags_disarm_false_a_tag_arms_but_does_not_disarm() {
        let mut text = CONFIG.to_owned();
        text.push_str("tags: {disarm: false}\n");
        let c = crate::config::parse(&text).unwrap();
        let mut p = panel_of(&c);
        let bob = person("bob", Role::User);
        let tag = || Some(Ok(Some((person("bob", Role::User), Credential::Tag))));
        let d = entry(
            &mut p,
            &c,
            "front",
            tag_input(AWAY, "74103794", None),
            tag(),
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::Accepted));
        assert_eq!(p.state(), AlarmState::Arming);
        let d = entry(
            &mut p,
            &c,
            "front",
            tag_input(DISARM, "74103794", None),
            tag(),
            t(5),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(p.state(), AlarmState::Arming);
        assert_eq!(d.change.events[0].event_type, EventType::Denied);
        assert_eq!(d.change.events[0].credential.as_deref(), Some("tag"));
        // The same person's code still disarms.
        let d = front(&mut p, &c, DISARM, Some(&bob), t(6));
        assert_eq!(p.state(), AlarmState::Disarmed, "{:?}", d.answer);
    }

    fn learning(keypad: Option<&str>, until: i64) -> Learning {
        Learning {
            user_id: "u_carol".into(),
            user: "carol".into(),
            keypad: keypad.map(str::to_owned),
            until: t(until),
            by: Some(("alice".into(), "u_alice".into())),
        }
    }

    /// Begins a tag entry and, if a learning takes it, binds it to carol.
    fn present(
        p: &mut Panel,
        c: &Config,
        name: &str,
        input: KeypadInput,
        now: Timestamp,
    ) -> Decision {
        let keypad = c.keypads.iter().find(|k| k.name == name).unwrap();
        match p.begin_keypad(keypad, input, now, Instant::now()) {
            Step::Done(d) => *d,
            Step::Identify(pending, _) => {
                let learner = p.learning_for(&pending, now).map(|id| {
                    assert_eq!(id, "u_carol");
                    (person("carol", Role::User), key())
                });
                let identified = Identified {
                    found: Ok(None),
                    learner,
                };
                p.finish_identified(pending, identified, now, Instant::now())
            }
        }
    }

    #[test]
    fn a_learning_binds_the_next_unknown_tag_at_its_keypad_and_changes_nothing() {
        let (mut p, c) = panel();
        p.start_learning(learning(Some("hall"), 60));
        assert_eq!(p.next_deadline(), Some(t(60)));
        // At another keypad: refused as usual.
        let d = present(
            &mut p,
            &c,
            "front",
            tag_input(DISARM, "74-10-37-94", None),
            t(1),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        // A code is never learned.
        let d = present(
            &mut p,
            &c,
            "hall",
            input(DISARM, Some("2468"), Some(3)),
            t(2),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        let d = present(
            &mut p,
            &c,
            "hall",
            tag_input(DISARM, "+3DD5FCFF", Some(93)),
            t(3),
        );
        assert_eq!(d.answer, Some(Answer::TagLearned));
        assert_eq!(p.state(), AlarmState::Disarmed);
        let reply = String::from_utf8(d.reply.clone().unwrap().payload).unwrap();
        assert_eq!(
            reply,
            r#"{"arm_mode":{"mode":"already_disarmed","transaction":93}}"#
        );
        let added = &d.change.events[0];
        assert_eq!(added.event_type, EventType::TagAdded);
        assert_eq!(added.learned, Some(true));
        assert_eq!(added.source.as_deref(), Some("keypad:hall"));
        assert_eq!(added.user.as_deref(), Some("carol"));
        let carol = &d.change.put_users[0];
        assert_eq!(carol.tags.len(), 1);
        assert!(carol.tags[0].id.starts_with("t_"));
        assert_eq!(carol.tags[0].key, key().to_hex());
        assert_eq!(d.change.put_codes, vec![(key(), "u_carol/tag".to_owned())]);
        assert_eq!(
            d.change.meta,
            vec![(TAG_LEARNING, Vec::new())],
            "no failure counted, no alarm change; the learning is over"
        );
        // One learning, one tag: the next unknown tag is refused.
        assert!(p.learning().is_none());
        assert_eq!(p.next_deadline(), None);
        let d = present(
            &mut p,
            &c,
            "hall",
            tag_input(DISARM, "+3DD5FC00", Some(94)),
            t(4),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
    }

    #[test]
    fn a_json_keypad_is_told_tag_learned_and_an_armed_zigbee_keypad_its_mode() {
        let (mut p, c) = panel();
        p.start_learning(learning(None, 60));
        let d = present(
            &mut p,
            &c,
            "front",
            tag_input(DISARM, "74-10-37-94", None),
            t(1),
        );
        assert_eq!(
            json_reply(&d),
            serde_json::json!({"result": "tag_learned", "state": "disarmed"})
        );
        let bob = person("bob", Role::User);
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&bob),
            t(2),
        );
        assert_eq!(p.state(), AlarmState::ArmedHome);
        p.start_learning(learning(None, 60));
        let d = present(
            &mut p,
            &c,
            "hall",
            tag_input(DISARM, "+3DD5FCFF", Some(7)),
            t(3),
        );
        let reply = String::from_utf8(d.reply.unwrap().payload).unwrap();
        assert!(reply.contains("arm_day_zones"), "{reply}");
        assert_eq!(p.state(), AlarmState::ArmedHome);
    }

    #[test]
    fn a_clock_step_moves_every_running_deadline_so_none_ends_early_or_late() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        front(&mut p, &c, AWAY, Some(&bob), t(0));
        for i in 1..=4 {
            entry(
                &mut p,
                &c,
                "hall",
                input(DISARM, Some("9999"), None),
                Some(Ok(None)),
                t(i),
                Instant::now(),
            );
        }
        assert_eq!(
            p.locked(&Source::keypad("hall"), t(5)).map(|l| l.until),
            Some(t(94))
        );
        p.start_learning(learning(None, 60));
        for _ in 0..CODE_SETS_PER_WINDOW {
            assert!(p.code_set("u_alice", t(5)).is_ok());
        }
        assert!(p.code_set("u_alice", t(5)).is_err());
        // NTP steps the clock an hour ahead at 10 s.
        let hour = SignedDuration::from_hours(1);
        let d = p.shift(hour).expect("the moved state is kept");
        assert_eq!(meta_keys(&d), [ALARM_STATE, crate::lockout::META_KEY]);
        assert!(d.save_state && !d.must_commit);
        assert!(d.change.events.is_empty() && d.publish.is_empty() && d.reply.is_none());
        let saved: Saved = serde_json::from_slice(&d.change.meta[0].1).unwrap();
        assert_eq!(saved.alarm.deadline, Some(t(3630)));
        // Nothing ends at once: 20 s of the exit delay, 84 s of the lockout, 50 s of the
        // learning and the code-setting refusal are still left.
        assert!(p.tick(t(3610)).is_none());
        assert_eq!(
            p.panel_status(t(3610))[0].payload,
            br#"{"arm_mode":{"delay":20,"mode":"exit_delay"}}"#
        );
        assert!(p.locked(&Source::keypad("hall"), t(3693)).is_some());
        assert!(p.locked(&Source::keypad("hall"), t(3694)).is_none());
        assert_eq!(p.learning().map(|l| l.until), Some(t(3660)));
        assert!(p.code_set("u_alice", t(3610)).is_err());
        let d = p
            .tick(t(3630))
            .expect("the exit delay ends 20 s after the step");
        assert_eq!(event_types(&d), ["armed_away"]);
        // Nothing running, nothing to keep.
        let (mut idle, _) = panel();
        assert!(idle.shift(hour).is_none());
    }

    #[test]
    fn a_restored_delay_or_lockout_saved_far_ahead_is_cut_to_its_own_length() {
        let config = config_with("");
        let bob = person("bob", Role::User);
        let ten_days = 864_000;
        // Saved by a clock ten days ahead: arming, and the hall keypad locked.
        let mut ahead = panel_of(&config);
        front(&mut ahead, &config, AWAY, Some(&bob), t(ten_days));
        let rules = crate::lockout::LockoutRules::from_config(&config.lockout);
        let mut lockouts = Lockouts::new(rules);
        for i in 0..4 {
            let _ = lockouts.record_failure("keypad:hall", t(ten_days + i));
        }
        let restored = |lockouts: &Lockouts| {
            let tz = config.time_zone().unwrap();
            Panel::new(
                Rules::from_config(&config, tz),
                Topics::new(&config),
                &config.keypads,
                ahead.saved(),
                Lockouts::restore(rules, Some(&lockouts.to_json())),
            )
        };
        let mut p = restored(&lockouts);
        let d = p.cap_restored(t(0)).expect("what was cut is kept");
        assert_eq!(meta_keys(&d), [ALARM_STATE, crate::lockout::META_KEY]);
        assert!(d.save_state);
        assert_eq!(p.next_deadline(), Some(t(30)));
        assert_eq!(
            p.locked(&Source::keypad("hall"), t(0)).map(|l| l.until),
            Some(t(90))
        );
        assert!(p.cap_restored(t(0)).is_none(), "once is enough");
        // Read on time, nothing is cut; and what ran out while down still catches up.
        let mut p = restored(&Lockouts::new(rules));
        assert!(p.cap_restored(t(ten_days + 10)).is_none());
        let d = p
            .tick(t(ten_days + 100))
            .expect("the missed end of the exit delay");
        assert_eq!(event_types(&d), ["armed_away"]);
    }

    #[test]
    fn a_learning_ends_on_the_tick_after_its_window_with_tag_learn_expired() {
        let (mut p, c) = panel();
        p.start_learning(learning(None, 60));
        assert!(p.tick(t(59)).is_none());
        let d = p.tick(t(60)).expect("the learning's end");
        assert_eq!(event_types(&d), vec!["tag_learn_expired"]);
        assert_eq!(d.change.events[0].user.as_deref(), Some("carol"));
        assert!(p.learning().is_none());
        let d = present(
            &mut p,
            &c,
            "hall",
            tag_input(DISARM, "+3DD5FCFF", None),
            t(61),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        // A new learning replaces the old one.
        p.start_learning(learning(None, 100));
        p.start_learning(Learning {
            user_id: "u_dan".into(),
            ..learning(None, 200)
        });
        assert_eq!(p.learning().unwrap().user_id, "u_dan");
    }

    #[test]
    fn arming_away_with_a_users_code_starts_the_exit_delay_and_names_them() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        let d = front(&mut p, &c, AWAY, Some(&bob), t(0));
        assert_eq!(d.answer, Some(Answer::Accepted));
        assert_eq!(p.state(), AlarmState::Arming);
        assert_eq!(event_types(&d), ["arming"]);
        let attributes: Value =
            serde_json::from_str(&published(&d, "kb/alarm/attributes")[0]).unwrap();
        assert_eq!(attributes["user"], "bob");
        assert_eq!(attributes["target_state"], "armed_away");
        assert_eq!(attributes["delay_s"], 30);
        assert_eq!(published(&d, "kb/alarm/last_user"), ["bob"]);
        assert_eq!(
            json_reply(&d),
            serde_json::json!({"result": "accepted", "state": "arming"})
        );
    }

    #[test]
    fn an_alarm_change_keeps_its_events_use_lockouts_and_state_in_one_commit() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        let d = front(&mut p, &c, AWAY, Some(&bob), t(0));
        assert!(d.must_commit && d.save_state);
        assert_eq!(d.change.put_users.len(), 1);
        assert_eq!(d.change.put_users[0].uses, 1);
        assert_eq!(meta_keys(&d), [crate::lockout::META_KEY, ALARM_STATE]);
        let saved: Saved = serde_json::from_slice(&d.change.meta[1].1).unwrap();
        assert_eq!(saved.alarm.state, AlarmState::Arming);
        assert_eq!(saved.generation, 1);
        assert_eq!(p.saved(), saved);
    }

    #[test]
    fn the_exit_delay_runs_out_on_a_tick_and_nothing_happens_before() {
        let (mut p, c) = panel();
        front(&mut p, &c, AWAY, Some(&person("bob", Role::User)), t(0));
        assert!(p.tick(t(29)).is_none());
        assert_eq!(p.next_deadline(), Some(t(30)));
        let d = p.tick(t(31)).expect("the delay ran out");
        assert_eq!(p.state(), AlarmState::ArmedAway);
        assert_eq!(event_types(&d), ["armed_away"]);
        assert_eq!(
            d.change.events[0].at,
            t(30),
            "on the timeline, not when noticed"
        );
        assert_eq!(d.change.events[0].user.as_deref(), Some("bob"));
        assert!(!d.must_commit, "time has passed whatever the disk says");
        assert!(d.save_state);
    }

    #[test]
    fn disarming_from_armed_disarms_and_counts_a_use() {
        let (mut p, c) = panel();
        let mut bob = person("bob", Role::User);
        front(&mut p, &c, AWAY, Some(&bob), t(0));
        p.tick(t(30));
        bob.uses = 1;
        let d = front(&mut p, &c, DISARM, Some(&bob), t(40));
        assert_eq!(p.state(), AlarmState::Disarmed);
        assert_eq!(event_types(&d), ["disarmed"]);
        assert_eq!(d.change.put_users[0].uses, 2);
        assert_eq!(json_reply(&d)["state"], "disarmed");
    }

    #[test]
    fn disarming_while_disarmed_is_already_disarmed_and_changes_nothing() {
        let (mut p, c) = panel();
        let d = front(&mut p, &c, DISARM, Some(&person("bob", Role::User)), t(0));
        assert_eq!(d.answer, Some(Answer::AlreadyDisarmed));
        assert!(d.change.events.is_empty() && d.change.put_users.is_empty());
        assert!(!d.must_commit);
    }

    #[test]
    fn a_wrong_code_is_invalid_code_with_an_event_and_one_more_failure() {
        let (mut p, c) = panel();
        let d = front(&mut p, &c, AWAY, None, t(0));
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(event_types(&d), ["invalid_code"]);
        assert_eq!(d.change.events[0].reason.as_deref(), Some("wrong_code"));
        assert_eq!(d.change.events[0].source.as_deref(), Some("keypad:front"));
        assert_eq!(meta_keys(&d), [crate::lockout::META_KEY]);
        assert!(!d.must_commit, "a refusal is told even if the store fails");
        assert_eq!(p.state(), AlarmState::Disarmed);
    }

    #[test]
    fn the_fourth_wrong_code_locks_the_keypad_with_one_lockout_event() {
        let (mut p, c) = panel();
        for i in 0..3 {
            assert_eq!(
                event_types(&front(&mut p, &c, AWAY, None, t(i))),
                ["invalid_code"]
            );
        }
        let d = front(&mut p, &c, AWAY, None, t(3));
        assert_eq!(event_types(&d), ["invalid_code", "lockout"]);
        assert_eq!(d.change.events[1].until, Some(t(93)));
        assert!(p.locked(&Source::keypad("front"), t(92)).is_some());
        assert!(p.locked(&Source::keypad("front"), t(93)).is_none());
    }

    #[test]
    fn while_locked_out_no_code_is_identified_and_the_keypad_is_told_locked_out() {
        let (mut p, c) = panel();
        for i in 0..4 {
            front(&mut p, &c, AWAY, None, t(i));
        }
        let keypad = &c.keypads[1];
        let step = p.begin_keypad(
            keypad,
            input(AWAY, Some("1234"), None),
            t(10),
            Instant::now(),
        );
        let Step::Done(d) = step else {
            panic!("a locked keypad must not cost an Argon2 computation")
        };
        assert_eq!(d.answer, Some(Answer::LockedOut));
        assert_eq!(json_reply(&d)["result"], "locked_out");
        assert!(d.change.events.is_empty(), "one lockout event per lockout");
    }

    #[test]
    fn a_lockout_is_per_source() {
        let (mut p, c) = panel();
        for i in 0..4 {
            front(&mut p, &c, AWAY, None, t(i));
        }
        let hall = entry(
            &mut p,
            &c,
            "hall",
            input(AWAY, Some("2468"), Some(1)),
            Some(Ok(Some((person("bob", Role::User), Credential::Code)))),
            t(10),
            Instant::now(),
        );
        assert_eq!(hall.answer, Some(Answer::Accepted));
        let ha = p.begin_homeassistant(
            Request::Keypad(DISARM),
            Some(TypedCode::Text("2468".into())),
            t(11),
            Instant::now(),
        );
        assert!(matches!(ha, Step::Identify(..)));
    }

    #[test]
    fn a_success_that_changes_the_alarm_erases_no_failure() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        for i in 0..3 {
            front(&mut p, &c, AWAY, None, t(i));
        }
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&bob),
            t(3),
        );
        let d = front(&mut p, &c, DISARM, None, t(4));
        assert_eq!(event_types(&d), ["invalid_code", "lockout"]);
    }

    #[test]
    fn no_code_is_refused_and_counted_while_codes_are_required_to_arm() {
        let (mut p, c) = panel();
        let d = entry(
            &mut p,
            &c,
            "front",
            input(AWAY, None, None),
            None,
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(d.change.events[0].reason.as_deref(), Some("no_code"));
    }

    #[test]
    fn without_code_arm_required_arming_needs_no_code_and_names_the_source() {
        let c = config_with("");
        let mut c2 = c.clone();
        c2.alarm.code_arm_required = false;
        let mut p = panel_of(&c2);
        let d = entry(
            &mut p,
            &c2,
            "front",
            input(AWAY, None, None),
            None,
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::Accepted));
        assert_eq!(p.state(), AlarmState::Arming);
        let attributes: Value =
            serde_json::from_str(&published(&d, "kb/alarm/attributes")[0]).unwrap();
        assert_eq!(attributes["user"], Value::Null);
        assert_eq!(attributes["source"], "keypad:front");
        assert!(d.change.put_users.is_empty());
    }

    #[test]
    fn without_code_arm_required_disarming_and_changing_the_mode_still_need_a_code() {
        let mut c = config_with("");
        c.alarm.code_arm_required = false;
        let mut p = panel_of(&c);
        entry(
            &mut p,
            &c,
            "front",
            input(AWAY, None, None),
            None,
            t(0),
            Instant::now(),
        );
        let d = entry(
            &mut p,
            &c,
            "front",
            input(DISARM, None, None),
            None,
            t(1),
            Instant::now(),
        );
        assert_eq!(d.change.events[0].reason.as_deref(), Some("no_code"));
        let home = KeypadAction::Arm(ArmMode::ArmedHome);
        let d = entry(
            &mut p,
            &c,
            "front",
            input(home, None, None),
            None,
            t(2),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(p.state(), AlarmState::Arming);
    }

    #[test]
    fn an_arm_only_code_arms_but_may_not_disarm_nor_change_the_mode() {
        let (mut p, c) = panel();
        let cleaner = person("cleaner", Role::ArmOnly);
        assert_eq!(
            front(&mut p, &c, AWAY, Some(&cleaner), t(0)).answer,
            Some(Answer::Accepted)
        );
        let d = front(&mut p, &c, DISARM, Some(&cleaner), t(1));
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(event_types(&d), ["denied"]);
        assert_eq!(d.change.events[0].reason.as_deref(), Some("not_permitted"));
        assert_eq!(d.change.events[0].user.as_deref(), Some("cleaner"));
        let home = KeypadAction::Arm(ArmMode::ArmedHome);
        assert_eq!(
            front(&mut p, &c, home, Some(&cleaner), t(2)).answer,
            Some(Answer::InvalidCode)
        );
        assert_eq!(p.state(), AlarmState::Arming);
    }

    #[test]
    fn a_code_outside_its_rules_is_denied_with_the_reason() {
        let (mut p, c) = panel();
        let mut contractor = person("contractor", Role::User);
        contractor.valid_until = Some(t(-1));
        let d = front(&mut p, &c, AWAY, Some(&contractor), t(0));
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(d.change.events[0].reason.as_deref(), Some("expired"));
        let mut guest = person("guest", Role::User);
        guest.max_uses = Some(1);
        guest.uses = 1;
        let d = front(&mut p, &c, AWAY, Some(&guest), t(1));
        assert_eq!(d.change.events[0].reason.as_deref(), Some("uses_exhausted"));
    }

    #[test]
    fn a_mode_that_alarm_modes_does_not_list_is_not_ready_without_hashing() {
        let (mut p, c) = panel();
        let vacation = KeypadAction::Arm(ArmMode::ArmedVacation);
        let d = entry(
            &mut p,
            &c,
            "front",
            input(vacation, Some("2468"), None),
            None,
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::NotReady));
        assert_eq!(json_reply(&d)["result"], "not_ready");
    }

    #[test]
    fn toggle_arms_the_toggle_mode_when_disarmed_and_disarms_otherwise() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        let d = front(&mut p, &c, KeypadAction::Toggle, Some(&bob), t(0));
        assert_eq!(p.state(), AlarmState::Arming);
        let attributes: Value =
            serde_json::from_str(&published(&d, "kb/alarm/attributes")[0]).unwrap();
        assert_eq!(
            attributes["action"], "arm_away",
            "a toggle is recorded as what it did"
        );
        front(&mut p, &c, KeypadAction::Toggle, Some(&bob), t(1));
        assert_eq!(p.state(), AlarmState::Disarmed);
    }

    #[test]
    fn a_malformed_code_is_refused_without_hashing_and_counts() {
        let (mut p, c) = panel();
        let d = entry(
            &mut p,
            &c,
            "front",
            input(AWAY, Some("12a4"), None),
            None,
            t(0),
            Instant::now(),
        );
        assert_eq!(d.answer, Some(Answer::InvalidCode));
        assert_eq!(d.change.events[0].reason.as_deref(), Some("malformed_code"));
        let d = entry(
            &mut p,
            &c,
            "front",
            input(AWAY, Some("123"), None),
            None,
            t(1),
            Instant::now(),
        );
        assert_eq!(d.change.events[0].reason.as_deref(), Some("malformed_code"));
    }

    #[test]
    fn a_store_that_fails_to_identify_is_refused_but_not_counted() {
        let (mut p, c) = panel();
        for i in 0..6 {
            let d = entry(
                &mut p,
                &c,
                "front",
                input(AWAY, Some("2468"), None),
                Some(Err(())),
                t(i),
                Instant::now(),
            );
            assert_eq!(d.answer, Some(Answer::InvalidCode));
            assert!(d.change.events.is_empty() && d.change.meta.is_empty());
        }
        assert!(p.locked(&Source::keypad("front"), t(7)).is_none());
    }

    #[test]
    fn panic_triggers_at_once_without_a_code() {
        let (mut p, c) = panel();
        let d = entry(
            &mut p,
            &c,
            "front",
            input(KeypadAction::Panic, None, None),
            None,
            t(0),
            Instant::now(),
        );
        assert_eq!(p.state(), AlarmState::Triggered);
        assert_eq!(event_types(&d), ["panic", "triggered"]);
        let d = p.tick(t(600)).unwrap();
        assert_eq!(
            event_types(&d),
            ["disarmed"],
            "back to disarmed after a panic while disarmed"
        );
    }

    #[test]
    fn a_trigger_while_armed_runs_the_entry_delay_then_the_siren() {
        let (mut p, c) = panel();
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&person("bob", Role::User)),
            t(0),
        );
        let Step::Done(d) = p.begin_homeassistant(Request::Trigger, None, t(10), Instant::now())
        else {
            panic!("a trigger needs no code")
        };
        assert_eq!(p.state(), AlarmState::Pending);
        assert_eq!(
            d.change.events[0].target_state.as_deref(),
            Some("triggered")
        );
        let attributes: serde_json::Value = d
            .publish
            .iter()
            .find(|p| p.topic == "kb/alarm/attributes")
            .map(|p| serde_json::from_slice(&p.payload).unwrap())
            .expect("the attributes are published");
        assert_eq!(
            (&attributes["target_state"], &attributes["delay_s"]),
            (&serde_json::json!("triggered"), &serde_json::json!(30)),
            "the attributes name the state the delay leads to, as the event does: {attributes}"
        );
        assert!(d.reply.is_none(), "Home Assistant gets no reply message");
        let d = p.tick(t(40)).unwrap();
        assert_eq!(event_types(&d), ["triggered"]);
        let d = p.tick(t(640)).unwrap();
        assert_eq!(event_types(&d), ["armed_home"]);
    }

    #[test]
    fn the_states_passed_through_during_a_catch_up_are_all_published() {
        let (mut p, c) = panel();
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&person("bob", Role::User)),
            t(0),
        );
        p.begin_homeassistant(Request::Trigger, None, t(10), Instant::now());
        let d = p.tick(t(5000)).unwrap();
        assert_eq!(event_types(&d), ["triggered", "armed_home"]);
        assert_eq!(published(&d, "kb/alarm/state"), ["triggered", "armed_home"]);
    }

    #[test]
    fn a_trigger_while_disarmed_is_ignored_and_recorded_at_most_every_ten_seconds() {
        let (mut p, _c) = panel();
        let mut recorded = 0;
        for i in 0..30 {
            let Step::Done(d) = p.begin_homeassistant(Request::Trigger, None, t(i), Instant::now())
            else {
                panic!()
            };
            assert_eq!(p.state(), AlarmState::Disarmed);
            recorded += d.change.events.len();
        }
        assert_eq!(recorded, 3);
    }

    #[test]
    fn a_persons_duress_code_disarms_as_theirs_with_a_silent_event_without_notify() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&bob),
            t(0),
        );
        let found = Ok(Some((bob.clone(), Credential::Duress)));
        let d = entry(
            &mut p,
            &c,
            "front",
            input(DISARM, Some("2469"), None),
            Some(found),
            t(5),
            Instant::now(),
        );
        assert_eq!(p.state(), AlarmState::Disarmed);
        assert_eq!(event_types(&d), ["duress", "disarmed"]);
        assert_eq!(d.change.events[0].user.as_deref(), Some("bob"));
        assert_eq!(d.change.events[0].notify, None);
        assert_eq!(d.change.events[1].notify.as_deref(), Some("mobile_app_bob"));
        assert_eq!(
            d.change.put_users[0].uses, 1,
            "counted like a use of the code"
        );
        let attributes: Value =
            serde_json::from_str(&published(&d, "kb/alarm/attributes")[0]).unwrap();
        assert_eq!(attributes["user"], "bob");
    }

    #[test]
    fn arming_with_a_duress_code_raises_no_duress_event() {
        let (mut p, c) = panel();
        let found = Ok(Some((person("bob", Role::User), Credential::Duress)));
        let d = entry(
            &mut p,
            &c,
            "front",
            input(AWAY, Some("2469"), None),
            Some(found),
            t(0),
            Instant::now(),
        );
        assert_eq!(event_types(&d), ["arming"]);
    }

    #[test]
    fn a_duress_user_disarms_with_a_duress_event() {
        let (mut p, c) = panel();
        front(
            &mut p,
            &c,
            KeypadAction::Arm(ArmMode::ArmedHome),
            Some(&person("bob", Role::User)),
            t(0),
        );
        let d = front(
            &mut p,
            &c,
            DISARM,
            Some(&person("helper", Role::Duress)),
            t(1),
        );
        assert_eq!(event_types(&d), ["duress", "disarmed"]);
    }

    #[test]
    fn a_zigbee_reply_echoes_the_action_with_the_transaction() {
        let (mut p, c) = panel();
        let found = Ok(Some((person("bob", Role::User), Credential::Code)));
        let d = entry(
            &mut p,
            &c,
            "hall",
            input(AWAY, Some("2468"), Some(42)),
            Some(found),
            t(0),
            Instant::now(),
        );
        let reply = d.reply.unwrap();
        assert_eq!(reply.topic, "zigbee2mqtt/Hall keypad/set");
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"arm_mode": {"transaction": 42, "mode": "arm_all_zones"}})
        );
    }

    #[test]
    fn a_zigbee_entry_without_a_transaction_gets_no_reply_but_works() {
        let (mut p, c) = panel();
        let found = Ok(Some((person("bob", Role::User), Credential::Code)));
        let d = entry(
            &mut p,
            &c,
            "hall",
            input(AWAY, Some("2468"), None),
            Some(found),
            t(0),
            Instant::now(),
        );
        assert!(d.reply.is_none());
        assert_eq!(p.state(), AlarmState::Arming);
    }

    #[test]
    fn a_repeated_zigbee_transaction_gets_the_same_reply_and_is_not_applied_again() {
        let (mut p, c) = panel();
        let clock = clock();
        let found = Ok(Some((person("bob", Role::User), Credential::Code)));
        let first = entry(
            &mut p,
            &c,
            "hall",
            input(DISARM, Some("2468"), Some(7)),
            Some(Ok(None)),
            t(0),
            clock.at(0),
        );
        let again = entry(
            &mut p,
            &c,
            "hall",
            input(DISARM, Some("2468"), Some(7)),
            None,
            t(1),
            clock.at(9),
        );
        assert_eq!(again.reply, first.reply);
        assert!(again.change.events.is_empty(), "not counted twice");
        // Another request reusing the number is a new exchange.
        let right = entry(
            &mut p,
            &c,
            "hall",
            input(AWAY, Some("1357"), Some(7)),
            Some(found),
            t(2),
            clock.at(9),
        );
        assert_eq!(right.answer, Some(Answer::Accepted));
        // After ten seconds the number is free again.
        let later = entry(
            &mut p,
            &c,
            "hall",
            input(DISARM, Some("2468"), Some(7)),
            Some(Ok(None)),
            t(3),
            clock.at(10),
        );
        assert_eq!(later.answer, Some(Answer::InvalidCode));
    }

    #[test]
    fn a_failed_commit_undoes_the_change_and_answers_not_ready() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        for i in 0..3 {
            front(&mut p, &c, AWAY, None, t(i));
        }
        let before = p.saved();
        let d = front(&mut p, &c, AWAY, Some(&bob), t(5));
        assert!(d.must_commit);
        let refusal = p.store_failed(d, Instant::now());
        assert_eq!(p.saved(), before, "nothing happened");
        assert_eq!(
            json_reply(&refusal),
            serde_json::json!({"result": "not_ready", "state": "disarmed"})
        );
        assert!(refusal.change.events.is_empty() && refusal.publish.is_empty());
        // The failures before it are still counted.
        assert_eq!(
            event_types(&front(&mut p, &c, AWAY, None, t(6))),
            ["invalid_code", "lockout"]
        );
    }

    #[test]
    fn the_panel_status_goes_to_every_zigbee_keypad_with_the_seconds_left() {
        let (mut p, c) = panel();
        let d = front(&mut p, &c, AWAY, Some(&person("bob", Role::User)), t(0));
        assert_eq!(
            published(&d, "zigbee2mqtt/Hall keypad/set"),
            [r#"{"arm_mode":{"delay":30,"mode":"exit_delay"}}"#]
        );
        let status = p.panel_status(t(12));
        assert_eq!(status.len(), 1);
        assert!(String::from_utf8_lossy(&status[0].payload).contains("\"delay\":18"));
    }

    #[test]
    fn the_retained_state_names_the_last_user_once_someone_armed() {
        let (mut p, c) = panel();
        let fresh = p.state_publishes();
        assert_eq!(fresh.len(), 3, "{fresh:?}");
        assert_eq!(fresh[2].topic, "kb/alarm/last_user");
        assert!(
            fresh[2].payload.is_empty() && fresh[2].retain,
            "nobody armed yet: an empty retained last user clears an older store's"
        );
        front(&mut p, &c, AWAY, Some(&person("bob", Role::User)), t(0));
        let topics: Vec<String> = p.state_publishes().into_iter().map(|p| p.topic).collect();
        assert_eq!(
            topics,
            [
                "kb/alarm/state",
                "kb/alarm/attributes",
                "kb/alarm/last_user"
            ]
        );
        assert!(p.state_publishes().iter().all(|p| p.retain));
    }

    #[test]
    fn each_save_counts_one_more_generation() {
        let (mut p, c) = panel();
        let bob = person("bob", Role::User);
        front(&mut p, &c, AWAY, Some(&bob), t(0));
        p.tick(t(30));
        front(&mut p, &c, DISARM, Some(&bob), t(40));
        assert_eq!(p.saved().generation, 3);
    }

    fn done(step: Step) -> Decision {
        match step {
            Step::Done(decision) => *decision,
            Step::Identify(..) => panic!("the panel asked to identify a code"),
        }
    }

    #[test]
    fn a_retained_alarm_command_is_cleared_and_never_applied() {
        let (mut p, _) = panel();
        let payload = br#"{"action": "DISARM", "code": "1234"}"#;
        let d = done(p.alarm_set(payload, true, t(0), Instant::now()));
        assert_eq!(
            d.publish,
            vec![Publish::new("kb/alarm/set", Vec::new(), true)]
        );
        assert!(d.reply.is_none() && d.change.events.is_empty());
        // Its own clearing (empty and retained) is not cleared again.
        assert!(done(p.alarm_set(b"", true, t(0), Instant::now()))
            .publish
            .is_empty());
        // A live one is identified.
        assert!(matches!(
            p.alarm_set(payload, false, t(0), Instant::now()),
            Step::Identify(..)
        ));
    }

    #[test]
    fn an_unreadable_keypad_message_is_answered_on_json_keypads_only() {
        let (mut p, c) = panel();
        let front = c.keypads.iter().find(|k| k.name == "front").unwrap();
        let d = done(p.keypad_message(front, b"{not json", false, t(0), Instant::now()));
        let reply: Value = serde_json::from_slice(&d.reply.expect("a reply").payload).unwrap();
        assert_eq!(reply["result"], "invalid_request");
        assert_eq!(reply["state"], "disarmed");
        let hall = c.keypads.iter().find(|k| k.name == "hall").unwrap();
        let d = done(p.keypad_message(hall, b"{not json", false, t(0), Instant::now()));
        assert!(
            d.reply.is_none(),
            "Zigbee2MQTT keypads get no reply to junk"
        );
        // A retained entry is never applied.
        let entry = br#"{"action": "arm_away", "code": "1234"}"#;
        assert!(
            done(p.keypad_message(front, entry, true, t(0), Instant::now()))
                .reply
                .is_none()
        );
    }

    #[test]
    fn a_bridge_coming_online_gets_the_panel_status_at_most_every_five_seconds() {
        let (mut p, _) = panel();
        let clock = clock();
        let bridge = "zigbee2mqtt/bridge/state";
        let online = br#"{"state": "online"}"#;
        assert_eq!(
            p.bridge_state("other/topic", online, t(0), clock.at(0)),
            None
        );
        let first = p.bridge_state(bridge, online, t(0), clock.at(0)).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].topic, "zigbee2mqtt/Hall keypad/set");
        assert!(p
            .bridge_state(bridge, online, t(1), clock.at(1))
            .unwrap()
            .is_empty());
        let offline = br#"{"state": "offline"}"#;
        assert!(p
            .bridge_state(bridge, offline, t(6), clock.at(6))
            .unwrap()
            .is_empty());
        assert_eq!(
            p.bridge_state(bridge, online, t(6), clock.at(6))
                .unwrap()
                .len(),
            1
        );
    }
}
