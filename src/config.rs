//! The configuration file (DESIGN.md section 9): the serde structs with their defaults, and the
//! checker behind `check-config`.
//!
//! serde stops at the first error, but an owner fixing a file wants every mistake in one run. So
//! [`parse`] also reads the file into a tree that remembers where each node sits (`located`),
//! replays serde over a copy of that tree, drops each node serde refuses (noting a problem at its
//! line and column) until serde goes through, and then checks what serde cannot: ranges, topics,
//! the time zone, the log filter. The `Config` handed back always comes from serde_yaml reading
//! the file itself; the tree only serves to find and word the problems.

use std::collections::HashSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::alarm::ArmMode;

use located::{Kind, Node, Part, Pos, Seg, Style};

/// The whole file. Every key may be left out except `keypads`: a bridge without keypads is
/// allowed (`keypads: []`), but only when the owner says so.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub codes: CodesConfig,
    #[serde(default)]
    pub lockout: LockoutConfig,
    #[serde(default)]
    pub alarm: AlarmConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub activity: ActivityConfig,
    #[serde(default)]
    pub homeassistant: HomeAssistantConfig,
    /// An IANA name; `None` means the system's zone.
    #[serde(default)]
    pub timezone: Option<String>,
    pub keypads: Vec<KeypadConfig>,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    /// The password lives in its own file so the config can be world-readable.
    pub password_file: Option<PathBuf>,
    pub tls: TlsConfig,
    pub base_topic: String,
    pub keepalive_s: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "localhost".into(),
            port: 1883,
            client_id: "keypad-bridge".into(),
            username: None,
            password_file: None,
            tls: TlsConfig::default(),
            base_topic: "keypad-bridge".into(),
            keepalive_s: 30,
        }
    }
}

/// TLS is on when `ca_file` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Kept outside the database so that a copy of the database alone reveals nothing.
    pub secret_file: PathBuf,
    /// sled's page cache; its 1 GiB default does not fit a Raspberry Pi.
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "/var/lib/keypad-bridge/db".into(),
            secret_file: "/var/lib/keypad-bridge/secret".into(),
            cache_mb: 16,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodesConfig {
    pub min_length: usize,
    pub max_length: usize,
    /// Read only when the store is created; the store keeps its own copy afterwards.
    pub argon2: Argon2Config,
}

impl Default for CodesConfig {
    fn default() -> Self {
        CodesConfig {
            min_length: 4,
            max_length: 6,
            argon2: Argon2Config::default(),
        }
    }
}

/// Defaults are OWASP's minimum for Argon2id.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window_s: u64,
    pub duration_s: u64,
    pub max_duration_s: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 4,
            window_s: 600,
            duration_s: 90,
            max_duration_s: 3600,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmConfig {
    /// The modes offered to Home Assistant (`supported_features`).
    pub modes: Vec<ArmMode>,
    pub code_arm_required: bool,
    /// What a `toggle` arms when the alarm is disarmed.
    pub toggle_mode: ArmMode,
    pub exit_delay_s: ExitDelays,
    pub entry_delay_s: u64,
    pub trigger_time_s: u64,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            modes: vec![ArmMode::ArmedAway, ArmMode::ArmedHome, ArmMode::ArmedNight],
            code_arm_required: true,
            toggle_mode: ArmMode::ArmedAway,
            exit_delay_s: ExitDelays::default(),
            entry_delay_s: 30,
            trigger_time_s: 600,
        }
    }
}

/// Seconds of exit delay per mode; 0 arms at once.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExitDelays {
    pub armed_away: u64,
    pub armed_home: u64,
    pub armed_night: u64,
    pub armed_vacation: u64,
}

impl Default for ExitDelays {
    fn default() -> Self {
        ExitDelays {
            armed_away: 30,
            armed_home: 0,
            armed_night: 0,
            armed_vacation: 30,
        }
    }
}

impl ExitDelays {
    pub fn get(&self, mode: ArmMode) -> u64 {
        match mode {
            ArmMode::ArmedAway => self.armed_away,
            ArmMode::ArmedHome => self.armed_home,
            ArmMode::ArmedNight => self.armed_night,
            ArmMode::ArmedVacation => self.armed_vacation,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// When true, `B/config/set` needs no `auth`: the broker's ACL is the only gate.
    pub trust_broker: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivityConfig {
    pub max_entries: u64,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig { max_entries: 10000 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    pub discovery: bool,
    pub prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            discovery: true,
            prefix: "homeassistant".into(),
        }
    }
}

/// One keypad; all three keys are required.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeypadConfig {
    /// Names the source (`keypad:<name>`) and the result topic, hence `[a-z0-9_-]+`.
    pub name: String,
    pub protocol: KeypadProtocol,
    pub topic: String,
}

impl Default for KeypadConfig {
    fn default() -> Self {
        KeypadConfig {
            name: String::new(),
            protocol: KeypadProtocol::Zigbee2mqtt,
            topic: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeypadProtocol {
    Zigbee2mqtt,
    Json,
    Plain,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Config {
    /// The zone that schedules are read in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> {
        match &self.timezone {
            None => Ok(jiff::tz::TimeZone::system()),
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|err| format!("unknown time zone {name:?} (timezone): {err}")),
        }
    }

    /// The broker password, from `mqtt.password_file`, without the newline editors add.
    pub fn read_mqtt_password(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.mqtt.password_file else {
            return Ok(None);
        };
        let mut password = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the MQTT password file {} (mqtt.password_file)",
                path.display()
            )
        })?;
        if password.ends_with('\n') {
            password.pop();
            if password.ends_with('\r') {
                password.pop();
            }
        }
        Ok(Some(password))
    }
}

/// One thing wrong with a config file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Problem {
    fn at(pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The I/O error is the `source`, so `{err:#}` prints it once, after a colon.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", list_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list_problems(path: &Path, problems: &[Problem]) -> String {
    let plural = if problems.len() == 1 { "" } else { "s" };
    let mut text = format!("{} has {} problem{plural}:", path.display(), problems.len());
    for problem in problems {
        text.push_str("\n  ");
        text.push_str(&problem.to_string());
    }
    text
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// Reads a config file's text; on failure returns every problem found, in file order.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let document = located::read(text).map_err(|problem| vec![problem])?;
    // libyaml (behind serde_yaml) has the last word on syntax, in case it and saphyr disagree.
    if let Err(err) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(vec![serde_problem(&err)]);
    }
    let mut tree = match document.root {
        Some(root) if matches!(root.kind, Kind::Map(_)) => root,
        Some(root) if is_null(&root) => {
            return Err(vec![Problem::at(
                root.pos,
                "the file has no settings: it needs at least a `keypads:` list",
            )])
        }
        Some(root) => {
            return Err(vec![Problem::at(
                root.pos,
                format!(
                    "the file must hold `key: value` settings, found {}",
                    describe(&root)
                ),
            )])
        }
        None => {
            return Err(vec![Problem {
                line: 1,
                column: 1,
                message: "the file is empty: it needs at least a `keypads:` list".into(),
            }])
        }
    };
    let mut problems = document.problems;
    let mut removed = Removed::default();
    // With duplicate keys already found, serde would refuse the file: go straight to diagnosis.
    let direct = if problems.is_empty() {
        serde_yaml::from_str::<Config>(text).map_err(Some)
    } else {
        Err(None)
    };
    let config = match direct {
        Ok(config) => Some(config),
        Err(err) => {
            let config = diagnose(&mut tree, &mut problems, &mut removed);
            if let (true, Some(err)) = (problems.is_empty(), err) {
                problems.push(serde_problem(&err));
            }
            config
        }
    };
    if let Some(config) = &config {
        for issue in check(config) {
            if let Some(problem) = place(&issue, &tree, &removed) {
                problems.push(problem);
            }
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            problems.sort_by_key(|problem| (problem.line, problem.column));
            Err(problems)
        }
    }
}

