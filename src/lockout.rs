//! Per-source lockout after repeated wrong codes (DESIGN.md section 4, "Lockout"). A source is
//! a string such as `keypad:hall`, `homeassistant` or `admin`; each counts on its own. Pure: time
//! is passed in, and the daemon asks [`Lockouts::check`] before hashing a code so a locked source
//! costs no Argon2 work. The daemon keeps a snapshot ([`Lockouts::to_json`]) in the store, so
//! cutting the power does not lift a lockout; `keypad-bridge unlock` lifts one by hand
//! ([`Lockouts::unlock`]).

use std::collections::{HashMap, VecDeque};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The key of the snapshot ([`Lockouts::to_json`]) in the store's `meta` tree.
pub const META_KEY: &str = "lockouts";

/// The `lockout:` config section, read straight from the file (`config::LockoutConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutRules {
    /// Failures within `window_s` that lock the source (0 behaves as 1).
    pub max_failures: u32,
    pub window_s: u64,
    /// The first lockout; each further one without a success in between lasts twice as long.
    pub duration_s: u64,
    /// Cap on the doubling (a value below `duration_s` behaves as `duration_s`).
    pub max_duration_s: u64,
}

/// The source is locked out until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    pub until: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Lockouts {
    rules: LockoutRules,
    sources: HashMap<String, Source>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Source {
    /// Recent failures, oldest first; never more than `max_failures`.
    failures: VecDeque<Timestamp>,
    locked_until: Option<Timestamp>,
    /// Lockouts since the doubling last started again: its exponent.
    lockouts: u32,
    /// When the last lockout ended: a success restarts the doubling only `max_duration_s`
    /// after it.
    #[serde(default)]
    last_lock_end: Option<Timestamp>,
}

impl Default for LockoutRules {
    fn default() -> Self {
        LockoutRules {
            max_failures: 4,
            window_s: 600,
            duration_s: 90,
            max_duration_s: 3600,
        }
    }
}

impl LockoutRules {
    /// The config section is the rules themselves; kept for the daemon's call.
    pub fn from_config(rules: &crate::config::LockoutConfig) -> LockoutRules {
        *rules
    }
}

impl Lockouts {
    pub fn new(rules: LockoutRules) -> Lockouts {
        Lockouts {
            rules,
            sources: HashMap::new(),
        }
    }

    pub fn rules(&self) -> LockoutRules {
        self.rules
    }

    /// The counts and locks, to be kept across restarts.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.sources).unwrap_or_default()
    }

    /// Counts and locks saved by [`Lockouts::to_json`]; an unreadable snapshot starts afresh
    /// (nothing in it is worth refusing to start over).
    pub fn restore(rules: LockoutRules, saved: Option<&[u8]>) -> Lockouts {
        let sources = saved
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or_default();
        Lockouts { rules, sources }
    }

    /// `Err` while `source` is locked: the caller refuses the attempt without hashing the code.
    pub fn check(&self, source: &str, now: Timestamp) -> Result<(), Locked> {
        match self.sources.get(source).and_then(|s| s.locked_until) {
            Some(until) if now < until => Err(Locked { until }),
            _ => Ok(()),
        }
    }

    /// Counts one attempt answered `invalid_code`. Returns `Some` exactly when this failure
    /// starts a lockout, so the caller publishes one `lockout` event per lockout. A failure
    /// recorded while the source is already locked changes nothing (the caller should have
    /// refused it after [`Lockouts::check`]).
    pub fn record_failure(&mut self, source: &str, now: Timestamp) -> Option<Locked> {
        let rules = self.rules;
        let max_failures = usize::try_from(rules.max_failures.max(1)).unwrap_or(usize::MAX);
        let state = self.sources.entry(source.to_owned()).or_default();
        if let Some(until) = state.locked_until {
            if now < until {
                return None;
            }
            state.locked_until = None;
        }
        let window = SignedDuration::from_secs(i64::try_from(rules.window_s).unwrap_or(i64::MAX));
        // A failure is forgotten once `window_s` have passed since it.
        while let Some(&oldest) = state.failures.front() {
            if now.duration_since(oldest) >= window {
                state.failures.pop_front();
            } else {
                break;
            }
        }
        while state.failures.len() >= max_failures {
            state.failures.pop_front();
        }
        state.failures.push_back(now);
        if state.failures.len() < max_failures {
            return None;
        }
        let until = after(now, lock_duration_s(&rules, state.lockouts));
        state.failures.clear();
        state.locked_until = Some(until);
        state.last_lock_end = Some(until);
        state.lockouts = state.lockouts.saturating_add(1);
        Some(Locked { until })
    }

    /// A permitted code that changed something, at `now`. No failure is forgotten (DESIGN 4:
    /// each one expires `window_s` after it happened), or anyone with a code of their own
    /// could guess three codes, type their own, and repeat. The doubling starts again from
    /// `duration_s` only when the last lockout ended at least `max_duration_s` ago: otherwise
    /// that person would get four guesses every `duration_s` where a stranger gets four an
    /// hour. A lock in force stays (the caller never hashes during one).
    pub fn record_success(&mut self, source: &str, now: Timestamp) {
        let quiet = SignedDuration::from_secs(
            i64::try_from(self.rules.max_duration_s.max(self.rules.duration_s)).unwrap_or(i64::MAX),
        );
        if let Some(state) = self.sources.get_mut(source) {
            let long_ago = state
                .last_lock_end
                .is_none_or(|end| now.duration_since(end) >= quiet);
            if long_ago {
                state.lockouts = 0;
            }
        }
    }
}

