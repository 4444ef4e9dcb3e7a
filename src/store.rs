//! The store: a sled database, the site secret beside it, and the alarm-state file (DESIGN.md 2, 2b).
//!
//! Key layout (one sled tree each):
//!
//! | tree       | key                        | value                                   |
//! |------------|----------------------------|-----------------------------------------|
//! | `users`    | user id (UTF-8)            | [`User`] as JSON (no code, only its lookup key) |
//! | `codes`    | lookup key (32 bytes)      | user id; `<user id>/duress` for a duress code, `<user id>/tag` for a tag ([`code_entry`]) |
//! | `activity` | seq (u64, big-endian)      | [`Event`] as JSON                       |
//! | `meta`     | `format`, `salt`, `argon2`, `secret_check`, `next_seq`, `alarm_saved`, `lockouts`, `applied_next`, `written_at` | site values |
//! | `applied`  | command id (UTF-8)         | `{"fingerprint", "result"}`: a keyed digest of the command, and its result (idempotency) |
//! | `applied_order` | n (u64, big-endian)   | the command id applied n-th (`meta` `applied_next` is the next n) |
//!
//! `applied` keeps the newest [`MAX_APPLIED`] command ids: enough for what replays are for (a
//! retained command re-delivered on each reconnect, a script that re-sends after a lost
//! result), and a bound on a tree that would otherwise grow with every command for ever. An id
//! older than that is forgotten, and a command re-using it is applied as new. [`Store::commit`]
//! forgets the oldest id as it records a new one (O(1)), and opening trims an over-full tree.
//!
//! A code check is one Argon2id computation ([`LookupKeyer::key`]) and one `codes` lookup.
//! Every change goes through [`Store::commit`]: one sled transaction over all trees, then
//! [`Store::make_durable`] (sled's `flush()` plus an `fsync` of every file and the directory,
//! because sled's flush does not persist file metadata, sled issue #1452). Only then may the
//! caller acknowledge the change. Each commit also records, in the same transaction, when it
//! was made (`meta` `written_at`, RFC 3339): the caller's time ([`Store::vouch`]) or the system
//! clock's, whichever is later, and never earlier than the write before. A clock behind that
//! time is not trusted ([`crate::clock`]). The alarm state lives in a small JSON file next to the
//! database, replaced atomically. Everything here is the owner's only: the directory is 0700
//! and its files 0600 whatever the umask, and a looser store is tightened (and logged) at open.
//!
//! All methods block: the daemon calls them through `spawn_blocking`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use crate::codes::{Argon2Params, LookupKey, LookupKeyer};
use crate::config::{Config, StoreConfig};
use crate::events::Event;
use crate::owner;
use crate::users::{names_equal, Credential, Role, User};

const FORMAT: &[u8] = b"1";
/// Marks a duress code's entry in the `codes` tree (user ids never hold a `/`).
const DURESS_SUFFIX: &str = "/duress";
/// Marks a tag's entry in the `codes` tree.
const TAG_SUFFIX: &str = "/tag";

/// The `codes` tree's value for a user's secret.
pub fn code_entry(user_id: &str, which: Credential) -> String {
    match which {
        Credential::Code => user_id.to_owned(),
        Credential::Duress => format!("{user_id}{DURESS_SUFFIX}"),
        Credential::Tag => format!("{user_id}{TAG_SUFFIX}"),
    }
}
const SECRET_LEN: usize = 32;
const SALT_LEN: usize = 16;
const SECRET_CHECK_PURPOSE: &[u8] = b"keypad-bridge secret check v1";
/// How many applied command ids the store remembers for replays (see the module docs).
pub const MAX_APPLIED: u64 = 10_000;
const APPLIED_NEXT: &str = "applied_next";
/// The `meta` key of the time of the last commit.
pub const WRITTEN_AT: &str = "written_at";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is held by {}: stop it first (Ctrl-C where it runs{}, or `sudo \
         systemctl stop keypad-bridge` when it is the service)",
        holder_words(*holder), holder.map(|pid| format!(", `kill {pid}`")).unwrap_or_default()
    )]
    Busy {
        path: PathBuf,
        /// The pid holding sled's lock, when the kernel tells (Linux's /proc/locks).
        holder: Option<u32>,
    },
    #[error("there is no store at {path}: create it with `keypad-bridge init` (or start the daemon once)")]
    Missing { path: PathBuf },
    #[error(
        "there is no store at {path}, but {leftover} exists: the store seems lost. Restore it \
         from your backup; to really start over, remove {leftover} first"
    )]
    Lost { path: PathBuf, leftover: PathBuf },
    #[error(
        "the secret file {secret} is missing, but the store at {store} was created with a secret; \
         restore the secret file from your backup (creating a new one would invalidate every code)"
    )]
    SecretMissing { secret: PathBuf, store: PathBuf },
    #[error(
        "the secret file {secret} does not belong to the store at {store}; restore the right \
         secret file (replacing it would invalidate every code)"
    )]
    SecretMismatch { secret: PathBuf, store: PathBuf },
    #[error("the secret file {path} is damaged: it must hold exactly {SECRET_LEN} bytes")]
    SecretDamaged { path: PathBuf },
    #[error("the store at {path} is damaged ({what}); refusing to start rather than come up with no users")]
    Damaged { path: PathBuf, what: String },
    #[error("the alarm state file {path} is damaged ({what}); refusing to start rather than guess the alarm state")]
    AlarmStateDamaged { path: PathBuf, what: String },
    #[error("the alarm state file {path} is missing although the store has saved one before; restore it or remove the store's `alarm_saved` marker by re-creating the store")]
    AlarmStateMissing { path: PathBuf },
    // A permission error says whose the file is, who needs it and the fix (crate::owner).
    // The cause is in the message and not a `source`: `{err:#}` prints it once.
    #[error(
        "cannot use the secret file {path}: {cause}{}",
        owner::access_hint(path, cause)
    )]
    SecretIo { path: PathBuf, cause: io::Error },
    #[error(
        "store I/O error at {path}: {cause}{}",
        owner::access_hint(path, cause)
    )]
    Io { path: PathBuf, cause: io::Error },
    #[error("store error: {0}")]
    Sled(sled::Error),
    #[error("an internal task failed: {0}")]
    Task(String),
    #[error("invalid Argon2 parameters: {0}")]
    Argon2(argon2::Error),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

