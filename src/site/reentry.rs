//! Same-thread re-entrance. Progress callbacks run on the caller's thread, during the
//! call, and may call the library again. A callback that *writes* to the site database
//! whose write operation called it (Generate holds SQLite's write lock, Import holds the
//! import lock) would wait for that operation, i.e. for itself: 30 s, then a false
//! "in use by another process". Instead, a writing operation registers its site database
//! here for its duration, and every write first checks that the calling thread is not
//! already inside one on the same database, failing at once with `Busy` and a message
//! that says what happened. Reads are unaffected (WAL readers never wait for writers).

use crate::error::{Error, ErrorKind, Result};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

thread_local! {
    /// Site databases (canonical paths) held by writing operations on this thread, with
    /// the operation's name, innermost last.
    static HELD: RefCell<Vec<(PathBuf, &'static str)>> = const { RefCell::new(Vec::new()) };
}

/// One file, however it was named (relative, through links).
fn key(site_db: &Path) -> PathBuf {
    std::fs::canonicalize(site_db)
        .or_else(|_| std::path::absolute(site_db))
        .unwrap_or_else(|_| site_db.to_path_buf())
}

/// Registration of a writing operation on a site database; dropped when it ends.
pub(crate) struct Held(());

impl Drop for Held {
    fn drop(&mut self) {
        let _ = HELD.try_with(|h| h.borrow_mut().pop());
    }
}

/// Fail at once if the calling thread is inside a writing operation on `site_db`, then
/// register `operation` as holding it until the returned guard is dropped.
pub(crate) fn hold(site_db: &Path, operation: &'static str) -> Result<Held> {
    let k = key(site_db);
    check_key(site_db, &k)?;
    HELD.with(|h| h.borrow_mut().push((k, operation)));
    Ok(Held(()))
}

/// Fail at once if the calling thread is inside a writing operation on `site_db`.
pub(crate) fn check(site_db: &Path) -> Result<()> {
    if HELD.with(|h| h.borrow().is_empty()) {
        return Ok(()); // the common case costs no system call
    }
    check_key(site_db, &key(site_db))
}

fn check_key(site_db: &Path, k: &Path) -> Result<()> {
    let holder = HELD.with(|h| {
        h.borrow()
            .iter()
            .rev()
            .find(|(p, _)| p == k)
            .map(|(_, op)| *op)
    });
    match holder {
        None => Ok(()),
        Some(op) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "site database {} is being written by {op} on this same thread: this call was made from inside a progress callback of that operation, and would wait for itself; make it after the operation returns",
                site_db.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_site_refuses_writes_on_this_thread_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("site.db");
        std::fs::write(&db, b"x").unwrap();
        let other = dir.path().join("other.db");
        check(&db).unwrap();
        {
            let _held = hold(&db, "an import").unwrap();
            // The same file under another name is the same site database.
            let same = dir.path().join(".").join("site.db");
            let e = check(&same).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy);
            assert!(e.message().contains("an import on this same thread"), "{e}");
            assert!(hold(&db, "sample data").is_err());
            check(&other).unwrap();
            let db2 = db.clone();
            std::thread::spawn(move || check(&db2).unwrap())
                .join()
                .unwrap();
        }
        check(&db).unwrap();
    }
}
