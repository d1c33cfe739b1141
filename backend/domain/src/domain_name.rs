//! A site's domain name, as customers attach them to jails.

use std::fmt;

use serde::Serialize;

use crate::ParseError;

/// A fully qualified domain name: lowercase, at least two labels of a-z,
/// 0-9 and inner '-' (1 to 63 characters each), 253 characters at most, a
/// top-level label that is not all digits. A trailing dot is dropped.
/// Wildcards, addresses and non-ASCII names (write them in their `xn--`
/// form) are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DomainName(String);

impl DomainName {
    /// Parses a name typed by a user.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::new("domain", format!("{raw:?}: {reason}"));
        let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(bad("must not be empty"));
        }
        if name.contains('*') {
            return Err(bad("wildcards are not allowed; attach each name"));
        }
        if !name.is_ascii() {
            return Err(bad(
                "write an international name in its xn-- form (punycode)",
            ));
        }
        if name.len() > 253 {
            return Err(bad("must be at most 253 characters"));
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(bad("is an address, not a domain name"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(bad("needs at least two labels, like example.com"));
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label is 1 to 63 characters"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(bad(&format!(
                    "may only contain a-z, 0-9, '-' and '.', found {c:?}"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label must start and end with a letter or digit"));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("the last label must not be all digits"));
        }
        Ok(DomainName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its `www.` alias, when that is still a valid name.
    pub fn www(&self) -> Option<DomainName> {
        DomainName::parse(&format!("www.{}", self.0)).ok()
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_bad_ones_say_why() {
        assert_eq!(
            DomainName::parse(" Example.COM. ").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            DomainName::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        for (raw, says) in [
            ("*.example.com", "wildcards"),
            ("localhost", "two labels"),
            ("10.0.0.1", "address"),
            ("bücher.example", "xn--"),
            ("a..b", "1 to 63"),
            ("-a.com", "start and end"),
            ("a_b.com", "found '_'"),
            ("example.123", "all digits"),
            ("", "empty"),
        ] {
            let e = DomainName::parse(raw).unwrap_err();
            assert_eq!(e.field, "domain");
            assert!(e.reason.contains(says), "{raw}: {e}");
        }
        let long = format!("{}.com", "a.".repeat(130));
        assert!(DomainName::parse(&long).is_err());
        assert_eq!(
            DomainName::parse("site.test")
                .unwrap()
                .www()
                .unwrap()
                .as_str(),
            "www.site.test"
        );
    }
}
