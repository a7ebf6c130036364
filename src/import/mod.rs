//! Import: verify the update packs of this site's hierarchy and record them in its
//! Updates and Servicing list, content copied to `EasySetupPayload/Offline/<guid>/`
//! beside the site database — all or nothing, idempotent.
//!
//! # What is read
//!
//! Only `<source>/<this hierarchy id>/<package guid>/`. Every other GUID-named folder at
//! the top of the source is reported as one `Skipped` result; other entries
//! (`connect-report.json`, non-GUID names, dot-files) are ignored. When the source holds
//! no folder for this hierarchy, or that folder holds no packs, the run succeeds with one
//! `Skipped` result for this hierarchy (no `package_guid`) saying so, so a caller never
//! sees an empty, unexplained answer. A missing source is an `Err(NotFound)`.
//! `<source>/ConsoleContent/` (the console content Connect fetched) is one more result,
//! `item: ConsoleContent`, after the packs; see `console.rs` (no folder: no result).
//!
//! # Per pack
//!
//! See `verify.rs`: manifest read size-limited and without following links; its minisign
//! signature verified against the site's trusted keys before it is parsed; its id equal
//! to the folder name; its publisher key equal to the signing key; its hierarchy list
//! empty or naming this hierarchy; a recorded pack with the same GUID must have the same
//! manifest SHA-256 (`AlreadyImported`), otherwise `Conflict`; the folder holds exactly
//! the listed files, no links. Sizes and SHA-256 are checked while copying. A pack whose
//! range excludes the site version is recorded as `NotApplicable` (393214), otherwise
//! `ReadyToInstall` (262146). Each run first re-evaluates the recorded states against the
//! current site version, so after an upgrade the next step becomes `ReadyToInstall`.
//!
//! # Crash-safety protocol
//!
//! 1. **Lock.** An exclusive lock on `<site db>.sct-import.lock` (`lock.rs`) serialises
//!    imports into one site: a second import waits (up to [`ImportOptions::lock_wait_ms`],
//!    default [`DEFAULT_LOCK_WAIT`]) and is then refused with `Busy`. The kernel releases
//!    the lock of a killed process.
//! 2. **Recover.** Under the lock, if `<site db>.sct-import-journal` exists, a previous
//!    import was interrupted: for each pack it lists, its staging folder is removed, and
//!    its final folder too unless the database has a committed row for it. Then the
//!    journal is removed. Only folders a journal names are ever removed, so content that
//!    another tool or site put in the library is never touched.
//! 3. **Journal.** After verification of the manifests, the GUIDs about to be placed
//!    are written to the journal (atomic file, fsynced) before any folder is created.
//! 4. **Stage.** Each pack's content is copied into
//!    `EasySetupPayload/Offline/.<guid>.sct-staging/`, hashing while copying (each byte is
//!    read once). A large file is copied by two threads (one reads and hashes, one
//!    writes the same buffers). Everything staged is made durable before step 5: on
//!    Linux with one `syncfs` of the library's file system after the last pack is
//!    staged (not one fsync per file and folder, which made a many-file copy wait on the
//!    disk between files); elsewhere each file and folder is flushed (Windows: before
//!    the rename, as everywhere there). Where the library's file system
//!    supports it, a file is reflinked (`FICLONE`) instead and the clone is hashed; else,
//!    when the update-pack folder is on the same file system, it is hard-linked and the
//!    linked inode is hashed (the library file then shares the pack file's inode, so pack
//!    files must not be edited in place after importing: the README says so). Progress:
//!    phase 5 (Verify) counts the bytes hashed here.
//! 5. **Commit.** One SQLite `BEGIN IMMEDIATE` transaction inserts every pack's rows
//!    (`update_packages`, `update_package_files`), then every staging folder is renamed to
//!    its final `<guid>` folder, the library folder is fsynced, and the transaction
//!    commits. The rows appear only with complete content. Progress: phase 6 (Import)
//!    counts the bytes of the packs moved into place.
//! 6. **Clean.** The journal is removed.
//!
//! A crash before 5's commit leaves no committed row; the journal lets the next import
//! remove the staged or renamed folders, so the site is as it was. A crash after the
//! commit leaves the site fully imported (the journal's rows exist, so nothing is
//! removed). A committed row whose folder was later deleted by hand is reported as a
//! `Refused`/`NotFound` result and repaired by importing its pack again. A refused pack
//! never gets past staging; cancellation (the progress callback returns false) and any
//! failure before the commit undo everything, so the site is unchanged. Because all packs
//! of a run commit together, a run is all or nothing across packs too.
//!
//! Before any of this, the run is refused (`Conflict`) when another site database in the
//! same folder owns the content library (`site::library`: one site database per
//! folder), and the site database is registered as being written by this thread
//! (`site::reentry`), so a progress callback writing to it fails at once.
//!
//! Test hook: with `SCT_TEST_PAUSE_IMPORT=<stage>:<flag-file>` set, the import appends
//! `SCT_TEST_PAUSED <stage>` to the flag file on reaching `<stage>` and then blocks until
//! killed, so a test can kill it at an exact point without sleeping. Stages, in order:
//! `locked`, `journaled`, `staging`, `staged`, `recorded`, `renamed-first`, `renamed`,
//! `committed`.

