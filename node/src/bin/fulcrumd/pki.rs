//! `fulcrumd pki`: makes the cluster CA and the node certificates that mutual TLS between
//! nodes (`[raft.tls]`) uses, as PEM files; keys are written readable by their owner only, and
//! no existing file is overwritten.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use fulcrum_raft_store::tls::{IssuedPem, ca_certificate_for, issue_ca, issue_node};

/// The certificates of mutual TLS between nodes.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Make the certificates of mutual TLS between nodes (`[raft.tls]`).
    #[command(subcommand)]
    Pki(Pki),
}

#[derive(Subcommand, Debug)]
pub(crate) enum Pki {
    /// A new cluster CA: DIR/ca.pem for every node's `raft.tls.ca`, and DIR/ca.key, which
    /// signs node certificates and belongs off the nodes. With --key, only DIR/ca.pem, for
    /// a CA key made elsewhere (several machines sharing the key make CA certificates that
    /// trust the same node certificates).
    ///
    /// Example: fulcrumd pki ca --out /root/fulcrum-ca
    Ca {
        /// Where to write ca.pem and ca.key
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the CA is valid
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// An existing CA key (PEM, PKCS#8 ECDSA P-256) to make the certificate for
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// A node's certificate and key, signed by the cluster CA: DIR/NAME.pem and DIR/NAME.key.
    ///
    /// Example: fulcrumd pki node --ca-key /root/fulcrum-ca/ca.key --name lb1 --out /etc/fulcrum
    Node {
        /// The CA's private key, from `fulcrumd pki ca`
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The node's name, in the certificate and the file names
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem and NAME.key
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// An address or DNS name fulcrumctl reaches the node's admin API at, so the same
        /// certificate can serve `[admin] tls`; repeat for several
        #[arg(long = "address", value_name = "ADDRESS")]
        addresses: Vec<String>,
        /// How long the certificate is valid; issue a new one before, and the node reads it
        /// without a restart
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Runs one `pki` command.
pub(crate) fn run(command: Command) -> anyhow::Result<()> {
    let Command::Pki(pki) = command;
    match pki {
        Pki::Ca { out, days, key: None } => {
            let ca = issue_ca(days)?;
            write_pair(&out, "ca", &ca)?;
            println!(
                "wrote {0}/ca.pem (give it to every node) and {0}/ca.key (keep it safe, off the nodes)",
                out.display()
            );
        }
        Pki::Ca { out, days, key: Some(key) } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the CA key {}", key.display()))?;
            let cert = ca_certificate_for(&pem, days).with_context(|| {
                format!("{} is not an ECDSA P-256 key in PKCS#8 PEM", key.display())
            })?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join("ca.pem");
            if path.exists() {
                anyhow::bail!("{} exists already; move it away to make a new one", path.display());
            }
            write_new(&path, &cert, 0o644)?;
            println!("wrote {} (give it to every node)", path.display());
        }
        Pki::Node { ca_key, name, out, addresses, days } => {
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                anyhow::bail!("--name {name:?}: use letters, digits, '-', '_' and '.'");
            }
            let key = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("cannot read the CA key {}", ca_key.display()))?;
            let node = issue_node(&key, &name, &addresses, days).with_context(|| {
                format!("{} is not a CA key from `fulcrumd pki ca`", ca_key.display())
            })?;
            write_pair(&out, &name, &node)?;
            println!(
                "wrote {0}/{name}.pem and {0}/{name}.key: point raft.tls.cert and raft.tls.key at them",
                out.display()
            );
        }
    }
    Ok(())
}

/// Writes NAME.pem and NAME.key (owner-only) into `dir`, refusing to replace either.
fn write_pair(dir: &Path, name: &str, pem: &IssuedPem) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    for path in [&cert, &key] {
        if path.exists() {
            anyhow::bail!("{} exists already; move it away to make a new one", path.display());
        }
    }
    write_new(&key, &pem.key, 0o600)?;
    write_new(&cert, &pem.cert, 0o644)
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
