//! One command on `B/config/set`, from its payload to its result, in the order that keeps a
//! stranger on the broker from learning anything: read whole ([`super::parse`]); who is asking
//! ([`super::gate`], then `auth` identified like a keypad code under the `admin` lockout, then
//! [`super::authorise`]); only then the id's stored result ([`super::replay`]); the ration of
//! commands that set a code; the decision ([`super::apply`]) and its durable commit before the
//! result. The I/O it needs (Argon2, the store) is the [`Desk`]'s: the daemon's, or a fake in
//! the tests.

use std::time::Instant;

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{Applied, Authority, CommandError, Gate, Request};
use crate::codes::Code;
use crate::config::Config;
use crate::events::{Event, Source};
use crate::panel::{self, Found, Invalid, Learning, Panel, Quiet, Refused};
use crate::store::{Change, StoreError};
use crate::topics::Topics;
use crate::users::Credential;

/// What the command flow needs from the world.
pub(crate) trait Desk {
    fn config(&self) -> &Config;
    fn panel(&mut self) -> &mut Panel;
    /// Log lines about input anyone may send, at most one a kind every 10 s.
    fn quiet(&mut self) -> &mut Quiet;
    /// Whether the store has a master (the bootstrap rule).
    fn has_master(&self) -> bool;
    fn master_created(&mut self);
    /// One Argon2id computation (off the runtime) and one lookup.
    async fn identify(&mut self, code: Code) -> Found;
    /// The result stored for an applied id.
    async fn stored(&mut self, id: &str) -> Result<Option<Value>, StoreError>;
    /// [`super::apply`] against the store (blocking work off the runtime).
    async fn apply(
        &mut self,
        request: &Request,
        authority: &Authority,
        now: Timestamp,
        under_duress: bool,
    ) -> Result<Applied, CommandError>;
    /// Durable before it returns; its events go out after the result.
    async fn commit(&mut self, change: Change) -> Result<(), StoreError>;
    /// The keyed digest that identifies a command for idempotency.
    fn fingerprint(&self, request: &Request) -> String;
}

/// At start without a master: the bootstrap rule is open.
pub fn warn_no_master(topics: &Topics) {
    tracing::warn!(
        "no master yet: create the main code with `keypad-bridge init`; until then, anyone who \
         can publish on {} can create the master",
        topics.config_set
    );
}

/// What to publish for one command.
#[derive(Debug)]
pub struct Outcome {
    /// For `B/config/result`.
    pub result: Value,
    /// `auth` was a duress code: its silent event, to record once the result is out (the
    /// same latency as with the person's own code).
    pub duress: Option<Event>,
}

/// Carries one command through and says what to answer.
pub(crate) async fn handle(
    desk: &mut impl Desk,
    payload: &[u8],
    now: Timestamp,
    mono: Instant,
) -> Outcome {
    let codes = &desk.config().codes;
    let request = match super::parse(payload, codes.min_length, codes.max_length) {
        Ok(request) => request,
        Err((partial, error)) => {
            if let Some(more) = desk.quiet().allow(error.kind(), mono) {
                tracing::warn!(kind = error.kind(), more, "refused a command: {error}");
            }
            return Outcome {
                result: super::failure(&partial, &error),
                duress: None,
            };
        }
    };
    let mut duress = None;
    let result = match run(desk, &request, now, &mut duress).await {
        Ok(result) => {
            if result.get("replayed").is_some() {
                tracing::info!(id = request.id, "command already applied: its result again");
            }
            result
        }
        Err(error) => {
            refused(desk, &request, &error, now, mono).await;
            super::failure(&request.partial(), &error)
        }
    };
    Outcome { result, duress }
}

/// No success resets the admin channel's failures: they expire with `lockout.window_s`.
/// Otherwise an admin could alternate guesses of the master's code (wrong `auth`,
/// `duplicate_code`) with commands of their own, forever.
async fn refused(
    desk: &mut impl Desk,
    request: &Request,
    error: &CommandError,
    now: Timestamp,
    mono: Instant,
) {
    if let CommandError::DuplicateCode(_) = error {
        // Each answer says whether a code exists: counted like a wrong code, or the admin
        // channel would be an unlimited code-guessing oracle.
        let change = desk.panel().failure(&Source::Admin, now);
        record(desk, change).await;
    }
    if let CommandError::Store(e) = error {
        tracing::error!(id = request.id, error = %e, "a command failed in the store");
        return;
    }
    // Anyone may send these: at most one line a kind every 10 s.
    if let Some(more) = desk.quiet().allow(error.kind(), mono) {
        tracing::info!(
            id = request.id,
            command = request.command.name(),
            kind = error.kind(),
            more,
            "command refused: {error}"
        );
    }
}

