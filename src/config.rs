//! The configuration file (DESIGN.md section 9): the serde structs with their defaults, and the
//! checker behind `check-config`.
//!
//! One pass, so that an owner fixing a file sees as many mistakes as possible in one run:
//! saphyr's loader gives every node of the file its line and column; [`parse`] walks serde_yaml's
//! reading of the file beside the schema (the defaults, serialised), noting each unknown or missing
//! key, each value of the wrong kind and each number outside [`RANGES`], and replacing what it
//! refuses by the default; serde then builds the [`Config`] once (a refusal left to serde, such
//! as an unknown arm mode, is the one problem reported, at the place serde names); and [`check`]
//! collects what needs the whole config: cross-key rules, topics, the time zone, the log filter.

use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::alarm::ArmMode;

/// The whole file. Every key may be left out except `keypads`: a bridge without keypads is
/// allowed (`keypads: []`), but only when the owner says so (the checker insists).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub store: StoreConfig,
    pub codes: CodesConfig,
    pub lockout: LockoutConfig,
    pub alarm: AlarmConfig,
    pub admin: AdminConfig,
    pub activity: ActivityConfig,
    pub homeassistant: HomeAssistantConfig,
    pub tags: TagsConfig,
    /// An IANA name; `None` means the system's zone.
    pub timezone: Option<String>,
    pub keypads: Vec<KeypadConfig>,
    pub log: LogConfig,
}

/// A config section: every field has its default (DESIGN.md section 9) written beside it.
macro_rules! section {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $field:ident: $ty:ty = $default:expr,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }
    };
}

section!(MqttConfig {
    host: String = "localhost".into(),
    port: u16 = 1883,
    client_id: String = "keypad-bridge".into(),
    username: Option<String> = None,
    /// The password lives in its own file so the config can be world-readable.
    password_file: Option<PathBuf> = None,
    tls: TlsConfig = TlsConfig::default(),
    base_topic: String = "keypad-bridge".into(),
    keepalive_s: u64 = 30,
});

section!(
    /// TLS is on when `ca_file` is set.
    TlsConfig { ca_file: Option<PathBuf> = None, }
);

section!(StoreConfig {
    path: PathBuf = "/var/lib/keypad-bridge/db".into(),
    /// Kept outside the database so that a copy of the database alone reveals nothing.
    secret_file: PathBuf = "/var/lib/keypad-bridge/secret".into(),
    /// sled's page cache; its 1 GiB default does not fit a Raspberry Pi. 4, not DESIGN's 16:
    /// while 10000 users were added over MQTT the peak resident memory was 40.4 MiB with 4,
    /// 42.1 with 6, 43.9 with 8 and 49.4 with 16 (issue 11).
    cache_mb: u64 = 4,
});

section!(CodesConfig {
    min_length: usize = 4,
    max_length: usize = 6,
    /// Read only when the store is created; the store keeps its own copy afterwards.
    argon2: Argon2Config = Argon2Config::default(),
});

/// The rule types are read straight from the file: what the store and the lockout use is what
/// serde built.
pub use crate::codes::Argon2Params as Argon2Config;
pub use crate::lockout::LockoutRules as LockoutConfig;

section!(AlarmConfig {
    /// The modes offered to Home Assistant (`supported_features`).
    modes: Vec<ArmMode> = vec![ArmMode::ArmedAway, ArmMode::ArmedHome, ArmMode::ArmedNight],
    code_arm_required: bool = true,
    /// What a `toggle` arms when the alarm is disarmed.
    toggle_mode: ArmMode = ArmMode::ArmedAway,
    exit_delay_s: ExitDelays = ExitDelays::default(),
    entry_delay_s: u64 = 30,
    trigger_time_s: u64 = 600,
});

section!(
    /// Seconds of exit delay per mode; 0 arms at once.
    ExitDelays {
        armed_away: u64 = 30,
        armed_home: u64 = 0,
        armed_night: u64 = 0,
        armed_vacation: u64 = 30,
    }
);

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

section!(AdminConfig {
    /// When true, `B/config/set` needs no `auth`: the broker's ACL is the only gate.
    trust_broker: bool = false,
});

section!(ActivityConfig {
    max_entries: u64 = 10000,
});

section!(HomeAssistantConfig {
    discovery: bool = true,
    prefix: String = "homeassistant".into(),
});

section!(
    /// RFID tags (DESIGN.md 10b).
    TagsConfig {
        /// `false`: a tag may arm but never disarm.
        disarm: bool = true,
    }
);

section!(LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    level: String = "info".into(),
});

/// One keypad; all three keys are required. Its default is the template keypad of the schema.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeypadConfig {
    /// Names the source (`keypad:<name>`) and the result topic, hence `[a-z0-9_-]+`.
    pub name: String,
    pub protocol: KeypadProtocol,
    pub topic: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeypadProtocol {
    #[default]
    Zigbee2mqtt,
    Json,
    Plain,
}

