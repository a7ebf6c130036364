//! The download half of Connect: for each offered pack, fetch and check its manifest and
//! signature, download every content file (bounded parallelism across all packs),
//! verify, then write the signature and — last — the manifest.
//!
//! Per-file protocol (resumable, verified):
//! 1. A file already at its final name is hashed: size and SHA-256 right → `AlreadyComplete`,
//!    nothing transferred; wrong → moved to its `.sct-partial` name and treated as below.
//! 2. An existing `<name>.sct-partial` is hashed (its bytes so far) and continued with
//!    `Range: bytes=N-` and `If-Range: "<sha256>"` (the manifest hash, which the service
//!    sends as the strong `ETag`). `206` with the right `Content-Range` appends; `200`
//!    (the service ignored the range or the file changed) restarts from zero; `416`
//!    restarts from zero.
//! 3. Bytes are hashed and written to the partial file as they arrive, by two threads of
//!    the file's own (`sink.rs`); a connection that fails mid-way is resumed from the
//!    bytes received, with backoff.
//! 4. Size and hash right → rename to the final name (made durable per pack, before the
//!    manifest, with one `syncfs`). Wrong → the partial is
//!    discarded and the file fetched again, at most [`MAX_FETCHES`] times, then reported.

use super::client::{Activity, Failure};
use super::sink::{Place, Sink};
use super::{Ctx, FileReport, FileStatus, PackReport, PackStatus, Throttle};
use crate::api::OfferedPack;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{self, ensure_no_symlinks, PARTIAL_SUFFIX};
use crate::hashing::sha256_hex;
use crate::pack::manifest::{CONTENT_DIR, MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE};
use crate::pack::{PackFile, PackManifest};
use crate::progress::Phase;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Complete downloads of one file whose bytes do not match the manifest before giving up.
pub(crate) const MAX_FETCHES: u32 = 3;
/// An attempt that moved this many bytes counts as progress: the transient-failure
/// counter starts again, so a long transfer over a flaky link is not abandoned.
const PROGRESS_RESETS_ATTEMPTS: u64 = 1024 * 1024;
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// `<dest>/<hierarchy>/<guid>`.
pub(crate) fn pack_dir(dest: &Path, hierarchy: uuid::Uuid, id: uuid::Uuid) -> PathBuf {
    dest.join(hierarchy.to_string()).join(id.to_string())
}

