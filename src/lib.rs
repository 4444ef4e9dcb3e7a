//! keypad-bridge: per-person keypad codes for a Home Assistant alarm, over MQTT.
//!
//! ```text
//!   keypads (Zigbee2MQTT, ESPHome, plain)      Home Assistant            owner (mosquitto_pub, HA scripts)
//!            │ zigbee2mqtt/<kp>, <topic>          │ B/alarm/set                │ B/config/set
//!            ▼                                    ▼                            ▼
//!   mqtt ──► daemon (one loop, one owner) ──► keypad::* parse/reply   admin: parse, authorise, apply
//!            │   ├─ lockout   (per-source failure counting, pure)
//!            │   ├─ codes     (Code, one Argon2id lookup key per check)
//!            │   ├─ users     (roles, validity rules, pure)
//!            │   ├─ alarm     (state machine, time passed in, pure)
//!            │   └─ store     (sled trees + secret + alarm-state file; durable before ack)
//!            ▼
//!   B/alarm/state, B/alarm/attributes, B/alarm/last_user, B/event, B/config/result, B/config/users,
//!   <kp>/set replies, Home Assistant discovery (homeassistant)
//! ```
//!
//! Modules: [`config`] (YAML, defaults, plain-words errors), [`codes`], [`store`], [`users`],
//! [`keypad`], [`alarm`], [`lockout`], [`admin`], [`events`], [`topics`], [`homeassistant`],
//! [`mqtt`] (the only rumqttc user), [`daemon`] (the loop), [`cli`] (the offline commands).
//! The contract is `DESIGN.md`: topics, payloads, commands and storage rules.

pub mod admin;
pub mod alarm;
pub mod cli;
pub mod codes;
pub mod config;
pub mod daemon;
pub mod events;
pub mod homeassistant;
pub mod keypad;
pub mod lockout;
pub mod mqtt;
pub mod panel;
pub mod store;
pub mod topics;
pub mod users;
