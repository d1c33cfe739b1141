use std::fmt;

use crate::ParseError;

/// A plain file name for a jail's site folder: letters, digits, `.`, `_`
/// and `-`, not starting with a dot, 1..=128 bytes. No path can be built
/// from it: `/`, `..` and hidden files are impossible.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Parses a user-supplied file name.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && !raw.starts_with('.')
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                "file name",
                format!("{raw:?}: use letters, digits, '.', '_' and '-', not starting with '.'"),
            ))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::FileName;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["index.html", "a", "style-2.css", "logo_v1.PNG"] {
            assert!(FileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".htaccess",
            "..",
            "a/b",
            "../x",
            "a b",
            "x\0y",
            &"a".repeat(129),
        ] {
            assert!(FileName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
