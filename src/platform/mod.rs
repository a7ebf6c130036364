//! Everything that differs between operating systems, behind one interface: how OS error
//! codes are classified, how data is made durable, owner-only files for secrets, opening a
//! file without following a link, hard links and block cloning, and the console's
//! interrupt (Ctrl+C). Prepare, Connect, Import and the service call these functions and
//! contain no `cfg` of their own; `unix.rs` and `windows.rs` implement the same set.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// What an operating-system error code means for the user, independent of the platform's
/// numbering (errno on Unix, `GetLastError` on Windows). See [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OsClass {
    /// No space left on the device, or a quota reached.
    DiskFull,
    /// The file reached a size limit (`ulimit -f`, FAT's 4 GiB).
    FileTooLarge,
    /// The medium or file system is read-only (write-protected stick, read-only mount).
    ReadOnly,
    /// The operating system refused access.
    PermissionDenied,
    /// Another process holds the file open or locked (Windows sharing and lock
    /// violations: an antivirus scanner, Explorer's preview, another copy of the tool).
    InUse,
    /// The drive is not ready or is gone (a pulled USB stick, a lost network share).
    DeviceGone,
}

/// The error a link met where links are refused: [`open_no_follow`] returns it (as the
/// payload of an `io::Error` where the platform has no error code of its own for it).
#[derive(Debug)]
pub(crate) struct LinkRefused;

impl std::fmt::Display for LinkRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the path is a link (symbolic link, junction or mount point)")
    }
}

impl std::error::Error for LinkRefused {}

/// The error of opening something other than a regular file (a FIFO, a device) where only
/// a regular file will do: [`open_no_follow`] and [`open_write_no_follow`] on Unix.
#[derive(Debug)]
pub(crate) struct NotRegular;

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the path is not a regular file")
    }
}

impl std::error::Error for NotRegular {}

/// Whether `e` says that the path was not a regular file ([`NotRegular`]).
pub(crate) fn is_not_regular(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotRegular>())
}

/// Whether `e` says that the path was a link ([`open_no_follow`] refused to follow it).
pub(crate) fn is_link_refusal(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LinkRefused>()) || is_os_link_refusal(e)
}

#[cfg(test)]
mod tests {
    use crate::error::{Error, ErrorKind};
    use std::io::Write;

    fn kind_of(code: i32) -> (ErrorKind, String) {
        let e = Error::io("writing E:\\x", &std::io::Error::from_raw_os_error(code));
        (e.kind(), e.message().to_string())
    }

