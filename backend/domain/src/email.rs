use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// An email address used as a sign-in name, stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Parses an address: one `@`, a non-empty local part, a dotted or
    /// single-label domain, no whitespace or control characters, ≤ 254 bytes.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim().to_ascii_lowercase();
        let err = |why: &str| ParseError::new("email", why.to_owned());
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > 254 {
            return Err(err("must be at most 254 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain spaces"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(err("must look like name@example.com"));
        };
        if local.is_empty() || domain.is_empty() || domain.contains('@') {
            return Err(err("must look like name@example.com"));
        }
        if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
            return Err(err("has an invalid domain"));
        }
        Ok(Self(s))
    }

    /// The address as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_space() {
        assert_eq!(
            Email::parse(" Admin@Example.COM ").unwrap().as_str(),
            "admin@example.com"
        );
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "", "x", "@a.b", "a@", "a@@b", "a b@c.d", "a@.b", "a@b.", "a@b..c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