/// One atomic, durable change to the store.
#[derive(Debug, Default)]
pub struct Change {
    pub put_users: Vec<User>,
    pub delete_users: Vec<String>,
    pub put_codes: Vec<(LookupKey, String)>,
    pub delete_codes: Vec<LookupKey>,
    /// Appended to the activity log; their `seq` is assigned here.
    pub events: Vec<Event>,
    /// An applied command's fingerprint and result, kept under its id.
    pub applied: Option<(String, serde_json::Value)>,
    /// Site values to keep in `meta` (e.g. the lockout counts).
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

impl Change {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_users.is_empty()
            && self.delete_users.is_empty()
            && self.put_codes.is_empty()
            && self.delete_codes.is_empty()
            && self.events.is_empty()
            && self.applied.is_none()
            && self.meta.is_empty()
    }

    /// Gives `user` a new code (replacing any old one): the change to commit, without events.
    /// A new code starts a new count of uses (a re-issued one-time code works once more).
    pub fn recode(user: &mut User, key: LookupKey, now: jiff::Timestamp) -> Change {
        let mut change = Change::default();
        change
            .delete_codes
            .extend(user.code_key.as_deref().and_then(LookupKey::from_hex));
        change.put_codes.push((key, user.id.clone()));
        user.code_key = Some(key.to_hex());
        user.uses = 0;
        user.updated_at = now;
        change.put_users.push(user.clone());
        change
    }

    /// Gives `user` a new duress code (replacing any old one): the change, without events.
    pub fn duress(user: &mut User, key: LookupKey, now: jiff::Timestamp) -> Change {
        let mut change = Change::default();
        change
            .delete_codes
            .extend(user.duress_key.as_deref().and_then(LookupKey::from_hex));
        change
            .put_codes
            .push((key, code_entry(&user.id, Credential::Duress)));
        user.duress_key = Some(key.to_hex());
        user.updated_at = now;
        change.put_users.push(user.clone());
        change
    }
}

/// The open store. Cheap to clone (sled trees are reference-counted).
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    codes: sled::Tree,
    activity: sled::Tree,
    meta: sled::Tree,
    applied: sled::Tree,
    applied_order: sled::Tree,
    keyer: LookupKeyer,
    path: PathBuf,
    alarm_path: PathBuf,
    max_activity: u64,
    max_applied: u64,
    /// The last write's time and the caller's, shared by every clone.
    times: std::sync::Arc<std::sync::Mutex<Times>>,
    /// What [`Store::make_durable`] fsync'd last, shared by every clone.
    synced: std::sync::Arc<std::sync::Mutex<Synced>>,
}

#[derive(Debug, Default)]
struct Times {
    /// `meta` `written_at`, as committed.
    last_write: Option<jiff::Timestamp>,
    /// The latest time [`Store::vouch`] was given.
    vouched: Option<jiff::Timestamp>,
}

/// Whether [`Store::open`] may create a new store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    Allowed,
    Refused,
}

impl Store {
    /// Opens (or creates) the store named by the config.
    pub fn open(config: &Config, create: Create) -> Result<Store, StoreError> {
        let params = config.codes.argon2;
        Store::open_with(&config.store, params, config.activity.max_entries, create)
    }

    pub fn open_with(
        cfg: &StoreConfig,
        params: Argon2Params,
        max_activity: u64,
        create: Create,
    ) -> Result<Store, StoreError> {
        let path = cfg.path.clone();
        let existed = match fs::read_dir(&path) {
            Ok(mut entries) => entries.next().is_some(),
            // Not "missing" or "lost": it is there, but not this user's to read.
            Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                return Err(StoreError::Io {
                    path,
                    cause: source,
                });
            }
            Err(_) => false,
        };
        if !existed {
            // Without its database, a secret or an alarm state means a store was lost, not
            // that this is a first start: coming up with no users would hand the site to
            // whoever creates a master first. Said also to the commands that would not create
            // it, whose hint would otherwise be `init`, which refuses for this very reason.
            for leftover in [cfg.secret_file.clone(), alarm_state_path(&path)] {
                if leftover.exists() {
                    return Err(StoreError::Lost { path, leftover });
                }
            }
            if create == Create::Refused {
                return Err(StoreError::Missing { path });
            }
            create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
            create_private_dir(&path)?;
        }
        // Before sled opens it: a looser mode found now was set by someone, not by us.
        make_private(&path, Report::Loose)?;
        make_private(&alarm_state_path(&path), Report::Loose)?;
        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(cfg.cache_mb.saturating_mul(1024 * 1024))
            // Every change is flushed explicitly before it is acknowledged; a background
            // flusher would only wake a Raspberry Pi's SD card for nothing.
            .flush_every_ms(None);
        // A store closed a moment ago (a command that just ended, sled's threads winding down)
        // may still be locked for a few milliseconds: try again briefly before saying busy.
        let mut tries = 0;
        let db = loop {
            match sled_config.open().map_err(|e| open_error(e, &path)) {
                Err(StoreError::Busy { .. }) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        // sled creates its files as the umask says; its directory is 0700 already.
        make_private(&path, Report::Silently)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(e, &path));
        let users = tree("users")?;
        let codes = tree("codes")?;
        let activity = tree("activity")?;
        let meta = tree("meta")?;
        let applied = tree("applied")?;
        let applied_order = tree("applied_order")?;

        let keyer = match meta.get("format")? {
            Some(format) => {
                if format.as_ref() != FORMAT {
                    return Err(StoreError::Damaged {
                        path,
                        what: format!("unknown format {:?}", String::from_utf8_lossy(&format)),
                    });
                }
                open_existing(&meta, cfg, &path, params)?
            }
            None => {
                if existed {
                    return Err(StoreError::Damaged {
                        path,
                        what: "its site parameters are missing: damage, or a first start that \
                               was interrupted (if it never held any user, delete it and the \
                               secret file and start again)"
                            .into(),
                    });
                }
                create_new(&db, &meta, cfg, &path, params)?
            }
        };
        let last_write = read_written_at(&meta)?;
        let alarm_path = alarm_state_path(&path);
        let store = Store {
            db,
            users,
            codes,
            activity,
            meta,
            applied,
            applied_order,
            keyer,
            path,
            alarm_path,
            max_activity: max_activity.max(1),
            max_applied: MAX_APPLIED,
            synced: Default::default(),
            times: std::sync::Arc::new(std::sync::Mutex::new(Times {
                last_write,
                vouched: None,
            })),
        };
        store.trim_activity()?;
        store.trim_applied()?;
        Ok(store)
    }

    pub fn keyer(&self) -> &LookupKeyer {
        &self.keyer
    }

    /// When the store last committed a change (`None`: never, or a store from before the
    /// time was kept).
    pub fn last_write(&self) -> Option<jiff::Timestamp> {
        self.times().last_write
    }