/// Download one pack into `<dest>/<hierarchy>/<guid>`. `Err` only when cancelled; every
/// other failure is in the returned report. `local`: the same pack's folder for another
/// hierarchy, already downloaded in this run; files there that verify are copied instead
/// of fetched again.
pub(crate) async fn run_pack(
    ctx: Arc<Ctx>,
    hierarchy: uuid::Uuid,
    offer: OfferedPack,
    local: Option<PathBuf>,
) -> Result<PackReport> {
    let rel_dir = PathBuf::from(hierarchy.to_string()).join(offer.id.to_string());
    let dir = ctx.dest.join(&rel_dir);
    let mut report = PackReport {
        hierarchy_id: hierarchy,
        package_guid: offer.id,
        name: offer.name.clone(),
        version: offer.version.to_string(),
        pack_type: offer.pack_type.as_str().to_string(),
        size: offer.size,
        path: dir.clone(),
        status: PackStatus::Failed,
        files: Vec::new(),
        message: None,
        kind: None,
    };
    let fail = |mut report: PackReport, e: Error| -> Result<PackReport> {
        if e.kind() == ErrorKind::Cancelled {
            return Err(e);
        }
        report.kind = Some(e.kind());
        report.message = Some(e.message().to_string());
        Ok(report)
    };
    let (manifest_bytes, manifest, signature) = match fetch_meta(&ctx, &offer).await {
        Ok(m) => m,
        Err(e) => {
            // Nothing of this pack will come: take it out of the overall total.
            ctx.events.sub_total(offer.size);
            return fail(report, e);
        }
    };
    // Add before subtracting, so the overall total never dips below what is done.
    ctx.events.add_total(manifest.total_size());
    ctx.events.sub_total(offer.size);
    report.size = manifest.total_size();

    // The folder: no link anywhere below the destination, and no manifest while the
    // content is being worked on (a manifest means "complete").
    let prepared = (|| -> Result<bool> {
        ensure_no_symlinks(&ctx.dest, &rel_dir.join(CONTENT_DIR))?;
        std::fs::create_dir_all(dir.join(CONTENT_DIR))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let unchanged = std::fs::read(&manifest_path).ok().as_deref() == Some(&manifest_bytes[..])
            && std::fs::read(dir.join(SIGNATURE_FILE)).ok().as_deref()
                == Some(signature.as_bytes());
        remove_stale_temporaries(&dir)?;
        match std::fs::remove_file(&manifest_path) {
            Ok(()) => crate::fsutil::sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing {}", manifest_path.display()),
                    &e,
                ))
            }
        }
        Ok(unchanged)
    })();
    let unchanged = match prepared {
        Ok(u) => u,
        Err(e) => return fail(report, e),
    };
    // Opened before the first byte is written, so the flush reports any write error since.
    let pack_fs = match crate::platform::FsFlush::open(&dir) {
        Ok(f) => f,
        Err(e) => return fail(report, Error::io(format!("opening {}", dir.display()), &e)),
    };

    let mut tasks = Vec::new();
    for file in &manifest.files {
        let ctx = ctx.clone();
        let job = FileJob {
            url: content_url(&offer, &file.path),
            item: format!("{}/{}", offer.id, file.path),
            pack_dir: dir.clone(),
            rel: rel_dir.clone(),
            file: file.clone(),
            local: local.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let mut turn = Turn::transferring(&ctx.slots, &ctx.finishing).await;
            download_file(&ctx, &job, &mut turn).await
        }));
    }
    let mut cancelled = false;
    for t in tasks {
        match t.await {
            Ok(Ok(fr)) => report.files.push(fr),
            Ok(Err(_)) => cancelled = true,
            Err(e) => return Err(Error::internal(format!("a download task failed: {e}"))),
        }
    }
    if cancelled || ctx.http.cancel.is_cancelled() {
        return Err(Error::cancelled());
    }
    let failed: Vec<&FileReport> = report
        .files
        .iter()
        .filter(|f| f.status == FileStatus::Failed)
        .collect();
    if let Some(first) = failed.first() {
        report.kind = first.kind;
        report.message = Some(format!(
            "{} of {} files could not be downloaded; the first: {}: {}",
            failed.len(),
            report.files.len(),
            first.path,
            first.message.as_deref().unwrap_or("failed")
        ));
        return Ok(report);
    }
    // Every file verified: make the content durable in one go (each file was only
    // renamed, not fsynced: a file at its final name is re-hashed by every later run and
    // by Import, so durability is needed only before the manifest says "complete"),
    // then the signature, then the manifest that marks the pack complete.
    if let Err(e) = pack_fs.flush() {
        return fail(report, Error::io(format!("flushing {}", dir.display()), &e));
    }
    let written = write_small(&dir.join(SIGNATURE_FILE), signature.as_bytes())
        .and_then(|()| write_small(&dir.join(MANIFEST_FILE), &manifest_bytes));
    if let Err(e) = written {
        return fail(report, e);
    }
    let all_there = report
        .files
        .iter()
        .all(|f| f.status == FileStatus::AlreadyComplete);
    report.status = if all_there && unchanged {
        PackStatus::AlreadyComplete
    } else {
        PackStatus::Downloaded
    };
    Ok(report)
}

/// Remove temporary files a killed run left at the top of a pack folder (the manifest's
/// and signature's `.<name>.*.sct-partial`): nothing trusts them, but Import refuses a pack
/// folder holding anything it does not expect. Content partials are kept for resuming.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = [MANIFEST_FILE, SIGNATURE_FILE]
            .iter()
            .any(|f| name.starts_with(&format!(".{f}.")));
        if ours && name.ends_with(PARTIAL_SUFFIX) {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::io(format!("removing {}", entry.path().display()), &e))?;
        }
    }
    Ok(())
}

fn write_small(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = crate::fsutil::AtomicFile::create(path, true)?;
    f.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.commit()
}

/// The content URL of a manifest path: the offered prefix plus the path, each segment
/// percent-encoded.
fn content_url(offer: &OfferedPack, path: &str) -> String {
    let encoded: Vec<String> = path.split('/').map(percent_encode).collect();
    format!(
        "{}/{}",
        offer.content_url.trim_end_matches('/'),
        encoded.join("/")
    )
}

