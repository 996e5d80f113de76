//! A refused configuration: which field is wrong and how to fix it. Never carries key material.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The policy field at fault, as a path (`keys.env.k1`, `classes.email.mode`…).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// A key variable named by the policy is not set (a security event of its own).
    pub key_missing: bool,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into(), key_missing: false }
    }

    /// An error about a key variable that is not set.
    pub fn key_missing(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key_missing: true, ..ConfigError::new(field, message) }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