mod console;
mod lock;
mod place;
mod verify;

use crate::error::{Error, ErrorKind, Result};
use crate::progress::ProgressFn;
use crate::site::updates::{self, UpdateFile, UpdateRecord, UpdateState};
use crate::site::Site;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use lock::LOCK_SUFFIX;
pub use place::{JOURNAL_SUFFIX, STAGING_SUFFIX};

/// Content library folder beside the site database (defined by the site, which owns the
/// layout beside its database; Import places packs there).
pub use crate::site::updates::CONTENT_LIBRARY;

/// How long an import waits for another import into the same site by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Environment variable of the test-only pause points (see the module documentation).
pub const PAUSE_ENV: &str = "SCT_TEST_PAUSE_IMPORT";

/// Shown on every result of a run that skipped signature verification.
pub const INSECURE_NOTE: &str =
    "SIGNATURE NOT VERIFIED (insecure_skip_signature_check): the publisher of this pack was not authenticated";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportOptions {
    pub site_db: PathBuf,
    /// The update-pack folder Connect wrote (holds `<hierarchy-id>/` folders).
    pub source: PathBuf,
    /// DANGEROUS: accept packs whose signature is missing or untrusted. Off by default;
    /// named loudly everywhere it is exposed.
    #[serde(default)]
    pub insecure_skip_signature_check: bool,
    /// How long to wait for another import into the same site before refusing with
    /// `Busy`, in milliseconds; [`DEFAULT_LOCK_WAIT`] when absent.
    #[serde(default)]
    pub lock_wait_ms: Option<u64>,
}

