//! The configuration reference, docs/configuration.md, is checked against the code: every key
//! the cluster file and the node file can hold (as the complete examples, rendered with their
//! defaults, show them) must be documented there as `` `path` ``.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::collections::BTreeSet;

use fulcrum_model::file;
use fulcrum_node::node_file::NodeFile;

/// Every key path of `value`: `pools[].health_check.interval`; arrays of tables as `[]`.
fn key_paths(value: &toml::Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                key_paths(inner, &path, paths);
            }
        }
        toml::Value::Array(items)
            if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
        {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), paths);
            }
        }
        _ => {
            paths.insert(prefix.to_owned());
        }
    }
}

fn undocumented(paths: &BTreeSet<String>, section: &str) -> Vec<String> {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md"))
            .unwrap();
    paths.iter().filter(|p| !reference.contains(&format!("`{section}{p}`"))).cloned().collect()
}

#[test]
fn every_cluster_file_key_is_documented() {
    let text = include_str!("../../examples/cluster.toml");
    let rendered = file::render(&file::parse(text).unwrap()).unwrap();
    let mut paths = BTreeSet::new();
    key_paths(&toml::Value::Table(toml::from_str(&rendered).unwrap()), "", &mut paths);
    assert!(paths.len() > 40, "the complete example renders {} keys", paths.len());
    let missing = undocumented(&paths, "");
    assert!(missing.is_empty(), "docs/configuration.md does not document: {missing:#?}");
}

#[test]
fn every_node_file_key_is_documented() {
    let text = include_str!("../../examples/node.toml");
    let node = NodeFile::parse(text).unwrap();
    let mut paths = BTreeSet::new();
    key_paths(&toml::Value::try_from(&node).unwrap(), "", &mut paths);
    assert!(paths.len() > 30, "the node example renders {} keys", paths.len());
    let missing = undocumented(&paths, "");
    assert!(missing.is_empty(), "docs/configuration.md does not document: {missing:#?}");
}
