//! The alarm state machine of DESIGN.md section 5: states, exit and entry delays, the siren time,
//! panic. Pure: it never reads a clock or touches the disk. Time comes in as a [`Timestamp`],
//! deadlines go out through [`Alarm::next_deadline`], and the daemon persists the [`Alarm`] as JSON
//! and calls [`Alarm::advance`] when a deadline comes (or at start-up, to catch up on the ones
//! missed while it was down).

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize};

/// An armed mode. The declaration order is the order of [`ArmMode::ALL`] and of
/// [`Timings::exit_delay_s`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmMode {
    ArmedHome,
    ArmedAway,
    ArmedNight,
    ArmedVacation,
}

impl ArmMode {
    pub const ALL: [ArmMode; 4] = [
        ArmMode::ArmedHome,
        ArmMode::ArmedAway,
        ArmMode::ArmedNight,
        ArmMode::ArmedVacation,
    ];

    pub fn state(self) -> AlarmState {
        match self {
            ArmMode::ArmedHome => AlarmState::ArmedHome,
            ArmMode::ArmedAway => AlarmState::ArmedAway,
            ArmMode::ArmedNight => AlarmState::ArmedNight,
            ArmMode::ArmedVacation => AlarmState::ArmedVacation,
        }
    }

    /// The name used on MQTT and in the config (`armed_away`, ...).
    pub fn as_str(self) -> &'static str {
        self.words().state
    }

    /// How each protocol names this mode: the one table every parser and writer reads.
    pub fn words(self) -> &'static ModeWords {
        match self {
            ArmMode::ArmedHome => &ModeWords {
                state: "armed_home",
                action: "arm_home",
                ha_command: "ARM_HOME",
                ha_feature: "arm_home",
                zigbee: "arm_day_zones",
                zigbee_action: Some("arm_day_zones"),
            },
            ArmMode::ArmedAway => &ModeWords {
                state: "armed_away",
                action: "arm_away",
                ha_command: "ARM_AWAY",
                ha_feature: "arm_away",
                zigbee: "arm_all_zones",
                zigbee_action: Some("arm_all_zones"),
            },
            ArmMode::ArmedNight => &ModeWords {
                state: "armed_night",
                action: "arm_night",
                ha_command: "ARM_NIGHT",
                ha_feature: "arm_night",
                zigbee: "arm_night_zones",
                zigbee_action: Some("arm_night_zones"),
            },
            ArmMode::ArmedVacation => &ModeWords {
                state: "armed_vacation",
                action: "arm_vacation",
                ha_command: "ARM_VACATION",
                ha_feature: "arm_vacation",
                // IAS ACE has no vacation mode: the keypad shows it as all zones armed.
                zigbee: "arm_all_zones",
                zigbee_action: None,
            },
        }
    }

    /// The mode whose row matches, e.g. `ArmMode::find(|w| w.action == "arm_home")`.
    pub fn find(matches: impl Fn(&ModeWords) -> bool) -> Option<ArmMode> {
        ArmMode::ALL.into_iter().find(|mode| matches(mode.words()))
    }

    fn index(self) -> usize {
        match self {
            ArmMode::ArmedHome => 0,
            ArmMode::ArmedAway => 1,
            ArmMode::ArmedNight => 2,
            ArmMode::ArmedVacation => 3,
        }
    }
}

/// One row of the arm-mode table (DESIGN.md 3, 4, 5): the word for one mode in each protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct ModeWords {
    /// The config, `B/alarm/state`, the events: `armed_home`.
    pub state: &'static str,
    /// A `json` keypad's `action` and the `action` of `B/alarm/attributes`: `arm_home`.
    pub action: &'static str,
    /// Home Assistant's command on `B/alarm/set`: `ARM_HOME`.
    pub ha_command: &'static str,
    /// Home Assistant's discovery `supported_features`: `arm_home`.
    pub ha_feature: &'static str,
    /// A Zigbee2MQTT keypad's `arm_mode`, in replies and panel status: `arm_day_zones`.
    pub zigbee: &'static str,
    /// The Zigbee2MQTT `action` that asks for this mode; `None` when no keypad button does.
    pub zigbee_action: Option<&'static str>,
}

impl fmt::Display for ArmMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state published on `B/alarm/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Disarmed,
    /// The exit delay is running.
    Arming,
    ArmedHome,
    ArmedAway,
    ArmedNight,
    ArmedVacation,
    /// The entry delay is running.
    Pending,
    Triggered,
}

impl AlarmState {
    /// The payload on `B/alarm/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Disarmed => "disarmed",
            AlarmState::Arming => "arming",
            AlarmState::ArmedHome => ArmMode::ArmedHome.as_str(),
            AlarmState::ArmedAway => ArmMode::ArmedAway.as_str(),
            AlarmState::ArmedNight => ArmMode::ArmedNight.as_str(),
            AlarmState::ArmedVacation => ArmMode::ArmedVacation.as_str(),
            AlarmState::Pending => "pending",
            AlarmState::Triggered => "triggered",
        }
    }

    /// `Some` for the four armed states only (not for arming, pending or triggered).
    pub fn armed_mode(self) -> Option<ArmMode> {
        match self {
            AlarmState::ArmedHome => Some(ArmMode::ArmedHome),
            AlarmState::ArmedAway => Some(ArmMode::ArmedAway),
            AlarmState::ArmedNight => Some(ArmMode::ArmedNight),
            AlarmState::ArmedVacation => Some(ArmMode::ArmedVacation),
            AlarmState::Disarmed
            | AlarmState::Arming
            | AlarmState::Pending
            | AlarmState::Triggered => None,
        }
    }
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delays from the `alarm:` config section, in seconds. Passed to every call rather than
/// stored in [`Alarm`], so a changed config applies to the next delay without touching the
/// persisted state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// Exit delay per mode, in the order of [`ArmMode::ALL`]; build it with [`Timings::new`] and
    /// read it with [`Timings::exit_delay`] rather than by position.
    pub exit_delay_s: [u64; 4],
    pub entry_delay_s: u64,
    pub trigger_time_s: u64,
}

