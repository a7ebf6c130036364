//! Import: verify the update packs of this site's hierarchy and record them in its
//! Updates and Servicing list, content copied to `EasySetupPayload/Offline/<guid>/`
//! beside the site database — all or nothing per pack, idempotent.

use crate::error::{Error, Result};
use crate::progress::ProgressFn;
use crate::site::updates::UpdateState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Content library folder beside the site database.
pub const CONTENT_LIBRARY: &str = "EasySetupPayload/Offline";

#[derive(Debug, Clone, Deserialize)]
pub struct ImportOptions {
    pub site_db: PathBuf,
    /// The update-pack folder Connect wrote (holds `<hierarchy-id>/` folders).
    pub source: PathBuf,
    /// DANGEROUS: accept packs whose signature is missing or untrusted. Off by default;
    /// named loudly everywhere it is exposed.
    #[serde(default)]
    pub insecure_skip_signature_check: bool,
}

impl ImportOptions {
    pub fn new(site_db: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Self {
        ImportOptions {
            site_db: site_db.into(),
            source: source.into(),
            insecure_skip_signature_check: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImportStatus {
    Imported,
    AlreadyImported,
    /// Not for this site (another hierarchy); not an error.
    Skipped,
    /// Failed verification or could not be recorded; the site is unchanged.
    Refused,
}

/// One result per pack (or per skipped hierarchy folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    pub hierarchy_id: Option<uuid::Uuid>,
    pub package_guid: Option<uuid::Uuid>,
    pub name: Option<String>,
    pub version: Option<String>,
    #[serde(rename = "type")]
    pub pack_type: Option<String>,
    pub status: ImportStatus,
    /// The state recorded in the site (ReadyToInstall or NotApplicable) when imported.
    pub state: Option<UpdateState>,
    pub state_code: Option<i64>,
    /// Why it was skipped or refused (one clear line).
    pub reason: Option<String>,
    /// Machine-readable kind of a refusal (`ErrorKind` name), e.g. `SignatureInvalid`.
    pub error_kind: Option<String>,
    pub source_path: PathBuf,
    pub content_path: Option<PathBuf>,
}

/// Import every pack under `<source>/<this-hierarchy-id>/`; other hierarchies' folders are
/// reported as `Skipped`. Per-pack refusals are results, not errors; `Err` means the run
/// could not start (site missing, source missing, busy, cancelled).
pub fn import(opts: &ImportOptions, progress: ProgressFn) -> Result<Vec<ImportResult>> {
    let _ = (opts, progress);
    Err(Error::internal("import is not implemented yet"))
}
