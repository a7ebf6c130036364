//! The update-pack manifest (`manifest.json`), signed by the publisher. Shared by the
//! service (writes and signs it), Connect (downloads by it) and Import (verifies by it).

use crate::api::PackType;
use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.minisig";
pub const CONTENT_DIR: &str = "content";
pub const PACK_FORMAT_VERSION: u32 = 1;
/// Manifests larger than this are refused before parsing (hostile input).
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackManifest {
    pub format_version: u32,
    pub id: uuid::Uuid,
    pub name: String,
    pub version: SiteVersion,
    #[serde(rename = "type")]
    pub pack_type: PackType,
    pub min_site_version: SiteVersion,
    pub max_site_version: Option<SiteVersion>,
    /// Empty: offered to every hierarchy; otherwise only to these (targeted release).
    #[serde(default)]
    pub hierarchies: Vec<uuid::Uuid>,
    pub publisher: Publisher,
    /// RFC 3339 UTC.
    pub created: String,
    pub files: Vec<PackFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    pub name: String,
    /// minisign key ID (16 upper-case hex digits) of the signing key.
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    /// `/`-separated path relative to `content/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl PackManifest {
    /// Parse and validate untrusted manifest bytes: known format, safe unique paths,
    /// well-formed hashes, coherent version range.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidManifest,
                "the pack manifest is larger than 16 MiB",
            ));
        }
        let m: PackManifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                ErrorKind::InvalidManifest,
                format!("the pack manifest is not valid: {e}"),
            )
        })?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Error::new(ErrorKind::InvalidManifest, m);
        if self.format_version != PACK_FORMAT_VERSION {
            return Err(bad(format!(
                "pack manifest format {} is not supported (this tool reads format {PACK_FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.name.trim().is_empty() {
            return Err(bad("the pack manifest has no name".into()));
        }
        if let Some(max) = &self.max_site_version {
            if max < &self.min_site_version {
                return Err(bad(format!(
                    "max_site_version {max} is below min_site_version {}",
                    self.min_site_version
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            crate::fsutil::safe_relative_path(&f.path)?;
            if !crate::hashing::is_sha256_hex(&f.sha256) {
                return Err(bad(format!("file '{}' has a malformed sha256", f.path)));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(bad(format!("file '{}' is listed twice", f.path)));
            }
        }
        // A file cannot also be a folder of another file (`a` and `a/b`).
        for f in &self.files {
            let mut parent = f.path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                if seen.contains(p) {
                    return Err(bad(format!(
                        "'{p}' is listed as a file and is also the folder of '{}'",
                        f.path
                    )));
                }
                parent = p;
            }
        }
        // Names that differ only in case are one file on Windows: refused everywhere.
        match crate::fsutil::case_collision(self.files.iter().map(|f| f.path.as_str())) {
            Some((a, b)) => Err(Error::new(
                ErrorKind::UnsafePath,
                format!(
                    "unsafe path: the pack lists both '{}' and '{}', which differ only in letter case and would be one file on Windows",
                    a.escape_debug(),
                    b.escape_debug()
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether the pack applies to a site at `v` (min ≤ v, and v ≤ max when a max is set).
    pub fn applies_to(&self, v: &SiteVersion) -> bool {
        v.is_within(&self.min_site_version, self.max_site_version.as_ref())
    }
}

impl PackFile {
    /// The validated relative path under `content/`.
    pub fn rel_path(&self) -> Result<PathBuf> {
        crate::fsutil::safe_relative_path(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> PackManifest {
        PackManifest {
            format_version: PACK_FORMAT_VERSION,
            id: uuid::Uuid::new_v4(),
            name: "Update".into(),
            version: "5.00.9100.1000".parse().unwrap(),
            pack_type: PackType::Update,
            min_site_version: "5.00.9000.1000".parse().unwrap(),
            max_site_version: None,
            hierarchies: Vec::new(),
            publisher: Publisher {
                name: "p".into(),
                key_id: "0123456789ABCDEF".into(),
            },
            created: "2026-01-01T00:00:00Z".into(),
            files: paths
                .iter()
                .map(|p| PackFile {
                    path: p.to_string(),
                    size: 1,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }
    }

    /// Paths that would collide or be unusable on Windows are refused on every platform.
    #[test]
    fn windows_unsafe_file_lists_are_refused() {
        assert!(manifest(&["a/b.bin", "a/c.bin", "d.bin"])
            .validate()
            .is_ok());
        for (paths, kind, words) in [
            (
                &["Setup.exe", "setup.EXE"][..],
                ErrorKind::UnsafePath,
                "letter case",
            ),
            (
                &["Docs/a", "docs/b"][..],
                ErrorKind::UnsafePath,
                "letter case",
            ),
            (&["a.bin", "a.bin"][..], ErrorKind::InvalidManifest, "twice"),
            (
                &["a", "a/b"][..],
                ErrorKind::InvalidManifest,
                "also the folder",
            ),
            (&["x/nul.txt"][..], ErrorKind::UnsafePath, "reserves"),
            (&["x/y. "][..], ErrorKind::UnsafePath, "dot or a space"),
        ] {
            let e = manifest(paths).validate().unwrap_err();
            assert_eq!(e.kind(), kind, "{paths:?}: {e}");
            assert!(e.message().contains(words), "{paths:?}: {e}");
        }
    }
}
