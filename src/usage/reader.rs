//! Reading and validating a usage cab (used by Connect before upload and by the service
//! on receipt): the cab must parse, hold a valid `manifest.json`, and every data file it
//! lists must be present with the stated size and SHA-256.

use super::manifest::{UsageManifest, MAX_USAGE_MANIFEST_BYTES, USAGE_MANIFEST_FILE};
use crate::error::{Error, ErrorKind, Result};
use crate::hashing::sha256_reader;
use std::io::{Read, Seek};

/// Validate a usage cab from any seekable reader and return its manifest.
pub fn read_usage_cab<R: Read + Seek>(reader: R) -> Result<UsageManifest> {
    // The `cab` crate (0.6) panics on some malformed cabinets (e.g. a file entry whose
    // offset lies beyond its folder's data: index out of bounds in `folder.rs`); found by
    // fuzzing, kept in fuzz/regressions/usage_cab. A hostile cab must be a clean error.
    let caught = crate::error::catch_panic(|| read_usage_cab_inner(reader));
    caught.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::InvalidCab,
            "not a usage cab: the cabinet is malformed (its folder and file tables do not agree)",
        ))
    })
}

/// Classify an error met while reading the cab: one that carries an operating-system
/// error code (EIO from a failing drive, say) is a failure to read, not a verdict on the
/// cab, so it becomes an I/O error; the rest are the cab's own fault: `InvalidCab` with
/// the message `describe` makes.
fn read_failure(e: std::io::Error, describe: impl FnOnce(&std::io::Error) -> String) -> Error {
    if e.raw_os_error().is_some() {
        Error::io("reading the cab", &e)
    } else {
        Error::new(ErrorKind::InvalidCab, describe(&e))
    }
}

fn read_usage_cab_inner<R: Read + Seek>(reader: R) -> Result<UsageManifest> {
    let mut cabinet = cab::Cabinet::new(reader).map_err(|e| {
        read_failure(e, |e| {
            format!("not a usage cab: the file is not a valid cabinet ({e})")
        })
    })?;
    let names: Vec<String> = cabinet
        .folder_entries()
        .flat_map(|f| f.file_entries().map(|e| e.name().to_string()))
        .collect();
    if !names.iter().any(|n| n == USAGE_MANIFEST_FILE) {
        return Err(Error::new(
            ErrorKind::InvalidCab,
            format!("not a usage cab: the cabinet has no {USAGE_MANIFEST_FILE}"),
        ));
    }
    let mut bytes = Vec::new();
    let manifest_error = |e: std::io::Error| {
        read_failure(e, |e| {
            format!("the cab's {USAGE_MANIFEST_FILE} cannot be read: {e}")
        })
    };
    cabinet
        .read_file(USAGE_MANIFEST_FILE)
        .map_err(manifest_error)?
        .take(MAX_USAGE_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(manifest_error)?;
    if bytes.len() as u64 > MAX_USAGE_MANIFEST_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidManifest,
            "the usage manifest is larger than 1 MiB",
        ));
    }
    let manifest = UsageManifest::from_bytes(&bytes)?;
    for f in &manifest.files {
        if !names.iter().any(|n| n == &f.name) {
            return Err(Error::new(
                ErrorKind::IntegrityMismatch,
                format!(
                    "the usage manifest lists '{}', which is not in the cab",
                    f.name
                ),
            ));
        }
        let r = cabinet.read_file(&f.name).map_err(|e| {
            read_failure(e, |e| {
                format!("'{}' in the cab cannot be read: {e}", f.name)
            })
        })?;
        let (size, sha) = sha256_reader(r)
            .map_err(|e| read_failure(e, |e| format!("'{}' in the cab is corrupt: {e}", f.name)))?;
        if size != f.size || sha != f.sha256 {
            return Err(Error::new(
                ErrorKind::IntegrityMismatch,
                format!(
                    "'{}' in the cab does not match its manifest (size {size}, sha256 {sha}; manifest says size {}, sha256 {})",
                    f.name, f.size, f.sha256
                ),
            ));
        }
    }
    Ok(manifest)
}

/// Validate the usage cab at `path`.
pub fn read_usage_cab_file(path: &std::path::Path) -> Result<UsageManifest> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
    read_usage_cab(std::io::BufReader::new(f)).map_err(|e| e.context(path.display()))
}