impl ImportOptions {
    pub fn new(site_db: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Self {
        ImportOptions {
            site_db: site_db.into(),
            source: source.into(),
            insecure_skip_signature_check: false,
            lock_wait_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImportStatus {
    Imported,
    AlreadyImported,
    /// Not for this site (another hierarchy); not an error.
    Skipped,
    /// Failed verification or could not be recorded; the site is unchanged.
    Refused,
}

/// What an import result is about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum ImportItem {
    /// An update pack (or a hierarchy folder that was skipped).
    #[default]
    UpdatePack,
    /// The console content document (`<source>/ConsoleContent/`); `version` is its
    /// `content_version`, `package_guid` and `type` are null.
    ConsoleContent,
}

/// One result per pack (or per skipped hierarchy folder), plus one for the console
/// content when the source holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    #[serde(default)]
    pub item: ImportItem,
    pub hierarchy_id: Option<uuid::Uuid>,
    pub package_guid: Option<uuid::Uuid>,
    pub name: Option<String>,
    pub version: Option<String>,
    #[serde(rename = "type")]
    pub pack_type: Option<String>,
    pub status: ImportStatus,
    /// The state recorded in the site (ReadyToInstall or NotApplicable) when imported.
    pub state: Option<UpdateState>,
    pub state_code: Option<i64>,
    /// Why it was skipped or refused (one clear line).
    pub reason: Option<String>,
    /// Machine-readable kind of a refusal (`ErrorKind` name), e.g. `SignatureInvalid`.
    pub error_kind: Option<String>,
    pub source_path: PathBuf,
    pub content_path: Option<PathBuf>,
}

impl ImportResult {
    fn new(status: ImportStatus, hierarchy: Option<uuid::Uuid>, source_path: PathBuf) -> Self {
        ImportResult {
            item: ImportItem::UpdatePack,
            hierarchy_id: hierarchy,
            package_guid: None,
            name: None,
            version: None,
            pack_type: None,
            status,
            state: None,
            state_code: None,
            reason: None,
            error_kind: None,
            source_path,
            content_path: None,
        }
    }

    fn refuse(&mut self, e: &Error) {
        self.status = ImportStatus::Refused;
        self.reason = Some(e.message().to_string());
        self.error_kind = Some(e.kind().as_str().to_string());
        self.state = None;
        self.state_code = None;
        self.content_path = None;
    }
}

/// A pack that passed every check that does not need its content bytes.
struct Candidate {
    /// Index of its result.
    idx: usize,
    /// The pack folder relative to the source.
    rel: PathBuf,
    trusted: verify::TrustedManifest,
    /// Recorded already, but its content folder is missing: place it again.
    repair: bool,
    state: UpdateState,
}

/// Parse a folder name in the canonical hyphenated GUID form (either case).
fn guid_name(name: &std::ffi::OsStr) -> Option<uuid::Uuid> {
    let s = name.to_str()?;
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(s).ok()
}

/// Sorted (name, type) of a folder's entries, links not followed.
fn sorted_entries(dir: &Path) -> Result<Vec<(std::ffi::OsString, std::fs::FileType)>> {
    let what = || format!("listing {}", dir.display());
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(what(), &e))? {
        let e = e.map_err(|e| Error::io(what(), &e))?;
        let ft = e.file_type().map_err(|e| Error::io(what(), &e))?;
        v.push((e.file_name(), ft));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Import every pack under `<source>/<this-hierarchy-id>/`; other hierarchies' folders are
/// reported as `Skipped`. Per-pack refusals are results, not errors; `Err` means the run
/// could not start (site missing, source missing, busy, cancelled).
pub fn import(opts: &ImportOptions, progress: ProgressFn) -> Result<Vec<ImportResult>> {
    let mut progress = progress;
    let source = opts.source.as_path();
    match std::fs::metadata(source) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("update pack source {} does not exist", source.display()),
            ))
        }
        Err(e) => {
            return Err(Error::io(
                format!("update pack source {}", source.display()),
                &e,
            ))
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::invalid_argument(format!(
            "update pack source {} is not a folder; give the folder Connect wrote (-updatepacksrc)",
            source.display()
        )))
        }
        Ok(_) => {}
    }
    let _held = crate::site::reentry::hold(&opts.site_db, "an import")?;
    let mut site = Site::open(&opts.site_db)?;
    let info = site.identity()?;
    let wait = opts
        .lock_wait_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_LOCK_WAIT);
    // One site database per folder: the content library beside it is its own. Checked
    // before anything is written (`claim` checks again when content is placed).
    crate::site::library::check_owner(&opts.site_db)?;
    let _lock = lock::ImportLock::acquire(&opts.site_db, wait)?;
    pause_point("locked");
    place::recover(&opts.site_db, site.connection())?;
    // The site may have been upgraded since the last import (the version is the site's
    // own to change): the next step of a multi-step upgrade recorded as NotApplicable
    // then applies. Bring the recorded states in line before anything is compared.
    crate::site::updates::reevaluate_applicability(site.connection(), &info.site_version)?;

    let hierarchy = info.hierarchy_id;
    // Absolute, so the journal still names the right folders if the next run starts elsewhere.
    let library = std::path::absolute(site.content_library())
        .map_err(|e| Error::io("resolving the content library", &e))?;
    let mut results: Vec<ImportResult> = Vec::new();

    // The top of the source: this hierarchy's folder(s); others are skipped.
    let mut mine: Vec<PathBuf> = Vec::new();
    for (name, ft) in sorted_entries(source)? {
        let Some(h) = guid_name(&name) else { continue };
        let path = source.join(&name);
        if h == hierarchy {
            if ft.is_symlink() {
                return Err(Error::new(
                    ErrorKind::UnsafePath,
                    format!(
                        "{} is a symbolic link; links are never followed",
                        path.display()
                    ),
                ));
            }
            if ft.is_dir() {
                mine.push(PathBuf::from(name));
            }
        } else if ft.is_dir() || ft.is_symlink() {
            let mut r = ImportResult::new(ImportStatus::Skipped, Some(h), path);
            r.reason = Some(format!(
                "belongs to hierarchy {h}, not this site's hierarchy {hierarchy}"
            ));
            results.push(r);
        }
    }

    let trusted_keys = if opts.insecure_skip_signature_check {
        Vec::new()
    } else {
        site.trusted_keys()?
    };
    let recorded = updates::recorded_manifests(site.connection())?;
    let site_dir = site.dir().to_path_buf();
    let content_abs = |guid: &uuid::Uuid| {
        std::path::absolute(place::final_dir(&library, guid))
            .unwrap_or_else(|_| place::final_dir(&library, guid))
    };

    // Every check that needs no content bytes, for every pack, before anything is placed.
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut seen: HashMap<uuid::Uuid, String> = HashMap::new();
    let mut pack_folders = 0usize;
    for hdir in &mine {
        for (name, ft) in sorted_entries(&source.join(hdir))? {
            let Some(guid) = guid_name(&name) else {
                continue;
            };
            let rel = hdir.join(&name);
            let mut r =
                ImportResult::new(ImportStatus::Refused, Some(hierarchy), source.join(&rel));
            r.package_guid = Some(guid);
            if ft.is_symlink() {
                r.refuse(&Error::new(
                    ErrorKind::UnsafePath,
                    "the pack folder is a symbolic link; links are never followed",
                ));
                results.push(r);
                pack_folders += 1;
                continue;
            }
            if !ft.is_dir() {
                continue;
            }
            pack_folders += 1;
            let checked = verify::trusted_manifest(
                source,
                &rel,
                guid,
                &trusted_keys,
                opts.insecure_skip_signature_check,
                hierarchy,
            );
            let t = match checked {
                Ok(t) => t,
                Err(e) => {
                    r.refuse(&e);
                    results.push(r);
                    continue;
                }
            };
            let m = &t.manifest;
            r.name = Some(m.name.clone());
            r.version = Some(m.version.to_string());
            r.pack_type = Some(m.pack_type.as_str().to_string());
            let state = UpdateState::for_applicability(m.applies_to(&info.site_version));
            let mut repair = false;
            if let Some(prev) = seen.get(&guid) {
                let e = if *prev == t.sha256 {
                    None
                } else {
                    Some(Error::new(
                        ErrorKind::Conflict,
                        format!("another folder in this run holds a different pack with the same GUID {guid}"),
                    ))
                };
                match e {
                    Some(e) => r.refuse(&e),
                    None => {
                        r.status = ImportStatus::AlreadyImported;
                        r.reason =
                            Some("the same pack appears twice in the source; imported once".into());
                    }
                }
                results.push(r);
                continue;
            }
            seen.insert(guid, t.sha256.clone());
            match recorded.get(&guid) {
                Some(prev) if prev.manifest_sha256 != t.sha256 => {
                    r.refuse(&Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "a different pack with GUID {guid} is already imported (recorded manifest SHA-256 {}, this one {}); refused",
                            prev.manifest_sha256, t.sha256
                        ),
                    ));
                    results.push(r);
                    continue;
                }
                Some(prev) => {
                    let dir = match &prev.content_path {
                        Some(p) => site_dir.join(p),
                        None => place::final_dir(&library, &guid),
                    };
                    if dir.is_dir() {
                        r.status = ImportStatus::AlreadyImported;
                        r.state = Some(prev.state);
                        r.state_code = Some(prev.state.code());
                        r.content_path = Some(std::path::absolute(&dir).unwrap_or(dir));
                        if opts.insecure_skip_signature_check {
                            r.reason = Some(INSECURE_NOTE.to_string());
                        }
                        results.push(r);
                        continue;
                    }
                    repair = true;
                }
                None => {
                    // Never adopt (nor, on recovery, remove) a folder this site did not place.
                    let fin = place::final_dir(&library, &guid);
                    if fin.symlink_metadata().is_ok() {
                        r.refuse(&Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "{} already exists but this site has no record of it; move it away and import again",
                                fin.display()
                            ),
                        ));
                        results.push(r);
                        continue;
                    }
                }
            }
            if let Err(e) = verify::check_layout(source, &rel, m) {
                r.refuse(&e);
                results.push(r);
                continue;
            }
            r.state = Some(state);
            r.state_code = Some(state.code());
            candidates.push(Candidate {
                idx: results.len(),
                rel,
                trusted: t,
                repair,
                state,
            });
            results.push(r);
        }
    }
    if pack_folders == 0 {
        let (path, why) = match mine.first() {
            None => (
                source.to_path_buf(),
                format!("holds no folder for this site's hierarchy {hierarchy}; run Connect with this site's usage data"),
            ),
            Some(h) => (
                source.join(h),
                format!("the folder for this site's hierarchy {hierarchy} holds no update packs"),
            ),
        };
        let mut r = ImportResult::new(ImportStatus::Skipped, Some(hierarchy), path);
        r.reason = Some(why);
        results.push(r);
    }

    if !candidates.is_empty() {
        place_and_commit(
            opts,
            &mut site,
            &library,
            &mut candidates,
            &mut results,
            &mut progress,
        )?;
        for c in &candidates {
            let r = &mut results[c.idx];
            if r.status != ImportStatus::Imported {
                continue;
            }
            let m = &c.trusted.manifest;
            r.content_path = Some(content_abs(&m.id));
            let mut notes = Vec::new();
            if c.repair {
                notes.push(
                    "its content folder was missing; placed again from this pack".to_string(),
                );
            }
            if c.state == UpdateState::NotApplicable {
                notes.push(format!(
                    "recorded as NotApplicable: it applies to site versions {}{}, this site is {}",
                    m.min_site_version,
                    match &m.max_site_version {
                        Some(max) => format!(" to {max}"),
                        None => " and later".to_string(),
                    },
                    info.site_version
                ));
            }
            if opts.insecure_skip_signature_check {
                notes.push(INSECURE_NOTE.to_string());
            }
            if !notes.is_empty() {
                r.reason = Some(notes.join("; "));
            }
        }
    }

    // Recorded updates whose content has gone (deleted by hand) and were not repaired now.
    for rec in site.list_updates()? {
        if results.iter().any(|r| {
            r.package_guid == Some(rec.package_guid)
                && matches!(
                    r.status,
                    ImportStatus::Imported | ImportStatus::AlreadyImported
                )
        }) {
            continue;
        }
        let dir = site.update_content_dir(&rec);
        if !dir.is_dir() {
            let mut r = ImportResult::new(ImportStatus::Refused, Some(hierarchy), dir.clone());
            r.package_guid = Some(rec.package_guid);
            r.name = Some(rec.name.clone());
            r.version = Some(rec.full_version.clone());
            r.pack_type = Some(rec.update_type.clone());
            r.refuse(&Error::new(
                ErrorKind::NotFound,
                format!(
                    "update {} is recorded but its content folder {} is missing; import its pack again to restore it",
                    rec.package_guid,
                    dir.display()
                ),
            ));
            results.push(r);
        }
    }

    // The console content comes last: a pack refused above never blocks it, and it
    // commits in its own transaction (see `console.rs`).
    if let Some(r) = console::import_console(opts, &mut site, hierarchy, &trusted_keys)? {
        results.push(r);
    }
    Ok(results)
}

