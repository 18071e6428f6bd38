//! The properties Fulcrum's fuzz targets check, one module per target, each a
//! `check(&[u8])` that panics when the property fails for that input. The cargo-fuzz targets
//! (`fuzz_targets/`, run by `scripts/fuzz.sh`) hand them libFuzzer's inputs; the test below
//! replays every input kept in `corpus/` and `regressions/` on stable Rust in the test
//! command, so an input that once broke a property is checked on every run.

pub mod admin_json;
pub mod cluster_file;
pub mod codec;
pub mod node_file;
pub mod proxy_header;
pub mod route;
pub mod rpc_envelope;
pub mod vrrp_received;
pub mod vrrp_received_v6;

/// A target's property: panics when it fails for the input.
pub type Check = fn(&[u8]);

/// Every target: its name (its directories under `corpus/` and `regressions/`) and check.
pub const TARGETS: [(&str, Check); 9] = [
    ("admin_json", admin_json::check),
    ("cluster_file", cluster_file::check),
    ("codec", codec::check),
    ("node_file", node_file::check),
    ("proxy_header", proxy_header::check),
    ("route", route::check),
    ("rpc_envelope", rpc_envelope::check),
    ("vrrp_received", vrrp_received::check),
    ("vrrp_received_v6", vrrp_received_v6::check),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The files in `dir`, or none if it does not exist.
    fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut files: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        files
    }

    #[test]
    fn every_kept_input_still_holds_its_property() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut replayed = 0;
        for (target, check) in super::TARGETS {
            let corpus = inputs(&root.join("corpus").join(target));
            assert!(!corpus.is_empty(), "no corpus kept for {target}");
            for file in corpus.iter().chain(&inputs(&root.join("regressions").join(target))) {
                let data = std::fs::read(file).expect("a readable input");
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{target}: {} breaks the property", file.display());
                replayed += 1;
            }
        }
        println!("{replayed} kept inputs replayed");
    }
}
