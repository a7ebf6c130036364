//! Connect's console content fetch (SPEC section 10): once per run, after the uploads and
//! the packs (so a run cancelled while downloading packs has not touched it),
//! `GET /v1/console-content` and its signature into `<dest>/ConsoleContent/`.
//!
//! - With a complete copy already there, the request carries `If-None-Match` with its
//!   SHA-256 (the service's ETag): `304` → `Unchanged`, nothing written.
//! - Bytes in flight go to `console-content.json.<sha256>.sct-partial`, named after the
//!   ETag of the document they belong to; a run that broke off (or was killed) leaves
//!   them, and the next run continues with `Range: bytes=N-` and `If-Range: "<sha256>"`
//!   (a newer publication meanwhile answers 200 and the download starts over).
//! - The whole document is checked against its ETag, parsed and validated, and its
//!   signature's trusted comment must name the same version and SHA-256 (a publication
//!   between the two requests is retried once). Connect cannot check *who* signed it (it
//!   has no site keys); Import does.
//! - Writing keeps the rule that a document on the drive has its own signature beside
//!   it: the old document is removed first, then the signature is written, then the
//!   document (each atomically). A run killed in between leaves a signature without a
//!   document, which Import reports, and which the next Connect replaces.
//! - `404` (none published, or a service that predates console content) → `NonePublished`,
//!   not a failure.
//! - Every upload of the run failed → `Skipped`, not tried (the uploads carry the reason).

use super::client::Failure;
use super::Ctx;
use crate::console::{
    ConsoleContent, DOCUMENT_FILE, FOLDER, MAX_DOCUMENT_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE_FILE,
};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{ensure_no_symlinks, PARTIAL_SUFFIX};
use crate::hashing::sha256_hex;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Service path of the newest document.
pub const DOCUMENT_PATH: &str = "/v1/console-content";
/// Service path of its signature.
pub const SIGNATURE_PATH: &str = "/v1/console-content.json.minisig";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ConsoleStatus {
    /// A new or changed document was fetched (or a partial one completed) in this run.
    Downloaded,
    /// The copy on the drive is the service's newest (`304`).
    Unchanged,
    /// The service publishes no console content; not a failure.
    NonePublished,
    /// It could not be fetched; the packs are not affected.
    Failed,
    /// Not asked for: every upload of the run failed (the uploads carry the reason; this
    /// adds no failure of its own).
    Skipped,
}

/// The console content part of `connect-report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleReport {
    pub status: ConsoleStatus,
    pub content_version: Option<u64>,
    pub published: Option<String>,
    /// `<dest>/ConsoleContent`.
    pub path: PathBuf,
    /// Bytes of the document received in this run.
    pub bytes_transferred: u64,
    /// Whether bytes of an earlier, broken-off run were continued.
    #[serde(default)]
    pub resumed: bool,
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

/// The report when the fetch is not even tried (no upload of the run got through).
pub(crate) fn not_fetched(ctx: &Ctx, kind: ErrorKind, why: &str) -> ConsoleReport {
    ConsoleReport {
        status: ConsoleStatus::Skipped,
        content_version: None,
        published: None,
        path: ctx.dest.join(FOLDER),
        bytes_transferred: 0,
        resumed: false,
        message: Some(format!("not fetched: {why}")),
        kind: Some(kind),
    }
}

/// Fetch the console content. `Err` only when cancelled.
pub(crate) async fn fetch(ctx: &Ctx) -> Result<ConsoleReport> {
    let dir = ctx.dest.join(FOLDER);
    let mut report = ConsoleReport {
        status: ConsoleStatus::Failed,
        content_version: None,
        published: None,
        path: dir.clone(),
        bytes_transferred: 0,
        resumed: false,
        message: None,
        kind: None,
    };
    let mut raced = false;
    loop {
        if ctx.http.cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        match attempt(ctx, &dir, &mut report).await {
            Ok(()) => return Ok(report),
            Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
            // A publication between the document and the signature: once more.
            Err(e) if e.kind() == ErrorKind::Conflict && !raced => raced = true,
            Err(e) => {
                report.status = ConsoleStatus::Failed;
                report.kind = Some(e.kind());
                report.message = Some(e.message().to_string());
                return Ok(report);
            }
        }
    }
}

