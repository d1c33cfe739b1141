use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// A number of bytes. Parsed from `1073741824`, `512K`, `256M`, `1G`, `2T`
/// (binary units; `Ki`/`KiB`/`KB` spellings are accepted alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a size for `field`, refusing negatives, fractions and overflow.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let bad = || {
            ParseError::new(
                field,
                format!("{raw:?} is not a size; use bytes or a unit, like 512M, 1G or 10G"),
            )
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KI" | "KIB" => 10,
            "M" | "MB" | "MI" | "MIB" => 20,
            "G" | "GB" | "GI" | "GIB" => 30,
            "T" | "TB" | "TI" | "TIB" => 40,
            _ => return Err(bad()),
        };
        let bytes = n
            .checked_mul(1u64 << shift)
            .filter(|b| i64::try_from(*b).is_ok())
            .ok_or_else(|| ParseError::new(field, format!("{raw:?} is too large")))?;
        Ok(Self(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the size exactly
    /// (`256M`), so the output parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let size = 1u64 << shift;
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// CPU capacity in thousandths of a core: `500m` is half a core, `2` two cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millicores(pub u32);

impl Millicores {
    /// Parses `500m`, `1`, `1.5` or `0.25`; zero is refused.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        let bad = || {
            ParseError::new(
                field,
                format!("{raw:?} is not a CPU amount; use millicores like 500m, or cores like 1.5"),
            )
        };
        let value: u64 = if let Some(m) = s.strip_suffix('m') {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            m.parse().map_err(|_| bad())?
        } else {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            if whole.is_empty()
                || !whole.bytes().all(|b| b.is_ascii_digit())
                || !frac.bytes().all(|b| b.is_ascii_digit())
                || frac.len() > 3
            {
                return Err(bad());
            }
            let whole: u64 = whole.parse().map_err(|_| bad())?;
            let frac_m: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
            whole
                .checked_mul(1000)
                .and_then(|w| w.checked_add(frac_m))
                .ok_or_else(bad)?
        };
        if value == 0 {
            return Err(ParseError::new(field, "must be more than 0"));
        }
        let value = u32::try_from(value)
            .ok()
            .filter(|v| *v <= 1_000_000)
            .ok_or_else(|| ParseError::new(field, format!("{raw:?} is more than 1000 cores")))?;
        Ok(Self(value))
    }

    /// The amount in millicores.
    pub fn millis(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(ByteSize::parse("m", "256M").unwrap().bytes(), 256 << 20);
        assert_eq!(ByteSize::parse("m", "1G").unwrap().bytes(), 1 << 30);
        assert_eq!(ByteSize::parse("m", "1gib").unwrap().bytes(), 1 << 30);
        assert_eq!(ByteSize::parse("m", "4096").unwrap().bytes(), 4096);
        assert_eq!(ByteSize::parse("m", "512Ki").unwrap().bytes(), 512 << 10);
    }

    #[test]
    fn sizes_refuse_garbage() {
        for bad in ["", "M", "-1G", "1.5G", "1X", "1 G G", "99999999999T"] {
            let err = ByteSize::parse("memory", bad).unwrap_err();
            assert_eq!(err.field, "memory", "{bad:?}");
        }
    }

    #[test]
    fn size_display_round_trips() {
        for raw in ["256M", "1G", "3K", "1000", "5T"] {
            let v = ByteSize::parse("x", raw).unwrap();
            assert_eq!(ByteSize::parse("x", &v.to_string()).unwrap(), v);
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(Millicores::parse("cpu", "500m").unwrap().millis(), 500);
        assert_eq!(Millicores::parse("cpu", "1").unwrap().millis(), 1000);
        assert_eq!(Millicores::parse("cpu", "1.5").unwrap().millis(), 1500);
        assert_eq!(Millicores::parse("cpu", "0.25").unwrap().millis(), 250);
        for bad in ["", "0", "0m", "m", "-1", "1.2345", "abc", "1.5m", "2000000"] {
            assert!(Millicores::parse("cpu", bad).is_err(), "{bad:?}");
        }
    }
}