fn percent_encode(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The manifest (checked against the offer: hash, parse, id) and its signature (must exist
/// and be a well-formed minisign signature; Import verifies it against the site's keys).
async fn fetch_meta(ctx: &Ctx, offer: &OfferedPack) -> Result<(Vec<u8>, PackManifest, String)> {
    let what = format!("pack {} ({})", offer.id, offer.name);
    let bytes = {
        let _permit = ctx.slots.acquire().await;
        fetch_small(
            ctx,
            &offer.manifest_url,
            &format!("{what}: manifest"),
            MAX_MANIFEST_BYTES,
        )
        .await?
    };
    let sha = sha256_hex(&bytes);
    if !sha.eq_ignore_ascii_case(&offer.manifest_sha256) {
        return Err(Error::new(
            ErrorKind::IntegrityMismatch,
            format!(
                "{what}: the manifest served has SHA-256 {sha}, but the service offered {}",
                offer.manifest_sha256
            ),
        ));
    }
    let manifest = PackManifest::from_bytes(&bytes).map_err(|e| e.context(&what))?;
    if manifest.id != offer.id {
        return Err(Error::new(
            ErrorKind::InvalidManifest,
            format!("{what}: the manifest is for pack {}", manifest.id),
        ));
    }
    let sig = {
        let _permit = ctx.slots.acquire().await;
        fetch_small(
            ctx,
            &offer.signature_url,
            &format!("{what}: signature"),
            MAX_SIGNATURE_BYTES,
        )
        .await
    };
    let sig = match sig {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::new(
                ErrorKind::SignatureInvalid,
                format!("{what}: the service has no signature for this pack ({SIGNATURE_FILE} is missing), so it could never be imported"),
            ))
        }
        Err(e) => return Err(e),
    };
    let sig = String::from_utf8(sig).map_err(|_| {
        Error::new(
            ErrorKind::SignatureInvalid,
            format!("{what}: the signature is not text"),
        )
    })?;
    minisign::SignatureBox::from_string(&sig).map_err(|e| {
        Error::new(
            ErrorKind::SignatureInvalid,
            format!("{what}: the signature is malformed: {e}"),
        )
    })?;
    Ok((bytes, manifest, sig))
}

/// GET a small document; a 404 becomes `NotFound`.
pub(crate) async fn fetch_small(ctx: &Ctx, path: &str, what: &str, limit: u64) -> Result<Vec<u8>> {
    let url = ctx.http.url(path).map_err(|e| e.context(what))?;
    let resp = ctx
        .http
        .send_with_retry(what, |_| Ok(ctx.http.get(url.clone())))
        .await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = ctx
        .http
        .read_small(resp, limit)
        .await
        .map_err(|f| f.error.context(what))?;
    if status == StatusCode::NOT_FOUND {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("{what}: the service has no such document (404)"),
        ));
    }
    if !status.is_success() {
        return Err(ctx.http.status_failure(status, &headers, what, &body).error);
    }
    Ok(body)
}

struct FileJob {
    url: String,
    item: String,
    pack_dir: PathBuf,
    /// `<hierarchy>/<guid>` below the destination.
    rel: PathBuf,
    file: PackFile,
    /// Another hierarchy's folder of the same pack, to copy a verified file from.
    local: Option<PathBuf>,
}

/// A download's place in the run: one of the transfer slots ([`Ctx::slots`]) while it
/// asks for and receives bytes, one of the finishing places ([`Ctx::finishing`]) once
/// every byte has arrived and is being hashed, written and moved into place. Giving the
/// transfer slot to the next file then, instead of once the file is in place, keeps the
/// slots receiving: in a pack of many small files each slot otherwise sat idle between
/// a file's last byte and the next request, while that file's last write and rename
/// were waited for. 1,000 files of about 1 MiB 1.115 -> 0.97 s, 5,000 files of 4-64 KiB
/// 1.39 -> 1.18 s, a 1 GiB file the same (alternating runs, medians of six and five).
///
/// Memory stays bounded: a finishing file holds no more than it had in flight, so at
/// most twice as many files' batches exist as with the slots alone (peak RSS of 1,000
/// files 29-30 -> 35-37 MiB, of 200 files of 4 MiB 28-30 -> 36-39 MiB).
///
/// It never waits for one kind of place while holding the other: a finishing download
/// that must fetch again (its bytes did not verify) gives its finishing place back
/// before it waits for a transfer slot, so two downloads cannot each wait for the
/// other's.
struct Turn<'a> {
    slots: &'a tokio::sync::Semaphore,
    finishing_places: &'a tokio::sync::Semaphore,
    transfer: Option<tokio::sync::SemaphorePermit<'a>>,
    finishing: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<'a> Turn<'a> {
    /// A turn that holds a transfer slot (once one is free).
    async fn transferring(
        slots: &'a tokio::sync::Semaphore,
        finishing_places: &'a tokio::sync::Semaphore,
    ) -> Turn<'a> {
        let mut turn = Turn {
            slots,
            finishing_places,
            transfer: None,
            finishing: None,
        };
        turn.transfer().await;
        turn
    }

    /// Hold a transfer slot (to send a request), giving back a finishing place first.
    async fn transfer(&mut self) {
        if self.transfer.is_none() {
            self.finishing = None;
            // The semaphores are never closed: `None` cannot happen.
            self.transfer = self.slots.acquire().await.ok();
        }
    }

    /// Every byte has arrived: hold a finishing place instead of the transfer slot.
    async fn finish(&mut self) {
        if self.finishing.is_none() {
            self.finishing = self.finishing_places.acquire().await.ok();
            self.transfer = None;
        }
    }
}