impl Timings {
    /// `exit_delay_s` gives the exit delay of each mode (e.g. a lookup in the config map).
    pub fn new(
        exit_delay_s: impl Fn(ArmMode) -> u64,
        entry_delay_s: u64,
        trigger_time_s: u64,
    ) -> Timings {
        Timings {
            exit_delay_s: ArmMode::ALL.map(exit_delay_s),
            entry_delay_s,
            trigger_time_s,
        }
    }

    pub fn exit_delay(&self, mode: ArmMode) -> u64 {
        self.exit_delay_s[mode.index()]
    }
}

/// The whole alarm, as persisted in the state file. Deserialising refuses a combination of
/// fields that no sequence of commands can produce: a damaged file must stop the daemon, not
/// leave it stuck or silently disarmed (DESIGN.md 2b).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub state: AlarmState,
    /// Arming: the mode being armed. Pending and triggered: the armed mode to return to after
    /// the siren (`None`: back to disarmed, after a panic while disarmed). Armed states: that
    /// mode. Disarmed: `None`.
    pub mode: Option<ArmMode>,
    /// End of the exit delay (arming), the entry delay (pending) or the siren time (triggered).
    pub deadline: Option<Timestamp>,
    pub changed_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Arm(ArmMode),
    Disarm,
    /// A Home Assistant automation saw a sensor open.
    Trigger,
    Panic,
}

/// One state change, for the state publish and the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: AlarmState,
    pub to: AlarmState,
    /// When it happened: `now` for a command, the deadline for a delay that ran out (even when
    /// the daemon only noticed later).
    pub at: Timestamp,
    /// The exit delay when `to` is arming, the entry delay when `to` is pending; `None` otherwise.
    pub delay_s: Option<u64>,
}

#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Changed(Vec<Transition>),
    /// Nothing to do: arm to the mode already armed (or being armed), trigger while pending or
    /// triggered.
    Unchanged,
    AlreadyDisarmed,
    /// A trigger while disarmed or arming (the event says so).
    TriggerIgnored,
    /// Arm while pending or triggered: disarm first.
    NotReady,
}

impl Alarm {
    pub fn new(now: Timestamp) -> Alarm {
        Alarm {
            state: AlarmState::Disarmed,
            mode: None,
            deadline: None,
            changed_at: now,
        }
    }

    /// Applies a command at `now`. Call [`Alarm::advance`] with the same `now` first: a command
    /// acts on the state as it is, even if its deadline has already passed.
    pub fn handle(&mut self, cmd: Command, now: Timestamp, t: &Timings) -> Outcome {
        match cmd {
            Command::Arm(mode) => self.arm(mode, now, t),
            Command::Disarm => self.disarm(now),
            Command::Trigger => self.trigger(now, t),
            Command::Panic => self.panic(now, t),
        }
    }

    /// Applies every deadline at or before `now`, in order, each at its own deadline, so that
    /// after a downtime the timeline runs on as if the daemon had never stopped.
    pub fn advance(&mut self, now: Timestamp, t: &Timings) -> Vec<Transition> {
        let mut done = Vec::new();
        // Each turn clears the deadline or moves pending to triggered, so this ends within two
        // transitions.
        while let Some(deadline) = self.deadline.filter(|d| *d <= now) {
            let transition = match self.state {
                AlarmState::Arming | AlarmState::Triggered => {
                    let to = self.mode.map_or(AlarmState::Disarmed, ArmMode::state);
                    self.go(to, self.mode, None, deadline, None)
                }
                AlarmState::Pending => {
                    let siren_end = after(deadline, t.trigger_time_s);
                    self.go(
                        AlarmState::Triggered,
                        self.mode,
                        Some(siren_end),
                        deadline,
                        None,
                    )
                }
                AlarmState::Disarmed
                | AlarmState::ArmedHome
                | AlarmState::ArmedAway
                | AlarmState::ArmedNight
                | AlarmState::ArmedVacation => {
                    // Unreachable through commands or deserialisation; never loop on it.
                    self.deadline = None;
                    continue;
                }
            };
            done.push(transition);
        }
        done
    }

