//! Every MQTT topic the daemon uses (DESIGN.md 3 and 4), built from the config in one place.

use crate::config::Config;

/// Topic strings, built once at start-up.
#[derive(Clone, Debug)]
pub struct Topics {
    pub status: String,
    pub alarm_state: String,
    pub alarm_attributes: String,
    pub alarm_last_user: String,
    pub alarm_set: String,
    pub event: String,
    pub config_set: String,
    pub config_result: String,
    pub config_users: String,
    /// Home Assistant's birth/last-will topic.
    pub ha_status: String,
    base: String,
    ha_prefix: String,
}

impl Topics {
    pub fn new(config: &Config) -> Topics {
        let b = config.mqtt.base_topic.as_str();
        let p = config.homeassistant.prefix.as_str();
        Topics {
            status: format!("{b}/status"),
            alarm_state: format!("{b}/alarm/state"),
            alarm_attributes: format!("{b}/alarm/attributes"),
            alarm_last_user: format!("{b}/alarm/last_user"),
            alarm_set: format!("{b}/alarm/set"),
            event: format!("{b}/event"),
            config_set: format!("{b}/config/set"),
            config_result: format!("{b}/config/result"),
            config_users: format!("{b}/config/users"),
            ha_status: format!("{p}/status"),
            base: b.to_owned(),
            ha_prefix: p.to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Replies to a `json` or `plain` keypad.
    pub fn keypad_result(&self, keypad: &str) -> String {
        format!("{}/keypad/{keypad}/result", self.base)
    }

    /// The bridge-state topic of every Zigbee2MQTT instance that has a keypad, taking the first
    /// level of the keypad's topic as Zigbee2MQTT's base topic (`zigbee2mqtt/Hall keypad` →
    /// `zigbee2mqtt/bridge/state`).
    pub fn zigbee2mqtt_bridges(config: &Config) -> Vec<String> {
        let mut bridges: Vec<String> = config
            .keypads
            .iter()
            .filter(|k| k.protocol == crate::config::KeypadProtocol::Zigbee2mqtt)
            .filter_map(|k| k.topic.split('/').next())
            .map(|base| format!("{base}/bridge/state"))
            .collect();
        bridges.sort();
        bridges.dedup();
        bridges
    }

    /// Where a Zigbee2MQTT keypad takes commands.
    pub fn zigbee2mqtt_set(device_topic: &str) -> String {
        format!("{device_topic}/set")
    }

    /// `<prefix>/<component>/<node_id>/<object_id>/config`.
    pub fn discovery(&self, component: &str, node_id: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{node_id}/{object_id}/config",
            self.ha_prefix
        )
    }
}
