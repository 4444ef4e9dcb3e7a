//! The offline commands of DESIGN.md 8 and 10d: `init`, `reset-master`, `users`, `activity`,
//! `unlock`.
//!
//! They open the store directly, so they refuse with a clear message while the daemon holds
//! it. A code is read from the terminal without echo, or from stdin when that is not a
//! terminal (one trailing newline dropped), and never printed.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use jiff::Timestamp;

use crate::admin::{self, AdminCommand, Authority, CommandError, Report, Rules};
use crate::codes::Code;
use crate::config::Config;
use crate::events::{Event, EventType, Source};
use crate::lockout::{self, LockoutRules, Lockouts};
use crate::store::{Change, Create, Store, StoreError};
use crate::users::{DenyReason, Role, User};

/// How many times a terminal asks for a code before giving up.
const TRIES: usize = 3;

/// Reads a code: on a terminal without echo, checked by `check` before it is asked a second
/// time, and asked again (up to [`TRIES`] times) after a typo; else once from stdin.
pub fn read_code(
    prompt: &str,
    check: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        ask_twice(
            &mut |p| rpassword::prompt_password(p),
            &mut std::io::stderr(),
            prompt,
            check,
        )
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the code from stdin")?;
        if let Some(stripped) = text.strip_suffix('\n') {
            text = stripped.strip_suffix('\r').unwrap_or(stripped).to_owned();
        }
        Ok(text)
    }
}

/// The terminal dialogue of [`read_code`]: `ask` shows a prompt and reads a line unechoed,
/// `tell` gets what went wrong (never the code).
fn ask_twice(
    ask: &mut dyn FnMut(&str) -> std::io::Result<String>,
    tell: &mut dyn Write,
    prompt: &str,
    check: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    for _ in 0..TRIES {
        let first = ask(&format!("{prompt}: "))?;
        if let Err(e) = check(&first) {
            writeln!(tell, "{e:#}; try again")?;
            continue;
        }
        let second = ask("The same code again: ")?;
        if first != second {
            writeln!(tell, "the two codes differ; try again")?;
            continue;
        }
        return Ok(first);
    }
    bail!("no code after {TRIES} tries; nothing was changed")
}

/// Whether `raw` passes the config's code format, in the words of the prompts.
pub fn check_format(config: &Config, raw: &str) -> anyhow::Result<()> {
    Code::parse(raw, config.codes.min_length, config.codes.max_length)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("that code cannot be used: {e}"))
}

fn parse_code(config: &Config, raw: &str) -> anyhow::Result<Code> {
    Code::parse(raw, config.codes.min_length, config.codes.max_length)
        .map_err(|e| anyhow::anyhow!("that code cannot be used: {e}; nothing was changed"))
}

