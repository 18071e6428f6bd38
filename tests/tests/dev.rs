//! `fulcrumd --dev` (a one-node cluster on loopback, no root needed) administered with
//! `fulcrumctl`: the demo configuration is there, writes land and show in the data plane,
//! bad input and a wrong token change nothing, and a restart keeps everything.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fulcrum_lab::routers::workspace_binary;

const ADMIN: &str = "127.0.0.1:7070";

/// A running `fulcrumd --dev`, stopped (SIGTERM) and waited for on drop.
struct Dev {
    child: Child,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let binary = workspace_binary("fulcrumd", "FULCRUMD").unwrap();
        let child = Command::new(binary)
            .args(["--dev", "--dev-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dev = Dev { child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while get("/healthz", None).is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "fulcrumd --dev did not answer /healthz");
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on the admin API: status and body, or `None` if nothing answers.
fn get(path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(ADMIN).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: dev\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, answer.split_once("\r\n\r\n")?.1.to_owned()))
}

fn ctl(dir: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let token = token
        .map_or_else(|| std::fs::read_to_string(dir.join("admin.token")).unwrap(), str::to_owned);
    Command::new(workspace_binary("fulcrumctl", "FULCRUMCTL").unwrap())
        .args(args)
        .env("FULCRUM_ENDPOINTS", format!("http://{ADMIN}"))
        .env("FULCRUM_TOKEN", token.trim())
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn backends(dir: &Path) -> Vec<String> {
    let config = json(ctl(dir, None, &["get", "config", "-o", "json"]));
    let pool = &config["spec"]["pools"][0];
    pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_dev_node_is_administered_with_fulcrumctl_and_keeps_its_state_across_a_restart() {
    let temporary = tempfile::tempdir().unwrap();
    let dir: PathBuf = temporary.path().join("dev");
    let dev = Dev::start(&dir);
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();

    // The demo configuration is written at first start.
    assert_eq!(backends(&dir), ["127.0.0.1:8081", "127.0.0.1:8082"]);
    let status = json(ctl(&dir, None, &["-o", "json", "status"]));
    assert_eq!(status["leader"].as_u64(), Some(1), "{status}");
    assert_eq!(get("/readyz", Some(token.trim())).map(|(s, _)| s), Some(200));
    assert_eq!(
        get("/readyz", None).map(|(s, _)| s),
        Some(401),
        "every route but /healthz wants the token"
    );

    // A write lands, --wait reports it applied, and the data plane shows the new backend.
    let added = ok(ctl(
        &dir,
        None,
        &["backend", "add", "demo", "127.0.0.1:8083", "--weight", "3", "--wait"],
    ));
    assert!(added.contains("127.0.0.1:8083"), "{added}");
    let node = json(ctl(&dir, None, &["-o", "json", "status"]));
    let served = node["nodes"][0]["status"]["pools"][0]["backends"].to_string();
    assert!(served.contains("127.0.0.1:8083"), "{node}");
    let metrics = get("/metrics", Some(token.trim())).unwrap().1;
    assert!(metrics.contains("fulcrum_config_revision 2"), "{metrics}");

    // A dry run shows the difference and writes nothing.
    let file = dir.join("cluster.toml");
    std::fs::write(
        &file,
        "[[pools]]\nname = \"demo\"\nbackends = [{ address = \"127.0.0.1:8081\" }]\n",
    )
    .unwrap();
    let dry = ok(ctl(&dir, None, &["apply", "-f", file.to_str().unwrap(), "--dry-run"]));
    assert!(dry.contains("- listener demo") && dry.contains("- backend 127.0.0.1:8083"), "{dry}");

    // Bad input and a wrong token are refused and change nothing.
    let refused = ctl(
        &dir,
        Some("wrong-token-wrong-token"),
        &["backend", "remove", "demo", "127.0.0.1:8083"],
    );
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let missing = ctl(&dir, None, &["backend", "drain", "demo", "127.0.0.1:9999"]);
    assert_eq!(missing.status.code(), Some(4), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"), "{missing:?}");
    assert_eq!(backends(&dir), ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);

    // Restarted: the store's data is kept, and the demo configuration is not written again.
    drop(dev);
    let _dev = Dev::start(&dir);
    assert_eq!(backends(&dir), ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);
}
