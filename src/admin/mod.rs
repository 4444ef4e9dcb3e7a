//! Code-management commands on `B/config/set` (DESIGN.md 6): parse, authorise, apply, result.
//!
//! [`parse`] reads a payload whole into a [`Request`] carrying a typed [`AdminCommand`]: every
//! field is read and checked and unknown ones are refused before any store read or Argon2
//! computation; a refusal is a [`CommandError`] whose kind is one of DESIGN.md 6. [`apply`]
//! decides a command against the users (the [`Users`] trait: the store, or a fake in the tests)
//! and returns the [`Change`] to commit plus the result to publish once the change is durable;
//! it never writes. Who may do what lives here alone: [`gate`] and [`authorise`] (the daemon
//! checks `auth` between them, one Argon2id computation under the `admin` source's lockout),
//! the bootstrap rule, `admin.trust_broker`, and who may manage whom. The CLI's `init` and
//! `reset-master` go through the same rules as [`Authority::Local`].
//! No result, message or event ever holds a code. [`flow`] carries one command through these
//! steps in the order that keeps them safe.

use jiff::Timestamp;
use serde_json::{json, Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::codes::{wipe_json, Code, LookupKey, LookupKeyer, WipedJson};
use crate::events::{Event, EventType, Source};
use crate::keypad::TypedCode;
use crate::store::{code_entry, Change, Store, StoreError};
use crate::users::{names_equal, Credential, DenyReason, Role, Tag, Use, User, Window, MAX_TAGS};

#[cfg(test)]
mod fake;
pub mod flow;

/// Commands larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The error kinds of DESIGN.md 6, one variant each; the text is the plain-words message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnknownCommand(String),
    #[error("{0}")]
    MissingField(String),
    #[error("{0}")]
    InvalidField(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    LockedOut(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    DuplicateName(String),
    #[error("{0}")]
    DuplicateCode(String),
    #[error("{0}")]
    InvalidCodeFormat(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
    /// The store failed: the result says only that; the cause is for the log.
    #[error("the store could not complete the command; see the daemon's log")]
    Store(#[source] StoreFailure),
}

/// A [`StoreError`] a [`CommandError`] can carry (and compare, for the tests).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailure(std::sync::Arc<StoreError>);

impl PartialEq for StoreFailure {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StoreFailure {}

impl CommandError {
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::InvalidJson(_) => "invalid_json",
            CommandError::PayloadTooLarge(_) => "payload_too_large",
            CommandError::UnknownCommand(_) => "unknown_command",
            CommandError::MissingField(_) => "missing_field",
            CommandError::InvalidField(_) => "invalid_field",
            CommandError::Unauthorized(_) => "unauthorized",
            CommandError::LockedOut(_) => "locked_out",
            CommandError::NotFound(_) => "not_found",
            CommandError::DuplicateName(_) => "duplicate_name",
            CommandError::DuplicateCode(_) => "duplicate_code",
            CommandError::InvalidCodeFormat(_) => "invalid_code_format",
            CommandError::Forbidden(_) => "forbidden",
            CommandError::Internal(_) | CommandError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Store(StoreFailure(std::sync::Arc::new(e)))
    }
}

/// A command, read whole: every field present and well-formed, no unknown one. A code in it
/// has passed the format rules; its lookup key is computed only when the command is applied.
#[derive(Clone)]
pub enum AdminCommand {
    AddUser {
        name: String,
        role: Role,
        code: Option<Code>,
        rules: Rules,
    },
    UpdateUser {
        user: String,
        name: Option<String>,
        role: Option<Role>,
        rules: Rules,
    },
    SetCode {
        user: String,
        code: Code,
    },
    SetDuressCode {
        user: String,
        code: Code,
    },
    ClearCode {
        user: String,
    },
    ClearDuressCode {
        user: String,
    },
    DeactivateUser {
        user: String,
    },
    ReactivateUser {
        user: String,
    },
    DeleteUser {
        user: String,
    },
    ListUsers,
    Activity {
        limit: usize,
        before: Option<u64>,
        user: Option<String>,
    },
    /// DESIGN 10b: a tag's value, normalised and checked like a code.
    AddTag {
        user: String,
        tag: Code,
        label: Option<String>,
    },
    RemoveTag {
        user: String,
        /// The tag's id (`t_…`), never its value.
        tag: String,
    },
    LearnTag {
        user: String,
        /// A keypad's `name`; `None` = any keypad.
        keypad: Option<String>,
        within_s: u64,
    },
}

/// `learn_tag`'s window: 60 s unless given, at most 300 (DESIGN 10b).
pub const LEARN_DEFAULT_S: u64 = 60;
pub const LEARN_MAX_S: u64 = 300;

impl AdminCommand {
    /// Its name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::AddUser { .. } => "add_user",
            AdminCommand::UpdateUser { .. } => "update_user",
            AdminCommand::SetCode { .. } => "set_code",
            AdminCommand::ClearCode { .. } => "clear_code",
            AdminCommand::SetDuressCode { .. } => "set_duress_code",
            AdminCommand::ClearDuressCode { .. } => "clear_duress_code",
            AdminCommand::DeactivateUser { .. } => "deactivate_user",
            AdminCommand::ReactivateUser { .. } => "reactivate_user",
            AdminCommand::DeleteUser { .. } => "delete_user",
            AdminCommand::ListUsers => "list_users",
            AdminCommand::Activity { .. } => "activity",
            AdminCommand::AddTag { .. } => "add_tag",
            AdminCommand::RemoveTag { .. } => "remove_tag",
            AdminCommand::LearnTag { .. } => "learn_tag",
        }
    }

    /// The bootstrap rule's command: `add_user` with role master.
    pub fn is_master_bootstrap(&self) -> bool {
        matches!(
            self,
            AdminCommand::AddUser {
                role: Role::Master,
                ..
            }
        )
    }

    /// Reads the fields of the command called `name`, in the order their errors are reported.
    fn read(name: &str, f: &mut Fields<'_>, min: usize, max: usize) -> Result<Self, CommandError> {
        let command = match name {
            "add_user" => AdminCommand::AddUser {
                name: f.name("name")?.ok_or_else(|| missing(name, "name"))?,
                role: f.role("role")?.unwrap_or(Role::User),
                code: f.code("code", min, max)?,
                rules: f.rules()?,
            },
            "update_user" => {
                let user = f.target()?;
                let (new_name, role, rules) = (f.name("name")?, f.role("role")?, f.rules()?);
                if new_name.is_none() && role.is_none() && !rules.any_given() {
                    return Err(CommandError::MissingField(
                        "update_user needs at least one of name, role, notify, valid_from, \
                         valid_until, schedule, max_uses"
                            .into(),
                    ));
                }
                AdminCommand::UpdateUser {
                    user,
                    name: new_name,
                    role,
                    rules,
                }
            }
            "set_code" => AdminCommand::SetCode {
                user: f.target()?,
                code: f
                    .code("code", min, max)?
                    .ok_or_else(|| missing(name, "code"))?,
            },
            "set_duress_code" => AdminCommand::SetDuressCode {
                user: f.target()?,
                code: f
                    .code("code", min, max)?
                    .ok_or_else(|| missing(name, "code"))?,
            },
            "clear_code" => AdminCommand::ClearCode { user: f.target()? },
            "clear_duress_code" => AdminCommand::ClearDuressCode { user: f.target()? },
            "deactivate_user" => AdminCommand::DeactivateUser { user: f.target()? },
            "reactivate_user" => AdminCommand::ReactivateUser { user: f.target()? },
            "delete_user" => AdminCommand::DeleteUser { user: f.target()? },
            "list_users" => AdminCommand::ListUsers,
            "activity" => {
                let limit = f.positive("limit")?.flatten().unwrap_or(50);
                if limit > 1000 {
                    return Err(CommandError::InvalidField("`limit` is at most 1000".into()));
                }
                AdminCommand::Activity {
                    limit: limit as usize,
                    before: f.positive("before")?.flatten(),
                    user: f.string("user")?.flatten(),
                }
            }
            "add_tag" => AdminCommand::AddTag {
                user: f.target()?,
                tag: f.tag("tag")?.ok_or_else(|| missing(name, "tag"))?,
                label: f.string("label")?.flatten(),
            },
            "remove_tag" => AdminCommand::RemoveTag {
                user: f.target()?,
                tag: f
                    .string("tag")?
                    .flatten()
                    .ok_or_else(|| missing(name, "tag"))?,
            },
            "learn_tag" => {
                let user = f.target()?;
                let keypad = f.string("keypad")?.flatten();
                let within_s = f.positive("within_s")?.flatten().unwrap_or(LEARN_DEFAULT_S);
                if within_s > LEARN_MAX_S {
                    return Err(CommandError::InvalidField(format!(
                        "`within_s` is at most {LEARN_MAX_S}"
                    )));
                }
                AdminCommand::LearnTag {
                    user,
                    keypad,
                    within_s,
                }
            }
            _ => return Err(CommandError::UnknownCommand("unknown command".into())),
        };
        f.finish()?;
        Ok(command)
    }

    /// Overwrites every string it holds: a code may be in any of them (fields swapped by
    /// mistake). Its codes wipe themselves.
    fn wipe(&mut self) {
        match self {
            AdminCommand::AddUser { name, rules, .. } => {
                name.zeroize();
                rules.wipe();
            }
            AdminCommand::UpdateUser {
                user, name, rules, ..
            } => {
                user.zeroize();
                name.zeroize();
                rules.wipe();
            }
            AdminCommand::SetCode { user, .. }
            | AdminCommand::SetDuressCode { user, .. }
            | AdminCommand::ClearCode { user }
            | AdminCommand::ClearDuressCode { user }
            | AdminCommand::DeactivateUser { user }
            | AdminCommand::ReactivateUser { user }
            | AdminCommand::DeleteUser { user } => user.zeroize(),
            AdminCommand::Activity { user, .. } => user.zeroize(),
            AdminCommand::ListUsers => {}
            AdminCommand::AddTag { user, label, .. } => {
                user.zeroize();
                label.zeroize();
            }
            AdminCommand::RemoveTag { user, tag } => {
                user.zeroize();
                tag.zeroize();
            }
            AdminCommand::LearnTag { user, keypad, .. } => {
                user.zeroize();
                keypad.zeroize();
            }
        }
    }
}

/// A command as received: its `id`, `auth` and the command, read whole.
/// `Debug` leaves out the fields and `auth`: they may hold codes.
#[derive(Clone)]
pub struct Request {
    pub id: String,
    pub auth: Option<TypedCode>,
    pub command: AdminCommand,
    /// The fields as received, but the secret ones: what identifies the command.
    fingerprinted: Map<String, Value>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("command", &self.command.name())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The bootstrap rule: while no master exists, `add_user` with role master needs no auth.
    pub fn is_master_bootstrap(&self) -> bool {
        self.command.is_master_bootstrap()
    }

    /// Whether the command gives someone a code: each answer to one says whether that code
    /// is free, so they are rationed ([`crate::panel::Panel::code_set`]).
    pub fn sets_code(&self) -> bool {
        matches!(
            self.command,
            AdminCommand::AddUser { code: Some(_), .. }
                | AdminCommand::SetCode { .. }
                | AdminCommand::SetDuressCode { .. }
                | AdminCommand::AddTag { .. }
                | AdminCommand::LearnTag { .. }
        )
    }

    /// What identifies the command for idempotency: its name and every field but the
    /// secret ones (`code`, `tag`; `auth` is already apart). Leaving them out is what keeps
    /// a replay from ever answering whether a guessed code is the one a command carried.
    pub fn fingerprint_input(&self) -> Zeroizing<Vec<u8>> {
        // serde_json's maps are sorted: the same command always gives the same bytes.
        let input = json!({"command": self.command.name(), "fields": self.fingerprinted});
        Zeroizing::new(serde_json::to_vec(&input).unwrap_or_default())
    }

    /// The `id` and `command` for a failure result.
    pub fn partial(&self) -> Partial {
        Partial {
            id: Some(self.id.clone()),
            command: Some(self.command.name().to_owned()),
        }
    }
}

/// Fields that hold a code or a tag: never part of a fingerprint.
const SECRET_FIELDS: [&str; 2] = ["code", "tag"];

/// A code may be in any field (one swapped by mistake): every string is overwritten.
impl Drop for Request {
    fn drop(&mut self) {
        self.fingerprinted.values_mut().for_each(wipe_json);
        self.command.wipe();
    }
}

/// What `id` and `command` a failed payload had, for its result.
#[derive(Debug, Default)]
pub struct Partial {
    pub id: Option<String>,
    pub command: Option<String>,
}

/// Reads a command whole: size, JSON, `id`, `command`, `auth`, then every field the command
/// takes (codes checked against the `min..=max` digits of `codes`), refusing any other.
/// Nothing here reads the store or computes a lookup key.
pub fn parse(
    payload: &[u8],
    min_length: usize,
    max_length: usize,
) -> Result<Request, (Partial, CommandError)> {
    let partial = Partial::default();
    if payload.len() > MAX_PAYLOAD {
        let msg = format!(
            "the command is {} bytes; the limit is {MAX_PAYLOAD} bytes",
            payload.len()
        );
        return Err((partial, CommandError::PayloadTooLarge(msg)));
    }
    let mut value = match WipedJson::parse(payload) {
        Ok(v) => v,
        Err(e) => {
            // Without serde's line and column: a position tells how long a code before it is.
            let msg = format!("the command is not valid UTF-8 JSON ({})", json_problem(&e));
            return Err((partial, CommandError::InvalidJson(msg)));
        }
    };
    let Value::Object(fields) = &mut value.0 else {
        let msg = "a command is one JSON object, like {\"id\": \"1\", \"command\": \"list_users\"}";
        return Err((partial, CommandError::InvalidJson(msg.into())));
    };
    let id = match fields.remove("id") {
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= 64 => id,
        Some(Value::String(_)) => {
            let msg = "`id` must be a non-empty string of at most 64 characters";
            return Err((partial, CommandError::InvalidField(msg.into())));
        }
        Some(_) => {
            let msg = "`id` must be a string";
            return Err((partial, CommandError::InvalidField(msg.into())));
        }
        None => {
            let msg = "every command needs an `id` (any string up to 64 characters)";
            return Err((partial, CommandError::MissingField(msg.into())));
        }
    };
    let partial = Partial {
        id: Some(id.clone()),
        command: None,
    };
    let name = match fields.remove("command") {
        Some(Value::String(c)) => c,
        Some(_) => {
            let msg = "`command` must be a string";
            return Err((partial, CommandError::InvalidField(msg.into())));
        }
        None => {
            let msg = "the command needs a `command` field";
            return Err((partial, CommandError::MissingField(msg.into())));
        }
    };
    // Only a known command's name is echoed: an unknown one may be anything, a code included.
    let Some(known) = COMMANDS.iter().find(|c| **c == name) else {
        let msg = format!("unknown command; the commands are {}", COMMANDS.join(", "));
        return Err((partial, CommandError::UnknownCommand(msg)));
    };
    let partial = Partial {
        id: Some(id.clone()),
        command: Some((*known).to_owned()),
    };
    let auth = match fields.remove("auth") {
        None | Some(Value::Null) => None,
        Some(Value::String(mut s)) => {
            let auth = TypedCode::from_text(&s);
            s.zeroize();
            auth
        }
        Some(mut other) => {
            wipe_json(&mut other);
            Some(TypedCode::NotText)
        }
    };
    let command = AdminCommand::read(
        known,
        &mut Fields::new(fields, known),
        min_length,
        max_length,
    )
    .map_err(|e| (partial, e))?;
    let mut fingerprinted = std::mem::take(fields);
    for secret in SECRET_FIELDS {
        if let Some(mut v) = fingerprinted.remove(secret) {
            wipe_json(&mut v);
        }
    }
    Ok(Request {
        id,
        auth,
        command,
        fingerprinted,
    })
}

const COMMANDS: [&str; 14] = [
    "add_user",
    "update_user",
    "set_code",
    "clear_code",
    "set_duress_code",
    "clear_duress_code",
    "deactivate_user",
    "reactivate_user",
    "delete_user",
    "list_users",
    "activity",
    "add_tag",
    "remove_tag",
    "learn_tag",
];

/// On whose authority a command runs.
#[derive(Debug, Clone)]
pub enum Authority {
    /// `auth` was the code of this master or admin.
    User(Box<User>),
    /// `admin.trust_broker` is on and no `auth` was given: the broker's ACL is the gate.
    Broker,
    /// No master exists yet and the command creates it.
    Bootstrap,
    /// The offline commands (`init`, `reset-master`): whoever may open the store.
    Local,
}

impl Authority {
    /// Whom a ration is counted for: the acting user, or the kind of authority.
    pub fn actor_key(&self) -> String {
        match self {
            Authority::User(user) => user.id.clone(),
            Authority::Broker => "broker".into(),
            Authority::Bootstrap => "bootstrap".into(),
            Authority::Local => "cli".into(),
        }
    }

    fn actor(&self) -> Option<&User> {
        match self {
            Authority::User(user) => Some(user),
            Authority::Broker | Authority::Bootstrap | Authority::Local => None,
        }
    }

    fn is_admin(&self) -> bool {
        matches!(self, Authority::User(u) if u.role == Role::Admin)
    }

    /// The source its events carry.
    fn source(&self) -> &'static Source {
        match self {
            Authority::Local => &Source::Cli,
            Authority::User(_) | Authority::Broker | Authority::Bootstrap => &Source::Admin,
        }
    }
}

/// The first look at who is asking, before any store read or Argon2 computation.
#[derive(Debug)]
pub enum Gate<'a> {
    Authorised(Authority),
    /// `auth` must be identified (one Argon2id), then given to [`authorise`].
    Identify(&'a TypedCode),
    Refused(CommandError),
}

/// Who may send a command without a code: with `admin.trust_broker` anyone the broker lets
/// publish; while no master exists, the one who creates it (the bootstrap rule). Anyone else
/// is answered `unauthorized` at once, uncounted and without a lookup: nothing about an id or
/// its stored result reaches a sender who is not authorised.
pub fn gate<'a>(request: &'a Request, trust_broker: bool, has_master: bool) -> Gate<'a> {
    match &request.auth {
        Some(auth) => Gate::Identify(auth),
        None if trust_broker => Gate::Authorised(Authority::Broker),
        None if request.is_master_bootstrap() && !has_master => {
            Gate::Authorised(Authority::Bootstrap)
        }
        None => Gate::Refused(CommandError::Unauthorized(
            "`auth` is required: the code of the master or of an admin".into(),
        )),
    }
}

