//! The service's SQLite catalog: which packs are published (and so visible) and which
//! usage cabs were received. A pack exists for clients exactly when its row exists.

use crate::api::{PackType, Selection};
use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// `PRAGMA application_id` of a service catalog ("SCTC"), so a site database or a stray
/// SQLite file is never mistaken for one.
pub const CATALOG_APPLICATION_ID: i64 = 0x5343_5443;
pub const CATALOG_SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE packages (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    -- the version with numeric parts normalised (5.00.9128.1000 -> 5.0.9128.1000), for duplicates
    version_key      TEXT NOT NULL,
    type             TEXT NOT NULL CHECK (type IN ('Update', 'Hotfix')),
    min_site_version TEXT NOT NULL,
    max_site_version TEXT,
    -- JSON array of hierarchy GUIDs; empty = offered to every hierarchy
    hierarchies      TEXT NOT NULL,
    -- SHA-256 over the sorted (path, size, sha256) list: same content = same digest
    content_digest   TEXT NOT NULL,
    manifest_sha256  TEXT NOT NULL,
    size             INTEGER NOT NULL,
    file_count       INTEGER NOT NULL,
    publisher_name   TEXT NOT NULL,
    published        TEXT NOT NULL,
    UNIQUE (name, version_key, content_digest)
);
CREATE TABLE uploads (
    id                TEXT PRIMARY KEY,
    hierarchy_id      TEXT NOT NULL,
    site_version      TEXT NOT NULL,
    diagnostics_level TEXT NOT NULL,
    selection         TEXT NOT NULL,
    -- relative to the store root
    path              TEXT NOT NULL,
    size              INTEGER NOT NULL,
    sha256            TEXT NOT NULL,
    received          TEXT NOT NULL,
    offered           INTEGER NOT NULL
);
CREATE INDEX uploads_by_hierarchy ON uploads (hierarchy_id, received);
";

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

/// Normalised text of a version's numeric parts (for duplicate detection).
pub fn version_key(v: &SiteVersion) -> String {
    let p = v.parts();
    format!("{}.{}.{}.{}", p[0], p[1], p[2], p[3])
}

/// An open catalog.
pub struct Catalog {
    conn: Connection,
}

fn db_err(what: &str, e: rusqlite::Error) -> Error {
    let e = Error::from(e);
    Error::new(
        e.kind(),
        format!(
            "service catalog: {what}: {}",
            e.message().trim_start_matches("site database: ")
        ),
    )
}

