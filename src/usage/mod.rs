//! Usage data: which rows leave the site (level filtering, hashing of identifying
//! attributes), the usage cab written by Prepare, and the CSV written by Export.

pub mod manifest;
pub mod reader;

pub use manifest::{UsageFile, UsageManifest};
pub use reader::{read_usage_cab, read_usage_cab_file};

use crate::error::{Error, Result};
use crate::progress::ProgressFn;
use crate::site::DiagnosticsLevel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageFormat {
    Cab,
    Csv,
}

/// What Prepare or Export wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageDataFile {
    pub path: PathBuf,
    pub format: UsageFormat,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: String,
    pub diagnostics_level: DiagnosticsLevel,
    pub record_count: u64,
    /// Size of the written file.
    pub size: u64,
    /// SHA-256 of the written file.
    pub sha256: String,
}

/// Prepare: write the usage cab for the site at `site_db` to `dest` (`.cab`).
pub fn prepare(
    site_db: &Path,
    dest: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<UsageDataFile> {
    let _ = (site_db, dest, force, progress);
    Err(Error::internal("prepare is not implemented yet"))
}

/// Export: write the same rows as CSV to `dest` (`.csv`).
pub fn export_csv(
    site_db: &Path,
    dest: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<UsageDataFile> {
    let _ = (site_db, dest, force, progress);
    Err(Error::internal("export is not implemented yet"))
}
