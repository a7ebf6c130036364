//! Placing verified content into the site's content library, and undoing what a crashed
//! or refused import left behind. The protocol is described in the parent module.

use super::verify::open_regular;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{sync_dir, OutFile};
use crate::pack::manifest::CONTENT_DIR;
use crate::pack::PackManifest;
use crate::progress::{Phase, Progress, ProgressFn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Suffix of a pack's staging folder (`.<guid>.sct-staging`) in the content library.
pub const STAGING_SUFFIX: &str = ".sct-staging";
/// Suffix of the import journal beside the site database.
pub const JOURNAL_SUFFIX: &str = ".sct-import-journal";

/// Copy buffer: large enough for full-speed sequential I/O, small enough to stay flat.
const BUF_BYTES: usize = 1024 * 1024;
/// What the two-thread pipelines of all of a run's workers hold at most (as many as
/// before the thirteenth round on 8 cores, 8 x 3 x 1 MiB); each worker's share, in
/// [`PIPELINE_BUFFERS`] buffers of 1 to [`MAX_PIPELINE_BUF`] bytes (`pipeline_buf_bytes`).
const PIPELINE_BYTES: usize = 24 << 20;
/// Largest pipeline buffer. A large file placed by hard link costs its hashing alone, and
/// that hashing reaches one core's speed with 4 MiB buffers rather than 1 MiB: Import of a
/// 1 GiB file (cached), alternating runs, medians: 0.80 -> 0.77 s in three sets of 7-11
/// runs, 0.81 -> 0.80 and 0.82 -> 0.78-0.79 s in two more (CPU 0.98-1.02 -> 0.92-0.97 s),
/// quicker or equal in nearly every pair; 8 MiB no better. Likely the cache: a 1 MiB
/// buffer just filled by the reading thread is read by the hashing core out of the other
/// core's cache, a 4 MiB one (larger than that cache) mostly out of the shared one. Copies
/// from another drive are bound by the writes, and the same either way (1.02 / 1.04 s).
const MAX_PIPELINE_BUF: usize = 4 << 20;
/// Files at least this large are copied by two threads (see [`copy_pipelined`]); below
/// it the second thread's start and hand-overs cost more than they save.
const PIPELINE_MIN_BYTES: u64 = 16 << 20;
/// Buffers circulating between the reading and the writing thread of one copy.
const PIPELINE_BUFFERS: usize = 3;

/// Whether one flush of the library's file system after staging (`syncfs`) makes every
/// staged file and folder durable, so none is flushed on its own. Elsewhere (Windows; Unix
/// without `syncfs`) each file is flushed after it is written, as before.
pub(crate) const FLUSH_STAGED_AT_ONCE: bool =
    !crate::platform::FLUSH_EACH_FILE_BEFORE_RENAME && cfg!(target_os = "linux");

/// Make everything staged in `library` durable before the commit names it (one `syncfs`
/// where [`FLUSH_STAGED_AT_ONCE`]; else each file was flushed already and the folder is).
/// `fs`: the library's file system, opened before staging began.
pub(crate) fn flush_staged(library: &Path, fs: &crate::platform::FsFlush) -> Result<()> {
    if FLUSH_STAGED_AT_ONCE {
        fs.flush()
            .map_err(|e| Error::io(format!("flushing {}", library.display()), &e))
    } else {
        sync_dir(library);
        Ok(())
    }
}

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
        crate::site::library::release_if_unused(d);
        // Only if empty: anything placed there since belongs to someone.
        if std::fs::remove_dir(d).is_ok() {
            removed.push(d.clone());
        }
    }
    remove_journal(site_db)?;
    Ok(removed)
}