impl Config {
    /// The zone that schedules are read in.
    /// Each keypad by its topic.
    pub fn keypads_by_topic(&self) -> std::collections::HashMap<String, KeypadConfig> {
        let keypads = self.keypads.iter();
        keypads.map(|k| (k.topic.clone(), k.clone())).collect()
    }

    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> {
        match &self.timezone {
            None => Ok(jiff::tz::TimeZone::system()),
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|err| format!("unknown time zone {name:?} (timezone): {err}")),
        }
    }
}

/// One thing wrong with a config file, at a 1-based line and column.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
#[error("line {line}, column {column}: {message}")]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Problem {
    fn new(line: usize, column: usize, message: impl Into<String>) -> Problem {
        let message = message.into();
        Problem {
            line,
            column,
            message,
        }
    }

    fn at(node: &MarkedYaml, message: impl Into<String>) -> Problem {
        Problem::new(node.span.start.line(), node.span.start.col() + 1, message)
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
    let (root, mut value) = read(text).map_err(|problem| vec![problem])?;
    let mut review = Review {
        root: &root,
        problems: Vec::new(),
        refused: Vec::new(),
    };
    review.walk(&mut value, &SCHEMA[0].1, "");
    match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
        Ok(config) => {
            for (at, message) in check(&config).0 {
                let problem = place(&at, message, &root, &review.refused);
                review.problems.extend(problem);
            }
            if review.problems.is_empty() {
                return Ok(config);
            }
        }
        Err(err) => review.problems.push(serde_problem(&err, &value, &root)),
    }
    let mut problems = review.problems;
    problems.sort_by_key(|problem| (problem.line, problem.column));
    Err(problems)
}

/// The file as saphyr places it and as serde_yaml reads it, or the one problem that stops
/// everything: not YAML, two documents, no settings.
fn read(text: &str) -> Result<(MarkedYaml<'_>, Value), Problem> {
    let documents = MarkedYaml::load_from_str(text).map_err(|err| {
        let message = match err.info() {
            "duplicated key in mapping" => "this key is set twice in the same place: keep one",
            info => &format!("this is not valid YAML: {info}"),
        };
        Problem::new(err.marker().line(), err.marker().col() + 1, message)
    })?;
    if let Some(second) = documents.get(1) {
        let message = "a second YAML document starts here (`---`): keep all settings in one";
        return Err(Problem::at(second, message));
    }
    // libyaml (behind serde_yaml) reads the values, as it always has; saphyr only places them.
    let value: Value = serde_yaml::from_str(text).map_err(|err| {
        let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        Problem::new(line, column, format!("this is not valid YAML: {err}"))
    })?;
    let Some(root) = documents
        .into_iter()
        .next()
        .filter(|root| !root.data.is_badvalue())
    else {
        let message = "the file is empty: it needs at least a `keypads:` list";
        return Err(Problem::new(1, 1, message));
    };
    let refusal = match &value {
        Value::Mapping(_) => return Ok((root, value)),
        Value::Null => "the file has no settings: it needs at least a `keypads:` list".into(),
        other => format!(
            "the file must hold `key: value` settings, found {}",
            describe(other, &root)
        ),
    };
    Err(Problem::at(&root, refusal))
}

/// A place in the file is a dotted path, `keypads[2].name`; [`steps`] reads it back.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    let pieces = path.split(['.', '[']).filter(|piece| !piece.is_empty());
    pieces.map(|piece| match piece.strip_suffix(']') {
        Some(index) => Step::Index(index.parse().unwrap_or(usize::MAX)),
        None => Step::Key(piece),
    })
}

/// `mqtt.port` inside `mqtt`, `keypads[2]` inside `keypads`, both inside the top level (`""`).
fn parent(path: &str) -> Option<&str> {
    match path.rfind(['.', '[']) {
        Some(end) => Some(&path[..end]),
        None => (!path.is_empty()).then_some(""),
    }
}

fn join(path: &str, key: &str) -> String {
    let dot = if path.is_empty() { "" } else { "." };
    format!("{path}{dot}{key}")
}

/// The walk of [`parse`]: what it found wrong, and the values it replaced by their default.
struct Review<'a, 'input> {
    root: &'a MarkedYaml<'input>,
    problems: Vec<Problem>,
    refused: Vec<String>,
}