/// Steps 3–6 of the protocol for the packs that passed every other check.
fn place_and_commit(
    opts: &ImportOptions,
    site: &mut Site,
    library: &Path,
    candidates: &mut [Candidate],
    results: &mut [ImportResult],
    progress: &mut ProgressFn<'_>,
) -> Result<()> {
    let source = opts.source.as_path();
    let mut placement = place::Placement::new(&opts.site_db, library);
    let guids: Vec<uuid::Uuid> = candidates.iter().map(|c| c.trusted.manifest.id).collect();
    let missing = placement.missing_library_dirs();
    place::write_journal(&opts.site_db, library, &guids, &missing)?;
    placement.journaled = true;
    pause_point("journaled");
    placement.create_library(&missing)?;
    placement.claimed = crate::site::library::claim(&opts.site_db)?;

    let mut meter = place::Meter {
        progress,
        phase: crate::progress::Phase::Verify,
        done: 0,
        total: candidates
            .iter()
            .map(|c| c.trusted.manifest.total_size())
            .sum(),
    };
    let mut copier = place::Copier::new();
    // Opened before the first byte is staged, so the flush reports any write error since.
    let library_fs = crate::platform::FsFlush::open(library)
        .map_err(|e| Error::io(format!("opening {}", library.display()), &e))?;
    let mut staged: Vec<usize> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let m = &c.trusted.manifest;
        let staging = place::staging_dir(library, &m.id);
        let before = meter.done;
        let created = place::create_staging(&staging);
        if created.is_ok() {
            placement.staged.push(staging.clone());
        }
        match created
            .and_then(|()| place::stage(source, &c.rel, m, &staging, &mut copier, &mut meter))
        {
            Ok(()) => staged.push(i),
            // Cancellation ends the run; dropping `placement` undoes everything.
            Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
            Err(e) => {
                if placement.staged.contains(&staging) {
                    placement.discard(&staging)?;
                }
                // Keep the overall count honest for the packs still to come.
                meter.done = before + m.total_size();
                results[c.idx].refuse(&e);
            }
        }
    }
    // Every staged file and folder durable before the commit can name them.
    place::flush_staged(library, &library_fs)?;
    pause_point("staged");
    if staged.is_empty() {
        return Ok(());
    }

    // Phase 6: recording and moving into place, in bytes of the packs staged.
    meter.phase = crate::progress::Phase::Import;
    meter.done = 0;
    meter.total = staged
        .iter()
        .map(|&i| candidates[i].trusted.manifest.total_size())
        .sum();
    meter.report("", 0, 0)?;
    let now = crate::site::now_rfc3339();
    let outcome = (|| -> Result<()> {
        let tx = site
            .connection_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for &i in &staged {
            let c = &candidates[i];
            let m = &c.trusted.manifest;
            let rel_content = format!("{CONTENT_LIBRARY}/{}", m.id);
            let source_path = source.join(&c.rel).display().to_string();
            if c.repair {
                updates::record_content_restored(&tx, &m.id, &rel_content, &source_path, &now)?;
            } else {
                let rec = UpdateRecord {
                    package_guid: m.id,
                    name: m.name.clone(),
                    full_version: m.version.to_string(),
                    update_type: m.pack_type.as_str().to_string(),
                    min_site_version: m.min_site_version.to_string(),
                    max_site_version: m.max_site_version.as_ref().map(|v| v.to_string()),
                    state: c.state,
                    state_code: c.state.code(),
                    size: m.total_size(),
                    file_count: m.files.len() as u64,
                    manifest_sha256: c.trusted.sha256.clone(),
                    publisher_key_id: c.trusted.key_id.clone(),
                    content_path: Some(rel_content),
                    source_path: Some(source_path),
                    imported: Some(now.clone()),
                };
                let files: Vec<UpdateFile> = m
                    .files
                    .iter()
                    .map(|f| UpdateFile {
                        path: f.path.clone(),
                        size: f.size,
                        sha256: f.sha256.clone(),
                    })
                    .collect();
                updates::insert_update(&tx, &rec, &files)?;
            }
        }
        pause_point("recorded");
        for &i in &staged {
            let m = &candidates[i].trusted.manifest;
            let staging = place::staging_dir(library, &m.id);
            let fin = place::final_dir(library, &m.id);
            if fin.symlink_metadata().is_ok() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} already exists but is not recorded in this site; move it away and import again",
                        fin.display()
                    ),
                ));
            }
            crate::fsutil::rename_retrying(&staging, &fin)
                .map_err(|e| Error::io(format!("moving {} into place", staging.display()), &e))?;
            placement.staged.retain(|s| s != &staging);
            placement.renamed.push(fin);
            if placement.renamed.len() == 1 {
                pause_point("renamed-first");
            }
            meter.done += m.total_size();
            meter.report(&m.id.to_string(), m.total_size(), m.total_size())?;
        }
        crate::fsutil::sync_dir(library);
        pause_point("renamed");
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            pause_point("committed");
            // A journal left behind is harmless: every pack it names has its row.
            let _ = placement.committed();
            for &i in &staged {
                results[candidates[i].idx].status = ImportStatus::Imported;
            }
            Ok(())
        }
        // Cancelled while placing: rolled back, and dropping `placement` removes what was
        // placed, so the site is unchanged.
        Err(e) if e.kind() == ErrorKind::Cancelled => Err(e),
        Err(e) => {
            // Rolled back; dropping `placement` removes what was placed.
            let e = e.context("the packs could not be recorded in the site database");
            for &i in &staged {
                results[candidates[i].idx].refuse(&e);
            }
            Ok(())
        }
    }
}

/// Pause point for crash tests (see the module docs and `testhooks`).
pub(crate) fn pause_point(stage: &str) {
    crate::testhooks::pause_point(PAUSE_ENV, stage)
}
