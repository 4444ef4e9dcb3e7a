//! Code-management commands on `B/config/set` (DESIGN.md 6): parse, authorise, apply, result.
//!
//! [`parse`] turns a payload into a [`Request`] or a [`CommandError`] whose kind is one of the
//! error kinds of DESIGN.md 6. [`apply`] decides a command against the store and returns the
//! [`Change`] to commit plus the result to publish once the change is durable; it never writes.
//! Who may do what (roles, the master's protections, the bootstrap rule) is decided here; the
//! daemon checks `auth` (one Argon2id computation, with the `admin` source's lockout) first.
//! No result, message or event ever holds a code.

use jiff::Timestamp;
use serde_json::{json, Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::codes::{wipe_json, Code, LookupKey, LookupKeyer, WipedJson};
use crate::events::{Event, EventType};
use crate::keypad::TypedCode;
use crate::store::{Change, Store, StoreError};
use crate::users::{names_equal, Credential, DenyReason, Role, Use, User, Window};

/// Commands larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 64 * 1024;
pub const SOURCE: &str = "admin";

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
}

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
            CommandError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store error while handling a command: {e}");
        CommandError::Internal(
            "the store could not complete the command; see the daemon's log".into(),
        )
    }
}

/// A command as received: its `id`, `auth` and the rest of its fields, not yet validated.
/// `Debug` leaves out the fields and `auth`: they may hold codes.
#[derive(Clone)]
pub struct Request {
    pub id: String,
    pub command: String,
    pub auth: Option<TypedCode>,
    fields: Map<String, Value>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The bootstrap rule: while no master exists, `add_user` with role master needs no auth.
    pub fn is_master_bootstrap(&self) -> bool {
        self.command == "add_user" && self.fields.get("role") == Some(&json!("master"))
    }

    /// Whether the command gives someone a code: each answer to one says whether that code
    /// is free, so they are rationed ([`crate::panel::Panel::code_set`]).
    pub fn sets_code(&self) -> bool {
        matches!(
            self.command.as_str(),
            "add_user" | "set_code" | "set_duress_code"
        ) && !matches!(self.fields.get("code"), None | Some(Value::Null))
    }