impl<'a, 'input> Review<'a, 'input> {
    /// Compares `value` with `schema`, the default at the same place.
    fn walk(&mut self, value: &mut Value, schema: &Value, path: &str) {
        match (schema, &mut *value) {
            (Value::Mapping(allowed), Value::Mapping(map)) => {
                let keys: Vec<Value> = map.keys().cloned().collect();
                for key in keys {
                    let name = key_text(&key);
                    let Some(child_schema) = allowed.get(name.as_str()) else {
                        map.remove(&key);
                        let at = self.key_node(path, &name).unwrap_or(self.root);
                        self.problems
                            .push(Problem::at(at, unknown_key_message(&name, path)));
                        continue;
                    };
                    if let Some(child) = map.get_mut(name.as_str()) {
                        self.walk(child, child_schema, &join(path, &name));
                    }
                }
                self.require(map, path);
            }
            (Value::Sequence(template), Value::Sequence(items)) => {
                let Some(item_schema) = template.first() else {
                    return;
                };
                for (index, item) in items.iter_mut().enumerate() {
                    self.walk(item, item_schema, &format!("{path}[{index}]"));
                }
            }
            (Value::Number(_), Value::Number(number)) => {
                let Some(range) = range_of(path) else { return };
                let fits = number
                    .as_u64()
                    .is_some_and(|n| (range.min..=range.max).contains(&n));
                if !fits {
                    let message = format!(
                        "{} must be {}, found {number}",
                        value_name(path),
                        range.bounds()
                    );
                    self.refuse(value, schema, path, message);
                }
            }
            (Value::Bool(_), Value::Bool(_)) => {}
            (Value::String(_) | Value::Null, found)
                if !found.is_mapping() && !found.is_sequence() => {}
            _ => {
                let message = mismatch(path, value, node_at(self.root, path));
                self.refuse(value, schema, path, message);
            }
        }
    }

    /// The keys serde cannot do without: `keypads`, and each keypad's three.
    fn require(&mut self, map: &mut serde_yaml::Mapping, path: &str) {
        let at = node_at(self.root, path).unwrap_or(self.root);
        if path.is_empty() && !map.contains_key("keypads") {
            let message = "`keypads` is missing: list the keypads the bridge listens to \
                           (write `keypads: []` if there are none yet)";
            self.problems.push(Problem::at(at, message));
            map.insert("keypads".into(), Value::Sequence(Vec::new()));
        }
        if schema_name(path) != "keypads[]" {
            return;
        }
        let missing: Vec<&str> = ["name", "protocol", "topic"]
            .into_iter()
            .filter(|key| !map.contains_key(*key))
            .collect();
        for key in &missing {
            // Stand-ins that raise no topic clash; the checks say nothing about them.
            let stand_in = if *key == "protocol" { "plain" } else { "" };
            map.insert((*key).into(), stand_in.into());
            self.refused.push(join(path, key));
        }
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|key| format!("`{key}`")).collect();
            let message = format!(
                "this keypad has no {}: every keypad needs `name`, `protocol` and `topic`",
                names.join(" and no ")
            );
            self.problems.push(Problem::at(at, message));
        }
    }

    /// Notes a problem at `path` and puts the default in the refused value's place, so that
    /// serde and the checks go on with the rest.
    fn refuse(&mut self, value: &mut Value, schema: &Value, path: &str, message: String) {
        let at = node_at(self.root, path).unwrap_or(self.root);
        self.problems.push(Problem::at(at, message));
        *value = schema.clone();
        self.refused.push(path.to_owned());
    }

    fn key_node(&self, parent: &str, key: &str) -> Option<&'a MarkedYaml<'input>> {
        match &node_at(self.root, parent)?.data {
            YamlData::Mapping(map) => map.keys().find(|k| scalar_text(k).as_deref() == Some(key)),
            _ => None,
        }
    }
}

/// The node of the file at `path`, looking through tags.
fn node_at<'a, 'input>(root: &'a MarkedYaml<'input>, path: &str) -> Option<&'a MarkedYaml<'input>> {
    let mut node = root;
    for step in steps(path) {
        while let YamlData::Tagged(_, inner) = &node.data {
            node = inner;
        }
        node = match (&node.data, step) {
            (YamlData::Mapping(map), Step::Key(key)) => map
                .iter()
                .find(|(k, _)| scalar_text(k).as_deref() == Some(key))
                .map(|(_, v)| v)?,
            (YamlData::Sequence(items), Step::Index(index)) => items.get(index)?,
            _ => return None,
        };
    }
    Some(node)
}

