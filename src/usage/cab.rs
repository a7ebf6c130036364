//! Writing the usage cab (MS-CAB, MSZIP) with the `cab` crate, streaming.
//!
//! Layout: folder 0 holds `UsageData.csv` alone; folder 1 holds `SiteVersion.txt` and
//! `manifest.json`. The CSV is streamed straight into the cab while it is hashed, so no
//! temporary copy exists; the manifest (which needs the CSV's size and SHA-256) comes
//! after it. A separate folder for the manifest lets readers get it without decompressing
//! the data, and keeps the CSV folder within the cab format's 65,535 data blocks.
//!
//! This is the one place that knows how cabs are written: a faster (parallel MSZIP)
//! writer can replace the `cab` crate here without touching anything else.

use super::csv::map_io;
use super::manifest::{SITE_VERSION_FILE, USAGE_DATA_FILE, USAGE_MANIFEST_FILE};
use super::UsageFile;
use crate::error::{Error, Result};
use crate::hashing::HashingWriter;
use std::io::{Seek, Write};

/// Write a usage cab to `out`. `write_csv` streams the CSV and returns its record count;
/// `manifest` turns the CSV's file entry into the manifest bytes. `what` names the
/// destination in error messages.
pub(crate) fn write_usage_cab<W: Write + Seek>(
    out: W,
    what: &str,
    site_version_txt: &[u8],
    write_csv: &mut dyn FnMut(&mut dyn Write) -> Result<u64>,
    manifest: &mut dyn FnMut(UsageFile) -> Vec<u8>,
) -> Result<W> {
    let io = |e: std::io::Error| map_io(what, &e);
    let mut builder = cab::CabinetBuilder::new();
    builder
        .add_folder(cab::CompressionType::MsZip)
        .add_file(USAGE_DATA_FILE);
    {
        let meta = builder.add_folder(cab::CompressionType::MsZip);
        meta.add_file(SITE_VERSION_FILE);
        meta.add_file(USAGE_MANIFEST_FILE);
    }
    let mut cab = builder.build(out).map_err(io)?;

    let entry = {
        let mut fw = next(&mut cab, USAGE_DATA_FILE)?;
        let mut hw = HashingWriter::new(&mut fw);
        let records = write_csv(&mut hw)?;
        hw.flush().map_err(io)?;
        let (_, size, sha256) = hw.finish();
        UsageFile {
            name: USAGE_DATA_FILE.to_string(),
            size,
            records,
            sha256,
        }
    };
    next(&mut cab, SITE_VERSION_FILE)?
        .write_all(site_version_txt)
        .map_err(io)?;
    let bytes = manifest(entry);
    next(&mut cab, USAGE_MANIFEST_FILE)?
        .write_all(&bytes)
        .map_err(io)?;
    cab.finish().map_err(io)
}

fn next<'a, W: Write + Seek>(
    cab: &'a mut cab::CabinetWriter<W>,
    expected: &str,
) -> Result<cab::FileWriter<'a, W>> {
    match cab.next_file() {
        Ok(Some(f)) if f.file_name() == expected => Ok(f),
        Ok(_) => Err(Error::internal(format!(
            "cab writer is out of step (expected {expected})"
        ))),
        Err(e) => Err(Error::io(format!("writing {expected} into the cab"), &e)),
    }
}