    /// The caller's time now, when it may differ from the system clock's (the daemon's
    /// clock, which does not follow a system clock behind the last write): later commits
    /// record at least this.
    pub fn vouch(&self, now: jiff::Timestamp) {
        self.times().vouched = Some(now);
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user a lookup key belongs to, whichever of their secrets it is.
    pub fn user_by_key(&self, key: &LookupKey) -> Result<Option<User>, StoreError> {
        Ok(self.credential_by_key(key)?.map(|(user, _)| user))
    }

    /// The user a lookup key belongs to and which secret it is: one `codes` lookup, one
    /// `users` read.
    pub fn credential_by_key(
        &self,
        key: &LookupKey,
    ) -> Result<Option<(User, Credential)>, StoreError> {
        let Some(entry) = self.codes.get(key.0)? else {
            return Ok(None);
        };
        let entry = String::from_utf8_lossy(&entry);
        let (id, which) = if let Some(id) = entry.strip_suffix(DURESS_SUFFIX) {
            (id, Credential::Duress)
        } else if let Some(id) = entry.strip_suffix(TAG_SUFFIX) {
            (id, Credential::Tag)
        } else {
            (entry.as_ref(), Credential::Code)
        };
        Ok(self.user(id)?.map(|user| (user, which)))
    }

    /// A site value kept by a [`Change`]'s `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn code_taken(&self, key: &LookupKey) -> Result<bool, StoreError> {
        Ok(self.codes.contains_key(key.0)?)
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        match self.users.get(id)? {
            Some(bytes) => Ok(Some(self.decode_user(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Finds a user by id, or else by name (case-insensitive).
    pub fn find_user(&self, id_or_name: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.user(id_or_name)? {
            return Ok(Some(user));
        }
        match self.named(id_or_name.trim(), None)? {
            Some(id) => self.user(&id),
            None => Ok(None),
        }
    }

    /// The id of a user other than `except` whose name is `name` (case-insensitive). Reads
    /// only each record's id and name: at 10000 users a third of the time of [`Store::users`],
    /// and every `add_user` asks.
    pub fn named(&self, name: &str, except: Option<&str>) -> Result<Option<String>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            name: std::borrow::Cow<'a, str>,
        }
        for value in self.users.iter().values() {
            let bytes = value?;
            let named: Named<'_> = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(format!("a user record is unreadable: {e}")))?;
            if names_equal(&named.name, name) && Some(named.id.as_ref()) != except {
                return Ok(Some(named.id.into_owned()));
            }
        }
        Ok(None)
    }

    /// How many users there are, and whether one is the master, reading only each record's
    /// role (the daemon asks once, at start; decoding 10000 users would leave 7 MiB of heap).
    pub fn census(&self) -> Result<(usize, bool), StoreError> {
        #[derive(serde::Deserialize)]
        struct Census {
            role: Role,
        }
        let (mut count, mut master) = (0, false);
        for value in self.users.iter().values() {
            let bytes = value?;
            let census: Census = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(format!("a user record is unreadable: {e}")))?;
            count += 1;
            master |= census.role == Role::Master;
        }
        Ok((count, master))
    }

    /// Calls `each` with every user, oldest first as [`Store::users`] orders them, one at a
    /// time: only their ids and creation times are held at once (the whole roster of 10000
    /// users is read every 2 s at most). A user deleted meanwhile is left out. Returns how many
    /// users `each` saw.
    pub fn each_user(&self, mut each: impl FnMut(&User)) -> Result<usize, StoreError> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: String,
            created_at: jiff::Timestamp,
        }
        let mut order = Vec::new();
        for value in self.users.iter().values() {
            let bytes = value?;
            let created: Created = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(format!("a user record is unreadable: {e}")))?;
            order.push((created.created_at, created.id));
        }
        order.sort_unstable();
        let mut seen = 0;
        for (_, id) in order {
            if let Some(user) = self.user(&id)? {
                each(&user);
                seen += 1;
            }
        }
        Ok(seen)
    }

    /// Every user, oldest first.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut users = self
            .users
            .iter()
            .values()
            .map(|v| self.decode_user(&v?))
            .collect::<Result<Vec<_>, _>>()?;
        users.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(users)
    }

    pub fn master(&self) -> Result<Option<User>, StoreError> {
        Ok(self.users()?.into_iter().find(|u| u.role == Role::Master))
    }

    /// A new user id like `u_7f3a9c`, unused in this store.
    pub fn new_user_id(&self) -> Result<String, StoreError> {
        loop {
            let n = rand::rng().next_u32() & 0x00ff_ffff;
            let id = format!("u_{n:06x}");
            if !self.users.contains_key(&id)? {
                return Ok(id);
            }
        }
    }

    /// The result stored for an applied command id.
    pub fn applied(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self.applied.get(id)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.damaged(format!("a stored command result is unreadable: {e}"))),
            None => Ok(None),
        }
    }

    /// Applies a change atomically and makes it durable. Returns the events with their `seq`.
    pub fn commit(&self, change: Change) -> Result<Vec<Event>, StoreError> {
        let users: Vec<(String, Vec<u8>)> = change
            .put_users
            .iter()
            .map(|u| (u.id.clone(), json_bytes(u)))
            .collect();
        let applied = change
            .applied
            .as_ref()
            .map(|(id, result)| (id.clone(), json_bytes(result)));
        let max_activity = self.max_activity;
        let max_applied = self.max_applied;
        let now = jiff::Timestamp::now().max(self.times().vouched.unwrap_or(jiff::Timestamp::MIN));
        let result = (
            &self.users,
            &self.codes,
            &self.activity,
            &self.meta,
            &self.applied,
            &self.applied_order,
        )
            .transaction(|(tu, tc, ta, tm, tapp, torder)| {
                for id in &change.delete_users {
                    tu.remove(id.as_bytes())?;
                }
                for (id, bytes) in &users {
                    tu.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for key in &change.delete_codes {
                    tc.remove(&key.0)?;
                }
                for (key, id) in &change.put_codes {
                    tc.insert(&key.0, id.as_bytes())?;
                }
                let mut seq = match tm.get("next_seq")? {
                    Some(v) => read_u64(&v),
                    None => 1,
                };
                let mut events = change.events.clone();
                for event in &mut events {
                    event.seq = seq;
                    ta.insert(&seq.to_be_bytes(), event.to_json().into_bytes())?;
                    if seq > max_activity {
                        ta.remove(&(seq - max_activity).to_be_bytes())?;
                    }
                    seq += 1;
                }
                tm.insert("next_seq", &seq.to_be_bytes())?;
                if let Some((id, bytes)) = &applied {
                    remember_applied((tapp, torder, tm), id, bytes, max_applied)?;
                }
                for (key, bytes) in &change.meta {
                    tm.insert(*key, bytes.as_slice())?;
                }
                // Never earlier than the write before: a clock set back does not move it.
                let before = tm.get(WRITTEN_AT)?.and_then(|v| parse_time(&v));
                let written = before.map_or(now, |before| before.max(now));
                tm.insert(WRITTEN_AT, written.to_string().as_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>((events, written))
            });
        let (events, written) = storage_only(result)?;
        self.times().last_write = Some(written);
        self.make_durable()?;
        Ok(events)
    }

    /// Activity entries, newest first: at most `limit` of those `keep` accepts, with
    /// `seq < before`.
    pub fn activity(
        &self,
        limit: usize,
        before: Option<u64>,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for entry in self.activity.range(..end.to_be_bytes()).rev() {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = entry?;
            let event: Event = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(format!("an activity entry is unreadable: {e}")))?;
            if keep(&event) {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Loads the saved alarm state; `None` for a store that never saved one.
    pub fn load_alarm<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match fs::read(&self.alarm_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StoreError::AlarmStateDamaged {
                    path: self.alarm_path.clone(),
                    what: e.to_string(),
                }
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.meta.contains_key("alarm_saved")? {
                    Err(StoreError::AlarmStateMissing {
                        path: self.alarm_path.clone(),
                    })
                } else {
                    Ok(None)
                }
            }
            Err(source) => Err(StoreError::Io {
                path: self.alarm_path.clone(),
                cause: source,
            }),
        }
    }

    /// Replaces the alarm-state file atomically and durably.
    pub fn save_alarm<T: serde::Serialize>(&self, alarm: &T) -> Result<(), StoreError> {
        let staged = self.stage_alarm(alarm)?;
        self.install_alarm(staged)
    }

    /// The first half of [`Store::save_alarm`]: the new alarm-state file written and fsync'd
    /// beside the old one, which it replaces only when [`Store::install_alarm`] is called (so
    /// it can be written while the commit it follows is made durable). One at a time.
    pub fn stage_alarm<T: serde::Serialize>(&self, alarm: &T) -> Result<Staged, StoreError> {
        let bytes = serde_json::to_vec_pretty(alarm).unwrap_or_default();
        stage_atomically(&self.alarm_path, &bytes).map_err(|source| StoreError::Io {
            path: self.alarm_path.clone(),
            cause: source,
        })
    }

    /// The second half of [`Store::save_alarm`]: the staged file put in place, durably.
    pub fn install_alarm(&self, staged: Staged) -> Result<(), StoreError> {
        staged.install().map_err(|source| StoreError::Io {
            path: self.alarm_path.clone(),
            cause: source,
        })?;
        if !self.meta.contains_key("alarm_saved")? {
            self.meta.insert("alarm_saved", "1")?;
            self.make_durable()?;
        }
        Ok(())
    }

    /// sled's flush, then fsync of every file of the database and of its directories (but
    /// what has not changed since it was last fsync'd, [`Synced`]).
    pub fn make_durable(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        sync_tree(&self.path, &mut synced).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            cause: source,
        })
    }

    fn trim_activity(&self) -> Result<(), StoreError> {
        let next = match self.meta.get("next_seq")? {
            Some(v) => read_u64(&v),
            None => return Ok(()),
        };
        let keep_from = next.saturating_sub(self.max_activity);
        let mut removed = false;
        for key in self.activity.range(..keep_from.to_be_bytes()).keys() {
            self.activity.remove(key?)?;
            removed = true;
        }
        if removed {
            self.make_durable()?;
        }
        Ok(())
    }

    /// Lowers (or raises) how many applied ids are kept, trimming at once: [`MAX_APPLIED`]
    /// unless a test wants to see the bound at work.
    pub fn set_max_applied(&mut self, max: u64) -> Result<(), StoreError> {
        self.max_applied = max.max(1);
        self.trim_applied()
    }

    /// Forgets the oldest applied ids beyond the bound, each with its place, in one
    /// transaction. Ids kept by a store from before the bound (no `applied_next`, no place in
    /// `applied_order`) are given places first, oldest in key order; so are the ids of a store
    /// whose count cannot be read (a value of the wrong size): the only cases where the trees
    /// are read whole.
    ///
    /// Otherwise counted without reading them: sled keeps every page it reads in memory
    /// whatever its cache size, and reading 10000 applied ids at each start cost 7 MiB
    /// (issue 11). `applied_order` holds every place from its first key up to `applied_next`:
    /// a commit adds the next one and forgets the one `max` before it, a trim forgets from the
    /// first, a reindex numbers from 0. A place whose id is gone (left at the front by an
    /// interrupted trim of an earlier version, which forgot the id first) is dropped here, so
    /// that a later commit of that id is not forgotten with it.
    fn trim_applied(&self) -> Result<(), StoreError> {
        self.drop_dangling_places()?;
        let held = match self.applied_held()? {
            Some(held) => held,
            None => {
                self.reindex_applied()?;
                self.applied_held()?.unwrap_or(0)
            }
        };
        let excess = usize::try_from(held.saturating_sub(self.max_applied)).unwrap_or(usize::MAX);
        if excess == 0 {
            return Ok(());
        }
        let oldest = self
            .applied_order
            .iter()
            .take(excess)
            .collect::<Result<Vec<_>, _>>()?;
        let result = (&self.applied, &self.applied_order).transaction(|(tapp, torder)| {
            for (n, id) in &oldest {
                tapp.remove(id)?;
                torder.remove(n)?;
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        storage_only(result)?;
        self.make_durable()
    }

    /// How many places `applied_order` holds, from `applied_next` and its first key; `None`
    /// when that cannot tell: ids kept without `applied_next`, or a value of the wrong size.
    fn applied_held(&self) -> Result<Option<u64>, StoreError> {
        let Some(next) = self.meta.get(APPLIED_NEXT)? else {
            return Ok(self.applied.first()?.is_none().then_some(0));
        };
        let Some((first, _)) = self.applied_order.first()? else {
            return Ok(Some(0));
        };
        Ok(match (exact_u64(&next), exact_u64(&first)) {
            (Some(next), Some(first)) if first <= next => Some(next - first),
            _ => None,
        })
    }

    /// Drops the places at the front of `applied_order` whose id is no longer kept.
    fn drop_dangling_places(&self) -> Result<(), StoreError> {
        let mut dropped = false;
        while let Some((n, id)) = self.applied_order.first()? {
            if self.applied.contains_key(&id)? {
                break;
            }
            self.applied_order.remove(n)?;
            dropped = true;
        }
        if dropped {
            self.make_durable()?;
        }
        Ok(())
    }

    /// Rebuilds `applied_order` from `applied`: ids without a place first, then the others
    /// in the order they were applied.
    fn reindex_applied(&self) -> Result<(), StoreError> {
        let mut placed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for entry in self.applied_order.iter().values() {
            let id = entry?;
            if self.applied.contains_key(&id)? && seen.insert(id.clone()) {
                placed.push(id);
            }
        }
        let mut order: Vec<sled::IVec> = self
            .applied
            .iter()
            .keys()
            .filter(|key| key.as_ref().map_or(true, |id| !seen.contains(id)))
            .collect::<Result<_, _>>()?;
        order.extend(placed);
        let old: Vec<sled::IVec> = self.applied_order.iter().keys().collect::<Result<_, _>>()?;
        let result = (&self.applied_order, &self.meta).transaction(|(torder, tm)| {
            for n in &old {
                torder.remove(n)?;
            }
            for (n, id) in (0u64..).zip(&order) {
                torder.insert(&n.to_be_bytes(), id)?;
            }
            let next = u64::try_from(order.len()).unwrap_or(u64::MAX);
            tm.insert(APPLIED_NEXT, &next.to_be_bytes())?;
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        storage_only(result)?;
        self.make_durable()
    }

    fn decode_user(&self, bytes: &[u8]) -> Result<User, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.damaged(format!("a user record is unreadable: {e}")))
    }

    fn damaged(&self, what: String) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            what,
        }
    }
}