/// `init`: creates the store, the secret and the master user.
pub fn init(
    config: &Config,
    name: &str,
    read: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<User> {
    let Ok(name) = admin::user_name(name) else {
        bail!("--name must be 1 to 64 characters, without control characters");
    };
    let refused = |error| match error {
        CommandError::Forbidden(_) => anyhow::anyhow!(
            "a master already exists; use `keypad-bridge reset-master` to give it a new code"
        ),
        CommandError::DuplicateName(_) => {
            anyhow::anyhow!("another user is already called {name:?}; choose another --name")
        }
        other => refusal(other),
    };
    // Nothing is created until the code has been read and checked: an interrupted `init`
    // must not leave a store without a master behind.
    let existing = match Store::open(config, Create::Refused) {
        Ok(store) => Some(store),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(store) = &existing {
        // The rules that need no code, asked before the code is typed.
        admin::may_add_user(store, &Authority::Local, &name, Role::Master, true)
            .map_err(refused)?;
    }
    let code = parse_code(config, &read()?)?;
    let store = match existing {
        Some(store) => store,
        None => Store::open(config, Create::Allowed)?,
    };
    let command = AdminCommand::AddUser {
        name: name.clone(),
        role: Role::Master,
        code: Some(code),
        rules: Rules::default(),
    };
    run_locally(&store, &command, refused)
}

/// `reset-master`: a new code for the master (local recovery of a lost main code).
pub fn reset_master(
    config: &Config,
    read: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<User> {
    let store = Store::open(config, Create::Refused)?;
    let Some(master) = store.master()? else {
        bail!("there is no master yet; create it with `keypad-bridge init`");
    };
    let code = parse_code(config, &read()?)?;
    let command = AdminCommand::SetCode {
        user: master.id.clone(),
        code,
    };
    run_locally(&store, &command, refusal)
}

/// Decides a command as [`Authority::Local`], under the rules of `B/config/set`, and commits
/// it; `refusal` words a refused one for the terminal. Its warnings go to stderr.
fn run_locally(
    store: &Store,
    command: &AdminCommand,
    refusal: impl Fn(CommandError) -> anyhow::Error,
) -> anyhow::Result<User> {
    let ctx = admin::Context {
        store,
        keyer: store.keyer(),
        now: now(store),
        under_duress: false,
    };
    let decision = admin::decide(&ctx, command, &Authority::Local).map_err(refusal)?;
    if let Some(change) = decision.change {
        store.commit(change)?;
    }
    for warning in &decision.warnings {
        eprintln!("warning: {warning}");
    }
    match decision.report {
        Report::User(user) => Ok(*user),
        Report::Users(_) | Report::Entries(_) => bail!("{} changed no user", command.name()),
    }
}

/// The offline commands' time: the system clock's, or the store's last write when the system
/// clock is behind it (a Raspberry Pi without a real-time clock, before NTP), said on stderr.
/// A clock behind the last write would make expired codes look valid again.
fn now(store: &Store) -> Timestamp {
    let system = Timestamp::now();
    match store.last_write() {
        Some(last) if system < last => {
            eprintln!(
                "warning: the system clock says {system:.0}, before the store's last write at \
                 {last:.0}: not trusting it, using the time of the last write"
            );
            last
        }
        _ => system,
    }
}

/// A refused command in the words of the offline commands.
fn refusal(error: CommandError) -> anyhow::Error {
    match error {
        CommandError::DuplicateCode(_) => {
            anyhow::anyhow!("that code is already used by another user; choose another one")
        }
        CommandError::Store(e) => anyhow::Error::new(e)
            .context("the store could not complete the command; nothing was changed"),
        CommandError::Internal(_) => {
            anyhow::anyhow!("the store could not complete the command; nothing was changed")
        }
        other => anyhow::anyhow!("{other}; nothing was changed"),
    }
}

/// `users`: one line per user, no codes.
pub fn users(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open(config, Create::Refused)?;
    let users = store.users()?;
    if users.is_empty() {
        writeln!(
            out,
            "no users yet: create the master with `keypad-bridge init`"
        )?;
        return Ok(());
    }
    write_users(&users, now(&store), out)
}

/// The `users` table: a header row, then one line per user; a user whose rules refuse the
/// code at `now` (expired, not yet valid, uses exhausted) is marked at the end of the line.
fn write_users(users: &[User], now: Timestamp, out: &mut dyn Write) -> anyhow::Result<()> {
    let row = |out: &mut dyn Write, cells: [&str; 8]| {
        let [id, name, role, status, code, uses, tags, rules] = cells;
        let line = format!(
            "{id:<10} {name:<20} {role:<8} {status:<8} {code:<7} {uses:<5} {tags:<4} {rules}"
        );
        writeln!(out, "{}", line.trim_end())
    };
    row(
        out,
        [
            "ID", "NAME", "ROLE", "STATUS", "CODE", "USES", "TAGS", "RULES",
        ],
    )?;
    for u in users {
        let mut rules = Vec::new();
        if let Some(t) = u.valid_from {
            rules.push(format!("from {t}"));
        }
        if let Some(t) = u.valid_until {
            rules.push(format!("until {t}"));
        }
        if let Some(s) = &u.schedule {
            rules.push(format!("{} weekly window(s)", s.len()));
        }
        if let Some(m) = u.max_uses {
            rules.push(format!("max {m} uses"));
        }
        // Tags by label only (DESIGN 10b: never the value).
        let labels: Vec<&str> = u.tags.iter().filter_map(|t| t.label.as_deref()).collect();
        if !labels.is_empty() {
            rules.push(format!("tags: {}", labels.join(", ")));
        }
        let mut rules = rules.join(", ");
        if let Some(reason) = u.refused_by_rules(now) {
            let why = match reason {
                DenyReason::Expired => "expired",
                DenyReason::NotYetValid => "not valid yet",
                _ => "uses exhausted",
            };
            if !rules.is_empty() {
                rules.push(' ');
            }
            rules.push_str(&format!("<- {why}: the code is refused now"));
        }
        row(
            out,
            [
                &u.id,
                &u.name,
                u.role.as_str(),
                if u.active { "active" } else { "inactive" },
                if u.has_code() { "code" } else { "no code" },
                &u.uses.to_string(),
                &u.tags.len().to_string(),
                &rules,
            ],
        )?;
    }
    Ok(())
}

/// `activity`: the newest entries first.
pub fn activity(config: &Config, limit: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open(config, Create::Refused)?;
    for e in store.activity(limit, None, |_| true)? {
        let mut line = format!("{:>6} {} {:<17}", e.seq, e.at, e.event_type.as_str());
        for (key, value) in [
            ("user", &e.user),
            ("source", &e.source),
            ("reason", &e.reason),
            ("by", &e.by),
            ("credential", &e.credential),
            ("tag", &e.tag_id),
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        if let Some(until) = e.until {
            line.push_str(&format!(" until={until}"));
        }
        if e.learned == Some(true) {
            line.push_str(" learned");
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `unlock [SOURCE]`: lifts the lockout of one source, or of every source, and forgets its
/// failures and its doubling; one `unlocked` event per source that had anything to forget.
pub fn unlock(config: &Config, source: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open(config, Create::Refused)?;
    let rules = LockoutRules::from_config(&config.lockout);
    let mut lockouts = Lockouts::restore(rules, store.meta(lockout::META_KEY)?.as_deref());
    let now = now(&store);
    let source = source.map(str::trim);
    let unlocked = lockouts.unlock(source, now);
    if unlocked.is_empty() {
        match source {
            Some(name) => {
                write!(out, "{name} had nothing to unlock: it is not locked and no failed attempt is counted for it")?;
                let mut known = vec![Source::Admin, Source::HomeAssistant];
                known.extend(config.keypads.iter().map(|k| Source::keypad(&k.name)));
                let known: Vec<String> = known.iter().map(Source::to_string).collect();
                if !known.iter().any(|k| k == name) {
                    write!(out, " (the sources are {})", known.join(", "))?;
                }
                writeln!(out)?;
            }
            None => writeln!(out, "nothing was locked")?,
        }
        return Ok(());
    }
    let events = unlocked
        .iter()
        .map(|u| {
            let mut event = Event::new(EventType::Unlocked, now).source(&u.source);
            event.by = Some(Source::Cli.to_string());
            event
        })
        .collect();
    store.commit(Change {
        events,
        meta: vec![(lockout::META_KEY, lockouts.to_json())],
        ..Change::default()
    })?;
    for u in &unlocked {
        let mut line = match u.was_locked_until {
            Some(until) => format!("unlocked {} (was locked until {until:.0})", u.source),
            None => format!("{} was not locked", u.source),
        };
        if u.failures > 0 {
            line.push_str(&format!(
                "; forgot its {}",
                plural(u.failures, "failed attempt")
            ));
        }
        if u.lockouts > 0 {
            line.push_str(&format!(
                "; its next lockout lasts {} s again",
                config.lockout.duration_s
            ));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let text = serde_json::json!({
            "store": {"path": dir.join("db"), "secret_file": dir.join("secret"), "cache_mb": 1},
            "codes": {"argon2": {"memory_kib": 1024, "iterations": 1, "parallelism": 1}},
            "keypads": [],
        });
        crate::config::parse(&text.to_string()).unwrap()
    }

    fn code(digits: &str) -> impl FnOnce() -> anyhow::Result<String> + '_ {
        move || Ok(digits.to_owned())
    }

    fn unread() -> anyhow::Result<String> {
        panic!("the code was asked for although the command is refused")
    }

    #[test]
    fn init_and_reset_master_follow_the_rules_of_the_config_topic() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let alice = init(&config, " Alice ", code("1234")).unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("Alice", Role::Master));
        // A second master, or a taken name, is refused before the code is read.
        let err = init(&config, "Eve", unread).unwrap_err().to_string();
        assert!(err.contains("a master already exists"), "{err}");
        let store = Store::open(&config, Create::Refused).unwrap();
        let bob = AdminCommand::AddUser {
            name: "Bob".into(),
            role: Role::User,
            code: Some(Code::parse("2468", 4, 6).unwrap()),
            rules: Rules::default(),
        };
        run_locally(&store, &bob, refusal).unwrap();
        drop(store);
        let err = reset_master(&config, code("2468")).unwrap_err().to_string();
        assert!(err.contains("already used by another user"), "{err}");
        let err = reset_master(&config, code("12")).unwrap_err().to_string();
        assert!(err.contains("that code cannot be used"), "{err}");
        assert_eq!(reset_master(&config, code("1234")).unwrap().id, alice.id);
        reset_master(&config, code("7531")).unwrap();
        let store = Store::open(&config, Create::Refused).unwrap();
        let key = store.keyer().key(&Code::parse("7531", 4, 6).unwrap());
        assert_eq!(store.user_by_key(&key).unwrap().unwrap().id, alice.id);
        let events = store.activity(10, None, |_| true).unwrap();
        let sources: Vec<_> = events.iter().map(|e| e.source.as_deref()).collect();
        assert!(sources.iter().all(|s| *s == Some("cli")), "{sources:?}");
        assert!(events.iter().all(|e| e.by.is_none()));
    }

    /// Plays a terminal: the lines typed in turn, and every prompt shown.
    fn dialogue(typed: &[&str]) -> (anyhow::Result<String>, Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut typed = typed.iter();
        let mut prompts = Vec::new();
        let mut told = Vec::new();
        let got = ask_twice(
            &mut |p| {
                prompts.push(p.to_owned());
                Ok(typed.next().expect("asked once too often").to_string())
            },
            &mut told,
            "Main code",
            |raw| check_format(&config, raw),
        );
        (got, prompts, String::from_utf8(told).unwrap())
    }

    #[test]
    fn a_malformed_code_is_refused_before_it_is_asked_again_and_a_typo_asks_again() {
        let (got, prompts, told) = dialogue(&["123", "4826", "4862", "4826", "4826"]);
        assert_eq!(got.unwrap(), "4826");
        let again = "The same code again: ";
        assert_eq!(
            prompts,
            ["Main code: ", "Main code: ", again, "Main code: ", again],
            "a 3-digit code is refused at once, a mismatch asks from the start"
        );
        assert!(told.contains("that code cannot be used: a code has 4 to 6 digits; try again"));
        assert!(told.contains("the two codes differ; try again"), "{told}");
        assert!(!told.contains("123") && !told.contains("48"), "{told}");
        let (got, prompts, _) = dialogue(&["1", "22", "333"]);
        assert!(got
            .unwrap_err()
            .to_string()
            .contains("no code after 3 tries"));
        assert_eq!(prompts.len(), 3);
    }

    #[test]
    fn users_has_a_header_and_marks_codes_the_rules_refuse_now() {
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let person = |id: &str, name: &str| {
            let mut u = User::new(id.into(), name.into(), Role::User, now);
            u.code_key = Some("00".repeat(32));
            u
        };
        let mut expired = person("u_1", "Contractor");
        expired.valid_until = Some("2026-11-27T18:00:00Z".parse().unwrap());
        let mut early = person("u_2", "Summer");
        early.valid_from = Some("2027-06-01T00:00:00Z".parse().unwrap());
        let mut spent = person("u_3", "Guest");
        spent.max_uses = Some(1);
        spent.uses = 1;
        let mut fine = person("u_4", "Bob");
        fine.valid_until = Some("2026-12-08T12:00:00Z".parse().unwrap());
        for label in [Some("blue fob"), None] {
            fine.tags.push(crate::users::Tag {
                id: format!("t_{}", fine.tags.len()),
                label: label.map(str::to_owned),
                added_at: now,
                key: "ab".repeat(32),
            });
        }
        let mut master = User::new("u_0".into(), "Alice".into(), Role::Master, now);
        master.valid_until = expired.valid_until;
        let mut out = Vec::new();
        write_users(&[master, expired, early, spent, fine], now, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("ID ") && lines[0].contains("ROLE"),
            "{text}"
        );
        assert!(
            !lines[1].contains("refused"),
            "no rule binds the master: {text}"
        );
        assert!(
            lines[2].contains("<- expired: the code is refused now"),
            "{text}"
        );
        assert!(lines[3].contains("<- not valid yet"), "{text}");
        assert!(lines[4].contains("<- uses exhausted"), "{text}");
        assert!(!lines[5].contains("refused"), "{text}");
        assert!(lines[0].contains(" TAGS "), "{text}");
        assert!(
            lines[5].contains(" 2    ") && lines[5].contains("tags: blue fob"),
            "two tags, by label: {text}"
        );
        assert!(!text.contains("abab"), "never a tag's key: {text}");
        assert!(
            lines[2].contains(" user ") && lines[2].contains(" code "),
            "{text}"
        );
    }

    #[test]
    fn init_refuses_a_name_someone_has() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config, Create::Allowed).unwrap();
        let bob = AdminCommand::AddUser {
            name: "Bob".into(),
            role: Role::User,
            code: None,
            rules: Rules::default(),
        };
        run_locally(&store, &bob, refusal).unwrap();
        drop(store);
        let err = init(&config, "BOB", unread).unwrap_err().to_string();
        assert!(err.contains("another user is already called"), "{err}");
        let err = init(&config, "\u{7}", unread).unwrap_err().to_string();
        assert!(err.contains("--name must be 1 to 64 characters"), "{err}");
    }
}
