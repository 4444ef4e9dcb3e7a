//! The roster's publishes (DESIGN 10e), carried out in order on a thread of their own; what
//! to publish and when is decided in [`super`] without I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Coalescer, TooLarge, Whole};
use crate::mqtt;
use crate::panel::Publish;
use crate::store::Store;
use crate::topics::Topics;

/// The daemon's side of the roster: the coalesced whole roster, each change's entries, and
/// the number of users (counted at start, then by each read of the whole roster).
pub struct Roster {
    jobs: mpsc::UnboundedSender<Job>,
    task: JoinHandle<()>,
    coalescer: Coalescer,
    users: Arc<AtomicUsize>,
}

impl Roster {
    /// Starts the roster's thread for a store of `users` users.
    pub fn start(
        store: &Store,
        publisher: &mqtt::Publisher,
        topics: &Topics,
        users: usize,
    ) -> Roster {
        let users = Arc::new(AtomicUsize::new(users));
        let (jobs, receiver) = mpsc::unbounded_channel();
        let (store, publisher, topics, count) = (
            store.clone(),
            publisher.clone(),
            topics.clone(),
            users.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            run(receiver, store, publisher, topics, count, runtime)
        });
        Roster {
            jobs,
            task,
            coalescer: Coalescer::default(),
            users,
        }
    }

    /// How many users the store has, for the status line.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// A change wrote or deleted these users' entries (from [`super::changed_users`]).
    pub fn changed(&mut self, entries: Vec<Publish>, now: Instant) {
        self.send(Job::Users(entries));
        self.coalescer.changed(now);
    }

    /// A new connection: every person's entry and the whole roster, for a broker that lost them.
    pub fn connected(&mut self, now: Instant) {
        self.send(Job::Everyone);
        self.coalescer.sent(now);
    }

    /// The whole roster, if its coalesced publish is due at `now`.
    pub fn due(&mut self, now: Instant) {
        if self.coalescer.take_due(now) {
            self.send(Job::Whole);
        }
    }

    /// How long until the whole roster is due, if a change waits for it.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.coalescer
            .next_deadline()
            .map(|at| at.saturating_duration_since(now))
    }

    /// At shutdown: a whole roster still waiting for its turn goes out, then the roster's last
    /// publishes, before `offline` and DISCONNECT.
    pub async fn finish(mut self, connected: bool) {
        if self.coalescer.next_deadline().is_some() {
            self.send(Job::Whole);
        }
        drop(self.jobs);
        if connected
            && tokio::time::timeout(Duration::from_secs(5), &mut self.task)
                .await
                .is_err()
        {
            tracing::warn!("the roster's last publishes did not go out within 5 s");
        }
        self.task.abort();
    }

    fn send(&self, job: Job) {
        // The thread ends only when this sender is dropped, at shutdown.
        let _ = self.jobs.send(job);
    }
}

/// What the roster task publishes, in the order asked.
enum Job {
    /// The entries of the users a change wrote or deleted.
    Users(Vec<Publish>),
    /// The whole roster, read from the store.
    Whole,
    /// Every user's entry, then the whole roster (a new connection).
    Everyone,
}

/// Carries out the roster's publishes in order, on a thread of its own: at 10000 users the
/// whole roster is 3 MB, read and serialised in some 30 ms, and every entry is 10000 publishes,
/// which would hold keypad entries up while they wait for room in the MQTT client's queue. One
/// thread keeps each topic's retained message the newest (an entry published after a change
/// is never overtaken by an older copy), and keeps the memory of reading the roster in one
/// allocator arena instead of one per thread of the blocking pool. Nothing is published while
/// disconnected: a new connection publishes everything again. Ends when the daemon drops its
/// sender.
fn run(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    store: Store,
    publisher: mqtt::Publisher,
    topics: Topics,
    count: Arc<AtomicUsize>,
    runtime: tokio::runtime::Handle,
) {
    let publish = |topic: &str, payload: Vec<u8>| {
        runtime.block_on(publisher.publish(topic, payload, true));
    };
    let mut too_large = TooLarge::default();
    // Whether the broker's retained whole roster was cleared since the last one that fitted.
    let mut cleared = false;
    let mut told_size = false;
    while let Some(job) = jobs.blocking_recv() {
        if !publisher.is_connected() {
            continue;
        }
        let everyone = match job {
            Job::Users(entries) => {
                for p in entries {
                    let size = mqtt::packet_size(&p.topic, p.payload.len());
                    match publisher.packet_limit() {
                        // An entry known to be out of date is worse than none.
                        Some(max) if size > max as usize => {
                            tracing::warn!(
                                topic = p.topic,
                                "a roster entry of {size} bytes is larger than the {max} bytes \
                                 the broker takes in one packet: its topic is emptied instead \
                                 (raise the broker's max_packet_size)"
                            );
                            publish(&p.topic, Vec::new());
                        }
                        _ => publish(&p.topic, p.payload),
                    }
                }
                continue;
            }
            Job::Whole => false,
            Job::Everyone => true,
        };
        // Each person's entry goes out as it is read, on a new connection; the whole roster
        // once all are read.
        let mut whole = Whole::new(count.load(Ordering::Relaxed));
        let read = store.each_user(|user| {
            let p = super::entry(&topics, user);
            whole.push(&p.payload);
            if everyone && publisher.is_connected() {
                publish(&p.topic, p.payload);
            }
        });
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the users for the roster");
                continue;
            }
        };
        count.store(n, Ordering::Relaxed);
        let whole = whole.finish();
        let topic = &topics.config_users;
        let size = mqtt::packet_size(topic, whole.len());
        match publisher.packet_limit() {
            Some(max) if size > max as usize => {
                if let Some(held_back) = too_large.held_back(Instant::now()) {
                    tracing::warn!(
                        held_back,
                        "the whole roster ({n} users, {size} bytes) is larger than the {max} \
                         bytes the broker takes in one packet: it is not published on {topic} \
                         (each person's entry on {topic}/<id> still is); raise the broker's \
                         maximum packet size (mosquitto: max_packet_size) to at least {size}, \
                         or remove it; at most one such warning every {} minutes",
                        TooLarge::EVERY.as_secs() / 60
                    );
                }
                // A retained roster known to be out of date is worse than none.
                if !cleared {
                    publish(topic, Vec::new());
                    cleared = true;
                }
            }
            _ => {
                if size > 1024 * 1024 && !told_size {
                    told_size = true;
                    tracing::info!(
                        "the whole roster on {topic} is {size} bytes ({n} users): a broker \
                         that limits messages below that drops it without a word (mosquitto: \
                         message_size_limit); each person's entry on {topic}/<id> is small"
                    );
                }
                runtime.block_on(publisher.publish_without_ack(topic, whole, true));
                tracing::debug!("published the whole roster ({n} users, {size} bytes)");
                cleared = false;
            }
        }
    }
}