/// A problem for a serde_yaml error we could not attribute to a node.
fn serde_problem(err: &serde_yaml::Error) -> Problem {
    let (line, column) = err
        .location()
        .map_or((1, 1), |location| (location.line(), location.column()));
    Problem {
        line,
        column,
        message: format!("this is not a valid config: {err}"),
    }
}

/// Map keys that the diagnosis took out of the tree, as (id of the map, key): a later check of
/// the default that replaced them would only repeat the problem already reported.
#[derive(Default)]
struct Removed(HashSet<(usize, String)>);

/// Replays serde over `tree`, removing each node it refuses; returns the `Config` serde finally
/// accepts, or `None` when an error cannot be tied to a node.
fn diagnose(tree: &mut Node, problems: &mut Vec<Problem>, removed: &mut Removed) -> Option<Config> {
    // Each round removes at least one node, so this bound is never the reason to stop on a real file.
    for _ in 0..1000 {
        let emitted = located::emit(tree);
        let err = match serde_yaml::from_str::<Config>(&emitted.text) {
            Ok(config) => return Some(config),
            Err(err) => err,
        };
        let location = err.location()?;
        let target = emitted
            .target_at(location.line(), location.column())?
            .clone();
        let (parent_path, last) = match target.path.split_last() {
            Some((last, parent)) => (parent.to_vec(), Some(last.clone())),
            None => (Vec::new(), None),
        };
        match (target.part, last) {
            (Part::Key, Some(Seg::Key(key))) => {
                let parent = tree.get(&parent_path)?;
                let pos = parent.key_pos(&key)?;
                problems.push(Problem::at(pos, unknown_key_message(&key, &parent_path)));
                drop_node(tree, &target.path, removed)?;
            }
            (Part::Value, _) => {
                let node = tree.get(&target.path)?;
                let message = err.to_string();
                if let (Kind::Map(_), Some(field)) = (&node.kind, missing_field(&message)) {
                    if let Some(message) = missing_key_message(field, &target.path, node, removed) {
                        problems.push(Problem::at(node.pos, message));
                    }
                    if target.path.is_empty() {
                        if tree.child(&Seg::Key(field.to_owned())).is_some() {
                            return None;
                        }
                        tree.insert_empty_list(field);
                    } else {
                        drop_node(tree, &target.path, removed)?;
                    }
                } else {
                    problems.push(Problem::at(
                        node.pos,
                        format!(
                            "{} must be {}, found {}",
                            value_name(&target.path),
                            expectation(&target.path),
                            describe(node)
                        ),
                    ));
                    drop_node(tree, &target.path, removed)?;
                }
            }
            _ => return None,
        }
    }
    None
}

/// Removes the node at `path`; a required list (`keypads`) is emptied instead, so its absence is
/// not reported a second time.
fn drop_node(tree: &mut Node, path: &[Seg], removed: &mut Removed) -> Option<()> {
    let (last, parent_path) = path.split_last()?;
    let parent = tree.get_mut(parent_path)?;
    if let Seg::Key(key) = last {
        removed.0.insert((parent.id, key.clone()));
        if parent_path.is_empty() && key == "keypads" {
            parent.remove(last)?;
            parent.insert_empty_list(key);
            return Some(());
        }
    }
    parent.remove(last)
}

/// serde's wording for a missing required field: "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.split("missing field `").nth(1)?;
    rest.split('`').next()
}

/// `None` when the key is missing because the diagnosis removed it (already reported).
fn missing_key_message(
    field: &str,
    path: &[Seg],
    node: &Node,
    removed: &Removed,
) -> Option<String> {
    let reported = |key: &str| removed.0.contains(&(node.id, key.to_owned()));
    if schema_name(path) == "keypads[]" {
        let missing: Vec<String> = ["name", "protocol", "topic"]
            .into_iter()
            .filter(|key| node.child(&Seg::Key((*key).to_owned())).is_none() && !reported(key))
            .map(|key| format!("`{key}`"))
            .collect();
        if missing.is_empty() {
            return None;
        }
        return Some(format!(
            "this keypad has no {}: every keypad needs `name`, `protocol` and `topic`",
            missing.join(" and no ")
        ));
    }
    if reported(field) {
        return None;
    }
    if path.is_empty() && field == "keypads" {
        return Some(
            "`keypads` is missing: list the keypads the bridge listens to \
             (write `keypads: []` if there are none yet)"
                .into(),
        );
    }
    Some(format!("`{field}` is missing {}", section_name(path)))
}

fn unknown_key_message(key: &str, parent: &[Seg]) -> String {
    let allowed = allowed_keys(parent);
    let mut message = format!("unknown key `{key}` {}", section_name(parent));
    if let Some(close) = closest(key, allowed.iter().map(String::as_str)) {
        message.push_str(&format!(": did you mean `{close}`?"));
    } else if key == "<<" {
        message.push_str(": merge keys are not supported, write the settings out.");
    } else if let Some(home) = section_holding(key) {
        message.push_str(&format!(": `{key}` belongs {home}."));
    } else {
        message.push('.');
    }
    message.push_str(&format!(
        " The keys allowed there are {}",
        allowed.join(", ")
    ));
    message
}

/// "at the top level", "in `mqtt`", "in a keypad".
fn section_name(path: &[Seg]) -> String {
    match schema_name(path).as_str() {
        "" => "at the top level".into(),
        "keypads[]" => "in a keypad".into(),
        name => format!("in `{name}`"),
    }
}

/// How a message names the value at `path`: "`port`", "each entry of `modes`".
fn value_name(path: &[Seg]) -> String {
    match path {
        [] => "the file".into(),
        [.., Seg::Key(key)] => format!("`{key}`"),
        [.., Seg::Key(key), Seg::Index(_)] => format!("each entry of `{key}`"),
        [.., Seg::Index(_)] => "each entry".into(),
    }
}

/// The path with list indices blurred, as the schema knows it: `keypads[].name`.
fn schema_name(path: &[Seg]) -> String {
    let mut name = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(key);
            }
            Seg::Index(_) => name.push_str("[]"),
        }
    }
    name
}

/// The defaults as a YAML tree, with one template keypad: the source of truth for which keys
/// exist where, so messages cannot drift from the structs.
fn schema() -> Value {
    let mut config = Config::default();
    config.keypads.push(KeypadConfig::default());
    serde_yaml::to_value(config).unwrap_or(Value::Null)
}

fn schema_at(path: &[Seg]) -> Option<Value> {
    let mut node = schema();
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(key), Value::Mapping(mut map)) => map.remove(key.as_str())?,
            (Seg::Index(_), Value::Sequence(items)) => items.into_iter().next()?,
            _ => return None,
        };
    }
    Some(node)
}

