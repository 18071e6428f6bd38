//! An ACME authority in the lab: pebble (Debian's ACME test server) on a lab host, with
//! pebble-challtestsrv as its DNS server answering every name with the VIP, so validation
//! requests go where clients would. Its HTTPS certificate is the lab CA's; what it says in
//! its log (accounts and orders it holds) is what the tests count.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::LabProcess;
use crate::{Host, Lab, LabError};

/// Where pebble serves its directory, on the host it runs on.
pub const PEBBLE_PORT: u16 = 14000;
/// Pebble's management API (its roots).
pub const PEBBLE_MANAGEMENT_PORT: u16 = 15000;
const DNS_PORT: u16 = 8053;
const READY: Duration = Duration::from_secs(10);

/// A running pebble and its DNS server.
pub struct Pebble {
    process: LabProcess,
    _dns: LabProcess,
    host: Host,
    ca: PathBuf,
}

impl Pebble {
    /// Starts pebble on `host`, validating on ports 80 and 443 of whatever `vip` names are
    /// resolved to, issuing certificates valid for `validity`.
    pub fn start(
        lab: &Lab,
        host: &Host,
        vip: Ipv4Addr,
        validity: Duration,
    ) -> Result<Pebble, LabError> {
        let pki = lab.node_pki(host)?;
        let dns_listen = format!("127.0.0.1:{DNS_PORT}");
        let dns_args: Vec<String> = [
            "-defaultIPv4",
            &vip.to_string(),
            "-defaultIPv6",
            "",
            "-dns01",
            &dns_listen,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            "127.0.0.1:8055",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut dns = lab.spawn(
            host,
            "pebble-challtestsrv",
            Path::new("/usr/bin/pebble-challtestsrv"),
            &dns_args,
        )?;
        dns.wait_for("its DNS server", |line| line.contains("DNS"), READY)?;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("0.0.0.0:{PEBBLE_PORT}"),
                "managementListenAddress": format!("0.0.0.0:{PEBBLE_MANAGEMENT_PORT}"),
                "certificate": pki.cert,
                "privateKey": pki.key,
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        let config_file =
            lab.lab_file(&format!("pebble-{}.json", host.name), &config.to_string())?;
        // Deterministic: no random sleep before validating, no nonces refused at random, and
        // every order validated afresh. `env` execs pebble, so the PID is pebble's.
        let args: Vec<String> = [
            "PEBBLE_VA_NOSLEEP=1",
            "PEBBLE_WFE_NONCEREJECT=0",
            "PEBBLE_AUTHZREUSE=0",
            "/usr/bin/pebble",
            "-config",
            &config_file,
            "-dnsserver",
            &dns_listen,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut process = lab.spawn(host, "pebble", Path::new("/usr/bin/env"), &args)?;
        process.wait_for(
            "its directory",
            |line| line.contains("ACME directory available"),
            READY,
        )?;
        Ok(Pebble { process, _dns: dns, host: host.clone(), ca: pki.ca })
    }

    /// The directory URL a listener's `tls.acme.directory` names.
    pub fn directory(&self) -> String {
        format!("https://{}:{PEBBLE_PORT}/dir", self.host.address)
    }

    /// The CA of pebble's own HTTPS (the lab CA), for `tls.acme.ca_file`.
    pub fn api_ca(&self) -> &Path {
        &self.ca
    }

    /// The root that signs the certificates pebble issues (new with every start), as PEM.
    pub fn issuing_root(&self, lab: &Lab) -> Result<String, LabError> {
        let address = SocketAddr::new(self.host.address.into(), PEBBLE_MANAGEMENT_PORT);
        let ca = self.ca.clone();
        lab.run_in(&self.host, move || crate::serving::https_get(address, &ca, "/roots/0"))?
            .map_err(|source| LabError::Io { what: format!("GET {address}/roots/0"), source })
    }

    /// The most accounts and orders pebble has held at once, from its log.
    pub fn counts(&mut self) -> (usize, usize) {
        let lines = self.process.read_available();
        let most = |what: &str| {
            lines
                .iter()
                .filter_map(|line| {
                    let (_, rest) = line.split_once("There are now ")?;
                    let (count, kind) = rest.split_once(' ')?;
                    kind.starts_with(what).then(|| count.parse::<usize>().ok()).flatten()
                })
                .max()
                .unwrap_or(0)
        };
        (most("accounts"), most("orders"))
    }

    /// Stops pebble (and so every order it held).
    pub fn stop(mut self) -> Result<(), LabError> {
        self.process.stop().map(|_| ())
    }
}