/// Download one file; `Err` only when cancelled.
async fn download_file(ctx: &Arc<Ctx>, job: &FileJob, turn: &mut Turn<'_>) -> Result<FileReport> {
    let mut report = FileReport {
        path: job.file.path.clone(),
        size: job.file.size,
        sha256: job.file.sha256.clone(),
        status: FileStatus::Failed,
        bytes_transferred: 0,
        message: None,
        kind: None,
    };
    match fetch_file(ctx, job, &mut report, turn).await {
        Ok(status) => report.status = status,
        Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
        Err(e) => {
            report.status = FileStatus::Failed;
            report.kind = Some(e.kind());
            report.message = Some(e.message().to_string());
        }
    }
    Ok(report)
}

/// The partial file being written: this task copies each chunk into its [`Sink`], whose
/// threads hash and write it (the sink gives the hash of every byte in the file).
struct Partial {
    path: PathBuf,
    sink: Sink,
    /// Bytes handed to the sink (written, or being written).
    have: u64,
    /// The service sent more than the manifest's size: the file cannot verify.
    overlong: bool,
    /// How many of this file's bytes are counted in the overall progress.
    counted: u64,
}

impl Partial {
    /// `path`, written through `sink`, which holds `have` bytes already.
    fn new(path: PathBuf, sink: Sink, have: u64) -> Partial {
        Partial {
            path,
            sink,
            have,
            overlong: false,
            counted: 0,
        }
    }

    async fn restart(&mut self) -> Result<()> {
        self.sink
            .reset(0, Sha256::new())
            .await
            .map_err(|e| Error::io(format!("truncating {}", self.path.display()), &e))?;
        self.have = 0;
        self.overlong = false;
        Ok(())
    }

    /// Once every byte handed over is written (and with `sync`, flushed to disk): the
    /// SHA-256 of the file, hex.
    async fn written_sha256(&mut self, sync: bool) -> Result<String> {
        let mut hasher = self
            .sink
            .drain(sync)
            .await
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), &e))?;
        if self.overlong {
            hasher.update(b"\0overlong");
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Once every byte handed over is written: the SHA-256 of the file, hex; and if that
    /// is `expected`, the file is moved to `final_path` (its data flushed first where
    /// the pack is not flushed as a whole: see `platform::FsFlush`). A file the service
    /// sent more of than the manifest says is never moved.
    async fn verify_and_place(
        &mut self,
        expected: &str,
        final_path: &Path,
    ) -> Result<(String, bool)> {
        if self.overlong {
            return Ok((self.written_sha256(false).await?, false));
        }
        let place = Place {
            from: self.path.clone(),
            to: final_path.to_path_buf(),
            sha256: expected.to_string(),
        };
        let (hasher, placed) = self
            .sink
            .drain_and_place(crate::platform::FLUSH_EACH_FILE_BEFORE_RENAME, place)
            .await
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), &e))?;
        if let Some(Err(e)) = &placed {
            return Err(Error::io(
                format!("moving into place {}", final_path.display()),
                e,
            ));
        }
        Ok((hex::encode(hasher.finalize()), placed.is_some()))
    }
}