async fn run(
    desk: &mut impl Desk,
    request: &Request,
    now: Timestamp,
    duress: &mut Option<Event>,
) -> Result<Value, CommandError> {
    let authority = authority(desk, request, now, duress).await?;
    // Who is asking comes first: nothing about an id or its stored result (not even whether
    // it was used) reaches a sender who is not authorised.
    if let Some(stored) = desk.stored(&request.id).await? {
        return super::replay(&stored, &desk.fingerprint(request));
    }
    ration_codes(desk, request, &authority, now).await?;
    let applied = desk
        .apply(request, &authority, now, duress.is_some())
        .await?;
    if let Some(learning) = applied.learn {
        start_learning(desk, learning).await?;
        return Ok(applied.result);
    }
    let Some(mut change) = applied.change else {
        return Ok(applied.result);
    };
    let stored = json!({"fingerprint": desk.fingerprint(request), "result": applied.result});
    change.applied = Some((request.id.clone(), stored));
    desk.commit(change).await?;
    tracing::info!(
        id = request.id,
        command = request.command.name(),
        "command applied"
    );
    if request.is_master_bootstrap() {
        desk.master_created();
    }
    Ok(applied.result)
}

/// Who the command acts for: `auth` checked like a keypad code, against the `admin` lockout.
async fn authority(
    desk: &mut impl Desk,
    request: &Request,
    now: Timestamp,
    duress: &mut Option<Event>,
) -> Result<Authority, CommandError> {
    // Every path, `trust_broker` included: `duplicate_code` answers count as failures.
    if let Some(locked) = desk.panel().locked(&Source::Admin, now) {
        return Err(CommandError::LockedOut(format!(
            "too many wrong codes: commands are refused until {}",
            locked.until
        )));
    }
    let config = desk.config();
    let auth = match super::gate(request, config.admin.trust_broker, desk.has_master()) {
        Gate::Authorised(authority) => return Ok(authority),
        Gate::Refused(error) => return Err(error),
        Gate::Identify(auth) => auth.parse(config.codes.min_length, config.codes.max_length),
    };
    let found = match auth {
        Ok(code) => desk.identify(code).await.map_err(|()| {
            CommandError::Internal("the code could not be checked; see the daemon's log".into())
        })?,
        Err(_) => None,
    };
    let change = match found {
        Some((user, credential)) => {
            let tz = desk.panel().time_zone().clone();
            match super::authorise(&user, now, &tz) {
                Ok(authority) => {
                    if let (Credential::Duress, Authority::User(user)) = (credential, &authority) {
                        // Coerced into managing codes: it works as their code, and tells.
                        *duress = Some(panel::duress_event(user, true, &Source::Admin, now));
                    }
                    return Ok(authority);
                }
                Err(reason) => {
                    let why = Refused::Denied(&user, reason);
                    desk.panel().refusal(&Source::Admin, now, why)
                }
            }
        }
        None => {
            let why = Refused::Invalid(Invalid::WrongCode);
            desk.panel().refusal(&Source::Admin, now, why)
        }
    };
    record(desk, change).await;
    Err(super::not_authorised())
}

/// Commands that give someone a code are rationed: each answer says whether a code is free,
/// so an unlimited stream of them would sweep every code (the master's included).
async fn ration_codes(
    desk: &mut impl Desk,
    request: &Request,
    authority: &Authority,
    now: Timestamp,
) -> Result<(), CommandError> {
    if !request.sets_code() {
        return Ok(());
    }
    let Err((until, event)) = desk.panel().code_set(&authority.actor_key(), now) else {
        return Ok(());
    };
    if let Some(event) = event {
        record(
            desk,
            Change {
                events: vec![*event],
                ..Change::default()
            },
        )
        .await;
    }
    Err(CommandError::LockedOut(format!(
        "too many codes were set in a short time (more than {} within lockout.window_s): \
         codes can be set again from {until}",
        panel::CODE_SETS_PER_WINDOW
    )))
}

