//! The cluster file: the TOML that operators write and `fulcrumctl apply -f` sends.
//!
//! Parsing reports a problem the way validation does, naming the object (`pool 'web'`,
//! `listener 'public' route 'api'`) and the field, with the line, rather than only a path of
//! array indexes.

use serde_path_to_error::Segment;

use crate::{ClusterSpec, Violations};

/// Why a cluster file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The text is not TOML.
    #[error("{0}")]
    Syntax(String),
    /// A value has the wrong shape or type.
    #[error("{object} (line {line}): {}{problem}", field_prefix(field))]
    Field {
        /// The object at fault, e.g. `pool 'web'`.
        object: String,
        /// The field at fault, e.g. `algorithm`; empty when the object itself is at fault.
        field: String,
        /// The 1-based line where the problem is.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The file parses but describes an inconsistent configuration.
    #[error("{0}")]
    Invalid(Violations),
    /// The configuration cannot be written as TOML.
    #[error("cannot write the configuration as TOML: {0}")]
    Render(#[from] toml::ser::Error),
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() { String::new() } else { format!("field `{field}`: ") }
}

/// Parses and validates a cluster file.
pub fn parse(text: &str) -> Result<ClusterSpec, FileError> {
    let deserializer =
        toml::de::Deserializer::parse(text).map_err(|e| FileError::Syntax(e.to_string()))?;
    let spec: ClusterSpec = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| describe(text, e.path(), e.inner()))?;
    spec.validate().map_err(FileError::Invalid)?;
    Ok(spec)
}

/// Writes `spec` as a cluster file that [`parse`] reads back to the same value.
pub fn render(spec: &ClusterSpec) -> Result<String, FileError> {
    Ok(toml::to_string_pretty(spec)?)
}

/// Turns a path such as `pools[1].algorithm` into `pool 'api'` and `algorithm`.
fn describe(text: &str, path: &serde_path_to_error::Path, error: &toml::de::Error) -> FileError {
    let raw: Option<toml::Table> = text.parse().ok();
    let mut cursor = raw.map(toml::Value::Table);
    let mut object = String::from("cluster file");
    let mut field: Vec<String> = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => {
                cursor = cursor.and_then(|v| v.get(key).cloned());
                field.push(key.clone());
            }
            Segment::Seq { index } => {
                cursor = cursor.and_then(|v| v.get(*index).cloned());
                let collection = field.last().map(String::as_str).unwrap_or("");
                let (kind, identity) = match collection {
                    "listeners" => ("listener", "name"),
                    "pools" => ("pool", "name"),
                    "rate_limits" => ("rate limit", "name"),
                    "routes" => ("route", "name"),
                    "backends" => ("backend", "address"),
                    _ => {
                        if let Some(last) = field.last_mut() {
                            last.push_str(&format!("[{index}]"));
                        }
                        continue;
                    }
                };
                let id = cursor.as_ref().and_then(|v| v.get(identity)).and_then(|v| v.as_str());
                let this = match id {
                    Some(id) => format!("{kind} '{id}'"),
                    None => format!("{kind} #{}", index + 1),
                };
                object = if object == "cluster file" { this } else { format!("{object} {this}") };
                field.clear();
            }
            Segment::Enum { variant } => field.push(variant.clone()),
            Segment::Unknown => {}
        }
    }
    let line = error.span().map(|span| line_of(text, span.start)).unwrap_or(1);
    FileError::Field { object, field: field.join("."), line, problem: error.message().to_owned() }
}

/// The 1-based line of byte `offset` in `text`, for errors that point into a TOML file.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}
