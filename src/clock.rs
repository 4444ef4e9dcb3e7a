//! The daemon's clock (issue 10, "a clock it can trust"). A Raspberry Pi has no real-time
//! clock: it may boot thinking it is 1970 or the time it shut down, and NTP then steps the
//! system clock. Validity rules (`valid_from`, `valid_until`, `schedule`) need the wall time;
//! delays, lockouts and rate limits need durations that no step shortens or lengthens.
//!
//! So the daemon's time is a base wall time plus the monotonic time elapsed since the base
//! [`Instant`], never below the store's last write ([`crate::store::Store::last_write`]):
//! a system clock behind the last write is not trusted, and the clock counts on from the last
//! write instead. [`Clock::check`] compares the system clock with that time (each message,
//! each deadline, and every [`CHECK_EVERY`]): a difference beyond [`TOLERANCE`] is a step.
//! The clock follows a step forward, and a step back that stays at or after the last write,
//! and says by how much: the panel then moves every running deadline by the same amount
//! ([`crate::panel::Panel::shift`]), so what remains of each is unchanged. A step back behind
//! the last write is not followed. Deadlines are wall times; the loop sleeps on the monotonic
//! clock until [`Clock::until`] says they are due.
//!
//! Pure: the system's wall time and the `Instant` are passed in, so tests step the clock.

use std::fmt;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

/// A difference between the system clock and the daemon's time up to this is no step: NTP
/// slews the clock by fractions of a millisecond a second, and both clocks are read together.
pub const TOLERANCE: SignedDuration = SignedDuration::from_secs(2);
/// How often the loop compares the clocks when nothing else happens: validity rules follow a
/// corrected wall time within this.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The daemon's time: `base` at `base_mono`, then the monotonic time since.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Timestamp,
    base_mono: Instant,
    /// False while the system clock is behind the daemon's time and not followed (it was
    /// behind the last write).
    trusted: bool,
}

/// What a comparison of the system clock with the daemon's time found, for the log; a
/// [`Seen::Stepped`] also tells the panel by how much to move its deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// At start: the system clock is behind the store's last write.
    StartedBehind {
        system: Timestamp,
        last_write: Timestamp,
    },
    /// The system clock stepped by `by` (forward when positive) and the clock followed it:
    /// its time went from `from` to `to`. `was_behind`: it ends a time of not trusting it.
    Stepped {
        by: SignedDuration,
        from: Timestamp,
        to: Timestamp,
        was_behind: bool,
    },
    /// The system clock went back to `system`, before the store's last write: not followed;
    /// the clock counts on from `ours`.
    Behind {
        system: Timestamp,
        ours: Timestamp,
        last_write: Timestamp,
    },
    /// A system clock that was not trusted agrees with the daemon's time again.
    CaughtUp { system: Timestamp },
}

impl Seen {
    /// Logs what was seen, at the level it deserves. A step the clock followed is returned:
    /// the panel moves its deadlines by it.
    pub fn log(&self) -> Option<SignedDuration> {
        match self {
            Seen::Stepped {
                by,
                was_behind: true,
                ..
            } => {
                tracing::info!("{self}");
                Some(*by)
            }
            Seen::Stepped { by, .. } => {
                tracing::warn!("{self}");
                Some(*by)
            }
            Seen::CaughtUp { .. } => {
                tracing::info!("{self}");
                None
            }
            Seen::StartedBehind { .. } | Seen::Behind { .. } => {
                tracing::warn!("{self}");
                None
            }
        }
    }
}

impl Clock {
    /// The clock at start: the system's time, or the store's last write when the system clock
    /// is behind it (then also what to log).
    pub fn start(
        system: Timestamp,
        mono: Instant,
        last_write: Option<Timestamp>,
    ) -> (Clock, Option<Seen>) {
        match last_write {
            Some(last_write) if system < last_write => (
                Clock {
                    base: last_write,
                    base_mono: mono,
                    trusted: false,
                },
                Some(Seen::StartedBehind { system, last_write }),
            ),
            _ => (
                Clock {
                    base: system,
                    base_mono: mono,
                    trusted: true,
                },
                None,
            ),
        }
    }

    /// The daemon's time at `mono` (which may be a little before the last check: a message
    /// stamped on arrival).
    pub fn at(&self, mono: Instant) -> Timestamp {
        let since = match mono.checked_duration_since(self.base_mono) {
            Some(after) => SignedDuration::try_from(after).unwrap_or(SignedDuration::MAX),
            None => -SignedDuration::try_from(self.base_mono.duration_since(mono))
                .unwrap_or(SignedDuration::MAX),
        };
        shift(self.base, since)
    }

    /// Whether the daemon's time is the system's (false while the system clock is behind the
    /// last write).
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// How long from `mono` until the daemon's time reaches `deadline` (zero when it has).
    pub fn until(&self, deadline: Timestamp, mono: Instant) -> Duration {
        let left = deadline.duration_since(self.at(mono));
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }

    /// Compares the system clock (`system`, read at `mono`) with the daemon's time, given the
    /// store's last write. Follows a step forward, and a step back to a time not before the
    /// last write; reports a step back behind it once, and the end of such a time.
    pub fn check(
        &mut self,
        system: Timestamp,
        mono: Instant,
        last_write: Option<Timestamp>,
    ) -> Option<Seen> {
        let ours = self.at(mono);
        let by = system.duration_since(ours);
        if by.abs() <= TOLERANCE {
            if self.trusted {
                return None;
            }
            self.trusted = true;
            return Some(Seen::CaughtUp { system });
        }
        let last_write = last_write.unwrap_or(Timestamp::MIN);
        if by.is_negative() && (system < last_write || !self.trusted) {
            if !self.trusted {
                // Said already: counting on until the system clock catches up.
                return None;
            }
            self.trusted = false;
            return Some(Seen::Behind {
                system,
                ours,
                last_write,
            });
        }
        let was_behind = !self.trusted;
        *self = Clock {
            base: system,
            base_mono: mono,
            trusted: true,
        };
        Some(Seen::Stepped {
            by,
            from: ours,
            to: system,
            was_behind,
        })
    }
}

/// `at + by`, saturating at the ends of time.
pub fn shift(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_add(by).unwrap_or(if by.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// A step's size in plain words, to the second: `1h 2m 3s`.
pub fn words(by: SignedDuration) -> String {
    let secs = by.abs().as_secs();
    if secs == 0 {
        return format!("{} ms", by.abs().as_millis());
    }
    format!("{:#}", SignedDuration::from_secs(secs))
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::StartedBehind { system, last_write } => write!(
                f,
                "the system clock says {system:.0}, before the store's last write at \
                 {last_write:.0}: not trusting it. Using the last write time (plus the time \
                 since start) until the system clock catches up; validity rules (valid_from, \
                 valid_until, schedule) are checked against that time. On a Raspberry Pi, \
                 enable systemd-time-wait-sync.service so that the bridge starts after NTP"
            ),
            Seen::Stepped {
                by,
                from,
                to,
                was_behind: true,
            } => write!(
                f,
                "the system clock has caught up: it jumped {} ahead, to {to:.0} (the bridge \
                 was at {from:.0}); using it from now on. Running delays and lockouts keep \
                 the time they had left",
                words(*by)
            ),
            Seen::Stepped { by, from, to, .. } => write!(
                f,
                "the system clock jumped {} {}, from {from:.0} to {to:.0}: following it. \
                 Running delays and lockouts keep the time they had left",
                words(*by),
                if by.is_negative() { "back" } else { "ahead" }
            ),
            Seen::Behind {
                system,
                ours,
                last_write,
            } => write!(
                f,
                "the system clock went back to {system:.0}, before the store's last write at \
                 {last_write:.0}: not following it. The bridge counts on from {ours:.0} until \
                 the system clock catches up; validity rules are checked against that time"
            ),
            Seen::CaughtUp { system } => write!(
                f,
                "the system clock has caught up with the bridge's time ({system:.0}): using \
                 it from now on"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + secs).unwrap()
    }

    fn secs(n: i64) -> SignedDuration {
        SignedDuration::from_secs(n)
    }

    /// Monotonic time in whole seconds after a start.
    struct Mono(Instant);

    impl Mono {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    fn mono() -> Mono {
        Mono(Instant::now())
    }

    #[test]
    fn a_system_clock_after_the_last_write_is_the_time() {
        let m = mono();
        let (clock, seen) = Clock::start(t(100), m.at(0), Some(t(50)));
        assert_eq!(seen, None);
        assert!(clock.trusted());
        assert_eq!(clock.at(m.at(0)), t(100));
        assert_eq!(clock.at(m.at(7)), t(107));
        let (clock, _) = Clock::start(t(100), m.at(0), None);
        assert_eq!(clock.at(m.at(1)), t(101), "a store that never wrote");
    }

    #[test]
    fn a_system_clock_behind_the_last_write_at_start_is_replaced_by_the_last_write() {
        let m = mono();
        let epoch = Timestamp::from_second(12).unwrap();
        let (clock, seen) = Clock::start(epoch, m.at(0), Some(t(0)));
        assert_eq!(
            seen,
            Some(Seen::StartedBehind {
                system: epoch,
                last_write: t(0)
            })
        );
        assert!(!clock.trusted());
        assert_eq!(clock.at(m.at(0)), t(0));
        assert_eq!(clock.at(m.at(30)), t(30), "plus the time since start");
        let line = seen.unwrap().to_string();
        assert!(
            line.contains("1970-01-01T00:00:12Z") && line.contains("before the store's last write"),
            "{line}"
        );
    }

    #[test]
    fn time_runs_on_the_monotonic_clock_whatever_the_system_clock_does_between_checks() {
        let m = mono();
        let (clock, _) = Clock::start(t(0), m.at(0), None);
        // No check: the system clock's steps do not exist for it yet.
        assert_eq!(clock.at(m.at(90)), t(90));
        assert_eq!(clock.until(t(90), m.at(0)), Duration::from_secs(90));
        assert_eq!(clock.until(t(90), m.at(95)), Duration::ZERO);
        // A message stamped on arrival, before the clock's base.
        let (clock, _) = Clock::start(t(0), m.at(10), None);
        assert_eq!(clock.at(m.at(7)), t(-3));
    }

    #[test]
    fn slews_within_the_tolerance_change_nothing() {
        let m = mono();
        let (mut clock, _) = Clock::start(t(0), m.at(0), None);
        let system = t(100) + SignedDuration::from_millis(1_900);
        assert_eq!(clock.check(system, m.at(100), Some(t(99))), None);
        let system = t(200) - SignedDuration::from_millis(1_900);
        assert_eq!(clock.check(system, m.at(200), Some(t(150))), None);
        assert_eq!(clock.at(m.at(300)), t(300), "not re-based");
    }

    #[test]
    fn a_step_forward_is_followed_and_reported_with_its_size() {
        let m = mono();
        let (mut clock, _) = Clock::start(t(0), m.at(0), Some(t(-10)));
        let seen = clock.check(t(10 + 3600), m.at(10), Some(t(5)));
        assert_eq!(
            seen,
            Some(Seen::Stepped {
                by: secs(3600),
                from: t(10),
                to: t(3610),
                was_behind: false
            })
        );
        assert_eq!(clock.at(m.at(11)), t(3611));
        let line = seen.unwrap().to_string();
        assert!(line.contains("jumped 1h ahead"), "{line}");
        // Once followed, the clocks agree again.
        assert_eq!(clock.check(t(3620), m.at(20), Some(t(3615))), None);
    }

    #[test]
    fn a_step_back_to_a_time_after_the_last_write_is_followed() {
        let m = mono();
        let (mut clock, _) = Clock::start(t(1000), m.at(0), Some(t(10)));
        let seen = clock.check(t(500), m.at(100), Some(t(400)));
        assert_eq!(
            seen,
            Some(Seen::Stepped {
                by: secs(-600),
                from: t(1100),
                to: t(500),
                was_behind: false
            })
        );
        assert!(clock.trusted());
        assert_eq!(clock.at(m.at(101)), t(501));
        assert!(seen.unwrap().to_string().contains("jumped 10m back"));
    }

    #[test]
    fn a_step_back_behind_the_last_write_is_not_followed_and_told_once() {
        let m = mono();
        let (mut clock, _) = Clock::start(t(1000), m.at(0), None);
        let seen = clock.check(t(0), m.at(100), Some(t(1090)));
        assert_eq!(
            seen,
            Some(Seen::Behind {
                system: t(0),
                ours: t(1100),
                last_write: t(1090)
            })
        );
        assert!(!clock.trusted());
        assert_eq!(clock.at(m.at(110)), t(1110), "it counts on");
        // Said once, even when the system clock passes the last write but is still behind.
        assert_eq!(clock.check(t(10), m.at(110), Some(t(1090))), None);
        assert_eq!(clock.check(t(1095), m.at(120), Some(t(1090))), None);
        assert_eq!(clock.at(m.at(120)), t(1120));
    }

    #[test]
    fn a_clock_that_started_behind_is_trusted_again_once_the_system_clock_catches_up() {
        // NTP steps the clock forward, past the bridge's time: followed.
        let m = mono();
        let epoch = Timestamp::from_second(12).unwrap();
        let (mut clock, _) = Clock::start(epoch, m.at(0), Some(t(0)));
        assert_eq!(
            clock.check(shift(epoch, secs(5)), m.at(5), Some(t(0))),
            None
        );
        let seen = clock.check(t(86_400), m.at(30), Some(t(0)));
        assert_eq!(
            seen,
            Some(Seen::Stepped {
                by: secs(86_370),
                from: t(30),
                to: t(86_400),
                was_behind: true
            })
        );
        assert!(clock.trusted());
        assert!(seen.unwrap().to_string().contains("has caught up"));
        assert_eq!(clock.at(m.at(31)), t(86_401));

        // The system clock set to about the bridge's own time: nothing moves.
        let (mut clock, _) = Clock::start(epoch, m.at(0), Some(t(0)));
        assert_eq!(
            clock.check(t(41), m.at(40), Some(t(0))),
            Some(Seen::CaughtUp { system: t(41) })
        );
        assert!(clock.trusted());
        assert_eq!(clock.at(m.at(40)), t(40), "not re-based by a slew");
        assert_eq!(clock.check(t(50), m.at(50), Some(t(0))), None);
    }

    #[test]
    fn words_give_a_steps_size_to_the_second() {
        assert_eq!(words(secs(-3725)), "1h 2m 5s");
        assert_eq!(words(SignedDuration::from_millis(2_600)), "2s");
        assert_eq!(words(SignedDuration::from_millis(300)), "300 ms");
        assert_eq!(shift(Timestamp::MAX, secs(1)), Timestamp::MAX);
        assert_eq!(shift(Timestamp::MIN, secs(-1)), Timestamp::MIN);
    }
}
