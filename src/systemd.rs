//! Telling systemd how the daemon is (`Type=notify`), through the `sd-notify` crate: `READY=1`
//! once it is online (connected, subscriptions acknowledged, state published), `STATUS=` lines
//! a person reads in `systemctl status`, `WATCHDOG=1` from the owner loop itself (so a stalled
//! loop, not just a live process, is what systemd sees) and `STOPPING=1` on shutdown. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Systemd {
    /// Half of `WatchdogSec`: how often the loop says it is alive.
    watchdog: Option<Duration>,
    ready: bool,
    status: String,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` as sd_watchdog_enabled(3) does: when `WATCHDOG_PID` is set it
    /// must be this process. (The crate's `watchdog_enabled` also wants `WATCHDOG_PID` set.)
    pub fn from_env() -> Systemd {
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let ours = var("WATCHDOG_PID").is_none_or(|pid| pid == u64::from(std::process::id()));
        let watchdog = var("WATCHDOG_USEC")
            .filter(|&usec| ours && usec > 0)
            .map(|usec| Duration::from_micros(usec / 2).max(Duration::from_millis(100)));
        Systemd {
            watchdog,
            ready: false,
            status: String::new(),
        }
    }

    /// How often [`Systemd::alive`] must be called, when systemd watches the daemon.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// A `STATUS=` line, sent when it changed.
    pub fn status(&mut self, status: String) {
        if status != self.status {
            notify(&[NotifyState::Status(&status)]);
            self.status = status;
        }
    }

    /// Online: `READY=1` the first time.
    pub fn ready(&mut self, status: String) {
        self.status(status);
        if !self.ready {
            notify(&[NotifyState::Ready]);
            self.ready = true;
        }
    }

    pub fn alive(&self) {
        notify(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&mut self) {
        notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot tell systemd how the daemon is");
    }
}

/// What `systemctl status` shows while connected.
pub fn online_line(state: crate::alarm::AlarmState, users: usize) -> String {
    format!("online, {}, {users} users", state.as_str())
}

/// What `systemctl status` shows while there is no connection.
pub fn waiting_line(config: &crate::config::Config) -> String {
    format!(
        "waiting for the broker at {}:{}",
        config.mqtt.host, config.mqtt.port
    )
}