async fn attempt(ctx: &Ctx, dir: &Path, report: &mut ConsoleReport) -> Result<()> {
    ensure_no_symlinks(&ctx.dest, Path::new(FOLDER))?;
    let doc_path = dir.join(DOCUMENT_FILE);
    let sig_path = dir.join(SIGNATURE_FILE);
    // The copy on the drive, if complete (document and signature both there).
    let have = match (read_small(&doc_path)?, sig_path.is_file()) {
        (Some(bytes), true) => Some(sha256_hex(&bytes)),
        _ => None,
    };
    let partial = find_partial(dir)?;

    let url = ctx.http.url(DOCUMENT_PATH)?;
    let what = "console content";
    let resp = ctx
        .http
        .send_with_retry(what, |_| {
            let mut req = ctx.http.get(url.clone());
            if let Some(sha) = &have {
                req = req.header(IF_NONE_MATCH, format!("\"{sha}\""));
            }
            if let Some((sha, _, len)) = &partial {
                req = req
                    .header(RANGE, format!("bytes={len}-"))
                    .header(IF_RANGE, format!("\"{sha}\""));
            }
            Ok(req)
        })
        .await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if status == StatusCode::NOT_MODIFIED {
        let bytes = read_small(&doc_path)?.unwrap_or_default();
        let doc = ConsoleContent::from_bytes(&bytes).map_err(|e| e.context(doc_path.display()))?;
        remove_partials(dir, None)?;
        report.status = ConsoleStatus::Unchanged;
        report.content_version = Some(doc.content_version);
        report.published = Some(doc.published);
        return Ok(());
    }
    if status == StatusCode::NOT_FOUND {
        let _ = ctx.http.read_small(resp, 64 * 1024).await;
        remove_partials(dir, None)?;
        report.status = ConsoleStatus::NonePublished;
        report.message = Some("the service publishes no console content".into());
        return Ok(());
    }
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
        let body = ctx
            .http
            .read_small(resp, 64 * 1024)
            .await
            .unwrap_or_default();
        return Err(ctx.http.status_failure(status, &headers, what, &body).error);
    }
    let etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
        .filter(|s| crate::hashing::is_sha256_hex(s))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Service,
                "console content: the service sent no SHA-256 ETag",
            )
        })?;
    // Continue the partial only on a 206 for exactly its bytes; anything else starts over.
    let mut start = 0u64;
    if status == StatusCode::PARTIAL_CONTENT {
        let (psha, _, plen) = partial.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Service,
                "console content: the service answered 206 to a request without Range",
            )
        })?;
        let from = headers
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, _)| a.parse::<u64>().ok());
        if psha != etag || from != Some(plen) {
            return Err(Error::new(
                ErrorKind::Service,
                "console content: the service answered a range that was not asked for",
            ));
        }
        start = plen;
        report.resumed = true;
    }
    // Created only now: a service that publishes nothing leaves no empty folder behind.
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let part_path = dir.join(format!("{DOCUMENT_FILE}.{etag}{PARTIAL_SUFFIX}"));
    remove_partials(dir, Some(&part_path))?;
    // A link there (planted on the drive under the name this document's partial has) is
    // refused, not followed: its target would be cut and written over.
    let mut file = crate::fsutil::open_write_no_follow(&part_path)
        .map_err(|e| crate::fsutil::open_error("opening", &part_path.display().to_string(), &e))?;
    if start == 0 {
        file.set_len(0)
            .map_err(|e| Error::io(format!("truncating {}", part_path.display()), &e))?;
    }
    file.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(format!("opening {}", part_path.display()), &e))?;
    // Stream into the partial file (what a broken transfer leaves for the next run).
    let activity = super::client::Activity::new();
    let mut resp = resp;
    let mut written = start;
    loop {
        activity.touch();
        let chunk = match ctx.http.idle(&activity, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(ctx.http.classify(&e, what).error),
            Err(Failure { error, .. }) => return Err(error),
        };
        written += chunk.len() as u64;
        report.bytes_transferred += chunk.len() as u64;
        if written > MAX_DOCUMENT_BYTES {
            drop(file);
            let _ = std::fs::remove_file(&part_path);
            return Err(Error::new(
                ErrorKind::Service,
                "console content: the document is larger than 16 MiB",
            ));
        }
        file.write_all(&chunk)
            .map_err(|e| Error::io(format!("writing {}", part_path.display()), &e))?;
    }
    file.flush()
        .map_err(|e| Error::io(format!("writing {}", part_path.display()), &e))?;
    drop(file);
    let bytes = read_no_follow(&part_path)?;
    if sha256_hex(&bytes) != etag {
        let _ = std::fs::remove_file(&part_path);
        return Err(Error::new(
            ErrorKind::IntegrityMismatch,
            "console content: the document received does not match the SHA-256 the service announced; run Connect again",
        ));
    }
    let doc = ConsoleContent::from_bytes(&bytes).map_err(|e| {
        let _ = std::fs::remove_file(&part_path);
        e.context("console content from the service")
    })?;

    let sig = super::download::fetch_small(
        ctx,
        SIGNATURE_PATH,
        "console content: signature",
        MAX_SIGNATURE_BYTES,
    )
    .await
    .map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::SignatureInvalid,
                "console content: the service has no signature for it, so it could never be imported",
            )
        } else {
            e
        }
    })?;
    let sig = String::from_utf8(sig).map_err(|_| {
        Error::new(
            ErrorKind::SignatureInvalid,
            "console content: the signature is not text",
        )
    })?;
    let sig_box = minisign::SignatureBox::from_string(&sig).map_err(|e| {
        Error::new(
            ErrorKind::SignatureInvalid,
            format!("console content: the signature is malformed: {e}"),
        )
    })?;
    let want = crate::console::trusted_comment(doc.content_version, &etag);
    if sig_box.trusted_comment().ok().as_deref() != Some(want.as_str()) {
        return Err(Error::new(
            ErrorKind::Conflict,
            "console content: the signature served is for another publication (one was published meanwhile?)",
        ));
    }

    // Cancelled meanwhile: write nothing (a cancelled run leaves no output to trust).
    if ctx.http.cancel.is_cancelled() {
        let _ = std::fs::remove_file(&part_path);
        return Err(Error::cancelled());
    }
    // The old document goes first, so no document ever sits beside a foreign signature.
    match std::fs::remove_file(&doc_path) {
        Ok(()) => crate::fsutil::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", doc_path.display()), &e)),
    }
    let mut f = crate::fsutil::AtomicFile::create(&sig_path, true)?;
    f.write_all(sig.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", sig_path.display()), &e))?;
    f.commit()?;
    // Flushed through a handle that may write (Windows flushes no other).
    crate::fsutil::open_write_no_follow(&part_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| crate::fsutil::open_error("writing", &part_path.display().to_string(), &e))?;
    crate::fsutil::rename_retrying(&part_path, &doc_path)
        .map_err(|e| Error::io(format!("moving into place {}", doc_path.display()), &e))?;
    crate::fsutil::sync_dir(dir);
    report.status = ConsoleStatus::Downloaded;
    report.content_version = Some(doc.content_version);
    report.published = Some(doc.published);
    report.message = None;
    report.kind = None;
    Ok(())
}

