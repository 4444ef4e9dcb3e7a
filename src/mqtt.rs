//! The MQTT connection: the only module that imports rumqttc.
//!
//! The daemon speaks MQTT 5 (`rumqttc::v5`) for one property: Maximum Packet Size, sent in
//! CONNECT, makes the broker drop messages too large for this client instead of sending them.
//! With MQTT 3.1.1 an oversized message (a retained one, re-sent on every reconnect) was a
//! connection error that kept the daemon offline for good (issue 8).
//!
//! rumqttc's event loop runs in its own task (its `poll()` is not documented as cancel-safe
//! inside `select!`, rumqtt issue #601) and forwards what the daemon needs: connection events
//! (each (re)connection and subscription acknowledgement, never dropped) and incoming messages
//! in four bounded lanes, sorted by topic ([`Lanes`]): Home Assistant's alarm commands
//! (`B/alarm/set`, where a TRIGGER comes), keypad entries, the status of Home Assistant and
//! Zigbee2MQTT, and code-management commands (`B/config/set`). Each lane drops with a
//! rate-limited warning rather than stall the connection, so a flood on one topic fills only
//! its own lane, and the daemon takes the lanes in that order. After a connection error rumqttc
//! would reconnect at once in a tight loop, so the task sleeps with a growing [`Backoff`]. The
//! daemon connects with a clean start, so it re-subscribes on every [`MqttEvent::Connected`]
//! (rumqtt issues #250, #857).
//!
//! Two limits guard the connection against the daemon's own large messages (the whole roster:
//! DESIGN 10e). A publish over the Maximum Packet Size the broker announced in CONNACK
//! (mosquitto's `max_packet_size`) would fail rumqttc's write and drop the connection, so it is
//! not sent ([`Publisher::packet_limit`]). And a broker that refuses a QoS 1 message as too
//! large (mosquitto's `message_size_limit`) answers with PUBACK reason 0x95, which MQTT 5 does
//! not define for PUBACK and rumqttc cannot read ("Invalid return code received as response
//! for connect = 149"): the connection would drop, and the message would be published again
//! after reconnecting, for ever. So the whole roster ([`Publisher::publish_without_ack`]) and
//! any payload over [`QOS0_ABOVE`] go out with QoS 0, which the broker drops without an answer.
//! (With a clean session QoS 1 adds nothing else here: rumqttc forgets unacknowledged messages
//! when it reconnects, and the daemon publishes its retained state again.)

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::{self, QoS};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, StateError,
};
use rumqttc::{NetworkOptions, Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::topics::Topics;

/// The password is read where the connection is built, not by the checker.
impl Config {
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

/// Largest packet accepted from the broker, announced in CONNECT so that the broker drops
/// larger ones for this client. Commands over 64 KiB are answered `payload_too_large`; this
/// bound only keeps a rogue publisher from exhausting memory.
const MAX_INCOMING_PACKET: u32 = 1024 * 1024;

/// How many messages may wait for the daemon in each lane, and how many bytes of each are
/// kept. Beyond that (a flood, or a slow Raspberry Pi hashing codes) messages are dropped with
/// a warning rather than blocking the connection task, which must keep polling so that the
/// daemon's own publishes go out. Each keypad has a lane of its own: a burst of 256 entries
/// on one keypad fits; what a flood can make the lanes hold is 1 MiB a keypad (256 × 4 KiB),
/// 4 MiB for `B/config/set` (64 × 64 KiB), and 1 MiB for the alarm commands.
const ALARM_LANE: (usize, usize) = (256, 4 * 1024);
const KEYPAD_LANE: (usize, usize) = (256, 4 * 1024);
const STATUS_LANE: (usize, usize) = (64, 4 * 1024);
const ADMIN_LANE: (usize, usize) = (64, KEPT_PAYLOAD);

/// Payloads larger than this are published with QoS 0 (see the module docs): only the whole
/// roster and long command results (`list_users`, `activity`) are that large.
pub const QOS0_ABOVE: usize = 4 * 1024;

/// At most one drop warning per queue in this time.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Bytes kept of a command. Nothing the daemon reads is larger than a 64 KiB command; one byte
/// more is enough for the command parser to answer `payload_too_large`. (A keypad or status
/// message cut at 4 KiB is unreadable, and refused as such.)
const KEPT_PAYLOAD: usize = crate::admin::MAX_PAYLOAD + 1;

/// What the connection task reports.
#[derive(Debug)]
pub enum MqttEvent {
    /// A (re)connection was accepted: subscribe again.
    Connected,
    /// The connection failed or dropped; the task retries with its backoff.
    Lost,
    /// The broker answered a subscription request; the positions of the refused filters.
    Subscribed { refused: Vec<usize> },
    Message {
        topic: String,
        /// At most [`KEPT_PAYLOAD`] bytes (4 KiB outside `B/config/set`).
        payload: Vec<u8>,
        /// Set only on a retained message sent because of the subscription; a message
        /// published while subscribed arrives with it off, retained or not (MQTT 5
        /// Retain As Published off, the same as MQTT 3.1.1).
        retain: bool,
        /// When the message arrived: a code typed before a deadline counts before it, even
        /// if the daemon was busy when the deadline passed. Monotonic: the daemon's clock
        /// ([`crate::clock`]) tells the time of it, whatever the system clock did since.
        received: Instant,
    },
}

impl MqttEvent {
    /// Overwrites a message's payload: it may hold a code.
    pub fn wipe(&mut self) {
        if let MqttEvent::Message { payload, .. } = self {
            zeroize::Zeroize::zeroize(payload);
        }
    }
}

/// The publishing side, cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    client: AsyncClient,
    /// Set once the daemon asks to disconnect: only then does a DISCONNECT end the task.
    closing: Arc<AtomicBool>,
    /// Whether the connection is up (a ConnAck and no error since).
    connected: Arc<AtomicBool>,
    /// The Maximum Packet Size of the broker's last CONNACK; 0 when it announced none.
    max_packet: Arc<AtomicU32>,
}

impl Publisher {
    /// Queues a publish (QoS 1, or QoS 0 above [`QOS0_ABOVE`] bytes); it goes out once
    /// connected. One over the broker's [`Publisher::packet_limit`] is dropped with a warning.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        let payload: Vec<u8> = payload.into();
        let qos = if payload.len() > QOS0_ABOVE {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.send(topic, payload, retain, qos).await;
    }

    /// Queues a QoS 0 publish, for a message that may be larger than the broker takes (see the
    /// module docs): the broker drops it without an answer that would cost the connection.
    pub async fn publish_without_ack(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.send(topic, payload, retain, QoS::AtMostOnce).await;
    }

    async fn send(&self, topic: &str, payload: Vec<u8>, retain: bool, qos: QoS) {
        if let Some(max) = self.packet_limit() {
            let size = packet_size(topic, payload.len());
            if size > max as usize {
                tracing::warn!(
                    topic,
                    "not publishing a message of {size} bytes: the broker takes at most {max} \
                     bytes in one packet (its maximum packet size; mosquitto: max_packet_size)"
                );
                return;
            }
        }
        if let Err(e) = self.client.publish(topic, qos, retain, payload).await {
            tracing::warn!(topic, "cannot queue a publish: {e}");
        }
    }

    /// The largest packet the broker takes, if its CONNACK said (MQTT 5 Maximum Packet Size);
    /// compare with [`packet_size`].
    pub fn packet_limit(&self) -> Option<u32> {
        match self.max_packet.load(Ordering::Relaxed) {
            0 => None,
            max => Some(max),
        }
    }

    pub async fn subscribe(&self, topics: &[String]) {
        // Retain As Published stays off, so the retain flag tells a retained message sent on
        // subscribing from a live one. No Local: the bridge's own publishes (clearing a
        // retained command on `B/config/set` or `B/alarm/set`) do not come back to it, where
        // they took places in the lanes meant for what others send.
        let filters = topics.iter().map(|t| Filter {
            nolocal: true,
            ..Filter::new(t.clone(), QoS::AtLeastOnce)
        });
        if let Err(e) = self.client.subscribe_many(filters).await {
            tracing::warn!("cannot queue the subscriptions: {e}");
        }
    }

    /// Whether the connection is up: a shutdown has nothing to tell a broker it cannot reach.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sends a DISCONNECT after everything queued before it.
    pub async fn disconnect(&self) {
        self.closing.store(true, Ordering::Relaxed);
        if let Err(e) = self.client.disconnect().await {
            tracing::debug!("disconnect request not queued: {e}");
        }
    }
}

/// Says `offline` and DISCONNECT, then waits for the connection task. A broker that is gone
/// (or a full request queue) must not hold the shutdown up, and with no connection there is
/// nobody to tell (the broker publishes the last will itself). The inbox stays open until
/// the task is done.
pub async fn close(publisher: &Publisher, inbox: Inbox, task: JoinHandle<()>, status_topic: &str) {
    if !publisher.is_connected() {
        task.abort();
        return;
    }
    let goodbye = async {
        publisher.publish(status_topic, "offline", true).await;
        publisher.disconnect().await;
        task.await
    };
    if tokio::time::timeout(Duration::from_secs(5), goodbye)
        .await
        .is_err()
    {
        tracing::warn!("the MQTT connection did not close within 5 s");
    }
    drop(inbox);
}

/// The size in bytes of the MQTT 5 PUBLISH packet that carries `payload_len` bytes on `topic`
/// (with a packet id, no properties), as the broker's Maximum Packet Size counts it.
pub fn packet_size(topic: &str, payload_len: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + 1 + payload_len;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// The streams from the connection task: connection events (rare, never dropped) and the
/// message lanes (each bounded), in the order the daemon takes them.
pub struct Inbox {
    pub control: mpsc::UnboundedReceiver<MqttEvent>,
    /// `B/alarm/set`: Home Assistant's panel and its automations' TRIGGER.
    pub alarm: mpsc::Receiver<MqttEvent>,
    /// One lane per keypad, then the status lane (Home Assistant's and Zigbee2MQTT's, and
    /// any other topic), then `B/config/set`: taken in turn, so that a flood on one of them
    /// (a keypad's topic, say) delays the others by one message at a time, never silences them.
    pub others: Vec<mpsc::Receiver<MqttEvent>>,
    /// Which of `others` has the next turn.
    turn: usize,
}

impl Inbox {
    /// The next event: connection events first, then the lanes in order. `None` once the
    /// connection task has stopped. (Each `recv` is cancel-safe.)
    pub async fn next(&mut self) -> Option<MqttEvent> {
        tokio::select! {
            biased;
            event = self.control.recv() => event,
            event = self.alarm.recv() => event,
            event = in_turn(&mut self.others, &mut self.turn) => event,
        }
    }
}

/// The next message of the first lane with one, starting at `turn`; the turn then passes to
/// the lane after it.
async fn in_turn(lanes: &mut [mpsc::Receiver<MqttEvent>], turn: &mut usize) -> Option<MqttEvent> {
    std::future::poll_fn(|cx| {
        let n = lanes.len();
        for i in 0..n {
            let lane = (*turn + i) % n;
            match lanes[lane].poll_recv(cx) {
                std::task::Poll::Ready(Some(event)) => {
                    *turn = (lane + 1) % n;
                    return std::task::Poll::Ready(Some(event));
                }
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Which topics go to which lane of the [`Inbox`]; any other topic goes to the status lane.
#[derive(Clone, Debug)]
pub struct Lanes {
    pub alarm: String,
    pub config: String,
    pub status: Vec<String>,
    /// Each keypad's topic, each with a lane of its own.
    pub keypads: Vec<String>,
}

impl Lanes {
    /// `B/alarm/set`, `B/config/set`, and the status topics: Home Assistant's and each
    /// Zigbee2MQTT bridge's state. Anything else is a keypad.
    pub fn new(topics: &Topics, config: &Config) -> Lanes {
        Lanes {
            alarm: topics.alarm_set.clone(),
            config: topics.config_set.clone(),
            status: std::iter::once(topics.ha_status.clone())
                .chain(Topics::zigbee2mqtt_bridges(&config.keypads))
                .collect(),
            keypads: config.keypads.iter().map(|k| k.topic.clone()).collect(),
        }
    }
}

/// Builds the client from the config and starts the connection task.
pub fn connect(
    config: &Config,
    status_topic: &str,
    lanes: Lanes,
) -> anyhow::Result<(Publisher, Inbox, JoinHandle<()>)> {
    let m = &config.mqtt;
    let mut options = MqttOptions::new(&m.client_id, &m.host, m.port);
    options
        .set_keep_alive(Duration::from_secs(m.keepalive_s))
        .set_clean_start(true)
        .set_max_packet_size(Some(MAX_INCOMING_PACKET))
        .set_last_will(LastWill::new(
            status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    // Nagle's algorithm held each reply back until the broker's ack of the previous packet:
    // ~18 ms of a keypad entry's 44 ms (issue 11).
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    // rumqttc v5 sizes its in-flight table by this limit, u16::MAX by default: 14 MiB of
    // resident memory for a daemon that has a few messages in flight (issue 11).
    options.set_outgoing_inflight_upper_limit(100);
    if let Some(password) = config.read_mqtt_password()? {
        let Some(username) = &m.username else {
            bail!("mqtt.password_file is set but mqtt.username is not");
        };
        options.set_credentials(username, password);
    } else if let Some(username) = &m.username {
        options.set_credentials(username, "");
    }
    let tls = m.tls.ca_file.is_some();
    if let Some(ca_file) = &m.tls.ca_file {
        // rumqttc is built without a default crypto provider: use ring (FACTS.md).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(ca_file)
            .with_context(|| format!("cannot read mqtt.tls.ca_file {}", ca_file.display()))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    let broker = Broker {
        address: format!("{}:{}", m.host, m.port),
        tls,
    };
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (control_tx, control) = mpsc::unbounded_channel();
    let (alarm_tx, alarm) = mpsc::channel(ALARM_LANE.0);
    let mut others = Vec::new();
    let mut keypads = Vec::new();
    for topic in &lanes.keypads {
        let (tx, rx) = mpsc::channel(KEYPAD_LANE.0);
        let what = format!("the entries of the keypad on {topic}");
        keypads.push((topic.clone(), tx, Drops::new(what, KEYPAD_LANE)));
        others.push(rx);
    }
    let (status_tx, status) = mpsc::channel(STATUS_LANE.0);
    let (admin_tx, admin) = mpsc::channel(ADMIN_LANE.0);
    others.extend([status, admin]);
    let closing = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    let max_packet = Arc::new(AtomicU32::new(0));
    let queues = Queues {
        lanes,
        alarm: (
            alarm_tx,
            Drops::new("Home Assistant's alarm commands", ALARM_LANE),
        ),
        keypads,
        status: (
            status_tx,
            Drops::new("Home Assistant's and Zigbee2MQTT's status", STATUS_LANE),
        ),
        admin: (admin_tx, Drops::new("code-management commands", ADMIN_LANE)),
    };
    let task = tokio::spawn(drive(
        eventloop,
        broker,
        control_tx,
        queues,
        closing.clone(),
        connected.clone(),
        max_packet.clone(),
    ));
    Ok((
        Publisher {
            client,
            closing,
            connected: connected.clone(),
            max_packet,
        },
        Inbox {
            control,
            alarm,
            others,
            turn: 0,
        },
        task,
    ))
}

/// Where the daemon connects, for log lines.
struct Broker {
    address: String,
    tls: bool,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = if self.tls { "TLS" } else { "no TLS" };
        write!(f, "{} ({tls}, MQTT 5)", self.address)
    }
}

/// The message lanes, sorted by topic.
struct Queues {
    lanes: Lanes,
    alarm: (mpsc::Sender<MqttEvent>, Drops),
    /// Each keypad's topic and lane.
    keypads: Vec<(String, mpsc::Sender<MqttEvent>, Drops)>,
    status: (mpsc::Sender<MqttEvent>, Drops),
    admin: (mpsc::Sender<MqttEvent>, Drops),
}

impl Queues {
    fn push(&mut self, topic: String, payload: &[u8], retain: bool) {
        let keypad = self.keypads.iter_mut().find(|(t, _, _)| *t == topic);
        let (queue, drops) = if topic == self.lanes.config {
            (&mut self.admin.0, &mut self.admin.1)
        } else if topic == self.lanes.alarm {
            (&mut self.alarm.0, &mut self.alarm.1)
        } else if let Some((_, queue, drops)) = keypad {
            (queue, drops)
        } else {
            (&mut self.status.0, &mut self.status.1)
        };
        let kept = payload.len().min(drops.kept);
        let event = MqttEvent::Message {
            topic,
            payload: payload[..kept].to_vec(),
            retain,
            received: Instant::now(),
        };
        let now = Instant::now();
        let due = match queue.try_send(event) {
            Ok(()) => drops.due(now),
            Err(mpsc::error::TrySendError::Full(mut dropped)) => {
                dropped.wipe();
                drops.dropped(now)
            }
            Err(mpsc::error::TrySendError::Closed(mut dropped)) => {
                dropped.wipe();
                None
            }
        };
        if let Some(n) = due {
            tracing::warn!(
                "the daemon is behind on {}: {n} dropped, its queue of {} being full \
                 (a flood?); at most one such warning every {} s",
                drops.queue,
                drops.capacity,
                DROP_WARNING_EVERY.as_secs()
            );
        }
    }
}

/// Counts the messages dropped from one queue and says so at most once per
/// [`DROP_WARNING_EVERY`]. Pure: time is passed in.
#[derive(Debug)]
struct Drops {
    queue: String,
    capacity: usize,
    /// Bytes kept of each message in this lane.
    kept: usize,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Drops {
    fn new(queue: impl Into<String>, (capacity, kept): (usize, usize)) -> Drops {
        Drops {
            queue: queue.into(),
            capacity,
            kept,
            unreported: 0,
            last_warning: None,
        }
    }

    /// A message was dropped at `now`; returns how many drops to report, if a warning is due.
    fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        self.due(now)
    }

    /// The drops not reported yet, if there are some and the last warning is old enough.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.unreported == 0 {
            return None;
        }
        if let Some(at) = self.last_warning {
            if now.saturating_duration_since(at) < DROP_WARNING_EVERY {
                return None;
            }
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The wait before the next connection attempt, doubling from [`Backoff::FIRST`] to
/// [`Backoff::LONGEST`]. Only a connection that stayed up [`Backoff::STABLE`] starts it
/// again from the first: one that drops right after its ConnAck (a broker that accepts, then
/// sends something this client cannot take) must not turn into a reconnect loop. Pure: time
/// is passed in.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    connected_at: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(30);
    const STABLE: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff {
            next: Self::FIRST,
            connected_at: None,
        }
    }

    fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// A connection attempt failed, or the connection dropped, at `now`. Returns how long the
    /// connection had been up (`None` if there was none) and how long to wait.
    fn failed(&mut self, now: Instant) -> (Option<Duration>, Duration) {
        let lasted = self
            .connected_at
            .take()
            .map(|at| now.saturating_duration_since(at));
        if lasted.is_some_and(|up| up >= Self::STABLE) {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        (lasted, wait)
    }
}

/// Polls the event loop until the DISCONNECT the daemon asked for has gone out. It never
/// waits for the daemon: the daemon's publishes only leave while this loop polls.
async fn drive(
    mut eventloop: EventLoop,
    broker: Broker,
    control: mpsc::UnboundedSender<MqttEvent>,
    mut queues: Queues,
    closing: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    max_packet: Arc<AtomicU32>,
) {
    let mut backoff = Backoff::new();
    tracing::info!("connecting to the MQTT broker at {broker}");
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                tracing::info!("connected to the MQTT broker at {broker}");
                let limit = ack.properties.and_then(|p| p.max_packet_size);
                max_packet.store(limit.unwrap_or(0), Ordering::Relaxed);
                backoff.connected(Instant::now());
                connected.store(true, Ordering::Relaxed);
                let _ = control.send(MqttEvent::Connected);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .enumerate()
                    .filter(|(_, code)| !matches!(code, SubscribeReasonCode::Success(_)))
                    .map(|(i, _)| i)
                    .collect();
                let _ = control.send(MqttEvent::Subscribed { refused });
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                queues.push(topic, &p.payload, p.retain);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) if closing.load(Ordering::Relaxed) => return,
            Ok(_) => {}
            Err(e) => {
                let was_connected = connected.swap(false, Ordering::Relaxed);
                if control.is_closed() || closing.load(Ordering::Relaxed) {
                    return;
                }
                if was_connected {
                    let _ = control.send(MqttEvent::Lost);
                }
                let hint = if let ConnectionError::MqttState(StateError::Deserialization(
                    mqttbytes::Error::PayloadSizeLimitExceeded { .. },
                )) = e
                {
                    " (the broker sent a message over the 1 MiB this client asked for at most: \
                     limit message sizes on the broker, mosquitto's message_size_limit)"
                } else {
                    ""
                };
                let (lasted, wait) = backoff.failed(Instant::now());
                let wait_s = wait.as_secs_f64();
                match lasted {
                    Some(up) => tracing::warn!(
                        "the connection to {broker} dropped {:.1} s after connecting: \
                         {e}{hint}; retrying in {wait_s} s",
                        up.as_secs_f64()
                    ),
                    None => tracing::warn!(
                        "cannot connect to the MQTT broker at {broker}: {e}{hint}; \
                         retrying in {wait_s} s"
                    ),
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

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
    fn a_connection_that_drops_within_seconds_does_not_reset_the_backoff() {
        let mut b = Backoff::new();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..9 {
            b.connected(now);
            now += 2 * S;
            let (lasted, wait) = b.failed(now);
            assert_eq!(lasted, Some(2 * S));
            waits.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
    }

    #[test]
    fn a_connection_that_stayed_up_thirty_seconds_starts_the_backoff_again() {
        let mut b = Backoff::new();
        let now = Instant::now();
        for _ in 0..4 {
            b.failed(now);
        }
        b.connected(now);
        assert_eq!(b.failed(now + 29 * S), (Some(29 * S), 4 * S));
        b.connected(now);
        assert_eq!(b.failed(now + 30 * S), (Some(30 * S), Backoff::FIRST));
        assert_eq!(b.failed(now + 31 * S), (None, 2 * Backoff::FIRST));
    }

    #[test]
    fn failed_attempts_double_the_wait_up_to_thirty_seconds() {
        let mut b = Backoff::new();
        let now = Instant::now();
        let waits: Vec<_> = (0..10).map(|_| b.failed(now).1.as_millis()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn drops_are_reported_at_once_then_at_most_every_ten_seconds_with_their_count() {
        let mut d = Drops::new("test", (8, 8));
        let now = Instant::now();
        assert_eq!(d.due(now), None, "nothing dropped, nothing to say");
        assert_eq!(d.dropped(now), Some(1));
        for i in 1..=1000 {
            assert_eq!(d.dropped(now + Duration::from_millis(i)), None);
        }
        assert_eq!(d.due(now + 9 * S), None);
        assert_eq!(d.due(now + 10 * S), Some(1000));
        assert_eq!(d.due(now + 30 * S), None, "each drop is reported once");
        assert_eq!(d.dropped(now + 31 * S), Some(1));
    }
}
