//! A configuration mistake, named by its field (`tollgate config: routing.rules[2].match.model:
//! …`), and the section parser that finds the field. Every config section's compiler uses these
//! (attribution, routing, the whole document in [`crate::config`]); this module imports nothing of
//! the crate, so those sections can depend on it without depending on each other.

use serde::de::DeserializeOwned;
use std::fmt;

/// A configuration problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `routing.rules[2].match.model`; empty for the document as a whole.
    pub path: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError { path: path.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "tollgate config: {}", self.problem)
        } else {
            write!(f, "tollgate config: {}: {}", self.path, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes one section, prefixing serde's message with the section's path.
/// When the section is an object and one member is at fault, the error names that member
/// (`routing.rules[2].match.model: …`), found by parsing each member on its own.
pub fn parse_at<T: DeserializeOwned>(value: serde_json::Value, path: &str) -> Result<T, ConfigError> {
    let members: Option<Vec<(String, serde_json::Value)>> =
        value.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    serde_json::from_value(value).map_err(|whole| {
        for (key, member) in members.into_iter().flatten() {
            let single = serde_json::Value::Object([(key.clone(), member)].into_iter().collect());
            if let Err(e) = serde_json::from_value::<T>(single) {
                let text = e.to_string();
                if !text.starts_with("missing field") && !text.starts_with("unknown field") {
                    let member_path = if path.is_empty() { key } else { format!("{path}.{key}") };
                    return ConfigError::new(member_path, text);
                }
            }
        }
        ConfigError::new(path, whole.to_string())
    })
}

