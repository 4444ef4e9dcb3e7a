//! The offline commands of DESIGN.md 8 and 10d: `init`, `reset-master`, `users`, `activity`,
//! `unlock`.
//!
//! They open the store directly, so they refuse with a clear message while the daemon holds
//! it. A code is read from the terminal without echo, or from stdin when that is not a
//! terminal (one trailing newline dropped), and never printed.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use jiff::Timestamp;

use crate::codes::Code;
use crate::config::Config;
use crate::events::{Event, EventType};
use crate::lockout::{self, LockoutRules, Lockouts};
use crate::store::{Change, Create, Store, StoreError};
use crate::users::{Role, User};

const SOURCE: &str = "cli";

/// Reads a code: twice without echo on a terminal, else once from stdin.
pub fn read_code(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("{prompt}: "))?;
        let second = rpassword::prompt_password("The same code again: ")?;
        if first != second {
            bail!("the two codes differ; nothing was changed");
        }
        Ok(first)
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
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        bail!("--name must be 1 to 64 characters, without control characters");
    }
    // Nothing is created until the code has been read and checked: an interrupted `init`
    // must not leave a store without a master behind.
    let existing = match Store::open(config, Create::Refused) {
        Ok(store) => Some(store),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(store) = &existing {
        if let Some(master) = store.master()? {
            bail!(
                "a master already exists ({:?}); use `keypad-bridge reset-master` to give it a new code",
                master.name
            );
        }
        if store
            .users()?
            .iter()
            .any(|u| crate::users::names_equal(&u.name, name))
        {
            bail!("another user is already called {name:?}; choose another --name");
        }
    }
    let code = parse_code(config, &read()?)?;
    let store = match existing {
        Some(store) => store,
        None => Store::open(config, Create::Allowed)?,
    };
    let key = store.keyer().key(&code);
    if store.code_taken(&key)? {
        bail!("that code is already used by another user; choose another one");
    }
    let now = Timestamp::now();
    let mut user = User::new(store.new_user_id()?, name.to_owned(), Role::Master, now);
    user.code_key = Some(key.to_hex());
    store.commit(Change {
        put_users: vec![user.clone()],
        put_codes: vec![(key, user.id.clone())],
        events: vec![
            Event::new(EventType::UserAdded, now)
                .source(SOURCE)
                .about(&user),
            Event::new(EventType::CodeSet, now)
                .source(SOURCE)
                .about(&user),
        ],
        ..Change::default()
    })?;
    Ok(user)
}

/// `reset-master`: a new code for the master (local recovery of a lost main code).
pub fn reset_master(
    config: &Config,
    read: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<User> {
    let store = Store::open(config, Create::Refused)?;
    let Some(mut master) = store.master()? else {
        bail!("there is no master yet; create it with `keypad-bridge init`");
    };
    let code = parse_code(config, &read()?)?;
    let key = store.keyer().key(&code);
    if let Some(holder) = store.user_by_key(&key)? {
        if holder.id != master.id {
            bail!("that code is already used by another user; choose another one");
        }
    }
    let now = Timestamp::now();
    let mut change = Change::recode(&mut master, key, now);
    let event = Event::new(EventType::CodeSet, now).source(SOURCE);
    change.events.push(event.about(&master));
    store.commit(change)?;
    Ok(master)
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
    }
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
        writeln!(
            out,
            "{:<10} {:<20} {:<8} {:<8} {:<7} uses={:<5} {}",
            u.id,
            u.name,
            u.role.as_str(),
            if u.active { "active" } else { "inactive" },
            if u.has_code() { "code" } else { "no code" },
            u.uses,
            rules.join(", ")
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
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        if let Some(until) = e.until {
            line.push_str(&format!(" until={until}"));
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
    let now = Timestamp::now();
    let source = source.map(str::trim);
    let unlocked = lockouts.unlock(source, now);
    if unlocked.is_empty() {
        match source {
            Some(name) => {
                write!(out, "{name} had nothing to unlock: it is not locked and no failed attempt is counted for it")?;
                let mut known = vec!["admin".to_owned(), "homeassistant".to_owned()];
                known.extend(config.keypads.iter().map(|k| format!("keypad:{}", k.name)));
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
            event.by = Some(SOURCE.to_owned());
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