/// Progress in bytes over one run's packs; `false` from the callback cancels. Import
/// reports two phases through it: `Verify` while staging (every byte is hashed as it is
/// placed in a staging folder: the bytes verified so far), then `Import` while the
/// verified packs are recorded and moved into the content library (the bytes placed).
pub(crate) struct Meter<'a, 'b> {
    pub progress: &'a mut ProgressFn<'b>,
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

impl Meter<'_, '_> {
    pub(crate) fn report(&mut self, item: &str, item_done: u64, item_total: u64) -> Result<()> {
        let p = Progress {
            phase: self.phase,
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

/// Per-run placement state: which ways of placing a file still work on these file systems.
pub(crate) struct Copier {
    try_reflink: AtomicBool,
    try_link: AtomicBool,
    /// Bytes per buffer of a two-thread pipeline ([`pipeline_buf_bytes`] of the workers).
    pipeline_buf: usize,
    /// Test hook: pause after the first file is placed in a staging folder.
    pub first_file_done: bool,
}

impl Copier {
    pub(crate) fn new() -> Self {
        Copier {
            try_reflink: AtomicBool::new(cfg!(target_os = "linux")),
            try_link: AtomicBool::new(cfg!(target_os = "linux")),
            pipeline_buf: BUF_BYTES,
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

/// One file to place.
struct FileJob<'m> {
    src_rel: PathBuf,
    shown: String,
    dest: PathBuf,
    size: u64,
    sha256: &'m str,
}

/// What placing workers tell the thread that reports progress.
enum Msg {
    Bytes(u64),
    Done(usize, Result<()>),
}

/// Copy and verify every file of `manifest` from `root/pack_rel/content/` into the fresh,
/// empty staging folder `staging` (made durable by [`flush_staged`] afterwards, or here
/// file by file where the platform cannot flush a file system at once). On error the caller
/// removes `staging`.
///
/// Files are placed by one worker per core (hashing is the bottleneck and SHA-256 of one
/// file cannot be split); progress and cancellation stay on this thread. When several
/// files fail, the error of the first in manifest order is returned.
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
    let mut jobs = Vec::with_capacity(manifest.files.len());
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
        jobs.push(FileJob {
            shown: format!("{CONTENT_DIR}/{}", f.path),
            src_rel: pack_rel.join(CONTENT_DIR).join(&rel),
            dest,
            size: f.size,
            sha256: &f.sha256,
        });
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(jobs.len().max(1));
    copier.pipeline_buf = pipeline_buf_bytes(workers);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let shared: &Copier = copier;
    let mut failures: Vec<(usize, Error)> = Vec::new();
    let mut cancel: Option<Error> = None;
    let mut first_done = shared.first_file_done;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Msg>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (jobs, next, stop) = (&jobs, &next, &stop);
            scope.spawn(move || {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(j) = jobs.get(i) else { break };
                    let res = place_file(root, j, &mut buf, shared, &mut |n| {
                        let _ = tx.send(Msg::Bytes(n));
                        !stop.load(Ordering::Relaxed)
                    });
                    if res.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let _ = tx.send(Msg::Done(i, res));
                }
            });
        }
        drop(tx);
        for msg in rx {
            match msg {
                Msg::Bytes(n) => {
                    pack_done += n;
                    meter.done += n;
                    if cancel.is_none() {
                        if let Err(e) = meter.report(&item, pack_done, pack_total) {
                            stop.store(true, Ordering::Relaxed);
                            cancel = Some(e);
                        }
                    }
                }
                Msg::Done(i, Err(e)) => failures.push((i, e)),
                Msg::Done(_, Ok(())) => {
                    if !first_done {
                        first_done = true;
                        super::pause_point("staging");
                    }
                }
            }
        }
    });
    copier.first_file_done = first_done;
    // A worker stopped by a cancellation reports it as an error of its own; the first
    // real failure in manifest order wins, then the cancellation.
    failures.sort_by_key(|(i, _)| *i);
    if let Some((_, e)) = failures
        .into_iter()
        .find(|(_, e)| e.kind() != ErrorKind::Cancelled)
    {
        return Err(e);
    }
    if let Some(e) = cancel {
        return Err(e);
    }
    if next.load(Ordering::Relaxed) < jobs.len() {
        return Err(Error::cancelled());
    }
    if !FLUSH_STAGED_AT_ONCE {
        // Deepest first, so each folder's entries are durable before the folder that names it.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            sync_dir(d);
        }
    }
    Ok(())
}