/// The user `auth` identified may manage users if their role and rules allow it now; `Err`
/// gives the reason to record (the attempt counts toward the `admin` lockout).
pub fn authorise(
    user: &User,
    now: Timestamp,
    tz: &jiff::tz::TimeZone,
) -> Result<Authority, DenyReason> {
    user.check(Use::Manage, now, tz)?;
    Ok(Authority::User(Box::new(user.clone())))
}

/// `auth` was not the code of an active master or admin.
pub fn not_authorised() -> CommandError {
    CommandError::Unauthorized("`auth` is not the code of an active master or admin".into())
}

/// The stored result of an already applied id, for an authorised sender. The fingerprint
/// leaves out every code field: comparing it can never tell whether a guessed code is the
/// one a command carried, so the same command with another code is replayed, not applied
/// (the result says `replayed`: a new code needs a new id).
pub fn replay(stored: &Value, fingerprint: &str) -> Result<Value, CommandError> {
    if stored["fingerprint"].as_str() != Some(fingerprint) {
        return Err(CommandError::InvalidField(
            "this id was already used for another command; use a new id".into(),
        ));
    }
    let mut result = stored["result"].clone();
    if let Value::Object(map) = &mut result {
        map.insert("replayed".into(), json!(true));
    }
    Ok(result)
}

/// What [`apply`] reads: the store, or an in-memory fake in the tests.
pub trait Users {
    /// By id, or else by name (case-insensitive).
    fn find_user(&self, id_or_name: &str) -> Result<Option<User>, StoreError>;
    /// Every user, oldest first.
    fn users(&self) -> Result<Vec<User>, StoreError>;
    /// Whether a user other than `except` (an id) has this name (case-insensitive).
    fn name_taken(&self, name: &str, except: Option<&str>) -> Result<bool, StoreError> {
        Ok(self
            .users()?
            .iter()
            .any(|u| names_equal(&u.name, name) && Some(u.id.as_str()) != except))
    }
    /// Who holds a lookup key, and as which secret.
    fn credential_by_key(&self, key: &LookupKey) -> Result<Option<(User, Credential)>, StoreError>;
    /// An id no user has.
    fn new_user_id(&self) -> Result<String, StoreError>;
    /// At most `limit` activity entries `keep` accepts, newest first, with `seq < before`.
    fn activity(
        &self,
        limit: usize,
        before: Option<u64>,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, StoreError>;

    fn master(&self) -> Result<Option<User>, StoreError> {
        Ok(self.users()?.into_iter().find(|u| u.role == Role::Master))
    }
}

impl Users for Store {
    fn find_user(&self, id_or_name: &str) -> Result<Option<User>, StoreError> {
        Store::find_user(self, id_or_name)
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        Store::users(self)
    }

    fn name_taken(&self, name: &str, except: Option<&str>) -> Result<bool, StoreError> {
        Ok(Store::named(self, name, except)?.is_some())
    }

    fn credential_by_key(&self, key: &LookupKey) -> Result<Option<(User, Credential)>, StoreError> {
        Store::credential_by_key(self, key)
    }

    fn new_user_id(&self) -> Result<String, StoreError> {
        Store::new_user_id(self)
    }

    fn activity(
        &self,
        limit: usize,
        before: Option<u64>,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        Store::activity(self, limit, before, keep)
    }
}

/// What a command is decided against: the users, the keyer for its new code, the clock.
pub struct Context<'a> {
    pub store: &'a dyn Users,
    pub keyer: &'a LookupKeyer,
    pub now: Timestamp,
    /// `auth` was a duress code: the `activity` it reads leaves `duress` events out, or the
    /// intruder would read there that the code they forced out was the duress one.
    pub under_duress: bool,
}

