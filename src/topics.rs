//! Every MQTT topic the daemon uses (DESIGN.md 3 and 4), built from the config in one place.

use crate::config::{Config, KeypadConfig, KeypadProtocol};
use crate::events::Source;

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
    /// The whole roster; each person's entry is on [`Topics::config_user`] (DESIGN 10e).
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

    /// One person's roster entry, `B/config/users/<id>` (DESIGN 10e). User ids are `u_` and
    /// hex digits: never a `/`, `+` or `#`.
    pub fn config_user(&self, id: &str) -> String {
        format!("{}/{id}", self.config_users)
    }

    /// Replies to a `json` or `plain` keypad.
    pub fn keypad_result(&self, keypad: &str) -> String {
        format!("{}/keypad/{keypad}/result", self.base)
    }

    /// The bridge-state topic of every Zigbee2MQTT instance that has a keypad, taking the first
    /// level of the keypad's topic as Zigbee2MQTT's base topic (`zigbee2mqtt/Hall keypad` →
    /// `zigbee2mqtt/bridge/state`).
    pub fn zigbee2mqtt_bridges(keypads: &[KeypadConfig]) -> Vec<String> {
        let mut bridges: Vec<String> = keypads
            .iter()
            .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt)
            .map(|k| Topics::zigbee2mqtt_bridge(&k.topic))
            .collect();
        bridges.sort();
        bridges.dedup();
        bridges
    }

    /// The source of a message on one of the command topics (a keypad's is its own).
    pub fn source_of(&self, topic: &str) -> Option<Source> {
        if topic == self.alarm_set {
            Some(Source::HomeAssistant)
        } else if topic == self.config_set {
            Some(Source::Admin)
        } else {
            None
        }
    }

    /// Every topic the daemon subscribes to: the commands, Home Assistant's status (with
    /// discovery on), the keypads and the Zigbee2MQTT bridges' states.
    pub fn subscriptions(&self, config: &Config) -> Vec<String> {
        let mut topics = vec![self.alarm_set.clone(), self.config_set.clone()];
        if config.homeassistant.discovery {
            topics.push(self.ha_status.clone());
        }
        topics.extend(config.keypads.iter().map(|k| k.topic.clone()));
        topics.extend(Topics::zigbee2mqtt_bridges(&config.keypads));
        topics
    }

    /// What a topic the bridge publishes to or reads for another purpose than keypads is, in
    /// words that finish "keypad topic T is …": a keypad listening there would read the bridge's
    /// own replies or panel status (or Home Assistant's and Zigbee2MQTT's status) as code-less
    /// entries.
    pub fn reserved(config: &Config) -> Vec<(String, String)> {
        let mut reserved = Vec::new();
        let zigbee = config
            .keypads
            .iter()
            .filter(|k| k.protocol == KeypadProtocol::Zigbee2mqtt);
        for keypad in zigbee {
            let name = &keypad.name;
            reserved.push((
                Topics::zigbee2mqtt_set(&keypad.topic),
                format!(
                    "where the bridge answers the Zigbee2MQTT keypad {name:?} (its topic + /set)"
                ),
            ));
            reserved.push((
                Topics::zigbee2mqtt_bridge(&keypad.topic),
                format!(
                    "where Zigbee2MQTT (of keypad {name:?}) says whether it is online, which the \
                     bridge reads"
                ),
            ));
        }
        let topics = Topics::new(config);
        reserved.push((
            topics.ha_status.clone(),
            "Home Assistant's status topic (`homeassistant.prefix` + /status), which the bridge \
             reads"
                .into(),
        ));
        if config.homeassistant.discovery {
            let what = "a Home Assistant discovery topic the bridge publishes";
            let discovery = crate::homeassistant::discovery(config, &topics);
            reserved.extend(discovery.into_iter().map(|d| (d.topic, what.to_owned())));
        }
        reserved
    }

    /// The bridge-state topic of the Zigbee2MQTT instance behind a keypad's topic.
    fn zigbee2mqtt_bridge(device_topic: &str) -> String {
        let base = device_topic.split('/').next().unwrap_or_default();
        format!("{base}/bridge/state")
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
