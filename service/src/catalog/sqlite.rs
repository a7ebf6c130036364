//! The SQLite catalog (`sqlite:PATH`, default `<store>/catalog.sqlite`): one file in WAL
//! mode, marked with its own `application_id` and versioned with `user_version`.

use super::{
    corrupt, duplicate_error, pack_from_columns, upload_from_columns, version_error, version_key,
    Catalog, CatalogPack, UploadInsert, UploadRecord, CATALOG_SCHEMA_VERSION, PACK_COLUMNS,
    UPLOAD_COLUMNS,
};
use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// `PRAGMA application_id` of a service catalog ("SCTC"), so a site database or a stray
/// SQLite file is never mistaken for one.
pub const CATALOG_APPLICATION_ID: i64 = 0x5343_5443;

/// Schema version 1, as the first sct-service created it.
const SCHEMA_V1: &str = "
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

/// 1 -> 2: one upload per (hierarchy, SHA-256). Catalogs of version 1 may hold the same
/// cab twice (a retried upload); the later rows are folded into the first (their cab
/// files, byte-identical by SHA-256, stay where they are).
const MIGRATE_V2: &str = "
DELETE FROM uploads WHERE rowid NOT IN
    (SELECT min(rowid) FROM uploads GROUP BY hierarchy_id, sha256);
CREATE UNIQUE INDEX uploads_once ON uploads (hierarchy_id, sha256);
";

/// An open SQLite catalog. One connection, shared under a lock: SQLite has one writer
/// at a time anyway, and the service's reads are small.
pub struct SqliteCatalog {
    path: PathBuf,
    conn: Mutex<Connection>,
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

/// Open `path` as a connection with the catalog's settings.
fn connect(path: &Path, what: &str) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| db_err(what, e))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| db_err("configuring", e))?;
    Ok(conn)
}

/// The catalog's `user_version`, refusing a file that is not an sct-service catalog.
/// 0 for an empty database (nothing created yet).
fn schema_version(conn: &Connection, path: &Path) -> Result<i64> {
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| db_err("opening", e))?;
    let ver: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| db_err("opening", e))?;
    if app == 0 && ver == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| db_err("opening", e))?;
        if tables == 0 {
            return Ok(0);
        }
    }
    if app != CATALOG_APPLICATION_ID {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{} is not an sct-service catalog", path.display()),
        ));
    }
    Ok(ver)
}

/// Create the catalog at `path` or upgrade it to [`CATALOG_SCHEMA_VERSION`], in one
/// immediate transaction (so two `migrate` runs at once serialise). Returns (before, after).
pub fn migrate(path: &Path) -> Result<(i64, i64)> {
    let mut conn = connect(path, "creating")?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| db_err("configuring", e))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| db_err("migrating", e))?;
    let before = schema_version(&tx, path)?;
    if before > CATALOG_SCHEMA_VERSION {
        return Err(version_error(&path.display().to_string(), before));
    }
    if before < 1 {
        tx.execute_batch(SCHEMA_V1)
            .map_err(|e| db_err("creating the schema", e))?;
        tx.pragma_update(None, "application_id", CATALOG_APPLICATION_ID)
            .map_err(|e| db_err("creating", e))?;
    }
    if before < 2 {
        tx.execute_batch(MIGRATE_V2)
            .map_err(|e| db_err("migrating to schema 2", e))?;
    }
    tx.pragma_update(None, "user_version", CATALOG_SCHEMA_VERSION)
        .map_err(|e| db_err("migrating", e))?;
    tx.commit().map_err(|e| db_err("migrating", e))?;
    Ok((before, CATALOG_SCHEMA_VERSION))
}

impl SqliteCatalog {
    /// Create a new, empty catalog at `path` (refused if the file exists).
    pub fn create(path: &Path) -> Result<SqliteCatalog> {
        if path.exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        migrate(path)?;
        Self::open(path)
    }

    /// Open an existing catalog, refusing anything that is not one of ours at this
    /// program's schema version.
    pub fn open(path: &Path) -> Result<SqliteCatalog> {
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("service catalog {} does not exist", path.display()),
            ));
        }
        let conn = connect(path, "opening")?;
        let ver = schema_version(&conn, path)?;
        if ver != CATALOG_SCHEMA_VERSION {
            return Err(version_error(&path.display().to_string(), ver));
        }
        Ok(SqliteCatalog {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Catalog for SqliteCatalog {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn ping(&self) -> Result<()> {
        self.conn()
            .query_row("SELECT count(*) FROM packages", [], |r| r.get::<_, i64>(0))
            .map_err(|e| db_err("reading", e))?;
        Ok(())
    }

    fn insert_pack(&self, p: &CatalogPack) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
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

    fn find_duplicate(
        &self,
        name: &str,
        version: &SiteVersion,
        content_digest: &str,
    ) -> Result<Option<CatalogPack>> {
        find_duplicate(&self.conn(), name, version, content_digest)
    }

    fn get_pack(&self, id: &uuid::Uuid) -> Result<Option<CatalogPack>> {
        self.conn()
            .query_row(
                &format!("SELECT {PACK_COLUMNS} FROM packages WHERE id = ?1"),
                params![id.to_string()],
                row_to_pack,
            )
            .optional()
            .map_err(|e| db_err("reading", e))?
            .transpose()
    }

    fn list_packs(&self) -> Result<Vec<CatalogPack>> {
        query_all(
            &self.conn(),
            &format!("SELECT {PACK_COLUMNS} FROM packages ORDER BY published, rowid"),
            row_to_pack,
        )
    }

    fn find_upload(&self, hierarchy_id: &uuid::Uuid, sha256: &str) -> Result<Option<UploadRecord>> {
        find_upload(&self.conn(), hierarchy_id, sha256)
    }

    fn insert_upload(&self, u: &UploadRecord) -> Result<UploadInsert> {
        let conn = self.conn();
        let n = conn
            .execute(
                "INSERT INTO uploads (id, hierarchy_id, site_version, diagnostics_level, selection,
                    path, size, sha256, received, offered)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (hierarchy_id, sha256) DO NOTHING",
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
        if n == 1 {
            return Ok(UploadInsert::Inserted);
        }
        find_upload(&conn, &u.hierarchy_id, &u.sha256)?
            .map(UploadInsert::Existing)
            .ok_or_else(|| corrupt("uploads (a conflicting row vanished)"))
    }

    fn list_uploads(&self) -> Result<Vec<UploadRecord>> {
        query_all(
            &self.conn(),
            &format!("SELECT {UPLOAD_COLUMNS} FROM uploads ORDER BY received, rowid"),
            row_to_upload,
        )
    }
}

/// Every row of a parameterless query, each converted by `row` (which can refuse a row
/// whose stored values do not parse).
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T>>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(sql).map_err(|e| db_err("reading", e))?;
    let rows = stmt.query_map([], row).map_err(|e| db_err("reading", e))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(|e| db_err("reading", e))??);
    }
    Ok(out)
}

fn row_to_pack(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<CatalogPack>> {
    Ok(pack_from_columns(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

fn row_to_upload(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<UploadRecord>> {
    Ok(upload_from_columns(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
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

fn find_upload(
    conn: &Connection,
    hierarchy_id: &uuid::Uuid,
    sha256: &str,
) -> Result<Option<UploadRecord>> {
    conn.query_row(
        &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE hierarchy_id = ?1 AND sha256 = ?2"),
        params![hierarchy_id.to_string(), sha256],
        row_to_upload,
    )
    .optional()
    .map_err(|e| db_err("reading", e))?
    .transpose()
}