    /// When [`Alarm::advance`] next has something to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadline
    }

    /// The wall clock was stepped by `by` and the daemon's clock followed it: the running
    /// delay moves with it, so the time it has left is unchanged. `changed_at` stays: it is
    /// past.
    pub fn shift(&mut self, by: SignedDuration) {
        self.deadline = self.deadline.map(|d| crate::clock::shift(d, by));
    }

    /// At start-up: a running delay ends no later than its configured length after `now`
    /// (one saved by a clock that was ahead, or read by one that is behind, must not run
    /// longer). A deadline that passed is kept: DESIGN 5's catch-up. Returns the deadline it
    /// replaced.
    pub fn cap(&mut self, now: Timestamp, t: &Timings) -> Option<Timestamp> {
        let length = match (self.state, self.mode) {
            (AlarmState::Arming, Some(mode)) => t.exit_delay(mode),
            (AlarmState::Pending, _) => t.entry_delay_s,
            (AlarmState::Triggered, _) => t.trigger_time_s,
            _ => return None,
        };
        let latest = after(now, length);
        let deadline = self.deadline.filter(|&d| d > latest)?;
        self.deadline = Some(latest);
        Some(deadline)
    }

    /// Seconds left of the exit or entry delay, rounded up (a keypad shows 1, never 0, while
    /// the delay runs); `None` in other states.
    pub fn seconds_left(&self, now: Timestamp) -> Option<u64> {
        match self.state {
            AlarmState::Arming | AlarmState::Pending => {
                let deadline = self.deadline?;
                let nanos = deadline.as_nanosecond() - now.as_nanosecond();
                let secs = (nanos.max(0) + 999_999_999) / 1_000_000_000;
                Some(u64::try_from(secs).unwrap_or(u64::MAX))
            }
            _ => None,
        }
    }

    fn arm(&mut self, mode: ArmMode, now: Timestamp, t: &Timings) -> Outcome {
        match self.state {
            AlarmState::Pending | AlarmState::Triggered => return Outcome::NotReady,
            AlarmState::Arming if self.mode == Some(mode) => return Outcome::Unchanged,
            state if state.armed_mode() == Some(mode) => return Outcome::Unchanged,
            _ => {}
        }
        let delay = t.exit_delay(mode);
        let transition = if delay == 0 {
            self.go(mode.state(), Some(mode), None, now, None)
        } else {
            let deadline = after(now, delay);
            self.go(
                AlarmState::Arming,
                Some(mode),
                Some(deadline),
                now,
                Some(delay),
            )
        };
        Outcome::Changed(vec![transition])
    }

    fn disarm(&mut self, now: Timestamp) -> Outcome {
        if self.state == AlarmState::Disarmed {
            return Outcome::AlreadyDisarmed;
        }
        Outcome::Changed(vec![self.go(AlarmState::Disarmed, None, None, now, None)])
    }

    fn trigger(&mut self, now: Timestamp, t: &Timings) -> Outcome {
        let Some(mode) = self.state.armed_mode() else {
            return match self.state {
                AlarmState::Pending | AlarmState::Triggered => Outcome::Unchanged,
                _ => Outcome::TriggerIgnored,
            };
        };
        let transition = if t.entry_delay_s == 0 {
            let siren_end = after(now, t.trigger_time_s);
            self.go(
                AlarmState::Triggered,
                Some(mode),
                Some(siren_end),
                now,
                None,
            )
        } else {
            let deadline = after(now, t.entry_delay_s);
            self.go(
                AlarmState::Pending,
                Some(mode),
                Some(deadline),
                now,
                Some(t.entry_delay_s),
            )
        };
        Outcome::Changed(vec![transition])
    }

    /// Whatever the state; while already triggered the siren time starts again. `mode` already
    /// holds where to return: none when disarmed, the mode being armed while arming.
    /// At once, from any state but `triggered`: a panic while the siren sounds changes
    /// nothing (it needs no code, so a flood of them must not each restart the siren, write
    /// the store and push the activity log out).
    fn panic(&mut self, now: Timestamp, t: &Timings) -> Outcome {
        if self.state == AlarmState::Triggered {
            return Outcome::Unchanged;
        }
        let siren_end = after(now, t.trigger_time_s);
        Outcome::Changed(vec![self.go(
            AlarmState::Triggered,
            self.mode,
            Some(siren_end),
            now,
            None,
        )])
    }

    fn go(
        &mut self,
        to: AlarmState,
        mode: Option<ArmMode>,
        deadline: Option<Timestamp>,
        at: Timestamp,
        delay_s: Option<u64>,
    ) -> Transition {
        let from = self.state;
        self.state = to;
        self.mode = mode;
        self.deadline = deadline;
        self.changed_at = at;
        Transition {
            from,
            to,
            at,
            delay_s,
        }
    }

    /// Why these fields cannot come from [`Alarm::handle`] and [`Alarm::advance`], if they cannot.
    fn inconsistency(&self) -> Option<&'static str> {
        match (self.state, self.mode, self.deadline) {
            (AlarmState::Disarmed, None, None) => None,
            (AlarmState::Disarmed, _, _) => Some("disarmed with a mode or a deadline"),
            (AlarmState::Arming, Some(_), Some(_)) => None,
            (AlarmState::Arming, _, _) => Some("arming without a mode or a deadline"),
            (AlarmState::Pending, Some(_), Some(_)) => None,
            (AlarmState::Pending, _, _) => Some("pending without a mode or a deadline"),
            (AlarmState::Triggered, _, Some(_)) => None,
            (AlarmState::Triggered, _, None) => Some("triggered without a deadline"),
            (armed, mode, None) if armed.armed_mode() == mode => None,
            (_, _, _) => Some("armed with another mode or with a deadline"),
        }
    }
}