async fn fetch_file(
    ctx: &Arc<Ctx>,
    job: &FileJob,
    report: &mut FileReport,
    turn: &mut Turn<'_>,
) -> Result<FileStatus> {
    let size = job.file.size;
    let expected = job.file.sha256.to_ascii_lowercase();
    let rel = job.file.rel_path()?;
    ensure_no_symlinks(&ctx.dest, &job.rel.join(CONTENT_DIR).join(&rel))?;
    let final_path = job.pack_dir.join(CONTENT_DIR).join(&rel);
    let mut partial_name = final_path.as_os_str().to_owned();
    partial_name.push(PARTIAL_SUFFIX);
    let partial_path = PathBuf::from(partial_name);
    // The folder, a look at the final name and (where it is not there and nothing is to
    // be copied) the opening of the partial file in one hand-off to the blocking pool
    // (each hand-off costs thread wake-ups, which add up over a pack of many small files).
    let (parent, at_final, at_partial) = (
        final_path.parent().map(Path::to_path_buf),
        final_path.clone(),
        partial_path.clone(),
    );
    let may_open = job.local.is_none();
    let prepare = move || {
        if let Some(parent) = &parent {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
        }
        let existing = std::fs::symlink_metadata(&at_final);
        let opened = match &existing {
            Err(e) if may_open && e.kind() == std::io::ErrorKind::NotFound => {
                Some(open_partial_file(&at_partial)?)
            }
            _ => None,
        };
        Ok((existing, opened))
    };
    // A file that fits in flight is prepared by the thread that will write it, which goes
    // on as its sink where the partial file is new (1,000 files of 1 MiB: one hand-off
    // fewer each).
    let (existing, opened, sink) = if may_open && Sink::prepares_for(size) {
        let (prepared, sink) =
            Sink::start_prepared(&ctx.writers, &ctx.batches, move || match prepare() {
                Ok((existing, Some((file, 0)))) => (Ok((existing, None)), Some(file)),
                other => (other, None),
            })
            .await
            .map_err(|e| Error::io(format!("writing {}", partial_path.display()), &e))?;
        let (existing, opened) = prepared?;
        (existing, opened, sink)
    } else {
        let (existing, opened) = blocking("preparing a download", prepare).await?;
        (existing, opened, None)
    };

    // 1. Already at its final name?
    match existing {
        Ok(m) if m.is_file() => {
            if m.len() == size {
                let (_, hasher) = hash_prefix(ctx, &final_path, &job.item, size).await?;
                if hex::encode(hasher.finalize()) == expected {
                    // A stale partial beside a verified file is of no use.
                    let _ = tokio::fs::remove_file(&partial_path).await;
                    ctx.events.add_done(size);
                    ctx.events.emit(Phase::Download, &job.item, size, size);
                    return Ok(FileStatus::AlreadyComplete);
                }
            }
            // Not what the manifest says: never trusted. A shorter file may be a copy cut
            // short, so it becomes the partial file (its bytes are checked in the end);
            // one of the right size is known to be wrong and is dropped.
            if m.len() < size {
                tokio::fs::rename(&final_path, &partial_path)
                    .await
                    .map_err(|e| Error::io(format!("moving aside {}", final_path.display()), &e))?;
            } else {
                tokio::fs::remove_file(&final_path)
                    .await
                    .map_err(|e| Error::io(format!("removing {}", final_path.display()), &e))?;
            }
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a file", final_path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("checking {}", final_path.display()), &e)),
    }

    // 1b. The same file, verified, in another hierarchy's copy of this pack?
    if let Some(src_dir) = &job.local {
        let src = src_dir.join(CONTENT_DIR).join(&rel);
        if copy_verified(ctx, &src, &partial_path, size, &expected).await? {
            crate::fsutil::sync_dir(crate::fsutil::parent_dir(&partial_path));
            tokio::fs::rename(&partial_path, &final_path)
                .await
                .map_err(|e| {
                    Error::io(format!("moving into place {}", final_path.display()), &e)
                })?;
            crate::fsutil::sync_dir(crate::fsutil::parent_dir(&final_path));
            ctx.events.add_done(size);
            ctx.events.emit(Phase::Download, &job.item, size, size);
            report.message = Some(format!("copied from {}", src.display()));
            return Ok(FileStatus::Downloaded);
        }
    }

    // 2. Open (or create) the partial file and hash what it holds (a new one is open
    // already, its sink started).
    let mut part = match sink {
        Some(sink) => Partial::new(partial_path.clone(), sink, 0),
        None => open_partial(ctx, &partial_path, &job.item, size, opened).await?,
    };
    let from_earlier_run = part.have > 0;
    let mut resumed = from_earlier_run;
    ctx.events.add_done(part.have);
    part.counted = part.have;

    let mut transient_failures = 0u32;
    let mut fetches = 0u32;
    let url = ctx.http.url(&job.url)?;
    let what = format!("downloading {}", job.item);
    let mut throttle = Throttle::new();
    loop {
        if part.have == size {
            turn.finish().await;
            let (got, placed) = part.verify_and_place(&expected, &final_path).await?;
            if placed {
                return Ok(if resumed {
                    FileStatus::Resumed
                } else {
                    FileStatus::Downloaded
                });
            }
            fetches += 1;
            discard(ctx, &mut part).await?;
            resumed = false;
            if fetches >= MAX_FETCHES {
                let _ = tokio::fs::remove_file(&part.path).await;
                return Err(Error::new(
                    ErrorKind::IntegrityMismatch,
                    format!(
                        "{}: the bytes received do not match the manifest (SHA-256 {got}, expected {expected}) in {fetches} downloads; the service is serving damaged content",
                        job.file.path
                    ),
                ));
            }
            continue;
        }

        // 3. One request, continuing from what is on disk.
        turn.transfer().await;
        let activity = Activity::new();
        let ranged = part.have > 0;
        let have_before = part.have;
        let mut req = ctx.http.get(url.clone());
        if ranged {
            req = req
                .header(RANGE, format!("bytes={}-", part.have))
                .header(IF_RANGE, format!("\"{expected}\""));
        }
        let outcome: std::result::Result<(), Failure> = async {
            let resp = ctx.http.send_once(req, &what, &activity).await?;
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT if ranged => {
                    let ok = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_content_range)
                        .is_some_and(|(start, end, total)| {
                            start == part.have && end + 1 == size && total.is_none_or(|t| t == size)
                        });
                    if !ok {
                        discard(ctx, &mut part).await.map_err(Failure::permanent)?;
                        return Err(Failure::transient(Error::new(
                            ErrorKind::Service,
                            format!("{what}: the service answered a range that was not asked for"),
                        )));
                    }
                    resumed = true;
                }
                StatusCode::OK => {
                    if ranged {
                        // The range was ignored or the file changed: start over.
                        discard(ctx, &mut part).await.map_err(Failure::permanent)?;
                        resumed = false;
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    discard(ctx, &mut part).await.map_err(Failure::permanent)?;
                    resumed = false;
                    return Err(Failure::transient(Error::new(
                        ErrorKind::Service,
                        format!(
                            "{what}: the service refused to continue at byte {} (416)",
                            part.have
                        ),
                    )));
                }
                _ => {
                    let headers = resp.headers().clone();
                    let body = ctx
                        .http
                        .read_small(resp, 64 * 1024)
                        .await
                        .unwrap_or_default();
                    let mut f = ctx.http.status_failure(status, &headers, &what, &body);
                    if status == StatusCode::NOT_FOUND {
                        f.error = Error::new(
                            ErrorKind::Service,
                            format!("{what}: the service does not have this file (404)"),
                        );
                    }
                    return Err(f);
                }
            }
            stream_body(
                ctx,
                resp,
                &mut part,
                &activity,
                &job.item,
                size,
                report,
                &mut throttle,
                &what,
            )
            .await
        }
        .await;
        if part.have == size {
            continue; // verified at the top of the loop
        }
        let failure = match outcome {
            Ok(()) => Failure::transient(Error::new(
                ErrorKind::Network,
                format!(
                    "{what}: the connection closed after {} of {size} bytes",
                    part.have
                ),
            )),
            Err(f) => f,
        };
        if failure.error.kind() == ErrorKind::Cancelled || !failure.transient {
            flush_quietly(&mut part).await;
            return Err(failure.error);
        }
        if part.have >= have_before + PROGRESS_RESETS_ATTEMPTS {
            transient_failures = 0;
        }
        transient_failures += 1;
        if transient_failures >= ctx.http.max_attempts {
            flush_quietly(&mut part).await;
            return Err(Error::new(
                failure.error.kind(),
                format!(
                    "{} (after {transient_failures} attempts; {} of {size} bytes are kept in {} and a re-run continues from there)",
                    failure.error.message(),
                    part.have,
                    part.path.display()
                ),
            ));
        }
        ctx.http
            .backoff(transient_failures, failure.retry_after)
            .await?;
    }
}