/// A regular file's bytes (no link followed), `None` when absent; too large is an error.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>> {
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), &e)),
        Ok(m) if !m.is_file() => Err(Error::new(
            ErrorKind::UnsafePath,
            format!("{} is not a regular file", path.display()),
        )),
        Ok(m) if m.len() > MAX_DOCUMENT_BYTES => Ok(None),
        Ok(_) => read_no_follow(path).map(Some),
    }
}

/// A file's bytes, a link refused rather than followed.
fn read_no_follow(path: &Path) -> Result<Vec<u8>> {
    let shown = || path.display().to_string();
    let mut bytes = Vec::new();
    crate::fsutil::open_no_follow(path)
        .map_err(|e| crate::fsutil::open_error("reading", &shown(), &e))?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {}", shown()), &e))?;
    Ok(bytes)
}

/// `console-content.json.<sha256>.sct-partial` files: (sha256, path, length).
fn partials(dir: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(sha) = name
            .strip_prefix(&format!("{DOCUMENT_FILE}."))
            .and_then(|r| r.strip_suffix(PARTIAL_SUFFIX))
        else {
            continue;
        };
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        out.push((
            sha.to_string(),
            e.path(),
            if meta.is_file() { meta.len() } else { u64::MAX },
        ));
    }
    Ok(out)
}

/// The partial download to continue, if there is a usable one.
fn find_partial(dir: &Path) -> Result<Option<(String, PathBuf, u64)>> {
    Ok(partials(dir)?.into_iter().find(|(sha, _, len)| {
        crate::hashing::is_sha256_hex(sha) && *len > 0 && *len < MAX_DOCUMENT_BYTES
    }))
}

/// Remove every partial but `keep`.
fn remove_partials(dir: &Path, keep: Option<&Path>) -> Result<()> {
    for (_, p, _) in partials(dir)? {
        if Some(p.as_path()) != keep {
            let r = match p.symlink_metadata() {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
            r.map_err(|e| Error::io(format!("removing {}", p.display()), &e))?;
        }
    }
    Ok(())
}
