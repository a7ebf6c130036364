//! Checks on one pack folder before anything in it is trusted.
//!
//! Order matters: the manifest bytes are read (size-limited, never through a link) and
//! their signature is verified against the site's trusted keys *before* the manifest is
//! parsed; only then are its fields (id, hierarchies, paths) believed. The folder is then
//! walked without following links, so a symbolic link, a file outside the listed set, or a
//! missing file is refused before a single content byte is copied. Sizes and SHA-256 are
//! checked later, while copying (`place`), so each byte is read once.
//!
//! Paths are checked component by component ([`fsutil::ensure_no_symlinks`]) and files are
//! opened with `O_NOFOLLOW`. A transfer drive that is changed *while* it is imported is
//! out of scope; every byte placed is still hashed as it is placed.

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil;
use crate::hashing::sha256_hex;
use crate::pack::manifest::{CONTENT_DIR, MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE};
use crate::pack::PackManifest;
use crate::signing::PublicKey;
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A signature file larger than this is not a minisign signature.
pub(crate) const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// A manifest whose signature verified (or whose check was skipped on request).
pub(crate) struct TrustedManifest {
    pub manifest: PackManifest,
    /// SHA-256 of the exact manifest bytes: the pack's identity for re-imports.
    pub sha256: String,
    /// The trusted key that verified it; `None` when the check was skipped.
    pub key_id: Option<String>,
}

/// Open a file for reading without following a link (symbolic link, junction) in its
/// last component.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    fsutil::open_no_follow(path)
}

/// Map an error opening `shown` to a precise kind: a link is `UnsafePath`.
pub(crate) fn open_error(shown: &str, e: &std::io::Error) -> Error {
    fsutil::open_error("reading", shown, e)
}

/// Open `root/rel` as a regular file: no link anywhere below `root`, not a device or FIFO.
pub(crate) fn open_regular(root: &Path, rel: &Path, shown: &str) -> Result<(File, u64)> {
    fsutil::ensure_no_symlinks(root, rel)?;
    let f = open_nofollow(&root.join(rel)).map_err(|e| open_error(shown, &e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {shown}"), &e))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!("{shown} is not a regular file"),
        ));
    }
    Ok((f, meta.len()))
}

/// Read a small file whole, refusing one larger than `limit` without reading it.
pub(crate) fn read_limited(root: &Path, rel: &Path, shown: &str, limit: u64) -> Result<Vec<u8>> {
    let (f, len) = open_regular(root, rel, shown)?;
    let too_big = || {
        Error::new(
            ErrorKind::InvalidManifest,
            format!("{shown} is larger than {limit} bytes; refused unread"),
        )
    };
    if len > limit {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("reading {shown}"), &e))?;
    if buf.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(buf)
}

