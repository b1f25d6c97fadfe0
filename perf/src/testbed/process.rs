//! Child processes: our binaries as [`Daemon`]s logging to a file, and helpers for any child
//! (bounded waits, SIGINT, kill and reap, a command's output). Signals go by PID to our own
//! children only, never to anything we did not start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::kill;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A running child with its log file.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    /// Length of the log file when this process started: a restarted daemon appends to the
    /// file of its previous run, whose lines must not satisfy this run's waits.
    log_start: u64,
    name: String,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`, after a line marking the start
    /// (the file keeps every run of a restarted daemon, for reading after a failure).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(f, "----- testbed: starting {name} -----")
            .with_context(|| format!("writing {}", log.display()))?;
        let log_start = f.metadata()?.len();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child: Some(child),
            log: log.to_owned(),
            log_start,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The log file, shared by every run of this daemon (see [`Daemon::whole_log`]).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What this process logged so far: the log file from where this run started, without the
    /// lines of earlier runs of the same daemon.
    pub fn log(&self) -> String {
        log_since(&self.log, self.log_start)
    }

    /// The whole log file, earlier runs included (for failure messages).
    pub fn whole_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until this process logged `needle` (earlier runs' lines do not count); panics with
    /// the log when it does not in `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_count(needle, 1, timeout);
    }

    /// Waits until this process logged `needle` at least `n` times; panics with the log when it
    /// does not in `timeout`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        if super::wait_for(timeout, || (self.log_count(needle) >= n).then_some(())).is_none() {
            panic!(
                "{}: {needle:?} not logged {n} time(s) by this run in {timeout:?}; log:\n{}",
                self.name,
                self.whole_log()
            );
        }
    }

    /// Number of times this process logged `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit status once the process has exited (it is then reaped and this daemon holds no
    /// process any more); `None` while it runs or when there is no process.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(st)
    }

    /// Waits at most `timeout` for the process to exit by itself (nothing is sent to it);
    /// `None` when it is still running then (it keeps running: see [`Daemon::stop`]).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        super::wait_for(timeout, || self.try_wait())
    }

    /// Waits, without a bound, for the process to exit by itself; `None` when there is no
    /// process.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child
            .take()
            .map(|mut c| c.wait().expect("wait for child"))
    }

    /// Sends a signal by PID to our own child.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGTERM and wait for exit (SIGKILL after `grace`); returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.child.take().map(|c| terminate(c, grace))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The text of file `path` from byte `offset` on (all of it if the file is now shorter).
pub fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(usize::MAX);
    String::from_utf8_lossy(bytes.get(from..).unwrap_or(&bytes)).into_owned()
}

/// SIGTERM `child`, wait up to `grace`, then SIGKILL; reaps it.
pub fn terminate(mut child: Child, grace: Duration) -> ExitStatus {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().expect("wait for child")
}

/// Waits for our own `child` up to `limit`, polling `interrupted`; kills and reaps it on timeout
/// or interrupt (an error then).
pub fn wait_bounded(
    mut child: Child,
    interrupted: &AtomicBool,
    limit: Duration,
) -> Result<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if interrupted.load(Ordering::Relaxed) {
            kill_and_reap(&mut child);
            bail!("interrupted");
        }
        if Instant::now() > end {
            kill_and_reap(&mut child);
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT by PID to our own `child` while it runs, as Ctrl-C would (`perf record` then
/// writes its file).
pub fn sigint(child: &mut Child) -> Result<()> {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        kill(pid, Signal::SIGINT)?;
    }
    Ok(())
}

/// SIGKILL to our own `child` while it runs, then reaps it.
pub fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Runs `program args` with no input and stderr discarded; its stdout, trimmed, when it exits
/// with success (`None` when it cannot start or fails).
pub fn stdout_text(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` to completion with no input. An error when it cannot start (with
/// `start_context`) or exits with failure (`"{failed}: {stderr}"`, stderr trimmed).
pub fn output_ok(cmd: &mut Command, start_context: &str, failed: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| start_context.to_string())?;
    if !out.status.success() {
        bail!("{failed}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_wait_returns_the_status_or_kills_on_timeout_and_interrupt() {
        let not_interrupted = AtomicBool::new(false);
        let child = Command::new("true").spawn().unwrap();
        let st = wait_bounded(child, &not_interrupted, Duration::from_secs(10)).unwrap();
        assert!(st.success());

        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let err = wait_bounded(child, &not_interrupted, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().starts_with("timed out after"), "{err}");

        let interrupted = AtomicBool::new(true);
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let err = wait_bounded(child, &interrupted, Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
    }

    #[test]
    fn command_output_and_failures() {
        assert_eq!(stdout_text("echo", &[" hi "]).as_deref(), Some("hi"));
        assert_eq!(stdout_text("false", &[]), None);
        let out = output_ok(Command::new("echo").arg("ok"), "running echo", "echo").unwrap();
        assert_eq!(out.stdout, b"ok\n");
        let err = output_ok(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            "running sh",
            "sh -c",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "sh -c: bad");
    }
}
