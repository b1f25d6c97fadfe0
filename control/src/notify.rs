//! flanneld's reports to systemd (`Type=notify`, see [`flannel_shared::sd_notify`]).
//!
//! - `STATUS=` says what flanneld is doing: waiting for etcd, waiting for or rejecting the
//!   network config (with the reason), acquiring the lease, `lease held: <subnet>`.
//! - `READY=1` goes out once, when the lease is held, subnet.env is written and the route table
//!   is published (the `/readyz` conditions): units ordered `After=flanneld.service` can read
//!   subnet.env as soon as they start.
//! - `WATCHDOG=1` (with `WatchdogSec=`) comes from the loop that keeps the lease
//!   ([`Heartbeat::tick`] is one of its `select!` branches), so a loop that stops turning stops
//!   pinging and systemd restarts flanneld.
//! - `STOPPING=1` on SIGTERM/SIGINT.
//!
//! Without `$NOTIFY_SOCKET` every call here does nothing. A failed send is logged once.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flannel_shared::sd_notify::{Field, Reporter};
use flannel_shared::Ipv4Net;

use crate::status::Status;

/// How often readiness is checked before `READY=1` went out.
const READY_POLL: Duration = Duration::from_millis(50);

/// flanneld's one reporter, read from the environment on first use.
fn systemd() -> &'static Reporter {
    static SYSTEMD: OnceLock<Reporter> = OnceLock::new();
    SYSTEMD.get_or_init(Reporter::from_env)
}

/// `STATUS=<text>`.
pub fn status(text: &str) {
    systemd().status(text);
}

/// `STOPPING=1`.
pub fn stopping(text: &str) {
    systemd().stopping(text);
}

/// Half of `$WATCHDOG_USEC`, when systemd watches flanneld.
pub fn watchdog_interval() -> Option<Duration> {
    systemd().watchdog_interval()
}

/// `READY=1` once flanneld is ready, then `WATCHDOG=1` at the watchdog interval: driven by
/// the lease loop through [`Heartbeat::tick`] and [`Heartbeat::beat`].
pub struct Heartbeat {
    status: Arc<Status>,
    ready_sent: bool,
    ready_poll: Option<tokio::time::Interval>,
    watchdog: Option<tokio::time::Interval>,
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

impl Heartbeat {
    pub fn new(status: Arc<Status>) -> Self {
        let on = systemd().is_active();
        Self {
            status,
            ready_sent: false,
            ready_poll: on.then(|| interval(READY_POLL)),
            watchdog: watchdog_interval().map(interval),
        }
    }

    /// Completes when [`Heartbeat::beat`] is due; never when there is nothing to send.
    pub async fn tick(&mut self) {
        let Self {
            ready_sent,
            ready_poll,
            watchdog,
            ..
        } = self;
        let ready_poll = async {
            match ready_poll.as_mut() {
                Some(i) if !*ready_sent => {
                    i.tick().await;
                }
                _ => std::future::pending().await,
            }
        };
        let watchdog = async {
            match watchdog.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ready_poll => {}
            _ = watchdog => {}
        }
    }

    /// Sends `READY=1` (once, when ready) and then `WATCHDOG=1` (when watched). `subnet`: the
    /// lease held, for the status line.
    pub fn beat(&mut self, subnet: Ipv4Net) {
        let mut fields = Vec::with_capacity(3);
        let text;
        if !self.ready_sent && self.status.missing().is_empty() {
            self.ready_sent = true;
            text = format!("lease held: {subnet}; subnet.env written, route table published");
            fields.push(Field::Ready);
            fields.push(Field::Status(&text));
            tracing::info!("ready: notified systemd (READY=1)");
        }
        // systemd arms the watchdog at READY=1: pings before it would mean nothing.
        if self.ready_sent && self.watchdog.is_some() {
            fields.push(Field::Watchdog);
        }
        if !fields.is_empty() {
            systemd().send(&fields);
        }
    }

    /// Runs `work` (a re-acquisition, whose retries are the loop's work for that time) and
    /// keeps pinging the watchdog while it is pending.
    pub async fn while_pending<F: Future>(&mut self, subnet: Ipv4Net, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = self.tick() => self.beat(subnet),
            }
        }
    }
}