/// Starts a `learn_tag` (DESIGN 10b), replacing any other, once it is marked in the store
/// (a restart then tells it ended).
async fn start_learning(desk: &mut impl Desk, learning: Learning) -> Result<(), CommandError> {
    if let Some(keypad) = &learning.keypad {
        if !desk.config().keypads.iter().any(|k| &k.name == keypad) {
            return Err(CommandError::NotFound(
                "no keypad has that name (see `keypads` in the config)".into(),
            ));
        }
    }
    let marker = serde_json::to_vec(&learning).unwrap_or_default();
    desk.commit(Change {
        meta: vec![(panel::TAG_LEARNING, marker)],
        ..Change::default()
    })
    .await?;
    tracing::info!(
        user = learning.user,
        keypad = learning.keypad.as_deref().unwrap_or("any"),
        until = %learning.until,
        "learning a tag"
    );
    desk.panel().start_learning(learning);
    Ok(())
}

/// Commits what already happened; a store failure is the desk's to log.
async fn record(desk: &mut impl Desk, change: Change) {
    let _ = desk.commit(change).await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::admin::fake::FakeUsers;
    use crate::admin::{Context, Users};
    use crate::codes::{Argon2Params, LookupKeyer};
    use crate::lockout::{LockoutRules, Lockouts};
    use crate::panel::{Rules, Saved};
    use crate::topics::Topics;

    /// The daemon's desk in memory: the fake users, a cheap Argon2, and counters of the I/O
    /// the flow asked for.
    struct FakeDesk {
        config: Config,
        panel: Panel,
        quiet: Quiet,
        has_master: bool,
        users: FakeUsers,
        keyer: LookupKeyer,
        applied: HashMap<String, Value>,
        identified: usize,
        stored_reads: usize,
        fail_commits: bool,
    }

    const MASTER: &str = "1234";
    const ADMIN: &str = "2468";
    const USER: &str = "1357";

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    impl FakeDesk {
        fn empty() -> FakeDesk {
            let yaml = "mqtt: {base_topic: kb}\nkeypads:\n  - {name: hall, protocol: json, topic: esp/hall}\n";
            let config = crate::config::parse(yaml).unwrap_or_else(|p| panic!("{p:?}"));
            let tz = config.time_zone().unwrap();
            let panel = Panel::new(
                Rules::from_config(&config, tz),
                Topics::new(&config),
                &config.keypads,
                Saved::new(t(0)),
                Lockouts::new(LockoutRules::from_config(&config.lockout)),
            );
            let params = Argon2Params {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            };
            FakeDesk {
                config,
                panel,
                quiet: Quiet::default(),
                has_master: false,
                users: FakeUsers::default(),
                keyer: LookupKeyer::new(b"site secret", b"0123456789abcdef", params).unwrap(),
                applied: HashMap::new(),
                identified: 0,
                stored_reads: 0,
                fail_commits: false,
            }
        }

        /// Alice the master, Bob an admin, Carol a user, created through the flow.
        fn household() -> FakeDesk {
            let mut desk = FakeDesk::empty();
            let add = |name: &str, role: &str, code: &str| {
                json!({"id": format!("add-{name}"), "command": "add_user", "name": name,
                       "role": role, "code": code, "auth": MASTER})
            };
            let alice = json!({"id": "add-alice", "command": "add_user", "name": "Alice",
                               "role": "master", "code": MASTER});
            assert_eq!(desk.send(&alice, 0)["ok"], true);
            assert_eq!(desk.send(&add("Bob", "admin", ADMIN), 1)["ok"], true);
            assert_eq!(desk.send(&add("Carol", "user", USER), 2)["ok"], true);
            desk.identified = 0;
            desk.stored_reads = 0;
            desk
        }

        fn outcome(&mut self, command: &Value, secs: i64) -> Outcome {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let payload = command.to_string();
            runtime.block_on(handle(self, payload.as_bytes(), t(secs), Instant::now()))
        }

        fn send(&mut self, command: &Value, secs: i64) -> Value {
            self.outcome(command, secs).result
        }
    }

    impl Desk for FakeDesk {
        fn config(&self) -> &Config {
            &self.config
        }

        fn panel(&mut self) -> &mut Panel {
            &mut self.panel
        }

        fn quiet(&mut self) -> &mut Quiet {
            &mut self.quiet
        }

        fn has_master(&self) -> bool {
            self.has_master
        }

        fn master_created(&mut self) {
            self.has_master = true;
        }

        async fn identify(&mut self, code: Code) -> Found {
            self.identified += 1;
            Ok(self
                .users
                .credential_by_key(&self.keyer.key(&code))
                .unwrap())
        }

        async fn stored(&mut self, id: &str) -> Result<Option<Value>, StoreError> {
            self.stored_reads += 1;
            Ok(self.applied.get(id).cloned())
        }

        async fn apply(
            &mut self,
            request: &Request,
            authority: &Authority,
            now: Timestamp,
            under_duress: bool,
        ) -> Result<Applied, CommandError> {
            let ctx = Context {
                store: &self.users,
                keyer: &self.keyer,
                now,
                under_duress,
            };
            super::super::apply(&ctx, request, authority)
        }

        async fn commit(&mut self, mut change: Change) -> Result<(), StoreError> {
            if self.fail_commits {
                return Err(StoreError::Task("the disk is full".into()));
            }
            if let Some((id, stored)) = change.applied.take() {
                self.applied.insert(id, stored);
            }
            self.users.commit(change);
            Ok(())
        }

        fn fingerprint(&self, request: &Request) -> String {
            self.keyer.digest(&request.fingerprint_input()).to_hex()
        }
    }

    fn kind(result: &Value) -> &str {
        result["error"]["kind"].as_str().unwrap_or("none")
    }

    fn set_code(id: &str, code: &str, auth: &str) -> Value {
        json!({"id": id, "command": "set_code", "user": "Carol", "code": code, "auth": auth})
    }

    #[test]
    fn a_command_without_auth_is_refused_before_any_lookup_or_computation() {
        let mut desk = FakeDesk::household();
        // An id that was used: the answer must not tell.
        let result = desk.send(&json!({"id": "add-Bob", "command": "list_users"}), 10);
        assert_eq!(kind(&result), "unauthorized");
        assert_eq!((desk.identified, desk.stored_reads), (0, 0));
        // Not counted either: a fifth attempt is still answered the same way.
        for i in 0..5 {
            let result = desk.send(&json!({"id": format!("x{i}"), "command": "list_users"}), 11);
            assert_eq!(kind(&result), "unauthorized");
        }
        assert!(desk
            .panel
            .locked(&crate::events::Source::Admin, t(12))
            .is_none());
    }

    #[test]
    fn the_bootstrap_rule_creates_one_master_and_then_asks_for_auth() {
        let mut desk = FakeDesk::empty();
        let master = json!({"id": "m1", "command": "add_user", "name": "Alice",
                            "role": "master", "code": MASTER});
        assert_eq!(desk.send(&master, 0)["ok"], true);
        assert!(desk.has_master);
        let again = json!({"id": "m2", "command": "add_user", "name": "Eve",
                           "role": "master", "code": "9999"});
        assert_eq!(kind(&desk.send(&again, 1)), "unauthorized");
        assert_eq!(desk.users.users.len(), 1);
    }

    #[test]
    fn a_used_id_is_replayed_only_to_an_authorised_sender_and_never_applied_twice() {
        let mut desk = FakeDesk::household();
        let first = desk.send(&set_code("c1", "8642", ADMIN), 10);
        assert_eq!(first["ok"], true);
        // The same command with another code: replayed, not applied, nothing said about it.
        let again = desk.send(&set_code("c1", "9753", ADMIN), 11);
        assert_eq!(again["replayed"], true);
        let carol = desk.users.get("Carol").clone();
        let found = desk
            .users
            .credential_by_key(&desk.keyer.key(&Code::parse("8642", 4, 8).unwrap()));
        assert_eq!(found.unwrap().map(|(u, _)| u.id), Some(carol.id));
        // Another command under a used id is refused, not replayed.
        let other = json!({"id": "c1", "command": "list_users", "auth": ADMIN});
        assert_eq!(kind(&desk.send(&other, 12)), "invalid_field");
    }

    #[test]
    fn wrong_auth_locks_the_admin_channel_and_then_costs_no_computation() {
        let mut desk = FakeDesk::household();
        let max = desk.config.lockout.max_failures;
        for i in 0..max {
            let wrong = json!({"id": format!("w{i}"), "command": "list_users", "auth": "0000"});
            assert_eq!(kind(&desk.send(&wrong, 10)), "unauthorized");
        }
        assert_eq!(desk.identified, max as usize);
        // Locked: even the right code is refused, without being computed.
        let right = json!({"id": "r1", "command": "list_users", "auth": MASTER});
        assert_eq!(kind(&desk.send(&right, 11)), "locked_out");
        assert_eq!(desk.identified, max as usize);
        // A success never reset it: it ends with its duration.
        let later = desk.config.lockout.duration_s as i64 + 12;
        assert_eq!(desk.send(&right, later)["ok"], true);
    }

    #[test]
    fn duplicate_code_answers_count_toward_the_admin_lockout() {
        let mut desk = FakeDesk::household();
        let max = desk.config.lockout.max_failures;
        for i in 0..max {
            // Bob tries Carol's code on Carol: each answer says whether the code exists.
            let result = desk.send(&set_code(&format!("d{i}"), ADMIN, ADMIN), 10);
            assert_eq!(kind(&result), "duplicate_code");
        }
        let next = desk.send(&set_code("d-next", "8642", ADMIN), 11);
        assert_eq!(kind(&next), "locked_out");
    }

    #[test]
    fn commands_that_set_a_code_are_rationed_per_actor() {
        let mut desk = FakeDesk::household();
        for i in 0..crate::panel::CODE_SETS_PER_WINDOW {
            let code = format!("{:04}", 5000 + i);
            let result = desk.send(&set_code(&format!("s{i}"), &code, ADMIN), 10);
            assert_eq!(result["ok"], true, "{result}");
        }
        let over = desk.send(&set_code("s-over", "6001", ADMIN), 11);
        assert_eq!(kind(&over), "locked_out");
        // Reading needs no ration.
        let read = json!({"id": "l1", "command": "list_users", "auth": ADMIN});
        assert_eq!(desk.send(&read, 12)["ok"], true);
    }

    #[test]
    fn a_duress_code_as_auth_works_and_tells_after_the_result() {
        let mut desk = FakeDesk::household();
        let duress = json!({"id": "dc", "command": "set_duress_code", "user": "Bob",
                            "code": "9911", "auth": ADMIN});
        assert_eq!(desk.send(&duress, 10)["ok"], true);
        let list =
            |auth: &str| json!({"id": format!("l-{auth}"), "command": "list_users", "auth": auth});
        let coerced = desk.outcome(&list("9911"), 11);
        let own = desk.outcome(&list(ADMIN), 12);
        assert!(own.duress.is_none());
        let event = coerced.duress.expect("a duress event");
        assert_eq!(event.event_type.as_str(), "duress");
        // The result itself is the one their own code gets.
        assert_eq!(coerced.result["users"], own.result["users"]);
    }

    #[test]
    fn a_store_failure_is_an_internal_error_that_names_no_cause() {
        let mut desk = FakeDesk::household();
        desk.fail_commits = true;
        let add = json!({"id": "a1", "command": "add_user", "name": "Dave", "auth": MASTER});
        let result = desk.send(&add, 10);
        assert_eq!(kind(&result), "internal");
        assert!(!result.to_string().contains("disk"), "{result}");
        assert!(desk.users.find_user("Dave").unwrap().is_none());
        assert!(!desk.applied.contains_key("a1"));
    }

    #[test]
    fn a_learning_at_an_unknown_keypad_is_refused_and_starts_nothing() {
        let mut desk = FakeDesk::household();
        let learn = json!({"id": "t1", "command": "learn_tag", "user": "Carol",
                           "keypad": "garage", "auth": ADMIN});
        assert_eq!(kind(&desk.send(&learn, 10)), "not_found");
        assert!(desk.panel.learning().is_none());
        let here = json!({"id": "t2", "command": "learn_tag", "user": "Carol",
                          "keypad": "hall", "auth": ADMIN});
        assert_eq!(desk.send(&here, 11)["ok"], true);
        assert_eq!(
            desk.panel.learning().map(|l| l.user.as_str()),
            Some("Carol")
        );
    }
}
