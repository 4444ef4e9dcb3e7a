//! keypad-bridge: per-person keypad codes for a Home Assistant alarm, over MQTT.
//!
//! ```text
//!   keypads (Zigbee2MQTT, ESPHome, plain)      Home Assistant            owner (mosquitto_pub, HA scripts)
//!            │ zigbee2mqtt/<kp>, <topic>          │ B/alarm/set                │ B/config/set
//!            ▼                                    ▼                            ▼
//!   mqtt (the only rumqttc user: four lanes: alarm commands, keypads, status, code management)
//!            │
//!            ▼
//!   daemon: one loop, one owner; it decides nothing, it does the I/O that decisions list
//!            ├─► panel      sans-IO: alarm + lockouts + attributes + transaction memory + tag
//!            │              learning; keypad/alarm-set/bridge messages parsed by keypad::*;
//!            │              begin → (Argon2 lookup in the loop) → finish, tick(now) → Decision
//!            ├─► admin::flow  one command: gate → auth (Argon2) → replay → ration → decide →
//!            │              commit, over a `Desk` (the loop's I/O, or a fake in the tests)
//!            ├─► admin      AdminCommand parsed whole, gate/authorise, decide against `Users`
//!            ├─► roster     sans-IO: each change's users at once, the whole roster coalesced
//!            │              (at most every 2 s); published in order by one task of the daemon
//!            └─► store      sled trees + secret + alarm-state file; durable before acknowledged
//!   under them, pure: alarm (state machine), lockout, users (roles, validity), codes (Code,
//!   one Argon2id lookup key), events, topics, homeassistant (discovery structs), config
//!            ▼
//!   B/alarm/state, B/alarm/attributes, B/alarm/last_user, B/event, B/config/result, B/config/users,
//!   B/config/users/<id>, <kp>/set replies, Home Assistant discovery
//! ```
//!
//! Modules: [`config`] (YAML, defaults, plain-words errors), [`codes`], [`store`], [`users`],
//! [`keypad`], [`alarm`], [`lockout`], [`panel`] (every decision about the alarm), [`admin`]
//! (code management; [`admin::flow`] carries one command through), [`roster`] (what the
//! roster's topics carry, and when), [`events`], [`topics`], [`homeassistant`], [`mqtt`] (the
//! only rumqttc user), [`daemon`] (the loop), [`cli`] (the offline commands), [`clock`] (the
//! daemon's time: monotonic, never behind the store's last write, following the system clock's
//! steps).
//! The contract is `DESIGN.md`: topics, payloads, commands and storage rules.

pub mod admin;
pub mod alarm;
pub mod cli;
pub mod clock;
pub mod codes;
pub mod config;
pub mod daemon;
pub mod events;
pub mod homeassistant;
pub mod keypad;
pub mod lockout;
pub mod mqtt;
pub mod owner;
pub mod panel;
pub mod roster;
pub mod store;
pub mod systemd;
pub mod topics;
pub mod users;
