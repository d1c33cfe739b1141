//! Numbers with units, as people read them.

/// Bytes in binary units: `512 B`, `1.5 KiB`, `256 MiB`, `2.0 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut unit = 0;
    let mut scaled = b;
    // Tenths of the unit, in integers, so 1.5 GiB prints exactly.
    while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    let tenths = scaled * 10 / 1024;
    if tenths.is_multiple_of(10) || tenths >= 1000 {
        format!("{} {}", tenths / 10, UNITS[unit])
    } else {
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// Bits per second: `800 kbit/s`, `100 Mbit/s`, `1 Gbit/s` (decimal, as networks count).
pub fn bits_per_sec(bps: u64) -> String {
    if bps == 0 {
        return "unlimited".into();
    }
    for (size, unit) in [
        (1_000_000_000, "Gbit/s"),
        (1_000_000, "Mbit/s"),
        (1_000, "kbit/s"),
    ] {
        if bps >= size {
            let tenths = bps * 10 / size;
            return if tenths.is_multiple_of(10) {
                format!("{} {unit}", tenths / 10)
            } else {
                format!("{}.{} {unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bps} bit/s")
}

/// Millicores as cores: `500m` → `0.5 CPU`, `2000m` → `2 CPU`.
pub fn cpu(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        format!("{} CPU", millicores / 1000)
    } else {
        let s = format!("{}.{:03}", millicores / 1000, millicores % 1000);
        format!("{} CPU", s.trim_end_matches('0'))
    }
}

/// Whole percent of `used` in `total`, capped at 100 for bar widths.
pub fn percent(used: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (u128::from(used) * 100 / u128::from(total))
        .min(100)
        .try_into()
        .unwrap_or(100)
}

/// Percent-encodes everything but letters, digits and `-_.~`, for URL
/// query values and cookie values.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bits_per_sec(100_000_000), "100 Mbit/s");
        assert_eq!(bits_per_sec(1_500_000), "1.5 Mbit/s");
        assert_eq!(bits_per_sec(0), "unlimited");
        assert_eq!(cpu(500), "0.5 CPU");
        assert_eq!(cpu(2000), "2 CPU");
        assert_eq!(cpu(1250), "1.25 CPU");
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(500, 200), 100);
    }
}
