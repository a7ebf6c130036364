//! Placing verified content into the site's content library, and undoing what a crashed
//! or refused import left behind. The protocol is described in the parent module.

use super::verify::open_regular;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::sync_dir;
use crate::pack::manifest::CONTENT_DIR;
use crate::pack::PackManifest;
use crate::progress::{Phase, Progress, ProgressFn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Suffix of a pack's staging folder (`.<guid>.sct-staging`) in the content library.
pub const STAGING_SUFFIX: &str = ".sct-staging";
/// Suffix of the import journal beside the site database.
pub const JOURNAL_SUFFIX: &str = ".sct-import-journal";

/// Copy buffer: large enough for full-speed sequential I/O, small enough to stay flat.
const BUF_BYTES: usize = 1024 * 1024;

pub(crate) fn staging_dir(library: &Path, guid: &uuid::Uuid) -> PathBuf {
    library.join(format!(".{guid}{STAGING_SUFFIX}"))
}

pub(crate) fn final_dir(library: &Path, guid: &uuid::Uuid) -> PathBuf {
    library.join(guid.to_string())
}

/// `<site db>.sct-import-journal`.
pub(crate) fn journal_path(site_db: &Path) -> PathBuf {
    let mut name = site_db.file_name().unwrap_or_default().to_os_string();
    name.push(JOURNAL_SUFFIX);
    site_db.with_file_name(name)
}

/// The packs an import is about to stage and place: everything recovery may remove.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    library: PathBuf,
    packages: Vec<uuid::Uuid>,
    /// Library folders this run creates (outermost first), removed again if left empty.
    #[serde(default)]
    created: Vec<PathBuf>,
}

/// Durably record the packs about to be placed, before any folder is created for them.
pub(crate) fn write_journal(
    site_db: &Path,
    library: &Path,
    guids: &[uuid::Uuid],
    created: &[PathBuf],
) -> Result<()> {
    let j = Journal {
        library: library.to_path_buf(),
        packages: guids.to_vec(),
        created: created.to_vec(),
    };
    let path = journal_path(site_db);
    let mut f = crate::fsutil::AtomicFile::create(&path, true)?;
    f.write_all(&serde_json::to_vec_pretty(&j).expect("journal serializes"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.commit()
}

fn remove_journal(site_db: &Path) -> Result<()> {
    let path = journal_path(site_db);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(crate::fsutil::parent_dir(&path));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), &e)),
    }
}

fn remove_tree(p: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), &e)),
    }
}

/// Finish what an interrupted import left: for every pack in the journal, remove its
/// staging folder, and its final folder unless the site database has a committed row
/// for it. Then drop the journal. Returns the folders removed.
pub(crate) fn recover(site_db: &Path, conn: &rusqlite::Connection) -> Result<Vec<PathBuf>> {
    let path = journal_path(site_db);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), &e)),
    };
    // Written atomically, so it is whole or absent; anything else is outside interference.
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!(
                "the import journal {} is damaged ({e}); inspect the content library and remove the journal by hand",
                path.display()
            ),
        )
    })?;
    let recorded = crate::site::updates::recorded_manifests(conn)?;
    let mut removed = Vec::new();
    for guid in &j.packages {
        let staging = staging_dir(&j.library, guid);
        if remove_tree(&staging)? {
            removed.push(staging);
        }
        if !recorded.contains_key(guid) {
            let fin = final_dir(&j.library, guid);
            if remove_tree(&fin)? {
                removed.push(fin);
            }
        }
    }
    sync_dir(&j.library);
    for d in j.created.iter().rev() {
        // Only if empty: anything placed there since belongs to someone.
        if std::fs::remove_dir(d).is_ok() {
            removed.push(d.clone());
        }
    }
    remove_journal(site_db)?;
    Ok(removed)
}

/// Progress over all bytes to verify in one run; `false` from the callback cancels.
pub(crate) struct Meter<'a, 'b> {
    pub progress: &'a mut ProgressFn<'b>,
    pub done: u64,
    pub total: u64,
}