    /// What identifies the command for idempotency: its name and every field but the
    /// secret ones (`code`, `tag`; `auth` is already apart). Leaving them out is what keeps
    /// a replay from ever answering whether a guessed code is the one a command carried.
    pub fn fingerprint_input(&self) -> Zeroizing<Vec<u8>> {
        let fields: Map<String, Value> = self
            .fields
            .iter()
            .filter(|(k, _)| !SECRET_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // serde_json's maps are sorted: the same command always gives the same bytes.
        Zeroizing::new(
            serde_json::to_vec(&json!({"command": self.command, "fields": fields}))
                .unwrap_or_default(),
        )
    }

    /// The `id` and `command` for a failure result.
    pub fn partial(&self) -> Partial {
        Partial {
            id: Some(self.id.clone()),
            command: Some(self.command.clone()),
        }
    }
}

/// Fields that hold a code or a tag: never part of a fingerprint, wiped when the request goes.
const SECRET_FIELDS: [&str; 2] = ["code", "tag"];

/// A code may be in any field (one swapped by mistake): every string is overwritten.
impl Drop for Request {
    fn drop(&mut self) {
        self.fields.values_mut().for_each(wipe_json);
    }
}

/// What `id` and `command` a failed payload had, for its result.
#[derive(Debug, Default)]
pub struct Partial {
    pub id: Option<String>,
    pub command: Option<String>,
}

/// Reads the envelope: size, JSON, `id`, `command`, `auth`.
pub fn parse(payload: &[u8]) -> Result<Request, (Partial, CommandError)> {
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
            let msg = format!("the command is not valid UTF-8 JSON: {e}");
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
    let command = match fields.remove("command") {
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
    let known = COMMANDS.contains(&command.as_str());
    let partial = Partial {
        id: Some(id.clone()),
        command: known.then(|| command.clone()),
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
    if !known {
        let msg = format!(
            "unknown command ({} characters); the commands are {}",
            command.chars().count(),
            COMMANDS.join(", ")
        );
        return Err((partial, CommandError::UnknownCommand(msg)));
    }
    Ok(Request {
        id,
        command,
        auth,
        fields: std::mem::take(fields),
    })
}

const COMMANDS: [&str; 11] = [
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
}

impl Authority {
    /// Whom a ration is counted for: the acting user, or the kind of authority.
    pub fn actor_key(&self) -> String {
        match self {
            Authority::User(user) => user.id.clone(),
            Authority::Broker => "broker".into(),
            Authority::Bootstrap => "bootstrap".into(),
        }
    }

    fn actor(&self) -> Option<&User> {
        match self {
            Authority::User(user) => Some(user),
            Authority::Broker | Authority::Bootstrap => None,
        }
    }

    fn is_admin(&self) -> bool {
        matches!(self, Authority::User(u) if u.role == Role::Admin)
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

/// What the code rules and clock say, for one command.
pub struct Context<'a> {
    pub store: &'a Store,
    pub keyer: &'a LookupKeyer,
    pub min_length: usize,
    pub max_length: usize,
    pub now: Timestamp,
}

/// A decided command: the change to commit (none for a read-only command) and its result.
#[derive(Debug)]
pub struct Applied {
    pub change: Option<Change>,
    pub result: Value,
}

pub fn success(request: &Request, body: Map<String, Value>) -> Value {
    let mut result = Map::new();
    result.insert("id".into(), json!(request.id));
    result.insert("ok".into(), json!(true));
    result.insert("command".into(), json!(request.command));
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

/// Decides `request` on `authority`'s behalf. Blocking (reads the store, may hash a new code).
pub fn apply(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
) -> Result<Applied, CommandError> {
    if matches!(authority, Authority::Bootstrap) && !request.is_master_bootstrap() {
        return Err(CommandError::Unauthorized(
            "only `add_user` with role master works without `auth` before a master exists".into(),
        ));
    }
    let mut f = Fields::new(&request.fields, &request.command);
    let applied = match request.command.as_str() {
        "add_user" => add_user(ctx, request, authority, &mut f)?,
        "update_user" => update_user(ctx, request, authority, &mut f)?,
        "set_code" => set_code(ctx, request, authority, &mut f)?,
        "clear_code" => simple(ctx, request, authority, &mut f, Simple::ClearCode)?,
        "set_duress_code" => set_duress_code(ctx, request, authority, &mut f)?,
        "clear_duress_code" => simple(ctx, request, authority, &mut f, Simple::ClearDuress)?,
        "deactivate_user" => simple(ctx, request, authority, &mut f, Simple::Deactivate)?,
        "reactivate_user" => simple(ctx, request, authority, &mut f, Simple::Reactivate)?,
        "delete_user" => simple(ctx, request, authority, &mut f, Simple::Delete)?,
        "list_users" => {
            f.finish()?;
            let users: Vec<_> = ctx.store.users()?.iter().map(User::roster_entry).collect();
            let mut body = Map::new();
            body.insert("users".into(), json!(users));
            Applied {
                change: None,
                result: success(request, body),
            }
        }
        "activity" => activity(ctx, request, &mut f)?,
        other => {
            return Err(CommandError::UnknownCommand(format!(
                "unknown command ({} characters)",
                other.chars().count()
            )))
        }
    };
    Ok(applied)
}

fn user_result(request: &Request, user: &User) -> Value {
    let mut body = Map::new();
    body.insert("user".into(), json!(user.roster_entry()));
    success(request, body)
}

fn changed(request: &Request, user: &User, change: Change) -> Applied {
    Applied {
        result: user_result(request, user),
        change: Some(change),
    }
}

fn event(ctx: &Context<'_>, t: EventType, user: &User, authority: &Authority) -> Event {
    Event::new(t, ctx.now)
        .source(SOURCE)
        .about(user)
        .by(authority.actor())
}

fn add_user(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
    f: &mut Fields<'_>,
) -> Result<Applied, CommandError> {
    let name = f.name("name")?.ok_or_else(|| missing("add_user", "name"))?;
    let role = f.role("role")?.unwrap_or(Role::User);
    let code = f.code(ctx, "code")?;
    let rules = f.rules()?;
    f.finish()?;
    if role == Role::Master {
        if ctx.store.master()?.is_some() {
            return Err(CommandError::Forbidden(
                "there is already a master; a site has exactly one".into(),
            ));
        }
        if authority.is_admin() {
            return Err(CommandError::Forbidden(
                "an admin cannot create a master".into(),
            ));
        }
        if code.is_none() {
            return Err(CommandError::MissingField(
                "the master needs a `code`: it is the main code".into(),
            ));
        }
    }
    check_name_free(ctx.store, &name, None)?;
    let mut user = User::new(ctx.store.new_user_id()?, name, role, ctx.now);
    rules.apply_to(&mut user)?;
    let mut change = Change::default();
    change
        .events
        .push(event(ctx, EventType::UserAdded, &user, authority));
    if let Some(key) = code {
        check_code_free(ctx.store, &key, None)?;
        user.code_key = Some(key.to_hex());
        change.put_codes.push((key, user.id.clone()));
        change
            .events
            .push(event(ctx, EventType::CodeSet, &user, authority));
    }
    change.put_users.push(user.clone());
    Ok(changed(request, &user, change))
}

fn update_user(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
    f: &mut Fields<'_>,
) -> Result<Applied, CommandError> {
    let mut user = f.target(ctx.store)?;
    let name = f.name("name")?;
    let role = f.role("role")?;
    let rules = f.rules()?;
    f.finish()?;
    if name.is_none() && role.is_none() && !rules.any_given() {
        return Err(CommandError::MissingField(
            "update_user needs at least one of name, role, notify, valid_from, valid_until, \
             schedule, max_uses"
                .into(),
        ));
    }
    guard_target(authority, &user)?;
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
        check_name_free(ctx.store, &name, Some(&user.id))?;
        user.name = name;
    }
    rules.apply_to(&mut user)?;
    user.updated_at = ctx.now;
    let mut change = Change::default();
    change
        .events
        .push(event(ctx, EventType::UserUpdated, &user, authority));
    change.put_users.push(user.clone());
    Ok(changed(request, &user, change))
}

fn set_code(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
    f: &mut Fields<'_>,
) -> Result<Applied, CommandError> {
    let mut user = f.target(ctx.store)?;
    let key = f
        .code(ctx, "code")?
        .ok_or_else(|| missing("set_code", "code"))?;
    f.finish()?;
    guard_target(authority, &user)?;
    check_code_free(ctx.store, &key, Some((&user.id, Credential::Code)))?;
    let mut change = Change::recode(&mut user, key, ctx.now);
    change
        .events
        .push(event(ctx, EventType::CodeSet, &user, authority));
    Ok(changed(request, &user, change))
}

/// A person's duress code (DESIGN 10a): unique across every code and duress code.
fn set_duress_code(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
    f: &mut Fields<'_>,
) -> Result<Applied, CommandError> {
    let mut user = f.target(ctx.store)?;
    let key = f
        .code(ctx, "code")?
        .ok_or_else(|| missing("set_duress_code", "code"))?;
    f.finish()?;
    guard_target(authority, &user)?;
    if user.role == Role::Master {
        return Err(CommandError::Forbidden(
            "the master cannot have a duress code; give one to each other person".into(),
        ));
    }
    check_code_free(ctx.store, &key, Some((&user.id, Credential::Duress)))?;
    let mut change = Change::duress(&mut user, key, ctx.now);
    let mut set = event(ctx, EventType::CodeSet, &user, authority);
    set.which = Some("duress".into());
    change.events.push(set);
    Ok(changed(request, &user, change))
}

enum Simple {
    ClearCode,
    ClearDuress,
    Deactivate,
    Reactivate,
    Delete,
}

fn simple(
    ctx: &Context<'_>,
    request: &Request,
    authority: &Authority,
    f: &mut Fields<'_>,
    what: Simple,
) -> Result<Applied, CommandError> {
    let mut user = f.target(ctx.store)?;
    f.finish()?;
    guard_target(authority, &user)?;
    if user.role == Role::Master {
        let msg = match what {
            Simple::ClearCode => "the master's code cannot be cleared, only replaced with set_code",
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
            change.delete_users.push(user.id.clone());
            EventType::UserDeleted
        }
    };
    user.updated_at = ctx.now;
    let mut done = event(ctx, event_type, &user, authority);
    if matches!(what, Simple::ClearDuress) {
        done.which = Some("duress".into());
    }
    change.events.push(done);
    if !matches!(what, Simple::Delete) {
        change.put_users.push(user.clone());
    }
    Ok(changed(request, &user, change))
}

fn activity(
    ctx: &Context<'_>,
    request: &Request,
    f: &mut Fields<'_>,
) -> Result<Applied, CommandError> {
    let limit = f.positive("limit")?.flatten().unwrap_or(50);
    if limit > 1000 {
        return Err(CommandError::InvalidField("`limit` is at most 1000".into()));
    }
    let before = f.positive("before")?.flatten();
    let user = f.string("user")?.flatten();
    f.finish()?;
    // A deleted user is no longer in the store: their history is found by id or by name.
    let found = match &user {
        Some(u) => ctx.store.find_user(u)?,
        None => None,
    };
    let entries = ctx
        .store
        .activity(limit as usize, before, |e| match (&user, &found) {
            (None, _) => true,
            (Some(_), Some(found)) => e.involves(&found.id),
            (Some(who), None) => {
                e.involves(who)
                    || e.user.as_deref().is_some_and(|n| names_equal(n, who))
                    || e.by.as_deref().is_some_and(|n| names_equal(n, who))
            }
        })?;
    let mut body = Map::new();
    body.insert("entries".into(), json!(entries));
    Ok(Applied {
        change: None,
        result: success(request, body),
    })
}

/// An admin cannot touch the master.
fn guard_target(authority: &Authority, target: &User) -> Result<(), CommandError> {
    if authority.is_admin() && target.role == Role::Master {
        return Err(CommandError::Forbidden(
            "an admin cannot change the master; use the master's code as `auth`".into(),
        ));
    }
    Ok(())
}

fn check_name_free(store: &Store, name: &str, except: Option<&str>) -> Result<(), CommandError> {
    let taken = store
        .users()?
        .into_iter()
        .any(|u| names_equal(&u.name, name) && Some(u.id.as_str()) != except);
    if taken {
        return Err(CommandError::DuplicateName(
            "another user already has that name (names are compared without case)".into(),
        ));
    }
    Ok(())
}

/// Refuses a code that any person already has, as a code or a duress code, except `owner`'s
/// own secret of the same kind (setting one's current code again is not a duplicate).
fn check_code_free(
    store: &Store,
    key: &LookupKey,
    owner: Option<(&str, Credential)>,
) -> Result<(), CommandError> {
    match store.credential_by_key(key)? {
        Some((holder, which)) if Some((holder.id.as_str(), which)) != owner => Err(
            CommandError::DuplicateCode("that code is already in use; choose another one".into()),
        ),
        _ => Ok(()),
    }
}

fn missing(command: &str, field: &str) -> CommandError {
    CommandError::MissingField(format!("{command} needs `{field}`"))
}

/// Validity-rule fields of add_user/update_user: outer None = not given, inner None = clear.
#[derive(Default)]
struct Rules {
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

    fn apply_to(self, user: &mut User) -> Result<(), CommandError> {
        if user.role == Role::Master && self.any_set() {
            return Err(CommandError::InvalidField(
                "the master's code cannot have validity rules".into(),
            ));
        }
        let mut next = user.clone();
        if let Some(v) = self.notify {
            next.notify = v;
        }
        if let Some(v) = self.valid_from {
            next.valid_from = v;
        }
        if let Some(v) = self.valid_until {
            next.valid_until = v;
        }
        if let Some(v) = self.schedule {
            next.schedule = v;
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
            Some(Some(name)) => {
                let name = name.trim().to_owned();
                if name.is_empty() || name.chars().count() > 64 {
                    return Err(invalid(key, "must be 1 to 64 characters"));
                }
                if name.chars().any(char::is_control) {
                    return Err(invalid(key, "cannot contain control characters"));
                }
                Ok(Some(name))
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

    /// Format-checks a code field and computes its lookup key.
    fn code(
        &mut self,
        ctx: &Context<'_>,
        key: &'static str,
    ) -> Result<Option<LookupKey>, CommandError> {
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
        let code = Code::parse(raw, ctx.min_length, ctx.max_length)
            .map_err(|e| CommandError::InvalidCodeFormat(e.to_string()))?;
        Ok(Some(ctx.keyer.key(&code)))
    }

    /// The user named by `user` (id or name).
    fn target(&mut self, store: &Store) -> Result<User, CommandError> {
        let command = self.command;
        let who = match self.string("user")? {
            Some(Some(who)) => who,
            Some(None) | None => return Err(missing(command, "user")),
        };
        store
            .find_user(&who)?
            .ok_or_else(|| CommandError::NotFound("no user has that id or name".into()))
    }

    /// Refuses fields this command does not take (a typo must not go unnoticed).
    fn finish(&self) -> Result<(), CommandError> {
        if let Some(unknown) = self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            let allowed = if self.seen.is_empty() {
                "none".to_owned()
            } else {
                self.seen.join(", ")
            };
            // A field name is echoed only when it looks like one (a typo such as `nmae`);
            // anything else may be a value put in the wrong place, a code included.
            let named = if looks_like_a_field_name(unknown) {
                format!("a field named `{unknown}`")
            } else {
                format!("an unknown field ({} characters)", unknown.chars().count())
            };
            return Err(CommandError::InvalidField(format!(
                "{} does not take {named} (it takes: {allowed})",
                self.command
            )));
        }
        Ok(())
    }
}

/// Lower-case letters and `_` only, at most 32: no digits, so never a code.
fn looks_like_a_field_name(key: &str) -> bool {
    (1..=32).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn invalid(key: &str, what: &str) -> CommandError {
    CommandError::InvalidField(format!("`{key}` {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the config topic, the envelope parser answers without panicking,
        /// and a refusal always carries one of the error kinds of DESIGN.md 6.
        #[test]
        fn any_bytes_on_the_config_topic_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err((_, error)) = parse(&bytes) {
                prop_assert!(!error.to_string().is_empty());
                let kinds = ["invalid_json", "payload_too_large", "unknown_command", "missing_field", "invalid_field"];
                prop_assert!(kinds.contains(&error.kind()));
            }
        }
    }

    #[test]
    fn a_request_never_prints_its_auth_or_fields() {
        let request =
            parse(br#"{"id":"1","auth":"4711","command":"set_code","user":"Bob","code":"0042"}"#)
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
