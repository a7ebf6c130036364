//! Configuration Manager's four-part versions (`5.00.9128.1000`), compared numerically.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A four-part version. Parts compare as numbers, so `5.00.9128.1000 < 5.00.9132.1000`
/// and `5.0.10.0 > 5.0.9.0`. The original text (e.g. the leading zeros of `00`) is kept
/// for display.
#[derive(Clone, Debug)]
pub struct SiteVersion {
    parts: [u32; 4],
    text: String,
}

impl SiteVersion {
    pub fn parts(&self) -> [u32; 4] {
        self.parts
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this site version lies in a pack's range: `min` ≤ self, and self ≤ `max`
    /// when the pack has a maximum. The one rule for the service's offers, Import's
    /// verdict and the re-evaluation after an upgrade.
    pub fn is_within(&self, min: &SiteVersion, max: Option<&SiteVersion>) -> bool {
        min <= self && max.is_none_or(|max| self <= max)
    }
}

impl FromStr for SiteVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_argument(format!(
                "'{s}' is not a four-part version like 5.00.9128.1000"
            ))
        };
        let mut parts = [0u32; 4];
        let mut n = 0;
        for piece in s.split('.') {
            if n == 4
                || piece.is_empty()
                || piece.len() > 9
                || !piece.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            parts[n] = piece.parse().map_err(|_| bad())?;
            n += 1;
        }
        if n != 4 {
            return Err(bad());
        }
        Ok(SiteVersion {
            parts,
            text: s.to_string(),
        })
    }
}

impl PartialEq for SiteVersion {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}
impl Eq for SiteVersion {}
impl PartialOrd for SiteVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SiteVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts.cmp(&other.parts)
    }
}
impl std::hash::Hash for SiteVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts.hash(state)
    }
}

impl fmt::Display for SiteVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for SiteVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SiteVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| serde::de::Error::custom(e.message().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_numerically() {
        let v = |s: &str| s.parse::<SiteVersion>().unwrap();
        assert!(v("5.00.9128.1000") < v("5.00.9132.1000"));
        assert!(v("5.0.10.0") > v("5.0.9.0"));
        assert_eq!(v("5.00.9128.1000"), v("5.0.9128.1000"));
        assert_eq!(v("5.00.9128.1000").to_string(), "5.00.9128.1000");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "5",
            "5.0.0",
            "5.0.0.0.0",
            "5.a.0.0",
            "5..0.0",
            "-1.0.0.0",
            "5.0.0.0 ",
            "9999999999.0.0.0",
        ] {
            assert!(s.parse::<SiteVersion>().is_err(), "{s:?} accepted");
        }
    }
}