/// Read, authenticate and parse a pack's manifest, then check that it names this folder
/// and this hierarchy. `pack_rel` is the pack folder relative to `root` (the source).
pub(crate) fn trusted_manifest(
    root: &Path,
    pack_rel: &Path,
    folder_guid: uuid::Uuid,
    trusted: &[PublicKey],
    skip_signature: bool,
    hierarchy: uuid::Uuid,
) -> Result<TrustedManifest> {
    let bytes = read_limited(
        root,
        &pack_rel.join(MANIFEST_FILE),
        MANIFEST_FILE,
        MAX_MANIFEST_BYTES,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::new(
            ErrorKind::InvalidManifest,
            format!("the pack has no {MANIFEST_FILE} (an unfinished download? run Connect again)"),
        ),
        _ => e,
    })?;
    let key_id = if skip_signature {
        None
    } else {
        if trusted.is_empty() {
            return Err(Error::new(
                ErrorKind::SignatureInvalid,
                "this site trusts no publisher key yet, so no pack can be verified: trust the update service's publisher key first (serviceconnectiontool -trust -sitedb SITE.db -publickey publisher.pub), then import again",
            ));
        }
        let sig = read_limited(
            root,
            &pack_rel.join(SIGNATURE_FILE),
            SIGNATURE_FILE,
            MAX_SIGNATURE_BYTES,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::new(
                ErrorKind::SignatureInvalid,
                format!("the pack has no signature file {SIGNATURE_FILE}"),
            ),
            ErrorKind::InvalidManifest => Error::new(ErrorKind::SignatureInvalid, e.message()),
            _ => e,
        })?;
        let sig = std::str::from_utf8(&sig).map_err(|_| {
            Error::new(
                ErrorKind::SignatureInvalid,
                format!("{SIGNATURE_FILE} is not a minisign signature (not text)"),
            )
        })?;
        Some(
            crate::signing::verify(&bytes, sig, trusted)
                .map_err(|e| e.context(format!("{MANIFEST_FILE} signature")))?,
        )
    };
    // Only now are the manifest's contents believed.
    let manifest = PackManifest::from_bytes(&bytes)?;
    if manifest.id != folder_guid {
        return Err(Error::new(
            ErrorKind::InvalidManifest,
            format!(
                "the manifest's id {} does not match its folder name {folder_guid}",
                manifest.id
            ),
        ));
    }
    if let Some(k) = &key_id {
        if !manifest.publisher.key_id.eq_ignore_ascii_case(k) {
            return Err(Error::new(
                ErrorKind::SignatureInvalid,
                format!(
                    "the manifest names publisher key {} but is signed by key {k}",
                    manifest.publisher.key_id
                ),
            ));
        }
    }
    if !manifest.hierarchies.is_empty() && !manifest.hierarchies.contains(&hierarchy) {
        return Err(Error::new(
            ErrorKind::WrongHierarchy,
            format!(
                "the pack is released only to hierarch{} {}, not to this site's hierarchy {hierarchy}",
                if manifest.hierarchies.len() == 1 { "y" } else { "ies" },
                manifest
                    .hierarchies
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(TrustedManifest {
        sha256: sha256_hex(&bytes),
        manifest,
        key_id,
    })
}

/// Walk the pack folder without following links and compare it with the manifest: only
/// `manifest.json`, its signature and `content/` at the top; under `content/` exactly the
/// listed files (and the folders leading to them). Refuses links (`UnsafePath`), extra
/// entries and missing files (`IntegrityMismatch`).
pub(crate) fn check_layout(root: &Path, pack_rel: &Path, manifest: &PackManifest) -> Result<()> {
    let pack = root.join(pack_rel);
    let mut expected: HashSet<PathBuf> = HashSet::with_capacity(manifest.files.len());
    let mut folders: HashSet<PathBuf> = HashSet::new();
    for f in &manifest.files {
        let rel = f.rel_path()?;
        let mut p = rel.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if !folders.insert(d.to_path_buf()) {
                break;
            }
            p = d.parent();
        }
        expected.insert(rel);
    }
    let extra = |shown: String| {
        if shown.ends_with(fsutil::PARTIAL_SUFFIX) {
            return Error::new(
                ErrorKind::IntegrityMismatch,
                format!("{shown} is not listed in the manifest: an unfinished download (run Connect again to finish it)"),
            );
        }
        Error::new(
            ErrorKind::IntegrityMismatch,
            format!(
                "{shown} is not listed in the manifest; a pack must hold exactly its listed files"
            ),
        )
    };
    let link = |shown: String| {
        Error::new(
            ErrorKind::UnsafePath,
            format!("{shown} is a symbolic link; links are never followed"),
        )
    };
    let mut has_content = false;
    for entry in read_dir(&pack, "the pack folder")? {
        let (name, ft) = entry?;
        let shown = name.to_string_lossy().into_owned();
        if ft.is_symlink() {
            return Err(link(shown));
        }
        match name.to_str() {
            Some(MANIFEST_FILE) | Some(SIGNATURE_FILE) if ft.is_file() => {}
            Some(CONTENT_DIR) if ft.is_dir() => has_content = true,
            _ => return Err(extra(shown)),
        }
    }
    let mut found = 0usize;
    if has_content {
        let content = pack.join(CONTENT_DIR);
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            for entry in read_dir(&content.join(&rel_dir), CONTENT_DIR)? {
                let (name, ft) = entry?;
                let rel = rel_dir.join(&name);
                // Named as the manifest names files (`/`-separated) on every platform.
                let shown = rel.components().fold(CONTENT_DIR.to_string(), |mut s, c| {
                    s.push('/');
                    s.push_str(&c.as_os_str().to_string_lossy());
                    s
                });
                if ft.is_symlink() {
                    return Err(link(shown));
                }
                if ft.is_dir() && folders.contains(&rel) {
                    stack.push(rel);
                } else if ft.is_file() && expected.contains(&rel) {
                    found += 1;
                } else if !ft.is_dir() && !ft.is_file() {
                    return Err(Error::new(
                        ErrorKind::UnsafePath,
                        format!("{shown} is not a regular file"),
                    ));
                } else {
                    return Err(extra(shown));
                }
            }
        }
    }
    if found != expected.len() {
        // Name the first missing file in manifest order.
        for f in &manifest.files {
            let rel = f.rel_path()?;
            let p = pack.join(CONTENT_DIR).join(&rel);
            if p.symlink_metadata().map(|m| !m.is_file()).unwrap_or(true) {
                return Err(Error::new(
                    ErrorKind::IntegrityMismatch,
                    format!(
                        "{CONTENT_DIR}/{} is missing (an unfinished download? run Connect again)",
                        f.path
                    ),
                ));
            }
        }
        return Err(Error::internal(
            "pack content count disagrees with its walk",
        ));
    }
    Ok(())
}

type DirEntryInfo = std::io::Result<(std::ffi::OsString, std::fs::FileType)>;

/// `read_dir` yielding (name, type-without-following-links), errors with context.
fn read_dir(
    dir: &Path,
    shown: &str,
) -> Result<impl Iterator<Item = Result<(std::ffi::OsString, std::fs::FileType)>>> {
    let shown = shown.to_string();
    let it = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {shown}"), &e))?;
    Ok(it.map(move |e| {
        let r: DirEntryInfo = e.and_then(|e| Ok((e.file_name(), e.file_type()?)));
        r.map_err(|e| Error::io(format!("listing {shown}"), &e))
    }))
}
