//! Who owns the content library. `EasySetupPayload/` beside a site database is that
//! site's (SPEC: content goes to `EasySetupPayload/Offline/<guid>/` beside the site
//! database), so two site databases in one folder would share one library: the second
//! site's imports would collide with the first's staging and final folders and be
//! refused with misleading messages. Decision: one site database per folder. The site
//! that first places content writes its file name into `EasySetupPayload/.sct-site`;
//! another site database in the same folder is then refused, naming the owner, both when
//! it is created there and when it imports. Sites may still share a folder until one of
//! them imports (no library, nothing shared yet). A library without the file (written by
//! an older version) belongs to the one site database in the folder; with several, it
//! cannot be told whose it is, and every one of them is refused until they are moved
//! apart. A claim naming a site database that is gone (renamed, moved) is taken over.

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::parent_dir;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The library's root folder beside the site database.
pub const LIBRARY_ROOT: &str = "EasySetupPayload";

/// In [`LIBRARY_ROOT`]: the file name of the site database that owns the library.
pub const OWNER_FILE: &str = ".sct-site";

fn owner_file(site_db: &Path) -> PathBuf {
    parent_dir(site_db).join(LIBRARY_ROOT).join(OWNER_FILE)
}

/// Whether `path` is a ServiceConnection site database (SQLite header and our
/// `application_id`, read from the file header without opening it as a database).
fn is_site_database(path: &Path) -> bool {
    let mut header = [0u8; 72];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok();
    ok && header.starts_with(b"SQLite format 3\0")
        && i64::from(u32::from_be_bytes([
            header[68], header[69], header[70], header[71],
        ])) == super::APPLICATION_ID
}

/// Whether two paths name one file: on Windows (and macOS) `Site.db` and `site.db` do,
/// so a claim written under one spelling is still this site's under the other.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether the library holds anything yet (a pack folder, a staging folder).
fn library_has_content(site_db: &Path) -> bool {
    let offline = parent_dir(site_db).join(super::updates::CONTENT_LIBRARY);
    std::fs::read_dir(offline).is_ok_and(|mut d| d.next().is_some())
}

/// Another site database in `site_db`'s folder that owns the content library there.
fn other_owner(site_db: &Path) -> Result<Option<PathBuf>> {
    let dir = parent_dir(site_db);
    let me = site_db.file_name().unwrap_or_default();
    let file = owner_file(site_db);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let name = text.trim_end_matches(['\r', '\n']);
            if OsStr::new(name) == me || name.is_empty() || name.contains(['/', '\\']) {
                return Ok(None);
            }
            let other = dir.join(name);
            Ok((is_site_database(&other) && !same_file(&other, site_db)).then_some(other))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !library_has_content(site_db) {
                return Ok(None);
            }
            let entries = match std::fs::read_dir(dir) {
                Ok(d) => d,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), &e)),
            };
            let mut others: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| e.file_name() != me)
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".sct-partial"))
                .map(|e| e.path())
                .filter(|p| is_site_database(p) && !same_file(p, site_db))
                .collect();
            others.sort();
            Ok(others.into_iter().next())
        }
        Err(e) => Err(Error::io(format!("reading {}", file.display()), &e)),
    }
}

/// Refuse to create a site database at `site_db` when another site database in that
/// folder owns the content library there.
pub(crate) fn check_free_for_new_site(site_db: &Path) -> Result<()> {
    match other_owner(site_db)? {
        None => Ok(()),
        Some(other) => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "cannot create site database {}: its folder already holds site database {}, which owns the content library {} there; give each site database a folder of its own",
                site_db.display(),
                other.display(),
                parent_dir(site_db).join(LIBRARY_ROOT).display()
            ),
        )),
    }
}

/// Refuse an import into `site_db` when another site database in its folder owns the
/// content library there.
pub(crate) fn check_owner(site_db: &Path) -> Result<()> {
    match other_owner(site_db)? {
        None => Ok(()),
        Some(other) => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "site database {} cannot import here: the content library {} beside it belongs to site database {} in the same folder; move this site database to a folder of its own and import again",
                site_db.display(),
                parent_dir(site_db).join(LIBRARY_ROOT).display(),
                other.display()
            ),
        )),
    }
}