fn scalar_text(node: &MarkedYaml) -> Option<String> {
    match &node.data {
        YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
        YamlData::Value(Scalar::Integer(n)) => Some(n.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Value(Scalar::Null) => Some("null".into()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        _ => None,
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(text) => text.clone(),
        Value::Null => "null".into(),
        other => serde_yaml::to_string(other).map_or_else(|_| "?".into(), |t| t.trim().into()),
    }
}

/// The one error serde found, at the place it names.
fn serde_problem(
    err: &serde_path_to_error::Error<serde_yaml::Error>,
    value: &Value,
    root: &MarkedYaml,
) -> Problem {
    let mut path = String::new();
    for segment in err.path().iter() {
        match segment {
            serde_path_to_error::Segment::Map { key } => path = join(&path, key),
            serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            _ => break,
        }
    }
    match (node_at(root, &path), value_at(value, &path)) {
        (Some(node), Some(found)) if !path.is_empty() => {
            Problem::at(node, mismatch(&path, found, Some(node)))
        }
        (node, _) => Problem::at(
            node.unwrap_or(root),
            format!("this is not a valid config: {}", err.inner()),
        ),
    }
}

/// "`port` must be a number from 1 to 65535, found the text \"x\"".
fn mismatch(path: &str, value: &Value, node: Option<&MarkedYaml>) -> String {
    let found = node.map_or_else(String::new, |node| describe(value, node));
    format!(
        "{} must be {}, found {found}",
        value_name(path),
        expectation(path)
    )
}

fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    steps(path).try_fold(value, |value, step| match step {
        Step::Key(key) => value.get(key),
        Step::Index(index) => value.get(index),
    })
}

fn unknown_key_message(key: &str, parent: &str) -> String {
    let allowed = allowed_keys(parent);
    let hint = if let Some(close) = closest(key, allowed.iter().map(String::as_str)) {
        format!(": did you mean `{close}`?")
    } else if key == "<<" {
        ": merge keys are not supported, write the settings out.".into()
    } else if let Some(home) = section_holding(key) {
        format!(": `{key}` belongs {home}.")
    } else {
        ".".into()
    };
    let (section, allowed) = (section_name(parent), allowed.join(", "));
    format!("unknown key `{key}` {section}{hint} The keys allowed there are {allowed}")
}

/// "at the top level", "in `mqtt`", "in a keypad".
fn section_name(path: &str) -> String {
    match schema_name(path).as_str() {
        "" => "at the top level".into(),
        "keypads[]" => "in a keypad".into(),
        name => format!("in `{name}`"),
    }
}

/// How a message names the value at `path`: "`port`", "each entry of `modes`".
fn value_name(path: &str) -> String {
    let (section, last) = path.rsplit_once('.').unwrap_or(("", path));
    match last.split_once('[') {
        _ if path.is_empty() => "the file".into(),
        Some((key, _)) => format!("each entry of `{key}`"),
        None if section.rsplit('.').next() == Some("exit_delay_s") => {
            format!("the exit delay for {last}")
        }
        None => format!("`{last}`"),
    }
}

/// The path with list indices blurred, as the schema knows it: `keypads[].name`.
fn schema_name(path: &str) -> String {
    let mut pieces = path.split('[');
    let mut name = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        name.push_str("[]");
        name.push_str(piece.split_once(']').map_or(piece, |(_, rest)| rest));
    }
    name
}

/// Every place of the schema, in file order, by its [`schema_name`], with its default: the
/// defaults as a YAML tree, with one template keypad. The source of truth for which keys exist
/// where and what kind of value each takes, so the checker cannot drift from the structs.
static SCHEMA: std::sync::LazyLock<Vec<(String, Value)>> = std::sync::LazyLock::new(|| {
    fn list(name: String, value: &Value, out: &mut Vec<(String, Value)>) {
        out.push((name.clone(), value.clone()));
        match value {
            Value::Mapping(map) => {
                for (key, child) in map {
                    list(join(&name, &key_text(key)), child, out);
                }
            }
            Value::Sequence(items) => {
                for item in items.iter().take(1) {
                    list(format!("{name}[]"), item, out);
                }
            }
            _ => {}
        }
    }
    let mut config = Config::default();
    config.keypads.push(KeypadConfig::default());
    let mut out = Vec::new();
    let schema = serde_yaml::to_value(config).unwrap_or(Value::Null);
    list(String::new(), &schema, &mut out);
    out
});

fn schema_at(path: &str) -> Option<&'static Value> {
    let name = schema_name(path);
    SCHEMA
        .iter()
        .find(|(at, _)| *at == name)
        .map(|(_, value)| value)
}

fn allowed_keys(path: &str) -> Vec<String> {
    match schema_at(path) {
        Some(Value::Mapping(map)) => map.keys().map(key_text).collect(),
        _ => Vec::new(),
    }
}

/// Where a key that is unknown here does exist, for "`port` belongs in `mqtt`".
fn section_holding(key: &str) -> Option<String> {
    let (at, _) = SCHEMA.iter().find(|(at, _)| {
        !at.ends_with(']') && parent(at).is_some_and(|section| *at == join(section, key))
    })?;
    parent(at).map(section_name)
}

/// The bounds of a number setting.
struct Range {
    path: &'static str,
    min: u64,
    max: u64,
}

const MANY: u64 = u32::MAX as u64;