/// A decided command: the change to commit (none for a read-only command) and its result.
#[derive(Debug)]
pub struct Applied {
    pub change: Option<Change>,
    pub result: Value,
    /// A `learn_tag` to start in the panel.
    pub learn: Option<crate::panel::Learning>,
}

/// A decided command, before it becomes a result: the change and what the result reports.
#[derive(Debug)]
pub struct Decision {
    pub change: Option<Change>,
    pub report: Report,
    /// Accepted but probably not meant (DESIGN 10c), in plain words; never a code.
    pub warnings: Vec<String>,
    /// A `learn_tag` to start in the panel.
    pub learn: Option<crate::panel::Learning>,
}

/// What a success result carries besides `id`, `ok` and `command`.
#[derive(Debug)]
pub enum Report {
    /// The user the command changed, as a roster entry.
    User(Box<User>),
    Users(Vec<User>),
    Entries(Vec<Event>),
}

impl Report {
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        match self {
            Report::User(user) => body.insert("user".into(), json!(user.roster_entry())),
            Report::Users(users) => {
                let entries: Vec<_> = users.iter().map(User::roster_entry).collect();
                body.insert("users".into(), json!(entries))
            }
            Report::Entries(entries) => body.insert("entries".into(), json!(entries)),
        };
        body
    }
}

pub fn success(request: &Request, body: Map<String, Value>) -> Value {
    let mut result = Map::new();
    result.insert("id".into(), json!(request.id));
    result.insert("ok".into(), json!(true));
    result.insert("command".into(), json!(request.command.name()));
    result.extend(body);
    Value::Object(result)
}

pub fn failure(partial: &Partial, error: &CommandError) -> Value {
    json!({
        "id": partial.id,
        "ok": false,
        "command": partial.command,
        "error": {"kind": error.kind(), "message": error.to_string()},
    })
}

/// A result of `size` bytes that the broker would not take (its Maximum Packet Size, `max`),
/// made to fit. What only reads (`list_users`, `activity`) becomes a `result_too_large`
/// failure that says where the same facts are; a change was applied, so its result stays a
/// success, with a warning instead of the person's entry (which is on `B/config/users/<id>`).
pub fn fitted(result: &Value, size: usize, max: u32) -> Value {
    let command = result["command"].as_str().unwrap_or_default();
    let said = format!(
        "the result is {size} bytes, more than the MQTT broker takes in one message ({max} \
         bytes, its maximum packet size)"
    );
    if matches!(command, "list_users" | "activity") {
        let hint = match command {
            "list_users" => "read each person's entry on B/config/users/<id> instead",
            _ => "ask for fewer entries with `limit`",
        };
        return json!({
            "id": result["id"],
            "ok": false,
            "command": command,
            "error": {"kind": "result_too_large", "message": format!("{said}: {hint}")},
        });
    }
    let mut fitted = json!({"id": result["id"], "ok": result["ok"], "command": command});
    if result["ok"] == true {
        let warning = format!("{said}: the person's entry is on B/config/users/<id>");
        fitted["warnings"] = json!([warning]);
    } else {
        // A failure carries a short message of the bridge's own: only the kind is kept.
        let kind = result["error"]["kind"].clone();
        fitted["error"] = json!({"kind": kind, "message": said});
    }
    fitted
}

/// Decides `request` on `authority`'s behalf into its change and result. Blocking (reads the
/// store, may hash a new code).
pub fn apply(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
) -> Result<Applied, CommandError> {
    let decision = decide(ctx, &request.command, authority)?;
    let mut body = decision.report.body();
    if !decision.warnings.is_empty() {
        body.insert("warnings".into(), json!(decision.warnings));
    }
    if let Some(learning) = &decision.learn {
        body.insert(
            "learning".into(),
            json!({"keypad": learning.keypad, "until": learning.until}),
        );
    }
    Ok(Applied {
        change: decision.change,
        result: success(request, body),
        learn: decision.learn,
    })
}

/// Decides a command on `authority`'s behalf: who may manage whom, the master's protections,
/// unique names and codes. One Argon2id computation for a new code, after every rule that
/// needs none.
pub fn decide(
    ctx: &Context<'_>,
    command: &AdminCommand,
    authority: &Authority,
) -> Result<Decision, CommandError> {
    if matches!(authority, Authority::Bootstrap) && !command.is_master_bootstrap() {
        return Err(CommandError::Unauthorized(
            "only `add_user` with role master works without `auth` before a master exists".into(),
        ));
    }
    let d = Decider { ctx, authority };
    match command {
        AdminCommand::AddUser {
            name,
            role,
            code,
            rules,
        } => d.add_user(name, *role, code.as_ref(), rules),
        AdminCommand::UpdateUser {
            user,
            name,
            role,
            rules,
        } => d.update_user(user, name.as_deref(), *role, rules),
        AdminCommand::SetCode { user, code } => d.set_code(user, code),
        AdminCommand::SetDuressCode { user, code } => d.set_duress_code(user, code),
        AdminCommand::ClearCode { user } => d.simple(user, Simple::ClearCode),
        AdminCommand::ClearDuressCode { user } => d.simple(user, Simple::ClearDuress),
        AdminCommand::DeactivateUser { user } => d.simple(user, Simple::Deactivate),
        AdminCommand::ReactivateUser { user } => d.simple(user, Simple::Reactivate),
        AdminCommand::DeleteUser { user } => d.simple(user, Simple::Delete),
        AdminCommand::ListUsers => Ok(Decision {
            change: None,
            report: Report::Users(ctx.store.users()?),
            warnings: Vec::new(),
            learn: None,
        }),
        AdminCommand::Activity {
            limit,
            before,
            user,
        } => d.activity(*limit, *before, user.as_deref()),
        AdminCommand::AddTag { user, tag, label } => d.add_tag(user, tag, label.as_deref()),
        AdminCommand::RemoveTag { user, tag } => d.remove_tag(user, tag),
        AdminCommand::LearnTag {
            user,
            keypad,
            within_s,
        } => d.learn_tag(user, keypad.as_deref(), *within_s),
    }
}

/// Whether `authority` may add a user called `name` with `role` (with a code, or without):
/// the rules of `add_user` that need no code, which `init` asks before it reads one.
pub fn may_add_user(
    users: &dyn Users,
    authority: &Authority,
    name: &str,
    role: Role,
    with_code: bool,
) -> Result<(), CommandError> {
    if role == Role::Master {
        if users.master()?.is_some() {
            return Err(CommandError::Forbidden(
                "there is already a master; a site has exactly one".into(),
            ));
        }
        if authority.is_admin() {
            return Err(CommandError::Forbidden(
                "an admin cannot create a master".into(),
            ));
        }
        if !with_code {
            return Err(CommandError::MissingField(
                "the master needs a `code`: it is the main code".into(),
            ));
        }
    }
    check_name_free(users, name, None)
}

/// A name as `add_user`, `update_user` and `init --name` take it: trimmed, 1 to 64
/// characters, no control characters; `Err` says what is wrong.
pub fn user_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("cannot contain control characters");
    }
    Ok(name.to_owned())
}

/// What DESIGN 10c warns about in a user as a command leaves them, and in the code it gives
/// them: rules that make the code useless (a `valid_until` already past, a `valid_from` more
/// than a year ahead, a schedule that allows no time) and one of the commonest PINs. The words
/// never hold a code, nor the value of a field.
fn warnings(user: &User, code: Option<(&Code, Credential)>, now: Timestamp) -> Vec<String> {
    let mut warnings = Vec::new();
    // No rule binds the master.
    if user.role != Role::Master {
        if user.valid_until.is_some_and(|until| until <= now) {
            warnings.push(
                "valid_until is already past: the code will be refused at every keypad".to_owned(),
            );
        }
        let a_year = jiff::SignedDuration::from_hours(366 * 24);
        if user
            .valid_from
            .is_some_and(|from| from.duration_since(now) > a_year)
        {
            warnings.push(
                "valid_from is more than a year ahead: the code will be refused until then"
                    .to_owned(),
            );
        }
        if let Some(windows) = &user.schedule {
            if windows.is_empty() {
                warnings.push(
                    "the schedule has no window: the code will be refused at any time (null \
                     lifts the schedule)"
                        .to_owned(),
                );
            } else if windows.iter().any(|w| w.days.is_empty() || w.from == w.to) {
                warnings.push("a schedule window has zero length: it allows no time".to_owned());
            }
        }
    }
    if let Some((code, which)) = code {
        if code.is_common() {
            let what = match which {
                Credential::Code | Credential::Tag => "the code",
                Credential::Duress => "the duress code",
            };
            warnings.push(format!(
                "{what} is one of the commonest PINs, the first a guesser tries: choose another \
                 one"
            ));
        }
    }
    warnings
}

/// One command's decision: the context and on whose behalf.
struct Decider<'a> {
    ctx: &'a Context<'a>,
    authority: &'a Authority,
}

enum Simple {
    ClearCode,
    ClearDuress,
    Deactivate,
    Reactivate,
    Delete,
}

