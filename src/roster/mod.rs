//! The roster on MQTT (DESIGN 10e): what to publish and when, decided without I/O.
//!
//! Each change's users go out at once, each on `B/config/users/<id>` (retained; a deleted user
//! gets a zero-length retained message there, so the broker forgets them). They are known from
//! the store [`Change`] itself, so no read of the store is needed. The whole roster on
//! `B/config/users` is read and published at most once every [`EVERY`]: a change when the last
//! one went out at least that long ago goes out at once, and changes within it are folded into
//! one publish at the end of it ([`Coalescer`], time passed in). Re-publishing the whole roster
//! after every change made managing n users O(n²) and slowed every right code at a keypad (its
//! use count changes).
//!
//! [`Roster`] does the I/O: it reads the users one at a time and writes the roster with
//! [`Whole`] on a thread of its own, which keeps the roster's publishes in order, and skips a
//! whole roster the broker said it would not take ([`TooLarge`]).

use std::time::{Duration, Instant};

mod publisher;
pub use publisher::Roster;

use crate::panel::Publish;
use crate::store::Change;
use crate::topics::Topics;
use crate::users::User;

/// The least time between two publishes of the whole roster.
pub const EVERY: Duration = Duration::from_secs(2);

/// When the whole roster is due. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// When the whole roster last went out.
    last: Option<Instant>,
    /// When the next one is due, if a change is waiting for it.
    due: Option<Instant>,
}

impl Coalescer {
    /// A user changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        if self.due.is_some() {
            return;
        }
        self.due = Some(match self.last {
            Some(last) if now.saturating_duration_since(last) < EVERY => last + EVERY,
            _ => now,
        });
    }

    /// When the loop must wake to publish the whole roster.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due
    }

    /// Whether the whole roster is due at `now`; if so, it counts as published now.
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.due {
            Some(at) if at <= now => {
                self.sent(now);
                true
            }
            _ => false,
        }
    }

    /// The whole roster was published at `now` for another reason (a new connection).
    pub fn sent(&mut self, now: Instant) {
        self.due = None;
        self.last = Some(now);
    }
}

/// The publishes that tell a change's users: each user it writes, on their own topic, and a
/// zero-length retained message on the topic of each user it deletes.
pub fn changed_users(topics: &Topics, change: &Change) -> Vec<Publish> {
    let deleted = change.delete_users.iter().map(|id| Publish {
        topic: topics.config_user(id),
        payload: Vec::new(),
        retain: true,
    });
    change
        .put_users
        .iter()
        .map(|user| entry(topics, user))
        .chain(deleted)
        .collect()
}

/// One user's roster entry on `B/config/users/<id>`, retained.
pub fn entry(topics: &Topics, user: &User) -> Publish {
    Publish {
        topic: topics.config_user(&user.id),
        payload: json(&user.roster_entry()),
        retain: true,
    }
}

/// The whole roster, `{"users": [roster entries]}`, written entry by entry as the users are
/// read: no list of users and no JSON tree in memory, only the payload (3 MB at 10000 users).
#[derive(Debug)]
pub struct Whole {
    out: Vec<u8>,
    entries: usize,
}

impl Whole {
    /// A roster of about `users` entries (the room is reserved at once).
    pub fn new(users: usize) -> Whole {
        let mut out = Vec::with_capacity(16 + users * 320);
        out.extend_from_slice(br#"{"users":["#);
        Whole { out, entries: 0 }
    }

    /// Appends an entry: the payload of [`entry`].
    pub fn push(&mut self, entry: &[u8]) {
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(entry);
        self.entries += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"]}");
        self.out
    }
}

/// The whole roster of `users`, in their order.
pub fn whole(users: &[User]) -> Vec<u8> {
    let mut whole = Whole::new(users.len());
    for user in users {
        whole.push(&json(&user.roster_entry()));
    }
    whole.finish()
}

/// A roster entry as JSON. Its fields are strings, numbers, booleans and timestamps, which
/// always serialise (serde_json fails only on maps with non-string keys).
fn json(entry: &crate::users::RosterEntry) -> Vec<u8> {
    serde_json::to_vec(entry).unwrap_or_else(|_| b"{}".to_vec())
}

/// The warning about a whole roster the broker will not take, at most once every
/// [`TooLarge::EVERY`]. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct TooLarge {
    last_warning: Option<Instant>,
    held_back: u64,
}

impl TooLarge {
    pub const EVERY: Duration = Duration::from_secs(10 * 60);