/// Records an applied command under its id, in `applied_order` too, and forgets the id applied
/// `max` commands before it: O(1) per command. An id applied again keeps its place.
fn remember_applied(
    (tapp, torder, tm): (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    id: &str,
    bytes: &[u8],
    max: u64,
) -> ConflictableTransactionResult<(), ()> {
    if tapp.insert(id.as_bytes(), bytes)?.is_some() {
        return Ok(());
    }
    let n = tm.get(APPLIED_NEXT)?.map_or(0, |v| read_u64(&v));
    torder.insert(&n.to_be_bytes(), id.as_bytes())?;
    tm.insert(APPLIED_NEXT, &n.saturating_add(1).to_be_bytes())?;
    if let Some(oldest) = n.checked_sub(max) {
        if let Some(old_id) = torder.remove(&oldest.to_be_bytes())? {
            tapp.remove(old_id)?;
        }
    }
    Ok(())
}

/// Where the alarm-state file of the store at `db` lives: `<db>.alarm.json`, beside it.
pub fn alarm_state_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".alarm.json");
    db.with_file_name(name)
}

fn open_error(e: sled::Error, path: &Path) -> StoreError {
    let busy = || StoreError::Busy {
        path: path.to_owned(),
        holder: lock_holder(&path.join("db")),
    };
    match e {
        sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock => busy(),
        sled::Error::Io(io) if io.to_string().contains("lock") => busy(),
        // sled names no file: the store's directory is where the user and mode are wrong.
        sled::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied => StoreError::Io {
            path: path.to_owned(),
            cause: io,
        },
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => StoreError::Damaged {
            path: path.to_owned(),
            what: e.to_string(),
        },
        other => StoreError::Sled(other),
    }
}