/// Every number setting with its bounds, the one table that both the check and its words read
/// (`MANY`: no upper bound worth stating). Each maximum fits the field's type, so a number
/// that passes is one serde accepts.
const RANGES: &[Range] = &[
    range("mqtt.port", 1, 65535),
    range("mqtt.keepalive_s", 5, 65535),
    range("store.cache_mb", 1, MANY),
    range("codes.min_length", 4, 12),
    range("codes.max_length", 4, 12),
    range("codes.argon2.memory_kib", 8, 4_194_304),
    range("codes.argon2.iterations", 1, MANY),
    range("codes.argon2.parallelism", 1, 16),
    range("lockout.max_failures", 1, MANY),
    range("lockout.window_s", 1, MANY),
    range("lockout.duration_s", 1, MANY),
    range("lockout.max_duration_s", 1, MANY),
    range("alarm.exit_delay_s.armed_away", 0, 3600),
    range("alarm.exit_delay_s.armed_home", 0, 3600),
    range("alarm.exit_delay_s.armed_night", 0, 3600),
    range("alarm.exit_delay_s.armed_vacation", 0, 3600),
    range("alarm.entry_delay_s", 0, 3600),
    range("alarm.trigger_time_s", 1, 86400),
    range("activity.max_entries", 1, 1_000_000),
];

const fn range(path: &'static str, min: u64, max: u64) -> Range {
    Range { path, min, max }
}

fn range_of(path: &str) -> Option<&'static Range> {
    let name = schema_name(path);
    RANGES.iter().find(|range| range.path == name)
}

impl Range {
    /// The unit, read off the suffix of the key or its section (`_s` seconds, `_mb`, `_kib`).
    fn unit(&self) -> &'static str {
        let unit = |key: &str| match key.rsplit('_').next() {
            Some("s") => Some("seconds"),
            Some("mb") => Some("MB"),
            Some("kib") => Some("KiB"),
            _ => None,
        };
        self.path.rsplit('.').find_map(unit).unwrap_or("")
    }

    fn amount(&self, n: u64) -> String {
        match self.unit() {
            "" => n.to_string(),
            "seconds" if n == 1 => "1 second".into(),
            unit => format!("{n} {unit}"),
        }
    }

    /// "from 5 to 65535 seconds", "at least 1 MB", "at most 3600 seconds".
    fn bounds(&self) -> String {
        match (self.min, self.max) {
            (low, MANY) => format!("at least {}", self.amount(low)),
            (0, high) => format!("at most {}", self.amount(high)),
            (low, high) => format!("from {low} to {}", self.amount(high)),
        }
    }

    /// "a number of seconds from 5 to 65535", "a number, at least 1".
    fn words(&self) -> String {
        let of = match self.unit() {
            "" => String::new(),
            unit => format!(" of {unit}"),
        };
        match (self.min, self.max) {
            (low, MANY) => format!("a number{of}, at least {low}"),
            (low, high) => format!("a number{of} from {low} to {high}"),
        }
    }
}

const ARM_MODES: &str = "one of armed_away, armed_home, armed_night, armed_vacation";

/// What the value at `path` should be, in plain words: numbers from [`RANGES`], the rest by
/// name or, failing that, by the kind of its default.
fn expectation(path: &str) -> String {
    if let Some(range) = range_of(path) {
        return range.words();
    }
    let words = match schema_name(path).as_str() {
        "alarm.modes" => "a list of arm modes, such as [armed_away, armed_home]",
        "alarm.modes[]" | "alarm.toggle_mode" => ARM_MODES,
        "keypads" => "a list of keypads, each with `name`, `protocol` and `topic`",
        "keypads[].protocol" => "one of zigbee2mqtt, json, plain",
        "timezone" => "a time zone name such as Europe/Paris, or nothing for the system's",
        "log.level" => "a log level such as info or debug",
        _ => match schema_at(path) {
            Some(Value::Mapping(_)) => {
                let keys = allowed_keys(path).join(", ");
                return format!("a group of `key: value` settings ({keys})");
            }
            Some(Value::Sequence(_)) => "a list",
            Some(Value::Bool(_)) => "true or false",
            Some(Value::Null) => "a text, or nothing",
            _ => "a text",
        },
    };
    words.into()
}

