//! Home Assistant MQTT discovery payloads (DESIGN.md 3): the alarm panel, the "Last user"
//! sensor and the event entity, all tied to one device and published retained.
//!
//! One serde struct per component, sharing [`Entity`] (the keys every entity carries), in the
//! manner of wez/govee2mqtt's `hass_mqtt/`. Keys and values follow Home Assistant's MQTT
//! integration (PROTOCOLS.md 3): `code: REMOTE_CODE` makes Home Assistant show a keypad and pass
//! the typed code on; the command template turns it into the JSON that `B/alarm/set` reads. Ids
//! use only `[a-zA-Z0-9_-]`. Every payload carries the whole [`Device`] block: Home Assistant
//! 2025 logs "MQTT device information always needs to include a name" for one with only
//! `identifiers` (FACTS.md).

use serde::Serialize;

use crate::config::Config;
use crate::events::EventType;
use crate::topics::Topics;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    pub topic: String,
    /// The JSON text to publish.
    pub payload: String,
}

/// The discovery node id: the base topic with every character outside `[a-zA-Z0-9_-]` as `_`.
pub fn node_id(base_topic: &str) -> String {
    base_topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The device every entity belongs to: the bridge itself.
#[derive(Debug, Serialize)]
struct Device {
    identifiers: [String; 1],
    name: &'static str,
    manufacturer: &'static str,
    model: &'static str,
    sw_version: &'static str,
}

impl Device {
    fn bridge(node: &str) -> Device {
        Device {
            identifiers: [node.to_owned()],
            name: "Keypad bridge",
            manufacturer: "keypad-bridge",
            model: "keypad-bridge",
            sw_version: VERSION,
        }
    }
}

/// The software that published the payload.
#[derive(Debug, Serialize)]
struct Origin {
    name: &'static str,
    sw_version: &'static str,
    support_url: &'static str,
}

const ORIGIN: Origin = Origin {
    name: "keypad-bridge",
    sw_version: VERSION,
    support_url: "https://github.com/keypad-bridge/keypad-bridge",
};

/// `B/status`, the bridge's retained `online` and its last will `offline`.
#[derive(Debug, Serialize)]
struct Availability<'a> {
    topic: &'a str,
    payload_available: &'static str,
    payload_not_available: &'static str,
}

/// The keys every entity carries.
#[derive(Debug, Serialize)]
struct Entity<'a> {
    /// `None` (sent as `null`): the entity is named after the device.
    name: Option<&'static str>,
    unique_id: String,
    state_topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    icon: Option<&'static str>,
    availability: [Availability<'a>; 1],
    qos: u8,
    device: &'a Device,
    origin: &'a Origin,
}

#[derive(Debug, Serialize)]
struct AlarmControlPanel<'a> {
    #[serde(flatten)]
    entity: Entity<'a>,
    command_topic: &'a str,
    command_template: &'static str,
    code: &'static str,
    code_arm_required: bool,
    code_disarm_required: bool,
    code_trigger_required: bool,
    supported_features: Vec<&'static str>,
    json_attributes_topic: &'a str,
}

/// The "Last user" sensor on `B/alarm/last_user`.
#[derive(Debug, Serialize)]
struct Sensor<'a> {
    #[serde(flatten)]
    entity: Entity<'a>,
}

/// The event entity on `B/event`.
#[derive(Debug, Serialize)]
struct Event<'a> {
    #[serde(flatten)]
    entity: Entity<'a>,
    event_types: Vec<&'static str>,
}

pub fn discovery(config: &Config, topics: &Topics) -> Vec<Discovery> {
    let node = node_id(topics.base());
    let device = Device::bridge(&node);
    let entity = |name, object_id: &str, state_topic, icon| Entity {
        name,
        unique_id: format!("{node}_{object_id}"),
        state_topic,
        icon,
        availability: [Availability {
            topic: &topics.status,
            payload_available: "online",
            payload_not_available: "offline",
        }],
        qos: 1,
        device: &device,
        origin: &ORIGIN,
    };
    let supported_features = config
        .alarm
        .modes
        .iter()
        .map(|mode| mode.words().ha_feature)
        .chain(["trigger"])
        .collect();
    let panel = AlarmControlPanel {
        entity: entity(None, "alarm", &topics.alarm_state, None),
        command_topic: &topics.alarm_set,
        command_template: "{\"action\":\"{{ action }}\",\"code\":\"{{ code }}\"}",
        code: "REMOTE_CODE",
        code_arm_required: config.alarm.code_arm_required,
        code_disarm_required: true,
        code_trigger_required: false,
        supported_features,
        json_attributes_topic: &topics.alarm_attributes,
    };
    let last_user = Sensor {
        entity: entity(
            Some("Last user"),
            "last_user",
            &topics.alarm_last_user,
            Some("mdi:account-key"),
        ),
    };
    let event = Event {
        entity: entity(Some("Event"), "event", &topics.event, None),
        event_types: EventType::ALL.iter().map(|t| t.as_str()).collect(),
    };
    vec![
        message(
            topics.discovery("alarm_control_panel", &node, "alarm"),
            &panel,
        ),
        message(topics.discovery("sensor", &node, "last_user"), &last_user),
        message(topics.discovery("event", &node, "event"), &event),
    ]
}