/// Who holds the store: another keypad-bridge as a rule (the daemon, or an offline command).
fn holder_words(holder: Option<u32>) -> String {
    let Some(pid) = holder else {
        return "another process, most likely another keypad-bridge (the daemon, or an offline \
                command)"
            .to_owned();
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match comm.trim() {
        "keypad-bridge" | "" => format!("another keypad-bridge (pid {pid})"),
        other => format!("another process (pid {pid}, {other})"),
    }
}

/// The pid holding the `flock` that sled takes on `file` (its `db` file), read from Linux's
/// `/proc/locks`; `None` when that cannot be told.
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(file).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks_holder(&locks, meta.dev(), meta.ino())
}

/// In `/proc/locks` text, the pid of the `FLOCK` on the file `dev`/`ino`. A line reads
/// `1: FLOCK  ADVISORY  WRITE 23538 fe:00:10215433 0 EOF` (major and minor in hex); a waiter's
/// line has `->` after the number and is not a holder.
fn locks_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // Linux's encoding of a dev_t (glibc's gnu_dev_major / gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

fn open_existing(
    meta: &sled::Tree,
    cfg: &StoreConfig,
    path: &Path,
    configured: Argon2Params,
) -> Result<LookupKeyer, StoreError> {
    let damaged = |what: &str| StoreError::Damaged {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let salt = meta
        .get("salt")?
        .ok_or_else(|| damaged("the site salt is missing"))?;
    if salt.len() != SALT_LEN {
        return Err(damaged("the site salt has the wrong length"));
    }
    let params: Argon2Params = meta
        .get("argon2")?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(|| damaged("the recorded Argon2 parameters are missing"))?;
    let check = meta
        .get("secret_check")?
        .ok_or_else(|| damaged("the secret check value is missing"))?;
    let secret = match read_secret(&cfg.secret_file) {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(StoreError::SecretMissing {
                secret: cfg.secret_file.clone(),
                store: path.to_owned(),
            })
        }
        Err(e) => return Err(e),
    };
    let keyer = LookupKeyer::new(&secret, &salt, params).map_err(StoreError::Argon2)?;
    if keyer.derive(SECRET_CHECK_PURPOSE).0.as_slice() != check.as_ref() {
        return Err(StoreError::SecretMismatch {
            secret: cfg.secret_file.clone(),
            store: path.to_owned(),
        });
    }
    if params != configured {
        tracing::info!(
            "codes.argon2 in the config differs from the parameters recorded when the store was \
             created; the recorded ones stay in use (memory_kib={}, iterations={}, parallelism={})",
            params.memory_kib,
            params.iterations,
            params.parallelism
        );
    }
    Ok(keyer)
}

fn create_new(
    db: &sled::Db,
    meta: &sled::Tree,
    cfg: &StoreConfig,
    path: &Path,
    params: Argon2Params,
) -> Result<LookupKeyer, StoreError> {
    let secret = create_secret(&cfg.secret_file)?;
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let keyer = LookupKeyer::new(&secret, &salt, params).map_err(StoreError::Argon2)?;
    let check = keyer.derive(SECRET_CHECK_PURPOSE);
    meta.insert("salt", &salt)?;
    meta.insert("argon2", json_bytes(&params))?;
    meta.insert("secret_check", &check.0)?;
    meta.insert("next_seq", &1u64.to_be_bytes())?;
    meta.insert(WRITTEN_AT, jiff::Timestamp::now().to_string().as_bytes())?;
    // `format` last: its presence says the site values are complete.
    meta.insert("format", FORMAT)?;
    db.flush()?;
    sync_tree(path, &mut Synced::default()).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        cause: source,
    })?;
    tracing::info!(path = %path.display(), "created a new store");
    Ok(keyer)
}

fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::SecretIo {
                path: path.to_owned(),
                cause: source,
            })
        }
    };
    let mut secret = Vec::new();
    file.read_to_end(&mut secret)
        .map_err(|source| StoreError::SecretIo {
            path: path.to_owned(),
            cause: source,
        })?;
    if secret.len() != SECRET_LEN {
        return Err(StoreError::SecretDamaged {
            path: path.to_owned(),
        });
    }
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the secret file is readable by other users; it should have mode 0600 (chmod 600)"
            );
        }
    }
    Ok(Some(secret))
}

fn create_secret(path: &Path) -> Result<Vec<u8>, StoreError> {
    let io_err = |source| StoreError::SecretIo {
        path: path.to_owned(),
        cause: source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut secret = vec![0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(&secret).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    sync_dir(dir).map_err(io_err)?;
    tracing::info!(path = %path.display(), "created the site secret (keep a backup of it)");
    Ok(secret)
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            cause: source,
        })
}

/// Whether [`make_private`] logs the paths it tightens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    /// Someone loosened them: say so.
    Loose,
    /// Just created under a permissive umask: nothing to tell.
    Silently,
}

/// Gives `path` (a file, or a directory and everything below it) owner-only modes, 0700 for
/// directories and 0600 for files: users, activity and lookup keys are nobody else's to read.
/// A path that is missing, a symbolic link, or already private is left alone.
fn make_private(path: &Path, report: Report) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_owned(),
        cause: source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    let private = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o7077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(private)).map_err(io_err)?;
        if report == Report::Loose {
            tracing::warn!(
                path = %path.display(),
                old_mode = format_args!("{mode:04o}"),
                new_mode = format_args!("{private:04o}"),
                "part of the store was open to other accounts; made it private to its owner"
            );
        }
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err)? {
            make_private(&entry.map_err(io_err)?.path(), report)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file: fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    stage_atomically(path, bytes)?.install()
}

/// A file written and fsync'd as `<path>.tmp`, not yet in place: [`Staged::install`] renames
/// it over `path` and fsyncs the directory; [`Staged::discard`] removes it. Dropped, it stays
/// where it is, ignored (the next staging of `path` truncates it).
#[derive(Debug)]
#[must_use = "a staged file replaces nothing until it is installed"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    pub fn install(self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }

    /// For a change that was not made: the file it would have put in place goes.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The first half of [`write_atomically`]: `<path>.tmp` written and fsync'd, private.
pub fn stage_atomically(path: &Path, bytes: &[u8]) -> io::Result<Staged> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // `mode` applies only to a new file: a leftover one keeps its own.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)?.sync_all()
}

/// fsyncs every regular file below `dir`, then the directories themselves, but what has not
/// changed since it was last fsync'd here.
fn sync_tree(dir: &Path, synced: &mut Synced) -> io::Result<()> {
    use std::os::unix::fs::DirEntryExt;
    let mut listing = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        listing.push((entry.file_name(), entry.ino()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path(), synced)?;
        } else if kind.is_file() {
            let path = entry.path();
            if !synced.files.contains_key(&path) {
                // sled creates its files as the umask says (a blob, `blobs/<n>`, comes
                // during a run): private before it is made durable.
                make_private(&path, Report::Silently).map_err(|e| match e {
                    StoreError::Io { cause, .. } => cause,
                    other => io::Error::other(other.to_string()),
                })?;
            }
            let file = match fs::File::open(&path) {
                Ok(file) => file,
                // Removed since it was listed (an old blob): nothing of it to make durable,
                // and the directory's changed entries are fsync'd below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let stamp = Stamp::of(&file.metadata()?);
            // sled rewrites only `db`, in place, and a write to it can leave its times alike
            // (times of 1 or 2 s on some file systems, a clock set back): always fsync'd. The
            // other files (`conf`, `snap.*`, `blobs/*`) are written once and never reopened.
            let rewritten = path.file_name() == Some(std::ffi::OsStr::new("db"));
            if rewritten || !synced.file_unchanged(&path, &stamp) {
                let at = std::time::SystemTime::now();
                file.sync_all()?;
                synced.files.insert(path, (stamp, at));
            }
        }
    }
    listing.sort_unstable();
    if synced.dirs.get(dir) != Some(&listing) {
        sync_dir(dir)?;
        synced.dirs.insert(dir.to_owned(), listing);
    }
    Ok(())
}

/// What was fsync'd, to skip it while it stays the same: each fsync of an unchanged file is
/// still a round trip to the file system (about 70 µs here, five of them in every commit),
/// and sled rewrites only its log, `db`, between its snapshots.
#[derive(Debug, Default)]
struct Synced {
    /// A file's stamp when it was fsync'd, and when.
    files: std::collections::HashMap<PathBuf, (Stamp, std::time::SystemTime)>,
    /// A directory's entries (name, inode) when it was fsync'd: the same names for the same
    /// inodes leave nothing new to make durable (a rename over a name changes its inode).
    dirs: std::collections::HashMap<PathBuf, Vec<(std::ffi::OsString, u64)>>,
}

impl Synced {
    /// Whether `path` is the file it was when fsync'd here, unwritten since. A file's times
    /// are coarse (a write in the same tick as the one before may leave them alike), so a
    /// file written less than a second before that fsync is never taken as unchanged: any
    /// write after it moves the time on.
    fn file_unchanged(&self, path: &Path, stamp: &Stamp) -> bool {
        let Some((was, at)) = self.files.get(path) else {
            return false;
        };
        let settled = stamp
            .modified
            .and_then(|m| m.checked_add(std::time::Duration::from_secs(1)))
            .is_some_and(|m| m <= *at);
        was == stamp && settled
    }
}

/// What tells a file's content changed: inode, length, modification and change times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// `meta` `written_at`; an unreadable one is said and ignored (it only guards the clock).
fn read_written_at(meta: &sled::Tree) -> Result<Option<jiff::Timestamp>, StoreError> {
    let Some(bytes) = meta.get(WRITTEN_AT)? else {
        return Ok(None);
    };
    let written = parse_time(&bytes);
    if written.is_none() {
        tracing::warn!("the store's time of its last write is unreadable; it is written again with the next change");
    }
    Ok(written)
}

fn parse_time(bytes: &[u8]) -> Option<jiff::Timestamp> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The outcome of a transaction that never aborts: only sled itself can fail it.
fn storage_only<T>(result: Result<T, TransactionError<()>>) -> Result<T, StoreError> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Storage(e)) => Err(e.into()),
        Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
    }
}

