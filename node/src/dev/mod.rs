//! `fulcrumd --dev`: a single-node cluster on loopback for a first try without root — the
//! Raft store, the admin API and the data plane, VRRP off — with a data directory that holds
//! its generated secret and admin token, and a demo configuration written at first start.

use std::path::{Path, PathBuf};

use fulcrum_model::{ClusterSpec, file};

use crate::node_file::{NodeFile, NodeFileError};

/// Where the admin API of a dev node listens.
pub const ADMIN: &str = "127.0.0.1:7070";
/// Where its Raft store listens.
const RAFT: &str = "127.0.0.1:7071";

/// The configuration a dev node starts with.
const DEMO_CLUSTER: &str = include_str!("cluster.toml");

/// Why a dev node could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The data directory or a file in it could not be written.
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generated node file did not parse (a bug).
    #[error("the dev node file: {0}")]
    NodeFile(#[from] NodeFileError),
}

/// The node file of a dev node keeping its data in `dir`, creating the directory, the cluster
/// secret and the admin token on first use.
pub fn node_file(dir: &Path) -> Result<NodeFile, DevError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let secret = dir.join("cluster.secret");
    let token = dir.join("admin.token");
    for path in [&secret, &token] {
        if !path.exists() {
            let random = crate::secret::random_secret().map_err(io(path))?;
            let text: String = random.iter().map(|b| format!("{b:02x}")).collect();
            write_private(path, &text).map_err(io(path))?;
        }
    }
    let text = format!(
        r#"
node_id = 1
shutdown_drain = "5s"

[log]
level = "info"

[admin]
listen = "{ADMIN}"
token_file = {token:?}

[raft]
listen = "{RAFT}"
data_dir = {data:?}
cluster_name = "fulcrum-dev"
secret_file = {secret:?}
initial_members = [{{ id = 1, address = "{RAFT}" }}]
"#,
        data = dir.join("raft"),
    );
    Ok(NodeFile::parse(&text)?)
}

/// The demo configuration a dev node writes when its store is empty.
pub fn demo_cluster() -> ClusterSpec {
    // The embedded file is checked by this module's test, so it always parses.
    file::parse(DEMO_CLUSTER).unwrap_or_default()
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_cluster_is_valid() {
        let spec = file::parse(DEMO_CLUSTER).unwrap();
        assert_eq!(spec.listeners.len(), 1);
        assert_eq!(spec.pools[0].backends.len(), 2);
    }

    #[test]
    fn a_dev_node_file_makes_its_secrets_once_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_file(&dir.path().join("dev")).unwrap();
        let token = first.admin.as_ref().unwrap().token().unwrap();
        let secret = std::fs::read(dir.path().join("dev/cluster.secret")).unwrap();
        assert_eq!(token.len(), 64, "32 random bytes in hex");
        let again = node_file(&dir.path().join("dev")).unwrap();
        assert_eq!(again.admin.unwrap().token().unwrap(), token, "kept across restarts");
        assert_eq!(std::fs::read(dir.path().join("dev/cluster.secret")).unwrap(), secret);
        let mode = std::fs::metadata(dir.path().join("dev/admin.token")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
        assert!(first.vrrp.is_empty(), "VRRP is off");
    }
}
