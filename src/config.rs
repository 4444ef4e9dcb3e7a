//! STUB
use std::path::PathBuf;
use serde::{Deserialize, Serialize};
use crate::alarm::ArmMode;
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct Config { pub mqtt: MqttConfig, pub store: StoreConfig, pub codes: CodesConfig, pub lockout: LockoutConfig,
  pub alarm: AlarmConfig, pub admin: AdminConfig, pub activity: ActivityConfig, pub homeassistant: HomeAssistantConfig,
  pub timezone: Option<String>, pub keypads: Vec<KeypadConfig>, pub log: LogConfig }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct MqttConfig { pub host: String, pub port: u16, pub client_id: String, pub username: Option<String>,
  pub password_file: Option<PathBuf>, pub tls: TlsConfig, pub base_topic: String, pub keepalive_s: u64 }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct TlsConfig { pub ca_file: Option<PathBuf> }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct StoreConfig { pub path: PathBuf, pub secret_file: PathBuf, pub cache_mb: u64 }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct CodesConfig { pub min_length: usize, pub max_length: usize, pub argon2: Argon2Config }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct Argon2Config { pub memory_kib: u32, pub iterations: u32, pub parallelism: u32 }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct LockoutConfig { pub max_failures: u32, pub window_s: u64, pub duration_s: u64, pub max_duration_s: u64 }
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AlarmConfig { pub modes: Vec<ArmMode>, pub code_arm_required: bool, pub toggle_mode: ArmMode,
  pub exit_delay_s: ExitDelays, pub entry_delay_s: u64, pub trigger_time_s: u64 }
impl Default for AlarmConfig { fn default() -> Self { todo!() } }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct ExitDelays { pub armed_away: u64, pub armed_home: u64, pub armed_night: u64, pub armed_vacation: u64 }
impl ExitDelays { pub fn get(&self, _mode: ArmMode) -> u64 { todo!() } }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct AdminConfig { pub trust_broker: bool }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct ActivityConfig { pub max_entries: u64 }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct HomeAssistantConfig { pub discovery: bool, pub prefix: String }
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct KeypadConfig { pub name: String, pub protocol: KeypadProtocol, pub topic: String }
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)] #[serde(rename_all = "snake_case")]
pub enum KeypadProtocol { Zigbee2mqtt, Json, Plain }
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct LogConfig { pub level: String }
#[derive(thiserror::Error, Debug)] pub enum ConfigError { #[error("x")] Read }
pub fn load(_path: &std::path::Path) -> Result<Config, ConfigError> { todo!() }
impl Config { pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> { todo!() }
  pub fn read_mqtt_password(&self) -> anyhow::Result<Option<String>> { todo!() } }