/// A restored lock that [`Lockouts::cap`] cut short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capped {
    pub source: String,
    /// The end it was saved with.
    pub was: Timestamp,
    pub until: Timestamp,
    /// The lock's own duration, which it may not exceed from now.
    pub duration_s: u64,
}

impl Lockouts {
    /// Whether nothing is counted or locked (nothing to keep).
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The wall clock was stepped by `by` and the daemon's clock followed it: every lock,
    /// failure and lock end moves with it, so no lock ends early or late and every failure
    /// still counts for `window_s`.
    pub fn shift(&mut self, by: SignedDuration) {
        let moved = |t: &mut Timestamp| *t = crate::clock::shift(*t, by);
        for state in self.sources.values_mut() {
            state.failures.iter_mut().for_each(moved);
            state.locked_until.iter_mut().for_each(moved);
            state.last_lock_end.iter_mut().for_each(moved);
        }
    }

    /// At start-up, on a restored snapshot: no lock lasts longer from `now` than its own
    /// duration (`duration_s` doubled as often as it was, at most `max_duration_s`), and no
    /// failure counts from later than `now`. A snapshot saved by a clock that was ahead, or
    /// read by one that is behind, must not lock anyone out for longer. A lock that ended
    /// while the daemon was down stays ended (DESIGN 5's catch-up). Returns the locks cut.
    pub fn cap(&mut self, now: Timestamp) -> Vec<Capped> {
        let rules = self.rules;
        let mut capped = Vec::new();
        for (source, state) in &mut self.sources {
            let duration_s = lock_duration_s(&rules, state.lockouts.saturating_sub(1));
            let latest = after(now, duration_s);
            for failure in &mut state.failures {
                *failure = (*failure).min(now);
            }
            state.last_lock_end = state.last_lock_end.map(|end| end.min(latest));
            if let Some(was) = state.locked_until.filter(|&until| until > latest) {
                state.locked_until = Some(latest);
                capped.push(Capped {
                    source: source.clone(),
                    was,
                    until: latest,
                    duration_s,
                });
            }
        }
        capped.sort_by(|a, b| a.source.cmp(&b.source));
        capped
    }
}

/// What [`Lockouts::unlock`] forgot about one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unlocked {
    pub source: String,
    /// The end of the lock that was lifted; `None` when the source was not locked.
    pub was_locked_until: Option<Timestamp>,
    /// Failures that still counted (within `window_s`).
    pub failures: usize,
    /// Earlier lockouts: the exponent of the doubling.
    pub lockouts: u32,
}

impl Lockouts {
    /// Lifts the lock of `source`, or of every source with `None`, and forgets its failures
    /// and its doubling. Returns what was forgotten, by source name; a source with nothing
    /// in force (no lock, no failure within the window, no earlier lockout) is not listed.
    pub fn unlock(&mut self, source: Option<&str>, now: Timestamp) -> Vec<Unlocked> {
        let window =
            SignedDuration::from_secs(i64::try_from(self.rules.window_s).unwrap_or(i64::MAX));
        let names: Vec<String> = match source {
            Some(name) => vec![name.to_owned()],
            None => self.sources.keys().cloned().collect(),
        };
        let mut unlocked: Vec<Unlocked> = names
            .into_iter()
            .filter_map(|name| {
                let state = self.sources.remove(&name)?;
                let entry = Unlocked {
                    was_locked_until: state.locked_until.filter(|&until| now < until),
                    failures: state
                        .failures
                        .iter()
                        .filter(|&&at| now.duration_since(at) < window)
                        .count(),
                    lockouts: state.lockouts,
                    source: name,
                };
                let in_force =
                    entry.was_locked_until.is_some() || entry.failures > 0 || entry.lockouts > 0;
                in_force.then_some(entry)
            })
            .collect();
        unlocked.sort_by(|a, b| a.source.cmp(&b.source));
        unlocked
    }
}