fn allowed_keys(path: &[Seg]) -> Vec<String> {
    match schema_at(path) {
        Some(Value::Mapping(map)) => map
            .keys()
            .filter_map(|key| key.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Where a key that is unknown here does exist, for "`port` belongs in `mqtt`".
fn section_holding(key: &str) -> Option<String> {
    fn search(node: &Value, path: &mut Vec<Seg>, key: &str) -> Option<String> {
        match node {
            Value::Mapping(map) => {
                if map.contains_key(key) {
                    return Some(section_name(path));
                }
                for (name, child) in map {
                    path.push(Seg::Key(name.as_str()?.to_owned()));
                    let found = search(child, path, key);
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            Value::Sequence(items) => {
                path.push(Seg::Index(0));
                let found = items.first().and_then(|item| search(item, path, key));
                path.pop();
                found
            }
            _ => None,
        }
    }
    search(&schema(), &mut Vec::new(), key)
}

const ARM_MODES: &str = "one of armed_away, armed_home, armed_night, armed_vacation";

/// What the value at `path` should be, in plain words.
fn expectation(path: &[Seg]) -> String {
    if let Some(words) = expected_words(&schema_name(path)) {
        return words.into();
    }
    match schema_at(path) {
        Some(Value::Mapping(_)) => format!(
            "a group of `key: value` settings ({})",
            allowed_keys(path).join(", ")
        ),
        Some(Value::Sequence(_)) => "a list".into(),
        Some(Value::Bool(_)) => "true or false".into(),
        Some(Value::Number(_)) => "a number".into(),
        _ => "a text".into(),
    }
}

/// The words for each setting that is not a group, by its schema name.
fn expected_words(name: &str) -> Option<&'static str> {
    let words = match name {
        "mqtt.host" => "the broker's host name or IP address, such as localhost",
        "mqtt.port" => "a number from 1 to 65535",
        "mqtt.client_id" => "a name for this client, such as keypad-bridge",
        "mqtt.username" => "a user name, or nothing to connect without one",
        "mqtt.password_file" => "the path of a file holding the password, or nothing",
        "mqtt.tls.ca_file" => "the path of a CA certificate file, or nothing for no TLS",
        "mqtt.base_topic" => "a topic such as keypad-bridge",
        "mqtt.keepalive_s" => "a number of seconds from 5 to 65535",
        "store.path" => "the path of the database directory",
        "store.secret_file" => "the path of the secret file",
        "store.cache_mb" => "a number of megabytes, at least 1",
        "codes.min_length" | "codes.max_length" => "a number of digits from 4 to 12",
        "codes.argon2.memory_kib" => "a number of KiB, such as 19456",
        "codes.argon2.iterations" => "a number, at least 1",
        "codes.argon2.parallelism" => "a number from 1 to 16",
        "lockout.max_failures" => "a number of wrong codes, at least 1",
        "lockout.window_s" | "lockout.duration_s" | "lockout.max_duration_s" => {
            "a number of seconds, at least 1"
        }
        "alarm.modes" => "a list of arm modes, such as [armed_away, armed_home]",
        "alarm.modes[]" | "alarm.toggle_mode" => ARM_MODES,
        "alarm.code_arm_required" | "admin.trust_broker" | "homeassistant.discovery" => {
            "true or false"
        }
        "alarm.exit_delay_s.armed_away"
        | "alarm.exit_delay_s.armed_home"
        | "alarm.exit_delay_s.armed_night"
        | "alarm.exit_delay_s.armed_vacation"
        | "alarm.entry_delay_s" => "a number of seconds from 0 to 3600",
        "alarm.trigger_time_s" => "a number of seconds from 1 to 86400",
        "activity.max_entries" => "a number from 1 to 1000000",
        "homeassistant.prefix" => "a topic such as homeassistant",
        "timezone" => "a time zone name such as Europe/Paris, or nothing for the system's",
        "keypads" => "a list of keypads, each with `name`, `protocol` and `topic`",
        "keypads[]" => "a keypad with `name`, `protocol` and `topic`",
        "keypads[].name" => "a name made of a-z, 0-9, `_` and `-`, such as hall",
        "keypads[].protocol" => "one of zigbee2mqtt, json, plain",
        "keypads[].topic" => "an MQTT topic such as zigbee2mqtt/Hall keypad",
        "log.level" => "a log level such as info or debug",
        _ => return None,
    };
    Some(words)
}

fn is_null(node: &Node) -> bool {
    match &node.kind {
        Kind::Scalar {
            text,
            style: Style::Plain,
        } if node.tag.is_none() => {
            matches!(serde_yaml::from_str::<Value>(text), Ok(Value::Null))
        }
        _ => false,
    }
}

/// What was found, in plain words: "the text \"abc\"", "the number 99999", "a list".
fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Map(entries) if entries.is_empty() => "an empty group `{}`".into(),
        Kind::Map(_) => "a group of `key: value` settings".into(),
        Kind::Seq(_) => "a list".into(),
        Kind::Scalar { text, style } => {
            let shown = quote_for_humans(text);
            if *style == Style::Plain && node.tag.is_none() {
                match serde_yaml::from_str::<Value>(text) {
                    Ok(Value::Null) => "nothing (an empty value)".into(),
                    Ok(Value::Bool(value)) => format!("{value}"),
                    Ok(Value::Number(_)) => format!("the number {text}"),
                    _ => format!("the text {shown}"),
                }
            } else if *style == Style::Quoted
                && matches!(
                    serde_yaml::from_str::<Value>(text),
                    Ok(Value::Number(_) | Value::Bool(_))
                )
            {
                format!("the text {shown} (the quotes make it text: remove them)")
            } else {
                format!("the text {shown}")
            }
        }
    }
}

fn quote_for_humans(text: &str) -> String {
    const LIMIT: usize = 60;
    if text.chars().count() <= LIMIT {
        format!("{text:?}")
    } else {
        let start: String = text.chars().take(LIMIT).collect();
        format!("{start:?}…")
    }
}

/// The candidate a typo most likely meant, if any is close enough.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normalise = |text: &str| -> Vec<char> {
        text.chars()
            .map(|c| match c {
                '-' | ' ' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    };
    let word = normalise(word);
    let limit = match word.len() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word, &normalise(candidate)), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance where swapping two neighbours counts as one edit ("prot" → "port").
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// A semantic problem, placed at the first of `at` (dotted paths) that the file spells out.
struct Issue {
    at: Vec<String>,
    message: String,
}

fn issue(at: &[&str], message: String) -> Issue {
    Issue {
        at: at.iter().map(|path| (*path).to_owned()).collect(),
        message,
    }
}

/// Parses "keypads[2].name" into segments.
fn path_of(dotted: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in dotted.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next() {
            path.push(Seg::Key(key.to_owned()));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                path.push(Seg::Index(index));
            }
        }
    }
    path
}

/// Where an issue goes: `None` when the value it is about replaced one already reported.
fn place(issue: &Issue, tree: &Node, removed: &Removed) -> Option<Problem> {
    let mut fallback = None;
    for dotted in &issue.at {
        let mut node = tree;
        let mut found = true;
        for seg in path_of(dotted) {
            match node.child(&seg) {
                Some(child) => node = child,
                None => {
                    if let Seg::Key(key) = &seg {
                        if removed.0.contains(&(node.id, key.clone())) {
                            return None;
                        }
                    }
                    found = false;
                    break;
                }
            }
        }
        if found {
            return Some(Problem::at(node.pos, issue.message.clone()));
        }
        fallback.get_or_insert(node.pos);
    }
    Some(Problem::at(
        fallback.unwrap_or(tree.pos),
        issue.message.clone(),
    ))
}

/// Checks a topic used as a prefix (`base_topic`, the discovery prefix).
fn check_prefix(issues: &mut Vec<Issue>, at: &str, key: &str, topic: &str) {
    if topic.is_empty() {
        issues.push(issue(&[at], format!("`{key}` must not be empty")));
    } else if topic.contains(['+', '#']) {
        issues.push(issue(
            &[at],
            format!("`{key}` must not contain `+` or `#` (MQTT wildcards), found {topic:?}"),
        ));
    } else if topic.starts_with('/') || topic.ends_with('/') {
        issues.push(issue(
            &[at],
            format!("`{key}` must not start or end with `/`, found {topic:?}"),
        ));
    }
}

