//! Running `nft`: a whole script loaded as one transaction (`nft -f -`), and a table read
//! back as JSON. Second-chance forwarding, the quorum fence and BGP flow steering each keep
//! a table of their own and load it through here.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long `nft` may take.
pub(crate) const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `nft` did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run.
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Missing(std::io::Error),
    /// `nft` refused the script.
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    /// Talking to `nft` failed.
    #[error("cannot pass the ruleset to nft: {0}")]
    Io(std::io::Error),
    /// `nft` did not finish.
    #[error("nft did not finish within {NFT_TIMEOUT:?}")]
    Timeout,
}

/// Runs `nft -f -` with `script`: all of it applies, or none.
pub(crate) async fn load(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script)).await.map(drop)
}

/// Runs `nft -j` with `args` and gives what it printed (JSON).
pub(crate) async fn read_json(args: &[&str]) -> Result<String, NftError> {
    let args: Vec<&str> = std::iter::once("-j").chain(args.iter().copied()).collect();
    run(&args, None).await
}

async fn run(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Missing)?;
    let run = async {
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
            stdin.write_all(input.as_bytes()).await?;
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .map_err(|_| NftError::Timeout)?
        .map_err(NftError::Io)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(NftError::Refused(String::from_utf8_lossy(&output.stderr).trim().to_owned()))
}

/// Whether `interface` can be quoted in a rule as it is.
pub(crate) fn quotable(interface: &str) -> bool {
    !interface.is_empty() && !interface.contains(['"', '\\', '\n'])
}
