//! The import lock: one import into a site at a time.
//!
//! An exclusive advisory lock (`flock` on Unix, `LockFileEx` on Windows, through `fs4`) on
//! `<site db>.sct-import.lock` beside the database. The kernel drops it when the holder
//! exits or is killed, so a crashed import never leaves the site locked. The file itself
//! is never deleted: removing a lock file while another process waits on it would let two
//! imports in at once.

use crate::error::{Error, ErrorKind, Result};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Suffix of the lock file beside the site database.
pub const LOCK_SUFFIX: &str = ".sct-import.lock";

/// Held for the whole import; dropping it releases the lock.
pub(crate) struct ImportLock {
    file: File,
}

/// `<site db>.sct-import.lock`.
pub(crate) fn lock_path(site_db: &Path) -> PathBuf {
    let mut name = site_db.file_name().unwrap_or_default().to_os_string();
    name.push(LOCK_SUFFIX);
    site_db.with_file_name(name)
}

impl ImportLock {
    /// Take the lock, waiting up to `wait` for another import to finish.
    pub(crate) fn acquire(site_db: &Path, wait: Duration) -> Result<Self> {
        let path = lock_path(site_db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the import lock {}", path.display()), &e))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match file.try_lock_exclusive() {
                Ok(true) => return Ok(ImportLock { file }),
                Ok(false) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("locking the import lock {}", path.display()),
                        &e,
                    ))
                }
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "another import into this site is still running (it holds {}); waited {} s — try again when it has finished",
                        path.display(),
                        waited.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause.min(wait - waited));
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}