/// What was found, in plain words: "the text \"abc\"", "the number 99999", "a list".
fn describe(value: &Value, node: &MarkedYaml) -> String {
    match value {
        Value::Mapping(map) if map.is_empty() => "an empty group `{}`".into(),
        Value::Mapping(_) => "a group of `key: value` settings".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Null => "nothing (an empty value)".into(),
        Value::Bool(value) => value.to_string(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => {
            const LIMIT: usize = 60;
            let shown = if text.chars().count() <= LIMIT {
                format!("{text:?}")
            } else {
                format!("{:?}…", text.chars().take(LIMIT).collect::<String>())
            };
            // A text that would read as a number or true/false unquoted was quoted.
            let plain = Scalar::parse_from_cow(text.as_str().into());
            let was_string = matches!(node.data, YamlData::Value(Scalar::String(_)));
            if was_string && !matches!(plain, Scalar::String(_) | Scalar::Null) {
                format!("the text {shown} (the quotes make it text: remove them)")
            } else {
                format!("the text {shown}")
            }
        }
        Value::Tagged(tagged) => describe(&tagged.value, node),
    }
}

/// The candidate a typo most likely meant, if any is close enough.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normalise = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                '-' | ' ' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    };
    let word = normalise(word);
    let limit = match word.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    // Swapping two neighbours counts as one edit ("prot" → "port").
    let distance = |candidate: &str| strsim::osa_distance(&word, &normalise(candidate));
    candidates
        .into_iter()
        .map(|candidate| (distance(candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// " (did you mean Europe/Paris?)", or nothing.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let close = closest(word, candidates);
    close.map_or_else(String::new, |close| format!(" (did you mean {close}?)"))
}

/// Semantic problems, each placed at the first of its dotted paths that the file spells out.
#[derive(Default)]
struct Issues(Vec<(Vec<String>, String)>);

impl Issues {
    fn add(&mut self, at: &[&str], message: impl Into<String>) {
        let at = at.iter().map(|path| (*path).to_owned()).collect();
        self.0.push((at, message.into()));
    }
}

/// Where an issue goes: `None` when it is about a value the walk replaced (already reported);
/// at the nearest setting the file spells out when the value is a default.
fn place(at: &[String], message: String, root: &MarkedYaml, refused: &[String]) -> Option<Problem> {
    let under = |path: &str, gone: &str| {
        let rest = path.strip_prefix(gone);
        rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    if at
        .iter()
        .any(|path| refused.iter().any(|gone| under(path, gone)))
    {
        return None;
    }
    let nearest = || {
        let mut sections = std::iter::successors(parent(at.first()?), |path| parent(path));
        sections.find_map(|path| node_at(root, path))
    };
    let node = at
        .iter()
        .find_map(|path| node_at(root, path))
        .or_else(nearest);
    Some(Problem::at(node.unwrap_or(root), message))
}

/// Checks a topic used as a prefix (`mqtt.base_topic`, the discovery prefix).
fn check_prefix(out: &mut Issues, at: &str, topic: &str) {
    let key = at.rsplit('.').next().unwrap_or(at);
    let message = if topic.is_empty() {
        format!("`{key}` must not be empty")
    } else if topic.contains(['+', '#']) {
        format!("`{key}` must not contain `+` or `#` (MQTT wildcards), found {topic:?}")
    } else if topic.starts_with('/') || topic.ends_with('/') {
        format!("`{key}` must not start or end with `/`, found {topic:?}")
    } else {
        return;
    };
    out.add(&[at], message);
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter spelt by `log.level` or `RUST_LOG`: comma-separated directives, each a level
/// (`info`), `target=level` (`keypad_bridge=debug`) or a bare target (all its levels); the most
/// specific target wins. Parsed by `tracing_subscriber`'s `Targets` (no regex engine in the
/// binary), so span and field filters (`target[span]=debug`) are refused. sled's records stay at
/// warnings or above whatever the text says, `sled::tree=trace` included: its debug and trace
/// records print the store's keys and values (lookup keys of codes, user records, the salt).
/// The log target of the daemon's per-entry timings (`daemon::Spent`), off unless named.
pub const TIMING_TARGET: &str = "keypad_bridge::timing";

pub fn log_filter(text: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let mut filter = Targets::new();
    let mut timing_named = false;
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains(['[', '{']) {
            return Err(format!(
                "{directive:?}: span and field filters are not supported"
            ));
        }
        if directive.starts_with('=') {
            return Err(format!("{directive:?} names no target"));
        }
        let one: Targets = directive
            .parse()
            .map_err(|err| format!("{directive:?}: {err}"))?;
        if let Some(level) = one.default_level() {
            filter = filter.with_default(level);
        }
        for (target, level) in &one {
            let level = match target.starts_with("sled") {
                true => level.min(LevelFilter::WARN),
                false => level,
            };
            timing_named |= target.starts_with(TIMING_TARGET);
            filter = filter.with_target(target, level);
        }
    }
    if !timing_named {
        // Measurements, for the benchmark: only when asked for by name, not with every
        // `debug` (their numbers are noise in a log read for other reasons).
        filter = filter.with_target(TIMING_TARGET, LevelFilter::OFF);
    }
    Ok(filter.with_target("sled", LevelFilter::WARN))
}

/// What needs the whole config: cross-key rules, topics, names, the time zone, the log filter.
/// (The walk of [`parse`] has checked each number against [`RANGES`].)
fn check(config: &Config) -> Issues {
    let mut out = Issues::default();
    let mqtt = &config.mqtt;
    if mqtt.host.trim().is_empty() {
        let message = "`host` must name the MQTT broker, such as localhost";
        out.add(&["mqtt.host"], message);
    }
    if mqtt.client_id.is_empty() {
        let message = "`client_id` must not be empty: the broker tells its clients apart by it";
        out.add(&["mqtt.client_id"], message);
    }
    check_prefix(&mut out, "mqtt.base_topic", &mqtt.base_topic);
    let (codes, argon2) = (&config.codes, &config.codes.argon2);
    if codes.min_length > codes.max_length {
        let (min, max) = (codes.min_length, codes.max_length);
        let message = format!("`max_length` ({max}) must not be less than `min_length` ({min})");
        out.add(&["codes.max_length", "codes.min_length"], message);
    }
    let least_memory = 8 * u64::from(argon2.parallelism.max(1));
    if u64::from(argon2.memory_kib) < least_memory {
        let message = format!(
            "`memory_kib` must be at least 8 KiB per lane of `parallelism` ({least_memory} here), \
             found {}",
            argon2.memory_kib
        );
        let at = ["codes.argon2.memory_kib", "codes.argon2.parallelism"];
        out.add(&at, message);
    }
    let lockout = &config.lockout;
    if lockout.max_duration_s < lockout.duration_s {
        let (max, first) = (lockout.max_duration_s, lockout.duration_s);
        let message =
            format!("`max_duration_s` ({max}) must not be shorter than `duration_s` ({first})");
        out.add(&["lockout.max_duration_s", "lockout.duration_s"], message);
    }
    let alarm = &config.alarm;
    for (index, mode) in alarm.modes.iter().enumerate() {
        if alarm.modes[..index].contains(mode) {
            let message = format!("{} is listed twice in `modes`", mode.as_str());
            out.add(&[&format!("alarm.modes[{index}]")], message);
        }
    }
    if alarm.modes.is_empty() {
        let message = "`modes` must list at least one arm mode, such as [armed_away]";
        out.add(&["alarm.modes"], message);
    } else if !alarm.modes.contains(&alarm.toggle_mode) {
        let modes: Vec<&str> = alarm.modes.iter().map(|mode| mode.as_str()).collect();
        let message = format!(
            "`toggle_mode` is {}, which is not in `modes` ({}): add it to `modes` or pick one of \
             them",
            alarm.toggle_mode.as_str(),
            modes.join(", ")
        );
        out.add(&["alarm.toggle_mode", "alarm.modes"], message);
    }
    let prefix = &config.homeassistant.prefix;
    check_prefix(&mut out, "homeassistant.prefix", prefix);
    if let Some(name) = config
        .timezone
        .as_ref()
        .filter(|name| jiff::tz::TimeZone::get(name).is_err())
    {
        let names: Vec<String> = jiff::tz::db()
            .available()
            .map(|zone| zone.as_str().to_owned())
            .collect();
        let hint = did_you_mean(name, names.iter().map(String::as_str));
        let message = format!(
            "`timezone` must be a time zone name such as Europe/Paris, found {name:?}{hint}"
        );
        out.add(&["timezone"], message);
    }
    check_keypads(&mut out, config);
    let level = config.log.level.trim();
    let bare_word = level.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let refusal = match log_filter(level) {
        Err(err) => Some(format!(" ({err})")),
        Ok(_) if level.is_empty() => Some(String::new()),
        Ok(_) if bare_word && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) => {
            Some(did_you_mean(level, LOG_LEVELS))
        }
        Ok(_) => None,
    };
    if let Some(hint) = refusal {
        let message = format!(
            "`level` must be one of error, warn, info, debug, trace, off, or a filter such as \
             `info,keypad_bridge=debug`; found {:?}{hint}",
            config.log.level
        );
        out.add(&["log.level"], message);
    }
    out
}

fn check_keypads(out: &mut Issues, config: &Config) {
    let base = format!("{}/", config.mqtt.base_topic);
    let reserved = crate::topics::Topics::reserved(config);
    for (index, keypad) in config.keypads.iter().enumerate() {
        let (earlier, name, topic) = (&config.keypads[..index], &keypad.name, &keypad.topic);
        let at_name: &[&str] = &[&format!("keypads[{index}].name")];
        let at_topic: &[&str] = &[&format!("keypads[{index}].topic")];
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if name.is_empty() {
            out.add(at_name, "a keypad's `name` must not be empty");
        } else if !name.chars().all(allowed) {
            let message = format!(
                "keypad name {name:?} may only use lowercase letters a-z, digits, `_` and `-`"
            );
            out.add(at_name, message);
        }
        if earlier.iter().any(|other| other.name == *name) {
            let message = format!("two keypads are named {name:?}: names must differ");
            out.add(at_name, message);
        }
        if topic.is_empty() {
            out.add(at_topic, "a keypad's `topic` must not be empty");
        } else if topic.contains(['+', '#']) {
            let message =
                format!("keypad topic {topic:?} must not contain `+` or `#` (MQTT wildcards)");
            out.add(at_topic, message);
        } else if topic.starts_with(&base) {
            let message = format!(
                "keypad topic {topic:?} is under `base_topic` ({base}), where the bridge itself \
                 publishes: pick a topic outside it"
            );
            out.add(at_topic, message);
        } else if let Some((_, what)) = reserved.iter().find(|(t, _)| t == topic) {
            let message = format!(
                "keypad topic {topic:?} is {what}: the bridge would take those messages for keypad \
                 entries; pick another topic"
            );
            out.add(at_topic, message);
        }
        if let Some(other) = earlier.iter().find(|other| other.topic == *topic) {
            let message = format!(
                "keypads {:?} and {name:?} both listen on {topic:?}: each keypad needs its own topic",
                other.name
            );
            out.add(at_topic, message);
        }
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
        // The one default that differs (README, "Additions to the contract").
        assert_eq!(expected.store.cache_mb, 4);
        expected.store.cache_mb = 16;
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
            "`port` must be from 1 to 65535, found 99999"
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
    fn an_unknown_protocol_is_the_one_problem_serde_reports_and_the_checks_wait_for_it() {
        let text = "keypads:\n  - name: hall\n    protocol: zigbee\n    topic: z/hall\n  - name: Front\n    protocol: json\n    topic: front\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].line, found[0].column), (3, 15));
        assert_eq!(
            found[0].message,
            "`protocol` must be one of zigbee2mqtt, json, plain, found the text \"zigbee\""
        );
        let fixed = problems(&text.replace("zigbee\n", "zigbee2mqtt\n"));
        assert_eq!(fixed.len(), 1, "{fixed:#?}");
        assert_eq!((fixed[0].line, fixed[0].column), (5, 11));
        assert!(fixed[0].message.contains("lowercase"));
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
    fn tags_disarm_by_default_and_can_be_kept_to_arming() {
        assert!(parse("keypads: []\n").unwrap().tags.disarm);
        assert!(
            !parse("tags: {disarm: false}\nkeypads: []\n")
                .unwrap()
                .tags
                .disarm
        );
        let found = problems("tags: {disarm: maybe}\nkeypads: []\n");
        assert_eq!((found[0].line, found[0].column), (1, 16));
        assert_eq!(
            found[0].message,
            "`disarm` must be true or false, found the text \"maybe\""
        );
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
    fn log_filters_read_levels_and_targets_and_keep_sled_at_warnings() {
        use tracing::Level;
        let on = |text: &str, target: &str, level: Level| {
            log_filter(text).unwrap().would_enable(target, &level)
        };
        // The entry timings only when named.
        assert!(!on("trace", TIMING_TARGET, Level::DEBUG));
        assert!(!on("info,keypad_bridge=trace", TIMING_TARGET, Level::DEBUG));
        assert!(on(
            "info,keypad_bridge::timing=debug",
            TIMING_TARGET,
            Level::DEBUG
        ));
        assert!(on(
            "info,keypad_bridge::timing=debug",
            "keypad_bridge::daemon",
            Level::INFO
        ));
        assert!(on("info", "keypad_bridge::daemon", Level::INFO));
        assert!(!on("info", "keypad_bridge::daemon", Level::DEBUG));
        assert!(on("INFO", "rumqttc::state", Level::INFO));
        assert!(on(
            "warn,keypad_bridge=debug",
            "keypad_bridge::panel",
            Level::DEBUG
        ));
        assert!(!on("warn,keypad_bridge=debug", "rumqttc", Level::INFO));
        assert!(on(
            " info , keypad_bridge=trace,",
            "keypad_bridge",
            Level::TRACE
        ));
        assert!(on("keypad_bridge", "keypad_bridge::store", Level::TRACE));
        assert!(!on("keypad_bridge", "rumqttc", Level::ERROR));
        assert!(!on("", "keypad_bridge", Level::ERROR));
        assert!(!on("off", "keypad_bridge", Level::ERROR));
        for text in [
            "trace",
            "sled=trace",
            "sled::tree=trace",
            "trace,sled::pagecache=debug",
        ] {
            assert!(on(text, "sled::tree", Level::WARN), "{text}");
            assert!(!on(text, "sled::tree", Level::INFO), "{text}");
            assert!(!on(text, "sled::pagecache::iobuf", Level::DEBUG), "{text}");
        }
        for text in [
            "info,=debug",
            "keypad_bridge=loud",
            "a=b=c",
            "x[span]=debug",
            "[{f}]=info",
        ] {
            assert!(log_filter(text).is_err(), "{text}");
        }
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
    fn every_number_setting_has_one_range_and_every_range_names_a_number_setting() {
        let found = &*SCHEMA;
        let numbers: Vec<String> = found
            .iter()
            .filter(|(_, value)| value.is_number())
            .map(|(path, _)| path.clone())
            .collect();
        let ranges: Vec<String> = RANGES.iter().map(|r| r.path.to_owned()).collect();
        assert_eq!(numbers, ranges);
        for (path, _) in found {
            assert!(!expectation(path).is_empty(), "{path} has no words");
        }
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
