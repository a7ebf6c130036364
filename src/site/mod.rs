//! The site database: one SQLite file holding a site's identity, its usage data
//! (the role of `TEL_TelemetryResults`), the publisher keys it trusts, and its Updates
//! and Servicing list (the role of `CM_UpdatePackages`).
//!
//! The schema is versioned with `PRAGMA user_version` and marked as ours with
//! `PRAGMA application_id`; older schemas are migrated forward in place, newer ones
//! are refused without touching the file. Writers wait for each other through SQLite's
//! busy timeout (WAL journal), so concurrent runs are serialised, never corrupting.

pub mod console;
pub mod library;
pub mod reentry;
pub mod sample;
mod schema;
pub mod trust;
pub mod updates;

use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use updates::UpdateState;

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// How long a writer waits for another process holding the site database.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The site's diagnostics level. Levels nest: Basic ⊂ Enhanced ⊂ Full.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum DiagnosticsLevel {
    Basic = 1,
    #[default]
    Enhanced = 2,
    Full = 3,
}

impl DiagnosticsLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticsLevel::Basic => "Basic",
            DiagnosticsLevel::Enhanced => "Enhanced",
            DiagnosticsLevel::Full => "Full",
        }
    }
    /// The number stored in `usage_data.level`.
    pub fn as_i64(self) -> i64 {
        self as i64
    }
    pub fn from_i64(n: i64) -> Option<Self> {
        match n {
            1 => Some(DiagnosticsLevel::Basic),
            2 => Some(DiagnosticsLevel::Enhanced),
            3 => Some(DiagnosticsLevel::Full),
            _ => None,
        }
    }
}

impl std::str::FromStr for DiagnosticsLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "basic" => Ok(DiagnosticsLevel::Basic),
            "enhanced" => Ok(DiagnosticsLevel::Enhanced),
            "full" => Ok(DiagnosticsLevel::Full),
            _ => Err(Error::invalid_argument(format!(
                "unknown diagnostics level '{s}' (expected Basic, Enhanced or Full)"
            ))),
        }
    }
}

impl std::fmt::Display for DiagnosticsLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Service connection point mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ScpMode {
    #[default]
    Offline,
    Online,
}

impl ScpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScpMode::Offline => "Offline",
            ScpMode::Online => "Online",
        }
    }
}

impl std::str::FromStr for ScpMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "offline" => Ok(ScpMode::Offline),
            "online" => Ok(ScpMode::Online),
            _ => Err(Error::invalid_argument(format!(
                "unknown SCP mode '{s}' (expected Offline or Online)"
            ))),
        }
    }
}

/// What it takes to create a site.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    pub site_code: String,
    pub site_version: SiteVersion,
    #[serde(default)]
    pub diagnostics_level: DiagnosticsLevel,
    /// A fresh GUID when absent.
    #[serde(default)]
    pub hierarchy_id: Option<uuid::Uuid>,
    /// Defaults to "Site <code>".
    #[serde(default)]
    pub site_name: Option<String>,
    #[serde(default)]
    pub scp_mode: ScpMode,
}

/// A site's identity as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SiteInfo {
    pub path: PathBuf,
    pub hierarchy_id: uuid::Uuid,
    pub site_code: String,
    pub site_name: String,
    pub site_version: SiteVersion,
    pub diagnostics_level: DiagnosticsLevel,
    pub scp_mode: ScpMode,
    pub created: String,
    pub schema_version: u32,
    /// Usage rows at each level (Basic, Enhanced, Full), whatever the site's level.
    pub usage_rows: [u64; 3],
}

/// Validate a site code: exactly three ASCII letters or digits, stored upper case.
pub fn validate_site_code(code: &str) -> Result<String> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(Error::invalid_argument(format!(
            "site code '{code}' is not valid: it must be exactly 3 letters or digits, like PS1"
        )))
    }
}

/// An open site database.
pub struct Site {
    conn: Connection,
    path: PathBuf,
}