/// Record `site_db` as the owner of the library beside it (its root folder exists).
/// Returns the owner file when this call wrote it, so a run that places nothing after
/// all can take the claim back.
pub(crate) fn claim(site_db: &Path) -> Result<Option<PathBuf>> {
    check_owner(site_db)?;
    let file = owner_file(site_db);
    let me = site_db.file_name().unwrap_or_default().to_string_lossy();
    if std::fs::read_to_string(&file).is_ok_and(|t| t.trim_end_matches(['\r', '\n']) == me) {
        return Ok(None);
    }
    let mut f = crate::fsutil::AtomicFile::create(&file, true)?;
    std::io::Write::write_all(&mut f, format!("{me}\n").as_bytes())
        .map_err(|e| Error::io(format!("writing {}", file.display()), &e))?;
    f.commit()?;
    Ok(Some(file))
}

/// Before recovery from a crashed import removes a library root folder that run created:
/// drop the owner file if it is all the folder holds, so the folder goes as if the run
/// had never started. A folder with anything else in it keeps its owner. (A run that is
/// undone while it is still running removes the owner file it wrote itself.)
pub(crate) fn release_if_unused(created_dir: &Path) {
    if created_dir.file_name() != Some(OsStr::new(LIBRARY_ROOT)) {
        return;
    }
    let only_owner = std::fs::read_dir(created_dir).is_ok_and(|d| {
        let names: Vec<_> = d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.len() == 1 && names[0] == OWNER_FILE
    });
    if only_owner {
        let _ = std::fs::remove_file(created_dir.join(OWNER_FILE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::{NewSite, Site};

    fn new_site(path: &Path) -> Result<Site> {
        let new: NewSite =
            serde_json::from_str(r#"{"site_code":"PS1","site_version":"5.00.9128.1000"}"#).unwrap();
        Site::create(path, &new)
    }

    #[test]
    fn the_first_site_to_place_content_owns_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.db");
        let b = d.path().join("b.db");
        new_site(&a).unwrap();
        new_site(&b).unwrap(); // nothing shared yet
        std::fs::create_dir_all(d.path().join(crate::site::updates::CONTENT_LIBRARY)).unwrap();
        assert!(claim(&a).unwrap().is_some());
        assert!(claim(&a).unwrap().is_none(), "already the owner");
        let e = check_owner(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains("a.db"), "{e}");
        let e = new_site(&d.path().join("c.db")).err().unwrap();
        assert!(e.message().contains("a.db"), "{e}");
        assert!(!d.path().join("c.db").exists());
        // The owner is gone: the other site takes over.
        std::fs::rename(&a, d.path().join("moved.sqlite.bak")).unwrap();
        std::fs::remove_file(d.path().join("moved.sqlite.bak")).unwrap();
        check_owner(&b).unwrap();
        assert!(claim(&b).unwrap().is_some());
    }

    /// A claim is this site's under any spelling of its path: another folder on the way
    /// (`sub/..`) anywhere, another letter case where the file system ignores case
    /// (Windows: `A.DB` is `a.db`).
    #[test]
    fn the_owner_under_another_spelling_is_still_the_owner() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let a = d.path().join("a.db");
        new_site(&a).unwrap();
        std::fs::create_dir_all(d.path().join(crate::site::updates::CONTENT_LIBRARY)).unwrap();
        claim(&a).unwrap();
        check_owner(&d.path().join("sub").join("..").join("a.db")).unwrap();
        #[cfg(windows)]
        {
            check_owner(&d.path().join("A.DB")).unwrap();
            assert!(claim(&d.path().join("A.DB")).is_ok());
        }
        // A different file is still refused.
        new_site(&d.path().join("b.db")).err().unwrap();
    }

    #[test]
    fn a_library_without_an_owner_file_belongs_to_the_only_site_in_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.db");
        new_site(&a).unwrap();
        let offline = d.path().join(crate::site::updates::CONTENT_LIBRARY);
        std::fs::create_dir_all(offline.join("x")).unwrap();
        check_owner(&a).unwrap();
        std::fs::write(d.path().join("notes.db"), b"not a site database at all").unwrap();
        check_owner(&a).unwrap();
        let e = new_site(&d.path().join("b.db")).err().unwrap();
        assert!(e.message().contains("a.db"), "{e}");
    }
}
