//! The update service's HTTP API (version 1): the JSON shapes shared by the reference
//! server (`service`, the `sct-service` binary) and the client (`connect`). This module
//! documentation is the wire contract; README.md summarises it.
//!
//! # Routes
//!
//! | method & path | answer |
//! |---|---|
//! | `GET /v1/health` | 200 [`Health`] — no token needed |
//! | `GET /v1/version` | 200 [`Health`] (same body) — no token needed |
//! | `POST /v1/usage?selection=Latest\|SiteVersion\|Hotfix\|All` | body: a usage cab (any `Content-Type`, e.g. `application/vnd.ms-cab-compressed`); 200 [`UploadResponse`] |
//! | `GET`/`HEAD /v1/packages/{guid}/manifest.json` | the exact signed manifest bytes ([`crate::pack::PackManifest`]), `application/json` |
//! | `GET`/`HEAD /v1/packages/{guid}/manifest.json.minisig` | the minisign signature of those bytes, `text/plain` |
//! | `GET`/`HEAD /v1/packages/{guid}/content/{path}` | one content file listed in the manifest, `application/octet-stream` |
//! | `GET`/`HEAD /v1/console-content` | the newest console content, the exact signed bytes ([`crate::console::ConsoleContent`]), `application/json`; 404 `not_found` when none is published |
//! | `GET`/`HEAD /v1/console-content.json.minisig` | its minisign signature (trusted comment `console-content version:N sha256:H`), `text/plain`; 404 when none is published |
//!
//! `{guid}` is the canonical hyphenated package GUID. `{path}` is the file's manifest path
//! (`/`-separated, relative to `content/`), each segment percent-encoded; it is decoded,
//! then refused unless it is a safe relative path ([`crate::fsutil::safe_relative_path`]:
//! no `..`, `.`, empty, absolute, backslash or control-character components) and listed
//! in the signed manifest. Nothing else under the store is reachable.
//!
//! # Uploading usage data
//!
//! The body is streamed to disk (never held in memory) up to the service's limit
//! (`--max-upload-bytes`, default 256 MiB), validated like Prepare's output must be
//! ([`crate::usage::read_usage_cab`]), stored and recorded. The hierarchy and site version
//! are read from the cab's `manifest.json`; the answer lists the packs for that hierarchy:
//! a pack is a candidate when its `hierarchies` list is empty or contains the hierarchy,
//! applicable when `min_site_version ≤ site ≤ max_site_version` (no max: unbounded), and
//! versions compare as four-part numbers ([`SiteVersion`]).
//!
//! | `selection` (case-insensitive; default `Latest`) | packs offered |
//! |---|---|
//! | `Latest` | the single newest `Update` that is applicable and newer than the site; no hotfixes; none when the site is current |
//! | `SiteVersion` | every `Update` and `Hotfix` newer than the site, including later steps of an upgrade chain that do not apply yet |
//! | `Hotfix` | every `Hotfix`, whatever its version or applicability |
//! | `All` | every candidate |
//!
//! Packages are listed by ascending version (the order an upgrade chain installs in).
//!
//! # Downloads
//!
//! Every download answer carries a strong `ETag: "<sha256 of the bytes>"` (for content
//! files, the SHA-256 the manifest lists), `Accept-Ranges: bytes`, `Content-Length` and
//! `Cache-Control: no-cache`. Files are streamed from disk.
//!
//! - `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` (one range) → **206** with
//!   `Content-Range: bytes a-b/len`. A range starting at or past the end (or any range of
//!   an empty file) → **416** with `Content-Range: bytes */len`. Several ranges or a
//!   malformed `Range` are ignored (200, whole file).
//! - `If-Range: "<etag>"`: the range is honoured only when it matches the current ETag;
//!   otherwise (or with a date) the answer is 200 with the whole file, so a client resumes
//!   only a copy of the same bytes.
//! - `If-None-Match` matching the ETag → **304**.
//! - `HEAD` → the same status and headers, no body.
//!
//! # Authentication
//!
//! With `--token-file`, every request but `health` and `version` needs
//! `Authorization: Bearer <token>` (compared in constant time); without it, or with a wrong
//! one, the answer is **401** `unauthorized` with `WWW-Authenticate: Bearer`. The check runs
//! before an upload body is read.
//!
//! # Errors
//!
//! Every 4xx/5xx answer has the [`ApiError`] JSON body `{"error": {"code", "message"}}`;
//! the code is stable, the message is one line for a human.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `unknown_selection` | `selection` is not one of the four (checked before the body is read) |
//! | 400 | `bad_request` | malformed query string, or the upload body broke off |
//! | 400 | `bad_path` | the content path is unsafe (`..`, `%2e%2e`, absolute, backslash, `.`, empty segment) |
//! | 400 | `invalid_package_id` | the `{guid}` segment is not a package GUID |
//! | 401 | `unauthorized` | token missing or wrong |
//! | 404 | `not_found` | unknown route, unknown package, a file the manifest does not list, or no console content published |
//! | 405 | `method_not_allowed` | e.g. `GET /v1/usage` |
//! | 413 | `payload_too_large` | the upload exceeds the limit (by `Content-Length` up front, or while streaming) |
//! | 416 | `range_not_satisfiable` | see Downloads; with `Content-Range: bytes */len` |
//! | 422 | `not_a_cab` | the upload is empty or not a cabinet file |
//! | 422 | `manifest_missing` | a cabinet without `manifest.json` |
//! | 422 | `manifest_invalid` | `manifest.json` is not a valid usage manifest (JSON, format version, names, hashes) |
//! | 422 | `hash_mismatch` | a data file the manifest lists is missing, or its size/SHA-256 differ |
//! | 422 | `cab_corrupt` | the cabinet's data cannot be read (truncated, bad compression) |
//! | 500 | `internal` | the service failed (details in its log, never in the answer) |

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