/// Stream a response body into the partial file, hashing as it goes. Stops early (as a
/// mismatch) if the service sends more than the manifest's size.
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    ctx: &Arc<Ctx>,
    resp: reqwest::Response,
    part: &mut Partial,
    activity: &Activity,
    item: &str,
    size: u64,
    report: &mut FileReport,
    throttle: &mut Throttle,
    what: &str,
) -> std::result::Result<(), Failure> {
    // The body alone: the response's header values are slices of hyper's receive
    // buffer, and while they lived hyper could not reuse that buffer and allocated a new
    // one for the body; freed with the response, the old one went back to the kernel
    // (`madvise`) and the next was faulted in afresh. 1,000 files: 23,600 page faults
    // with the response kept, 11,200 this way.
    let mut body = resp.bytes_stream();
    loop {
        activity.touch();
        let chunk = match ctx.http.idle(activity, body.next()).await? {
            Some(Ok(c)) => c,
            None => break,
            Some(Err(e)) => return Err(ctx.http.classify(&e, what)),
        };
        let n = chunk.len() as u64;
        report.bytes_transferred += n;
        if part.have + n > size {
            // More than the manifest says: the content is wrong; let verification fail.
            let fit = (size - part.have) as usize;
            write_chunk(part, chunk.slice(..fit)).await?;
            part.overlong = true;
            break;
        }
        write_chunk(part, chunk).await?;
        ctx.events.add_done(n);
        part.counted += n;
        if let Some(rate) = &ctx.http.rate {
            rate.consume(n).await;
        }
        if throttle.due() || part.have == size {
            ctx.events.emit(Phase::Download, item, part.have, size);
        }
    }
    Ok(())
}

