//! Usage data: which rows leave the site (level filtering, hashing of identifying
//! attributes), the usage cab written by Prepare, and the CSV written by Export.

mod cab;
mod csv;
pub mod manifest;
pub mod reader;
pub mod rows;

pub use manifest::{UsageFile, UsageManifest};
pub use reader::{read_usage_cab, read_usage_cab_file};
pub use rows::{for_each_usage_row, UsageRecord, USAGE_CSV_COLUMNS};

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::AtomicFile;
use crate::progress::{Phase, ProgressFn};
use crate::site::{DiagnosticsLevel, Site};
use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The size `data` compresses to as Prepare compresses it (MSZIP blocks, one compressor
/// on the calling thread). Only for the `compare` benchmark, which times it to know what
/// compressing costs on one core of the machine it runs on; not part of the API.
#[doc(hidden)]
pub fn compressed_len_for_benchmark(data: &[u8]) -> std::io::Result<usize> {
    cab::compressed_len(data)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageFormat {
    Cab,
    Csv,
}

/// What Prepare or Export wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageDataFile {
    pub path: PathBuf,
    pub format: UsageFormat,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: String,
    pub diagnostics_level: DiagnosticsLevel,
    pub record_count: u64,
    /// Size of the written file.
    pub size: u64,
    /// SHA-256 of the written file.
    pub sha256: String,
}

/// Prepare: write the usage cab for the site at `site_db` to `dest` (`.cab`).
///
/// Streams rows from the database through the CSV writer into the cab; memory does not
/// grow with the number of rows. The cab is written under a temporary name beside
/// `dest` and renamed into place only when complete: an error or a cancellation (the
/// progress callback returning `false`) leaves nothing behind and an existing `dest`
/// untouched. An existing `dest` is refused unless `force`.
pub fn prepare(
    site_db: &Path,
    dest: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<UsageDataFile> {
    check_extension(dest, "cab")?;
    let site = Site::open_read_only(site_db)?;
    let mut out = AtomicFile::create(dest, force)?;
    let what = dest.display().to_string();
    let info = std::cell::RefCell::new(None);
    let records = std::cell::Cell::new(0u64);
    {
        let buf =
            BufWriter::with_capacity(1 << 20, crate::fsutil::EarlyWriteback::new(&*out.file()));
        let mut buf = cab::write_usage_cab(
            buf,
            &what,
            &mut |w| {
                let o = csv::write_usage_csv(&site, w, Phase::Prepare, &what, &mut *progress)?;
                records.set(o.records);
                *info.borrow_mut() = Some(o.info);
                Ok(o.records)
            },
            &mut |file| {
                // The identity read with the rows, so SiteVersion.txt, the manifest and
                // the CSV come from one snapshot of the site.
                let i = info.borrow();
                let i = i.as_ref().expect("CSV written before the manifest");
                cab::MetaFiles {
                    site_version: i.site_version.as_str().as_bytes().to_vec(),
                    manifest: UsageManifest {
                        format_version: manifest::USAGE_FORMAT_VERSION,
                        hierarchy_id: i.hierarchy_id,
                        site_version: i.site_version.clone(),
                        diagnostics_level: i.diagnostics_level,
                        created: crate::site::now_rfc3339(),
                        tool_version: crate::tool_version(),
                        files: vec![file],
                    }
                    .to_bytes(),
                }
            },
        )?;
        buf.flush()
            .map_err(|e| Error::io(format!("writing {what}"), &e))?;
    }
    let info = info
        .into_inner()
        .ok_or_else(|| Error::internal("prepare wrote no CSV"))?;
    let (size, sha256) = std::fs::File::open(out.temp_path())
        .and_then(crate::hashing::sha256_reader)
        .map_err(|e| Error::io(format!("reading back {what}"), &e))?;
    pause_point("written");
    out.commit()?;
    Ok(UsageDataFile {
        path: dest.to_path_buf(),
        format: UsageFormat::Cab,
        hierarchy_id: info.hierarchy_id,
        site_version: info.site_version.to_string(),
        diagnostics_level: info.diagnostics_level,
        record_count: records.get(),
        size,
        sha256,
    })
}

/// Export: write the same rows as CSV to `dest` (`.csv`) — byte for byte the
/// `UsageData.csv` that Prepare puts in the cab. Same atomicity, overwrite and
/// cancellation rules as [`prepare`].
pub fn export_csv(
    site_db: &Path,
    dest: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<UsageDataFile> {
    check_extension(dest, "csv")?;
    let site = Site::open_read_only(site_db)?;
    let mut out = AtomicFile::create(dest, force)?;
    let what = dest.display().to_string();
    let (o, size, sha256) = {
        // This thread hashes; a thread of the file's own writes (past the page cache on
        // Linux), so neither waits for the other's work.
        let file = out
            .file()
            .try_clone()
            .map_err(|e| Error::io(format!("writing {what}"), &e))?;
        let writer = crate::fsutil::BackgroundWriter::new(file, 0)
            .map_err(|e| Error::io(format!("writing {what}"), &e))?;
        let mut hw = crate::hashing::HashingWriter::new(writer);
        let o = csv::write_usage_csv(&site, &mut hw, Phase::Export, &what, progress)?;
        let (writer, size, sha256) = hw.finish();
        writer
            .finish()
            .map_err(|e| Error::io(format!("writing {what}"), &e))?;
        (o, size, sha256)
    };
    pause_point("written");
    out.commit()?;
    Ok(UsageDataFile {
        path: dest.to_path_buf(),
        format: UsageFormat::Csv,
        hierarchy_id: o.info.hierarchy_id,
        site_version: o.info.site_version.to_string(),
        diagnostics_level: o.info.diagnostics_level,
        record_count: o.records,
        size,
        sha256,
    })
}

/// Refuse a destination without the expected extension (case-insensitive), so a typo
/// cannot overwrite the site database or some other file.
fn check_extension(dest: &Path, ext: &str) -> Result<()> {
    let ok = dest
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
        && dest.file_stem().is_some_and(|s| !s.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("destination {} must be a .{ext} file name", dest.display()),
        ))
    }
}

/// Test hook: with `SCT_TEST_PAUSE_PREPARE=<stage>:<flag-file>` set, Prepare and Export
/// append `SCT_TEST_PAUSED <stage>` to the flag file on reaching `<stage>` and then block
/// until killed, so a crash test can kill them at an exact point without sleeping. The
/// one stage, `written`, is the moment the output is complete under its temporary name,
/// just before the rename into place.
pub const PAUSE_ENV: &str = "SCT_TEST_PAUSE_PREPARE";

fn pause_point(stage: &str) {
    crate::testhooks::pause_point(PAUSE_ENV, stage)
}
