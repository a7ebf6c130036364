//! Reading and validating a usage cab (used by Connect before upload and by the service
//! on receipt): the cab must parse, hold a valid `manifest.json`, and every data file it
//! lists must be present with the stated size and SHA-256.
//!
//! Our own reader does the work ([`cabinet`] reads the index, [`folder`] decodes a
//! folder's blocks with the inflate spread over every core). Each folder is decoded at
//! most once and only as far as the files the manifest lists reach, while the thread
//! that reads the stream hashes it, so the data is read once. (The `cab` crate, used
//! before, decompressed on the caller's thread and re-read a folder from its start for
//! every file asked of it.) Cabinets our reader does not handle (LZX or Quantum
//! compression, files spanning a set of cabinets) go to the `cab` crate as before.

mod cabinet;
mod folder;

use super::manifest::{UsageManifest, MAX_USAGE_MANIFEST_BYTES, USAGE_MANIFEST_FILE};
use crate::error::{Error, ErrorKind, Result};
use crate::hashing::sha256_reader;
use cabinet::{Compression, Index};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek};

/// Validate a usage cab from any seekable reader and return its manifest.
pub fn read_usage_cab<R: Read + Seek>(reader: R) -> Result<UsageManifest> {
    // The `cab` crate (0.6) panics on some malformed cabinets (e.g. a file entry whose
    // offset lies beyond its folder's data: index out of bounds in `folder.rs`); found by
    // fuzzing, kept in fuzz/regressions/usage_cab. A hostile cab must be a clean error,
    // whichever reader it meets.
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

fn read_usage_cab_inner<R: Read + Seek>(mut reader: R) -> Result<UsageManifest> {
    let index = cabinet::read_index(&mut reader).map_err(|e| {
        read_failure(e, |e| {
            format!("not a usage cab: the file is not a valid cabinet ({e})")
        })
    })?;
    let Some(manifest_at) = index.file(USAGE_MANIFEST_FILE) else {
        return Err(Error::new(
            ErrorKind::InvalidCab,
            format!("not a usage cab: the cabinet has no {USAGE_MANIFEST_FILE}"),
        ));
    };
    let ours = |i: usize| {
        index
            .folders
            .get(index.files[i].folder)
            .map(|f| f.compression)
            != Some(Compression::Other)
    };
    if index.spanned || !ours(manifest_at) {
        reader
            .rewind()
            .map_err(|e| Error::io("reading the cab", &e))?;
        return read_with_cab_crate(reader);
    }

    // The manifest first: its own folder, only as far as the manifest reaches.
    let entry = &index.files[manifest_at];
    let manifest_error = |e: std::io::Error| {
        read_failure(e, |e| {
            format!("the cab's {USAGE_MANIFEST_FILE} cannot be read: {e}")
        })
    };
    if entry.size > MAX_USAGE_MANIFEST_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidManifest,
            "the usage manifest is larger than 1 MiB",
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size as usize);
    let (start, end) = (entry.offset, entry.offset + entry.size);
    folder::decode_folder(
        &mut reader,
        &index.folders[entry.folder],
        index.data_reserve,
        end,
        &mut |at, data| {
            if let Some(part) = slice_of(at, data, start, end) {
                bytes.extend_from_slice(part);
            }
            Ok(())
        },
    )
    .map_err(manifest_error)?;
    let manifest = UsageManifest::from_bytes(&bytes)?;

    // Every listed file must be in the cab (the first entry of its name counts).
    let mut listed = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        match index.file(&f.name) {
            Some(i) => listed.push(i),
            None => {
                return Err(Error::new(
                    ErrorKind::IntegrityMismatch,
                    format!(
                        "the usage manifest lists '{}', which is not in the cab",
                        f.name
                    ),
                ))
            }
        }
    }
    if !listed.iter().all(|&i| ours(i)) {
        reader
            .rewind()
            .map_err(|e| Error::io("reading the cab", &e))?;
        return read_with_cab_crate(reader);
    }
    let digests = hash_files(&mut reader, &index, &listed)?;
    for (f, i) in manifest.files.iter().zip(&listed) {
        matches_manifest(f, index.files[*i].size, &digests[i])?;
    }
    Ok(manifest)
}

/// A listed file's size and SHA-256 as read from the cab must be what the manifest says.
fn matches_manifest(f: &super::manifest::UsageFile, size: u64, sha: &str) -> Result<()> {
    if size != f.size || sha != f.sha256 {
        return Err(Error::new(
            ErrorKind::IntegrityMismatch,
            format!(
                "'{}' in the cab does not match its manifest (size {size}, sha256 {sha}; manifest says size {}, sha256 {})",
                f.name, f.size, f.sha256
            ),
        ));
    }
    Ok(())
}

/// The part of `data` (which starts at `at` in the folder) that lies in `start..end`.
fn slice_of(at: u64, data: &[u8], start: u64, end: u64) -> Option<&[u8]> {
    let from = start.max(at);
    let to = end.min(at + data.len() as u64);
    (from < to).then(|| &data[(from - at) as usize..(to - at) as usize])
}