impl Decider<'_> {
    fn event(&self, t: EventType, user: &User) -> Event {
        Event::new(t, self.ctx.now)
            .source(self.authority.source())
            .about(user)
            .by(self.authority.actor())
    }

    /// The user named by `user` (id or name).
    fn target(&self, who: &str) -> Result<User, CommandError> {
        self.ctx
            .store
            .find_user(who)?
            .ok_or_else(|| CommandError::NotFound("no user has that id or name".into()))
    }

    /// An admin cannot touch the master.
    fn guard(&self, target: &User) -> Result<(), CommandError> {
        if self.authority.is_admin() && target.role == Role::Master {
            return Err(CommandError::Forbidden(
                "an admin cannot change the master; use the master's code as `auth`".into(),
            ));
        }
        Ok(())
    }

    /// Refuses a code that any person already has, as a code or a duress code, except
    /// `owner`'s own secret of the same kind (setting one's current code again is not a
    /// duplicate).
    fn free_key(
        &self,
        code: &Code,
        owner: Option<(&str, Credential)>,
    ) -> Result<LookupKey, CommandError> {
        let key = self.ctx.keyer.key(code);
        match self.ctx.store.credential_by_key(&key)? {
            Some((holder, which)) if Some((holder.id.as_str(), which)) != owner => {
                Err(CommandError::DuplicateCode(
                    "that code is already in use; choose another one".into(),
                ))
            }
            _ => Ok(key),
        }
    }

    /// A changed user; `code` is the code or duress code the command gives them, if any.
    fn changed(
        &self,
        user: User,
        change: Change,
        code: Option<(&Code, Credential)>,
    ) -> Result<Decision, CommandError> {
        let warnings = warnings(&user, code, self.ctx.now);
        Ok(Decision {
            change: Some(change),
            report: Report::User(Box::new(user)),
            warnings,
            learn: None,
        })
    }

    fn add_user(
        &self,
        name: &str,
        role: Role,
        code: Option<&Code>,
        rules: &Rules,
    ) -> Result<Decision, CommandError> {
        let (store, now) = (self.ctx.store, self.ctx.now);
        may_add_user(store, self.authority, name, role, code.is_some())?;
        let mut user = User::new(store.new_user_id()?, name.to_owned(), role, now);
        rules.apply_to(&mut user)?;
        let mut change = Change::default();
        change.events.push(self.event(EventType::UserAdded, &user));
        if let Some(code) = code {
            let key = self.free_key(code, None)?;
            user.code_key = Some(key.to_hex());
            change.put_codes.push((key, user.id.clone()));
            change.events.push(self.event(EventType::CodeSet, &user));
        }
        change.put_users.push(user.clone());
        self.changed(user, change, code.map(|c| (c, Credential::Code)))
    }

    fn update_user(
        &self,
        who: &str,
        name: Option<&str>,
        role: Option<Role>,
        rules: &Rules,
    ) -> Result<Decision, CommandError> {
        let mut user = self.target(who)?;
        self.guard(&user)?;
        if let Some(role) = role {
            if role == Role::Master && user.role != Role::Master {
                return Err(CommandError::Forbidden(
                    "there is already a master; a site has exactly one".into(),
                ));
            }
            if user.role == Role::Master && role != Role::Master {
                return Err(CommandError::Forbidden(
                    "the master keeps the master role; it can only be re-coded or renamed".into(),
                ));
            }
            user.role = role;
        }
        if let Some(name) = name {
            check_name_free(self.ctx.store, name, Some(&user.id))?;
            user.name = name.to_owned();
        }
        rules.apply_to(&mut user)?;
        user.updated_at = self.ctx.now;
        let mut change = Change::default();
        change
            .events
            .push(self.event(EventType::UserUpdated, &user));
        change.put_users.push(user.clone());
        self.changed(user, change, None)
    }

    fn set_code(&self, who: &str, code: &Code) -> Result<Decision, CommandError> {
        let mut user = self.target(who)?;
        self.guard(&user)?;
        let key = self.free_key(code, Some((&user.id, Credential::Code)))?;
        let mut change = Change::recode(&mut user, key, self.ctx.now);
        change.events.push(self.event(EventType::CodeSet, &user));
        self.changed(user, change, Some((code, Credential::Code)))
    }

    /// A person's duress code (DESIGN 10a): unique across every code and duress code.
    fn set_duress_code(&self, who: &str, code: &Code) -> Result<Decision, CommandError> {
        let mut user = self.target(who)?;
        self.guard(&user)?;
        if user.role == Role::Master {
            return Err(CommandError::Forbidden(
                "the master cannot have a duress code; give one to each other person".into(),
            ));
        }
        let key = self.free_key(code, Some((&user.id, Credential::Duress)))?;
        let mut change = Change::duress(&mut user, key, self.ctx.now);
        let mut set = self.event(EventType::CodeSet, &user);
        set.which = Some("duress".into());
        change.events.push(set);
        self.changed(user, change, Some((code, Credential::Duress)))
    }

    fn simple(&self, who: &str, what: Simple) -> Result<Decision, CommandError> {
        let mut user = self.target(who)?;
        self.guard(&user)?;
        if user.role == Role::Master {
            let msg = match what {
                Simple::ClearCode => {
                    "the master's code cannot be cleared, only replaced with set_code"
                }
                Simple::ClearDuress => "the master has no duress code",
                Simple::Deactivate => "the master cannot be deactivated",
                Simple::Delete => "the master cannot be deleted",
                Simple::Reactivate => "the master is always active",
            };
            return Err(CommandError::Forbidden(msg.into()));
        }
        let old_key = user.code_key.as_deref().and_then(LookupKey::from_hex);
        let old_duress = user.duress_key.as_deref().and_then(LookupKey::from_hex);
        let mut change = Change::default();
        let event_type = match what {
            Simple::ClearCode => {
                change.delete_codes.extend(old_key);
                user.code_key = None;
                EventType::CodeCleared
            }
            Simple::ClearDuress => {
                change.delete_codes.extend(old_duress);
                user.duress_key = None;
                EventType::CodeCleared
            }
            Simple::Deactivate => {
                user.active = false;
                EventType::UserDeactivated
            }
            Simple::Reactivate => {
                user.active = true;
                EventType::UserReactivated
            }
            Simple::Delete => {
                change.delete_codes.extend(old_key);
                change.delete_codes.extend(old_duress);
                change
                    .delete_codes
                    .extend(user.tags.iter().filter_map(|t| LookupKey::from_hex(&t.key)));
                change.delete_users.push(user.id.clone());
                EventType::UserDeleted
            }
        };
        user.updated_at = self.ctx.now;
        let mut done = self.event(event_type, &user);
        if matches!(what, Simple::ClearDuress) {
            done.which = Some("duress".into());
        }
        change.events.push(done);
        if !matches!(what, Simple::Delete) {
            change.put_users.push(user.clone());
        }
        Ok(Decision {
            change: Some(change),
            report: Report::User(Box::new(user)),
            warnings: Vec::new(),
            learn: None,
        })
    }

    /// A user with room for one more tag (DESIGN 10b: at most 8).
    fn tag_holder(&self, who: &str) -> Result<User, CommandError> {
        let user = self.target(who)?;
        self.guard(&user)?;
        if user.tags.len() >= MAX_TAGS {
            return Err(CommandError::InvalidField(format!(
                "a user has at most {MAX_TAGS} tags; remove one with remove_tag first"
            )));
        }
        Ok(user)
    }

    fn add_tag(
        &self,
        who: &str,
        tag: &Code,
        label: Option<&str>,
    ) -> Result<Decision, CommandError> {
        let mut user = self.tag_holder(who)?;
        let key = self.ctx.keyer.key(tag);
        if self.ctx.store.credential_by_key(&key)?.is_some() {
            return Err(CommandError::DuplicateCode(
                "that tag is already in use; a tag belongs to one person".into(),
            ));
        }
        let id = crate::panel::new_tag_id(&user);
        user.tags.push(Tag {
            id: id.clone(),
            label: label.map(str::to_owned),
            added_at: self.ctx.now,
            key: key.to_hex(),
        });
        user.updated_at = self.ctx.now;
        let mut change = Change::default();
        change
            .put_codes
            .push((key, code_entry(&user.id, Credential::Tag)));
        let mut added = self.event(EventType::TagAdded, &user);
        added.tag_id = Some(id);
        change.events.push(added);
        change.put_users.push(user.clone());
        self.changed(user, change, None)
    }

    fn remove_tag(&self, who: &str, tag_id: &str) -> Result<Decision, CommandError> {
        let mut user = self.target(who)?;
        self.guard(&user)?;
        let Some(at) = user.tags.iter().position(|t| t.id == tag_id) else {
            return Err(CommandError::NotFound(
                "that user has no tag with that id (see `tags` in list_users)".into(),
            ));
        };
        let tag = user.tags.remove(at);
        user.updated_at = self.ctx.now;
        let mut change = Change::default();
        change.delete_codes.extend(LookupKey::from_hex(&tag.key));
        let mut removed = self.event(EventType::TagRemoved, &user);
        removed.tag_id = Some(tag.id);
        change.events.push(removed);
        change.put_users.push(user.clone());
        self.changed(user, change, None)
    }

    /// Starts a learning: nothing is stored (a learning survives nothing).
    fn learn_tag(
        &self,
        who: &str,
        keypad: Option<&str>,
        within_s: u64,
    ) -> Result<Decision, CommandError> {
        let user = self.tag_holder(who)?;
        let secs = i64::try_from(within_s).unwrap_or(LEARN_MAX_S as i64);
        let until = self
            .ctx
            .now
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MAX);
        let learn = crate::panel::Learning {
            user_id: user.id.clone(),
            user: user.name.clone(),
            keypad: keypad.map(str::to_owned),
            until,
            by: self
                .authority
                .actor()
                .map(|a| (a.name.clone(), a.id.clone())),
        };
        Ok(Decision {
            change: None,
            report: Report::User(Box::new(user)),
            warnings: Vec::new(),
            learn: Some(learn),
        })
    }

    fn activity(
        &self,
        limit: usize,
        before: Option<u64>,
        user: Option<&str>,
    ) -> Result<Decision, CommandError> {
        let store = self.ctx.store;
        // A deleted user is no longer in the store: their history is found by id or by name.
        let found = match user {
            Some(u) => store.find_user(u)?,
            None => None,
        };
        let hide_duress = self.ctx.under_duress;
        let entries = store.activity(limit, before, &|e| {
            if hide_duress && e.event_type == EventType::Duress {
                return false;
            }
            match (user, &found) {
                (None, _) => true,
                (Some(_), Some(found)) => e.involves(&found.id),
                (Some(who), None) => {
                    e.involves(who)
                        || e.user.as_deref().is_some_and(|n| names_equal(n, who))
                        || e.by.as_deref().is_some_and(|n| names_equal(n, who))
                }
            }
        })?;
        Ok(Decision {
            change: None,
            report: Report::Entries(entries),
            warnings: Vec::new(),
            learn: None,
        })
    }
}

fn check_name_free(
    users: &dyn Users,
    name: &str,
    except: Option<&str>,
) -> Result<(), CommandError> {
    if users.name_taken(name, except)? {
        return Err(CommandError::DuplicateName(
            "another user already has that name (names are compared without case)".into(),
        ));
    }
    Ok(())
}

fn missing(command: &str, field: &str) -> CommandError {
    CommandError::MissingField(format!("{command} needs `{field}`"))
}

/// Validity-rule fields of add_user/update_user: outer None = not given, inner None = clear.
#[derive(Clone, Default)]
pub struct Rules {
    notify: Option<Option<String>>,
    valid_from: Option<Option<Timestamp>>,
    valid_until: Option<Option<Timestamp>>,
    schedule: Option<Option<Vec<Window>>>,
    max_uses: Option<Option<u64>>,
}

impl Rules {
    fn any_given(&self) -> bool {
        self.notify.is_some()
            || self.valid_from.is_some()
            || self.valid_until.is_some()
            || self.schedule.is_some()
            || self.max_uses.is_some()
    }

    /// Whether any validity rule (not `notify`) is given with a value.
    fn any_set(&self) -> bool {
        matches!(self.valid_from, Some(Some(_)))
            || matches!(self.valid_until, Some(Some(_)))
            || matches!(self.schedule, Some(Some(_)))
            || matches!(self.max_uses, Some(Some(_)))
    }

    fn apply_to(&self, user: &mut User) -> Result<(), CommandError> {
        if user.role == Role::Master && self.any_set() {
            return Err(CommandError::InvalidField(
                "the master's code cannot have validity rules".into(),
            ));
        }
        let mut next = user.clone();
        if let Some(v) = &self.notify {
            next.notify.clone_from(v);
        }
        if let Some(v) = self.valid_from {
            next.valid_from = v;
        }
        if let Some(v) = self.valid_until {
            next.valid_until = v;
        }
        if let Some(v) = &self.schedule {
            next.schedule.clone_from(v);
        }
        if let Some(v) = self.max_uses {
            next.max_uses = v;
        }
        if let (Some(from), Some(until)) = (next.valid_from, next.valid_until) {
            if from >= until {
                return Err(CommandError::InvalidField(
                    "`valid_from` must be before `valid_until`".into(),
                ));
            }
        }
        *user = next;
        Ok(())
    }

