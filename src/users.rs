//! Users, roles and validity rules (DESIGN.md sections 1 and 6), as pure decisions.
//!
//! This module owns the `User` record as the store keeps it, what each role may do, the weekly
//! schedule format, and the one question the daemon asks before acting on a code: may this user
//! do this now? It never touches the disk or the network and never sees a code: a user only
//! carries the code's lookup key, and the roster entry published to the world does not even
//! carry that. The current time and the site's time zone are passed in, so every rule is tested
//! with injected instants in real zones.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An authority level, as on a professional panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Master,
    Admin,
    User,
    ArmOnly,
    /// Disarms like a user; the daemon also raises a silent `duress` event.
    Duress,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Admin => "admin",
            Role::User => "user",
            Role::ArmOnly => "arm_only",
            Role::Duress => "duress",
        }
    }

    pub fn can_arm(self) -> bool {
        true
    }

    pub fn can_disarm(self) -> bool {
        !matches!(self, Role::ArmOnly)
    }

    /// Whether the role may manage users and codes at all; which users an admin may touch
    /// (not the master) is the admin module's decision.
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Master | Role::Admin)
    }

    fn allows(self, what: Use) -> bool {
        match what {
            Use::Arm => self.can_arm(),
            Use::Disarm => self.can_disarm(),
            Use::Manage => self.can_manage(),
        }
    }
}

/// What a code is being used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Arm,
    Disarm,
    Manage,
}

/// Why a valid code was refused; published as the `reason` of a `denied` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    Inactive,
    NotYetValid,
    Expired,
    OutsideSchedule,
    UsesExhausted,
    NotPermitted,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Inactive => "inactive",
            DenyReason::NotYetValid => "not_yet_valid",
            DenyReason::Expired => "expired",
            DenyReason::OutsideSchedule => "outside_schedule",
            DenyReason::UsesExhausted => "uses_exhausted",
            DenyReason::NotPermitted => "not_permitted",
        }
    }
}

