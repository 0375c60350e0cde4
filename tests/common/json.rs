//! The daemon's `--json` output and control replies, read with `serde_json`: [`Json`] is a
//! `serde_json::Value` (`v["key"]` is `null` when the key is absent), and [`JsonExt`] adds
//! the two accessors every assertion uses, which panic with the whole object when a field is
//! missing or has the wrong type.

pub use serde_json::Value as Json;

/// Parses one JSON value (trailing characters other than whitespace are an error).
pub fn parse_json(text: &str) -> Result<Json, serde_json::Error> {
    serde_json::from_str(text)
}

/// Parses the output of a `--json` subcommand that prints an array; panics, naming `what`,
/// if it is not one.
#[track_caller]
pub fn json_array(text: &str, what: &str) -> Vec<Json> {
    match parse_json(text.trim()) {
        Ok(Json::Array(items)) => items,
        Ok(other) => panic!("`{what}` did not print a JSON array: {other}"),
        Err(e) => panic!("`{what}` printed invalid JSON ({e}): {text}"),
    }
}

/// Fields that must be present.
pub trait JsonExt {
    /// A non-negative integer field; panics with the whole object otherwise.
    fn num(&self, key: &str) -> u64;
    /// A string field; panics with the whole object otherwise.
    fn str(&self, key: &str) -> &str;
}

impl JsonExt for Json {
    #[track_caller]
    fn num(&self, key: &str) -> u64 {
        self[key]
            .as_u64()
            .unwrap_or_else(|| panic!("field {key:?} is not a non-negative integer in {self}"))
    }

    #[track_caller]
    fn str(&self, key: &str) -> &str {
        self[key]
            .as_str()
            .unwrap_or_else(|| panic!("field {key:?} is not a string in {self}"))
    }
}
