//! `manifest.json` inside a usage cab.

use crate::error::{Error, ErrorKind, Result};
use crate::site::DiagnosticsLevel;
use crate::version::SiteVersion;
use serde::{Deserialize, Serialize};

pub const USAGE_MANIFEST_FILE: &str = "manifest.json";
pub const SITE_VERSION_FILE: &str = "SiteVersion.txt";
pub const USAGE_DATA_FILE: &str = "UsageData.csv";
pub const USAGE_FORMAT_VERSION: u32 = 1;
/// A usage manifest larger than this is refused before parsing.
pub const MAX_USAGE_MANIFEST_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageManifest {
    pub format_version: u32,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: SiteVersion,
    pub diagnostics_level: DiagnosticsLevel,
    /// RFC 3339 UTC.
    pub created: String,
    /// e.g. "ServiceConnection 0.1.0".
    pub tool_version: String,
    pub files: Vec<UsageFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageFile {
    /// File name inside the cab (no folders).
    pub name: String,
    pub size: u64,
    /// Data records in the file (CSV rows, header excluded).
    pub records: u64,
    pub sha256: String,
}

impl UsageManifest {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorKind::InvalidManifest, m);
        let m: UsageManifest = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("the usage manifest is not valid: {e}")))?;
        if m.format_version != USAGE_FORMAT_VERSION {
            return Err(bad(format!(
                "usage manifest format {} is not supported (expected {USAGE_FORMAT_VERSION})",
                m.format_version
            )));
        }
        if m.files.is_empty() {
            return Err(bad("the usage manifest lists no data files".into()));
        }
        for f in &m.files {
            if f.name.is_empty()
                || f.name.contains(['/', '\\'])
                || f.name == ".."
                || f.name.chars().any(char::is_control)
            {
                return Err(bad(format!(
                    "the usage manifest names an unsafe file '{}'",
                    f.name.escape_debug()
                )));
            }
            if !crate::hashing::is_sha256_hex(&f.sha256) {
                return Err(bad(format!("file '{}' has a malformed sha256", f.name)));
            }
        }
        Ok(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn total_records(&self) -> u64 {
        self.files.iter().map(|f| f.records).sum()
    }
}
