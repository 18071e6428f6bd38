//! Network namespaces through iproute2: create, configure, enter and delete.
//!
//! The lab drives `ip` rather than netlink because it is test scaffolding: what it does is then
//! exactly what an operator would type, and failures come with iproute2's own message.

use std::fs::File;
use std::process::Command;

use crate::topology::LabError;

/// Runs `ip <args>` and returns its standard output, or an error naming the command.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// Runs a program to completion; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let output = Command::new(program).args(args).output().map_err(|source| LabError::Spawn {
        what: format!("{program} {}", args.join(" ")),
        source,
    })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip netns exec <namespace> <program> <args>` to completion.
pub fn exec(namespace: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut full = vec!["netns", "exec", namespace, program];
    full.extend_from_slice(args);
    ip(&full)
}

/// The names of all network namespaces on the host.
pub fn list() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    // Lines look like "name" or "name (id: 3)".
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

/// Runs `work` on a new thread whose network namespace is `namespace`, and returns its result.
///
/// Sockets made inside `work` stay in that namespace wherever they are used afterwards; the
/// calling thread's namespace is never changed.
pub fn run_in<T, F>(namespace: &str, work: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{namespace}");
    let handle = File::open(&path).map_err(|source| LabError::Io { what: path.clone(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    LabError::Io { what: format!("setns into {path}"), source: e.into() }
                })?;
                Ok(work())
            })
            .join()
            .map_err(|_| LabError::Panicked(format!("work inside namespace {namespace}")))?
    })
}
