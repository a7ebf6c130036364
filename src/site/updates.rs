//! The site's Updates and Servicing list (the role of `CM_UpdatePackages`).

use super::Site;
use crate::error::{Error, ErrorKind, Result};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

/// Content library folder beside the site database, where Import places update packs.
/// Defined here (not in `import`) so the site layer does not depend on the step above it.
pub const CONTENT_LIBRARY: &str = "EasySetupPayload/Offline";

/// An update's state, with Configuration Manager's numeric state code beside the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateState {
    /// Offered but not yet downloaded (code 2).
    Available,
    /// Downloaded and verified; ready to install (DOWNLOAD_SUCCESS, 262146).
    ReadyToInstall,
    /// Verified and recorded, but the site version is outside its range (APPLICABILITY_NA, 393214).
    NotApplicable,
    /// Installed (INSTALL_SUCCESS, 196612).
    Installed,
    /// Installation failed (INSTALL_FAILED, 262143).
    Failed,
}

impl UpdateState {
    /// The state a verified update is recorded in: `ReadyToInstall` when it applies to
    /// the site's version, else `NotApplicable`.
    pub fn for_applicability(applies: bool) -> UpdateState {
        if applies {
            UpdateState::ReadyToInstall
        } else {
            UpdateState::NotApplicable
        }
    }

    pub fn code(self) -> i64 {
        match self {
            UpdateState::Available => 2,
            UpdateState::ReadyToInstall => 262146,
            UpdateState::NotApplicable => 393214,
            UpdateState::Installed => 196612,
            UpdateState::Failed => 262143,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Available => "Available",
            UpdateState::ReadyToInstall => "ReadyToInstall",
            UpdateState::NotApplicable => "NotApplicable",
            UpdateState::Installed => "Installed",
            UpdateState::Failed => "Failed",
        }
    }
}

impl std::str::FromStr for UpdateState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "Available" => UpdateState::Available,
            "ReadyToInstall" => UpdateState::ReadyToInstall,
            "NotApplicable" => UpdateState::NotApplicable,
            "Installed" => UpdateState::Installed,
            "Failed" => UpdateState::Failed,
            _ => {
                return Err(Error::new(
                    ErrorKind::Database,
                    format!("unknown update state '{s}'"),
                ))
            }
        })
    }
}

/// One row of the Updates and Servicing list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateRecord {
    pub package_guid: uuid::Uuid,
    pub name: String,
    pub full_version: String,
    #[serde(rename = "type")]
    pub update_type: String,
    pub min_site_version: String,
    pub max_site_version: Option<String>,
    pub state: UpdateState,
    pub state_code: i64,
    pub size: u64,
    pub file_count: u64,
    pub manifest_sha256: String,
    pub publisher_key_id: Option<String>,
    /// Where the content lives (`EasySetupPayload/Offline/<guid>` beside the database).
    pub content_path: Option<String>,
    /// Where it was imported from.
    pub source_path: Option<String>,
    pub imported: Option<String>,
}

const COLUMNS: &str = "package_guid, name, full_version, update_type, min_site_version, max_site_version, state, state_code, size, file_count, manifest_sha256, publisher_key_id, content_path, source_path, imported_utc";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(UpdateRecord, String, String)> {
    let guid: String = r.get(0)?;
    let state: String = r.get(6)?;
    Ok((
        UpdateRecord {
            package_guid: uuid::Uuid::nil(),
            name: r.get(1)?,
            full_version: r.get(2)?,
            update_type: r.get(3)?,
            min_site_version: r.get(4)?,
            max_site_version: r.get(5)?,
            state: UpdateState::Available,
            state_code: r.get(7)?,
            size: r.get::<_, i64>(8)? as u64,
            file_count: r.get::<_, i64>(9)? as u64,
            manifest_sha256: r.get(10)?,
            publisher_key_id: r.get(11)?,
            content_path: r.get(12)?,
            source_path: r.get(13)?,
            imported: r.get(14)?,
        },
        guid,
        state,
    ))
}

fn finish(t: (UpdateRecord, String, String)) -> Result<UpdateRecord> {
    let (mut rec, guid, state) = t;
    rec.package_guid = guid.parse().map_err(|_| {
        Error::new(
            ErrorKind::Database,
            format!("stored package GUID '{guid}' is invalid"),
        )
    })?;
    rec.state = state.parse()?;
    Ok(rec)
}

impl Site {
    /// The Updates and Servicing list, newest version first.
    pub fn list_updates(&self) -> Result<Vec<UpdateRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM update_packages"))?;
        let rows = stmt.query_map([], from_row)?;
        let mut out = rows.map(|r| finish(r?)).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            let va = a.full_version.parse::<crate::SiteVersion>().ok();
            let vb = b.full_version.parse::<crate::SiteVersion>().ok();
            vb.cmp(&va).then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// One update by package GUID.
    pub fn get_update(&self, guid: &uuid::Uuid) -> Result<Option<UpdateRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM update_packages WHERE package_guid = ?1"
        ))?;
        stmt.query_row([guid.to_string()], from_row)
            .optional()?
            .map(finish)
            .transpose()
    }
}

/// The files recorded for one update, in manifest order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateFile {
    /// `/`-separated path relative to the update's content folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What the import knows about an already recorded update: enough to decide
/// `AlreadyImported`, `Conflict` or repair without loading the whole row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedManifest {
    pub manifest_sha256: String,
    pub content_path: Option<String>,
    pub state: UpdateState,
}

