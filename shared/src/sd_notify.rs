//! systemd's readiness protocol (`sd_notify`), without libsystemd.
//!
//! A service started with `Type=notify` finds the unix datagram socket to report to in
//! `$NOTIFY_SOCKET`: an absolute path, or `@name` for a socket in the abstract namespace (the `@`
//! stands for the leading NUL byte). Each report is ONE datagram of newline-separated
//! `KEY=VALUE` lines: `READY=1` (start-up finished: systemd starts the units ordered after this
//! one), `STATUS=...` (one line of text shown by `systemctl status`), `WATCHDOG=1` (keep-alive),
//! `STOPPING=1`. With `WatchdogSec=` systemd also sets `$WATCHDOG_USEC` (and `$WATCHDOG_PID`,
//! the process meant); once the service is ready it must then send `WATCHDOG=1` at least every
//! half of that, or systemd kills and restarts it.
//!
//! [`message`], [`parse_socket`] and [`watchdog_interval`] are pure; [`Notifier`] is the thin
//! send. [`Reporter`] is what both daemons hold: a notifier when started as `Type=notify`,
//! nothing otherwise, logging a failed send once and pacing watchdog pings for a loop. Sends
//! never block (a full socket queue drops the datagram and returns the error) and nothing is
//! sent when `$NOTIFY_SOCKET` is unset, so both daemons run unchanged outside systemd.
//! Not supported: `vsock:` addresses (systemd 254+ for VMs).

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One field of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// `READY=1`: start-up is complete.
    Ready,
    /// `STATUS=<text>`: what the service is doing, one line.
    Status(&'a str),
    /// `WATCHDOG=1`: the service is alive.
    Watchdog,
    /// `STOPPING=1`: the service is shutting down.
    Stopping,
}

/// Longest `STATUS=` text sent, in bytes; longer text is cut at a character boundary.
pub const MAX_STATUS: usize = 1024;

