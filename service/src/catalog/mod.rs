//! The service's catalog: which packs are published (and so visible) and which usage
//! cabs were received. A pack exists for clients exactly when its row exists.
//!
//! Two engines behind one trait, chosen by `--catalog URL` ([`CatalogUrl`]):
//! SQLite (`sqlite:PATH`, default `<store>/catalog.sqlite`: zero setup, one machine) and
//! PostgreSQL (`postgres://USER@HOST:PORT/DB`: shared by any number of replicas). Both
//! keep the same schema version ([`CATALOG_SCHEMA_VERSION`]); `sct-service migrate`
//! creates or upgrades it, and everything else refuses a catalog that is not at exactly
//! this version, so replicas never migrate behind each other's backs.
//!
//! The trait is synchronous: the HTTP handlers call it from `spawn_blocking`, and the
//! command line calls it directly.

pub mod postgres;
pub mod sqlite;

use crate::api::{PackType, Selection};
use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use sqlite::SqliteCatalog;

/// Schema version both engines are migrated to. History:
/// 1: `packages`, `uploads`;
/// 2: one upload per (hierarchy, SHA-256): a retried cab is recorded once.
pub const CATALOG_SCHEMA_VERSION: i64 = 2;

/// One published pack as the catalog records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogPack {
    pub id: uuid::Uuid,
    pub name: String,
    pub version: SiteVersion,
    #[serde(rename = "type")]
    pub pack_type: PackType,
    pub min_site_version: SiteVersion,
    pub max_site_version: Option<SiteVersion>,
    pub hierarchies: Vec<uuid::Uuid>,
    pub content_digest: String,
    pub manifest_sha256: String,
    pub size: u64,
    pub file_count: u64,
    pub publisher_name: String,
    /// RFC 3339 UTC.
    pub published: String,
}

impl CatalogPack {
    /// Whether the pack applies to a site at `v` (min ≤ v, and v ≤ max when a max is set).
    pub fn applies_to(&self, v: &SiteVersion) -> bool {
        v.is_within(&self.min_site_version, self.max_site_version.as_ref())
    }
    /// Whether the pack is offered to hierarchy `h` at all (untargeted, or targeted at it).
    pub fn targets(&self, h: &uuid::Uuid) -> bool {
        self.hierarchies.is_empty() || self.hierarchies.contains(h)
    }
}

/// One received usage cab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: String,
    pub diagnostics_level: String,
    pub selection: Selection,
    /// Relative to the store root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub received: String,
    pub offered: u64,
}

/// What [`Catalog::insert_upload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadInsert {
    /// The record is new.
    Inserted,
    /// The same cab (hierarchy and SHA-256) was already recorded, through this replica or
    /// another: this is that record, and nothing was written.
    Existing(UploadRecord),
}

/// A catalog engine. Implementations are shared between threads (`Arc<dyn Catalog>`),
/// so every method takes `&self`; each call is its own transaction.
pub trait Catalog: Send + Sync {
    /// The catalog, for messages (never with a password).
    fn describe(&self) -> String;
    /// A cheap query that proves the catalog answers (`GET /v1/ready`).
    fn ping(&self) -> Result<()>;
    /// Record a published pack. A duplicate (same name, version and content) or an
    /// existing GUID fails with [`ErrorKind::Conflict`].
    fn insert_pack(&self, p: &CatalogPack) -> Result<()>;
    /// The published pack with the same name, version and content, if any.
    fn find_duplicate(
        &self,
        name: &str,
        version: &SiteVersion,
        content_digest: &str,
    ) -> Result<Option<CatalogPack>>;
    fn get_pack(&self, id: &uuid::Uuid) -> Result<Option<CatalogPack>>;
    /// Every published pack, oldest first.
    fn list_packs(&self) -> Result<Vec<CatalogPack>>;
    /// The upload already recorded for this cab (hierarchy and SHA-256), if any.
    fn find_upload(&self, hierarchy_id: &uuid::Uuid, sha256: &str) -> Result<Option<UploadRecord>>;
    /// Record a received cab once: a second record of the same cab is not written, even
    /// when two replicas race (a unique constraint decides), and the first is returned.
    fn insert_upload(&self, u: &UploadRecord) -> Result<UploadInsert>;
    /// Every received usage cab, oldest first.
    fn list_uploads(&self) -> Result<Vec<UploadRecord>>;
}

/// Where the catalog lives, as given to `--catalog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUrl {
    /// `sqlite:PATH`.
    Sqlite(PathBuf),
    /// `postgres://USER@HOST:PORT/DB[?sslmode=...&sslrootcert=FILE]`.
    Postgres(postgres::PgTarget),
}

impl CatalogUrl {
    /// Parse `--catalog`. A password inside the URL is refused: it would sit on a command
    /// line (visible to every user in `ps`); it comes from `PGPASSWORD` or a password file.
    pub fn parse(text: &str) -> Result<CatalogUrl> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::invalid_argument(
                    "--catalog sqlite: needs a file path, e.g. sqlite:/srv/sct/catalog.sqlite",
                ));
            }
            return Ok(CatalogUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(CatalogUrl::Postgres(postgres::PgTarget::parse(text)?));
        }
        Err(Error::invalid_argument(format!(
            "--catalog '{}' is not a catalog URL: expected sqlite:PATH or postgres://USER@HOST:PORT/DB",
            text.chars().take(120).collect::<String>().escape_debug()
        )))
    }

    /// `--catalog` if given, else the store's own `catalog.sqlite`.
    pub fn or_store(given: Option<&str>, store: Option<&Path>) -> Result<CatalogUrl> {
        match (given, store) {
            (Some(u), _) => CatalogUrl::parse(u),
            (None, Some(root)) => Ok(CatalogUrl::Sqlite(crate::Store::at(root).catalog_path())),
            (None, None) => Err(Error::invalid_argument(
                "give --catalog URL or --store DIR (whose catalog.sqlite is the default)",
            )),
        }
    }
}