    fn wipe(&mut self) {
        if let Some(Some(notify)) = &mut self.notify {
            notify.zeroize();
        }
    }
}

/// Reads a command's fields, refusing unknown ones.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    command: &'a str,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, command: &'a str) -> Self {
        Fields {
            map,
            command,
            seen: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key)
    }

    /// `Some(None)` when the field is given as null.
    fn string(&mut self, key: &'static str) -> Result<Option<Option<String>>, CommandError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(invalid(key, "must be a string")),
        }
    }

    fn name(&mut self, key: &'static str) -> Result<Option<String>, CommandError> {
        match self.string(key)? {
            None => Ok(None),
            Some(None) => Err(invalid(key, "cannot be null")),
            Some(Some(mut raw)) => {
                let name = user_name(&raw).map_err(|what| invalid(key, what));
                raw.zeroize();
                name.map(Some)
            }
        }
    }

    fn role(&mut self, key: &'static str) -> Result<Option<Role>, CommandError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|_| invalid(key, "must be one of master, admin, user, arm_only, duress")),
        }
    }

    fn positive(&mut self, key: &'static str) -> Result<Option<Option<u64>>, CommandError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(Some(n))),
                _ => Err(invalid(key, "must be a whole number of at least 1")),
            },
        }
    }

    fn timestamp(&mut self, key: &'static str) -> Result<Option<Option<Timestamp>>, CommandError> {
        match self.string(key) {
            Err(_) => Err(invalid(
                key,
                "must be an RFC 3339 time like \"2026-12-31T18:00:00Z\"",
            )),
            Ok(None) => Ok(None),
            Ok(Some(None)) => Ok(Some(None)),
            Ok(Some(Some(s))) => s.parse::<Timestamp>().map(|t| Some(Some(t))).map_err(|_| {
                invalid(
                    key,
                    "must be an RFC 3339 time with an offset, like \"2026-12-31T18:00:00Z\"",
                )
            }),
        }
    }

    fn rules(&mut self) -> Result<Rules, CommandError> {
        let notify = match self.string("notify")? {
            Some(Some(s)) if s.chars().count() > 255 => {
                return Err(invalid("notify", "is at most 255 characters"))
            }
            Some(Some(s)) if s.trim().is_empty() => Some(None),
            other => other,
        };
        let schedule = match self.get("schedule") {
            None => None,
            Some(Value::Null) => Some(None),
            // serde's message quotes the value it refused: only plain words go back.
            Some(v) => Some(Some(
                serde_json::from_value::<Vec<Window>>(v.clone()).map_err(|_| {
                    invalid(
                        "schedule",
                        "is not a list of weekly windows like [{\"days\": [\"mon\", \"tue\"], \
                         \"from\": \"08:00\", \"to\": \"18:00\"}] (days: mon..sun; times: HH:MM)",
                    )
                })?,
            )),
        };
        Ok(Rules {
            notify,
            valid_from: self.timestamp("valid_from")?,
            valid_until: self.timestamp("valid_until")?,
            schedule,
            max_uses: self.positive("max_uses")?,
        })
    }

    /// Format-checks a code field (`min..=max` digits); its lookup key comes later.
    fn code(
        &mut self,
        key: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<Code>, CommandError> {
        let raw =
            match self.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) => s,
                Some(Value::Number(_)) => return Err(CommandError::InvalidCodeFormat(
                    "a code must be a JSON string such as \"0042\" (a number loses leading zeros)"
                        .into(),
                )),
                Some(_) => {
                    return Err(CommandError::InvalidCodeFormat(
                        "a code must be a JSON string of digits".into(),
                    ))
                }
            };
        Code::parse(raw, min, max)
            .map(Some)
            .map_err(|e| CommandError::InvalidCodeFormat(e.to_string()))
    }

    /// Format-checks a tag field (DESIGN 10b); its lookup key comes later.
    fn tag(&mut self, key: &'static str) -> Result<Option<Code>, CommandError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Code::tag(s)
                .map(Some)
                .map_err(|e| CommandError::InvalidCodeFormat(e.to_string())),
            Some(_) => Err(CommandError::InvalidCodeFormat(
                "a tag must be a JSON string such as \"74-10-37-94\" or \"+3DD5FCFF\"".into(),
            )),
        }
    }

    /// The `user` field naming the command's target (by id or by name).
    fn target(&mut self) -> Result<String, CommandError> {
        match self.string("user")? {
            Some(Some(who)) => Ok(who),
            Some(None) | None => Err(missing(self.command, "user")),
        }
    }

    /// Refuses fields this command does not take (a typo must not go unnoticed).
    fn finish(&self) -> Result<(), CommandError> {
        if let Some(unknown) = self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            let allowed = if self.seen.is_empty() {
                "none".to_owned()
            } else {
                self.seen.join(", ")
            };
            // Nothing of the sender's is echoed (a key may be a value put in the wrong place,
            // a code or a tag included): only a field name of our own, the closest one for a
            // typo such as `nmae`.
            let closest = self
                .seen
                .iter()
                .map(|f| (strsim::osa_distance(f, unknown), *f))
                .filter(|(d, _)| *d <= 2)
                .min();
            let named = match (FIELD_NAMES.iter().find(|f| **f == unknown), closest) {
                (Some(ours), _) => format!("a field named `{ours}`"),
                (None, Some((_, f))) => format!("an unknown field (did you mean `{f}`?)"),
                (None, None) => "an unknown field".to_owned(),
            };
            return Err(CommandError::InvalidField(format!(
                "{} does not take {named} (it takes: {allowed})",
                self.command
            )));
        }
        Ok(())
    }
}

/// Every field name some command takes: naming one of these echoes nothing of the sender's.
const FIELD_NAMES: [&str; 15] = [
    "name",
    "role",
    "code",
    "notify",
    "valid_from",
    "valid_until",
    "schedule",
    "max_uses",
    "user",
    "limit",
    "before",
    "tag",
    "label",
    "keypad",
    "within_s",
];

/// What is wrong with a payload that is not JSON, in words that quote nothing and give no
/// position.
pub fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "it ends too early",
        serde_json::error::Category::Syntax => "a syntax error",
        serde_json::error::Category::Data => "a value of the wrong kind",
        serde_json::error::Category::Io => "it could not be read",
    }
}

fn invalid(key: &str, what: &str) -> CommandError {
    CommandError::InvalidField(format!("`{key}` {what}"))
}

#[cfg(test)]
mod tests {
    use super::fake::FakeUsers;
    use super::*;
    use crate::codes::Argon2Params;
    use proptest::prelude::*;

    const MIN: usize = 4;
    const MAX: usize = 6;

    #[test]
    fn a_result_too_large_for_the_broker_stays_a_success_when_a_change_was_applied() {
        let applied = json!({"id": "a1", "ok": true, "command": "update_user",
                             "user": {"id": "u_1", "name": "Bob"}});
        let fitted = fitted(&applied, 5000, 1000);
        assert_eq!(fitted["ok"], true);
        assert_eq!(fitted["id"], "a1");
        assert_eq!(fitted["command"], "update_user");
        assert!(fitted.get("user").is_none());
        let warning = fitted["warnings"][0].as_str().unwrap();
        assert!(warning.contains("5000 bytes") && warning.contains("B/config/users/<id>"));
        let refused = json!({"id": "a2", "ok": false, "command": "add_user",
                             "error": {"kind": "duplicate_name", "message": "a long message"}});
        let fitted = super::fitted(&refused, 5000, 1000);
        assert_eq!(fitted["ok"], false);
        assert_eq!(fitted["error"]["kind"], "duplicate_name");
    }

    fn parsed(command: Value) -> Result<Request, CommandError> {
        let mut command = command;
        if command.get("id").is_none() {
            command["id"] = json!("t1");
        }
        parse(command.to_string().as_bytes(), MIN, MAX).map_err(|(_, e)| e)
    }

    fn refused(command: Value) -> CommandError {
        match parsed(command.clone()) {
            Ok(_) => panic!("{command} was accepted"),
            Err(e) => e,
        }
    }

    /// A site in memory, with a cheap Argon2 (the rules do not depend on its cost).
    struct Site {
        users: FakeUsers,
        keyer: LookupKeyer,
        now: Timestamp,
    }

    impl Site {
        fn empty() -> Site {
            let params = Argon2Params {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            };
            Site {
                users: FakeUsers::default(),
                keyer: LookupKeyer::new(b"site secret", b"0123456789abcdef", params).unwrap(),
                now: Timestamp::from_second(1_800_000_000).unwrap(),
            }
        }

        /// Alice the master (1234), Bob an admin (2468), Carol a user (1357).
        fn household() -> Site {
            let mut site = Site::empty();
            let alice =
                json!({"command": "add_user", "name": "Alice", "role": "master", "code": "1234"});
            site.run(&Authority::Bootstrap, alice).unwrap();
            let bob =
                json!({"command": "add_user", "name": "Bob", "role": "admin", "code": "2468"});
            site.run(&Authority::Local, bob).unwrap();
            let carol = json!({"command": "add_user", "name": "Carol", "code": "1357"});
            site.run(&Authority::Local, carol).unwrap();
            site
        }

        fn user(&self, name: &str) -> Authority {
            Authority::User(Box::new(self.users.get(name).clone()))
        }

        /// Parses, decides and commits one command; the result's kind on refusal.
        fn run(&mut self, authority: &Authority, command: Value) -> Result<Decision, CommandError> {
            let request = parsed(command)?;
            let ctx = Context {
                store: &self.users,
                keyer: &self.keyer,
                now: self.now,
                under_duress: false,
            };
            let mut decision = decide(&ctx, &request.command, authority)?;
            if let Some(change) = decision.change.take() {
                self.users.commit(change);
            }
            Ok(decision)
        }

