//! The MQTT connection: the only module that imports rumqttc.
//!
//! rumqttc's event loop runs in its own task (its `poll()` is not documented as cancel-safe
//! inside `select!`, rumqtt issue #601) and forwards what the daemon needs over two channels:
//! connection events (each (re)connection and subscription acknowledgement, never dropped) and
//! incoming messages (bounded: dropped with a warning rather than stalling the connection). After a
//! connection error rumqttc would reconnect at once in a tight loop, so the task sleeps with
//! a growing backoff. The daemon connects with a clean session, so it re-subscribes on every
//! [`MqttEvent::Connected`] (rumqtt issues #250, #857).

use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::mqttbytes::v4::SubscribeReasonCode;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;

/// Largest packet accepted from the broker. Commands over 64 KiB are answered
/// `payload_too_large`; this bound only keeps a rogue publisher from exhausting memory.
const MAX_INCOMING_PACKET: usize = 1024 * 1024;

/// How many incoming messages may wait for the daemon. Beyond that (a flood, or a slow
/// Raspberry Pi hashing codes) messages are dropped with a warning rather than blocking the
/// connection task, which must keep polling so that the daemon's own publishes go out.
const QUEUE: usize = 256;

/// Bytes kept of an incoming payload. Nothing the daemon reads is larger than a 64 KiB
/// command; one byte more is enough for the command parser to answer `payload_too_large`,
/// and it bounds the queue's memory (256 × 64 KiB) on a small Raspberry Pi.
const KEPT_PAYLOAD: usize = crate::admin::MAX_PAYLOAD + 1;

/// What the connection task reports.
#[derive(Debug)]
pub enum MqttEvent {
    /// A (re)connection was accepted: subscribe again.
    Connected,
    /// The broker answered a subscription request; the positions of the refused filters.
    Subscribed { refused: Vec<usize> },
    Message {
        topic: String,
        /// At most [`KEPT_PAYLOAD`] bytes.
        payload: Vec<u8>,
        retain: bool,
        /// When the message arrived: a code typed before a deadline counts before it, even
        /// if the daemon was busy when the deadline passed.
        at: jiff::Timestamp,
    },
}

/// The publishing side, cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    client: AsyncClient,
}

impl Publisher {
    /// Queues a QoS 1 publish; it goes out once connected.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        let payload: Vec<u8> = payload.into();
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
        {
            tracing::warn!(topic, "cannot queue a publish: {e}");
        }
    }

    pub async fn subscribe(&self, topics: &[String]) {
        let filters = topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = self.client.subscribe_many(filters).await {
            tracing::warn!("cannot queue the subscriptions: {e}");
        }
    }

    /// Sends a DISCONNECT after everything queued before it.
    pub async fn disconnect(&self) {
        if let Err(e) = self.client.disconnect().await {
            tracing::debug!("disconnect request not queued: {e}");
        }
    }
}

/// Builds the client from the config and starts the connection task.
/// The two streams from the connection task: connection events (rare, never dropped) and
/// incoming messages (bounded).
pub struct Inbox {
    pub control: mpsc::UnboundedReceiver<MqttEvent>,
    pub messages: mpsc::Receiver<MqttEvent>,
}

pub fn connect(
    config: &Config,
    status_topic: &str,
) -> anyhow::Result<(Publisher, Inbox, JoinHandle<()>)> {
    let m = &config.mqtt;
    let mut options = MqttOptions::new(&m.client_id, &m.host, m.port);
    options
        .set_keep_alive(Duration::from_secs(m.keepalive_s))
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET)
        .set_last_will(LastWill::new(
            status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(password) = config.read_mqtt_password()? {
        let Some(username) = &m.username else {
            bail!("mqtt.password_file is set but mqtt.username is not");
        };
        options.set_credentials(username, password);
    } else if let Some(username) = &m.username {
        options.set_credentials(username, "");
    }
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
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (control_tx, control) = mpsc::unbounded_channel();
    let (messages_tx, messages) = mpsc::channel(QUEUE);
    let task = tokio::spawn(drive(eventloop, control_tx, messages_tx));
    Ok((Publisher { client }, Inbox { control, messages }, task))
}

/// Polls the event loop until the DISCONNECT has gone out. It never waits for the daemon:
/// the daemon's publishes only leave while this loop polls.
async fn drive(
    mut eventloop: EventLoop,
    control: mpsc::UnboundedSender<MqttEvent>,
    messages: mpsc::Sender<MqttEvent>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                tracing::info!("connected to the MQTT broker");
                backoff = Duration::from_millis(250);
                let _ = control.send(MqttEvent::Connected);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .enumerate()
                    .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
                    .map(|(i, _)| i)
                    .collect();
                let _ = control.send(MqttEvent::Subscribed { refused });
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let kept = p.payload.len().min(KEPT_PAYLOAD);
                let event = MqttEvent::Message {
                    topic: p.topic,
                    payload: p.payload[..kept].to_vec(),
                    retain: p.retain,
                    at: jiff::Timestamp::now(),
                };
                if let Err(mpsc::error::TrySendError::Full(MqttEvent::Message { topic, .. })) =
                    messages.try_send(event)
                {
                    tracing::warn!(topic, "too many messages waiting: dropping this one");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if control.is_closed() {
                    return;
                }
                tracing::warn!("MQTT connection error: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