impl Site {
    /// Create a new site database at `path`. The file is built under a temporary name
    /// and moved into place, so a failure leaves nothing; an existing file is refused.
    pub fn create(path: &Path, new: &NewSite) -> Result<Site> {
        let code = validate_site_code(&new.site_code)?;
        let hierarchy_id = new.hierarchy_id.unwrap_or_else(uuid::Uuid::new_v4);
        let site_name = new
            .site_name
            .clone()
            .unwrap_or_else(|| format!("Site {code}"));
        let tmp = crate::fsutil::AtomicFile::create(path, false)?;
        library::check_free_for_new_site(path)?;
        {
            let conn = Connection::open(tmp_path(&tmp))?;
            schema::create(&conn)?;
            conn.execute(
                "INSERT INTO site (id, hierarchy_id, site_code, site_name, site_version, diagnostics_level, scp_mode, created_utc)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    hierarchy_id.to_string(),
                    code,
                    site_name,
                    new.site_version.as_str(),
                    new.diagnostics_level.as_str(),
                    new.scp_mode.as_str(),
                    now_rfc3339(),
                ],
            )?;
            // Fold the WAL back so the single file is complete before it is moved.
            conn.pragma_update(None, "journal_mode", "DELETE")?;
        }
        tmp.commit()?;
        Site::open(path)
    }

    /// Open an existing site database for reading and writing, migrating an older schema.
    pub fn open(path: &Path) -> Result<Site> {
        Self::open_with(path, false)
    }

    /// Open an existing site database without ever writing to it.
    pub fn open_read_only(path: &Path) -> Result<Site> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, read_only: bool) -> Result<Site> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("site database {shown} does not exist"),
                ))
            }
            Err(e) => return Err(Error::io(format!("site database {shown}"), &e)),
            Ok(m) if m.is_dir() => {
                return Err(Error::new(
                    ErrorKind::NotASiteDatabase,
                    format!("{shown} is a folder, not a site database"),
                ))
            }
            Ok(_) => {}
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| Error::from(e).context(&shown))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Identify before changing anything: a foreign or newer file is left untouched.
        let app_id: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| {
                if let Some(err) = open_io_failure(&conn, &e, &shown.to_string()) {
                    return err;
                }
                match Error::from(e) {
                    err if err.kind() == ErrorKind::NotASiteDatabase => Error::new(
                        ErrorKind::NotASiteDatabase,
                        format!(
                            "{shown} is not a ServiceConnection site database (not a SQLite file)"
                        ),
                    ),
                    err => err.context(&shown),
                }
            })?;
        if app_id != APPLICATION_ID {
            return Err(Error::new(
                ErrorKind::NotASiteDatabase,
                format!("{shown} is not a ServiceConnection site database"),
            ));
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION as i64 {
            return Err(Error::new(
                ErrorKind::SchemaTooNew,
                format!(
                    "{shown} was written by a newer ServiceConnection (schema {version}; this version reads up to {SCHEMA_VERSION}); upgrade the tool"
                ),
            ));
        }
        if version < 1 {
            if read_only {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{shown} uses an older schema ({version}) and must be opened for writing once to be upgraded"),
                ));
            }
            schema::migrate(&conn, version as u32)?;
        } else if version < SCHEMA_VERSION as i64 && !read_only {
            schema::migrate(&conn, version as u32)?;
        }
        // A reader of an older schema (read-only, so not migrated) sees the tables added
        // since as empty: every migration only adds tables (see `schema`).
        if !read_only {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Site {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding the site database; the content library lives beside it.
    pub fn dir(&self) -> &Path {
        crate::fsutil::parent_dir(&self.path)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The site's identity and its usage row counts per level. Counting reads the whole
    /// usage table; steps that only need the identity use [`Site::identity`].
    pub fn info(&self) -> Result<SiteInfo> {
        let mut info = self.identity()?;
        // One pass with no sort (a GROUP BY on the unindexed level sorted every row, and
        // cost more than the rest of Import or a quarter of Prepare on a large site).
        let counts = self.conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE level = 1), COUNT(*) FILTER (WHERE level = 2), \
             COUNT(*) FILTER (WHERE level = 3) FROM usage_data",
            [],
            |r| Ok([r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?]),
        )?;
        info.usage_rows = counts.map(|n| n.max(0) as u64);
        Ok(info)
    }

    /// The site's identity (hierarchy, code, name, version, level, SCP mode) without
    /// counting usage rows: `usage_rows` is left at zero. Reads one row, so it costs the
    /// same on any size of site.
    pub(crate) fn identity(&self) -> Result<SiteInfo> {
        let row = self
            .conn
            .query_row(
                "SELECT hierarchy_id, site_code, site_name, site_version, diagnostics_level, scp_mode, created_utc FROM site WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| Error::new(ErrorKind::NotASiteDatabase, format!("{} has no site identity", self.path.display())))?;
        let corrupt = |what: &str| {
            Error::new(
                ErrorKind::Database,
                format!("{}: stored {what} is invalid", self.path.display()),
            )
        };
        Ok(SiteInfo {
            path: self.path.clone(),
            hierarchy_id: row.0.parse().map_err(|_| corrupt("hierarchy ID"))?,
            site_code: row.1,
            site_name: row.2,
            site_version: row.3.parse().map_err(|_| corrupt("site version"))?,
            diagnostics_level: row.4.parse().map_err(|_| corrupt("diagnostics level"))?,
            scp_mode: row.5.parse().map_err(|_| corrupt("SCP mode"))?,
            created: row.6,
            schema_version: SCHEMA_VERSION,
            usage_rows: [0; 3],
        })
    }

    /// Change the site's version (an upgrade was installed) and, in the same
    /// transaction, re-evaluate which recorded updates apply to it
    /// ([`updates::reevaluate_applicability`]). Returns the updates whose state changed.
    pub fn set_site_version(&self, v: &SiteVersion) -> Result<Vec<(uuid::Uuid, UpdateState)>> {
        reentry::check(&self.path)?;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE site SET site_version = ?1 WHERE id = 1",
            [v.as_str()],
        )?;
        let changed = updates::reevaluate_applicability(&tx, v)?;
        tx.commit()?;
        Ok(changed)
    }

    pub fn set_diagnostics_level(&self, level: DiagnosticsLevel) -> Result<()> {
        reentry::check(&self.path)?;
        self.conn.execute(
            "UPDATE site SET diagnostics_level = ?1 WHERE id = 1",
            [level.as_str()],
        )?;
        Ok(())
    }
}

/// The first read of a WAL database creates and sizes its shared-memory index
/// (`<db>-shm`, 32 KiB), even for a read-only connection. When that fails SQLite only
/// says "disk I/O error"; the operating system's reason tells the user what to do.
fn open_io_failure(conn: &Connection, e: &rusqlite::Error, shown: &str) -> Option<Error> {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return None;
    };
    if f.code != rusqlite::ErrorCode::SystemIoFailure {
        return None;
    }
    // SAFETY: the handle is live while `conn` is borrowed; the call only reads state.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
    use crate::platform::OsClass;
    let why = match crate::platform::classify(errno) {
        Some(OsClass::FileTooLarge) => "the file-size limit (ulimit -f) is below the 32 KiB SQLite needs for its index file beside the database",
        Some(OsClass::DiskFull) => "no space left on the device for the 32 KiB index file SQLite keeps beside the database",
        _ => return None,
    };
    Some(Error::new(
        ErrorKind::DiskFull,
        format!("{shown}: the site database cannot be opened: {why}"),
    ))
}

fn tmp_path(f: &crate::fsutil::AtomicFile) -> PathBuf {
    f.temp_path().to_path_buf()
}

/// Current time as RFC 3339 UTC with second precision.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