/// The datagram for `fields`: `KEY=VALUE` lines joined by `\n` (as libsystemd sends them). A
/// status text is made one line (control characters become spaces) and cut to [`MAX_STATUS`].
pub fn message(fields: &[Field<'_>]) -> String {
    let mut lines = Vec::with_capacity(fields.len());
    for f in fields {
        lines.push(match f {
            Field::Ready => "READY=1".to_string(),
            Field::Watchdog => "WATCHDOG=1".to_string(),
            Field::Stopping => "STOPPING=1".to_string(),
            Field::Status(text) => format!("STATUS={}", one_line(text)),
        });
    }
    lines.join("\n")
}

fn one_line(text: &str) -> String {
    let mut s: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_STATUS {
        let mut cut = MAX_STATUS;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// A socket in the abstract namespace: the name after the `@`.
    Abstract(Vec<u8>),
}

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifySocketError {
    #[error("NOTIFY_SOCKET={0:?}: expected an absolute path or @name (abstract namespace)")]
    Unsupported(String),
    #[error("NOTIFY_SOCKET={0:?}: an abstract socket name needs at least one byte after the @")]
    EmptyAbstract(String),
}

/// Reads the value of `$NOTIFY_SOCKET`. `None` for an empty value (nothing to notify).
pub fn parse_socket(value: &OsStr) -> Result<Option<Target>, NotifySocketError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => Ok(None),
        Some(b'/') => Ok(Some(Target::Path(PathBuf::from(value)))),
        Some(b'@') if bytes.len() > 1 => Ok(Some(Target::Abstract(bytes[1..].to_vec()))),
        Some(b'@') => Err(NotifySocketError::EmptyAbstract(
            value.to_string_lossy().into_owned(),
        )),
        Some(_) => Err(NotifySocketError::Unsupported(
            value.to_string_lossy().into_owned(),
        )),
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set, positive and
/// (with `$WATCHDOG_PID` set) meant for `own_pid`. `None`: no watchdog for this process.
pub fn watchdog_interval(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.to_str()?.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// A socket to systemd's notify socket.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    target: Target,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. `Ok(None)` when
    /// `$NOTIFY_SOCKET` is unset or empty (not started by systemd as `Type=notify`).
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let Some(target) = parse_socket(&value).map_err(io::Error::other)? else {
            return Ok(None);
        };
        let watchdog = watchdog_interval(
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        Self::new(target, watchdog).map(Some)
    }

    /// A notifier for `target`, pinging every `watchdog` (see [`Notifier::watchdog_interval`]).
    pub fn new(target: Target, watchdog: Option<Duration>) -> io::Result<Self> {
        let addr = match &target {
            Target::Path(p) => SocketAddr::from_pathname(p),
            Target::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
        .map_err(|e| io::Error::new(e.kind(), format!("NOTIFY_SOCKET {target:?}: {e}")))?;
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            addr,
            target,
            watchdog,
        })
    }

    /// Sends one datagram with `fields`.
    pub fn send(&self, fields: &[Field<'_>]) -> io::Result<()> {
        let msg = message(fields);
        self.sock.send_to_addr(msg.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// Half of `$WATCHDOG_USEC`: how often `WATCHDOG=1` must go out; `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Where the notifications go.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// A daemon's reports to systemd: every call sends through the [`Notifier`] when the process
/// was started as `Type=notify` and does nothing otherwise. A failed send is logged once.
///
/// It also paces `WATCHDOG=1` for a loop that vouches for the process by turning: the loop
/// blocks at most [`Reporter::loop_timeout`] and calls [`Reporter::ping_if_due`] every turn,
/// so pings are never further apart than the watchdog interval.
#[derive(Debug)]
pub struct Reporter {
    notifier: Option<Notifier>,
    send_failed: AtomicBool,
    last_ping: Mutex<Instant>,
}

impl Reporter {
    /// From the environment (see [`Notifier::from_env`]); an unusable `$NOTIFY_SOCKET` is
    /// logged and reported to nobody.
    pub fn from_env() -> Self {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!("not notifying systemd: {e}");
            None
        });
        if let Some(n) = &notifier {
            tracing::debug!(target_socket = ?n.target(), watchdog = ?n.watchdog_interval(), "notifying systemd");
        }
        Self::new(notifier)
    }

    /// Reports through `notifier`; `None`: to nobody.
    pub fn new(notifier: Option<Notifier>) -> Self {
        Self {
            notifier,
            send_failed: AtomicBool::new(false),
            last_ping: Mutex::new(Instant::now()),
        }
    }

    /// Whether systemd listens (`$NOTIFY_SOCKET` was usable).
    pub fn is_active(&self) -> bool {
        self.notifier.is_some()
    }

    /// How often `WATCHDOG=1` must go out (half of `$WATCHDOG_USEC`); `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.notifier.as_ref().and_then(Notifier::watchdog_interval)
    }

    /// Where the notifications go (`None`: not started by systemd as `Type=notify`); for a
    /// sender that attaches fds (`FDSTORE=1`), which this module does not do.
    pub fn target(&self) -> Option<&Target> {
        self.notifier.as_ref().map(Notifier::target)
    }

    /// Sends one datagram with `fields`; a failure is logged the first time only.
    pub fn send(&self, fields: &[Field<'_>]) {
        let Some(n) = &self.notifier else { return };
        if let Err(e) = n.send(fields) {
            if !self.send_failed.swap(true, Ordering::Relaxed) {
                tracing::warn!("sd_notify to {:?} failed (logged once): {e}", n.target());
            }
        }
    }

    /// `STATUS=<text>`.
    pub fn status(&self, text: &str) {
        self.send(&[Field::Status(text)]);
    }

    /// `READY=1` with `STATUS=<text>`; the watchdog pacing starts from here.
    pub fn ready(&self, text: &str) {
        self.send(&[Field::Ready, Field::Status(text)]);
        self.mark_pinged();
    }

    /// `STOPPING=1` with `STATUS=<text>`.
    pub fn stopping(&self, text: &str) {
        self.send(&[Field::Stopping, Field::Status(text)]);
    }

    /// How long a pinging loop may block between turns: at most half the watchdog interval,
    /// so that pings (due after half of it) leave within the interval; `normal` without one.
    pub fn loop_timeout(&self, normal: Duration) -> Duration {
        self.watchdog_interval()
            .map_or(normal, |w| (w / 2).min(normal))
    }

    /// `WATCHDOG=1` when half the interval has passed since the last one (or `READY=1`); the
    /// caller's loop turning is what it vouches for.
    pub fn ping_if_due(&self) {
        let Some(w) = self.watchdog_interval() else {
            return;
        };
        let mut last = self.last_ping.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= w / 2 {
            self.send(&[Field::Watchdog]);
            *last = Instant::now();
        }
    }

    fn mark_pinged(&self) {
        *self.last_ping.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(message(&[Field::Ready]), "READY=1");
        assert_eq!(message(&[Field::Watchdog]), "WATCHDOG=1");
        assert_eq!(
            message(&[Field::Ready, Field::Status("lease held: 10.1.15.0/24")]),
            "READY=1\nSTATUS=lease held: 10.1.15.0/24"
        );
        assert_eq!(
            message(&[Field::Stopping, Field::Status("stopping")]),
            "STOPPING=1\nSTATUS=stopping"
        );
        // A status is one line: a newline would start a new KEY=VALUE pair.
        assert_eq!(
            message(&[Field::Status(" config invalid:\nREADY=1\r\tx \n")]),
            "STATUS=config invalid: READY=1  x"
        );
        let long = "é".repeat(MAX_STATUS);
        let m = message(&[Field::Status(&long)]);
        let text = m.strip_prefix("STATUS=").unwrap();
        assert!(text.len() <= MAX_STATUS && text.len() >= MAX_STATUS - 1);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn socket_path_or_abstract_name() {
        assert_eq!(parse_socket(&os("")), Ok(None));
        assert_eq!(
            parse_socket(&os("/run/systemd/notify")),
            Ok(Some(Target::Path("/run/systemd/notify".into())))
        );
        assert_eq!(
            parse_socket(&os("@/org/freedesktop/systemd1/notify/123")),
            Ok(Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            )))
        );
        assert_eq!(
            parse_socket(&os("@")),
            Err(NotifySocketError::EmptyAbstract("@".into()))
        );
        for bad in ["run/notify", "vsock:2:1234", "./sock"] {
            let e = parse_socket(&os(bad)).unwrap_err();
            assert_eq!(e, NotifySocketError::Unsupported(bad.into()));
            assert!(e.to_string().contains("absolute path or @name"), "{e}");
        }
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_its_pid() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some(&os("200000")), None, 7), half);
        assert_eq!(
            watchdog_interval(Some(&os("200000")), Some(&os("7")), 7),
            half
        );
        assert_eq!(
            watchdog_interval(Some(&os("200000")), Some(&os("8")), 7),
            None
        );
        assert_eq!(watchdog_interval(None, Some(&os("7")), 7), None);
        assert_eq!(watchdog_interval(Some(&os("0")), None, 7), None);
        assert_eq!(watchdog_interval(Some(&os("30s")), None, 7), None);
        assert_eq!(
            watchdog_interval(Some(&os("30000000")), None, 7),
            Some(Duration::from_secs(15))
        );
    }

    #[test]
    fn sends_one_datagram_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Target::Path(path), None).unwrap();
        n.send(&[Field::Ready, Field::Status("ready")]).unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ready");

        let name = format!("flannel-rs-sd-notify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&abs).unwrap();
        let value = os(&format!("@{name}"));
        let target = parse_socket(&value).unwrap().unwrap();
        let n = Notifier::new(target, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.send(&[Field::Watchdog]).unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");

        // Nobody listening: an error, not a hang.
        let gone = Notifier::new(Target::Path(dir.path().join("nobody")), None).unwrap();
        assert!(gone.send(&[Field::Ready]).is_err());
    }

    /// A pinging loop's cadence: it blocks at most half the ping interval and pings once that
    /// much has passed, so pings are never further apart than the interval (half of
    /// `$WATCHDOG_USEC`).
    #[test]
    fn a_loop_pings_within_the_watchdog_interval_and_only_while_it_turns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let every = Duration::from_millis(100);
        let sd = Reporter::new(Some(
            Notifier::new(Target::Path(path), Some(every)).unwrap(),
        ));
        assert_eq!(
            sd.loop_timeout(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        sd.ready("forwarding");
        let mut times = Vec::new();
        let mut buf = [0u8; 256];
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            std::thread::sleep(sd.loop_timeout(Duration::from_millis(200)));
            sd.ping_if_due();
            while let Ok(n) = rx.recv(&mut buf) {
                times.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        assert_eq!(times[0].1, "READY=1\nSTATUS=forwarding");
        let pings: Vec<Instant> = times
            .iter()
            .filter(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| *t)
            .collect();
        assert!(pings.len() >= 5, "{times:?}");
        let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        // About 50 ms apart; the margin is for a busy test machine's late wake-ups.
        assert!(widest < every * 2, "{widest:?}");
        // Without a watchdog: the loop keeps its own pace and never pings.
        let quiet = Reporter::new(None);
        assert_eq!(
            quiet.loop_timeout(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
