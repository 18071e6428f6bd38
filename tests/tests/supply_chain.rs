//! The dependencies against the RustSec advisory database: no advisory applies to
//! `Cargo.lock` or `fuzz/Cargo.lock` (a vulnerability, or a warning: unmaintained, unsound,
//! notice) but those accepted in `supply-chain/accepted.toml`, each with its reason, and each
//! accepted one still applies. The database is the copy in `supply-chain/advisory-db/`
//! (`scripts/refresh-advisories.sh`), read with the `rustsec` crate that cargo-audit is built
//! on, so the test needs no network.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rustsec::advisory::Informational;
use rustsec::report::{Report, Settings};
use rustsec::{Database, Lockfile};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The accepted advisories' ids, each checked to come with a reason.
fn accepted() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repository().join("supply-chain/accepted.toml")).unwrap();
    let file: toml::Table = toml::from_str(&text).unwrap();
    let entries = file["accepted"].as_array().unwrap();
    entries
        .iter()
        .map(|entry| {
            let id = entry["id"].as_str().unwrap().to_owned();
            let reason = entry.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
            assert!(reason.trim().len() > 20, "{id} is accepted without a reason");
            id
        })
        .collect()
}

#[test]
fn no_advisory_applies_to_the_dependencies_but_the_accepted_ones() {
    let database = Database::open(&repository().join("supply-chain/advisory-db")).unwrap();
    assert!(database.iter().count() > 50, "the advisory copy is nearly empty");
    let settings = Settings {
        informational_warnings: vec![
            Informational::Unmaintained,
            Informational::Unsound,
            Informational::Notice,
        ],
        ..Settings::default()
    };
    let accepted = accepted();
    let mut seen = BTreeSet::new();
    for lockfile in ["Cargo.lock", "fuzz/Cargo.lock"] {
        let lockfile = Lockfile::load(repository().join(lockfile)).unwrap();
        let report = Report::generate(&database, &lockfile, &settings);
        let mut found: Vec<(String, String)> = report
            .vulnerabilities
            .list
            .iter()
            .map(|v| (v.advisory.id.to_string(), v.package.name.to_string()))
            .collect();
        for warnings in report.warnings.values() {
            found.extend(warnings.iter().filter_map(|w| {
                Some((w.advisory.as_ref()?.id.to_string(), w.package.name.to_string()))
            }));
        }
        for (id, package) in found {
            assert!(accepted.contains(&id), "{id} applies to {package} and is not accepted");
            seen.insert(id);
        }
    }
    let stale: Vec<_> = accepted.difference(&seen).collect();
    assert!(stale.is_empty(), "accepted but no longer applying, remove them: {stale:?}");
}