        fn outcome(&mut self, authority: &Authority, command: Value) -> &'static str {
            match self.run(authority, command) {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            }
        }
    }

    /// DESIGN 10c: accepted, but said to be probably not meant; never the code itself.
    #[test]
    fn results_warn_of_past_dates_far_starts_empty_schedules_and_the_commonest_pins() {
        let mut site = Site::household();
        let alice = site.user("Alice");
        let warned = |site: &mut Site, command: Value| -> Vec<String> {
            site.run(&alice, command).unwrap().warnings
        };
        let past = "2026-11-27T18:00:00Z"; // before the site's clock (2027-01-15)
        let w = warned(
            &mut site,
            json!({"command": "add_user", "name": "Con", "code": "8642", "valid_until": past}),
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("valid_until is already past"), "{w:?}");
        let far = "2029-01-01T00:00:00Z";
        let w = warned(
            &mut site,
            json!({"command": "update_user", "user": "Carol", "valid_from": far}),
        );
        assert!(
            w.iter().any(|w| w.contains("more than a year ahead")),
            "{w:?}"
        );
        let w = warned(
            &mut site,
            json!({"command": "update_user", "user": "Carol", "valid_from": null, "schedule": []}),
        );
        assert!(w.iter().any(|w| w.contains("no window")), "{w:?}");
        let w = warned(
            &mut site,
            json!({"command": "set_code", "user": "Con", "code": "0000"}),
        );
        assert!(
            w.iter().any(|w| w.contains("one of the commonest PINs")),
            "{w:?}"
        );
        let w = warned(
            &mut site,
            json!({"command": "set_duress_code", "user": "Carol", "code": "6969"}),
        );
        assert!(
            w.iter()
                .any(|w| w.contains("the duress code is one of the commonest")),
            "{w:?}"
        );
        assert!(w.iter().all(|w| !w.contains("6969")), "{w:?}");
        // Nothing to say: no warnings, and the result has no `warnings` key at all.
        let ok = warned(
            &mut site,
            json!({"command": "add_user", "name": "Dan", "code": "8531"}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let soon = "2027-01-20T00:00:00Z";
        let ok = warned(
            &mut site,
            json!({"command": "update_user", "user": "Dan", "valid_until": soon}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let ctx = Context {
            store: &site.users,
            keyer: &site.keyer,
            now: site.now,
            under_duress: false,
        };
        let quiet = parsed(json!({"command": "set_code", "user": "Dan", "code": "8532"})).unwrap();
        let result = apply(&ctx, &quiet, &alice).unwrap().result;
        assert!(result.get("warnings").is_none(), "{result}");
        let loud = parsed(json!({"command": "set_code", "user": "Dan", "code": "4321"})).unwrap();
        let result = apply(&ctx, &loud, &alice).unwrap().result;
        assert_eq!(
            result["warnings"].as_array().map(Vec::len),
            Some(1),
            "{result}"
        );
        assert!(!result.to_string().contains("4321"), "{result}");
    }

    /// The rules table: who may do what, to the master and to anyone else. Columns: the
    /// master's `auth`, an admin's, `trust_broker` without `auth`, the bootstrap rule (here
    /// with a master already present) and the CLI.
    #[test]
    fn who_may_do_what() {
        const OK: &str = "ok";
        const NO: &str = "forbidden";
        const UNAUTH: &str = "unauthorized";
        let table = [
            (
                json!({"command": "add_user", "name": "Dave", "code": "8642"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "add_user", "name": "Dave", "role": "admin"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "add_user", "name": "Boss", "role": "master", "code": "8642"}),
                [NO, NO, NO, NO, NO],
            ),
            (
                json!({"command": "add_user", "name": "Boss", "role": "master"}),
                [NO, NO, NO, NO, NO],
            ),
            (
                json!({"command": "update_user", "user": "Alice", "name": "Alicia"}),
                [OK, NO, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "update_user", "user": "Carol", "name": "Caroline"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "update_user", "user": "Carol", "role": "master"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "update_user", "user": "Alice", "role": "admin"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "update_user", "user": "Alice", "max_uses": 3}),
                [
                    "invalid_field",
                    NO,
                    "invalid_field",
                    UNAUTH,
                    "invalid_field",
                ],
            ),
            (
                json!({"command": "update_user", "user": "Alice", "notify": "phone"}),
                [OK, NO, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "set_code", "user": "Alice", "code": "5555"}),
                [OK, NO, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "set_code", "user": "Carol", "code": "5555"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "set_code", "user": "Carol", "code": "1357"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "set_code", "user": "Carol", "code": "1234"}),
                [
                    "duplicate_code",
                    "duplicate_code",
                    "duplicate_code",
                    UNAUTH,
                    "duplicate_code",
                ],
            ),
            (
                json!({"command": "set_code", "user": "Alice", "code": "2468"}),
                [
                    "duplicate_code",
                    NO,
                    "duplicate_code",
                    UNAUTH,
                    "duplicate_code",
                ],
            ),
            (
                json!({"command": "set_duress_code", "user": "Alice", "code": "5555"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "set_duress_code", "user": "Carol", "code": "5555"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "set_duress_code", "user": "Carol", "code": "1357"}),
                [
                    "duplicate_code",
                    "duplicate_code",
                    "duplicate_code",
                    UNAUTH,
                    "duplicate_code",
                ],
            ),
            (
                json!({"command": "set_duress_code", "user": "Bob", "code": "5555"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "clear_code", "user": "Alice"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "clear_code", "user": "Carol"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "clear_duress_code", "user": "Alice"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "clear_duress_code", "user": "Carol"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "deactivate_user", "user": "Alice"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "deactivate_user", "user": "Carol"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "reactivate_user", "user": "Alice"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "reactivate_user", "user": "Carol"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "delete_user", "user": "Alice"}),
                [NO, NO, NO, UNAUTH, NO],
            ),
            (
                json!({"command": "delete_user", "user": "Carol"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
            (
                json!({"command": "delete_user", "user": "Nobody"}),
                ["not_found", "not_found", "not_found", UNAUTH, "not_found"],
            ),
            (json!({"command": "list_users"}), [OK, OK, OK, UNAUTH, OK]),
            (
                json!({"command": "activity", "user": "Alice"}),
                [OK, OK, OK, UNAUTH, OK],
            ),
        ];
        let columns = ["master", "admin", "broker", "bootstrap", "local"];
        for (command, expected) in table {
            for (column, want) in columns.into_iter().zip(expected) {
                let mut site = Site::household();
                let authority = match column {
                    "master" => site.user("Alice"),
                    "admin" => site.user("Bob"),
                    "broker" => Authority::Broker,
                    "bootstrap" => Authority::Bootstrap,
                    _ => Authority::Local,
                };
                let got = site.outcome(&authority, command.clone());
                assert_eq!(got, want, "{column}: {command}");
            }
        }
    }

    #[test]
    fn only_an_active_master_or_admin_may_manage_users() {
        let site = Site::household();
        let tz = jiff::tz::TimeZone::UTC;
        for name in ["Alice", "Bob"] {
            assert!(
                authorise(site.users.get(name), site.now, &tz).is_ok(),
                "{name}"
            );
        }
        assert_eq!(
            authorise(site.users.get("Carol"), site.now, &tz).unwrap_err(),
            DenyReason::NotPermitted
        );
        for role in [Role::ArmOnly, Role::Duress] {
            let user = User::new("u_x".into(), "X".into(), role, site.now);
            assert!(authorise(&user, site.now, &tz).is_err(), "{role:?}");
        }
        let mut bob = site.users.get("Bob").clone();
        bob.active = false;
        assert_eq!(
            authorise(&bob, site.now, &tz).unwrap_err(),
            DenyReason::Inactive
        );
    }

    #[test]
    fn without_auth_only_trust_broker_or_the_master_bootstrap_pass_the_gate() {
        let list = parsed(json!({"command": "list_users"})).unwrap();
        let bootstrap =
            parsed(json!({"command": "add_user", "name": "A", "role": "master", "code": "1234"}))
                .unwrap();
        let with_auth = parsed(json!({"command": "list_users", "auth": "1234"})).unwrap();
        assert!(matches!(
            gate(&list, true, true),
            Gate::Authorised(Authority::Broker)
        ));
        assert!(matches!(
            gate(&bootstrap, false, false),
            Gate::Authorised(Authority::Bootstrap)
        ));
        for (request, has_master) in [(&list, false), (&list, true), (&bootstrap, true)] {
            let Gate::Refused(e) = gate(request, false, has_master) else {
                panic!("{request:?} passed the gate");
            };
            assert_eq!(e.kind(), "unauthorized");
        }
        for trust_broker in [false, true] {
            assert!(matches!(
                gate(&with_auth, trust_broker, true),
                Gate::Identify(_)
            ));
        }
    }

    #[test]
    fn the_first_master_is_created_without_auth_and_needs_a_code() {
        let mut site = Site::empty();
        let add = |code: Option<&str>, role: &str| {
            let mut command = json!({"command": "add_user", "name": "Alice", "role": role});
            if let Some(code) = code {
                command["code"] = json!(code);
            }
            command
        };
        assert_eq!(
            site.outcome(&Authority::Bootstrap, add(None, "master")),
            "missing_field"
        );
        assert_eq!(
            site.outcome(&Authority::Bootstrap, add(Some("1234"), "user")),
            "unauthorized"
        );
        assert_eq!(
            site.outcome(&Authority::Bootstrap, json!({"command": "list_users"})),
            "unauthorized"
        );
        assert_eq!(
            site.outcome(&Authority::Bootstrap, add(Some("1234"), "master")),
            "ok"
        );
        assert_eq!(site.users.get("Alice").role, Role::Master);
        assert_eq!(
            site.outcome(&Authority::Bootstrap, add(Some("2468"), "master")),
            "forbidden"
        );
    }

    #[test]
    fn init_asks_the_add_user_rules_before_it_reads_a_code() {
        let mut site = Site::empty();
        assert!(may_add_user(&site.users, &Authority::Local, "Alice", Role::Master, true).is_ok());
        site.run(
            &Authority::Local,
            json!({"command": "add_user", "name": "Bob", "code": "2468"}),
        )
        .unwrap();
        let taken = may_add_user(&site.users, &Authority::Local, "BOB", Role::Master, true);
        assert_eq!(taken.unwrap_err().kind(), "duplicate_name");
        site.run(
            &Authority::Local,
            json!({"command": "add_user", "name": "Alice", "role": "master", "code": "1234"}),
        )
        .unwrap();
        let second = may_add_user(&site.users, &Authority::Local, "Eve", Role::Master, true);
        assert_eq!(second.unwrap_err().kind(), "forbidden");
    }

    #[test]
    fn events_name_the_actor_and_the_source_never_a_code() {
        let mut site = Site::household();
        let bob = site.user("Bob");
        site.run(
            &bob,
            json!({"command": "add_user", "name": "Dave", "code": "8642"}),
        )
        .unwrap();
        let added: Vec<_> = site.users.events.iter().rev().take(2).collect();
        assert_eq!(added[1].event_type, EventType::UserAdded);
        assert_eq!(added[0].event_type, EventType::CodeSet);
        for e in &added {
            assert_eq!(e.source.as_deref(), Some("admin"));
            assert_eq!(e.by.as_deref(), Some("Bob"));
            assert_eq!(e.user.as_deref(), Some("Dave"));
            assert!(!e.to_json().contains("8642"));
        }
        site.run(
            &Authority::Local,
            json!({"command": "set_code", "user": "Alice", "code": "7531"}),
        )
        .unwrap();
        let reset = site.users.events.last().unwrap();
        assert_eq!(reset.event_type, EventType::CodeSet);
        assert_eq!(reset.source.as_deref(), Some("cli"));
        assert_eq!(reset.by, None);
        site.run(
            &Authority::Broker,
            json!({"command": "set_duress_code", "user": "Carol", "code": "9999"}),
        )
        .unwrap();
        let duress = site.users.events.last().unwrap();
        assert_eq!(duress.which.as_deref(), Some("duress"));
        assert_eq!(duress.by, None);
    }

    #[test]
    fn a_new_code_costs_one_argon2_computation_after_every_rule_that_needs_none() {
        let mut site = Site::household();
        let bob = site.user("Bob");
        let cost = |site: &mut Site, authority: &Authority, command: Value| {
            let before = site.keyer.computations();
            let _ = site.run(authority, command);
            site.keyer.computations() - before
        };
        let master = site.user("Alice");
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "set_code", "user": "Carol", "code": "5555"})
            ),
            1
        );
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "add_user", "name": "Dave", "code": "8642"})
            ),
            1
        );
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "add_user", "name": "Eve"})
            ),
            0
        );
        assert_eq!(
            cost(&mut site, &master, json!({"command": "list_users"})),
            0
        );
        // Refused before the code is hashed: forbidden, not found, a taken name, bad format.
        assert_eq!(
            cost(
                &mut site,
                &bob,
                json!({"command": "set_code", "user": "Alice", "code": "5556"})
            ),
            0
        );
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "set_code", "user": "Nobody", "code": "5556"})
            ),
            0
        );
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "add_user", "name": "carol", "code": "5556"})
            ),
            0
        );
        assert_eq!(
            cost(
                &mut site,
                &master,
                json!({"command": "set_code", "user": "Carol", "code": "55"})
            ),
            0
        );
    }

    #[test]
    fn clearing_and_deleting_free_the_codes_for_someone_else() {
        let mut site = Site::household();
        let master = site.user("Alice");
        site.run(
            &master,
            json!({"command": "set_duress_code", "user": "Carol", "code": "9999"}),
        )
        .unwrap();
        assert!(site.users.get("Carol").has_duress_code());
        site.run(
            &master,
            json!({"command": "clear_duress_code", "user": "Carol"}),
        )
        .unwrap();
        assert!(!site.users.get("Carol").has_duress_code());
        site.run(
            &master,
            json!({"command": "set_code", "user": "Bob", "code": "9999"}),
        )
        .unwrap();
        site.run(&master, json!({"command": "delete_user", "user": "Bob"}))
            .unwrap();
        site.run(
            &master,
            json!({"command": "set_code", "user": "Carol", "code": "9999"}),
        )
        .unwrap();
        assert_eq!(site.users.codes.len(), 2, "Alice's and Carol's");
    }

    #[test]
    fn validity_rules_are_checked_against_the_user_they_change() {
        let mut site = Site::household();
        let master = site.user("Alice");
        let until = json!({"command": "update_user", "user": "Carol", "valid_until": "2027-01-01T00:00:00Z"});
        site.run(&master, until).unwrap();
        let from = json!({"command": "update_user", "user": "Carol", "valid_from": "2027-06-01T00:00:00Z"});
        assert_eq!(site.outcome(&master, from), "invalid_field");
        let both = json!({"command": "add_user", "name": "Dave", "valid_from": "2027-06-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z"});
        assert_eq!(site.outcome(&master, both), "invalid_field");
        let master_rule = json!({"command": "add_user", "name": "Boss", "role": "master", "code": "8642", "max_uses": 1});
        assert_eq!(site.outcome(&Authority::Local, master_rule), "forbidden");
    }

    #[test]
    fn activity_finds_a_deleted_users_history_by_name() {
        let mut site = Site::household();
        let master = site.user("Alice");
        site.run(&master, json!({"command": "delete_user", "user": "Carol"}))
            .unwrap();
        let decision = site
            .run(
                &master,
                json!({"command": "activity", "user": "carol", "limit": 2}),
            )
            .unwrap();
        let Report::Entries(entries) = decision.report else {
            panic!("activity reports entries");
        };
        let kinds: Vec<_> = entries.iter().map(|e| e.event_type).collect();
        assert_eq!(kinds, [EventType::UserDeleted, EventType::CodeSet]);
    }

    #[test]
    fn every_command_is_read_whole_into_its_variant() {
        for (command, name) in [
            (
                json!({"command": "add_user", "name": " Dave ", "role": "arm_only", "code": "0042",
                    "notify": "phone", "valid_from": "2026-01-01T00:00:00Z", "valid_until": null,
                    "schedule": [{"days": ["mon"], "from": "08:00", "to": "18:00"}], "max_uses": 3}),
                "add_user",
            ),
            (
                json!({"command": "update_user", "user": "Bob", "name": "Robert"}),
                "update_user",
            ),
            (
                json!({"command": "update_user", "user": "Bob", "schedule": null}),
                "update_user",
            ),
            (
                json!({"command": "set_code", "user": "Bob", "code": "123456"}),
                "set_code",
            ),
            (
                json!({"command": "set_duress_code", "user": "Bob", "code": "1234"}),
                "set_duress_code",
            ),
            (
                json!({"command": "clear_code", "user": "Bob"}),
                "clear_code",
            ),
            (
                json!({"command": "clear_duress_code", "user": "Bob"}),
                "clear_duress_code",
            ),
            (
                json!({"command": "deactivate_user", "user": "Bob"}),
                "deactivate_user",
            ),
            (
                json!({"command": "reactivate_user", "user": "Bob"}),
                "reactivate_user",
            ),
            (
                json!({"command": "delete_user", "user": "Bob"}),
                "delete_user",
            ),
            (json!({"command": "list_users", "auth": null}), "list_users"),
            (
                json!({"command": "activity", "limit": 1000, "before": 7, "user": "Bob"}),
                "activity",
            ),
        ] {
            let request = parsed(command.clone()).unwrap_or_else(|e| panic!("{command}: {e}"));
            assert_eq!(request.command.name(), name);
        }
        let request =
            parsed(json!({"command": "add_user", "name": " Dave ", "code": "0042"})).unwrap();
        let AdminCommand::AddUser {
            name, role, code, ..
        } = &request.command
        else {
            panic!("add_user");
        };
        assert_eq!(
            (name.as_str(), *role, code.is_some()),
            ("Dave", Role::User, true)
        );
        let AdminCommand::Activity { limit, .. } =
            parsed(json!({"command": "activity"})).unwrap().command
        else {
            panic!("activity");
        };
        assert_eq!(limit, 50);
    }

    #[test]
    fn a_field_is_checked_when_the_command_is_read() {
        let cases = [
            (
                json!({"command": "add_user"}),
                "missing_field",
                "add_user needs `name`",
            ),
            (
                json!({"command": "add_user", "name": null}),
                "invalid_field",
                "`name` cannot be null",
            ),
            (
                json!({"command": "add_user", "name": "  "}),
                "invalid_field",
                "`name` must be 1 to 64",
            ),
            (
                json!({"command": "add_user", "name": "A\u{7}"}),
                "invalid_field",
                "control characters",
            ),
            (
                json!({"command": "add_user", "name": "x".repeat(65)}),
                "invalid_field",
                "1 to 64",
            ),
            (
                json!({"command": "add_user", "name": "A", "role": "king"}),
                "invalid_field",
                "must be one of master",
            ),
            (
                json!({"command": "add_user", "name": "A", "notify": "x".repeat(256)}),
                "invalid_field",
                "255",
            ),
            (
                json!({"command": "add_user", "name": "A", "valid_until": "friday"}),
                "invalid_field",
                "RFC 3339",
            ),
            (
                json!({"command": "add_user", "name": "A", "valid_from": 5}),
                "invalid_field",
                "RFC 3339",
            ),
            (
                json!({"command": "add_user", "name": "A", "max_uses": 0}),
                "invalid_field",
                "at least 1",
            ),
            (
                json!({"command": "add_user", "name": "A", "schedule": [{"days": []}]}),
                "invalid_field",
                "weekly windows",
            ),
            (
                json!({"command": "update_user", "user": "Bob"}),
                "missing_field",
                "at least one of",
            ),
            (
                json!({"command": "update_user", "name": "Robert"}),
                "missing_field",
                "update_user needs `user`",
            ),
            (
                json!({"command": "set_code", "user": "Bob"}),
                "missing_field",
                "set_code needs `code`",
            ),
            (
                json!({"command": "set_code", "user": "Bob", "code": null}),
                "missing_field",
                "set_code needs `code`",
            ),
            (
                json!({"command": "set_duress_code", "code": "1234"}),
                "missing_field",
                "set_duress_code needs `user`",
            ),
            (
                json!({"command": "delete_user", "user": null}),
                "missing_field",
                "delete_user needs `user`",
            ),
            (
                json!({"command": "delete_user", "user": 7}),
                "invalid_field",
                "`user` must be a string",
            ),
            (
                json!({"command": "activity", "limit": 1001}),
                "invalid_field",
                "at most 1000",
            ),
            (
                json!({"command": "activity", "before": -1}),
                "invalid_field",
                "at least 1",
            ),
            (
                json!({"command": "list_users", "limit": 5}),
                "invalid_field",
                "list_users does not take a field named `limit` (it takes: none)",
            ),
            (
                json!({"command": "set_code", "user": "Bob", "code": "1234", "nmae": 1}),
                "invalid_field",
                "an unknown field (it takes: user, code)",
            ),
            (
                json!({"command": "add_user", "name": "Bob", "rolle": "user"}),
                "invalid_field",
                "an unknown field (did you mean `role`?)",
            ),
            (
                json!({"command": "clear_code", "user": "Bob", "code": "1234"}),
                "invalid_field",
                "a field named `code`",
            ),
            (
                json!({"command": "add_user", "name": "A", "tag": "+3DD5FCFF"}),
                "invalid_field",
                "(it takes: name, role, code, notify, schedule, valid_from, valid_until, max_uses)",
            ),
            (
                json!({"command": "add_user", "name": "A", "code": 1234}),
                "invalid_code_format",
                "a number loses leading zeros",
            ),
            (
                json!({"command": "add_user", "name": "A", "code": ["1234"]}),
                "invalid_code_format",
                "JSON string of digits",
            ),
            (
                json!({"command": "add_user", "name": "A", "code": "123"}),
                "invalid_code_format",
                "4 to 6 digits",
            ),
            (
                json!({"command": "set_code", "user": "Bob", "code": "1234567"}),
                "invalid_code_format",
                "4 to 6 digits",
            ),
            (
                json!({"command": "set_code", "user": "Bob", "code": "12 4"}),
                "invalid_code_format",
                "ASCII digits",
            ),
            (
                json!({"command": "make_coffee"}),
                "unknown_command",
                "unknown command; the commands are",
            ),
        ];
        for (command, kind, message) in cases {
            let e = refused(command.clone());
            assert_eq!(e.kind(), kind, "{command}: {e}");
            assert!(e.to_string().contains(message), "{command}: {e}");
        }
    }

    #[test]
    fn a_refusal_echoes_no_field_value() {
        for command in [
            json!({"command": "90210"}),
            json!({"command": "add_user", "name": "Eve", "50505": "x"}),
            json!({"command": "add_user", "name": "Bob", "schedule": [{"days": ["mon"], "from": "70707", "to": "18:00"}]}),
            json!({"command": "add_user", "name": "Bob", "valid_from": "80808"}),
            json!({"command": "set_code", "user": "Bob", "code": "60606060"}),
        ] {
            let e = refused(command.clone());
            for digits in ["90210", "50505", "70707", "80808", "60606060"] {
                assert!(!e.to_string().contains(digits), "{command}: {e}");
            }
        }
        let (partial, _) = parse(br#"{"id": "x", "command": "90210"}"#, MIN, MAX).unwrap_err();
        assert_eq!(partial.command, None);
    }

    #[test]
    fn the_fingerprint_leaves_out_the_codes_and_keeps_every_other_field() {
        let fingerprint = |command: Value| {
            String::from_utf8(parsed(command).unwrap().fingerprint_input().to_vec()).unwrap()
        };
        let first = fingerprint(
            json!({"command": "set_code", "user": "Bob", "code": "5556", "auth": "1234"}),
        );
        // The bytes of earlier versions: stored fingerprints keep matching after an upgrade.
        assert_eq!(first, r#"{"command":"set_code","fields":{"user":"Bob"}}"#);
        let other_code = fingerprint(
            json!({"id": "t2", "command": "set_code", "user": "Bob", "code": "5557", "auth": "2468"}),
        );
        assert_eq!(first, other_code);
        assert_ne!(
            first,
            fingerprint(json!({"command": "set_code", "user": "Carol", "code": "5556"}))
        );
        assert_ne!(
            first,
            fingerprint(json!({"command": "delete_user", "user": "Bob"}))
        );
        let add =
            fingerprint(json!({"command": "add_user", "name": "Bob", "code": null, "max_uses": 2}));
        assert_eq!(
            add,
            r#"{"command":"add_user","fields":{"max_uses":2,"name":"Bob"}}"#
        );
    }

    #[test]
    fn tags_are_read_normalised_and_malformed_ones_are_invalid_code_format() {
        let r = parsed(
            json!({"command": "add_tag", "user": "Carol", "tag": "+3dd5fcff", "label": "blue fob"}),
        )
        .unwrap();
        let AdminCommand::AddTag { tag, label, .. } = &r.command else {
            panic!("{r:?}")
        };
        assert_eq!(tag, &Code::tag("3D:D5:FC:FF").unwrap());
        assert_eq!(label.as_deref(), Some("blue fob"));
        for bad in [
            json!("12-34"),
            json!("nothex!!"),
            json!(74103794),
            json!("A".repeat(21)),
        ] {
            let e = refused(json!({"command": "add_tag", "user": "Carol", "tag": bad}));
            assert_eq!(e.kind(), "invalid_code_format", "{bad}");
        }
        assert_eq!(
            refused(json!({"command": "add_tag", "user": "Carol"})).kind(),
            "missing_field"
        );
        let r = parsed(json!({"command": "learn_tag", "user": "Carol"})).unwrap();
        assert!(matches!(
            r.command,
            AdminCommand::LearnTag {
                within_s: 60,
                keypad: None,
                ..
            }
        ));
        let r = parsed(
            json!({"command": "learn_tag", "user": "Carol", "keypad": "hall", "within_s": 300}),
        )
        .unwrap();
        assert!(matches!(
            r.command,
            AdminCommand::LearnTag {
                within_s: 300,
                keypad: Some(_),
                ..
            }
        ));
        assert_eq!(
            refused(json!({"command": "learn_tag", "user": "Carol", "within_s": 301})).kind(),
            "invalid_field"
        );
        // The fingerprint never holds the tag.
        let r =
            parsed(json!({"command": "add_tag", "user": "Carol", "tag": "74-10-37-94"})).unwrap();
        let fp = String::from_utf8(r.fingerprint_input().to_vec()).unwrap();
        assert!(!fp.contains("74-10") && !fp.contains("74103794"), "{fp}");
    }

    #[test]
    fn a_tag_is_added_listed_by_id_and_label_removed_and_never_shown() {
        let mut site = Site::household();
        let alice = site.user("Alice");
        let d = site
            .run(&alice, json!({"command": "add_tag", "user": "Carol", "tag": "74-10-37-94", "label": "fob"}))
            .unwrap();
        let Report::User(carol) = &d.report else {
            panic!()
        };
        let entry = serde_json::to_value(carol.roster_entry()).unwrap();
        let tags = entry["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0]["label"], "fob");
        let id = tags[0]["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("t_"));
        let text = entry.to_string().to_uppercase();
        assert!(
            !text.contains("74103794") && !text.contains("74-10-37-94"),
            "{text}"
        );
        let added = site.users.events.last().unwrap();
        assert_eq!(added.event_type, EventType::TagAdded);
        assert_eq!(added.tag_id.as_deref(), Some(id.as_str()));
        assert_eq!(added.by.as_deref(), Some("Alice"));
        // Found by its lookup key as Carol's tag.
        let key = site.keyer.key(&Code::tag("74103794").unwrap());
        let (holder, which) = site.users.credential_by_key(&key).unwrap().unwrap();
        assert_eq!((holder.name.as_str(), which), ("Carol", Credential::Tag));
        // The same tag again, in another spelling, for anyone: duplicate_code.
        assert_eq!(
            site.outcome(
                &alice,
                json!({"command": "add_tag", "user": "Bob", "tag": "+74103794"})
            ),
            "duplicate_code"
        );
        assert_eq!(
            site.outcome(
                &alice,
                json!({"command": "remove_tag", "user": "Carol", "tag": "t_nope"})
            ),
            "not_found"
        );
        site.run(
            &alice,
            json!({"command": "remove_tag", "user": "Carol", "tag": id}),
        )
        .unwrap();
        assert!(site.users.get("Carol").tags.is_empty());
        assert!(site.users.credential_by_key(&key).unwrap().is_none());
        assert_eq!(
            site.users.events.last().unwrap().event_type,
            EventType::TagRemoved
        );
    }

    #[test]
    fn at_most_eight_tags_an_admin_cannot_touch_the_masters_and_deleting_frees_them() {
        let mut site = Site::household();
        let alice = site.user("Alice");
        for i in 0..8 {
            let tag = format!("AABBCC{i:02}");
            assert_eq!(
                site.outcome(
                    &alice,
                    json!({"command": "add_tag", "user": "Carol", "tag": tag})
                ),
                "ok"
            );
        }
        assert_eq!(
            site.outcome(
                &alice,
                json!({"command": "add_tag", "user": "Carol", "tag": "AABBCC99"})
            ),
            "invalid_field"
        );
        assert_eq!(
            site.outcome(&alice, json!({"command": "learn_tag", "user": "Carol"})),
            "invalid_field"
        );
        let bob = site.user("Bob");
        assert_eq!(
            site.outcome(
                &bob,
                json!({"command": "add_tag", "user": "Alice", "tag": "DDEEFF00"})
            ),
            "forbidden"
        );
        assert_eq!(
            site.outcome(
                &alice,
                json!({"command": "add_tag", "user": "Alice", "tag": "DDEEFF00"})
            ),
            "ok"
        );
        site.run(&alice, json!({"command": "delete_user", "user": "Carol"}))
            .unwrap();
        assert_eq!(
            site.outcome(
                &alice,
                json!({"command": "add_tag", "user": "Bob", "tag": "AABBCC00"})
            ),
            "ok"
        );
    }

    #[test]
    fn learn_tag_stores_nothing_and_names_the_user_keypad_and_window() {
        let mut site = Site::household();
        let alice = site.user("Alice");
        let d = site
            .run(
                &alice,
                json!({"command": "learn_tag", "user": "Carol", "keypad": "hall", "within_s": 90}),
            )
            .unwrap();
        assert!(d.change.is_none(), "a learning survives nothing");
        let learn = d.learn.unwrap();
        assert_eq!(learn.user, "Carol");
        assert_eq!(learn.keypad.as_deref(), Some("hall"));
        assert_eq!(learn.until, site.now + jiff::SignedDuration::from_secs(90));
        assert_eq!(learn.by.unwrap().0, "Alice");
        assert_eq!(
            site.outcome(&alice, json!({"command": "learn_tag", "user": "Nobody"})),
            "not_found"
        );
    }

    #[test]
    fn commands_that_set_a_code_are_told_apart_for_the_ration() {
        let sets = |command: Value| parsed(command).unwrap().sets_code();
        assert!(sets(
            json!({"command": "add_user", "name": "A", "code": "1234"})
        ));
        assert!(!sets(
            json!({"command": "add_user", "name": "A", "code": null})
        ));
        assert!(!sets(json!({"command": "add_user", "name": "A"})));
        assert!(sets(
            json!({"command": "set_code", "user": "A", "code": "1234"})
        ));
        assert!(sets(
            json!({"command": "set_duress_code", "user": "A", "code": "1234"})
        ));
        assert!(!sets(json!({"command": "clear_code", "user": "A"})));
        // Each tag answer says whether the tag is free: rationed like a code.
        assert!(sets(
            json!({"command": "add_tag", "user": "A", "tag": "74-10-37-94"})
        ));
        assert!(sets(json!({"command": "learn_tag", "user": "A"})));
        assert!(!sets(
            json!({"command": "remove_tag", "user": "A", "tag": "t_000001"})
        ));
        let bootstrap = |command: Value| parsed(command).unwrap().is_master_bootstrap();
        assert!(bootstrap(
            json!({"command": "add_user", "name": "A", "role": "master"})
        ));
        assert!(!bootstrap(
            json!({"command": "add_user", "name": "A", "role": "admin"})
        ));
        assert!(!bootstrap(
            json!({"command": "update_user", "user": "A", "role": "master"})
        ));
    }

    proptest! {
        /// Whatever arrives on the config topic, the parser answers without panicking, and a
        /// refusal always carries one of the error kinds of DESIGN.md 6.
        #[test]
        fn any_bytes_on_the_config_topic_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err((_, error)) = parse(&bytes, MIN, MAX) {
                prop_assert!(!error.to_string().is_empty());
                let kinds = ["invalid_json", "payload_too_large", "unknown_command", "missing_field", "invalid_field", "invalid_code_format"];
                prop_assert!(kinds.contains(&error.kind()));
            }
        }

        /// A known command with any fields is read or refused, never half-read.
        #[test]
        fn any_fields_on_a_known_command_get_an_answer(
            command in proptest::sample::select(COMMANDS.to_vec()),
            fields in proptest::collection::btree_map(
                proptest::sample::select(vec!["name", "role", "code", "user", "notify", "limit", "before", "schedule", "max_uses", "valid_from", "tag", "x"]),
                prop_oneof![Just(json!(null)), Just(json!("1234")), Just(json!("Bob")), Just(json!(5)), Just(json!("master")), Just(json!([]))],
                0..5,
            ),
        ) {
            let mut payload = json!({"id": "p", "command": command});
            for (k, v) in fields {
                payload[k] = v;
            }
            match parse(payload.to_string().as_bytes(), MIN, MAX) {
                Ok(request) => prop_assert_eq!(request.command.name(), command),
                Err((partial, error)) => {
                    prop_assert_eq!(partial.command.as_deref(), Some(command));
                    prop_assert!(!error.to_string().contains("1234"));
                }
            }
        }
    }

    #[test]
    fn a_request_never_prints_its_auth_or_fields() {
        let request = parse(
            br#"{"id":"1","auth":"4711","command":"set_code","user":"Bob","code":"0042"}"#,
            MIN,
            MAX,
        )
        .unwrap();
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("4711") && !shown.contains("0042"),
            "{shown}"
        );
        assert!(shown.contains("set_code"));
    }

    #[test]
    fn store_failures_are_internal_errors_in_plain_words() {
        let error = CommandError::from(StoreError::Task("boom".into()));
        assert_eq!(error.kind(), "internal");
        assert!(error.to_string().contains("log"));
    }
}