/// Place one file and check its size and SHA-256, reading what was placed. In order of
/// preference: a reflink (copy-on-write clone), a hard link to the very file opened (same
/// file system: no data is copied or written, and the hash is of the placed inode), or a
/// copy. `on_bytes` is told of progress and returns false to cancel. `bufs`: the calling
/// worker's buffers, reused from file to file (filled here as needed).
fn place_file(
    root: &Path,
    job: &FileJob<'_>,
    bufs: &mut Vec<Vec<u8>>,
    copier: &Copier,
    on_bytes: &mut dyn FnMut(u64) -> bool,
) -> Result<()> {
    let (shown, dest, size) = (job.shown.as_str(), job.dest.as_path(), job.size);
    let mismatch = |m: String| Error::new(ErrorKind::IntegrityMismatch, m);
    let (mut src, len) = open_regular(root, &job.src_rel, shown)?;
    if len != size {
        return Err(mismatch(format!(
            "{shown} is {len} bytes but the manifest says {size} (truncated or altered)"
        )));
    }
    let wio = |e: std::io::Error| Error::io(format!("writing {}", dest.display()), &e);
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), &e))
    };
    let mut placed = false;
    let mut linked = false;
    let mut dst = None;
    // A reflink shares blocks copy-on-write: later changes to the source never reach the
    // clone, and hashing the clone checks exactly what was placed.
    if size > 0 && copier.try_reflink.load(Ordering::Relaxed) {
        let f = create()?;
        placed = crate::platform::reflink(&src, &f);
        if !placed {
            copier.try_reflink.store(false, Ordering::Relaxed);
        }
        dst = Some(f);
    }
    if !placed && size > 0 && copier.try_link.load(Ordering::Relaxed) {
        if dst.take().is_some() {
            std::fs::remove_file(dest)
                .map_err(|e| Error::io(format!("removing {}", dest.display()), &e))?;
        }
        placed = crate::platform::hard_link_open_file(&src, &root.join(&job.src_rel), dest);
        linked = placed;
        if placed {
            dst = Some(
                File::open(dest)
                    .map_err(|e| Error::io(format!("opening {}", dest.display()), &e))?,
            );
        } else {
            copier.try_link.store(false, Ordering::Relaxed);
        }
    }
    let mut dst = match dst {
        Some(f) => f,
        None => create()?,
    };
    let mut hasher = Sha256::new();
    if bufs.is_empty() {
        bufs.push(vec![0u8; BUF_BYTES]);
    }
    let count = if placed {
        dst.seek(SeekFrom::Start(0)).map_err(wio)?;
        if size >= PIPELINE_MIN_BYTES {
            hash_pipelined(
                &mut dst,
                bufs,
                copier.pipeline_buf,
                &mut hasher,
                size,
                shown,
                on_bytes,
            )?
        } else {
            hash_file(
                &mut dst,
                &mut bufs[0],
                &mut hasher,
                size,
                shown,
                None,
                on_bytes,
            )?
        }
    } else if size >= PIPELINE_MIN_BYTES {
        copy_pipelined(
            &mut src,
            &dst,
            bufs,
            copier.pipeline_buf,
            &mut hasher,
            size,
            shown,
            dest,
            on_bytes,
        )?
    } else {
        // Past the page cache too (`OutFile`), as the large files and Connect's downloads
        // are written: a page cache page costs its allocation and a copy, and where the
        // machine's free memory has gone back to a virtual machine's host, bringing each
        // fresh page back (13-27 µs per 4 KiB on the benchmark's machines: 1,000 files of
        // 1 MiB from another drive took 2.9-3.1 s and 4.6-5.2 CPU-s through the page
        // cache, see benches/HISTORY.md, eighteenth round).
        let mut out = OutFile::new(dst.try_clone().map_err(wio)?, 0);
        let n = hash_file(
            &mut src,
            &mut bufs[0],
            &mut hasher,
            size,
            shown,
            Some((&mut out, dest)),
            on_bytes,
        )?;
        out.flush().map_err(wio)?;
        n
    };
    if count != size {
        return Err(mismatch(format!(
            "{shown} is {count} bytes but the manifest says {size} (truncated or altered)"
        )));
    }
    let got = hex::encode(hasher.finalize());
    if got != job.sha256 {
        return Err(mismatch(format!(
            "{shown} does not match its manifest: SHA-256 {got}, expected {} (tampered or corrupt)",
            job.sha256
        )));
    }
    if FLUSH_STAGED_AT_ONCE {
        // Made durable with everything staged, before the commit (`flush_staged`).
    } else if linked {
        // Opened for reading only: nothing was written through it.
        crate::platform::sync_read_only(&dst).map_err(wio)?;
    } else {
        dst.sync_all().map_err(wio)?;
    }
    Ok(())
}