impl std::fmt::Display for CatalogUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            CatalogUrl::Postgres(t) => write!(f, "{t}"),
        }
    }
}

/// Open a catalog that `migrate` (or `keygen`, for the store's SQLite file) has brought
/// to [`CATALOG_SCHEMA_VERSION`]; anything else is refused with a clear error.
pub fn open(url: &CatalogUrl) -> Result<Box<dyn Catalog>> {
    Ok(match url {
        CatalogUrl::Sqlite(p) => Box::new(SqliteCatalog::open(p)?),
        CatalogUrl::Postgres(t) => Box::new(postgres::PgCatalog::open(t)?),
    })
}

/// Create the schema or upgrade it to [`CATALOG_SCHEMA_VERSION`]; safe to run from
/// several machines at once (the engine serialises it). Returns (before, after).
pub fn migrate(url: &CatalogUrl) -> Result<(i64, i64)> {
    match url {
        CatalogUrl::Sqlite(p) => sqlite::migrate(p),
        CatalogUrl::Postgres(t) => postgres::migrate(t),
    }
}

/// Normalised text of a version's numeric parts (for duplicate detection).
pub fn version_key(v: &SiteVersion) -> String {
    let p = v.parts();
    format!("{}.{}.{}.{}", p[0], p[1], p[2], p[3])
}

/// The message for a publish of content that is already published.
pub fn duplicate_error(existing: &CatalogPack) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "this content is already published as '{}' {} (package {}, published {}); nothing was changed",
            existing.name, existing.version, existing.id, existing.published
        ),
    )
}

/// The refusal of a catalog at another schema version than this program's.
pub(crate) fn version_error(what: &str, found: i64) -> Error {
    if found > CATALOG_SCHEMA_VERSION {
        Error::new(
            ErrorKind::SchemaTooNew,
            format!(
                "{what} was written by a newer sct-service (catalog schema {found}, this one knows {CATALOG_SCHEMA_VERSION})"
            ),
        )
    } else if found == 0 {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "{what} has no catalog schema yet: run `sct-service migrate --catalog URL` first"
            ),
        )
    } else {
        Error::new(
            ErrorKind::SchemaTooNew,
            format!(
                "{what} is at catalog schema {found}, this sct-service needs {CATALOG_SCHEMA_VERSION}: run `sct-service migrate --catalog URL` first"
            ),
        )
    }
}

pub(crate) fn corrupt(what: &str) -> Error {
    Error::new(
        ErrorKind::Database,
        format!("service catalog: {what} holds a malformed value"),
    )
}

/// A pack row's text columns, shared by both engines' readers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_from_columns(
    id: String,
    name: String,
    version: String,
    ty: String,
    min: String,
    max: Option<String>,
    hier: String,
    content_digest: String,
    manifest_sha256: String,
    size: i64,
    file_count: i64,
    publisher_name: String,
    published: String,
) -> Result<CatalogPack> {
    Ok(CatalogPack {
        id: id.parse().map_err(|_| corrupt("packages.id"))?,
        name,
        version: version.parse().map_err(|_| corrupt("packages.version"))?,
        pack_type: ty.parse().map_err(|_| corrupt("packages.type"))?,
        min_site_version: min
            .parse()
            .map_err(|_| corrupt("packages.min_site_version"))?,
        max_site_version: max
            .map(|m| m.parse())
            .transpose()
            .map_err(|_| corrupt("packages.max_site_version"))?,
        hierarchies: serde_json::from_str(&hier).map_err(|_| corrupt("packages.hierarchies"))?,
        content_digest,
        manifest_sha256,
        size: size as u64,
        file_count: file_count as u64,
        publisher_name,
        published,
    })
}

/// An upload row's columns, shared by both engines' readers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn upload_from_columns(
    id: String,
    h: String,
    sv: String,
    lvl: String,
    sel: String,
    path: String,
    size: i64,
    sha: String,
    rec: String,
    off: i64,
) -> Result<UploadRecord> {
    Ok(UploadRecord {
        id,
        hierarchy_id: h.parse().map_err(|_| corrupt("uploads.hierarchy_id"))?,
        site_version: sv,
        diagnostics_level: lvl,
        selection: sel.parse().map_err(|_| corrupt("uploads.selection"))?,
        path,
        size: size as u64,
        sha256: sha,
        received: rec,
        offered: off as u64,
    })
}

/// The column lists both engines select, in the order of the `*_from_columns` helpers.
pub(crate) const PACK_COLUMNS: &str =
    "id, name, version, type, min_site_version, max_site_version, hierarchies,
    content_digest, manifest_sha256, size, file_count, publisher_name, published";
pub(crate) const UPLOAD_COLUMNS: &str =
    "id, hierarchy_id, site_version, diagnostics_level, selection, path, size, sha256, received, offered";