/// Hex SHA-256 of each of the file entries `wanted` (indexes into `index.files`, possibly
/// repeated), decoding each folder they are in once, as far as the last of them reaches.
fn hash_files<R: Read + Seek>(
    reader: &mut R,
    index: &Index,
    wanted: &[usize],
) -> Result<std::collections::HashMap<usize, String>> {
    let mut unique: Vec<usize> = wanted.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut digests = std::collections::HashMap::new();
    let mut folders: Vec<usize> = unique.iter().map(|&i| index.files[i].folder).collect();
    folders.sort_unstable();
    folders.dedup();
    for fi in folders {
        // (entry, start, end, hasher) of the wanted files in this folder.
        let mut targets: Vec<(usize, u64, u64, Sha256)> = unique
            .iter()
            .filter(|&&i| index.files[i].folder == fi)
            .map(|&i| {
                let f = &index.files[i];
                (i, f.offset, f.offset + f.size, Sha256::new())
            })
            .collect();
        // An empty file needs no data, wherever its entry says it starts.
        let limit = targets
            .iter()
            .filter(|t| t.2 > t.1)
            .map(|t| t.2)
            .max()
            .unwrap_or(0);
        folder::decode_folder(
            reader,
            &index.folders[fi],
            index.data_reserve,
            limit,
            &mut |at, data| {
                for (_, start, end, h) in targets.iter_mut() {
                    if let Some(part) = slice_of(at, data, *start, *end) {
                        h.update(part);
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| {
            let names: Vec<&str> = targets
                .iter()
                .map(|t| index.files[t.0].name.as_str())
                .collect();
            read_failure(e, |e| {
                format!("'{}' in the cab is corrupt: {e}", names.join("', '"))
            })
        })?;
        for (i, _, _, h) in targets {
            digests.insert(i, hex::encode(h.finalize()));
        }
    }
    Ok(digests)
}

/// The `cab` crate's reader, for the cabinets our own does not handle.
fn read_with_cab_crate<R: Read + Seek>(reader: R) -> Result<UsageManifest> {
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
        matches_manifest(f, size, &sha)?;
    }
    Ok(manifest)
}

/// Read buffer of [`read_usage_cab_file`]: a few data blocks per `read`.
const READ_BUFFER: usize = 256 * 1024;

/// Validate the usage cab at `path`.
pub fn read_usage_cab_file(path: &std::path::Path) -> Result<UsageManifest> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
    read_usage_cab(std::io::BufReader::with_capacity(READ_BUFFER, f))
        .map_err(|e| e.context(path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::manifest::{UsageFile, USAGE_FORMAT_VERSION};
    use std::io::{Cursor, Write};

    /// Text that repeats across MSZIP blocks, so the `cab` crate's writer (one deflate
    /// stream over the folder) refers back into earlier blocks.
    fn csv(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while v.len() < len {
            let _ = write!(v, "{},Update,Installed,{},host{}\r\n", i, i % 97, i % 13);
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn manifest_for(data: &[u8]) -> UsageManifest {
        UsageManifest {
            format_version: USAGE_FORMAT_VERSION,
            hierarchy_id: uuid::Uuid::from_u128(7),
            site_version: "5.00.9128.1000".parse().unwrap(),
            diagnostics_level: Default::default(),
            created: "2026-01-01T00:00:00Z".into(),
            tool_version: "test".into(),
            files: vec![UsageFile {
                name: "UsageData.csv".into(),
                size: data.len() as u64,
                records: 0,
                sha256: crate::hashing::sha256_hex(data),
            }],
        }
    }

    /// A cab written by the `cab` crate: every file in one folder of `compression`.
    fn crate_cab(compression: cab::CompressionType, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = cab::CabinetBuilder::new();
        let folder = builder.add_folder(compression);
        for (name, _) in files {
            folder.add_file(*name);
        }
        let mut w = builder.build(Cursor::new(Vec::new())).unwrap();
        let mut i = 0;
        while let Some(mut fw) = w.next_file().unwrap() {
            fw.write_all(files[i].1).unwrap();
            i += 1;
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn blocks_that_refer_to_earlier_blocks_are_decoded_with_their_history() {
        // 3 MiB: about 100 blocks, on the parallel path; the manifest last, after the data
        // in the same folder (as foreign cabs may have it).
        let data = csv(3 << 20);
        let m = manifest_for(&data);
        let bytes = crate_cab(
            cab::CompressionType::MsZip,
            &[("UsageData.csv", &data), ("manifest.json", &m.to_bytes())],
        );
        assert_eq!(read_usage_cab(Cursor::new(&bytes)).unwrap(), m);
        // The same through the `cab` crate (what this reader replaced) agrees.
        assert_eq!(read_with_cab_crate(Cursor::new(&bytes)).unwrap(), m);
    }

    #[test]
    fn stored_folders_are_read() {
        let data = csv(200_000);
        let m = manifest_for(&data);
        let bytes = crate_cab(
            cab::CompressionType::None,
            &[("manifest.json", &m.to_bytes()), ("UsageData.csv", &data)],
        );
        assert_eq!(read_usage_cab(Cursor::new(&bytes)).unwrap(), m);
    }

    #[test]
    fn a_wrong_digest_a_flipped_byte_and_a_truncation_are_clean_errors() {
        let data = csv(2 << 20);
        let mut m = manifest_for(&data);
        let good = crate_cab(
            cab::CompressionType::MsZip,
            &[("manifest.json", &m.to_bytes()), ("UsageData.csv", &data)],
        );
        // Flipped bytes across the data blocks: the CFDATA checksum (or the inflate, or
        // the digest) catches every one, on whichever thread meets it.
        for at in [good.len() / 3, good.len() / 2, good.len() - 10] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let e = read_usage_cab(Cursor::new(&bad)).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::InvalidCab | ErrorKind::IntegrityMismatch
                ),
                "{e}"
            );
            assert!(!e.message().contains('\n'), "{e}");
        }
        let e = read_usage_cab(Cursor::new(&good[..good.len() / 2])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCab, "{e}");
        assert!(e.message().contains("UsageData.csv"), "{e}");

        m.files[0].sha256 = crate::hashing::sha256_hex(b"other");
        let bad = crate_cab(
            cab::CompressionType::MsZip,
            &[("manifest.json", &m.to_bytes()), ("UsageData.csv", &data)],
        );
        let e = read_usage_cab(Cursor::new(&bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
    }
}