/// A day of the week as written in a schedule: `"mon"` .. `"sun"`, lowercase only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
            Day::Sun => "sun",
        }
    }

    pub fn from_weekday(weekday: Weekday) -> Day {
        match weekday {
            Weekday::Monday => Day::Mon,
            Weekday::Tuesday => Day::Tue,
            Weekday::Wednesday => Day::Wed,
            Weekday::Thursday => Day::Thu,
            Weekday::Friday => Day::Fri,
            Weekday::Saturday => Day::Sat,
            Weekday::Sunday => Day::Sun,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Day {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Day, ScheduleError> {
        Day::ALL
            .into_iter()
            .find(|day| day.as_str() == s)
            .ok_or_else(|| ScheduleError::UnknownDay(s.to_string()))
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Day, D::Error> {
        struct DayVisitor;
        impl Visitor<'_> for DayVisitor {
            type Value = Day;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a day: mon, tue, wed, thu, fri, sat or sun")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Day, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DayVisitor)
    }
}

/// A wall-clock time with minute precision, written `"HH:MM"`.
///
/// `00:00` to `23:59`, plus `24:00` ([`TimeOfDay::END_OF_DAY`]) so that a window can run to the
/// very end of a day, which no other time can say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    minutes: u16,
}

impl TimeOfDay {
    pub const MIDNIGHT: TimeOfDay = TimeOfDay { minutes: 0 };
    pub const END_OF_DAY: TimeOfDay = TimeOfDay { minutes: 24 * 60 };

    /// `None` outside 00:00..=23:59; use [`TimeOfDay::END_OF_DAY`] for 24:00.
    pub fn new(hour: u8, minute: u8) -> Option<TimeOfDay> {
        (hour < 24 && minute < 60).then(|| TimeOfDay {
            minutes: u16::from(hour) * 60 + u16::from(minute),
        })
    }

    pub fn minutes_since_midnight(self) -> u16 {
        self.minutes
    }

    /// The time of a civil date-time, truncated to the minute: comparing against whole-minute
    /// bounds gives the same answer as comparing the exact time.
    fn of(local: &DateTime) -> TimeOfDay {
        let hour = u16::try_from(local.hour()).unwrap_or(0);
        let minute = u16::try_from(local.minute()).unwrap_or(0);
        TimeOfDay {
            minutes: hour * 60 + minute,
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

impl FromStr for TimeOfDay {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<TimeOfDay, ScheduleError> {
        let b = s.as_bytes();
        let well_formed =
            b.len() == 5 && b[2] == b':' && [b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit);
        if !well_formed {
            return Err(ScheduleError::TimeFormat(s.to_string()));
        }
        let hour = (b[0] - b'0') * 10 + (b[1] - b'0');
        let minute = (b[3] - b'0') * 10 + (b[4] - b'0');
        if hour == 24 && minute == 0 {
            return Ok(TimeOfDay::END_OF_DAY);
        }
        if hour > 23 {
            return Err(ScheduleError::HourOutOfRange(s.to_string()));
        }
        TimeOfDay::new(hour, minute).ok_or_else(|| ScheduleError::MinuteOutOfRange(s.to_string()))
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TimeOfDay, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = TimeOfDay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time written HH:MM, e.g. \"08:00\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TimeOfDay, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(TimeVisitor)
    }
}

/// Why a schedule (a day, a time or a window) was refused. The messages are shown to the owner
/// in `B/config/result`, so they say what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    UnknownDay(String),
    TimeFormat(String),
    HourOutOfRange(String),
    MinuteOutOfRange(String),
    NoDays,
    DuplicateDay(Day),
    StartsAtEndOfDay,
    Empty(TimeOfDay),
    UnknownKey(String),
    DuplicateKey(&'static str),
    MissingKey(&'static str),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::UnknownDay(s) => write!(
                f,
                "unknown day {s:?}: write days as mon, tue, wed, thu, fri, sat or sun"
            ),
            ScheduleError::TimeFormat(s) => write!(
                f,
                "{s:?} is not a time: write HH:MM with two digits each, e.g. \"08:00\""
            ),
            ScheduleError::HourOutOfRange(s) => write!(
                f,
                "{s:?} is not a time: hours go from 00 to 23 (\"24:00\" may end a window)"
            ),
            ScheduleError::MinuteOutOfRange(s) => {
                write!(f, "{s:?} is not a time: minutes go from 00 to 59")
            }
            ScheduleError::NoDays => f.write_str("a window needs at least one day in \"days\""),
            ScheduleError::DuplicateDay(day) => write!(f, "\"{day}\" is listed twice in \"days\""),
            ScheduleError::StartsAtEndOfDay => f.write_str(
                "a window cannot start at \"24:00\": start it at \"00:00\" of the next day",
            ),
            ScheduleError::Empty(t) => write!(
                f,
                "\"from\" and \"to\" are both \"{t}\", so the window is empty \
                 (a whole day is \"00:00\" to \"24:00\")"
            ),
            ScheduleError::UnknownKey(k) => write!(
                f,
                "unknown key {k:?} in a schedule window: the keys are days, from and to"
            ),
            ScheduleError::DuplicateKey(k) => {
                write!(f, "\"{k}\" is given twice in a schedule window")
            }
            ScheduleError::MissingKey(k) => write!(f, "a schedule window needs \"{k}\""),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// A weekly window: `{"days": ["mon","tue"], "from": "08:00", "to": "18:00"}` in the configured
/// time zone. When `to` is before `from` the window runs past midnight into the next day.
///
/// Deserialisation goes through [`Window::new`], so a window read from JSON is always valid.
/// The fields are public for reading; a hand-built window that breaks the rules (no days,
/// `from == to`) simply allows nothing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    pub days: Vec<Day>,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
}

impl Window {
    pub fn new(days: Vec<Day>, from: TimeOfDay, to: TimeOfDay) -> Result<Window, ScheduleError> {
        if days.is_empty() {
            return Err(ScheduleError::NoDays);
        }
        let mut seen = [false; 7];
        for day in &days {
            if std::mem::replace(&mut seen[day.index()], true) {
                return Err(ScheduleError::DuplicateDay(*day));
            }
        }
        if from == TimeOfDay::END_OF_DAY {
            return Err(ScheduleError::StartsAtEndOfDay);
        }
        if from == to {
            return Err(ScheduleError::Empty(from));
        }
        Ok(Window { days, from, to })
    }

    fn allows(&self, local: &DateTime) -> bool {
        let today = Day::from_weekday(local.weekday());
        let yesterday = Day::from_weekday(local.weekday().previous());
        let now = TimeOfDay::of(local);
        if self.from < self.to {
            self.days.contains(&today) && self.from <= now && now < self.to
        } else if self.to < self.from {
            (self.days.contains(&today) && now >= self.from)
                || (self.days.contains(&yesterday) && now < self.to)
        } else {
            false
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Window, D::Error> {
        struct WindowVisitor;
        impl<'de> Visitor<'de> for WindowVisitor {
            type Value = Window;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a window such as {"days": ["mon"], "from": "08:00", "to": "18:00"}"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Window, A::Error> {
                fn set<T, E: de::Error>(
                    slot: &mut Option<T>,
                    key: &'static str,
                    value: T,
                ) -> Result<(), E> {
                    match slot.replace(value) {
                        Some(_) => Err(E::custom(ScheduleError::DuplicateKey(key))),
                        None => Ok(()),
                    }
                }
                let (mut days, mut from, mut to) = (None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "days" => set(&mut days, "days", map.next_value::<Vec<Day>>()?)?,
                        "from" => set(&mut from, "from", map.next_value::<TimeOfDay>()?)?,
                        "to" => set(&mut to, "to", map.next_value::<TimeOfDay>()?)?,
                        _ => return Err(de::Error::custom(ScheduleError::UnknownKey(key))),
                    }
                }
                let missing = |k| de::Error::custom(ScheduleError::MissingKey(k));
                Window::new(
                    days.ok_or_else(|| missing("days"))?,
                    from.ok_or_else(|| missing("from"))?,
                    to.ok_or_else(|| missing("to"))?,
                )
                .map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_map(WindowVisitor)
    }
}

/// Whether any window allows this local wall-clock time.
///
/// An empty list allows nothing: a user whose schedule is `[]` cannot use their code at any
/// time (clear the schedule with `null` to lift the restriction).
pub fn schedule_allows(windows: &[Window], local: &DateTime) -> bool {
    windows.iter().any(|w| w.allows(local))
}

/// A person as the store keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub active: bool,
    /// Hex lookup key of the code in the store (never the code itself); `None` = no code.
    /// Never published: the roster only says `has_code`.
    pub code_key: Option<String>,
    /// Hex lookup key of the person's duress code (DESIGN 10a): it does what their code does
    /// and raises a silent `duress` event when it disarms. Never published beyond
    /// `has_duress_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duress_key: Option<String>,
    /// Passed through in events so an automation can route a notification to this person.
    pub notify: Option<String>,
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
    pub schedule: Option<Vec<Window>>,
    pub max_uses: Option<u64>,
    /// Successful code uses, counted against `max_uses`.
    pub uses: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// RFID tags (DESIGN 10b), at most [`MAX_TAGS`]: each by its lookup key, never its value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// At most this many tags per user (DESIGN 10b).
pub const MAX_TAGS: usize = 8;

/// One of a user's RFID tags as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    /// `t_` and hex digits: how commands and the roster name it.
    pub id: String,
    pub label: Option<String>,
    pub added_at: Timestamp,
    /// Hex lookup key of the tag in the store. Never published.
    pub key: String,
}

/// A tag as the roster lists it: never its value or key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TagEntry {
    pub id: String,
    pub label: Option<String>,
    pub added_at: Timestamp,
}

impl User {
    /// A new active user without a code or rules.
    pub fn new(id: String, name: String, role: Role, now: Timestamp) -> User {
        User {
            id,
            name,
            role,
            active: true,
            code_key: None,
            duress_key: None,
            notify: None,
            valid_from: None,
            valid_until: None,
            schedule: None,
            max_uses: None,
            uses: 0,
            created_at: now,
            updated_at: now,
            tags: Vec::new(),
        }
    }

    /// May this user's code be used for `what` at `now`? The schedule is read in `tz`, the
    /// site's configured zone, on the wall clock (so DST is the zone's business).
    ///
    /// Order matters, because the first refusal is the `reason` an owner sees: inactive, then
    /// the role, then (except for the master, whom no rule binds) validity dates, schedule, and
    /// the use count. Managing users does not consume a use, so `max_uses` does not apply to it.
    pub fn check(&self, what: Use, now: Timestamp, tz: &TimeZone) -> Result<(), DenyReason> {
        if !self.active {
            return Err(DenyReason::Inactive);
        }
        if !self.role.allows(what) {
            return Err(DenyReason::NotPermitted);
        }
        if self.role == Role::Master {
            return Ok(());
        }
        if self.valid_from.is_some_and(|from| now < from) {
            return Err(DenyReason::NotYetValid);
        }
        if self.valid_until.is_some_and(|until| now >= until) {
            return Err(DenyReason::Expired);
        }
        if let Some(windows) = &self.schedule {
            if !schedule_allows(windows, &tz.to_datetime(now)) {
                return Err(DenyReason::OutsideSchedule);
            }
        }
        if what != Use::Manage && self.max_uses.is_some_and(|max| self.uses >= max) {
            return Err(DenyReason::UsesExhausted);
        }
        Ok(())
    }

    /// Why the rules refuse this user's code at `now` for longer than a schedule gap: expired,
    /// not yet valid, or its uses exhausted. `None` for the master, whom no rule binds.
    pub fn refused_by_rules(&self, now: Timestamp) -> Option<DenyReason> {
        if self.role == Role::Master {
            return None;
        }
        if self.valid_until.is_some_and(|until| now >= until) {
            Some(DenyReason::Expired)
        } else if self.valid_from.is_some_and(|from| now < from) {
            Some(DenyReason::NotYetValid)
        } else if self.max_uses.is_some_and(|max| self.uses >= max) {
            Some(DenyReason::UsesExhausted)
        } else {
            None
        }
    }

    pub fn has_code(&self) -> bool {
        self.code_key.is_some()
    }

    pub fn has_duress_code(&self) -> bool {
        self.duress_key.is_some()
    }

    pub fn roster_entry(&self) -> RosterEntry {
        RosterEntry {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            active: self.active,
            has_code: self.has_code(),
            has_duress_code: self.has_duress_code(),
            notify: self.notify.clone(),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            schedule: self.schedule.clone(),
            max_uses: self.max_uses,
            uses: self.uses,
            created_at: self.created_at,
            updated_at: self.updated_at,
            tags: self
                .tags
                .iter()
                .map(|t| TagEntry {
                    id: t.id.clone(),
                    label: t.label.clone(),
                    added_at: t.added_at,
                })
                .collect(),
        }
    }
}

/// A user as published on `B/config/users` and in command results. Every key is always present,
/// `null` included, because Home Assistant templates expect the key; timestamps are RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RosterEntry {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub active: bool,
    pub has_code: bool,
    pub has_duress_code: bool,
    pub notify: Option<String>,
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
    pub schedule: Option<Vec<Window>>,
    pub max_uses: Option<u64>,
    pub uses: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub tags: Vec<TagEntry>,
}

/// Which of a person's secrets identified them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    Code,
    /// Their duress code: the same effect as their code, plus a silent `duress` event.
    Duress,
    /// One of their RFID tags (DESIGN 10b).
    Tag,
}

/// Names are unique case-insensitively ("alice" and "Alice" are one person). Trimming is the
/// caller's job.
pub fn names_equal(a: &str, b: &str) -> bool {
    folded(a).eq(folded(b))
}

/// Per-character Unicode lowercase, plus final sigma folded to sigma: `str::to_lowercase`
/// depends on context (word-final `Σ` becomes `ς`), which would make "ΟΔΟΣ" and "οδοσ" differ.
fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The instant at which the wall clock in `zone` reads `local` (earlier one if ambiguous).
    fn at_local(local: &str, zone: &str) -> Timestamp {
        local
            .parse::<DateTime>()
            .unwrap()
            .to_zoned(tz(zone))
            .unwrap()
            .timestamp()
    }

    fn window(json: &str) -> Window {
        serde_json::from_str(json).unwrap()
    }

    fn user(role: Role) -> User {
        let mut user = User::new(
            "u_7f3a9c".into(),
            "Alice".into(),
            role,
            ts("2025-01-01T00:00:00Z"),
        );
        user.code_key = Some("9f86d081884c7d65".into());
        user
    }

    fn cleaner() -> User {
        User {
            schedule: Some(vec![window(
                r#"{"days": ["tue"], "from": "09:00", "to": "13:00"}"#,
            )]),
            ..user(Role::ArmOnly)
        }
    }

    fn refusal(json: &str) -> String {
        serde_json::from_str::<Window>(json)
            .unwrap_err()
            .to_string()
    }

    // 2025-06-03 is a Tuesday.

    #[test]
    fn cleaner_can_arm_inside_the_tuesday_morning_window() {
        let paris = tz("Europe/Paris");
        let now = at_local("2025-06-03T09:00", "Europe/Paris");
        assert_eq!(cleaner().check(Use::Arm, now, &paris), Ok(()));
        let now = at_local("2025-06-03T12:59:59", "Europe/Paris");
        assert_eq!(cleaner().check(Use::Arm, now, &paris), Ok(()));
    }

    #[test]
    fn cleaner_window_ends_at_1300_exactly() {
        let paris = tz("Europe/Paris");
        let now = at_local("2025-06-03T13:00", "Europe/Paris");
        assert_eq!(
            cleaner().check(Use::Arm, now, &paris),
            Err(DenyReason::OutsideSchedule)
        );
    }

    #[test]
    fn cleaner_window_does_not_open_on_wednesday() {
        let paris = tz("Europe/Paris");
        let now = at_local("2025-06-04T10:00", "Europe/Paris");
        assert_eq!(
            cleaner().check(Use::Arm, now, &paris),
            Err(DenyReason::OutsideSchedule)
        );
    }

    // 2025-06-08 is a Sunday, 2025-06-09 a Monday.

    #[test]
    fn window_crossing_midnight_allows_monday_0100_for_a_sunday_window() {
        let w = [window(
            r#"{"days": ["sun"], "from": "22:00", "to": "02:00"}"#,
        )];
        let local = |s: &str| s.parse::<DateTime>().unwrap();
        assert!(schedule_allows(&w, &local("2025-06-09T01:00")));
        assert!(schedule_allows(&w, &local("2025-06-08T22:00")));
        assert!(schedule_allows(&w, &local("2025-06-08T23:59")));
        assert!(!schedule_allows(&w, &local("2025-06-09T03:00")));
        assert!(!schedule_allows(&w, &local("2025-06-09T02:00")));
        assert!(!schedule_allows(&w, &local("2025-06-08T21:59")));
        // Sunday 01:00 belongs to a Saturday night, which this window does not cover.
        assert!(!schedule_allows(&w, &local("2025-06-08T01:00")));
    }

    #[test]
    fn window_ending_at_2400_covers_the_last_minute_of_the_day() {
        let w = [window(
            r#"{"days": ["fri"], "from": "20:00", "to": "24:00"}"#,
        )];
        let local = |s: &str| s.parse::<DateTime>().unwrap();
        assert!(schedule_allows(&w, &local("2025-06-06T23:59:59")));
        assert!(!schedule_allows(&w, &local("2025-06-07T00:00")));
        assert!(!schedule_allows(&w, &local("2025-06-06T19:59")));
    }

    #[test]
    fn empty_schedule_allows_nothing() {
        let u = User {
            schedule: Some(vec![]),
            ..user(Role::User)
        };
        let now = ts("2025-06-03T10:00:00Z");
        assert_eq!(
            u.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::OutsideSchedule)
        );
    }

    #[test]
    fn spring_forward_sunday_in_paris_follows_the_wall_clock() {
        // 2025-03-30: Paris clocks jump from 02:00 to 03:00.
        let paris = tz("Europe/Paris");
        let u = User {
            schedule: Some(vec![window(
                r#"{"days": ["sun"], "from": "01:30", "to": "03:30"}"#,
            )]),
            ..user(Role::User)
        };
        let check = |utc: &str| u.check(Use::Disarm, ts(utc), &paris);
        assert_eq!(
            check("2025-03-30T00:29:00Z"),
            Err(DenyReason::OutsideSchedule)
        ); // 01:29
        assert_eq!(check("2025-03-30T00:30:00Z"), Ok(())); // 01:30 CET
        assert_eq!(check("2025-03-30T00:59:59Z"), Ok(())); // 01:59:59 CET
        assert_eq!(check("2025-03-30T01:00:00Z"), Ok(())); // 03:00 CEST
        assert_eq!(check("2025-03-30T01:29:00Z"), Ok(())); // 03:29 CEST
        assert_eq!(
            check("2025-03-30T01:30:00Z"),
            Err(DenyReason::OutsideSchedule)
        ); // 03:30
    }

    #[test]
    fn fall_back_sunday_allows_both_occurrences_of_0130_in_new_york() {
        // 2025-11-02: New York clocks go from 02:00 EDT back to 01:00 EST, so 01:30 happens twice.
        let ny = tz("America/New_York");
        let u = User {
            schedule: Some(vec![window(
                r#"{"days": ["sun"], "from": "01:00", "to": "02:00"}"#,
            )]),
            ..user(Role::User)
        };
        let check = |utc: &str| u.check(Use::Disarm, ts(utc), &ny);
        assert_eq!(check("2025-11-02T05:30:00Z"), Ok(())); // 01:30 EDT
        assert_eq!(check("2025-11-02T06:30:00Z"), Ok(())); // 01:30 EST
        assert_eq!(
            check("2025-11-02T07:00:00Z"),
            Err(DenyReason::OutsideSchedule)
        ); // 02:00 EST
        assert_eq!(
            check("2025-11-02T04:59:00Z"),
            Err(DenyReason::OutsideSchedule)
        ); // 00:59 EDT
    }

    #[test]
    fn same_instant_is_inside_the_window_in_paris_and_outside_in_new_york() {
        let now = ts("2025-06-03T07:30:00Z"); // Tuesday 09:30 in Paris, 03:30 in New York
        assert_eq!(cleaner().check(Use::Arm, now, &tz("Europe/Paris")), Ok(()));
        assert_eq!(
            cleaner().check(Use::Arm, now, &tz("America/New_York")),
            Err(DenyReason::OutsideSchedule)
        );
    }

    #[test]
    fn valid_from_is_inclusive_and_valid_until_is_exclusive() {
        let u = User {
            valid_from: Some(ts("2025-07-01T08:00:00Z")),
            valid_until: Some(ts("2025-07-15T18:00:00Z")),
            ..user(Role::User)
        };
        let check = |t: &str| u.check(Use::Disarm, ts(t), &TimeZone::UTC);
        assert_eq!(check("2025-07-01T07:59:59Z"), Err(DenyReason::NotYetValid));
        assert_eq!(check("2025-07-01T08:00:00Z"), Ok(()));
        assert_eq!(check("2025-07-15T17:59:59Z"), Ok(()));
        assert_eq!(check("2025-07-15T18:00:00Z"), Err(DenyReason::Expired));
    }

    #[test]
    fn one_time_code_works_once_then_is_exhausted() {
        let now = ts("2025-06-03T10:00:00Z");
        let mut u = User {
            max_uses: Some(1),
            ..user(Role::User)
        };
        assert_eq!(u.check(Use::Disarm, now, &TimeZone::UTC), Ok(()));
        u.uses = 1;
        assert_eq!(
            u.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::UsesExhausted)
        );
        assert_eq!(
            u.check(Use::Arm, now, &TimeZone::UTC),
            Err(DenyReason::UsesExhausted)
        );
    }

    #[test]
    fn managing_does_not_count_against_max_uses() {
        let u = User {
            max_uses: Some(1),
            uses: 1,
            ..user(Role::Admin)
        };
        let now = ts("2025-06-03T10:00:00Z");
        assert_eq!(u.check(Use::Manage, now, &TimeZone::UTC), Ok(()));
        assert_eq!(
            u.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::UsesExhausted)
        );
    }

    #[test]
    fn admin_is_bound_by_validity_rules_when_managing() {
        let u = User {
            valid_until: Some(ts("2025-01-01T00:00:00Z")),
            ..user(Role::Admin)
        };
        let now = ts("2025-06-03T10:00:00Z");
        assert_eq!(
            u.check(Use::Manage, now, &TimeZone::UTC),
            Err(DenyReason::Expired)
        );
    }

    #[test]
    fn inactive_beats_every_other_reason() {
        let u = User {
            active: false,
            valid_from: Some(ts("2030-01-01T00:00:00Z")),
            valid_until: Some(ts("2020-01-01T00:00:00Z")),
            schedule: Some(vec![]),
            max_uses: Some(0),
            ..user(Role::ArmOnly)
        };
        let now = ts("2025-06-03T10:00:00Z");
        for what in [Use::Arm, Use::Disarm, Use::Manage] {
            assert_eq!(
                u.check(what, now, &TimeZone::UTC),
                Err(DenyReason::Inactive)
            );
        }
        let master = User {
            active: false,
            ..user(Role::Master)
        };
        assert_eq!(
            master.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::Inactive)
        );
    }

    #[test]
    fn role_is_checked_before_validity_rules() {
        let u = User {
            valid_until: Some(ts("2020-01-01T00:00:00Z")),
            ..user(Role::ArmOnly)
        };
        let now = ts("2025-06-03T10:00:00Z");
        assert_eq!(
            u.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::NotPermitted)
        );
        assert_eq!(
            u.check(Use::Arm, now, &TimeZone::UTC),
            Err(DenyReason::Expired)
        );
    }

    #[test]
    fn arm_only_can_arm_but_not_disarm() {
        let now = ts("2025-06-03T10:00:00Z");
        let u = user(Role::ArmOnly);
        assert_eq!(u.check(Use::Arm, now, &TimeZone::UTC), Ok(()));
        assert_eq!(
            u.check(Use::Disarm, now, &TimeZone::UTC),
            Err(DenyReason::NotPermitted)
        );
    }

    #[test]
    fn duress_can_arm_and_disarm_but_not_manage() {
        let now = ts("2025-06-03T10:00:00Z");
        let u = user(Role::Duress);
        assert_eq!(u.check(Use::Arm, now, &TimeZone::UTC), Ok(()));
        assert_eq!(u.check(Use::Disarm, now, &TimeZone::UTC), Ok(()));
        assert_eq!(
            u.check(Use::Manage, now, &TimeZone::UTC),
            Err(DenyReason::NotPermitted)
        );
    }

    #[test]
    fn only_master_and_admin_can_manage() {
        let now = ts("2025-06-03T10:00:00Z");
        let can = |role| user(role).check(Use::Manage, now, &TimeZone::UTC).is_ok();
        assert!(can(Role::Master));
        assert!(can(Role::Admin));
        assert!(!can(Role::User));
        assert!(!can(Role::ArmOnly));
        assert!(!can(Role::Duress));
    }

    #[test]
    fn master_ignores_dates_schedule_and_uses() {
        let u = User {
            valid_from: Some(ts("2030-01-01T00:00:00Z")),
            valid_until: Some(ts("2020-01-01T00:00:00Z")),
            schedule: Some(vec![]),
            max_uses: Some(1),
            uses: 5,
            ..user(Role::Master)
        };
        let now = ts("2025-06-03T10:00:00Z");
        for what in [Use::Arm, Use::Disarm, Use::Manage] {
            assert_eq!(u.check(what, now, &TimeZone::UTC), Ok(()));
        }
    }

    #[test]
    fn role_and_reason_names_match_their_json() {
        for role in [
            Role::Master,
            Role::Admin,
            Role::User,
            Role::ArmOnly,
            Role::Duress,
        ] {
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, role.as_str());
            assert_eq!(serde_json::from_value::<Role>(json).unwrap(), role);
        }
        for reason in [
            DenyReason::Inactive,
            DenyReason::NotYetValid,
            DenyReason::Expired,
            DenyReason::OutsideSchedule,
            DenyReason::UsesExhausted,
            DenyReason::NotPermitted,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert_eq!(Role::ArmOnly.as_str(), "arm_only");
        assert_eq!(DenyReason::OutsideSchedule.as_str(), "outside_schedule");
    }

    #[test]
    fn roster_entry_has_exactly_the_fifteen_keys_and_no_code_key() {
        let mut u = user(Role::User);
        u.tags.push(Tag {
            id: "t_00beef".into(),
            label: Some("blue fob".into()),
            added_at: "2025-01-02T00:00:00Z".parse().unwrap(),
            key: "ab".repeat(32),
        });
        let entry = serde_json::to_value(u.roster_entry()).unwrap();
        assert_eq!(
            entry["tags"],
            serde_json::json!([{"id": "t_00beef", "label": "blue fob", "added_at": "2025-01-02T00:00:00Z"}])
        );
        assert!(!entry.to_string().contains("abab"), "never a tag's key");
        let mut keys: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut expected = vec![
            "id",
            "name",
            "role",
            "active",
            "has_code",
            "has_duress_code",
            "notify",
            "valid_from",
            "valid_until",
            "schedule",
            "max_uses",
            "uses",
            "created_at",
            "updated_at",
            "tags",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert!(!entry.to_string().contains("9f86d081884c7d65"));
        assert_eq!(entry["has_code"], true);
        assert_eq!(entry["notify"], serde_json::Value::Null);
        assert_eq!(entry["valid_until"], serde_json::Value::Null);
        assert_eq!(entry["created_at"], "2025-01-01T00:00:00Z");
    }

    #[test]
    fn roster_entry_says_when_a_user_has_no_code() {
        let u = User {
            code_key: None,
            ..user(Role::User)
        };
        assert!(!u.has_code());
        assert!(!u.roster_entry().has_code);
    }

    #[test]
    fn roster_entry_timestamps_are_rfc3339_utc() {
        let u = User {
            valid_from: Some(at_local("2025-07-01T10:00", "Europe/Paris")),
            schedule: Some(vec![window(
                r#"{"days": ["mon"], "from": "08:00", "to": "18:00"}"#,
            )]),
            ..user(Role::User)
        };
        let entry = serde_json::to_value(u.roster_entry()).unwrap();
        assert_eq!(entry["valid_from"], "2025-07-01T08:00:00Z");
        assert_eq!(
            entry["schedule"],
            serde_json::json!([{"days": ["mon"], "from": "08:00", "to": "18:00"}])
        );
    }

    #[test]
    fn user_round_trips_through_json() {
        let u = User {
            notify: Some("mobile_app_alice_phone".into()),
            valid_from: Some(ts("2025-07-01T08:00:00Z")),
            schedule: Some(vec![window(
                r#"{"days": ["sun", "sat"], "from": "22:00", "to": "02:00"}"#,
            )]),
            max_uses: Some(3),
            uses: 2,
            ..user(Role::Duress)
        };
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<User>(&json).unwrap(), u);
    }

    #[test]
    fn window_json_round_trips_exactly() {
        let json = r#"{"days":["mon","tue"],"from":"08:00","to":"18:00"}"#;
        let w = window(json);
        assert_eq!(w.days, vec![Day::Mon, Day::Tue]);
        assert_eq!(w.from, TimeOfDay::new(8, 0).unwrap());
        assert_eq!(w.to, TimeOfDay::new(18, 0).unwrap());
        assert_eq!(serde_json::to_string(&w).unwrap(), json);
    }

    #[test]
    fn window_accepts_2400_as_end_and_midnight_as_start() {
        let w = window(r#"{"days": ["sun"], "from": "00:00", "to": "24:00"}"#);
        assert_eq!(w.from, TimeOfDay::MIDNIGHT);
        assert_eq!(w.to, TimeOfDay::END_OF_DAY);
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"days":["sun"],"from":"00:00","to":"24:00"}"#
        );
    }

    #[test]
    fn window_refuses_an_unknown_day() {
        let msg = refusal(r#"{"days": ["monday"], "from": "08:00", "to": "18:00"}"#);
        assert!(
            msg.contains(
                r#"unknown day "monday": write days as mon, tue, wed, thu, fri, sat or sun"#
            ),
            "{msg}"
        );
        let msg = refusal(r#"{"days": ["Mon"], "from": "08:00", "to": "18:00"}"#);
        assert!(msg.contains(r#"unknown day "Mon""#), "{msg}");
    }

    #[test]
    fn window_refuses_empty_days() {
        let msg = refusal(r#"{"days": [], "from": "08:00", "to": "18:00"}"#);
        assert!(
            msg.contains(r#"a window needs at least one day in "days""#),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_a_day_listed_twice() {
        let msg = refusal(r#"{"days": ["mon", "tue", "mon"], "from": "08:00", "to": "18:00"}"#);
        assert!(msg.contains(r#""mon" is listed twice in "days""#), "{msg}");
    }

    #[test]
    fn window_refuses_a_single_digit_hour() {
        let msg = refusal(r#"{"days": ["mon"], "from": "8:00", "to": "18:00"}"#);
        assert!(
            msg.contains(r#""8:00" is not a time: write HH:MM with two digits each"#),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_hour_25() {
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00", "to": "25:00"}"#);
        assert!(
            msg.contains(r#""25:00" is not a time: hours go from 00 to 23"#),
            "{msg}"
        );
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00", "to": "24:01"}"#);
        assert!(msg.contains(r#""24:01" is not a time: hours go"#), "{msg}");
    }

    #[test]
    fn window_refuses_minute_60() {
        let msg = refusal(r#"{"days": ["mon"], "from": "12:60", "to": "18:00"}"#);
        assert!(
            msg.contains(r#""12:60" is not a time: minutes go from 00 to 59"#),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_seconds() {
        let msg = refusal(r#"{"days": ["mon"], "from": "12:00:00", "to": "18:00"}"#);
        assert!(
            msg.contains(r#""12:00:00" is not a time: write HH:MM"#),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_a_time_that_is_not_a_string() {
        let msg = refusal(r#"{"days": ["mon"], "from": 800, "to": "18:00"}"#);
        assert!(msg.contains("a time written HH:MM"), "{msg}");
    }

    #[test]
    fn window_refuses_from_equal_to_to() {
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00", "to": "08:00"}"#);
        assert!(
            msg.contains(r#""from" and "to" are both "08:00", so the window is empty"#),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_to_start_at_2400() {
        let msg = refusal(r#"{"days": ["mon"], "from": "24:00", "to": "02:00"}"#);
        assert!(msg.contains(r#"a window cannot start at "24:00""#), "{msg}");
    }

    #[test]
    fn window_refuses_unknown_keys() {
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00", "to": "18:00", "until": "x"}"#);
        assert!(
            msg.contains(
                r#"unknown key "until" in a schedule window: the keys are days, from and to"#
            ),
            "{msg}"
        );
    }

    #[test]
    fn window_refuses_missing_and_repeated_keys() {
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00"}"#);
        assert!(msg.contains(r#"a schedule window needs "to""#), "{msg}");
        let msg = refusal(r#"{"days": ["mon"], "from": "08:00", "from": "09:00", "to": "18:00"}"#);
        assert!(msg.contains(r#""from" is given twice"#), "{msg}");
    }

    #[test]
    fn names_compare_without_case() {
        assert!(names_equal("Alice", "aLICE"));
        assert!(names_equal("ÉLODIE", "élodie"));
        assert!(names_equal("ΟΔΟΣ", "οδος"));
        assert!(!names_equal("Alice", "Alicia"));
        assert!(!names_equal("Alice", " Alice"));
    }
}
