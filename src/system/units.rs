//! Sizes: the `Bytes` newtype, parsing of user sizes (`512M`, `10G`) and extent rounding.

use std::fmt;

/// A size in bytes (JSON: the plain number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

impl Bytes {
    /// `lvm -L` argument in bytes (`<n>b`): lvm takes it exactly, no unit guessing.
    pub fn lvm_arg(self) -> String {
        format!("{}b", self.0)
    }

    /// Rounds up to a whole number of extents of `extent` bytes.
    pub fn round_up_to_extents(self, extent: Bytes) -> Bytes {
        if extent.0 == 0 {
            return self;
        }
        Bytes(self.0.div_ceil(extent.0).saturating_mul(extent.0))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("TiB", 1024 * GIB),
            ("GiB", GIB),
            ("MiB", MIB),
            ("KiB", KIB),
        ];
        for (name, size) in units {
            if self.0 >= size {
                return write!(f, "{:.1}{name}", self.0 as f64 / size as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses a size: a number with an optional unit `b k m g t` (powers of 1024, any case,
/// optional `iB`/`B` suffix). No unit means bytes.
pub fn parse_size(s: &str) -> Result<Bytes, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (try 512M or 10G)"));
    }
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 512M or 10G)"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes <= 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Bytes(bytes.ceil() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("512M"), Ok(Bytes(512 * MIB)));
        assert_eq!(parse_size("10g"), Ok(Bytes(10 * GIB)));
        assert_eq!(parse_size("1.5GiB"), Ok(Bytes(3 * GIB / 2)));
        assert_eq!(parse_size("4096"), Ok(Bytes(4096)));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-5M").is_err());
    }

    #[test]
    fn rounds_to_extents() {
        let ext = Bytes(4 * MIB);
        assert_eq!(Bytes(1).round_up_to_extents(ext), ext);
        assert_eq!(Bytes(4 * MIB).round_up_to_extents(ext), ext);
        assert_eq!(Bytes(4 * MIB + 1).round_up_to_extents(ext), Bytes(8 * MIB));
    }
}
