//! `connect-report.json`: what was uploaded, offered, downloaded and verified. Written
//! atomically (a reader never sees half a report) and replaced on every run. It holds no
//! secrets: neither the proxy password nor the service token are ever part of it.

use super::{ConnectReport, REPORT_FILE};
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;
use std::io::Write;
use std::path::Path;

pub(crate) fn write(dest: &Path, report: &ConnectReport) -> Result<()> {
    let path = dest.join(REPORT_FILE);
    let mut f = AtomicFile::create(&path, true)?;
    let mut bytes = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::internal(format!("cannot serialize the report: {e}")))?;
    bytes.push(b'\n');
    f.write_all(&bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.commit()
}