async fn write_chunk(part: &mut Partial, data: bytes::Bytes) -> std::result::Result<(), Failure> {
    let n = data.len() as u64;
    part.sink.write(data).await.map_err(|e| {
        // A full disk or a refused write is not going to get better by retrying.
        Failure::permanent(Error::io(format!("writing {}", part.path.display()), &e))
    })?;
    part.have += n;
    Ok(())
}

async fn flush_quietly(part: &mut Partial) {
    let _ = part.sink.drain(false).await;
}

/// Throw away the partial file's bytes (they do not match) and the progress they counted.
async fn discard(ctx: &Ctx, part: &mut Partial) -> Result<()> {
    ctx.events.sub_done(part.counted);
    part.counted = 0;
    part.restart().await
}

/// Open or create `path` for writing: the file and its length. A link there (one planted
/// on the drive, say) is refused, not followed: its target, outside the destination,
/// would be read as the download's first bytes and then written over.
fn open_partial_file(path: &Path) -> Result<(std::fs::File, u64)> {
    let file = fsutil::open_write_no_follow(path)
        .map_err(|e| fsutil::open_error("opening", &path.display().to_string(), &e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("checking {}", path.display()), &e))?
        .len();
    Ok((file, len))
}

/// Open or create `path` for appending (unless `opened` already did), hashing the bytes
/// it already holds. A partial longer than the file can be is emptied.
async fn open_partial(
    ctx: &Arc<Ctx>,
    path: &Path,
    item: &str,
    size: u64,
    opened: Option<(std::fs::File, u64)>,
) -> Result<Partial> {
    let (file, len) = match opened {
        Some(opened) => opened,
        None => {
            let p = path.to_path_buf();
            blocking("opening a partial file", move || open_partial_file(&p)).await?
        }
    };
    let (have, hasher) = if len == 0 || len > size {
        (0, Sha256::new())
    } else {
        hash_prefix(ctx, path, item, len).await?
    };
    let sink = Sink::start(
        &ctx.writers,
        &ctx.batches,
        file,
        have,
        hasher.clone(),
        size.saturating_sub(have),
    )
    .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    let mut part = Partial::new(path.to_path_buf(), sink, have);
    // Cut to what was hashed (a partial longer than the file can be is emptied) and
    // continue from there.
    if have != len {
        part.sink
            .reset(have, hasher)
            .await
            .map_err(|e| Error::io(format!("truncating {}", path.display()), &e))?;
    }
    Ok(part)
}

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("{what} panicked: {e}")))?
}

/// Hash a file on disk (a blocking task), reporting `Verify` progress and stopping on
/// cancellation. Returns the bytes hashed and the hasher (to continue a partial file).
async fn hash_prefix(ctx: &Arc<Ctx>, path: &Path, item: &str, total: u64) -> Result<(u64, Sha256)> {
    let ctx = ctx.clone();
    let path = path.to_path_buf();
    let item = item.to_string();
    tokio::task::spawn_blocking(move || {
        let mut f = fsutil::open_no_follow(&path)
            .map_err(|e| fsutil::open_error("reading", &path.display().to_string(), &e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        let mut throttle = Throttle::new();
        loop {
            if ctx.http.cancel.is_cancelled() {
                return Err(Error::cancelled());
            }
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), &e)),
            };
            hasher.update(&buf[..n]);
            n_total += n as u64;
            if throttle.due() {
                ctx.events.emit(Phase::Verify, &item, n_total, total);
            }
        }
        Ok((n_total, hasher))
    })
    .await
    .map_err(|e| Error::internal(format!("hashing panicked: {e}")))?
}

