//! The update service's HTTP API (version 1): the JSON shapes shared by the reference
//! server (`service`) and the client (`connect`). The wire contract is documented in
//! README.md ("The update service API"); keep the two in step.
//!
//! | method & path | body / answer |
//! |---|---|
//! | `GET /v1/health` | 200 [`Health`] (no token needed) |
//! | `POST /v1/usage?selection=Latest\|SiteVersion\|Hotfix\|All` | body: a usage cab; 200 [`UploadResponse`]; 4xx [`ApiError`] |
//! | `GET /v1/packages/{guid}/manifest.json` | the exact signed manifest bytes |
//! | `GET /v1/packages/{guid}/manifest.json.minisig` | the minisign signature |
//! | `GET /v1/packages/{guid}/content/{path}` | one content file; `Range` → 206/416; `ETag: "<sha256>"` |
//!
//! With a token configured, every request but health needs `Authorization: Bearer <token>`.

use crate::version::SiteVersion;
use serde::{Deserialize, Serialize};

pub const API_PREFIX: &str = "/v1";

/// Which update packs Connect asks for (the original tool's `-download*` switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Selection {
    /// Only the newest update that applies to the site version; no hotfixes (the default).
    #[default]
    Latest,
    /// Every update and hotfix newer than the site version (`-downloadsiteversion`).
    SiteVersion,
    /// Every hotfix, whatever the version (`-downloadhotfix`).
    Hotfix,
    /// Everything published for the hierarchy (`-downloadall`).
    All,
}

impl Selection {
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Latest => "Latest",
            Selection::SiteVersion => "SiteVersion",
            Selection::Hotfix => "Hotfix",
            Selection::All => "All",
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "latest" => Ok(Selection::Latest),
            "siteversion" => Ok(Selection::SiteVersion),
            "hotfix" => Ok(Selection::Hotfix),
            "all" => Ok(Selection::All),
            _ => Err(crate::Error::invalid_argument(format!(
                "unknown selection '{s}' (expected Latest, SiteVersion, Hotfix or All)"
            ))),
        }
    }
}

/// `Update` or `Hotfix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PackType {
    Update,
    Hotfix,
}

impl PackType {
    pub fn as_str(self) -> &'static str {
        match self {
            PackType::Update => "Update",
            PackType::Hotfix => "Hotfix",
        }
    }
}

impl std::str::FromStr for PackType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "update" => Ok(PackType::Update),
            "hotfix" => Ok(PackType::Hotfix),
            _ => Err(crate::Error::invalid_argument(format!(
                "unknown pack type '{s}' (expected Update or Hotfix)"
            ))),
        }
    }
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub service: String,
    pub version: String,
    pub api_version: u32,
}

/// One pack offered to a hierarchy, in the upload answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfferedPack {
    pub id: uuid::Uuid,
    pub name: String,
    pub version: SiteVersion,
    #[serde(rename = "type")]
    pub pack_type: PackType,
    pub min_site_version: SiteVersion,
    pub max_site_version: Option<SiteVersion>,
    /// Sum of the content files' sizes.
    pub size: u64,
    pub file_count: u64,
    /// SHA-256 of the manifest bytes served at `manifest_url`.
    pub manifest_sha256: String,
    /// Paths relative to the service root, e.g. `/v1/packages/<id>/manifest.json`.
    pub manifest_url: String,
    pub signature_url: String,
    /// Prefix of content URLs; a file's URL is this plus its manifest path (percent-encoded per segment).
    pub content_url: String,
}

/// `POST /v1/usage` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub upload_id: String,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: SiteVersion,
    pub selection: Selection,
    pub packages: Vec<OfferedPack>,
}

/// Every 4xx/5xx answer's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Stable machine-readable code, e.g. `not_a_cab`, `manifest_missing`, `hash_mismatch`.
    pub code: String,
    /// One clear line for a human.
    pub message: String,
}
