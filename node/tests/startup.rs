//! `fulcrumd` refusing to start: a bad node file, a port in use, an unusable data directory
//! or a missing interface each end the process with a non-zero status and one line naming
//! the problem.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// Runs fulcrumd on `node_file` (written in `dir`) and returns its stderr, asserting failure.
fn refused(dir: &Path, node_file: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(&path, node_file).unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_fulcrumd")).arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success(), "fulcrumd started on {node_file}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("fulcrumd: "), "{stderr}");
    stderr
}

/// A node file with a store on a free port, its data in `dir`, and `extra` appended.
fn store_node_file(dir: &Path, extra: &str) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, "a test cluster secret of 32 bytes").unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!(
        "node_id = 1\n[log]\nlevel = \"off\"\n{extra}\n[raft]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\n\
         cluster_name = \"t\"\nsecret_file = {secret:?}\n",
        data = dir.join("raft").display().to_string(),
        secret = secret.display().to_string(),
    )
}

#[test]
fn a_bad_node_file_is_named_with_its_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let stderr =
        refused(dir.path(), "node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 300\nvips = []\n");
    assert!(
        stderr.contains("node.toml")
            && stderr.contains("vrrp[0].vrid")
            && stderr.contains("line 4"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn an_admin_port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    std::fs::write(dir.path().join("token"), "a test admin token of 32 bytes!!").unwrap();
    let admin = format!(
        "[admin]\nlisten = \"{address}\"\ntoken_file = {:?}\n",
        dir.path().join("token").display().to_string()
    );
    let stderr = refused(dir.path(), &store_node_file(dir.path(), &admin));
    assert!(stderr.contains(&format!("cannot serve the admin API on {address}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn an_unusable_data_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be.
    std::fs::write(dir.path().join("raft"), "not a directory").unwrap();
    let stderr = refused(dir.path(), &store_node_file(dir.path(), ""));
    let data = dir.path().join("raft").display().to_string();
    assert!(
        stderr.contains(&format!("cannot start the configuration store in {data}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_missing_interface_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file =
        "node_id = 1\n[[vrrp]]\ninterface = \"nosuch0\"\nvrid = 51\nvips = [\"198.18.0.100\"]\n";
    let stderr = refused(dir.path(), file);
    assert!(stderr.contains("interface nosuch0") && stderr.contains("does not exist"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

fn fulcrumd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrumd")).args(args).output().unwrap()
}

#[test]
fn pki_makes_a_cluster_ca_and_node_certificates_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let made = fulcrumd(&["pki", "ca", "--out", out]);
    assert!(made.status.success(), "{made:?}");
    let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is readable by its owner only");

    let again = fulcrumd(&["pki", "ca", "--out", out]);
    assert!(!again.status.success(), "a second CA replaced the first");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"), "{again:?}");

    let ca_key = dir.path().join("ca.key");
    let ca_key = ca_key.to_str().unwrap();
    let node = fulcrumd(&["pki", "node", "--ca-key", ca_key, "--name", "lb1", "--out", out]);
    assert!(node.status.success(), "{node:?}");
    let bad = fulcrumd(&["pki", "node", "--ca-key", ca_key, "--name", "../lb2", "--out", out]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--name"), "{bad:?}");
    let not_a_key = dir.path().join("ca.pem");
    let not_a_key = not_a_key.to_str().unwrap();
    let bad = fulcrumd(&["pki", "node", "--ca-key", not_a_key, "--name", "lb3", "--out", out]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a CA key"), "{bad:?}");

    // What it made is what a node loads.
    let files = fulcrum_raft_store::tls::PeerTlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("lb1.pem"),
        key: dir.path().join("lb1.key"),
    };
    fulcrum_raft_store::tls::PeerIdentity::load(files).unwrap();
}

#[test]
fn a_peer_certificate_that_cannot_be_read_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    assert!(fulcrumd(&["pki", "ca", "--out", out]).status.success());
    let tls = format!(
        "[raft.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("ca.pem").display().to_string(),
        dir.path().join("missing.pem").display().to_string(),
        dir.path().join("missing.key").display().to_string(),
    );
    let stderr = refused(dir.path(), &format!("{}{tls}", store_node_file(dir.path(), "")));
    assert!(stderr.contains("peer TLS") && stderr.contains("missing.pem"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
