//! Home Assistant MQTT discovery payloads (DESIGN.md 3): the alarm panel, the "Last user"
//! sensor and the event entity, all tied to one device and published retained.
//!
//! Keys and values follow Home Assistant's MQTT integration (PROTOCOLS.md 3): `code: REMOTE_CODE`
//! makes Home Assistant show a keypad and pass the typed code on; the command template turns
//! it into the JSON that `B/alarm/set` reads. Ids use only `[a-zA-Z0-9_-]`.

use serde_json::{json, Value};

use crate::config::Config;
use crate::events::EventType;
use crate::topics::Topics;

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    pub topic: String,
    pub payload: Value,
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

pub fn discovery(config: &Config, topics: &Topics) -> Vec<Discovery> {
    let node = node_id(topics.base());
    let availability = json!([{"topic": topics.status, "payload_available": "online",
                               "payload_not_available": "offline"}]);
    let device = json!({
        "identifiers": [node],
        "name": "Keypad bridge",
        "manufacturer": "keypad-bridge",
        "model": "keypad-bridge",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let origin = json!({
        "name": "keypad-bridge",
        "sw_version": env!("CARGO_PKG_VERSION"),
        "support_url": "https://github.com/keypad-bridge/keypad-bridge",
    });
    let mut features: Vec<&str> = config
        .alarm
        .modes
        .iter()
        .map(|mode| mode.words().ha_feature)
        .collect();
    features.push("trigger");
    let panel = json!({
        "name": null,
        "unique_id": format!("{node}_alarm"),
        "state_topic": topics.alarm_state,
        "command_topic": topics.alarm_set,
        "command_template": "{\"action\":\"{{ action }}\",\"code\":\"{{ code }}\"}",
        "code": "REMOTE_CODE",
        "code_arm_required": config.alarm.code_arm_required,
        "code_disarm_required": true,
        "code_trigger_required": false,
        "supported_features": features,
        "json_attributes_topic": topics.alarm_attributes,
        "availability": availability,
        "qos": 1,
        "device": device,
        "origin": origin,
    });
    let last_user = json!({
        "name": "Last user",
        "unique_id": format!("{node}_last_user"),
        "state_topic": topics.alarm_last_user,
        "icon": "mdi:account-key",
        "availability": availability,
        "qos": 1,
        "device": {"identifiers": [node]},
        "origin": origin,
    });
    let event_types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    let event = json!({
        "name": "Event",
        "unique_id": format!("{node}_event"),
        "state_topic": topics.event,
        "event_types": event_types,
        "availability": availability,
        "qos": 1,
        "device": {"identifiers": [node]},
        "origin": origin,
    });
    vec![
        Discovery {
            topic: topics.discovery("alarm_control_panel", &node, "alarm"),
            payload: panel,
        },
        Discovery {
            topic: topics.discovery("sensor", &node, "last_user"),
            payload: last_user,
        },
        Discovery {
            topic: topics.discovery("event", &node, "event"),
            payload: event,
        },
    ]
}
