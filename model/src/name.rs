//! Object names: the keys by which listeners, pools, routes and policies refer to each other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest name accepted; it must fit in metric labels and log lines.
pub const MAX_NAME_LEN: usize = 63;

/// A validated object name: 1 to 63 characters of `a-z`, `0-9`, `-`, `_` and `.`, starting
/// with a letter or digit. Holding a `Name` proves the text is one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a text is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {text:?}: {reason}")]
pub struct InvalidName {
    /// The rejected text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = InvalidName;

    fn try_from(text: String) -> Result<Self, InvalidName> {
        let fail = |reason| Err(InvalidName { text: text.clone(), reason });
        let Some(first) = text.chars().next() else {
            return fail("a name cannot be empty");
        };
        if text.len() > MAX_NAME_LEN {
            return fail("a name is at most 63 characters");
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return fail("a name starts with a lowercase letter or a digit");
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
        if !text.chars().all(allowed) {
            return fail("a name holds only a-z, 0-9, '-', '_' and '.'");
        }
        Ok(Name(text))
    }
}

impl FromStr for Name {
    type Err = InvalidName;

    fn from_str(text: &str) -> Result<Self, InvalidName> {
        Name::try_from(text.to_owned())
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["web", "api-v2", "a", "0canary", "pool_1.eu"] {
            assert_eq!(ok.parse::<Name>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for bad in ["", "Web", "-web", "web pool", "wéb", &"x".repeat(64)] {
            let err = bad.parse::<Name>().unwrap_err();
            assert_eq!(err.text, bad);
        }
    }
}
