//! Processes the lab starts inside its namespaces: awaited by what they print, stopped by PID.
//!
//! A [`LabProcess`] is stopped when dropped (SIGTERM, then SIGKILL after a bounded wait), so a
//! failing test leaves nothing running. Each process is also recorded by PID and start time in
//! the lab's state file, so `fulcrum-lab down` can stop it after its test was killed, and a
//! reused PID is never signalled.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::topology::LabError;

/// How often a process's log file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(5);

/// How long a stopped process gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process the lab started and is responsible for stopping.
pub struct LabProcess {
    label: String,
    child: Child,
    record: ProcessRecord,
    /// Lines of standard output, read by a thread so waiting can have a deadline.
    lines: Receiver<String>,
    /// Every line received so far, for error messages and for [`LabProcess::output`].
    seen: Vec<String>,
    /// Where its standard error goes; its tail is quoted in errors.
    log: PathBuf,
    /// Left running on drop: `fulcrum-lab up` hands its backends to `fulcrum-lab down`.
    detached: bool,
}

/// What identifies a process the lab started, even from another invocation of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What the process is, e.g. `backend be1`.
    pub label: String,
    /// Its PID.
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of /proc/PID/stat): a PID that was
    /// reused by another process has another start time.
    pub start_time: u64,
}

impl LabProcess {
    /// Starts `program args` inside `namespace`, its standard output piped to the lab and its
    /// standard error written to `log`.
    pub fn spawn(
        namespace: &str,
        label: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<LabProcess, LabError> {
        let log_file = File::create(log)
            .map_err(|source| LabError::Io { what: format!("create {}", log.display()), source })?;
        // Standard error goes straight to the log file, so a process that outlives this handle
        // (`detach`) keeps logging; a thread follows the file for `wait_for`.
        let mut child = Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Its own process group, so a crash can be simulated for the whole of a daemon
            // that forks (keepalived's VRRP child) with one signal.
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn { what: label.to_owned(), source })?;
        let pid = child.id();
        // `ip netns exec` execs the program, so the PID is the program's own.
        let record = ProcessRecord {
            label: label.to_owned(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
        };
        let (sender, lines) = mpsc::channel();
        // Both streams feed one channel of lines, so a test can await a log line as easily as
        // a line of output.
        if let Some(stdout) = child.stdout.take() {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let followed = File::open(log)
            .map_err(|source| LabError::Io { what: format!("open {}", log.display()), source })?;
        let running = record.clone();
        std::thread::spawn(move || follow(followed, &running, &sender));
        Ok(LabProcess {
            label: label.to_owned(),
            child,
            record,
            log: log.to_owned(),
            lines,
            seen: Vec::new(),
            detached: false,
        })
    }

    /// The PID and start time that identify this process.
    pub fn record(&self) -> &ProcessRecord {
        &self.record
    }

    /// The process's PID.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// Every line the process has printed so far, reading what is waiting first.
    pub fn read_available(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Every line the process has printed so far (as far as it has been read).
    pub fn output(&self) -> &[String] {
        &self.seen
    }

    /// Waits until the process prints a line starting with `prefix`, and returns that line.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, LabError> {
        self.wait_for(
            &format!("a line starting {prefix:?}"),
            |line| line.starts_with(prefix),
            timeout,
        )
    }

    /// Waits until the process prints (on stdout or stderr) a line that `matches`, and returns
    /// it. Only lines printed after the previous wait are considered.
    pub fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.error(format!("printed no {what} within {timeout:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(self.error(format!("exited ({status}) before printing {what}")));
                }
            }
        }
    }

    /// Waits for the process to exit on its own, reading the rest of its output.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        let deadline = Instant::now() + timeout;
        // Output closes when the process exits: wait on that rather than polling.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.error(format!("did not exit within {timeout:?}")));
                }
            }
        }
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|source| LabError::Io { what: self.label.clone(), source })?
            {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(self.error(format!("closed its output but did not exit within {timeout:?}")))
    }

    /// Sends `signal` to the process, if it is still running.
    pub fn signal(&mut self, signal: Signal) -> Result<(), LabError> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.record.pid as i32), signal).map_err(|e| LabError::Io {
            what: format!("signal {signal} to {}", self.label),
            source: e.into(),
        })
    }

    /// Sends `signal` to the process and every process it forked (its process group), if it
    /// is still running: SIGSTOP pauses a forking daemon as a whole.
    pub fn signal_group(&mut self, signal: Signal) -> Result<(), LabError> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        killpg(Pid::from_raw(self.record.pid as i32), signal).map_err(|e| LabError::Io {
            what: format!("signal {signal} to {}", self.label),
            source: e.into(),
        })
    }

    /// The file its standard error (its log) goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Kills the process and every process it forked at once with SIGKILL, as a crash would,
    /// and reaps it.
    pub fn crash(&mut self) -> Result<ExitStatus, LabError> {
        if self.child.try_wait().ok().flatten().is_none() {
            killpg(Pid::from_raw(self.record.pid as i32), Signal::SIGKILL).map_err(|e| {
                LabError::Io { what: format!("SIGKILL to {}", self.label), source: e.into() }
            })?;
        }
        self.child.wait().map_err(|source| LabError::Io { what: self.label.clone(), source })
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited after a grace period.
    pub fn stop(&mut self) -> Result<ExitStatus, LabError> {
        self.signal(Signal::SIGTERM)?;
        match self.wait(STOP_GRACE) {
            Ok(status) => Ok(status),
            Err(_) => {
                self.signal(Signal::SIGKILL)?;
                self.child
                    .wait()
                    .map_err(|source| LabError::Io { what: self.label.clone(), source })
            }
        }
    }

    /// Leaves the process running when this handle is dropped; it stays recorded in the lab's
    /// state file, so removing the lab stops it.
    pub fn detach(mut self) {
        self.detached = true;
    }

    fn error(&self, problem: String) -> LabError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let output = format!(
            "stdout:\n{}\nstderr ({}, last lines):\n{}",
            self.seen.join("\n"),
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        LabError::Process { label: self.label.clone(), problem, output }
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.stop() {
            eprintln!("fulcrum-lab: stopping {}: {e}", self.label);
        }
    }
}

/// Sends each line appended to `log` until the process has exited and the file is read to
/// its end, or nobody listens any more.
fn follow(log: File, process: &ProcessRecord, lines: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(log);
    let mut line = String::new();
    loop {
        let exited = !is_running(process);
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) if exited => return,
            Ok(0) | Err(_) => std::thread::sleep(FOLLOW_POLL),
            // A line still being written has no newline yet: wait for the rest of it.
            Ok(_) if !line.ends_with('\n') && !exited => {}
            Ok(_) => {
                if lines.send(line.trim_end_matches('\n').to_owned()).is_err() {
                    return;
                }
                line.clear();
            }
        }
    }
}

/// The start time of process `pid`, or `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// True while the recorded process runs: same PID and start time, and not a zombie.
pub fn is_running(record: &ProcessRecord) -> bool {
    start_time(record.pid) == Some(record.start_time) && !is_zombie(record.pid)
}

/// Stops a recorded process from another invocation, if the same process is still running.
pub fn stop_recorded(record: &ProcessRecord) -> Result<(), LabError> {
    if !is_running(record) {
        return Ok(());
    }
    let pid = Pid::from_raw(record.pid as i32);
    let signal = |s| {
        kill(pid, s).map_err(|e| LabError::Io {
            what: format!("signal {s} to {}", record.label),
            source: e.into(),
        })
    };
    signal(Signal::SIGTERM)?;
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if !is_running(record) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(Signal::SIGKILL)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| stat[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}