/// Copy `src` to `partial` while hashing; true when it had the expected size and hash
/// (the copy is then flushed to disk), false (and nothing left behind) otherwise.
async fn copy_verified(
    ctx: &Arc<Ctx>,
    src: &Path,
    partial: &Path,
    size: u64,
    expected: &str,
) -> Result<bool> {
    let (ctx, src, partial, expected) = (
        ctx.clone(),
        src.to_path_buf(),
        partial.to_path_buf(),
        expected.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        match std::fs::symlink_metadata(&src) {
            Ok(m) if m.is_file() && m.len() == size => {}
            _ => return Ok(false),
        }
        let Ok(mut from) = fsutil::open_no_follow(&src) else {
            return Ok(false);
        };
        let what = || format!("writing {}", partial.display());
        let mut to = fsutil::open_write_no_follow(&partial)
            .map_err(|e| fsutil::open_error("writing", &partial.display().to_string(), &e))?;
        to.set_len(0).map_err(|e| Error::io(what(), &e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        loop {
            if ctx.http.cancel.is_cancelled() {
                return Err(Error::cancelled());
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(|e| Error::io(what(), &e))?;
            n_total += n as u64;
        }
        if n_total != size || hex::encode(hasher.finalize()) != expected {
            drop(to);
            let _ = std::fs::remove_file(&partial);
            return Ok(false);
        }
        to.sync_all().map_err(|e| Error::io(what(), &e))?;
        Ok(true)
    })
    .await
    .map_err(|e| Error::internal(format!("copying panicked: {e}")))?
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (end >= start).then_some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        for bad in [
            "",
            "bytes 5-4/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-1/2",
            "bytes */10",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_are_percent_encoded_per_segment() {
        let offer = OfferedPack {
            id: uuid::Uuid::nil(),
            name: "n".into(),
            version: "5.00.9132.1000".parse().unwrap(),
            pack_type: crate::api::PackType::Update,
            min_site_version: "5.00.9128.1000".parse().unwrap(),
            max_site_version: None,
            size: 0,
            file_count: 0,
            manifest_sha256: String::new(),
            manifest_url: String::new(),
            signature_url: String::new(),
            content_url: "/v1/packages/x/content/".into(),
        };
        assert_eq!(
            content_url(&offer, "dir a/b%c/ü.bin"),
            "/v1/packages/x/content/dir%20a/b%25c/%C3%BC.bin"
        );
        let offer = OfferedPack {
            content_url: "/v1/packages/x/content".into(),
            ..offer
        };
        assert_eq!(content_url(&offer, "a.bin"), "/v1/packages/x/content/a.bin");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A download whose bytes have all arrived gives its transfer slot to the next file,
    /// and takes a finishing place instead.
    #[test]
    fn a_finishing_download_gives_its_transfer_slot_away() {
        let (slots, finishing) = (
            tokio::sync::Semaphore::new(1),
            tokio::sync::Semaphore::new(1),
        );
        runtime().block_on(async {
            let mut a = Turn::transferring(&slots, &finishing).await;
            assert_eq!(slots.available_permits(), 0);
            a.finish().await;
            assert_eq!(slots.available_permits(), 1, "the slot was kept");
            assert_eq!(finishing.available_permits(), 0);
            // The next file gets the slot while the first one is still finishing.
            let b = Turn::transferring(&slots, &finishing).await;
            assert_eq!(slots.available_permits(), 0);
            drop((a, b));
            assert_eq!(slots.available_permits(), 1);
            assert_eq!(finishing.available_permits(), 1);
        });
    }

    /// A finishing download that must fetch again, while another download holds the only
    /// transfer slot and waits for the only finishing place: both go on (the first gives
    /// its finishing place back before it waits for the slot) instead of each waiting for
    /// the other forever.
    #[test]
    fn fetching_again_while_finishing_cannot_deadlock() {
        let (slots, finishing) = (
            tokio::sync::Semaphore::new(1),
            tokio::sync::Semaphore::new(1),
        );
        runtime().block_on(async {
            let mut a = Turn::transferring(&slots, &finishing).await;
            a.finish().await;
            let mut b = Turn::transferring(&slots, &finishing).await;
            let both = async {
                tokio::join!(a.transfer(), b.finish());
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), both)
                .await
                .expect("the two downloads waited for each other");
            assert!(a.transfer.is_some() && a.finishing.is_none());
            assert!(b.finishing.is_some() && b.transfer.is_none());
        });
    }
}