/// Range check with the unit read off the key's suffix (`_s` seconds, `_mb`, `_kib`).
fn check_range(out: &mut Vec<Issue>, at: &str, value: u64, range: RangeInclusive<u64>) {
    if range.contains(&value) {
        return;
    }
    let key = at.rsplit('.').next().unwrap_or(at);
    let unit = match key.rsplit('_').next() {
        Some("s") => " seconds",
        Some("mb") => " MB",
        Some("kib") => " KiB",
        _ => "",
    };
    let amount = |n: u64| match unit {
        " seconds" if n == 1 => "1 second".to_owned(),
        _ => format!("{n}{unit}"),
    };
    let bounds = match (*range.start(), *range.end()) {
        (low, u64::MAX) => format!("at least {}", amount(low)),
        (0, high) => format!("at most {}", amount(high)),
        (low, high) => format!("from {low} to {}", amount(high)),
    };
    out.push(issue(
        &[at],
        format!("`{key}` must be {bounds}, found {value}"),
    ));
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Everything serde cannot check: ranges, topics, names, cross-key rules.
fn check(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    let out = &mut issues;
    let mqtt = &config.mqtt;
    check_range(out, "mqtt.port", mqtt.port.into(), 1..=65535);
    if mqtt.host.trim().is_empty() {
        out.push(issue(
            &["mqtt.host"],
            "`host` must name the MQTT broker, such as localhost".into(),
        ));
    }
    if mqtt.client_id.is_empty() {
        out.push(issue(
            &["mqtt.client_id"],
            "`client_id` must not be empty: the broker tells its clients apart by it".into(),
        ));
    }
    check_prefix(out, "mqtt.base_topic", "base_topic", &mqtt.base_topic);
    check_range(out, "mqtt.keepalive_s", mqtt.keepalive_s, 5..=65535);
    check_range(out, "store.cache_mb", config.store.cache_mb, 1..=u64::MAX);

    let codes = &config.codes;
    let min_length = u64::try_from(codes.min_length).unwrap_or(u64::MAX);
    let max_length = u64::try_from(codes.max_length).unwrap_or(u64::MAX);
    check_range(out, "codes.min_length", min_length, 4..=12);
    check_range(out, "codes.max_length", max_length, 4..=12);
    if codes.min_length > codes.max_length {
        out.push(issue(
            &["codes.max_length", "codes.min_length"],
            format!(
                "`max_length` ({}) must not be less than `min_length` ({})",
                codes.max_length, codes.min_length
            ),
        ));
    }
    let argon2 = &codes.argon2;
    check_range(
        out,
        "codes.argon2.iterations",
        argon2.iterations.into(),
        1..=u64::MAX,
    );
    check_range(
        out,
        "codes.argon2.parallelism",
        argon2.parallelism.into(),
        1..=16,
    );
    let least_memory = 8 * u64::from(argon2.parallelism.max(1));
    if u64::from(argon2.memory_kib) < least_memory {
        out.push(issue(
            &["codes.argon2.memory_kib", "codes.argon2.parallelism"],
            format!(
                "`memory_kib` must be at least 8 KiB per lane of `parallelism` ({least_memory} here), found {}",
                argon2.memory_kib
            ),
        ));
    }
    check_range(
        out,
        "codes.argon2.memory_kib",
        argon2.memory_kib.into(),
        0..=4_194_304,
    );

    let lockout = &config.lockout;
    check_range(
        out,
        "lockout.max_failures",
        lockout.max_failures.into(),
        1..=u64::MAX,
    );
    check_range(out, "lockout.window_s", lockout.window_s, 1..=u64::MAX);
    check_range(out, "lockout.duration_s", lockout.duration_s, 1..=u64::MAX);
    if lockout.max_duration_s < lockout.duration_s {
        out.push(issue(
            &["lockout.max_duration_s", "lockout.duration_s"],
            format!(
                "`max_duration_s` ({}) must not be shorter than `duration_s` ({})",
                lockout.max_duration_s, lockout.duration_s
            ),
        ));
    }

    let alarm = &config.alarm;
    if alarm.modes.is_empty() {
        out.push(issue(
            &["alarm.modes"],
            "`modes` must list at least one arm mode, such as [armed_away]".into(),
        ));
    }
    for (index, mode) in alarm.modes.iter().enumerate() {
        if alarm.modes[..index].contains(mode) {
            out.push(issue(
                &[&format!("alarm.modes[{index}]")],
                format!("{} is listed twice in `modes`", mode_name(*mode)),
            ));
        }
    }
    if !alarm.modes.is_empty() && !alarm.modes.contains(&alarm.toggle_mode) {
        let modes: Vec<&str> = alarm.modes.iter().map(|mode| mode_name(*mode)).collect();
        out.push(issue(
            &["alarm.toggle_mode", "alarm.modes"],
            format!(
                "`toggle_mode` is {}, which is not in `modes` ({}): add it to `modes` or pick one of them",
                mode_name(alarm.toggle_mode),
                modes.join(", ")
            ),
        ));
    }
    let delays = &alarm.exit_delay_s;
    for (mode, delay) in [
        ("armed_away", delays.armed_away),
        ("armed_home", delays.armed_home),
        ("armed_night", delays.armed_night),
        ("armed_vacation", delays.armed_vacation),
    ] {
        if delay > 3600 {
            out.push(issue(
                &[&format!("alarm.exit_delay_s.{mode}")],
                format!("the exit delay for {mode} must be at most 3600 seconds (one hour), found {delay}"),
            ));
        }
    }
    check_range(out, "alarm.entry_delay_s", alarm.entry_delay_s, 0..=3600);
    check_range(out, "alarm.trigger_time_s", alarm.trigger_time_s, 1..=86400);
    check_range(
        out,
        "activity.max_entries",
        config.activity.max_entries,
        1..=1_000_000,
    );
    check_prefix(
        out,
        "homeassistant.prefix",
        "prefix",
        &config.homeassistant.prefix,
    );

    if let Some(name) = &config.timezone {
        if jiff::tz::TimeZone::get(name).is_err() {
            let names: Vec<String> = jiff::tz::db()
                .available()
                .map(|zone| zone.as_str().to_owned())
                .collect();
            let hint = closest(name, names.iter().map(String::as_str))
                .map(|close| format!(" (did you mean {close}?)"))
                .unwrap_or_default();
            out.push(issue(
                &["timezone"],
                format!(
                    "`timezone` must be a time zone name such as Europe/Paris, found {name:?}{hint}"
                ),
            ));
        }
    }

    check_keypads(out, config);

    let level = config.log.level.trim();
    let bare_word = level.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let refusal = match tracing_subscriber::EnvFilter::try_new(level) {
        Err(err) => Some(format!(" ({err})")),
        Ok(_) if level.is_empty() => Some(String::new()),
        Ok(_) if bare_word && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) => Some(
            closest(level, LOG_LEVELS)
                .map(|close| format!(" (did you mean {close}?)"))
                .unwrap_or_default(),
        ),
        Ok(_) => None,
    };
    if let Some(hint) = refusal {
        out.push(issue(
            &["log.level"],
            format!(
                "`level` must be one of error, warn, info, debug, trace, off, or a filter such as \
                 `info,keypad_bridge=debug`; found {:?}{hint}",
                config.log.level
            ),
        ));
    }
    issues
}

/// What a topic the bridge publishes to or reads for another purpose than keypads is, in
/// words that finish "keypad topic T is …": a keypad listening there would read the bridge's
/// own replies or panel status (or Home Assistant's and Zigbee2MQTT's status) as code-less
/// entries.
fn reserved_topics(config: &Config) -> Vec<(String, String)> {
    let mut reserved = Vec::new();
    let zigbee = config
        .keypads
        .iter()
        .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt);
    for keypad in zigbee {
        reserved.push((
            crate::topics::Topics::zigbee2mqtt_set(&keypad.topic),
            format!(
                "where the bridge answers the Zigbee2MQTT keypad {:?} (its topic + /set)",
                keypad.name
            ),
        ));
        if let Some(z2m_base) = keypad.topic.split('/').next() {
            reserved.push((
                format!("{z2m_base}/bridge/state"),
                format!(
                    "where Zigbee2MQTT (of keypad {:?}) says whether it is online, which the \
                     bridge reads",
                    keypad.name
                ),
            ));
        }
    }
    let topics = crate::topics::Topics::new(config);
    reserved.push((
        topics.ha_status.clone(),
        "Home Assistant's status topic (`homeassistant.prefix` + /status), which the bridge \
         reads"
            .into(),
    ));
    if config.homeassistant.discovery {
        for discovery in crate::homeassistant::discovery(config, &topics) {
            reserved.push((
                discovery.topic,
                "a Home Assistant discovery topic the bridge publishes".into(),
            ));
        }
    }
    reserved
}

