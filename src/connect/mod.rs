//! Connect: upload usage cabs to the update service and download the update packs that
//! apply to each hierarchy — bounded parallelism, resumable with `Range`, verified while
//! streaming, written atomically, through an optional authenticating proxy.
//!
//! Layout written under `dest` (SPEC section 5):
//! `<dest>/<hierarchy-id>/<package-guid>/{manifest.json, manifest.json.minisig, content/...}`
//! and `<dest>/connect-report.json`.

use crate::api::Selection;
use crate::error::{Error, Result};
use crate::progress::ProgressFn;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Name of the report written at the top of the destination.
pub const REPORT_FILE: &str = "connect-report.json";

/// Proxy settings. The password is never logged, serialized or shown by `Debug`.
#[derive(Clone, Default, Deserialize)]
pub struct ProxyOptions {
    /// `host[:port]`, scheme optional (`http://` assumed), port 80 by default.
    pub uri: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectOptions {
    /// A usage cab, or a folder of uniquely named usage cabs (one per hierarchy).
    pub source: PathBuf,
    /// The update-pack destination folder (created if missing; its parent must exist).
    pub dest: PathBuf,
    /// Base URI of the update service, e.g. `https://updates.contoso.com` or `http://127.0.0.1:8080`.
    pub service_uri: String,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub proxy: Option<ProxyOptions>,
    /// Extra CA certificate (PEM) trusted for the service's TLS, for a private CA.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token for a service that requires one. Never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Concurrent file downloads (default 4).
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Attempts per request on transient failures, including the first (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_parallelism() -> usize {
    4
}
fn default_attempts() -> u32 {
    5
}

impl ConnectOptions {
    pub fn new(
        source: impl Into<PathBuf>,
        dest: impl Into<PathBuf>,
        service_uri: impl Into<String>,
    ) -> Self {
        ConnectOptions {
            source: source.into(),
            dest: dest.into(),
            service_uri: service_uri.into(),
            selection: Selection::default(),
            proxy: None,
            ca_cert: None,
            token: None,
            parallelism: default_parallelism(),
            max_attempts: default_attempts(),
        }
    }
}

/// What Connect did; also written to `connect-report.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectReport {
    pub tool_version: String,
    pub service_uri: String,
    pub selection: Selection,
    pub started: String,
    pub finished: String,
    pub uploads: Vec<UploadReport>,
    pub packs: Vec<PackReport>,
}

impl ConnectReport {
    /// True when every cab uploaded and every offered pack is complete and verified.
    pub fn is_success(&self) -> bool {
        self.uploads
            .iter()
            .all(|u| u.status == UploadStatus::Uploaded)
            && self.packs.iter().all(|p| {
                matches!(
                    p.status,
                    PackStatus::Downloaded | PackStatus::AlreadyComplete
                )
            })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum UploadStatus {
    Uploaded,
    /// Not a usage cab, or a second cab of the same hierarchy: not uploaded.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadReport {
    pub cab: PathBuf,
    pub hierarchy_id: Option<uuid::Uuid>,
    pub site_version: Option<String>,
    pub status: UploadStatus,
    /// Packages offered for this hierarchy.
    pub offered: usize,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PackStatus {
    /// Every file fetched (or resumed) and verified in this run.
    Downloaded,
    /// Already complete and verified on the drive from an earlier run.
    AlreadyComplete,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackReport {
    pub hierarchy_id: uuid::Uuid,
    pub package_guid: uuid::Uuid,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub pack_type: String,
    pub size: u64,
    /// `<dest>/<hierarchy-id>/<package-guid>`.
    pub path: PathBuf,
    pub status: PackStatus,
    pub files: Vec<FileReport>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FileStatus {
    Downloaded,
    /// Continued from bytes already on disk with a `Range` request.
    Resumed,
    AlreadyComplete,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub status: FileStatus,
    /// Bytes transferred over the network in this run.
    pub bytes_transferred: u64,
    pub message: Option<String>,
}

/// Run Connect. Per-cab and per-pack failures are recorded in the report (and the report
/// is still written); an `Err` means nothing useful could be done at all (bad options,
/// destination unusable, cancelled).
pub fn connect(opts: &ConnectOptions, progress: ProgressFn) -> Result<ConnectReport> {
    let _ = (opts, progress);
    Err(Error::internal("connect is not implemented yet"))
}