/// A big-endian u64 of exactly eight bytes.
fn exact_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn read_u64(bytes: &[u8]) -> u64 {
    exact_u64(bytes).unwrap_or(u64::MAX / 2)
}

/// Store values hold only strings, numbers and timestamps: serialising them cannot fail.
fn json_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_stayed_the_same_since_its_fsync_is_skipped() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let written_long_ago = |path: &Path, text: &str| {
            fs::write(path, text).unwrap();
            let ten_s_ago = SystemTime::now() - Duration::from_secs(10);
            let file = fs::File::options().write(true).open(path).unwrap();
            file.set_modified(ten_s_ago).unwrap();
        };
        let conf = dir.path().join("conf");
        written_long_ago(&conf, "written once");
        // sled's log, rewritten in place: its times prove nothing (on a file system with
        // times of whole seconds, a commit went without its fsync).
        let db = dir.path().join("db");
        written_long_ago(&db, "sled's log");
        let fresh = dir.path().join("snap.1");
        fs::write(&fresh, "written just now").unwrap();
        let stamp = |path: &Path| Stamp::of(&fs::metadata(path).unwrap());
        let mut synced = Synced::default();
        assert!(
            !synced.file_unchanged(&conf, &stamp(&conf)),
            "never fsync'd"
        );
        sync_tree(dir.path(), &mut synced).unwrap();
        assert!(synced.file_unchanged(&conf, &stamp(&conf)));
        // Written less than a second before its fsync: its times may not show the next write.
        assert!(!synced.file_unchanged(&fresh, &stamp(&fresh)));
        let fsynced_at = |synced: &Synced, path: &Path| synced.files.get(path).unwrap().1;
        let (db_first, conf_first) = (fsynced_at(&synced, &db), fsynced_at(&synced, &conf));
        std::thread::sleep(Duration::from_millis(5));
        sync_tree(dir.path(), &mut synced).unwrap();
        assert!(
            fsynced_at(&synced, &db) > db_first,
            "db was not fsync'd again"
        );
        assert_eq!(
            fsynced_at(&synced, &conf),
            conf_first,
            "conf was fsync'd again"
        );
        // Written again, even to the same length with its old time put back.
        fs::write(&conf, "written twice").unwrap();
        assert!(!synced.file_unchanged(&conf, &stamp(&conf)));
        // A directory: the same entries are skipped, a new or replaced one is not.
        let listing = synced.dirs.get(dir.path()).cloned().unwrap();
        assert_eq!(listing.len(), 3);
        fs::write(dir.path().join("snap.2.generating"), "x").unwrap();
        fs::rename(dir.path().join("snap.2.generating"), &conf).unwrap();
        sync_tree(dir.path(), &mut synced).unwrap();
        let replaced = synced.dirs.get(dir.path()).cloned().unwrap();
        assert_eq!(replaced.len(), 3);
        assert_ne!(replaced, listing, "a rename over a name is a change");
    }

    #[test]
    fn a_staged_file_replaces_the_old_one_only_once_installed_and_a_discarded_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.alarm.json");
        write_atomically(&path, b"old").unwrap();
        let staged = stage_atomically(&path, b"new").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"old",
            "replaced before it was installed"
        );
        staged.install().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        stage_atomically(&path, b"refused").unwrap().discard();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the discarded file stayed");
    }

    #[test]
    fn a_file_sled_creates_during_a_run_is_made_private_before_it_is_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blobs").join("149316805");
        fs::create_dir(dir.path().join("blobs")).unwrap();
        fs::write(&blob, "a large value").unwrap();
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        sync_tree(dir.path(), &mut Synced::default()).unwrap();
        let mode = fs::metadata(&blob).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_holder_of_the_lock_is_read_from_proc_locks() {
        // dev 0xfe00 is major 0xfe, minor 0: `fe:00`.
        let locks = "1: POSIX  ADVISORY  WRITE 111 fe:00:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 222 fe:00:41 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 333 fe:00:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 444 fe:00:42 0 EOF\n";
        assert_eq!(locks_holder(locks, 0xfe00, 42), Some(444));
        assert_eq!(locks_holder(locks, 0xfe01, 42), None);
        assert_eq!(locks_holder(locks, 0xfe00, 7), None);
    }

    #[test]
    fn a_busy_store_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(dir.path());
        let cfg = StoreConfig {
            path: dir.path().join("db"),
            secret_file: dir.path().join("secret"),
            cache_mb: 1,
        };
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        // sled's flock is per open file: a second open in this process conflicts too.
        let Err(err) = Store::open_with(&cfg, params, 100, Create::Refused) else {
            panic!("a held store was opened twice");
        };
        let pid = std::process::id();
        assert!(
            matches!(err, StoreError::Busy { holder: Some(p), .. } if p == pid),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("(pid {pid}")), "{text}");
    }

    fn open(dir: &Path) -> Store {
        let cfg = StoreConfig {
            path: dir.join("db"),
            secret_file: dir.join("secret"),
            cache_mb: 1,
        };
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        Store::open_with(&cfg, params, 100, Create::Allowed).unwrap()
    }

    fn apply(store: &Store, id: &str) {
        store
            .commit(Change {
                applied: Some((id.to_owned(), serde_json::json!({"result": {"id": id}}))),
                ..Change::default()
            })
            .unwrap();
    }

    #[test]
    fn with_a_bound_of_five_old_ids_are_forgotten_and_recent_ones_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.set_max_applied(5).unwrap();
        for i in 0..8 {
            apply(&store, &format!("c{i}"));
        }
        for i in 0..3 {
            assert_eq!(store.applied(&format!("c{i}")).unwrap(), None, "c{i}");
        }
        for i in 3..8 {
            let id = format!("c{i}");
            let stored = store.applied(&id).unwrap().expect("a recent id replays");
            assert_eq!(stored["result"]["id"], id.as_str());
        }
        assert_eq!((store.applied.len(), store.applied_order.len()), (5, 5));
        // Re-applying a remembered id keeps its place; a forgotten one is applied as new.
        apply(&store, "c7");
        apply(&store, "c0");
        assert!(store.applied("c3").unwrap().is_none());
        assert!(store.applied("c0").unwrap().is_some());
        assert_eq!(store.applied.len(), 5);

        // Ids from before the bound (no place in the order, no `applied_next`) go first.
        store.applied.insert("legacy", &b"{}"[..]).unwrap();
        store.meta.remove(APPLIED_NEXT).unwrap();
        store.set_max_applied(5).unwrap();
        assert!(store.applied("legacy").unwrap().is_none());
        let kept: Vec<String> = ["c4", "c5", "c6", "c7", "c0"]
            .into_iter()
            .filter(|id| store.applied(id).unwrap().is_some())
            .map(str::to_owned)
            .collect();
        assert_eq!(kept.len(), 5, "{kept:?}");
        apply(&store, "c8");
        assert!(
            store.applied("c4").unwrap().is_none(),
            "the oldest placed id went next"
        );
        assert_eq!((store.applied.len(), store.applied_order.len()), (5, 5));
    }

    #[test]
    fn a_lowered_bound_forgets_the_oldest_ids_counted_from_their_places() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for i in 0..8 {
            apply(&store, &format!("c{i}"));
        }
        // An interrupted trim of an earlier version: c0 forgotten, its place left behind.
        store.applied.remove("c0").unwrap();
        store.set_max_applied(5).unwrap();
        let kept: Vec<bool> = (0..8)
            .map(|i| store.applied(&format!("c{i}")).unwrap().is_some())
            .collect();
        assert_eq!(kept, [false, false, false, true, true, true, true, true]);
        assert_eq!((store.applied.len(), store.applied_order.len()), (5, 5));
        drop(store);
        // Reopened at the usual bound, nothing more is forgotten.
        let store = open(dir.path());
        assert!(store.applied("c3").unwrap().is_some());
        assert_eq!(store.applied.len(), 5);
    }

    #[test]
    fn a_place_left_by_an_interrupted_trim_does_not_take_its_id_along_when_it_is_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for i in 0..8 {
            apply(&store, &format!("c{i}"));
        }
        // An earlier version's trim, cut after forgetting c0 and before its place.
        store.applied.remove("c0").unwrap();
        store.set_max_applied(8).unwrap();
        apply(&store, "c0");
        assert!(store.applied("c0").unwrap().is_some(), "c0 replays");
        assert_eq!((store.applied.len(), store.applied_order.len()), (8, 8));
    }

    #[test]
    fn an_unreadable_count_of_applied_ids_forgets_none_of_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..5 {
            apply(&store, &format!("c{i}"));
        }
        store.meta.insert(APPLIED_NEXT, "xyz").unwrap();
        store.make_durable().unwrap();
        drop(store);
        let store = open(dir.path());
        for i in 0..5 {
            assert!(store.applied(&format!("c{i}")).unwrap().is_some(), "c{i}");
        }
        apply(&store, "c5");
        assert_eq!((store.applied.len(), store.applied_order.len()), (6, 6));
    }

    #[test]
    fn every_commit_records_when_it_was_made_and_the_time_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let created = store
            .last_write()
            .expect("a new store knows when it was made");
        assert!(created <= jiff::Timestamp::now());
        apply(&store, "c1");
        let first = store.last_write().unwrap();
        assert!(first >= created && first <= jiff::Timestamp::now());
        // The daemon's clock ahead of the system's (the system clock is behind the last write).
        let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        store.vouch(ahead);
        apply(&store, "c2");
        assert_eq!(store.last_write(), Some(ahead));
        drop(store);
        // Reopened, the store still knows; a later commit by a clock behind it keeps it.
        let store = open(dir.path());
        assert_eq!(store.last_write(), Some(ahead));
        apply(&store, "c3");
        assert_eq!(store.last_write(), Some(ahead));
        assert_eq!(
            store.meta(WRITTEN_AT).unwrap(),
            Some(ahead.to_string().into_bytes()),
            "the same value is on disk"
        );
    }

    #[test]
    fn an_over_full_applied_tree_is_trimmed_to_the_newest_ten_thousand_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // As a store kept them before the bound: no order, so the ids count in key order.
        for i in 0..10_005 {
            store
                .applied
                .insert(format!("old-{i:05}"), &br#"{"result":{}}"#[..])
                .unwrap();
        }
        store.make_durable().unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.applied.len(), 10_000);
        assert!(store.applied("old-00004").unwrap().is_none());
        assert!(store.applied("old-00005").unwrap().is_some());
        apply(&store, "new");
        assert_eq!(store.applied.len(), 10_000);
        assert!(store.applied("new").unwrap().is_some());
        assert!(
            store.applied("old-00005").unwrap().is_none(),
            "the oldest went"
        );
    }

    #[test]
    fn a_user_is_found_by_name_whatever_its_case_and_a_name_is_taken_but_by_the_one_excepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let now: jiff::Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let change = Change {
            put_users: vec![
                User::new("u_00000a".into(), "Alice".into(), Role::Master, now),
                User::new("u_00000b".into(), "Émile".into(), Role::User, now),
            ],
            ..Change::default()
        };
        store.commit(change).unwrap();
        assert_eq!(
            store.named("émile", None).unwrap().as_deref(),
            Some("u_00000b")
        );
        assert_eq!(store.named("ÉMILE", Some("u_00000b")).unwrap(), None);
        assert_eq!(store.named("Bob", None).unwrap(), None);
        assert_eq!(store.find_user(" alice ").unwrap().unwrap().id, "u_00000a");
        assert_eq!(store.find_user("u_00000b").unwrap().unwrap().name, "Émile");
        assert!(store.find_user("bob").unwrap().is_none());
    }

    #[test]
    fn each_user_comes_one_at_a_time_in_the_order_of_the_users_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let at = |t: &str| -> jiff::Timestamp { t.parse().unwrap() };
        let change = Change {
            put_users: vec![
                User::new(
                    "u_00000c".into(),
                    "Carol".into(),
                    Role::User,
                    at("2026-12-01T10:00:00Z"),
                ),
                User::new(
                    "u_00000a".into(),
                    "Alice".into(),
                    Role::Master,
                    at("2026-12-01T11:00:00Z"),
                ),
                User::new(
                    "u_00000b".into(),
                    "Bob".into(),
                    Role::User,
                    at("2026-12-01T10:00:00Z"),
                ),
            ],
            ..Change::default()
        };
        store.commit(change).unwrap();
        let mut seen = Vec::new();
        assert_eq!(store.each_user(|u| seen.push(u.clone())).unwrap(), 3);
        assert_eq!(seen, store.users().unwrap());
        let names: Vec<_> = seen.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["Bob", "Carol", "Alice"]);
    }

    #[test]
    fn the_census_counts_the_users_and_sees_the_master() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(store.census().unwrap(), (0, false));
        let now: jiff::Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let bob = User::new("u_00000b".into(), "Bob".into(), Role::User, now);
        store
            .commit(Change {
                put_users: vec![bob],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.census().unwrap(), (1, false));
        let alice = User::new("u_00000a".into(), "Alice".into(), Role::Master, now);
        store
            .commit(Change {
                put_users: vec![alice],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.census().unwrap(), (2, true));
    }
}
