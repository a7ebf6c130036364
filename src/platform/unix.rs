//! The Unix side of [`crate::platform`] (Linux first; the BSDs and macOS build too).

use super::OsClass;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// What an errno value means for the user; `None` for the rest (reported as they are).
pub(crate) fn classify(code: i32) -> Option<OsClass> {
    Some(match code {
        libc::ENOSPC | libc::EDQUOT => OsClass::DiskFull,
        libc::EFBIG => OsClass::FileTooLarge,
        libc::EROFS => OsClass::ReadOnly,
        libc::EACCES | libc::EPERM => OsClass::PermissionDenied,
        libc::ETXTBSY => OsClass::InUse,
        libc::ENXIO | libc::ENODEV => OsClass::DeviceGone,
        _ => return None,
    })
}

/// Each file is flushed with one `syncfs` of its file system before the step that needs
/// it durable ([`FsFlush`]), not one by one before its rename.
pub(crate) const FLUSH_EACH_FILE_BEFORE_RENAME: bool = false;

/// Best-effort fsync of a directory so the renames and creations in it survive power loss.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The file system holding a folder, to flush everything written to it at once: one
/// `syncfs` on Linux instead of an fsync per file and folder, which dominated runs of many
/// small files. Opened *before* the writes a later [`FsFlush::flush`]
/// must cover: Linux reports a write-back error to `syncfs` only if it happened after the
/// descriptor was opened, and with the writeback started early
/// ([`start_writeback`]) an error can come long before the flush.
pub(crate) struct FsFlush(File);

impl FsFlush {
    pub(crate) fn open(dir: &Path) -> std::io::Result<FsFlush> {
        File::open(dir).map(FsFlush)
    }

    /// `syncfs` (elsewhere than Linux: fsync of the folder).
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs only reads the descriptor, which `self` keeps open.
            if unsafe { libc::syncfs(self.0.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        self.0.sync_all()
    }
}

/// Ask the kernel to start writing `len` bytes of `f` from `offset` to the disk now,
/// without waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Not a durability
/// guarantee (the flush before the step that needs it, [`FsFlush`] or fsync, still
/// comes): it only starts the writeback while more data is produced, so that flush finds
/// little left to write instead of the whole file. Errors are ignored (a hint).
pub(crate) fn start_writeback(f: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads the descriptor, which `f` keeps open.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

/// Outputs get the mode a user expects from any tool (0666 less the umask), not
/// tempfile's private 0600.
pub(crate) fn public_output(builder: &mut tempfile::Builder<'_, '_>) {
    use std::os::unix::fs::PermissionsExt;
    builder.permissions(std::fs::Permissions::from_mode(0o666));
}

/// Create `path` (which must not exist) readable and writable by its owner only (0600),
/// from the first moment: there is never a window in which another user could open it.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Open a regular file for reading without following a symbolic link in its last
/// component (`O_NOFOLLOW`: a link fails with `ELOOP`, see [`is_os_link_refusal`]).
/// Anything else there (a FIFO, a device) is refused ([`super::NotRegular`]); it is
/// opened with `O_NONBLOCK` first, so that a FIFO planted on a drive is not waited on for
/// a writer forever (a wait no signal ends: the open restarts after the Ctrl-C handler).
/// `O_NONBLOCK` changes nothing for a regular file's reads and writes.
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<File> {
    regular(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path),
    )
}

/// Open a regular file for writing, created if it is not there (not truncated), without
/// following a symbolic link in its last component, dangling or not (`O_NOFOLLOW`); as
/// [`open_no_follow`], anything but a regular file is refused without waiting (a FIFO
/// without a reader fails the open with `ENXIO`).
pub(crate) fn open_write_no_follow(path: &Path) -> std::io::Result<File> {
    regular(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path),
    )
}

/// The file opened, if it is a regular file.
fn regular(opened: std::io::Result<File>) -> std::io::Result<File> {
    let not_regular = || std::io::Error::other(super::NotRegular);
    match opened {
        Ok(f) if f.metadata()?.is_file() => Ok(f),
        Ok(_) => Err(not_regular()),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(not_regular()),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_os_link_refusal(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Hard-link the already opened `src` (not whatever its path names now) as `dest`
/// (Linux: `linkat` through `/proc/self/fd`). False when the file system cannot (another
/// device, no hard links, no `/proc`), and the caller copies instead. `_src_path` is what
/// `src` was opened as (Windows needs it; the descriptor suffices here).
#[cfg(target_os = "linux")]
pub(crate) fn hard_link_open_file(src: &File, _src_path: &Path, dest: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let Ok(from) = std::ffi::CString::new(format!("/proc/self/fd/{}", src.as_raw_fd())) else {
        return false;
    };
    let Ok(to) = std::ffi::CString::new(dest.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn hard_link_open_file(_src: &File, _src_path: &Path, _dest: &Path) -> bool {
    false
}

/// Clone `src` into the empty `dst` (Linux `FICLONE`: btrfs, XFS, bcachefs…).
/// False when the file system cannot (different device, no reflink support).
#[cfg(target_os = "linux")]
pub(crate) fn reflink(src: &File, dst: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its argument and touches no user memory.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reflink(_src: &File, _dst: &File) -> bool {
    false
}

/// The flag the interrupt handler sets; null until [`on_interrupt`] installs it.
static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn handle_signal(_: libc::c_int) {
    // Async-signal-safe only: atomic loads and stores, or `_exit` on a second signal.
    let flag = FLAG.load(Ordering::SeqCst);
    // SAFETY: FLAG only ever holds a pointer to a `'static` AtomicBool.
    if flag.is_null() || unsafe { &*flag }.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(130) };
    }
}

/// Ctrl+C (SIGINT) and SIGTERM set `flag`, which the running operation polls through its
/// progress callback to cancel cleanly; a second one ends the process at once (exit 130).
pub(crate) fn on_interrupt(flag: &'static AtomicBool) {
    FLAG.store(
        flag as *const AtomicBool as *mut AtomicBool,
        Ordering::SeqCst,
    );
    let handler = handle_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler is async-signal-safe (see above).
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Unix renames replace a file other processes hold open; nothing to wait for.
pub(crate) fn rename_may_succeed_later(_e: &std::io::Error) -> bool {
    false
}

/// Unix has no path-length limit below the file system's own.
pub(crate) fn long_path_form(dir: &Path) -> std::path::PathBuf {
    dir.to_path_buf()
}

/// Flush a file opened for reading only (a hard link just made): fsync works on any
/// descriptor.
pub(crate) fn sync_read_only(f: &File) -> std::io::Result<()> {
    f.sync_all()
}