fn read_some(from: &mut File, buf: &mut [u8], shown: &str) -> Result<usize> {
    loop {
        match from.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {shown}"), &e)),
        }
    }
}

/// Each worker's share of [`PIPELINE_BYTES`], per buffer: 4 MiB up to 2 workers, 2 MiB
/// with 4, 1 MiB from 8.
fn pipeline_buf_bytes(workers: usize) -> usize {
    (PIPELINE_BYTES / (PIPELINE_BUFFERS * workers.max(1))).clamp(BUF_BYTES, MAX_PIPELINE_BUF)
}

/// `bufs` made into [`PIPELINE_BUFFERS`] buffers of `bytes` each, reusing what is there
/// (the size is the same for a whole run, so they grow once).
fn pipeline_buffers(bufs: &mut Vec<Vec<u8>>, bytes: usize) {
    bufs.truncate(PIPELINE_BUFFERS);
    for b in bufs.iter_mut() {
        b.resize(bytes, 0);
    }
    while bufs.len() < PIPELINE_BUFFERS {
        bufs.push(vec![0u8; bytes]);
    }
}

fn grew(shown: &str, size: u64) -> Error {
    Error::new(
        ErrorKind::IntegrityMismatch,
        format!("{shown} grew beyond the {size} bytes the manifest states while it was read"),
    )
}

/// Read `from` to its end (never beyond `size` bytes), hashing, and writing each piece to
/// `to` when given (a copy on one thread). Returns the bytes read.
fn hash_file(
    from: &mut File,
    buf: &mut [u8],
    hasher: &mut Sha256,
    size: u64,
    shown: &str,
    mut to: Option<(&mut OutFile, &Path)>,
    on_bytes: &mut dyn FnMut(u64) -> bool,
) -> Result<u64> {
    let mut count = 0u64;
    loop {
        let n = read_some(from, buf, shown)?;
        if n == 0 {
            return Ok(count);
        }
        count += n as u64;
        if count > size {
            return Err(grew(shown, size));
        }
        hasher.update(&buf[..n]);
        if let Some((f, dest)) = &mut to {
            f.write(&buf[..n])
                .map_err(|e| Error::io(format!("writing {}", dest.display()), &e))?;
        }
        if !on_bytes(n as u64) {
            return Err(Error::cancelled());
        }
    }
}