impl Meter<'_, '_> {
    pub(crate) fn report(&mut self, item: &str, item_done: u64, item_total: u64) -> Result<()> {
        let p = Progress {
            phase: Phase::Import,
            item: item.to_string(),
            item_done,
            item_total,
            done: self.done,
            total: self.total,
        };
        if (self.progress)(&p) {
            Ok(())
        } else {
            Err(Error::cancelled())
        }
    }
}

/// Per-run placement state: the reusable copy buffer and whether reflinks still work.
pub(crate) struct Copier {
    buf: Vec<u8>,
    try_reflink: bool,
    /// Test hook: pause after the first file is placed in a staging folder.
    pub first_file_done: bool,
}

impl Copier {
    pub(crate) fn new() -> Self {
        Copier {
            buf: vec![0u8; BUF_BYTES],
            try_reflink: cfg!(target_os = "linux"),
            first_file_done: false,
        }
    }
}

/// Create a pack's staging folder; one that exists belongs to another run (never ours:
/// recovery removed ours), so it is left alone and the pack refused as busy.
pub(crate) fn create_staging(staging: &Path) -> Result<()> {
    std::fs::create_dir(staging).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::new(
                ErrorKind::Busy,
                format!(
                    "{} already exists: another import is placing this pack",
                    staging.display()
                ),
            )
        } else {
            Error::io(format!("creating {}", staging.display()), &e)
        }
    })
}

/// Copy and verify every file of `manifest` from `root/pack_rel/content/` into the fresh,
/// empty staging folder `staging`, fsyncing files and folders. On error the caller
/// removes `staging`.
pub(crate) fn stage(
    root: &Path,
    pack_rel: &Path,
    manifest: &PackManifest,
    staging: &Path,
    copier: &mut Copier,
    meter: &mut Meter<'_, '_>,
) -> Result<()> {
    let item = manifest.id.to_string();
    let pack_total = manifest.total_size();
    let mut pack_done = 0u64;
    let mut dirs = vec![staging.to_path_buf()];
    meter.report(&item, 0, pack_total)?;
    for f in &manifest.files {
        let rel = f.rel_path()?;
        let dest = staging.join(&rel);
        if let Some(parent) = dest.parent() {
            if !parent.is_dir() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
                let mut p = parent;
                while p != staging && !dirs.iter().any(|d| d == p) {
                    dirs.push(p.to_path_buf());
                    p = p.parent().unwrap_or(staging);
                }
            }
        }
        let shown = format!("{CONTENT_DIR}/{}", f.path);
        let src_rel = pack_rel.join(CONTENT_DIR).join(&rel);
        place_file(
            root,
            &src_rel,
            &shown,
            &dest,
            f.size,
            &f.sha256,
            copier,
            meter,
            &item,
            &mut pack_done,
            pack_total,
        )?;
        if !copier.first_file_done {
            copier.first_file_done = true;
            super::pause_point("staging");
        }
    }
    // Deepest first, so each folder's entries are durable before the folder that names it.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        sync_dir(d);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn place_file(
    root: &Path,
    src_rel: &Path,
    shown: &str,
    dest: &Path,
    size: u64,
    sha256: &str,
    copier: &mut Copier,
    meter: &mut Meter<'_, '_>,
    item: &str,
    pack_done: &mut u64,
    pack_total: u64,
) -> Result<()> {
    let mismatch = |m: String| Error::new(ErrorKind::IntegrityMismatch, m);
    let (mut src, len) = open_regular(root, src_rel, shown)?;
    if len != size {
        return Err(mismatch(format!(
            "{shown} is {len} bytes but the manifest says {size} (truncated or altered)"
        )));
    }
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io(format!("creating {}", dest.display()), &e))?;
    let wio = |e: std::io::Error| Error::io(format!("writing {}", dest.display()), &e);
    // A reflink shares blocks copy-on-write: later changes to the source never reach the
    // clone, and hashing the clone checks exactly what was placed.
    let cloned = copier.try_reflink && size > 0 && reflink(&src, &dst);
    if copier.try_reflink && size > 0 && !cloned {
        copier.try_reflink = false;
    }
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    if cloned {
        dst.seek(SeekFrom::Start(0)).map_err(wio)?;
    }
    loop {
        let read = if cloned {
            dst.read(&mut copier.buf)
        } else {
            src.read(&mut copier.buf)
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {shown}"), &e)),
        };
        count += n as u64;
        if count > size {
            return Err(mismatch(format!(
                "{shown} grew beyond the {size} bytes the manifest states while it was read"
            )));
        }
        hasher.update(&copier.buf[..n]);
        if !cloned {
            dst.write_all(&copier.buf[..n]).map_err(wio)?;
        }
        *pack_done += n as u64;
        meter.done += n as u64;
        meter.report(item, *pack_done, pack_total)?;
    }
    if count != size {
        return Err(mismatch(format!(
            "{shown} is {count} bytes but the manifest says {size} (truncated or altered)"
        )));
    }
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        return Err(mismatch(format!(
            "{shown} does not match its manifest: SHA-256 {got}, expected {sha256} (tampered or corrupt)"
        )));
    }
    dst.sync_all().map_err(wio)?;
    Ok(())
}

