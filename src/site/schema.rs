//! Schema creation and forward migrations. Each migration runs in one transaction and
//! bumps `user_version`; a crash mid-migration leaves the previous version intact.

use crate::error::Result;
use rusqlite::Connection;

/// `PRAGMA application_id` of a site database: "SCT1".
pub const APPLICATION_ID: i64 = 0x5343_5431;
/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 2;

/// Version 1 of the schema.
const V1: &str = r#"
CREATE TABLE site (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    hierarchy_id      TEXT NOT NULL,
    site_code         TEXT NOT NULL,
    site_name         TEXT NOT NULL,
    site_version      TEXT NOT NULL,
    diagnostics_level TEXT NOT NULL CHECK (diagnostics_level IN ('Basic', 'Enhanced', 'Full')),
    scp_mode          TEXT NOT NULL CHECK (scp_mode IN ('Offline', 'Online')),
    created_utc       TEXT NOT NULL
);

-- The role of TEL_TelemetryResults: one collected usage value per row, tagged with the
-- lowest diagnostics level that includes it (1 Basic, 2 Enhanced, 3 Full).
-- site_code, site_name and server_name are identifying: they leave the site only hashed.
CREATE TABLE usage_data (
    id            INTEGER PRIMARY KEY,
    level         INTEGER NOT NULL CHECK (level IN (1, 2, 3)),
    category      TEXT NOT NULL,
    metric        TEXT NOT NULL,
    instance      TEXT NOT NULL DEFAULT '',
    value         TEXT NOT NULL,
    site_code     TEXT NOT NULL DEFAULT '',
    site_name     TEXT NOT NULL DEFAULT '',
    server_name   TEXT NOT NULL DEFAULT '',
    collected_utc TEXT NOT NULL
);

-- Publisher keys whose signatures this site accepts on update packs (minisign format).
CREATE TABLE trusted_publishers (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    comment    TEXT NOT NULL DEFAULT '',
    added_utc  TEXT NOT NULL
);

-- The role of CM_UpdatePackages: the site's Updates and Servicing list.
CREATE TABLE update_packages (
    package_guid     TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    full_version     TEXT NOT NULL,
    update_type      TEXT NOT NULL CHECK (update_type IN ('Update', 'Hotfix')),
    min_site_version TEXT NOT NULL,
    max_site_version TEXT,
    state            TEXT NOT NULL,
    state_code       INTEGER NOT NULL,
    size             INTEGER NOT NULL,
    file_count       INTEGER NOT NULL,
    manifest_sha256  TEXT NOT NULL,
    publisher_key_id TEXT,
    content_path     TEXT,
    source_path      TEXT,
    imported_utc     TEXT
);

CREATE TABLE update_package_files (
    package_guid TEXT NOT NULL REFERENCES update_packages (package_guid) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    PRIMARY KEY (package_guid, path)
);
"#;

/// Version 1 → 2: console content (SPEC section 10). One `console_content` row per
/// version ever imported (the highest is current; the history is what refuses a
/// rollback); the servicing rows and messages of the current version only, messages
/// already filtered to this hierarchy.
const V2_CONSOLE_CONTENT: &str = r#"
CREATE TABLE console_content (
    content_version  INTEGER PRIMARY KEY CHECK (content_version > 0),
    published        TEXT NOT NULL,
    document_sha256  TEXT NOT NULL,
    publisher_key_id TEXT,
    source_path      TEXT,
    imported_utc     TEXT NOT NULL,
    -- messages in the signed document, before those for other hierarchies were dropped
    messages_total   INTEGER NOT NULL
);

CREATE TABLE console_servicing (
    content_version  INTEGER NOT NULL REFERENCES console_content (content_version) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    product          TEXT NOT NULL,
    version          TEXT,
    build            TEXT,
    channel          TEXT NOT NULL,
    release_date     TEXT NOT NULL,
    end_of_servicing TEXT NOT NULL,
    PRIMARY KEY (content_version, position)
);

CREATE TABLE console_messages (
    content_version  INTEGER NOT NULL REFERENCES console_content (content_version) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    id               TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('Info', 'Warning', 'Critical')),
    title            TEXT NOT NULL,
    body             TEXT NOT NULL,
    link             TEXT,
    published        TEXT NOT NULL,
    expires          TEXT,
    -- JSON array of hierarchy GUIDs; empty = every hierarchy
    hierarchies      TEXT NOT NULL,
    PRIMARY KEY (content_version, position)
);
"#;

/// Migrations from version N to N+1, indexed by N-1. A migration only adds tables, so a
/// read-only opener of an older version (which cannot migrate) reads the missing ones as
/// empty; a step that changes existing tables must revisit `Site::open_read_only`. Append here (never edit a released
/// step) when the schema grows.
const MIGRATIONS: &[&str] = &[V2_CONSOLE_CONTENT];

/// Create a fresh schema at the current version.
pub(crate) fn create(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(V1)?;
    for m in MIGRATIONS {
        tx.execute_batch(m)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Bring a schema at `from` up to [`SCHEMA_VERSION`], one transaction per step.
pub(crate) fn migrate(conn: &Connection, from: u32) -> Result<()> {
    for v in from..SCHEMA_VERSION {
        let tx = conn.unchecked_transaction()?;
        // Re-check inside the write lock: another process may have migrated meanwhile.
        let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > v {
            continue;
        }
        if v == 0 {
            tx.execute_batch(V1)?;
        } else {
            tx.execute_batch(MIGRATIONS[(v - 1) as usize])?;
        }
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
    }
    Ok(())
}