fn message(topic: String, payload: &impl Serialize) -> Discovery {
    Discovery {
        topic,
        // Plain structs of strings, bools and numbers: serialising them cannot fail.
        payload: serde_json::to_string(payload).expect("a discovery payload serialises"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn payloads(yaml: &str) -> Vec<(String, Value)> {
        let config = crate::config::parse(yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let topics = Topics::new(&config);
        discovery(&config, &topics)
            .into_iter()
            .map(|d| (d.topic, serde_json::from_str(&d.payload).unwrap()))
            .collect()
    }

    const CONFIG: &str = "mqtt: {base_topic: kb/x.y}\n\
        alarm: {code_arm_required: false, modes: [armed_night, armed_vacation], \
                toggle_mode: armed_night}\n\
        keypads: [{name: hall, protocol: zigbee2mqtt, topic: z/hall}]\n";

    #[test]
    fn every_payload_carries_the_whole_device_block_with_its_name() {
        let found = payloads(CONFIG);
        assert_eq!(found.len(), 3);
        for (topic, payload) in &found {
            assert_eq!(
                payload["device"],
                json!({
                    "identifiers": ["kb_x_y"],
                    "name": "Keypad bridge",
                    "manufacturer": "keypad-bridge",
                    "model": "keypad-bridge",
                    "sw_version": VERSION,
                }),
                "{topic}"
            );
            assert_eq!(
                payload["origin"],
                json!({
                    "name": "keypad-bridge",
                    "sw_version": VERSION,
                    "support_url": "https://github.com/keypad-bridge/keypad-bridge",
                }),
                "{topic}"
            );
            assert_eq!(
                payload["availability"],
                json!([{"topic": "kb/x.y/status", "payload_available": "online",
                        "payload_not_available": "offline"}]),
                "{topic}"
            );
            assert_eq!(payload["qos"], 1, "{topic}");
        }
    }

    #[test]
    fn the_panel_offers_the_configured_modes_and_asks_home_assistant_for_the_code() {
        let found = payloads(CONFIG);
        let (topic, panel) = &found[0];
        assert_eq!(
            topic,
            "homeassistant/alarm_control_panel/kb_x_y/alarm/config"
        );
        let mut panel = panel.clone();
        let map = panel.as_object_mut().unwrap();
        for shared in ["device", "origin", "availability"] {
            map.remove(shared);
        }
        assert_eq!(
            panel,
            json!({
                "name": null,
                "unique_id": "kb_x_y_alarm",
                "state_topic": "kb/x.y/alarm/state",
                "command_topic": "kb/x.y/alarm/set",
                "command_template": "{\"action\":\"{{ action }}\",\"code\":\"{{ code }}\"}",
                "code": "REMOTE_CODE",
                "code_arm_required": false,
                "code_disarm_required": true,
                "code_trigger_required": false,
                "supported_features": ["arm_night", "arm_vacation", "trigger"],
                "json_attributes_topic": "kb/x.y/alarm/attributes",
                "qos": 1,
            })
        );
    }

    #[test]
    fn the_sensor_names_the_last_user_and_the_event_entity_lists_every_event_type() {
        let found = payloads(CONFIG);
        let strip = |mut v: Value| {
            let map = v.as_object_mut().unwrap();
            for shared in ["device", "origin", "availability", "qos"] {
                map.remove(shared);
            }
            v
        };
        assert_eq!(found[1].0, "homeassistant/sensor/kb_x_y/last_user/config");
        assert_eq!(
            strip(found[1].1.clone()),
            json!({
                "name": "Last user",
                "unique_id": "kb_x_y_last_user",
                "state_topic": "kb/x.y/alarm/last_user",
                "icon": "mdi:account-key",
            })
        );
        assert_eq!(found[2].0, "homeassistant/event/kb_x_y/event/config");
        let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            strip(found[2].1.clone()),
            json!({
                "name": "Event",
                "unique_id": "kb_x_y_event",
                "state_topic": "kb/x.y/event",
                "event_types": types,
            })
        );
    }

    #[test]
    fn node_ids_keep_only_the_characters_home_assistant_accepts() {
        assert_eq!(node_id("keypad-bridge"), "keypad-bridge");
        assert_eq!(node_id("home/kb.1 x"), "home_kb_1_x");
    }
}