    /// A whole roster of `size` bytes was held back at `now`; `Some(n)` when a warning is due,
    /// `n` being how many were held back since the last one (this one included).
    pub fn held_back(&mut self, now: Instant) -> Option<u64> {
        self.held_back += 1;
        if self
            .last_warning
            .is_some_and(|at| now.saturating_duration_since(at) < Self::EVERY)
        {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::users::Role;

    const MS: Duration = Duration::from_millis(1);

    fn user(id: &str, name: &str) -> User {
        User::new(
            id.into(),
            name.into(),
            Role::User,
            "2026-12-01T10:00:00Z".parse().unwrap(),
        )
    }

    #[test]
    fn the_first_change_goes_out_at_once() {
        let mut c = Coalescer::default();
        let now = Instant::now();
        assert_eq!(c.next_deadline(), None, "nothing changed, nothing due");
        assert!(!c.take_due(now));
        c.changed(now);
        assert_eq!(c.next_deadline(), Some(now));
        assert!(c.take_due(now));
        assert_eq!(c.next_deadline(), None);
        assert!(!c.take_due(now), "published once");
    }

    #[test]
    fn changes_within_two_seconds_are_folded_into_one_publish_two_seconds_after_the_last() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        c.changed(t0);
        assert!(c.take_due(t0));
        for ms in [1, 300, 1200, 1999] {
            c.changed(t0 + ms * MS);
            assert_eq!(c.next_deadline(), Some(t0 + EVERY), "change at {ms} ms");
            assert!(!c.take_due(t0 + ms * MS));
        }
        assert!(!c.take_due(t0 + EVERY - MS));
        assert!(c.take_due(t0 + EVERY));
        assert_eq!(c.next_deadline(), None);
        // The next change within 2 s of that publish waits for its end in turn.
        c.changed(t0 + EVERY + 500 * MS);
        assert_eq!(c.next_deadline(), Some(t0 + 2 * EVERY));
    }

    #[test]
    fn a_change_two_seconds_or_more_after_the_last_publish_goes_out_at_once() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        c.changed(t0);
        assert!(c.take_due(t0));
        c.changed(t0 + EVERY);
        assert!(c.take_due(t0 + EVERY));
        c.changed(t0 + 10 * EVERY);
        assert_eq!(c.next_deadline(), Some(t0 + 10 * EVERY));
    }

    #[test]
    fn a_late_wake_publishes_then_and_counts_from_then() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        c.changed(t0);
        assert!(c.take_due(t0));
        c.changed(t0 + 100 * MS);
        // The loop was busy: it wakes 500 ms after the deadline.
        let late = t0 + EVERY + 500 * MS;
        assert!(c.take_due(late));
        c.changed(late + MS);
        assert_eq!(c.next_deadline(), Some(late + EVERY));
    }

    #[test]
    fn a_whole_roster_sent_on_connecting_covers_the_changes_before_it() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        c.changed(t0);
        assert!(c.take_due(t0));
        c.changed(t0 + MS);
        c.sent(t0 + 2 * MS);
        assert_eq!(c.next_deadline(), None);
        c.changed(t0 + 3 * MS);
        assert_eq!(c.next_deadline(), Some(t0 + 2 * MS + EVERY));
    }

    #[test]
    fn a_change_publishes_each_written_user_and_empties_each_deleted_users_topic() {
        let topics = Topics::new(&Config::default());
        let change = Change {
            put_users: vec![user("u_00000b", "Bob")],
            delete_users: vec!["u_00000c".into()],
            ..Change::default()
        };
        let out = changed_users(&topics, &change);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "keypad-bridge/config/users/u_00000b");
        assert!(out[0].retain);
        let entry: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(
            entry,
            serde_json::to_value(user("u_00000b", "Bob").roster_entry()).unwrap()
        );
        assert_eq!(out[1].topic, "keypad-bridge/config/users/u_00000c");
        assert!(out[1].retain && out[1].payload.is_empty());
        assert!(changed_users(&topics, &Change::default()).is_empty());
    }

    #[test]
    fn the_whole_roster_lists_full_entries_in_order() {
        let users = [user("u_00000a", "Alice"), user("u_00000b", "Bob")];
        let whole: serde_json::Value = serde_json::from_slice(&whole(&users)).unwrap();
        let expected: Vec<_> = users.iter().map(User::roster_entry).collect();
        assert_eq!(whole, serde_json::json!({ "users": expected }));
        let empty: serde_json::Value = serde_json::from_slice(&super::whole(&[])).unwrap();
        assert_eq!(empty, serde_json::json!({"users": []}));
    }

    #[test]
    fn a_held_back_roster_is_told_at_once_then_at_most_every_ten_minutes_with_a_count() {
        let mut t = TooLarge::default();
        let now = Instant::now();
        assert_eq!(t.held_back(now), Some(1));
        for s in 1..300 {
            assert_eq!(t.held_back(now + 2 * s * 1000 * MS), None);
        }
        assert_eq!(t.held_back(now + TooLarge::EVERY), Some(300));
        assert_eq!(t.held_back(now + TooLarge::EVERY + MS), None);
    }
}
