//! The site's Updates and Servicing list (the role of `CM_UpdatePackages`).

use super::Site;
use crate::error::{Error, ErrorKind, Result};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

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
