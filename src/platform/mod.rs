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

/// Whether `e` says that the path was a link ([`open_no_follow`] refused to follow it).
pub(crate) fn is_link_refusal(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LinkRefused>()) || is_os_link_refusal(e)
}
