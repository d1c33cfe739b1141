use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Checks a name that ends up as a path component, a cgroup name, a hostname
/// and a URL segment: lowercase letters, digits and inner hyphens, 1..=63
/// bytes. The allow-list makes `.`, `..`, `/` and NUL impossible.
fn check_label(field: &'static str, raw: &str) -> Result<(), ParseError> {
    if raw.is_empty() {
        return Err(ParseError::new(field, "must not be empty"));
    }
    if raw.len() > 63 {
        return Err(ParseError::new(field, "must be at most 63 characters"));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ParseError::new(
            field,
            format!("may only contain a-z, 0-9 and '-', found {bad:?}"),
        ));
    }
    if raw.starts_with('-') || raw.ends_with('-') {
        return Err(ParseError::new(
            field,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks the name of a root filesystem image: 1 to 63 characters of a-z,
/// 0-9, '.', '_' and '-', starting with a letter or digit (so never `.`,
/// `..` or a path). Whether a node offers it is the store's question.
pub fn image_name(raw: &str) -> Result<String, ParseError> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(ParseError::new(
            "image",
            "must be 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $ty:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// Parses a user-supplied name, refusing anything outside the allow-list.
            pub fn parse(raw: &str) -> Result<Self, ParseError> {
                check_label($field, raw)?;
                Ok(Self(raw.to_owned()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// A tenant's short name, unique across the provider (`acme`, `shop-42`).
    TenantSlug,
    "slug"
);
label_type!(
    /// A jail's name, unique within its tenant; also its hostname.
    JailName,
    "name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostname_like_names() {
        for ok in ["a", "web-1", "0", "abc-def-123", &"x".repeat(63)] {
            assert!(JailName::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn refuses_path_tricks_and_odd_characters() {
        for bad in [
            "", ".", "..", "a/b", "../etc", "A", "web_1", "-a", "a-", "a b", "é", "a\0b",
        ] {
            assert!(JailName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(TenantSlug::parse(&"x".repeat(64)).is_err());
    }

    #[test]
    fn error_names_the_field() {
        let err = TenantSlug::parse("Bad").unwrap_err();
        assert_eq!(err.field, "slug");
        assert!(err.to_string().contains("a-z"));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<JailName>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<JailName>("\"../x\"").is_err());
    }
}