    #[cfg(unix)]
    #[test]
    fn errno_values_map_to_error_kinds() {
        for (code, kind) in [
            (libc::ENOSPC, ErrorKind::DiskFull),
            (libc::EDQUOT, ErrorKind::DiskFull),
            (libc::EFBIG, ErrorKind::DiskFull),
            (libc::EROFS, ErrorKind::PermissionDenied),
            (libc::EACCES, ErrorKind::PermissionDenied),
            (libc::EPERM, ErrorKind::PermissionDenied),
            (libc::ETXTBSY, ErrorKind::Busy),
            (libc::ENODEV, ErrorKind::Io),
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::EEXIST, ErrorKind::AlreadyExists),
            (libc::EIO, ErrorKind::Io),
        ] {
            assert_eq!(kind_of(code).0, kind, "errno {code}");
        }
        assert!(kind_of(libc::ENXIO).1.contains("not ready or was removed"));
    }

    /// Windows error numbers are never read as errno values: 1 is ERROR_INVALID_FUNCTION
    /// (errno 1 is EPERM), 13 is ERROR_INVALID_DATA (errno 13 is EACCES), 28 is
    /// ERROR_OUT_OF_PAPER (errno 28 is ENOSPC).
    #[cfg(windows)]
    #[test]
    fn windows_error_codes_map_to_error_kinds() {
        use windows_sys::Win32::Foundation as F;
        for (code, kind) in [
            (F::ERROR_DISK_FULL, ErrorKind::DiskFull),
            (F::ERROR_HANDLE_DISK_FULL, ErrorKind::DiskFull),
            (F::ERROR_DISK_QUOTA_EXCEEDED, ErrorKind::DiskFull),
            (F::ERROR_FILE_TOO_LARGE, ErrorKind::DiskFull),
            (F::ERROR_WRITE_PROTECT, ErrorKind::PermissionDenied),
            (F::ERROR_ACCESS_DENIED, ErrorKind::PermissionDenied),
            (F::ERROR_SHARING_VIOLATION, ErrorKind::Busy),
            (F::ERROR_LOCK_VIOLATION, ErrorKind::Busy),
            (F::ERROR_NOT_READY, ErrorKind::Io),
            (F::ERROR_DEVICE_NOT_CONNECTED, ErrorKind::Io),
            (F::ERROR_DEV_NOT_EXIST, ErrorKind::Io),
            (F::ERROR_FILE_NOT_FOUND, ErrorKind::NotFound),
            (F::ERROR_PATH_NOT_FOUND, ErrorKind::NotFound),
            (F::ERROR_FILE_EXISTS, ErrorKind::AlreadyExists),
            (F::ERROR_INVALID_FUNCTION, ErrorKind::Io),
            (F::ERROR_INVALID_DATA, ErrorKind::Io),
            (F::ERROR_OUT_OF_PAPER, ErrorKind::Io),
        ] {
            assert_eq!(kind_of(code as i32).0, kind, "Windows error {code}");
        }
        for code in [
            F::ERROR_NOT_READY,
            F::ERROR_DEVICE_NOT_CONNECTED,
            F::ERROR_DEV_NOT_EXIST,
        ] {
            assert!(kind_of(code as i32).1.contains("not ready or was removed"));
        }
        assert!(kind_of(F::ERROR_SHARING_VIOLATION as i32)
            .1
            .contains("in use by another process"));
    }

    /// A real sharing violation (a file another handle holds without sharing) is `Busy`,
    /// and replacing such a file gives up with a clear error after retrying, losing nothing.
    #[cfg(windows)]
    #[test]
    fn a_file_held_without_sharing_is_busy() {
        use std::os::windows::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.cab");
        std::fs::write(&path, b"old").unwrap();
        let held = std::fs::OpenOptions::new()
            .read(true)
            .share_mode(0)
            .open(&path)
            .unwrap();
        let e = std::fs::File::open(&path).unwrap_err();
        assert_eq!(
            Error::io("reading held.cab", &e).kind(),
            ErrorKind::Busy,
            "{e}"
        );
        let mut f = crate::fsutil::AtomicFile::create(&path, true).unwrap();
        f.write_all(b"new").unwrap();
        // Windows (and Wine) refuse to replace a file open without FILE_SHARE_DELETE
        // with ERROR_ACCESS_DENIED (sometimes ERROR_SHARING_VIOLATION): after retrying,
        // the message names both causes.
        let e = f.commit().unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Busy | ErrorKind::PermissionDenied)
                && e.message().contains("in use by another process"),
            "{e}"
        );
        drop(held);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary left"
        );
    }

    /// The durability step works on a folder (Windows refuses `File::open` of a folder,
    /// which once failed every Connect), and an atomic file is flushed and renamed.
    #[test]
    fn durability_steps_work_on_folders() {
        let dir = tempfile::tempdir().unwrap();
        super::FsFlush::open(dir.path()).unwrap().flush().unwrap();
        super::sync_dir(dir.path());
        let dest = dir.path().join("manifest.json");
        let mut f = crate::fsutil::AtomicFile::create(&dest, false).unwrap();
        f.write_all(b"{}").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
    }

    /// A secret written through `AtomicFile::create_private` (the service's
    /// `publisher.key`): readable by its owner alone.
    fn write_secret(dir: &std::path::Path) -> std::path::PathBuf {
        let key = dir.join("publisher.key");
        let mut f = crate::fsutil::AtomicFile::create_private(&key, false).unwrap();
        f.write_all(b"untrusted comment: secret key\n").unwrap();
        f.commit().unwrap();
        key
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = write_secret(dir.path());
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A secret (the service's `publisher.key`) has a protected DACL with one entry, full
    /// control for the current user (read back with GetSecurityInfo).
    ///
    /// Wine keeps no DACLs on its Unix files: it turns the one given at creation into mode
    /// bits and makes one up on reading (LocalSystem, the owner, and Everyone when others
    /// may read). There the test checks what Wine can show: Everyone has no entry (a key
    /// created with the default permissions has one, readable by all).
    #[cfg(windows)]
    #[test]
    fn secrets_are_owner_only() {
        const EVERYONE: &str = "S-1-1-0";
        let dir = tempfile::tempdir().unwrap();
        let key = write_secret(dir.path());
        let (protected, aces) = super::acl_of(&key);
        if super::under_wine() {
            eprintln!("Wine: checking only that Everyone has no entry ({aces:?})");
            assert!(aces.iter().all(|(_, _, sid)| sid != EVERYONE), "{aces:?}");
        } else {
            let user = super::CurrentUser::get().unwrap();
            assert!(protected, "the DACL inherits from the folder");
            assert_eq!(
                aces,
                vec![(
                    true,
                    windows_sys::Win32::Storage::FileSystem::FILE_ALL_ACCESS,
                    super::sid_string(user.sid())
                )],
                "expected one entry: full control for the current user"
            );
        }
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("secret key"));
    }

    /// Ctrl+C reaches the same flag the Unix SIGINT handler sets, and the handler takes
    /// the event (the process is not ended). Delivered as Windows delivers it: to the
    /// registered routine on a thread of its own.
    #[cfg(windows)]
    #[test]
    fn ctrl_c_sets_the_cancel_flag() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static FLAG: AtomicBool = AtomicBool::new(false);
        super::on_interrupt(&FLAG);
        assert!(!FLAG.load(Ordering::SeqCst));
        assert!(super::console_event(
            windows_sys::Win32::System::Console::CTRL_C_EVENT
        ));
        assert!(FLAG.load(Ordering::SeqCst));
        assert!(
            !super::console_event(99),
            "unknown events go to the next handler"
        );
    }

    #[cfg(windows)]
    #[test]
    fn verbatim_paths_for_drive_letters_and_unc() {
        use std::path::Path;
        let v = |p: &str| super::verbatim_path(Path::new(p)).unwrap();
        assert_eq!(
            v(r"E:\UpdatePacks\a\..\b"),
            Path::new(r"\\?\E:\UpdatePacks\b")
        );
        assert_eq!(v("E:/UpdatePacks/x"), Path::new(r"\\?\E:\UpdatePacks\x"));
        assert_eq!(
            v(r"\\server\share\UpdatePacks"),
            Path::new(r"\\?\UNC\server\share\UpdatePacks")
        );
        assert_eq!(v(r"\\?\E:\already"), Path::new(r"\\?\E:\already"));
    }

    /// Paths longer than 260 characters: atomic outputs, private files, hard links and
    /// opening without following links all work there.
    #[test]
    fn long_paths_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for i in 0..8 {
            deep.push(format!("{i}-{}", "d".repeat(40)));
        }
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.as_os_str().len() > 300);
        let out = deep.join("UsageData.cab");
        let mut f = crate::fsutil::AtomicFile::create(&out, false).unwrap();
        f.write_all(b"cab").unwrap();
        f.commit().unwrap();
        let mut k = crate::fsutil::AtomicFile::create_private(&deep.join("k.key"), false).unwrap();
        k.write_all(b"secret").unwrap();
        k.commit().unwrap();
        assert_eq!(std::fs::read(deep.join("k.key")).unwrap(), b"secret");
        let src = super::open_no_follow(&out).unwrap();
        let link = deep.join("linked.cab");
        assert!(super::hard_link_open_file(&src, &out, &link));
        assert_eq!(std::fs::read(&link).unwrap(), b"cab");
    }

    /// A hard link names the very file opened; a clone where the volume cannot clone
    /// (not ReFS, btrfs or XFS) is refused and leaves the destination empty.
    #[test]
    fn hard_links_and_clones() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        std::fs::write(&a, b"hello").unwrap();
        let src = std::fs::File::open(&a).unwrap();
        let b = dir.path().join("b.bin");
        if super::hard_link_open_file(&src, &a, &b) {
            assert_eq!(std::fs::read(&b).unwrap(), b"hello");
            #[cfg(windows)]
            assert_eq!(super::link_count(&src).unwrap(), 2);
            #[cfg(unix)]
            assert_eq!(
                std::os::unix::fs::MetadataExt::nlink(&src.metadata().unwrap()),
                2
            );
        } else {
            eprintln!("skipped: this file system has no hard links");
        }
        let c = dir.path().join("c.bin");
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&c)
            .unwrap();
        if !super::reflink(&src, &dst) {
            assert_eq!(dst.metadata().unwrap().len(), 0);
        } else {
            assert_eq!(std::fs::read(&c).unwrap(), b"hello");
        }
    }

    /// A FIFO is refused as not a regular file by both opens, at once (a blocked open would
    /// wait for the other end forever: checked on a thread of its own, given 10 s).
    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_without_waiting() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send([
                super::open_no_follow(&path).map(drop),
                super::open_write_no_follow(&path).map(drop),
            ]);
        });
        let answers = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO waited");
        for e in answers {
            let e = e.expect_err("a FIFO was opened");
            assert!(super::is_not_regular(&e), "{e}");
        }
    }

    /// `open_write_no_follow` creates a missing file and opens an existing one without
    /// cutting it.
    #[test]
    fn opening_for_writing_creates_or_keeps() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        super::open_write_no_follow(&path)
            .unwrap()
            .write_all(b"abc")
            .unwrap();
        let f = super::open_write_no_follow(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    /// A link as the last component is refused by `open_no_follow` and
    /// `open_write_no_follow` (a dangling one too, whose target is not created), and as any
    /// component by `ensure_no_symlinks`.
    #[test]
    fn links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        std::fs::write(&target, b"x").unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let link = dir.path().join("link.bin");
        let dlink = dir.path().join("dirlink");
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(&target, &link)
            .and_then(|()| std::os::unix::fs::symlink(dir.path().join("real"), &dlink));
        #[cfg(windows)]
        let made = std::os::windows::fs::symlink_file(&target, &link)
            .and_then(|()| std::os::windows::fs::symlink_dir(dir.path().join("real"), &dlink));
        // Wine 8 reports success for CreateSymbolicLinkW and creates nothing.
        if made.is_err() || link.symlink_metadata().is_err() {
            eprintln!("skipped: symbolic links cannot be created here ({made:?})");
            return;
        }
        let e = super::open_no_follow(&link).unwrap_err();
        assert!(super::is_link_refusal(&e), "{e}");
        assert!(super::open_no_follow(&target).is_ok());
        let e = super::open_write_no_follow(&link).unwrap_err();
        assert!(super::is_link_refusal(&e), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
        let nowhere = dir.path().join("nowhere");
        let dangling = dir.path().join("dangling");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
        #[cfg(windows)]
        std::os::windows::fs::symlink_file(&nowhere, &dangling).unwrap();
        let e = super::open_write_no_follow(&dangling).unwrap_err();
        assert!(super::is_link_refusal(&e), "{e}");
        assert!(!nowhere.exists(), "a dangling link's target was created");
        let e = crate::fsutil::ensure_no_symlinks(dir.path(), std::path::Path::new("dirlink/x"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
    }
}
