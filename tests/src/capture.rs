//! Packet captures in the lab with tshark: what crossed a host's link, decoded by Wireshark's
//! dissectors, so a test can check that another implementation reads Fulcrum's packets as
//! it meant them (no malformed packet, no bad checksum).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::LabProcess;
use crate::routers::INTERFACE;
use crate::topology::{Host, Lab, LabError};

/// How long tshark gets to open the link, and to write out the capture once told to stop.
const TSHARK_TIMEOUT: Duration = Duration::from_secs(20);
/// Debian's tshark.
const TSHARK: &str = "/usr/bin/tshark";

/// A capture running on one host's link.
pub struct Capture {
    tshark: LabProcess,
    file: PathBuf,
}

impl Lab {
    /// Starts capturing what crosses `host`'s link and matches the capture `filter` (BPF
    /// syntax), into the lab's log directory; returns once tshark captures.
    pub fn capture(&self, host: &Host, name: &str, filter: &str) -> Result<Capture, LabError> {
        let file = self.log_dir().join(format!("{}-{name}.pcapng", host.name));
        let args = ["-n", "-i", INTERFACE, "-f", filter, "-w"].map(str::to_owned);
        let mut args = args.to_vec();
        args.push(file.display().to_string());
        let label = format!("tshark on {}", host.name);
        if !Path::new(TSHARK).is_file() {
            return Err(LabError::Invalid(
                "tshark is not installed: apt-get install tshark (scripts/test.sh does this)"
                    .into(),
            ));
        }
        let mut tshark = self.spawn(host, &label, Path::new(TSHARK), &args)?;
        tshark.wait_for("capturing", |line| line.starts_with("Capturing on"), TSHARK_TIMEOUT)?;
        Ok(Capture { tshark, file })
    }
}

impl Capture {
    /// Stops the capture (SIGINT, so tshark writes out what it has) and decodes the packets
    /// that match the display `filter`: one row per packet, one column per field in `fields`
    /// (Wireshark's field names), empty where a packet has none.
    pub fn finish(mut self, filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>, LabError> {
        self.tshark.signal(Signal::SIGINT)?;
        self.tshark.wait(TSHARK_TIMEOUT)?;
        let file = self.file.display().to_string();
        let mut args = vec!["-n", "-r", &file, "-Y", filter, "-T", "fields", "-E", "occurrence=a"];
        for field in fields {
            args.extend(["-e", field]);
        }
        let decoded = crate::netns::run(TSHARK, &args)?;
        Ok(decoded.lines().map(|line| line.split('\t').map(str::to_owned).collect()).collect())
    }
}