/// `duration_s * 2^previous_lockouts`, capped, without overflow however many lockouts came before.
fn lock_duration_s(rules: &LockoutRules, previous_lockouts: u32) -> u64 {
    let cap = rules.max_duration_s.max(rules.duration_s);
    2u64.checked_pow(previous_lockouts)
        .and_then(|factor| rules.duration_s.checked_mul(factor))
        .map_or(cap, |secs| secs.min(cap))
}

use crate::alarm::after;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lockout_survives_a_snapshot_and_restore() {
        let rules = LockoutRules {
            max_failures: 4,
            window_s: 600,
            duration_s: 90,
            max_duration_s: 3600,
        };
        let t0: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let mut l = Lockouts::new(rules);
        for _ in 0..4 {
            l.record_failure("keypad:hall", t0);
        }
        let mut back = Lockouts::restore(rules, Some(&l.to_json()));
        assert!(back.check("keypad:hall", t0).is_err());
        // The doubling is kept too: the next lockout lasts 180 s.
        let t1 = after(t0, 100);
        let locked = (0..4)
            .filter_map(|_| back.record_failure("keypad:hall", t1))
            .last();
        assert_eq!(locked.map(|l| l.until), Some(after(t1, 180)));
        assert!(Lockouts::restore(rules, Some(b"garbage"))
            .check("keypad:hall", t0)
            .is_ok());
    }

    const HALL: &str = "keypad:hall";

    fn t0() -> Timestamp {
        "2024-06-01T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    /// DESIGN.md defaults.
    fn lockouts() -> Lockouts {
        Lockouts::new(LockoutRules {
            max_failures: 4,
            window_s: 600,
            duration_s: 90,
            max_duration_s: 3600,
        })
    }

    /// Records failures at `start`, `start + 1`, ... until one starts a lockout; returns it.
    fn lock(lockouts: &mut Lockouts, source: &str, start: i64) -> Locked {
        for i in 0..4 {
            if let Some(locked) = lockouts.record_failure(source, at(start + i)) {
                assert_eq!(i, 3, "locked after {} failures", i + 1);
                return locked;
            }
        }
        panic!("four failures did not lock");
    }

    #[test]
    fn fourth_wrong_code_within_ten_minutes_locks_for_ninety_seconds() {
        let mut l = lockouts();
        assert_eq!(l.record_failure(HALL, at(0)), None);
        assert_eq!(l.record_failure(HALL, at(200)), None);
        assert_eq!(l.record_failure(HALL, at(400)), None);
        assert_eq!(l.check(HALL, at(500)), Ok(()));
        assert_eq!(
            l.record_failure(HALL, at(599)),
            Some(Locked { until: at(689) })
        );
    }

    #[test]
    fn check_refuses_during_the_lock_and_allows_from_its_end() {
        let mut l = lockouts();
        let locked = lock(&mut l, HALL, 0);
        assert_eq!(locked.until, at(93));
        assert_eq!(l.check(HALL, at(3)), Err(locked));
        assert_eq!(l.check(HALL, at(92)), Err(locked));
        assert_eq!(l.check(HALL, at(93)), Ok(()));
        assert_eq!(l.check(HALL, at(10_000)), Ok(()));
    }

    #[test]
    fn failures_spread_beyond_the_window_never_lock() {
        let mut l = lockouts();
        for i in 0..100 {
            assert_eq!(l.record_failure(HALL, at(i * 200)), None, "failure {i}");
            assert_eq!(l.check(HALL, at(i * 200)), Ok(()));
        }
    }

    #[test]
    fn a_failure_exactly_window_seconds_old_is_forgotten() {
        let mut l = lockouts();
        for secs in [0, 10, 20] {
            assert_eq!(l.record_failure(HALL, at(secs)), None);
        }
        assert_eq!(l.record_failure(HALL, at(600)), None);
        assert!(l.record_failure(HALL, at(601)).is_some());
    }

    #[test]
    fn each_further_lockout_doubles_up_to_the_maximum() {
        let mut l = lockouts();
        let mut start = 0;
        let mut durations = Vec::new();
        for _ in 0..8 {
            let locked = lock(&mut l, HALL, start);
            let began = at(start + 3);
            durations.push(locked.until.duration_since(began).as_secs());
            start = locked.until.duration_since(t0()).as_secs() + 1;
        }
        assert_eq!(durations, [90, 180, 360, 720, 1440, 2880, 3600, 3600]);
    }

    #[test]
    fn a_hundred_lockouts_stay_capped_without_overflow() {
        let mut l = lockouts();
        let mut start = 0;
        for _ in 0..200 {
            let locked = lock(&mut l, HALL, start);
            start = locked.until.duration_since(t0()).as_secs() + 1;
        }
        let locked = lock(&mut l, HALL, start);
        assert_eq!(locked.until, at(start + 3 + 3600));
    }

    #[test]
    fn a_huge_duration_saturates_instead_of_panicking() {
        let mut l = Lockouts::new(LockoutRules {
            max_failures: 1,
            window_s: u64::MAX,
            duration_s: u64::MAX,
            max_duration_s: u64::MAX,
        });
        assert_eq!(
            l.record_failure(HALL, t0()),
            Some(Locked {
                until: Timestamp::MAX
            })
        );
        assert!(l.check(HALL, at(1_000_000_000)).is_err());
    }

    #[test]
    fn after_a_lock_ends_the_count_starts_from_zero_but_the_doubling_is_kept() {
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        // The three failures before the lock do not count again.
        for secs in [93, 94, 95] {
            assert_eq!(l.record_failure(HALL, at(secs)), None);
        }
        assert_eq!(
            l.record_failure(HALL, at(96)),
            Some(Locked {
                until: at(96 + 180)
            })
        );
    }

    #[test]
    fn exactly_one_lockout_per_lock_even_when_failures_keep_coming() {
        let mut l = lockouts();
        let mut lockouts_started = 0;
        for secs in 0..200 {
            if l.record_failure(HALL, at(secs)).is_some() {
                lockouts_started += 1;
            }
        }
        // Locked at 3 until 93; then at 96 until 276.
        assert_eq!(lockouts_started, 2);
        assert_eq!(l.check(HALL, at(199)), Err(Locked { until: at(276) }));
    }

    #[test]
    fn a_failure_during_the_lock_does_not_extend_it() {
        let mut l = lockouts();
        let locked = lock(&mut l, HALL, 0);
        assert_eq!(l.record_failure(HALL, at(50)), None);
        assert_eq!(l.check(HALL, at(50)), Err(locked));
        assert_eq!(l.check(HALL, locked.until), Ok(()));
    }

    #[test]
    fn a_success_forgets_no_failure_each_expires_window_seconds_after_it_happened() {
        let mut l = lockouts();
        for secs in [0, 1, 2] {
            assert_eq!(l.record_failure(HALL, at(secs)), None);
        }
        // Someone types their own code between guesses: the count goes on.
        l.record_success(HALL, at(3));
        assert_eq!(
            l.record_failure(HALL, at(3)),
            Some(Locked { until: at(93) })
        );
        // Three guesses, a success, and the fourth guess after the first one expired.
        let mut l = lockouts();
        for secs in [0, 300, 400] {
            assert_eq!(l.record_failure(HALL, at(secs)), None);
        }
        l.record_success(HALL, at(500));
        assert_eq!(l.record_failure(HALL, at(600)), None);
        assert!(l.record_failure(HALL, at(601)).is_some());
    }

    #[test]
    fn a_success_an_hour_after_the_last_lockout_restarts_the_doubling() {
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        let second = lock(&mut l, HALL, 100);
        assert_eq!(second.until, at(103 + 180));
        // Soon after the lockout: the doubling goes on.
        l.record_success(HALL, at(300));
        let third = lock(&mut l, HALL, 400);
        assert_eq!(third.until, at(403 + 360));
        // An hour after the last lockout ended: it starts again from 90 s.
        l.record_success(HALL, at(763 + 3600));
        let locked = lock(&mut l, HALL, 10_000);
        assert_eq!(locked.until, at(10_003 + 90));
    }

    #[test]
    fn someone_with_a_code_of_their_own_gains_nothing_by_using_it_between_lockouts() {
        let mut l = lockouts();
        let mut start = 0;
        let mut durations = Vec::new();
        for _ in 0..6 {
            let locked = lock(&mut l, HALL, start);
            durations.push(locked.until.duration_since(at(start + 3)).as_secs());
            let end = locked.until.duration_since(t0()).as_secs();
            l.record_success(HALL, at(end + 1));
            start = end + 2;
        }
        assert_eq!(durations, [90, 180, 360, 720, 1440, 2880]);
    }

    #[test]
    fn success_during_a_lock_does_not_lift_it() {
        let mut l = lockouts();
        let locked = lock(&mut l, HALL, 0);
        l.record_success(HALL, at(10));
        assert_eq!(l.check(HALL, at(10)), Err(locked));
        let next = lock(&mut l, HALL, 1000);
        assert_eq!(next.until, at(1003 + 180), "nor restart the doubling");
    }

    #[test]
    fn sources_are_independent() {
        let mut l = lockouts();
        let locked = lock(&mut l, HALL, 0);
        assert_eq!(l.check(HALL, at(10)), Err(locked));
        assert_eq!(l.check("keypad:garage", at(10)), Ok(()));
        assert_eq!(l.check("homeassistant", at(10)), Ok(()));
        for secs in [4, 5, 6] {
            assert_eq!(l.record_failure("admin", at(secs)), None);
        }
        l.record_success("homeassistant", at(7));
        assert!(l.record_failure("admin", at(7)).is_some());
        l.record_success("admin", at(8));
        assert_eq!(l.check(HALL, at(10)), Err(locked));
    }

    #[test]
    fn memory_per_source_stays_within_max_failures() {
        let mut l = Lockouts::new(LockoutRules {
            max_failures: 3,
            window_s: 10,
            duration_s: 1,
            max_duration_s: 1,
        });
        for secs in 0..1000 {
            let _ = l.record_failure(HALL, at(secs * 4));
            assert!(l.sources[HALL].failures.len() <= 3);
        }
    }

    #[test]
    fn unlock_lifts_one_lock_and_forgets_its_doubling() {
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        let locked = lock(&mut l, HALL, 100);
        lock(&mut l, "admin", 0);
        assert_eq!(
            l.unlock(Some(HALL), at(110)),
            [Unlocked {
                source: HALL.into(),
                was_locked_until: Some(locked.until),
                failures: 0,
                lockouts: 2,
            }]
        );
        assert_eq!(l.check(HALL, at(110)), Ok(()));
        // The next lockout is the first again: 90 s, not 360 s.
        assert_eq!(lock(&mut l, HALL, 200).until, at(203 + 90));
        assert!(
            l.check("admin", at(10)).is_err(),
            "the other sources stay locked"
        );
    }

    #[test]
    fn unlock_of_every_source_names_each_one_in_order() {
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        lock(&mut l, "admin", 0);
        l.record_failure("homeassistant", at(1));
        let unlocked = l.unlock(None, at(10));
        let names: Vec<&str> = unlocked.iter().map(|u| u.source.as_str()).collect();
        assert_eq!(names, ["admin", "homeassistant", HALL]);
        assert_eq!(unlocked[1].was_locked_until, None);
        assert_eq!(unlocked[1].failures, 1);
        for source in [HALL, "admin", "homeassistant"] {
            assert_eq!(l.check(source, at(10)), Ok(()));
        }
        assert!(
            l.unlock(None, at(10)).is_empty(),
            "nothing is left to unlock"
        );
        let saved = Lockouts::restore(l.rules, Some(&l.to_json()));
        assert!(saved.sources.is_empty());
    }

    #[test]
    fn unlock_forgets_failures_of_a_source_that_is_not_locked() {
        let mut l = lockouts();
        for secs in [0, 1, 2] {
            l.record_failure(HALL, at(secs));
        }
        let unlocked = l.unlock(Some(HALL), at(5));
        assert_eq!(unlocked.len(), 1);
        assert_eq!(
            (unlocked[0].was_locked_until, unlocked[0].failures),
            (None, 3)
        );
        // Three more failures do not lock: the first three are forgotten.
        for secs in [6, 7, 8] {
            assert_eq!(l.record_failure(HALL, at(secs)), None);
        }
    }

    #[test]
    fn unlock_of_an_unknown_or_clean_source_reports_nothing() {
        let mut l = lockouts();
        assert!(l.unlock(Some("keypad:nowhere"), at(0)).is_empty());
        // A lock that has ended and failures older than the window are nothing in force.
        l.record_failure("homeassistant", at(0));
        assert!(l.unlock(Some("homeassistant"), at(600)).is_empty());
        assert!(
            l.sources.is_empty(),
            "the stale entry is dropped all the same"
        );
    }

    #[test]
    fn a_shift_of_the_clock_neither_ends_a_lock_nor_forgets_a_failure() {
        let mut l = lockouts();
        let locked = lock(&mut l, HALL, 0);
        for secs in [10, 20] {
            l.record_failure("admin", at(secs));
        }
        // NTP steps the clock an hour ahead at 50 s.
        let hour = SignedDuration::from_hours(1);
        l.shift(hour);
        assert_eq!(
            l.check(HALL, at(3600 + 50)),
            Err(Locked {
                until: locked.until + hour
            }),
            "43 s are still left"
        );
        assert_eq!(l.check(HALL, at(3600 + 93)), Ok(()));
        // The two admin failures still count: two more lock.
        assert_eq!(l.record_failure("admin", at(3600 + 60)), None);
        assert!(l.record_failure("admin", at(3600 + 61)).is_some());
        // Back a day: the lock does not last a day longer.
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        l.shift(SignedDuration::from_hours(-24));
        assert!(l.check(HALL, at(-86_400 + 92)).is_err());
        assert_eq!(l.check(HALL, at(-86_400 + 93)), Ok(()));
    }

    #[test]
    fn a_restored_lock_never_lasts_longer_than_its_own_duration_nor_max_duration_s() {
        let mut l = lockouts();
        let first = lock(&mut l, HALL, 0);
        let second = lock(&mut l, "admin", 0);
        let third = lock(&mut l, "admin", second.until.duration_since(t0()).as_secs());
        assert_eq!(third.until.duration_since(second.until).as_secs(), 3 + 180);
        // Saved by a clock ten days ahead: read back at 0 s, the locks would last ten days.
        let ten_days = SignedDuration::from_hours(240);
        l.shift(ten_days);
        let mut back = Lockouts::restore(l.rules, Some(&l.to_json()));
        let capped = back.cap(at(0));
        assert_eq!(
            capped,
            [
                Capped {
                    source: "admin".into(),
                    was: third.until + ten_days,
                    until: at(180),
                    duration_s: 180,
                },
                Capped {
                    source: HALL.into(),
                    was: first.until + ten_days,
                    until: at(90),
                    duration_s: 90,
                },
            ]
        );
        assert!(back.check(HALL, at(89)).is_err());
        assert_eq!(back.check(HALL, at(90)), Ok(()));
        assert!(back.cap(at(0)).is_empty(), "once is enough");
        // Never more than max_duration_s, however many lockouts came before.
        let mut l = lockouts();
        let mut start = 0;
        for _ in 0..10 {
            let locked = lock(&mut l, HALL, start);
            start = locked.until.duration_since(t0()).as_secs() + 1;
        }
        l.shift(ten_days);
        let mut back = Lockouts::restore(l.rules, Some(&l.to_json()));
        assert_eq!(back.cap(at(0))[0].until, at(3600));
        // Failures "from the future" count from now, not for ten more days.
        let mut l = lockouts();
        for secs in [0, 1, 2] {
            l.record_failure(HALL, at(secs));
        }
        l.shift(ten_days);
        let mut back = Lockouts::restore(l.rules, Some(&l.to_json()));
        assert!(back.cap(at(0)).is_empty());
        assert_eq!(
            back.record_failure(HALL, at(600)),
            None,
            "all three forgotten"
        );
        // A lock that ended while the daemon was down stays ended.
        let mut l = lockouts();
        lock(&mut l, HALL, 0);
        assert!(l.cap(at(1000)).is_empty());
        assert_eq!(l.check(HALL, at(1000)), Ok(()));
    }

    #[test]
    fn zero_max_failures_locks_on_the_first_failure() {
        let mut l = Lockouts::new(LockoutRules {
            max_failures: 0,
            window_s: 600,
            duration_s: 90,
            max_duration_s: 3600,
        });
        assert_eq!(l.record_failure(HALL, t0()), Some(Locked { until: at(90) }));
    }
}