/// Copy `from` into `to` on two threads: this one reads and hashes a buffer while a
/// writer writes the one before, so a large file costs the longer of the two, not their
/// sum. The writer writes through [`OutFile`]: on Linux past the page cache, which the
/// copy would only fill (a 1 GiB file from another drive 1.68-1.73 -> 0.82 s, CPU
/// 2.1-2.2 -> 0.93 s). The hash is of the bytes read, and the writer writes exactly those
/// bytes (the same buffer), so it covers what was placed. [`PIPELINE_BUFFERS`] buffers
/// circulate and come back to `bufs`: memory is fixed. Returns the bytes read.
#[allow(clippy::too_many_arguments)]
fn copy_pipelined(
    from: &mut File,
    to: &File,
    bufs: &mut Vec<Vec<u8>>,
    buf_bytes: usize,
    hasher: &mut Sha256,
    size: u64,
    shown: &str,
    dest: &Path,
    on_bytes: &mut dyn FnMut(u64) -> bool,
) -> Result<u64> {
    pipeline_buffers(bufs, buf_bytes);
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(PIPELINE_BUFFERS);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for b in bufs.drain(..) {
        let _ = empty_tx.send(b);
    }
    let mut count = 0u64;
    let (read, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            // On Linux past the page cache (`O_DIRECT`), as Connect writes: see `OutFile`.
            let mut out = OutFile::new(to.try_clone()?, 0);
            for (buf, n) in full_rx {
                out.write(&buf[..n])?;
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            out.flush()
        });
        let read = (|| -> Result<()> {
            // No buffer back: the writer stopped (its error is the one reported).
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_some(from, &mut buf, shown)?;
                if n == 0 {
                    bufs.push(buf);
                    return Ok(());
                }
                count += n as u64;
                if count > size {
                    return Err(grew(shown, size));
                }
                hasher.update(&buf[..n]);
                if full_tx.send((buf, n)).is_err() {
                    return Ok(());
                }
                if !on_bytes(n as u64) {
                    return Err(Error::cancelled());
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writing thread panicked")));
        (read, written)
    });
    bufs.extend(empty_rx.try_iter());
    written.map_err(|e| Error::io(format!("writing {}", dest.display()), &e))?;
    read?;
    Ok(count)
}

/// Hash `from` to its end (never beyond `size` bytes) on two threads: a reader fills the
/// next buffer while this thread hashes the one before, so a large placed file (a hard
/// link or reflink, nothing to write) costs its hashing alone, not reading plus hashing:
/// one file's SHA-256 cannot be split, so this is the limit for a single large file.
/// [`PIPELINE_BUFFERS`] buffers circulate and come back to `bufs`. Returns the bytes read.
fn hash_pipelined(
    from: &mut File,
    bufs: &mut Vec<Vec<u8>>,
    buf_bytes: usize,
    hasher: &mut Sha256,
    size: u64,
    shown: &str,
    on_bytes: &mut dyn FnMut(u64) -> bool,
) -> Result<u64> {
    pipeline_buffers(bufs, buf_bytes);
    // As many slots as buffers: the reader never waits to hand one over.
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, Result<usize>)>(PIPELINE_BUFFERS);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for b in bufs.drain(..) {
        let _ = empty_tx.send(b);
    }
    let mut count = 0u64;
    let (hashed, spare) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            // Reads until the end of the file or an error, then keeps the buffers that
            // come back until the hashing side lets go, and returns them.
            let (mut read, mut done, mut spare) = (0u64, false, Vec::new());
            for mut buf in empty_rx.iter() {
                if done {
                    spare.push(buf);
                    continue;
                }
                let r = read_some(from, &mut buf, shown);
                match &r {
                    Ok(n) => {
                        read += *n as u64;
                        done = *n == 0 || read > size;
                    }
                    Err(_) => done = true,
                }
                if let Err(mpsc::SendError((buf, _))) = full_tx.send((buf, r)) {
                    spare.push(buf);
                    done = true;
                }
            }
            spare
        });
        let hashed = (|| -> Result<()> {
            for (buf, r) in &full_rx {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        bufs.push(buf);
                        return Err(e);
                    }
                };
                let stop = if n == 0 {
                    Some(Ok(()))
                } else {
                    count += n as u64;
                    if count > size {
                        Some(Err(grew(shown, size)))
                    } else {
                        hasher.update(&buf[..n]);
                        (!on_bytes(n as u64)).then(|| Err(Error::cancelled()))
                    }
                };
                match stop {
                    Some(end) => {
                        bufs.push(buf);
                        return end;
                    }
                    None => {
                        let _ = empty_tx.send(buf);
                    }
                }
            }
            Err(Error::internal("the reading thread stopped unexpectedly"))
        })();
        drop(empty_tx);
        (hashed, reader.join().unwrap_or_default())
    });
    bufs.extend(spare);
    bufs.extend(full_rx.try_iter().map(|(b, _)| b));
    hashed?;
    Ok(count)
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
    /// The content library's owner file, when this run wrote it (`site::library::claim`).
    pub claimed: Option<PathBuf>,
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
            claimed: None,
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
        if let Some(owner) = self.claimed.take() {
            let _ = std::fs::remove_file(owner);
        }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A copier that never tries a reflink and hard-links only if `link`.
    fn test_copier(link: bool) -> Copier {
        Copier {
            try_reflink: AtomicBool::new(false),
            try_link: AtomicBool::new(link),
            pipeline_buf: BUF_BYTES,
            first_file_done: false,
        }
    }

    /// Both ways of placing (copy, hard link) deliver the bytes, report every byte, and
    /// refuse content that does not match its hash (the caller removes the staging folder).
    #[test]
    fn copy_and_hard_link_both_verify_what_they_place() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        let src = d.path().join("src/a.bin");
        std::fs::write(&src, b"hello world").unwrap();
        let good = crate::hashing::sha256_hex(b"hello world");
        let bad = crate::hashing::sha256_hex(b"something else");
        for link in [false, true] {
            for sha in [&good, &bad] {
                let dest = d.path().join(format!("out-{link}-{}.bin", &sha[..8]));
                let copier = test_copier(link);
                let job = FileJob {
                    src_rel: PathBuf::from("src/a.bin"),
                    shown: "content/a.bin".into(),
                    dest: dest.clone(),
                    size: 11,
                    sha256: sha,
                };
                let mut bufs = vec![vec![0u8; 4]];
                let mut seen = 0;
                let res = place_file(d.path(), &job, &mut bufs, &copier, &mut |n| {
                    seen += n;
                    true
                });
                assert_eq!(seen, 11);
                if sha == &good {
                    res.unwrap();
                    assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
                    let same = std::fs::metadata(&dest).unwrap().ino()
                        == std::fs::metadata(&src).unwrap().ino();
                    assert_eq!(same, link, "hard link used only when allowed");
                } else {
                    let e = res.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
                    assert!(e.message().contains("does not match its manifest"), "{e}");
                }
            }
        }
        assert_eq!(std::fs::read(&src).unwrap(), b"hello world");
    }

    /// A large copy (two threads) delivers every byte and checks its hash, and on Linux
    /// goes past the page cache (`OutFile`): at most the last partial page is cached. Fails
    /// on the earlier buffered copy, which left the whole file cached.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_copy_goes_past_the_page_cache() {
        use crate::fsutil::test_support::{cached_bytes, direct_dir};
        let Some(d) = direct_dir("a copy past the page cache") else {
            return;
        };
        std::fs::create_dir(d.path().join("src")).unwrap();
        let src = d.path().join("src/big.bin");
        let size = PIPELINE_MIN_BYTES as usize + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let sha = crate::hashing::sha256_hex(&data);
        let dest = d.path().join("out.bin");
        let job = FileJob {
            src_rel: PathBuf::from("src/big.bin"),
            shown: "content/big.bin".into(),
            dest: dest.clone(),
            size: size as u64,
            sha256: &sha,
        };
        let mut bufs = Vec::new();
        let mut seen = 0;
        place_file(d.path(), &job, &mut bufs, &test_copier(false), &mut |n| {
            seen += n;
            true
        })
        .unwrap();
        assert_eq!(seen, size as u64);
        let cached = cached_bytes(&dest);
        assert!(
            cached <= 4096,
            "{cached} of {size} copied bytes went through the page cache"
        );
        assert!(std::fs::read(&dest).unwrap() == data, "the copy differs");
    }

    /// A cancelled placement stops with `Cancelled`.
    #[test]
    fn placing_stops_when_cancelled() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), vec![7u8; 64]).unwrap();
        let sha = crate::hashing::sha256_hex(&[7u8; 64]);
        let copier = Copier::new();
        let job = FileJob {
            src_rel: PathBuf::from("a.bin"),
            shown: "content/a.bin".into(),
            dest: d.path().join("b.bin"),
            size: 64,
            sha256: &sha,
        };
        let mut bufs = vec![vec![0u8; 8]];
        let e = place_file(d.path(), &job, &mut bufs, &copier, &mut |_| false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }

    /// A large file placed by hard link is hashed by the two-thread reader: every byte
    /// is reported, a wrong hash and a cancellation are refused, a file longer than the
    /// manifest says is caught, and the buffers come back for the next file; with the
    /// smallest and the largest pipeline buffers.
    #[test]
    fn large_linked_files_are_hashed_on_two_threads() {
        for buf_bytes in [BUF_BYTES, MAX_PIPELINE_BUF] {
            large_linked_files_are_hashed_on_two_threads_with(buf_bytes);
        }
    }

    fn large_linked_files_are_hashed_on_two_threads_with(buf_bytes: usize) {
        let d = tempfile::tempdir().unwrap();
        let size = PIPELINE_MIN_BYTES as usize + 5 * BUF_BYTES / 2 + 3;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(d.path().join("big.bin"), &data).unwrap();
        let good = crate::hashing::sha256_hex(&data);
        let bad = crate::hashing::sha256_hex(b"other");
        let mut bufs = Vec::new();
        // (hash, size the manifest states, cancel after this many bytes)
        let cases = [
            (&good, size as u64, u64::MAX),
            (&bad, size as u64, u64::MAX),
            (&good, size as u64, 3 * BUF_BYTES as u64),
            (&good, size as u64 - 1, u64::MAX),
            (&good, size as u64, u64::MAX),
        ];
        for (i, (sha, stated, cancel_at)) in cases.into_iter().enumerate() {
            let mut copier = test_copier(true);
            copier.pipeline_buf = buf_bytes;
            let dest = d.path().join(format!("out{i}.bin"));
            let job = FileJob {
                src_rel: PathBuf::from("big.bin"),
                shown: "content/big.bin".into(),
                dest: dest.clone(),
                size: stated,
                sha256: sha,
            };
            let mut seen = 0u64;
            let res = if stated == size as u64 {
                place_file(d.path(), &job, &mut bufs, &copier, &mut |n| {
                    seen += n;
                    seen < cancel_at
                })
            } else {
                // The file no longer matches the stated size when it is opened, so this
                // case goes straight to the reader with a smaller limit.
                let mut f = File::open(d.path().join("big.bin")).unwrap();
                let mut hasher = Sha256::new();
                hash_pipelined(
                    &mut f,
                    &mut bufs,
                    buf_bytes,
                    &mut hasher,
                    stated,
                    "big",
                    &mut |_| true,
                )
                .map(|_| ())
            };
            match i {
                0 | 4 => {
                    res.unwrap();
                    assert_eq!(seen, size as u64);
                    let (a, b) = (
                        std::fs::metadata(&dest).unwrap(),
                        std::fs::metadata(d.path().join("big.bin")).unwrap(),
                    );
                    assert_eq!(a.ino(), b.ino(), "placed by hard link");
                }
                1 => assert_eq!(res.unwrap_err().kind(), ErrorKind::IntegrityMismatch),
                2 => assert_eq!(res.unwrap_err().kind(), ErrorKind::Cancelled),
                _ => {
                    let e = res.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
                    assert!(e.to_string().contains("grew"), "{e}");
                }
            }
            assert_eq!(bufs.len(), PIPELINE_BUFFERS, "case {i}: buffers came back");
            assert!(
                bufs.iter().all(|b| b.len() == buf_bytes),
                "case {i}: buffer sizes"
            );
        }
    }

    /// A large file is copied by the two-thread pipeline: the bytes arrive in order, every
    /// byte is reported, a wrong hash is refused, a cancellation stops it, and the buffers
    /// come back for the next file; with the smallest and the largest pipeline buffers.
    #[test]
    fn large_copies_are_pipelined_and_verified() {
        for buf_bytes in [BUF_BYTES, MAX_PIPELINE_BUF] {
            large_copies_are_pipelined_and_verified_with(buf_bytes);
        }
    }

    fn large_copies_are_pipelined_and_verified_with(buf_bytes: usize) {
        let d = tempfile::tempdir().unwrap();
        let size = PIPELINE_MIN_BYTES as usize + 3 * BUF_BYTES / 2 + 7;
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(d.path().join("big.bin"), &data).unwrap();
        let good = crate::hashing::sha256_hex(&data);
        let bad = crate::hashing::sha256_hex(b"other");
        let mut bufs = Vec::new();
        for (i, sha) in [&good, &bad, &good].into_iter().enumerate() {
            let mut copier = test_copier(false);
            copier.pipeline_buf = buf_bytes;
            let dest = d.path().join(format!("out{i}.bin"));
            let job = FileJob {
                src_rel: PathBuf::from("big.bin"),
                shown: "content/big.bin".into(),
                dest: dest.clone(),
                size: size as u64,
                sha256: sha,
            };
            let mut seen = 0u64;
            let cancel_at = if i == 2 {
                4 * BUF_BYTES as u64
            } else {
                u64::MAX
            };
            let res = place_file(d.path(), &job, &mut bufs, &copier, &mut |n| {
                seen += n;
                seen < cancel_at
            });
            match i {
                0 => {
                    res.unwrap();
                    assert_eq!(seen, size as u64);
                    assert!(std::fs::read(&dest).unwrap() == data, "copy differs");
                }
                1 => {
                    let e = res.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
                }
                _ => assert_eq!(res.unwrap_err().kind(), ErrorKind::Cancelled),
            }
            assert!(!bufs.is_empty() && bufs.len() <= PIPELINE_BUFFERS);
        }
    }

    /// Each worker gets its share of the pipelines' budget, never more than the budget in
    /// all (from 8 workers the 1 MiB floor is the rule, as before the budget), 1-4 MiB.
    #[test]
    fn pipeline_buffers_share_one_budget() {
        for workers in 1..=8 {
            let b = pipeline_buf_bytes(workers);
            assert!(
                (BUF_BYTES..=MAX_PIPELINE_BUF).contains(&b),
                "{workers}: {b}"
            );
            assert!(
                workers * PIPELINE_BUFFERS * b <= PIPELINE_BYTES,
                "{workers}: {b}"
            );
        }
        assert_eq!(pipeline_buf_bytes(1), MAX_PIPELINE_BUF);
        assert_eq!(pipeline_buf_bytes(2), MAX_PIPELINE_BUF);
        assert_eq!(pipeline_buf_bytes(8), BUF_BYTES);
        let mut bufs = vec![vec![1u8; 10]; 5];
        pipeline_buffers(&mut bufs, BUF_BYTES);
        assert_eq!(bufs.len(), PIPELINE_BUFFERS);
        assert!(bufs.iter().all(|b| b.len() == BUF_BYTES));
    }
}
