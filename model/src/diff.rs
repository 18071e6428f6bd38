//! What changing one cluster specification into another adds, removes and changes, object by
//! object: the dry run of `fulcrumctl apply` shows it before anything is written.

use crate::{ClusterSpec, Name, Pool};
use std::collections::BTreeMap;

/// One line per listener, pool or rate-limit policy that differs between `from` and `to`:
/// `+ pool web` (added), `- listener old` (removed), `~ pool web` (changed, with its backends
/// added and removed on indented lines). Empty when they declare the same thing.
pub fn diff(from: &ClusterSpec, to: &ClusterSpec) -> Vec<String> {
    let mut lines = Vec::new();
    objects(&mut lines, "listener", &from.listeners, &to.listeners, |l| &l.name, no_detail);
    objects(&mut lines, "pool", &from.pools, &to.pools, |p| &p.name, backend_changes);
    objects(&mut lines, "rate limit", &from.rate_limits, &to.rate_limits, |r| &r.name, no_detail);
    lines
}

/// Listeners and policies are shown whole.
fn no_detail<T>(_: &T, _: &T, _: &mut Vec<String>) {}

/// The backends a changed pool adds, removes and changes, indented under it.
fn backend_changes(old: &Pool, new: &Pool, lines: &mut Vec<String>) {
    for backend in &new.backends {
        match old.backend(backend.address) {
            None => lines.push(format!("    + backend {}", backend.address)),
            Some(before) if before != backend => {
                lines.push(format!("    ~ backend {}", backend.address))
            }
            Some(_) => {}
        }
    }
    for backend in old.backends.iter().filter(|b| new.backend(b.address).is_none()) {
        lines.push(format!("    - backend {}", backend.address));
    }
}

/// Appends the added, removed and changed objects of one kind, in name order, each changed
/// one followed by what `detail` says of it.
fn objects<T: PartialEq>(
    lines: &mut Vec<String>,
    kind: &str,
    from: &[T],
    to: &[T],
    name: impl Fn(&T) -> &Name,
    detail: impl Fn(&T, &T, &mut Vec<String>),
) {
    let old: BTreeMap<&str, &T> = from.iter().map(|o| (name(o).as_str(), o)).collect();
    let new: BTreeMap<&str, &T> = to.iter().map(|o| (name(o).as_str(), o)).collect();
    let mut names: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    for object in names {
        match (old.get(object), new.get(object)) {
            (None, Some(_)) => lines.push(format!("+ {kind} {object}")),
            (Some(_), None) => lines.push(format!("- {kind} {object}")),
            (Some(a), Some(b)) if a != b => {
                lines.push(format!("~ {kind} {object}"));
                detail(a, b, lines);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file;

    const BASE: &str = r#"
[[listeners]]
name = "web"
bind = "198.18.0.100:80"
protocol = "tcp"
default_pool = "app"

[[pools]]
name = "app"
backends = [{ address = "198.18.0.21:8080" }, { address = "198.18.0.22:8080" }]
"#;

    #[test]
    fn the_same_spec_has_no_changes() {
        let spec = file::parse(BASE).unwrap();
        assert!(diff(&spec, &spec).is_empty());
    }

    #[test]
    fn added_removed_and_changed_objects_are_named_with_their_backends() {
        let from = file::parse(BASE).unwrap();
        let to = file::parse(
            r#"
[[pools]]
name = "app"
backends = [{ address = "198.18.0.22:8080", weight = 3 }, { address = "198.18.0.23:8080" }]

[[pools]]
name = "spare"
backends = [{ address = "198.18.0.24:8080" }]
"#,
        )
        .unwrap();
        assert_eq!(
            diff(&from, &to),
            [
                "- listener web",
                "~ pool app",
                "    ~ backend 198.18.0.22:8080",
                "    + backend 198.18.0.23:8080",
                "    - backend 198.18.0.21:8080",
                "+ pool spare",
            ]
        );
    }
}