impl Catalog {
    /// Create a new, empty catalog at `path` (refused if the file exists).
    pub fn create(path: &Path) -> Result<Catalog> {
        if path.exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        let mut conn = Connection::open(path).map_err(|e| db_err("creating", e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| db_err("configuring", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db_err("configuring", e))?;
        let tx = conn.transaction().map_err(|e| db_err("creating", e))?;
        tx.execute_batch(SCHEMA)
            .map_err(|e| db_err("creating the schema", e))?;
        tx.pragma_update(None, "application_id", CATALOG_APPLICATION_ID)
            .map_err(|e| db_err("creating", e))?;
        tx.pragma_update(None, "user_version", CATALOG_SCHEMA_VERSION)
            .map_err(|e| db_err("creating", e))?;
        tx.commit().map_err(|e| db_err("creating", e))?;
        Ok(Catalog { conn })
    }

    /// Open an existing catalog, refusing anything that is not one of ours.
    pub fn open(path: &Path) -> Result<Catalog> {
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("service catalog {} does not exist", path.display()),
            ));
        }
        let conn = Connection::open(path).map_err(|e| db_err("opening", e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| db_err("configuring", e))?;
        let app: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| db_err("opening", e))?;
        let ver: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| db_err("opening", e))?;
        if app != CATALOG_APPLICATION_ID {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{} is not an sct-service catalog", path.display()),
            ));
        }
        if ver > CATALOG_SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::SchemaTooNew,
                format!(
                    "{} was written by a newer sct-service (catalog schema {ver}, this one knows {CATALOG_SCHEMA_VERSION})",
                    path.display()
                ),
            ));
        }
        Ok(Catalog { conn })
    }

    /// Record a published pack (one transaction). A duplicate (same name, version and
    /// content) or an existing GUID fails with [`ErrorKind::Conflict`].
    pub fn insert_pack(&mut self, p: &CatalogPack) -> Result<()> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_err("recording the pack", e))?;
        if let Some(existing) = find_duplicate(&tx, &p.name, &p.version, &p.content_digest)? {
            return Err(duplicate_error(&existing));
        }
        tx.execute(
            "INSERT INTO packages (id, name, version, version_key, type, min_site_version,
                max_site_version, hierarchies, content_digest, manifest_sha256, size, file_count,
                publisher_name, published)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                p.id.to_string(),
                p.name,
                p.version.as_str(),
                version_key(&p.version),
                p.pack_type.as_str(),
                p.min_site_version.as_str(),
                p.max_site_version.as_ref().map(|v| v.as_str().to_string()),
                serde_json::to_string(&p.hierarchies).expect("uuids serialize"),
                p.content_digest,
                p.manifest_sha256,
                p.size as i64,
                p.file_count as i64,
                p.publisher_name,
                p.published,
            ],
        )
        .map_err(|e| {
            if let rusqlite::Error::SqliteFailure(f, _) = &e {
                if f.code == rusqlite::ErrorCode::ConstraintViolation {
                    return Error::new(
                        ErrorKind::Conflict,
                        format!("a pack with id {} or the same name, version and content is already published", p.id),
                    );
                }
            }
            db_err("recording the pack", e)
        })?;
        tx.commit().map_err(|e| db_err("recording the pack", e))?;
        Ok(())
    }

    /// The published pack with the same name, version and content, if any.
    pub fn find_duplicate(
        &self,
        name: &str,
        version: &SiteVersion,
        content_digest: &str,
    ) -> Result<Option<CatalogPack>> {
        find_duplicate(&self.conn, name, version, content_digest)
    }

    pub fn get_pack(&self, id: &uuid::Uuid) -> Result<Option<CatalogPack>> {
        self.conn
            .query_row(
                &format!("SELECT {PACK_COLUMNS} FROM packages WHERE id = ?1"),
                params![id.to_string()],
                row_to_pack,
            )
            .optional()
            .map_err(|e| db_err("reading", e))?
            .transpose()
    }

    /// Every published pack, oldest first.
    pub fn list_packs(&self) -> Result<Vec<CatalogPack>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {PACK_COLUMNS} FROM packages ORDER BY published, rowid"
            ))
            .map_err(|e| db_err("reading", e))?;
        let rows = stmt
            .query_map([], row_to_pack)
            .map_err(|e| db_err("reading", e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(|e| db_err("reading", e))??);
        }
        Ok(out)
    }

    pub fn insert_upload(&self, u: &UploadRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO uploads (id, hierarchy_id, site_version, diagnostics_level, selection,
                    path, size, sha256, received, offered)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    u.id,
                    u.hierarchy_id.to_string(),
                    u.site_version,
                    u.diagnostics_level,
                    u.selection.as_str(),
                    u.path,
                    u.size as i64,
                    u.sha256,
                    u.received,
                    u.offered as i64,
                ],
            )
            .map_err(|e| db_err("recording the upload", e))?;
        Ok(())
    }

    /// Every received usage cab, oldest first.
    pub fn list_uploads(&self) -> Result<Vec<UploadRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, hierarchy_id, site_version, diagnostics_level, selection, path, size,
                    sha256, received, offered FROM uploads ORDER BY received, rowid",
            )
            .map_err(|e| db_err("reading", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .map_err(|e| db_err("reading", e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, h, sv, lvl, sel, path, size, sha, rec, off) =
                r.map_err(|e| db_err("reading", e))?;
            out.push(UploadRecord {
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
            });
        }
        Ok(out)
    }
}

const PACK_COLUMNS: &str =
    "id, name, version, type, min_site_version, max_site_version, hierarchies,
    content_digest, manifest_sha256, size, file_count, publisher_name, published";

fn corrupt(what: &str) -> Error {
    Error::new(
        ErrorKind::Database,
        format!("service catalog: {what} holds a malformed value"),
    )
}

fn row_to_pack(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<CatalogPack>> {
    let id: String = r.get(0)?;
    let name: String = r.get(1)?;
    let version: String = r.get(2)?;
    let ty: String = r.get(3)?;
    let min: String = r.get(4)?;
    let max: Option<String> = r.get(5)?;
    let hier: String = r.get(6)?;
    let content_digest: String = r.get(7)?;
    let manifest_sha256: String = r.get(8)?;
    let size: i64 = r.get(9)?;
    let file_count: i64 = r.get(10)?;
    let publisher_name: String = r.get(11)?;
    let published: String = r.get(12)?;
    Ok((|| {
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
            hierarchies: serde_json::from_str(&hier)
                .map_err(|_| corrupt("packages.hierarchies"))?,
            content_digest,
            manifest_sha256,
            size: size as u64,
            file_count: file_count as u64,
            publisher_name,
            published,
        })
    })())
}

fn find_duplicate(
    conn: &Connection,
    name: &str,
    version: &SiteVersion,
    content_digest: &str,
) -> Result<Option<CatalogPack>> {
    conn.query_row(
        &format!(
            "SELECT {PACK_COLUMNS} FROM packages
             WHERE name = ?1 AND version_key = ?2 AND content_digest = ?3"
        ),
        params![name, version_key(version), content_digest],
        row_to_pack,
    )
    .optional()
    .map_err(|e| db_err("reading", e))?
    .transpose()
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
