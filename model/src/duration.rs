//! Durations in the two forms the model is stored in: `"2s"`, `"500ms"` for people (TOML,
//! JSON) and whole milliseconds for the binary Raft log.
//!
//! Used as `#[serde(with = "crate::duration")]`; whole milliseconds are the resolution of
//! every timer in the model, and parsing rejects finer values rather than rounding them.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Serializes `d` as humantime text for readable formats, as milliseconds otherwise.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.collect_str(&humantime::format_duration(*d))
    } else {
        serializer.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Reads what [`serialize`] writes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    if deserializer.is_human_readable() {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(D::Error::custom)
    } else {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Parses `"1m 30s"`, `"250ms"` and the like into a duration of whole milliseconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. \"500ms\", \"2s\")"))?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("invalid duration {text:?}: the resolution is one millisecond"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_forms() {
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_garbage_and_sub_millisecond() {
        assert!(parse("soon").unwrap_err().contains("soon"));
        assert!(parse("10us").unwrap_err().contains("millisecond"));
    }
}

/// The same two forms for an optional duration: absent means `None`.
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some(d)` as [`super::serialize`] does, `None` as nothing.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        struct Wrap<'a>(&'a Duration);
        impl serde::Serialize for Wrap<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize(self.0, serializer)
            }
        }
        match d {
            Some(d) => serializer.serialize_some(&Wrap(d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);
        Ok(Option::<Wrap>::deserialize(deserializer)?.map(|Wrap(d)| d))
    }
}