/// Clone `src` into the empty `dst` (Linux `FICLONE`: btrfs, XFS, bcachefs…).
/// False when the file system cannot (different device, no reflink support).
#[cfg(target_os = "linux")]
fn reflink(src: &File, dst: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its argument and touches no user memory.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn reflink(_src: &File, _dst: &File) -> bool {
    false
}

/// What one run has put into the content library and not yet committed. Dropped
/// without [`committed`](Placement::committed), it removes all of it (renamed final
/// folders too), the library folders it created if they are empty, and the journal.
/// If any removal fails the journal stays, and the next import's recovery finishes it.
pub(crate) struct Placement {
    site_db: PathBuf,
    pub library: PathBuf,
    created: Vec<PathBuf>,
    pub journaled: bool,
    pub staged: Vec<PathBuf>,
    pub renamed: Vec<PathBuf>,
    committed: bool,
}

impl Placement {
    pub(crate) fn new(site_db: &Path, library: &Path) -> Self {
        Placement {
            site_db: site_db.to_path_buf(),
            library: library.to_path_buf(),
            created: Vec::new(),
            journaled: false,
            staged: Vec::new(),
            renamed: Vec::new(),
            committed: false,
        }
    }

    /// The library folders (and parents) that do not exist yet, outermost first: the
    /// journal names them before they are created so a crashed run's recovery can remove
    /// them again.
    pub(crate) fn missing_library_dirs(&self) -> Vec<PathBuf> {
        let mut missing = Vec::new();
        let mut p = self.library.as_path();
        while !p.as_os_str().is_empty() && p.symlink_metadata().is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        missing.reverse();
        missing
    }

    /// Create the folders [`missing_library_dirs`](Self::missing_library_dirs) named.
    pub(crate) fn create_library(&mut self, missing: &[PathBuf]) -> Result<()> {
        for d in missing {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", d.display()), &e)),
            }
            sync_dir(crate::fsutil::parent_dir(d));
            self.created.push(d.clone());
        }
        if !self.library.is_dir() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} is not a folder", self.library.display()),
            ));
        }
        Ok(())
    }

    /// Remove a staging folder of a refused pack now.
    pub(crate) fn discard(&mut self, staging: &Path) -> Result<()> {
        remove_tree(staging)?;
        self.staged.retain(|s| s != staging);
        Ok(())
    }

    /// The transaction committed: what was renamed stays; only the journal goes.
    pub(crate) fn committed(mut self) -> Result<()> {
        self.committed = true;
        if self.journaled {
            remove_journal(&self.site_db)?;
        }
        Ok(())
    }

    fn undo(&mut self) -> Result<()> {
        for p in self.renamed.iter().chain(self.staged.iter()) {
            remove_tree(p)?;
        }
        sync_dir(&self.library);
        for d in self.created.iter().rev() {
            // Only if still empty: never remove anything another run put there.
            let _ = std::fs::remove_dir(d);
        }
        if self.journaled {
            remove_journal(&self.site_db)?;
        }
        Ok(())
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = self.undo();
        }
    }
}