impl<'de> Deserialize<'de> for Alarm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Alarm, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            state: AlarmState,
            mode: Option<ArmMode>,
            deadline: Option<Timestamp>,
            changed_at: Timestamp,
        }
        let f = Fields::deserialize(deserializer)?;
        let alarm = Alarm {
            state: f.state,
            mode: f.mode,
            deadline: f.deadline,
            changed_at: f.changed_at,
        };
        match alarm.inconsistency() {
            None => Ok(alarm),
            Some(why) => Err(serde::de::Error::custom(format_args!(
                "inconsistent alarm state: {why}"
            ))),
        }
    }
}

/// `at + secs`, saturating at the end of time: an absurd configured delay must not panic.
pub(crate) fn after(at: Timestamp, secs: u64) -> Timestamp {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    at.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2024-06-01T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    /// DESIGN.md defaults: away and vacation 30 s exit delay, home and night none.
    fn timings() -> Timings {
        Timings::new(
            |mode| match mode {
                ArmMode::ArmedAway | ArmMode::ArmedVacation => 30,
                ArmMode::ArmedHome | ArmMode::ArmedNight => 0,
            },
            30,
            600,
        )
    }

    fn tr(from: AlarmState, to: AlarmState, when: Timestamp, delay_s: Option<u64>) -> Transition {
        Transition {
            from,
            to,
            at: when,
            delay_s,
        }
    }

    fn changed(outcome: Outcome) -> Vec<Transition> {
        match outcome {
            Outcome::Changed(transitions) => transitions,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn armed_at_t0(mode: ArmMode) -> Alarm {
        Alarm {
            state: mode.state(),
            mode: Some(mode),
            deadline: None,
            changed_at: t0(),
        }
    }

    fn armed_away_at_t0() -> Alarm {
        armed_at_t0(ArmMode::ArmedAway)
    }

    /// An alarm in `state` since t0: arming armed_away (deadline 30 s), pending from armed_away
    /// (deadline 30 s), triggered by a panic while armed_away (deadline 600 s).
    fn alarm_in(state: AlarmState) -> Alarm {
        let t = timings();
        let (mut alarm, command) = match state {
            AlarmState::Disarmed => return Alarm::new(t0()),
            AlarmState::Arming => (Alarm::new(t0()), Command::Arm(ArmMode::ArmedAway)),
            AlarmState::Pending => (armed_away_at_t0(), Command::Trigger),
            AlarmState::Triggered => (armed_away_at_t0(), Command::Panic),
            armed => match armed.armed_mode() {
                Some(mode) => return armed_at_t0(mode),
                None => unreachable!("every state is listed"),
            },
        };
        let _ = alarm.handle(command, t0(), &t);
        assert_eq!(alarm.state, state, "test setup");
        alarm
    }

    const ALL_STATES: [AlarmState; 8] = [
        AlarmState::Disarmed,
        AlarmState::Arming,
        AlarmState::ArmedHome,
        AlarmState::ArmedAway,
        AlarmState::ArmedNight,
        AlarmState::ArmedVacation,
        AlarmState::Pending,
        AlarmState::Triggered,
    ];

    #[test]
    fn new_alarm_is_disarmed_with_nothing_to_wait_for() {
        let alarm = Alarm::new(t0());
        assert_eq!(alarm.state, AlarmState::Disarmed);
        assert_eq!(alarm.mode, None);
        assert_eq!(alarm.next_deadline(), None);
        assert_eq!(alarm.changed_at, t0());
    }

    #[test]
    fn every_mode_round_trips_through_every_protocol_word() {
        type Column = fn(&ModeWords) -> &'static str;
        let columns: [(&str, Column); 5] = [
            ("state", |w| w.state),
            ("action", |w| w.action),
            ("ha_command", |w| w.ha_command),
            ("ha_feature", |w| w.ha_feature),
            ("zigbee_action", |w| w.zigbee_action.unwrap_or("")),
        ];
        for mode in ArmMode::ALL {
            for (name, column) in columns {
                let word = column(mode.words());
                if name == "zigbee_action" && mode == ArmMode::ArmedVacation {
                    assert_eq!(word, "", "no Zigbee button arms vacation");
                    continue;
                }
                assert_eq!(
                    ArmMode::find(|w| column(w) == word),
                    Some(mode),
                    "{name}: {word}"
                );
            }
            // A keypad's action word is the word its replies echo.
            if let Some(action) = mode.words().zigbee_action {
                assert_eq!(action, mode.words().zigbee);
            }
        }
        // Vacation is shown as all zones armed, and that word reads back as away.
        assert_eq!(ArmMode::ArmedVacation.words().zigbee, "arm_all_zones");
        assert_eq!(
            ArmMode::find(|w| w.zigbee_action == Some("arm_all_zones")),
            Some(ArmMode::ArmedAway)
        );
        // The words each protocol expects (DESIGN.md 3, 4, 5).
        let rows: Vec<_> = ArmMode::ALL
            .iter()
            .map(|m| {
                let w = m.words();
                (w.state, w.action, w.ha_command, w.ha_feature, w.zigbee)
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "armed_home",
                    "arm_home",
                    "ARM_HOME",
                    "arm_home",
                    "arm_day_zones"
                ),
                (
                    "armed_away",
                    "arm_away",
                    "ARM_AWAY",
                    "arm_away",
                    "arm_all_zones"
                ),
                (
                    "armed_night",
                    "arm_night",
                    "ARM_NIGHT",
                    "arm_night",
                    "arm_night_zones"
                ),
                (
                    "armed_vacation",
                    "arm_vacation",
                    "ARM_VACATION",
                    "arm_vacation",
                    "arm_all_zones"
                ),
            ]
        );
    }

    #[test]
    fn state_names_match_the_mqtt_payloads_and_the_serde_names() {
        let names: Vec<&str> = ALL_STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "disarmed",
                "arming",
                "armed_home",
                "armed_away",
                "armed_night",
                "armed_vacation",
                "pending",
                "triggered"
            ]
        );
        for state in ALL_STATES {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
        }
        for mode in ArmMode::ALL {
            assert_eq!(mode.as_str(), mode.state().as_str());
            assert_eq!(mode.state().armed_mode(), Some(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
        }
    }

    #[test]
    fn timings_new_gives_each_mode_its_own_exit_delay() {
        let t = Timings::new(
            |mode| match mode {
                ArmMode::ArmedHome => 1,
                ArmMode::ArmedAway => 2,
                ArmMode::ArmedNight => 3,
                ArmMode::ArmedVacation => 4,
            },
            5,
            6,
        );
        assert_eq!(t.exit_delay(ArmMode::ArmedHome), 1);
        assert_eq!(t.exit_delay(ArmMode::ArmedAway), 2);
        assert_eq!(t.exit_delay(ArmMode::ArmedNight), 3);
        assert_eq!(t.exit_delay(ArmMode::ArmedVacation), 4);
        assert_eq!(t.exit_delay_s, [1, 2, 3, 4]);
    }

    #[test]
    fn arm_away_from_disarmed_starts_the_thirty_second_exit_delay() {
        let mut alarm = Alarm::new(t0());
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedAway), at(5), &timings());
        assert_eq!(
            changed(outcome),
            [tr(
                AlarmState::Disarmed,
                AlarmState::Arming,
                at(5),
                Some(30)
            )]
        );
        assert_eq!(alarm.state, AlarmState::Arming);
        assert_eq!(alarm.mode, Some(ArmMode::ArmedAway));
        assert_eq!(alarm.next_deadline(), Some(at(35)));
        assert_eq!(alarm.changed_at, at(5));
    }

    #[test]
    fn exit_delay_running_out_arms_the_mode_at_the_deadline() {
        let t = timings();
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedAway), t0(), &t);
        assert!(alarm.advance(at(29), &t).is_empty());
        assert_eq!(alarm.state, AlarmState::Arming);
        assert_eq!(
            alarm.advance(at(30), &t),
            [tr(AlarmState::Arming, AlarmState::ArmedAway, at(30), None)]
        );
        assert_eq!(alarm, {
            let mut armed = armed_away_at_t0();
            armed.changed_at = at(30);
            armed
        });
        assert!(alarm.advance(at(1000), &t).is_empty());
    }

    #[test]
    fn arm_home_with_zero_exit_delay_goes_straight_to_armed_home_in_one_transition() {
        let mut alarm = Alarm::new(t0());
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedHome), at(1), &timings());
        assert_eq!(
            changed(outcome),
            [tr(AlarmState::Disarmed, AlarmState::ArmedHome, at(1), None)]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedHome));
        assert_eq!(alarm.next_deadline(), None);
    }

    #[test]
    fn arm_another_mode_while_armed_starts_the_exit_delay_of_the_new_mode() {
        let mut alarm = alarm_in(AlarmState::ArmedHome);
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedVacation), at(100), &timings());
        assert_eq!(
            changed(outcome),
            [tr(
                AlarmState::ArmedHome,
                AlarmState::Arming,
                at(100),
                Some(30)
            )]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedVacation));
        assert_eq!(alarm.next_deadline(), Some(at(130)));
    }

    #[test]
    fn arm_another_zero_delay_mode_while_armed_switches_at_once() {
        let mut alarm = armed_away_at_t0();
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedNight), at(100), &timings());
        assert_eq!(
            changed(outcome),
            [tr(
                AlarmState::ArmedAway,
                AlarmState::ArmedNight,
                at(100),
                None
            )]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedNight));
    }

    #[test]
    fn arm_another_mode_while_arming_restarts_with_the_new_mode() {
        let t = timings();
        let mut alarm = alarm_in(AlarmState::Arming);
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedVacation), at(20), &t);
        assert_eq!(
            changed(outcome),
            [tr(AlarmState::Arming, AlarmState::Arming, at(20), Some(30))]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedVacation));
        assert_eq!(alarm.next_deadline(), Some(at(50)));

        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedHome), at(25), &t);
        assert_eq!(
            changed(outcome),
            [tr(AlarmState::Arming, AlarmState::ArmedHome, at(25), None)]
        );
        assert_eq!(alarm.next_deadline(), None);
    }

    #[test]
    fn arm_the_mode_being_armed_keeps_the_running_exit_delay() {
        let mut alarm = alarm_in(AlarmState::Arming);
        let before = alarm.clone();
        let outcome = alarm.handle(Command::Arm(ArmMode::ArmedAway), at(20), &timings());
        assert_eq!(outcome, Outcome::Unchanged);
        assert_eq!(alarm, before);
    }

    #[test]
    fn arm_the_mode_already_armed_is_unchanged() {
        for mode in ArmMode::ALL {
            let mut alarm = alarm_in(mode.state());
            let before = alarm.clone();
            let outcome = alarm.handle(Command::Arm(mode), at(100), &timings());
            assert_eq!(outcome, Outcome::Unchanged, "{mode}");
            assert_eq!(alarm, before);
        }
    }

    #[test]
    fn arm_while_pending_or_triggered_is_not_ready() {
        for state in [AlarmState::Pending, AlarmState::Triggered] {
            for mode in ArmMode::ALL {
                let mut alarm = alarm_in(state);
                let before = alarm.clone();
                let outcome = alarm.handle(Command::Arm(mode), at(1), &timings());
                assert_eq!(outcome, Outcome::NotReady, "{state} {mode}");
                assert_eq!(alarm, before);
            }
        }
    }

    #[test]
    fn disarm_from_every_state_but_disarmed_goes_to_disarmed_and_forgets_the_deadline() {
        for state in ALL_STATES.into_iter().skip(1) {
            let mut alarm = alarm_in(state);
            let outcome = alarm.handle(Command::Disarm, at(7), &timings());
            assert_eq!(
                changed(outcome),
                [tr(state, AlarmState::Disarmed, at(7), None)]
            );
            let mut disarmed = Alarm::new(at(7));
            disarmed.changed_at = at(7);
            assert_eq!(alarm, disarmed, "from {state}");
        }
    }

    #[test]
    fn disarm_while_disarmed_is_already_disarmed() {
        let mut alarm = Alarm::new(t0());
        let outcome = alarm.handle(Command::Disarm, at(7), &timings());
        assert_eq!(outcome, Outcome::AlreadyDisarmed);
        assert_eq!(alarm, Alarm::new(t0()));
    }

    #[test]
    fn trigger_while_armed_starts_the_entry_delay_and_remembers_the_mode() {
        for mode in ArmMode::ALL {
            let mut alarm = alarm_in(mode.state());
            let outcome = alarm.handle(Command::Trigger, at(100), &timings());
            assert_eq!(
                changed(outcome),
                [tr(mode.state(), AlarmState::Pending, at(100), Some(30))]
            );
            assert_eq!(alarm.mode, Some(mode));
            assert_eq!(alarm.next_deadline(), Some(at(130)));
        }
    }

    #[test]
    fn trigger_with_zero_entry_delay_triggers_at_once_until_the_siren_time_ends() {
        let t = Timings {
            entry_delay_s: 0,
            ..timings()
        };
        let mut alarm = armed_away_at_t0();
        let outcome = alarm.handle(Command::Trigger, at(100), &t);
        assert_eq!(
            changed(outcome),
            [tr(
                AlarmState::ArmedAway,
                AlarmState::Triggered,
                at(100),
                None
            )]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedAway));
        assert_eq!(alarm.next_deadline(), Some(at(700)));
    }

    #[test]
    fn trigger_while_pending_or_triggered_keeps_the_running_deadline() {
        for state in [AlarmState::Pending, AlarmState::Triggered] {
            let mut alarm = alarm_in(state);
            let before = alarm.clone();
            let outcome = alarm.handle(Command::Trigger, at(10), &timings());
            assert_eq!(outcome, Outcome::Unchanged, "{state}");
            assert_eq!(alarm, before);
        }
    }

    #[test]
    fn trigger_while_disarmed_or_arming_is_ignored() {
        for state in [AlarmState::Disarmed, AlarmState::Arming] {
            let mut alarm = alarm_in(state);
            let before = alarm.clone();
            let outcome = alarm.handle(Command::Trigger, at(10), &timings());
            assert_eq!(outcome, Outcome::TriggerIgnored, "{state}");
            assert_eq!(alarm, before);
        }
    }

    #[test]
    fn entry_delay_running_out_triggers_with_the_siren_counted_from_the_entry_deadline() {
        let t = timings();
        let mut alarm = armed_away_at_t0();
        let _ = alarm.handle(Command::Trigger, at(100), &t);
        assert!(alarm.advance(at(129), &t).is_empty());
        assert_eq!(
            alarm.advance(at(130), &t),
            [tr(
                AlarmState::Pending,
                AlarmState::Triggered,
                at(130),
                None
            )]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedAway));
        assert_eq!(alarm.next_deadline(), Some(at(730)));
    }

    #[test]
    fn siren_time_running_out_returns_to_the_armed_mode() {
        let t = timings();
        let mut alarm = alarm_in(AlarmState::ArmedNight);
        let _ = alarm.handle(Command::Trigger, at(100), &t);
        alarm.advance(at(130), &t);
        assert!(alarm.advance(at(729), &t).is_empty());
        assert_eq!(
            alarm.advance(at(730), &t),
            [tr(
                AlarmState::Triggered,
                AlarmState::ArmedNight,
                at(730),
                None
            )]
        );
        assert_eq!(alarm.mode, Some(ArmMode::ArmedNight));
        assert_eq!(alarm.next_deadline(), None);
        assert_eq!(alarm.changed_at, at(730));
    }

    #[test]
    fn panic_triggers_at_once_from_every_state_and_remembers_where_to_return() {
        let cases = [
            (AlarmState::Disarmed, None),
            (AlarmState::Arming, Some(ArmMode::ArmedAway)),
            (AlarmState::ArmedHome, Some(ArmMode::ArmedHome)),
            (AlarmState::ArmedAway, Some(ArmMode::ArmedAway)),
            (AlarmState::ArmedNight, Some(ArmMode::ArmedNight)),
            (AlarmState::ArmedVacation, Some(ArmMode::ArmedVacation)),
            (AlarmState::Pending, Some(ArmMode::ArmedAway)),
        ];
        for (state, return_to) in cases {
            let mut alarm = alarm_in(state);
            let outcome = alarm.handle(Command::Panic, at(20), &timings());
            assert_eq!(
                changed(outcome),
                [tr(state, AlarmState::Triggered, at(20), None)]
            );
            assert_eq!(alarm.mode, return_to, "from {state}");
            assert_eq!(alarm.next_deadline(), Some(at(620)), "from {state}");
        }
    }

    #[test]
    fn a_panic_while_the_siren_sounds_changes_nothing() {
        let mut alarm = alarm_in(AlarmState::Triggered);
        let deadline = alarm.next_deadline();
        assert_eq!(
            alarm.handle(Command::Panic, at(20), &timings()),
            Outcome::Unchanged
        );
        assert_eq!(alarm.next_deadline(), deadline);
    }

    #[test]
    fn panic_while_disarmed_returns_to_disarmed_after_the_siren_time() {
        let t = timings();
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Panic, t0(), &t);
        assert_eq!(
            alarm.advance(at(600), &t),
            [tr(
                AlarmState::Triggered,
                AlarmState::Disarmed,
                at(600),
                None
            )]
        );
        assert_eq!(alarm, {
            let mut disarmed = Alarm::new(t0());
            disarmed.changed_at = at(600);
            disarmed
        });
    }

    #[test]
    fn panic_while_arming_returns_to_the_mode_being_armed() {
        let t = timings();
        let mut alarm = alarm_in(AlarmState::Arming);
        let _ = alarm.handle(Command::Panic, at(10), &t);
        assert_eq!(
            alarm.advance(at(610), &t),
            [tr(
                AlarmState::Triggered,
                AlarmState::ArmedAway,
                at(610),
                None
            )]
        );
    }

    #[test]
    fn catch_up_after_downtime_arms_at_the_missed_end_of_the_exit_delay() {
        let t = timings();
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedVacation), t0(), &t);
        assert_eq!(
            alarm.advance(at(3600), &t),
            [tr(
                AlarmState::Arming,
                AlarmState::ArmedVacation,
                at(30),
                None
            )]
        );
        assert_eq!(alarm.changed_at, at(30));
    }

    #[test]
    fn catch_up_after_the_entry_delay_ran_out_triggers_with_the_siren_from_the_entry_deadline() {
        let t = timings();
        let mut alarm = armed_away_at_t0();
        let _ = alarm.handle(Command::Trigger, t0(), &t);
        // Down from 10 s to 300 s: the entry delay ended at 30 s, the siren runs until 630 s.
        assert_eq!(
            alarm.advance(at(300), &t),
            [tr(AlarmState::Pending, AlarmState::Triggered, at(30), None)]
        );
        assert_eq!(alarm.state, AlarmState::Triggered);
        assert_eq!(alarm.next_deadline(), Some(at(630)));
        assert_eq!(alarm.changed_at, at(30));
    }

    #[test]
    fn catch_up_after_entry_delay_and_siren_both_ran_out_returns_to_armed() {
        let t = timings();
        let mut alarm = armed_away_at_t0();
        let _ = alarm.handle(Command::Trigger, t0(), &t);
        assert_eq!(
            alarm.advance(at(5000), &t),
            [
                tr(AlarmState::Pending, AlarmState::Triggered, at(30), None),
                tr(AlarmState::Triggered, AlarmState::ArmedAway, at(630), None),
            ]
        );
        assert_eq!(alarm, {
            let mut armed = armed_away_at_t0();
            armed.changed_at = at(630);
            armed
        });
    }

    #[test]
    fn zero_siren_time_passes_through_triggered_at_the_entry_deadline() {
        let t = Timings {
            trigger_time_s: 0,
            ..timings()
        };
        let mut alarm = armed_away_at_t0();
        let _ = alarm.handle(Command::Trigger, t0(), &t);
        assert_eq!(
            alarm.advance(at(30), &t),
            [
                tr(AlarmState::Pending, AlarmState::Triggered, at(30), None),
                tr(AlarmState::Triggered, AlarmState::ArmedAway, at(30), None),
            ]
        );
    }

    #[test]
    fn a_shift_moves_the_running_delay_and_keeps_the_time_it_has_left() {
        let t = timings();
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedAway), t0(), &t);
        assert_eq!(alarm.seconds_left(at(10)), Some(20));
        // NTP steps the clock an hour ahead at 10 s: 20 s are still left, not none.
        alarm.shift(SignedDuration::from_hours(1));
        assert!(alarm.advance(at(3600 + 10), &t).is_empty());
        assert_eq!(alarm.seconds_left(at(3600 + 10)), Some(20));
        assert_eq!(alarm.changed_at, t0(), "what is past stays");
        assert_eq!(alarm.advance(at(3600 + 30), &t).len(), 1);
        // Back a day: the delay does not run a day longer.
        let _ = alarm.handle(Command::Trigger, at(4000), &t);
        alarm.shift(SignedDuration::from_hours(-24));
        assert_eq!(alarm.seconds_left(at(4000 - 86_400)), Some(30));
        let mut disarmed = Alarm::new(t0());
        disarmed.shift(SignedDuration::from_hours(1));
        assert_eq!(disarmed, Alarm::new(t0()));
    }

    #[test]
    fn a_restored_delay_is_cut_to_its_configured_length_and_a_passed_one_still_catches_up() {
        let t = timings();
        // Saved by a clock ten days ahead: the exit delay would run for ten days.
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedAway), at(864_000), &t);
        assert_eq!(alarm.cap(t0(), &t), Some(at(864_030)));
        assert_eq!(alarm.next_deadline(), Some(at(30)));
        assert_eq!(alarm.cap(t0(), &t), None, "once is enough");
        for (state, length) in [(AlarmState::Pending, 30), (AlarmState::Triggered, 600)] {
            let mut alarm = alarm_in(state);
            alarm.deadline = Some(at(1_000_000));
            assert_eq!(alarm.cap(at(5), &t), Some(at(1_000_000)), "{state}");
            assert_eq!(alarm.next_deadline(), Some(at(5 + length)), "{state}");
        }
        // A delay within its length, or one that ran out while the daemon was down, stays.
        let mut alarm = alarm_in(AlarmState::Pending);
        let before = alarm.clone();
        assert_eq!(alarm.cap(at(10), &t), None);
        assert_eq!(alarm.cap(at(5000), &t), None);
        assert_eq!(alarm, before);
        assert_eq!(alarm.advance(at(5000), &t).len(), 2, "the catch-up runs on");
        assert_eq!(armed_away_at_t0().cap(t0(), &t), None);
    }

    #[test]
    fn seconds_left_rounds_up_during_delays_and_is_none_otherwise() {
        let t = timings();
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedAway), t0(), &t);
        assert_eq!(alarm.seconds_left(t0()), Some(30));
        let half_past = t0() + SignedDuration::from_millis(29_500);
        assert_eq!(alarm.seconds_left(half_past), Some(1));
        assert_eq!(alarm.seconds_left(at(31)), Some(0));
        alarm.advance(at(30), &t);
        assert_eq!(alarm.seconds_left(at(30)), None);
        let _ = alarm.handle(Command::Trigger, at(40), &t);
        assert_eq!(alarm.seconds_left(at(41)), Some(29));
        alarm.advance(at(70), &t);
        assert_eq!(alarm.state, AlarmState::Triggered);
        assert_eq!(alarm.seconds_left(at(70)), None);
        assert_eq!(Alarm::new(t0()).seconds_left(t0()), None);
    }

    #[test]
    fn absurd_delays_saturate_instead_of_panicking() {
        let t = Timings::new(|_| u64::MAX, u64::MAX, u64::MAX);
        let mut alarm = Alarm::new(t0());
        let _ = alarm.handle(Command::Arm(ArmMode::ArmedAway), t0(), &t);
        assert_eq!(alarm.next_deadline(), Some(Timestamp::MAX));
        assert!(alarm.seconds_left(t0()).is_some());
        assert!(alarm.advance(at(1_000_000), &t).is_empty());
        let _ = alarm.handle(Command::Panic, t0(), &t);
        assert_eq!(alarm.next_deadline(), Some(Timestamp::MAX));
    }

    #[test]
    fn state_file_json_is_small_and_self_describing() {
        let t = timings();
        let mut alarm = armed_away_at_t0();
        let _ = alarm.handle(Command::Trigger, t0(), &t);
        assert_eq!(
            serde_json::to_string(&alarm).unwrap(),
            r#"{"state":"pending","mode":"armed_away","deadline":"2024-06-01T12:00:30Z","changed_at":"2024-06-01T12:00:00Z"}"#
        );
    }

    #[test]
    fn every_state_survives_a_json_round_trip_and_behaves_the_same_afterwards() {
        let t = timings();
        let commands = [
            Command::Arm(ArmMode::ArmedHome),
            Command::Arm(ArmMode::ArmedAway),
            Command::Disarm,
            Command::Trigger,
            Command::Panic,
        ];
        for state in ALL_STATES {
            let original = alarm_in(state);
            let json = serde_json::to_string(&original).unwrap();
            let restored: Alarm = serde_json::from_str(&json).unwrap();
            assert_eq!(restored, original, "{state}");
            for later in [at(1), at(45), at(700), at(10_000)] {
                let (mut a, mut b) = (original.clone(), restored.clone());
                assert_eq!(a.advance(later, &t), b.advance(later, &t), "{state}");
                assert_eq!(a, b);
            }
            for command in commands {
                let (mut a, mut b) = (original.clone(), restored.clone());
                assert_eq!(a.handle(command, at(2), &t), b.handle(command, at(2), &t));
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn a_state_file_that_no_command_could_produce_is_refused() {
        let damaged = [
            r#"{"state":"arming","mode":null,"deadline":"2024-06-01T12:00:30Z","changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"pending","mode":"armed_away","deadline":null,"changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"triggered","mode":null,"deadline":null,"changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"armed_home","mode":"armed_away","deadline":null,"changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"disarmed","mode":null,"deadline":"2024-06-01T12:00:30Z","changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"armed_sideways","mode":null,"deadline":null,"changed_at":"2024-06-01T12:00:00Z"}"#,
            r#"{"state":"disarmed","mode":null,"deadline":null}"#,
        ];
        for json in damaged {
            assert!(serde_json::from_str::<Alarm>(json).is_err(), "{json}");
        }
        let err = serde_json::from_str::<Alarm>(damaged[0]).unwrap_err();
        assert!(err.to_string().contains("arming without a mode"), "{err}");
    }
}