fn check_keypads(out: &mut Vec<Issue>, config: &Config) {
    let base = format!("{}/", config.mqtt.base_topic);
    let reserved = reserved_topics(config);
    for (index, keypad) in config.keypads.iter().enumerate() {
        let at_name = format!("keypads[{index}].name");
        let at_topic = format!("keypads[{index}].topic");
        let name = &keypad.name;
        if name.is_empty() {
            out.push(issue(
                &[&at_name],
                "a keypad's `name` must not be empty".into(),
            ));
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            out.push(issue(
                &[&at_name],
                format!(
                    "keypad name {name:?} may only use lowercase letters a-z, digits, `_` and `-`"
                ),
            ));
        }
        if config.keypads[..index]
            .iter()
            .any(|other| other.name == *name)
        {
            out.push(issue(
                &[&at_name],
                format!("two keypads are named {name:?}: names must differ"),
            ));
        }
        let topic = &keypad.topic;
        if topic.is_empty() {
            out.push(issue(
                &[&at_topic],
                "a keypad's `topic` must not be empty".into(),
            ));
        } else if topic.contains(['+', '#']) {
            out.push(issue(
                &[&at_topic],
                format!("keypad topic {topic:?} must not contain `+` or `#` (MQTT wildcards)"),
            ));
        } else if topic.starts_with(&base) {
            out.push(issue(
                &[&at_topic],
                format!(
                    "keypad topic {topic:?} is under `base_topic` ({base}), where the bridge \
                     itself publishes: pick a topic outside it"
                ),
            ));
        } else if let Some((_, what)) = reserved.iter().find(|(t, _)| t == topic) {
            out.push(issue(
                &[&at_topic],
                format!(
                    "keypad topic {topic:?} is {what}: the bridge would take those messages for \
                     keypad entries; pick another topic"
                ),
            ));
        }
        if let Some(other) = config.keypads[..index]
            .iter()
            .find(|other| other.topic == *topic)
        {
            out.push(issue(
                &[&at_topic],
                format!(
                    "keypads {:?} and {name:?} both listen on {topic:?}: each keypad needs its own topic",
                    other.name
                ),
            ));
        }
    }
}

fn mode_name(mode: ArmMode) -> &'static str {
    match mode {
        ArmMode::ArmedHome => "armed_home",
        ArmMode::ArmedAway => "armed_away",
        ArmMode::ArmedNight => "armed_night",
        ArmMode::ArmedVacation => "armed_vacation",
    }
}

/// A YAML tree whose nodes remember their line and column, read with saphyr-parser (serde_yaml
/// does not expose positions), and written back out in a layout where every node starts at its
/// own place, so that a serde_yaml error location names exactly one node.
mod located {
    use std::collections::{BTreeMap, HashMap};

    use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

    use super::Problem;

    /// Deeper nesting than any config needs; the limit keeps recursion safe on hostile input.
    const MAX_DEPTH: usize = 64;
    /// Bounds alias expansion ("billion laughs").
    const MAX_NODES: usize = 100_000;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Pos {
        pub line: usize,
        pub column: usize,
    }