/// Insert one update and its files through `conn`. Import calls this inside its own
/// transaction (a `rusqlite::Transaction` derefs to a `Connection`), so the rows become
/// visible only together with the content placement.
pub fn insert_update(
    conn: &rusqlite::Connection,
    rec: &UpdateRecord,
    files: &[UpdateFile],
) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO update_packages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        rusqlite::params![
            rec.package_guid.to_string(),
            rec.name,
            rec.full_version,
            rec.update_type,
            rec.min_site_version,
            rec.max_site_version,
            rec.state.as_str(),
            rec.state_code,
            rec.size as i64,
            rec.file_count as i64,
            rec.manifest_sha256,
            rec.publisher_key_id,
            rec.content_path,
            rec.source_path,
            rec.imported,
        ],
    )?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO update_package_files (package_guid, path, size, sha256) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let guid = rec.package_guid.to_string();
    for f in files {
        stmt.execute(rusqlite::params![guid, f.path, f.size as i64, f.sha256])?;
    }
    Ok(())
}

/// Record that an update's content folder was placed again (it had gone missing) from
/// `source_path` at `imported`. Returns false when no such update is recorded.
pub fn record_content_restored(
    conn: &rusqlite::Connection,
    guid: &uuid::Uuid,
    content_path: &str,
    source_path: &str,
    imported: &str,
) -> Result<bool> {
    let n = conn.execute(
        "UPDATE update_packages SET content_path = ?2, source_path = ?3, imported_utc = ?4 WHERE package_guid = ?1",
        rusqlite::params![guid.to_string(), content_path, source_path, imported],
    )?;
    Ok(n == 1)
}

/// GUID → manifest hash, content location and state of every recorded update.
pub fn recorded_manifests(
    conn: &rusqlite::Connection,
) -> Result<std::collections::HashMap<uuid::Uuid, RecordedManifest>> {
    let mut stmt = conn.prepare_cached(
        "SELECT package_guid, manifest_sha256, content_path, state FROM update_packages",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = std::collections::HashMap::new();
    while let Some(r) = rows.next()? {
        let guid: String = r.get(0)?;
        let state: String = r.get(3)?;
        let guid = guid.parse().map_err(|_| {
            Error::new(
                ErrorKind::Database,
                format!("stored package GUID '{guid}' is invalid"),
            )
        })?;
        out.insert(
            guid,
            RecordedManifest {
                manifest_sha256: r.get(1)?,
                content_path: r.get(2)?,
                state: state.parse()?,
            },
        );
    }
    Ok(out)
}

/// Bring the recorded states in line with the site at version `v`: a `NotApplicable`
/// update whose version range now includes `v` becomes `ReadyToInstall` (the next step of
/// a multi-step upgrade brought in on one trip, once the step before it is installed),
/// and a `ReadyToInstall` one whose range no longer includes `v` becomes
/// `NotApplicable`. `Available`, `Installed` and `Failed` are left alone, as are rows
/// whose stored versions do not parse. Returns each update whose state changed, with its
/// new state. Runs through `conn`, so a caller's transaction covers it.
pub fn reevaluate_applicability(
    conn: &rusqlite::Connection,
    v: &crate::SiteVersion,
) -> Result<Vec<(uuid::Uuid, UpdateState)>> {
    let mut changed = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT package_guid, min_site_version, max_site_version, state FROM update_packages
             WHERE state IN ('NotApplicable', 'ReadyToInstall')",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let guid: String = r.get(0)?;
            let min: String = r.get(1)?;
            let max: Option<String> = r.get(2)?;
            let state: UpdateState = r.get::<_, String>(3)?.parse()?;
            let (Ok(guid), Ok(min)) = (
                guid.parse::<uuid::Uuid>(),
                min.parse::<crate::SiteVersion>(),
            ) else {
                continue;
            };
            let max = match max.map(|m| m.parse::<crate::SiteVersion>()) {
                Some(Ok(m)) => Some(m),
                Some(Err(_)) => continue,
                None => None,
            };
            let now = UpdateState::for_applicability(v.is_within(&min, max.as_ref()));
            if now != state {
                changed.push((guid, now));
            }
        }
    }
    let mut update = conn.prepare_cached(
        "UPDATE update_packages SET state = ?2, state_code = ?3 WHERE package_guid = ?1",
    )?;
    for (guid, state) in &changed {
        update.execute(rusqlite::params![
            guid.to_string(),
            state.as_str(),
            state.code()
        ])?;
    }
    Ok(changed)
}

impl Site {
    /// The files recorded for an update, in the order its manifest lists them.
    pub fn update_files(&self, guid: &uuid::Uuid) -> Result<Vec<UpdateFile>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, size, sha256 FROM update_package_files WHERE package_guid = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([guid.to_string()], |r| {
            Ok(UpdateFile {
                path: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                sha256: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The site's content library: `EasySetupPayload/Offline` beside the database.
    pub fn content_library(&self) -> std::path::PathBuf {
        self.dir().join(CONTENT_LIBRARY)
    }

    /// Where an update's content lives on disk: its recorded `content_path` (relative
    /// paths are resolved against the database's folder), or the library's `<guid>` folder.
    pub fn update_content_dir(&self, rec: &UpdateRecord) -> std::path::PathBuf {
        match &rec.content_path {
            Some(p) => self.dir().join(p),
            None => self.content_library().join(rec.package_guid.to_string()),
        }
    }
}
