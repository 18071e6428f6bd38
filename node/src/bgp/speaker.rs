//! The BIRD 2 process a node announces through. fulcrumd starts it with the configuration
//! `bird.rs` renders into `run_dir`, and the kernel stops it when fulcrumd dies
//! (`PR_SET_PDEATHSIG`), so a dead node's sessions close and the routers withdraw its routes.
//! A change of the announced set rewrites the file and asks BIRD to reconfigure.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::bird;
use crate::node_file::BgpSection;

/// How long BIRD has to open its control socket, and `birdc` to answer.
const BIRD_WAIT: Duration = Duration::from_secs(5);

/// Why BIRD could not be run or told.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// A file or directory, or running a program, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// BIRD exited, refused the configuration, or did not answer.
    #[error("BIRD: {0}")]
    Bird(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpeakerError {
    let what = what.into();
    move |source| SpeakerError::Io { what, source }
}

/// A running BIRD and what it announces.
#[derive(Debug)]
pub struct Speaker {
    section: BgpSection,
    child: tokio::sync::Mutex<Child>,
    announced: tokio::sync::Mutex<Vec<IpAddr>>,
    /// Set once the node stops: nothing is announced any more.
    withdrawn: AtomicBool,
}

impl Speaker {
    /// Writes the configuration announcing nothing and starts BIRD with it.
    pub async fn start(section: BgpSection) -> Result<Speaker, SpeakerError> {
        let dir = &section.run_dir;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let child = spawn(&section).await?;
        Ok(Speaker {
            section,
            child: tokio::sync::Mutex::new(child),
            announced: tokio::sync::Mutex::default(),
            withdrawn: AtomicBool::new(false),
        })
    }

    /// Starts BIRD again, announcing nothing, if it has exited and the node is not
    /// stopping; says whether it did.
    pub async fn revive(&self) -> Result<bool, SpeakerError> {
        let mut announced = self.announced.lock().await;
        if self.withdrawn.load(Ordering::Acquire) {
            return Ok(false); // stopping: BIRD goes for good
        }
        let mut child = self.child.lock().await;
        let Some(status) = child.try_wait().map_err(io("wait for BIRD"))? else {
            return Ok(false);
        };
        tracing::error!(
            "BIRD exited ({status}); starting it again, announcing nothing until the next health check"
        );
        announced.clear();
        *child = spawn(&self.section).await?;
        Ok(true)
    }

    /// Makes BIRD announce exactly `vips` (nothing once [`Speaker::withdraw`] ran); nothing
    /// happens if it already does.
    pub async fn announce(&self, vips: &[IpAddr]) -> Result<(), SpeakerError> {
        let mut announced = self.announced.lock().await;
        // Read under the lock, so an announcement racing the withdrawal cannot undo it.
        let vips = if self.withdrawn.load(Ordering::Acquire) { &[][..] } else { vips };
        if *announced == vips {
            return Ok(());
        }
        if let Some(status) = self.child.lock().await.try_wait().map_err(io("wait for BIRD"))? {
            return Err(SpeakerError::Bird(format!("exited ({status})")));
        }
        write_config(&config_path(&self.section), &bird::render(&self.section, vips))?;
        let answer = self.birdc(&["configure"]).await?;
        if !answer.contains("Reconfigured") && !answer.contains("Reconfiguration in progress") {
            return Err(SpeakerError::Bird(format!("configure answered: {}", answer.trim())));
        }
        tracing::info!(announced = ?vips, withdrawn = ?announced.iter().filter(|v| !vips.contains(v)).collect::<Vec<_>>(), "BGP announcements changed");
        *announced = vips.to_vec();
        Ok(())
    }

    /// From now on, announces nothing ([`Speaker::withdraw`] tells BIRD).
    pub fn stop_announcing(&self) {
        self.withdrawn.store(true, Ordering::Release);
    }

    /// Whether the node stopped announcing for good.
    pub fn withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Acquire)
    }

    /// Announces nothing from now on, and tells BIRD.
    pub async fn withdraw(&self) -> Result<(), SpeakerError> {
        self.stop_announcing();
        self.announce(&[]).await
    }

    /// What BIRD announces now.
    pub async fn announced(&self) -> Vec<IpAddr> {
        self.announced.lock().await.clone()
    }

    /// Each session's state (by its index in `neighbors`), as BIRD reports it, and how many
    /// routes it sent its router.
    pub async fn sessions(&self) -> Result<Vec<(usize, String, u32)>, SpeakerError> {
        let shown = self.birdc(&["show", "protocols", "all"]).await?;
        let exported = bird::exported_routes(&shown);
        Ok(bird::session_states(&shown)
            .into_iter()
            .map(|(index, state)| {
                let sent = exported.iter().find(|(i, _)| *i == index).map_or(0, |(_, n)| *n);
                (index, state, sent)
            })
            .collect())
    }

    /// Stops BIRD (its sessions close; the routers withdraw what it announced).
    pub async fn stop(&self) {
        let mut child = self.child.lock().await;
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(BIRD_WAIT, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }

    async fn birdc(&self, args: &[&str]) -> Result<String, SpeakerError> {
        let output = Command::new(&self.section.birdc)
            .arg("-s")
            .arg(socket_path(&self.section))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(BIRD_WAIT, output)
            .await
            .map_err(|_| SpeakerError::Bird(format!("birdc {args:?} did not answer")))?
            .map_err(io(format!("run {}", self.section.birdc.display())))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Writes the configuration announcing nothing and starts BIRD with it; returns once its
/// control socket is open.
async fn spawn(section: &BgpSection) -> Result<Child, SpeakerError> {
    let (config, socket) = (config_path(section), socket_path(section));
    write_config(&config, &bird::render(section, &[]))?;
    let _ = std::fs::remove_file(&socket);
    let mut command = Command::new(&section.bird);
    command
        .arg("-f")
        .arg("-c")
        .arg(&config)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(section.run_dir.join("bird.pid"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The kernel stops BIRD when fulcrumd dies, however it dies: a node that cannot serve
    // must not stay announced. If fulcrumd died before the prctl took effect, the parent is
    // no longer fulcrumd and BIRD does not start. Only async-signal-safe calls run there.
    let parent = nix::unistd::Pid::this();
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("fulcrumd is gone"));
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(io(format!("start {}", section.bird.display())))?;
    let deadline = tokio::time::Instant::now() + BIRD_WAIT;
    while !socket.exists() {
        if let Some(status) = child.try_wait().map_err(io("wait for BIRD"))? {
            return Err(SpeakerError::Bird(format!(
                "exited at start ({status}); check {} with `bird -p -c`",
                config.display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SpeakerError::Bird(format!(
                "no control socket {} within {BIRD_WAIT:?}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(pid = child.id(), config = %config.display(), "BIRD started; nothing announced yet");
    Ok(child)
}

fn config_path(section: &BgpSection) -> PathBuf {
    section.run_dir.join("bird.conf")
}

fn socket_path(section: &BgpSection) -> PathBuf {
    section.run_dir.join("bird.ctl")
}

/// Replaces the file whole, so BIRD never reads half of it.
fn write_config(path: &std::path::Path, text: &str) -> Result<(), SpeakerError> {
    let temporary = path.with_extension("conf.new");
    std::fs::write(&temporary, text).map_err(io(format!("write {}", temporary.display())))?;
    std::fs::rename(&temporary, path).map_err(io(format!("replace {}", path.display())))
}