    impl Pos {
        fn of(span: Span) -> Pos {
            Pos {
                line: span.start.line(),
                column: span.start.col() + 1,
            }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Node {
        /// Identifies a map across edits of the tree, when indices shift.
        pub id: usize,
        pub pos: Pos,
        pub tag: Option<String>,
        pub kind: Kind,
    }

    #[derive(Clone, Debug)]
    pub enum Kind {
        /// Plain scalars are typed by YAML's rules (`1883` is a number); quoted and block
        /// scalars are always text.
        Scalar {
            text: String,
            style: Style,
        },
        Seq(Vec<Node>),
        Map(Vec<Entry>),
    }

    #[derive(Clone, Debug)]
    pub struct Entry {
        pub key: String,
        pub key_pos: Pos,
        pub value: Node,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Style {
        Plain,
        Quoted,
        /// `|` and `>` scalars.
        Block,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Seg {
        Key(String),
        Index(usize),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Part {
        Key,
        Value,
    }

    #[derive(Clone, Debug)]
    pub struct Target {
        pub path: Vec<Seg>,
        pub part: Part,
    }

    impl Node {
        pub fn child(&self, seg: &Seg) -> Option<&Node> {
            match (&self.kind, seg) {
                (Kind::Map(entries), Seg::Key(key)) => entries
                    .iter()
                    .find(|entry| entry.key == *key)
                    .map(|entry| &entry.value),
                (Kind::Seq(items), Seg::Index(index)) => items.get(*index),
                _ => None,
            }
        }

        pub fn get(&self, path: &[Seg]) -> Option<&Node> {
            path.iter().try_fold(self, |node, seg| node.child(seg))
        }

        pub fn get_mut(&mut self, path: &[Seg]) -> Option<&mut Node> {
            let mut node = self;
            for seg in path {
                node = match (&mut node.kind, seg) {
                    (Kind::Map(entries), Seg::Key(key)) => {
                        &mut entries.iter_mut().find(|entry| entry.key == *key)?.value
                    }
                    (Kind::Seq(items), Seg::Index(index)) => items.get_mut(*index)?,
                    _ => return None,
                };
            }
            Some(node)
        }

        pub fn key_pos(&self, key: &str) -> Option<Pos> {
            match &self.kind {
                Kind::Map(entries) => entries
                    .iter()
                    .find(|entry| entry.key == key)
                    .map(|entry| entry.key_pos),
                _ => None,
            }
        }

        /// Removes a direct child; `None` if there was none.
        pub fn remove(&mut self, seg: &Seg) -> Option<()> {
            match (&mut self.kind, seg) {
                (Kind::Map(entries), Seg::Key(key)) => {
                    let index = entries.iter().position(|entry| entry.key == *key)?;
                    entries.remove(index);
                    Some(())
                }
                (Kind::Seq(items), Seg::Index(index)) if *index < items.len() => {
                    items.remove(*index);
                    Some(())
                }
                _ => None,
            }
        }

        /// Adds `key: []` to a map, standing in for a required list.
        pub fn insert_empty_list(&mut self, key: &str) {
            let pos = self.pos;
            if let Kind::Map(entries) = &mut self.kind {
                entries.push(Entry {
                    key: key.to_owned(),
                    key_pos: pos,
                    value: Node {
                        id: usize::MAX,
                        pos,
                        tag: None,
                        kind: Kind::Seq(Vec::new()),
                    },
                });
            }
        }
    }

    pub struct Document {
        /// `None` for a file without any document (empty, or only comments).
        pub root: Option<Node>,
        /// Duplicate and non-text keys, already left out of `root`.
        pub problems: Vec<Problem>,
    }

    struct Open {
        node: Node,
        /// A map's key waiting for its value.
        key: Option<Node>,
        raw_entries: Vec<(Node, Node)>,
        anchor: usize,
    }

    fn problem(pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    fn tag_text(tag: Option<&Tag>) -> Option<String> {
        tag.map(|tag| {
            if tag.handle == "!" {
                format!("!{}", tag.suffix)
            } else {
                format!("!<{}{}>", tag.handle, tag.suffix)
            }
        })
    }

    fn count(node: &Node) -> usize {
        match &node.kind {
            Kind::Scalar { .. } => 1,
            Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
            Kind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|entry| 1 + count(&entry.value))
                    .sum::<usize>()
            }
        }
    }

    /// Reads the text into a tree; a syntax error is the one problem returned.
    pub fn read(text: &str) -> Result<Document, Problem> {
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Open> = Vec::new();
        let mut anchors: HashMap<usize, Node> = HashMap::new();
        let mut problems = Vec::new();
        let mut root = None;
        let mut documents = 0;
        let mut next_id = 0;
        let mut nodes = 0;
        while let Some(event) = parser.next_event() {
            let (event, span) = event.map_err(|err| {
                let pos = Pos {
                    line: err.marker().line(),
                    column: err.marker().col() + 1,
                };
                problem(pos, format!("this is not valid YAML: {}", err.info()))
            })?;
            let pos = Pos::of(span);
            let is_map = matches!(event, Event::MappingStart(..));
            next_id += 1;
            let node = |kind| Node {
                id: next_id,
                pos,
                tag: None,
                kind,
            };
            let done = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(problem(
                            pos,
                            "a second YAML document starts here (`---`): keep all settings in one",
                        ));
                    }
                    None
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let mut scalar = node(Kind::Scalar {
                        text: value.into_owned(),
                        style: match style {
                            ScalarStyle::Plain => Style::Plain,
                            ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
                            _ => Style::Block,
                        },
                    });
                    scalar.tag = tag_text(tag.as_deref());
                    Some((scalar, anchor))
                }
                Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(problem(pos, "the settings are nested too deeply here"));
                    }
                    let kind = if is_map {
                        Kind::Map(Vec::new())
                    } else {
                        Kind::Seq(Vec::new())
                    };
                    let mut open = node(kind);
                    open.tag = tag_text(tag.as_deref());
                    stack.push(Open {
                        node: open,
                        key: None,
                        raw_entries: Vec::new(),
                        anchor,
                    });
                    None
                }
                Event::SequenceEnd | Event::MappingEnd => stack.pop().map(|open| {
                    let mut node = open.node;
                    if let Kind::Map(entries) = &mut node.kind {
                        *entries = check_keys(open.raw_entries, &mut problems);
                    }
                    (node, open.anchor)
                }),
                Event::Alias(id) => {
                    let mut copy = anchors.get(&id).cloned().ok_or_else(|| {
                        problem(pos, "this alias (`*name`) refers to no anchor (`&name`)")
                    })?;
                    nodes += count(&copy);
                    if nodes > MAX_NODES {
                        return Err(problem(pos, "aliases here expand to too many values"));
                    }
                    copy.pos = pos;
                    Some((copy, 0))
                }
                _ => None,
            };
            let Some((node, anchor)) = done else { continue };
            if anchor != 0 {
                anchors.insert(anchor, node.clone());
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(open) => match &mut open.node.kind {
                    Kind::Seq(items) => items.push(node),
                    _ => match open.key.take() {
                        None => open.key = Some(node),
                        Some(key) => open.raw_entries.push((key, node)),
                    },
                },
            }
        }
        Ok(Document { root, problems })
    }

    /// Keeps the first of duplicate keys and only text keys, noting a problem for the rest.
    fn check_keys(raw: Vec<(Node, Node)>, problems: &mut Vec<Problem>) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        for (key, value) in raw {
            let Kind::Scalar { text, .. } = key.kind else {
                problems.push(problem(
                    key.pos,
                    "a key must be a plain name, not a list or a group",
                ));
                continue;
            };
            if let Some(first) = entries.iter().find(|entry| entry.key == text) {
                problems.push(problem(
                    key.pos,
                    format!(
                        "`{text}` is set twice in the same place (first at line {}, column {}): keep one",
                        first.key_pos.line, first.key_pos.column
                    ),
                ));
                continue;
            }
            entries.push(Entry {
                key: text,
                key_pos: key.pos,
                value,
            });
        }
        entries
    }

    /// The tree as YAML text for serde_yaml, and which node each error location names.
    pub struct Emitted {
        pub text: String,
        targets: BTreeMap<(usize, usize), Target>,
    }

    impl Emitted {
        /// The node at a serde_yaml location (1-based); the nearest start to its left on the
        /// line if the column is not exact.
        pub fn target_at(&self, line: usize, column: usize) -> Option<&Target> {
            self.targets
                .range(..=(line, column))
                .next_back()
                .filter(|((found, _), _)| *found == line)
                .map(|(_, target)| target)
        }
    }

    /// Writes block YAML where each map entry is `? "key"` / `:` / value on its own lines, so a
    /// map's start, its first key and every value sit at different places.
    pub fn emit(root: &Node) -> Emitted {
        let mut emitter = Emitter {
            lines: Vec::new(),
            targets: BTreeMap::new(),
        };
        emitter.node(root, 0, &mut Vec::new());
        let mut text = emitter.lines.join("\n");
        text.push('\n');
        Emitted {
            text,
            targets: emitter.targets,
        }
    }

    struct Emitter {
        lines: Vec<String>,
        targets: BTreeMap<(usize, usize), Target>,
    }

    impl Emitter {
        fn line(&mut self, text: String) -> usize {
            self.lines.push(text);
            self.lines.len()
        }

        fn mark(&mut self, line: usize, column: usize, path: &[Seg], part: Part) {
            self.targets.insert(
                (line, column),
                Target {
                    path: path.to_vec(),
                    part,
                },
            );
        }

        fn node(&mut self, node: &Node, indent: usize, path: &mut Vec<Seg>) {
            let pad = " ".repeat(indent);
            match &node.kind {
                Kind::Scalar { text, style } => {
                    let tag = node
                        .tag
                        .as_ref()
                        .map(|tag| format!("{tag} "))
                        .unwrap_or_default();
                    let line = self.line(format!(
                        "{pad}{tag}{}",
                        scalar(text, *style == Style::Plain)
                    ));
                    self.mark(line, indent + 1, path, Part::Value);
                }
                Kind::Seq(items) if items.is_empty() => {
                    let line = self.line(format!("{pad}[]"));
                    self.mark(line, indent + 1, path, Part::Value);
                }
                Kind::Map(entries) if entries.is_empty() => {
                    let line = self.line(format!("{pad}{{}}"));
                    self.mark(line, indent + 1, path, Part::Value);
                }
                Kind::Seq(items) => {
                    for (index, item) in items.iter().enumerate() {
                        let line = self.line(format!("{pad}-"));
                        if index == 0 {
                            self.mark(line, indent + 1, path, Part::Value);
                        }
                        path.push(Seg::Index(index));
                        self.value(item, indent, line, path);
                        path.pop();
                    }
                }
                Kind::Map(entries) => {
                    for (index, entry) in entries.iter().enumerate() {
                        let line = self.line(format!("{pad}? {}", scalar(&entry.key, false)));
                        if index == 0 {
                            self.mark(line, indent + 1, path, Part::Value);
                        }
                        path.push(Seg::Key(entry.key.clone()));
                        self.mark(line, indent + 3, path, Part::Key);
                        let colon = self.line(format!("{pad}:"));
                        self.value(&entry.value, indent, colon, path);
                        path.pop();
                    }
                }
            }
        }

        /// A value after a `-` or `:` line at `indent`; an empty one stays on that line.
        fn value(&mut self, node: &Node, indent: usize, indicator: usize, path: &mut Vec<Seg>) {
            match &node.kind {
                Kind::Scalar {
                    text,
                    style: Style::Plain,
                } if text.is_empty() && node.tag.is_none() => {
                    self.mark(indicator, indent + 2, path, Part::Value);
                }
                _ => self.node(node, indent + 2, path),
            }
        }
    }

    /// A plain scalar is written as it was (it keeps its YAML type); anything else becomes a
    /// double-quoted string, which is what it was.
    fn scalar(text: &str, plain: bool) -> String {
        if plain && !text.is_empty() && !text.contains(['\n', '\r']) {
            return text.to_owned();
        }
        let mut quoted = String::with_capacity(text.len() + 2);
        quoted.push('"');
        for c in text.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\n' => quoted.push_str("\\n"),
                '\t' => quoted.push_str("\\t"),
                c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                    quoted.push_str(&format!("\\u{:04x}", u32::from(c)));
                }
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.yaml");

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(problems) => problems,
        }
    }

    fn as_value(config: &Config) -> Value {
        serde_yaml::to_value(config).unwrap()
    }

    #[test]
    fn example_file_is_the_defaults_with_relative_store_paths_and_two_keypads() {
        let config = parse(EXAMPLE).unwrap();
        let mut expected = Config::default();
        expected.store.path = "data/db".into();
        expected.store.secret_file = "data/secret".into();
        expected.keypads = vec![
            KeypadConfig {
                name: "hall".into(),
                protocol: KeypadProtocol::Zigbee2mqtt,
                topic: "zigbee2mqtt/Hall keypad".into(),
            },
            KeypadConfig {
                name: "front".into(),
                protocol: KeypadProtocol::Json,
                topic: "keypad-front/code".into(),
            },
        ];
        assert_eq!(as_value(&config), as_value(&expected));
    }

    #[test]
    fn example_file_spells_out_every_key() {
        fn keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
            if let Value::Mapping(map) = value {
                for (key, child) in map {
                    let name = format!("{prefix}{}", key.as_str().unwrap());
                    keys(child, &format!("{name}."), out);
                    out.push(name);
                }
            }
        }
        let written: Value = serde_yaml::from_str(EXAMPLE).unwrap();
        let (mut in_example, mut in_structs) = (Vec::new(), Vec::new());
        keys(&written, "", &mut in_example);
        keys(&as_value(&Config::default()), "", &mut in_structs);
        in_example.sort();
        in_structs.sort();
        assert_eq!(in_example, in_structs);
    }

    #[test]
    fn design_section_9_block_parses_to_the_defaults_with_the_hall_keypad() {
        let text = r#"
mqtt: {host: localhost, port: 1883, client_id: keypad-bridge, username: null, password_file: null,
       tls: {ca_file: null}, base_topic: keypad-bridge, keepalive_s: 30}
store: {path: /var/lib/keypad-bridge/db, secret_file: /var/lib/keypad-bridge/secret, cache_mb: 16}
codes: {min_length: 4, max_length: 6, argon2: {memory_kib: 19456, iterations: 2, parallelism: 1}}
lockout: {max_failures: 4, window_s: 600, duration_s: 90, max_duration_s: 3600}
alarm: {modes: [armed_away, armed_home, armed_night], code_arm_required: true, toggle_mode: armed_away,
        exit_delay_s: {armed_away: 30, armed_home: 0, armed_night: 0, armed_vacation: 30},
        entry_delay_s: 30, trigger_time_s: 600}
admin: {trust_broker: false}
activity: {max_entries: 10000}
homeassistant: {discovery: true, prefix: homeassistant}
timezone: null   # IANA name; null = the system's
keypads: [{name: hall, protocol: zigbee2mqtt, topic: "zigbee2mqtt/Hall keypad"}]
log: {level: info}
"#;
        let config = parse(text).unwrap();
        let mut expected = Config::default();
        expected.keypads.push(KeypadConfig {
            name: "hall".into(),
            protocol: KeypadProtocol::Zigbee2mqtt,
            topic: "zigbee2mqtt/Hall keypad".into(),
        });
        assert_eq!(as_value(&config), as_value(&expected));
    }

    #[test]
    fn two_unknown_keys_a_wrong_type_and_a_bad_value_are_all_reported_in_file_order() {
        let text = "\
mqtt:
  hots: broker
  port: abc
lockout:
  max_failures: 0
colour: blue
keypads: []
";
        let found = problems(text);
        let at: Vec<(usize, usize)> = found.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(at, [(2, 3), (3, 9), (5, 17), (6, 1)], "{found:#?}");
        assert!(found[0]
            .message
            .starts_with("unknown key `hots` in `mqtt`: did you mean `host`?"));
        assert_eq!(
            found[1].message,
            "`port` must be a number from 1 to 65535, found the text \"abc\""
        );
        assert_eq!(
            found[2].message,
            "`max_failures` must be at least 1, found 0"
        );
        assert!(found[3]
            .message
            .starts_with("unknown key `colour` at the top level."));
        assert!(found[3]
            .message
            .contains("mqtt, store, codes, lockout, alarm"));
    }

    #[test]
    fn problems_inside_flow_style_are_placed_at_their_column() {
        let found = problems("mqtt: {port: 99999, base_topic: 'a/#'}\nkeypads: []\n");
        let at: Vec<(usize, usize)> = found.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(at, [(1, 14), (1, 33)], "{found:#?}");
        assert_eq!(
            found[0].message,
            "`port` must be a number from 1 to 65535, found the number 99999"
        );
        assert!(found[1].message.contains("must not contain `+` or `#`"));
    }

    #[test]
    fn yaml_syntax_error_is_one_problem_at_its_line() {
        let found = problems("mqtt:\n  host: [localhost\nkeypads: []\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].line, 3);
        assert!(found[0].message.starts_with("this is not valid YAML"));
    }

    #[test]
    fn missing_keypads_is_reported_alongside_other_problems() {
        let found = problems("# my alarm\nmqtt:\n  port: 0\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (2, 1));
        assert!(found[0].message.starts_with("`keypads` is missing"));
        assert_eq!((found[1].line, found[1].column), (3, 9));
    }

    #[test]
    fn an_empty_keypads_list_is_accepted() {
        assert!(parse("keypads: []\n").unwrap().keypads.is_empty());
    }

    #[test]
    fn an_empty_file_asks_for_keypads() {
        let found = problems("# nothing yet\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("`keypads:`"));
    }

    #[test]
    fn a_misspelled_key_suggests_the_closest_allowed_one() {
        let found = problems("alarm:\n  entry_delay: 10\nkeypads: []\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .message
                .starts_with("unknown key `entry_delay` in `alarm`: did you mean `entry_delay_s`?"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_key_in_the_wrong_section_says_where_it_belongs() {
        let found = problems("port: 1884\nkeypads: []\n");
        assert!(
            found[0].message.contains("`port` belongs in `mqtt`"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_quoted_number_is_explained_as_text() {
        let found = problems("mqtt: {keepalive_s: \"60\"}\nkeypads: []\n");
        assert_eq!(
            found[0].message,
            "`keepalive_s` must be a number of seconds from 5 to 65535, found the text \"60\" \
             (the quotes make it text: remove them)"
        );
    }

    #[test]
    fn a_keypad_with_a_bad_protocol_is_reported_once() {
        let text = "keypads:\n  - name: hall\n    protocol: zigbee\n    topic: z/hall\n  - name: Front\n    protocol: json\n    topic: front\n";
        let found = problems(text);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (3, 15));
        assert_eq!(
            found[0].message,
            "`protocol` must be one of zigbee2mqtt, json, plain, found the text \"zigbee\""
        );
        assert_eq!((found[1].line, found[1].column), (5, 11));
        assert!(found[1].message.contains("lowercase"));
    }

    #[test]
    fn a_keypad_without_a_topic_is_reported_at_the_keypad() {
        let found = problems("keypads:\n  - name: hall\n    protocol: plain\n  - name: den\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (2, 5));
        assert!(found[0].message.starts_with("this keypad has no `topic`:"));
        assert_eq!((found[1].line, found[1].column), (4, 5));
        assert!(found[1]
            .message
            .starts_with("this keypad has no `protocol` and no `topic`:"));
    }

    #[test]
    fn a_key_set_twice_is_reported_at_the_second() {
        let found = problems("mqtt:\n  port: 1\n  port: 2\nkeypads: []\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (3, 3));
        assert!(found[0].message.contains("set twice"));
    }

    #[test]
    fn a_wrong_entry_in_modes_is_named_as_an_entry() {
        let found = problems("alarm:\n  modes: [armed_away, away, armed_home]\nkeypads: []\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (2, 23));
        assert!(found[0]
            .message
            .starts_with("each entry of `modes` must be one of armed_away"));
    }

    #[test]
    fn a_wrongly_typed_toggle_mode_is_not_blamed_again_for_its_default() {
        let found = problems("alarm:\n  modes: [armed_home]\n  toggle_mode: 3\nkeypads: []\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].line, 3);
    }

    #[test]
    fn a_default_toggle_mode_missing_from_modes_is_reported_at_modes() {
        let found = problems("alarm:\n  modes: [armed_home]\nkeypads: []\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (2, 10));
        assert!(found[0].message.contains("`toggle_mode` is armed_away"));
    }

    #[test]
    fn semantic_rules_report_each_offending_value() {
        let text = "\
mqtt: {host: '', client_id: '', base_topic: /kb, keepalive_s: 2}
store: {cache_mb: 0}
codes: {min_length: 8, max_length: 6, argon2: {memory_kib: 10, iterations: 0, parallelism: 2}}
lockout: {window_s: 0, duration_s: 100, max_duration_s: 50}
alarm: {modes: [armed_away, armed_away], exit_delay_s: {armed_home: 4000}, entry_delay_s: 3601, trigger_time_s: 0}
activity: {max_entries: 0}
homeassistant: {prefix: 'ha/'}
timezone: Europe/Pariss
log: {level: verbose}
keypads:
  - {name: hall, protocol: plain, topic: a}
  - {name: hall, protocol: plain, topic: a}
  - {name: x, protocol: json, topic: kb/x}
  - {name: y, protocol: json, topic: '/kb/y'}
";
        let found = problems(text);
        let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
        let expect = [
            "`host` must name",
            "`client_id` must not be empty",
            "`base_topic` must not start or end with `/`",
            "`keepalive_s` must be from 5 to 65535 seconds, found 2",
            "`cache_mb` must be at least 1 MB, found 0",
            "`max_length` (6) must not be less than `min_length` (8)",
            "`memory_kib` must be at least 8 KiB per lane of `parallelism` (16 here), found 10",
            "`iterations` must be at least 1, found 0",
            "`window_s` must be at least 1 second, found 0",
            "`max_duration_s` (50) must not be shorter than `duration_s` (100)",
            "armed_away is listed twice in `modes`",
            "the exit delay for armed_home must be at most 3600 seconds",
            "`entry_delay_s` must be at most 3600 seconds, found 3601",
            "`trigger_time_s` must be from 1 to 86400 seconds, found 0",
            "`max_entries` must be from 1 to 1000000, found 0",
            "`prefix` must not start or end with `/`",
            "`level` must be one of error, warn, info, debug, trace, off",
            "two keypads are named \"hall\"",
            "keypads \"hall\" and \"hall\" both listen on \"a\"",
            "keypad topic \"/kb/y\" is under `base_topic` (/kb/)",
        ];
        for wanted in expect {
            assert!(
                messages.iter().any(|message| message.starts_with(wanted)),
                "no problem starting with {wanted:?} in {messages:#?}"
            );
        }
        assert!(messages
            .iter()
            .any(|m| m.starts_with("`timezone` must be a time zone name")));
        let mut sorted = found.clone();
        sorted.sort_by_key(|p| (p.line, p.column));
        assert_eq!(found, sorted);
    }

    #[test]
    fn a_keypad_topic_the_bridge_publishes_to_or_reads_for_another_purpose_is_refused() {
        let text = "\
homeassistant: {prefix: ha}
keypads:
  - {name: hall, protocol: zigbee2mqtt, topic: z2m/Hall keypad}
  - {name: echo, protocol: plain, topic: z2m/Hall keypad/set}
  - {name: hass, protocol: json, topic: ha/status}
  - {name: bridge, protocol: plain, topic: z2m/bridge/state}
  - {name: disco, protocol: json, topic: ha/event/keypad-bridge/event/config}
  - {name: self, protocol: zigbee2mqtt, topic: zb/bridge/state}
";
        let found = problems(text);
        let got: Vec<(usize, usize, &str)> = found
            .iter()
            .map(|p| (p.line, p.column, p.message.as_str()))
            .collect();
        let expect = [
            (4, 42, "keypad topic \"z2m/Hall keypad/set\" is where the bridge answers the Zigbee2MQTT keypad \"hall\""),
            (5, 41, "keypad topic \"ha/status\" is Home Assistant's status topic"),
            (6, 44, "keypad topic \"z2m/bridge/state\" is where Zigbee2MQTT (of keypad \"hall\") says"),
            (7, 42, "keypad topic \"ha/event/keypad-bridge/event/config\" is a Home Assistant discovery topic"),
            (8, 48, "keypad topic \"zb/bridge/state\" is where Zigbee2MQTT (of keypad \"self\") says"),
        ];
        assert_eq!(got.len(), expect.len(), "{got:#?}");
        for ((line, column, message), wanted) in got.iter().zip(expect) {
            assert_eq!((*line, *column), (wanted.0, wanted.1), "{message}");
            assert!(
                message.starts_with(wanted.2),
                "{message:?} should start with {:?}",
                wanted.2
            );
        }
        // Near misses are other topics: accepted.
        parse(
            "keypads:\n  - {name: hall, protocol: zigbee2mqtt, topic: z2m/Hall keypad}\n  \
             - {name: other, protocol: plain, topic: z2m/Hall keypad/get}\n  \
             - {name: ha, protocol: json, topic: homeassistant/status/keypad}\n  \
             - {name: state, protocol: plain, topic: zz/bridge/state}\n",
        )
        .unwrap();
    }

    #[test]
    fn a_known_time_zone_is_accepted_and_resolved() {
        let config = parse("timezone: Europe/Paris\nkeypads: []\n").unwrap();
        assert_eq!(
            config.time_zone().unwrap().iana_name(),
            Some("Europe/Paris")
        );
    }

    #[test]
    fn a_misspelled_time_zone_suggests_the_real_one() {
        let found = problems("timezone: Europe/Pari\nkeypads: []\n");
        assert!(
            found[0].message.ends_with("(did you mean Europe/Paris?)"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_log_filter_with_targets_is_accepted() {
        let config = parse("log: {level: 'info,keypad_bridge=debug'}\nkeypads: []\n").unwrap();
        assert_eq!(config.log.level, "info,keypad_bridge=debug");
    }

    #[test]
    fn exit_delays_are_looked_up_by_mode() {
        let delays = ExitDelays {
            armed_away: 1,
            armed_home: 2,
            armed_night: 3,
            armed_vacation: 4,
        };
        assert_eq!(delays.get(ArmMode::ArmedAway), 1);
        assert_eq!(delays.get(ArmMode::ArmedHome), 2);
        assert_eq!(delays.get(ArmMode::ArmedNight), 3);
        assert_eq!(delays.get(ArmMode::ArmedVacation), 4);
    }

    #[test]
    fn every_setting_has_plain_words_for_what_it_expects() {
        fn leaves(value: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
            out.push(path.clone());
            match value {
                Value::Mapping(map) => {
                    for (key, child) in map {
                        path.push(Seg::Key(key.as_str().unwrap().to_owned()));
                        leaves(child, path, out);
                        path.pop();
                    }
                }
                Value::Sequence(items) => {
                    path.push(Seg::Index(0));
                    leaves(&items[0], path, out);
                    path.pop();
                }
                _ => {}
            }
        }
        let mut paths = Vec::new();
        leaves(&schema(), &mut Vec::new(), &mut paths);
        for path in paths
            .iter()
            .filter(|path| !matches!(schema_at(path), Some(Value::Mapping(_))))
        {
            let name = schema_name(path);
            assert!(expected_words(&name).is_some(), "{name} has no words");
        }
    }

    #[test]
    fn the_password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n\n").unwrap();
        let mut config = Config::default();
        config.mqtt.password_file = Some(file);
        assert_eq!(
            config.read_mqtt_password().unwrap().as_deref(),
            Some("s3cret\n")
        );
        config.mqtt.password_file = None;
        assert_eq!(config.read_mqtt_password().unwrap(), None);
    }

    #[test]
    fn a_missing_password_file_is_named_in_the_error() {
        let mut config = Config::default();
        config.mqtt.password_file = Some("/nonexistent/mqtt-password".into());
        let err = config.read_mqtt_password().unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/mqtt-password"));
    }

    #[test]
    fn load_lists_every_problem_under_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "mqtt: {prt: 1}\nkeypads: []\n").unwrap();
        let err = load(&file).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{} has 1 problem:\n  line 1, column 8: unknown key `prt`",
                file.display()
            )),
            "{text}"
        );
        let missing = load(&dir.path().join("absent.yaml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
        assert!(missing.to_string().starts_with("cannot read config file "));
    }
}
