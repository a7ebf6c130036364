//! One error type for the whole library.
//!
//! Every failure carries an [`ErrorKind`] (which becomes the C ABI status code, the
//! PowerShell `ErrorCategory` and the CLI exit code) and one human-readable line that
//! says what went wrong and, where it helps, what to do. Messages never contain secrets.

use std::fmt;

/// What kind of failure happened. Stable: the numeric values are part of the C ABI
/// (`sct_status` adds a base of 7000 to them; see `ffi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum ErrorKind {
    /// A caller-supplied argument or option is malformed or missing.
    InvalidArgument = 1,
    /// A file, folder, site or package that must exist does not.
    NotFound = 2,
    /// The destination already exists and overwriting was not requested.
    AlreadyExists = 3,
    /// The file is not a ServiceConnection site database.
    NotASiteDatabase = 4,
    /// The site database was written by a newer version of this tool.
    SchemaTooNew = 5,
    /// Another process holds the site database (or another lock) and did not let go in time.
    Busy = 6,
    /// An operating-system I/O failure not covered by a more precise kind.
    Io = 7,
    /// No space left on the destination device.
    DiskFull = 8,
    /// The operating system refused access.
    PermissionDenied = 9,
    /// SQLite reported a failure.
    Database = 10,
    /// A usage-data cab is corrupt, truncated or not a usage cab.
    InvalidCab = 11,
    /// A manifest (usage or pack) is malformed or violates the format.
    InvalidManifest = 12,
    /// A signature is missing, malformed, or does not verify against a trusted key.
    SignatureInvalid = 13,
    /// Content does not match its manifest (size or SHA-256), or files are missing/extra.
    IntegrityMismatch = 14,
    /// Data belongs to a different hierarchy than the one it is used with.
    WrongHierarchy = 15,
    /// The update service could not be reached or the connection failed.
    Network = 16,
    /// The proxy could not be reached.
    ProxyConnect = 17,
    /// The proxy refused the credentials (HTTP 407).
    ProxyAuth = 18,
    /// A TLS handshake or certificate verification failed.
    Tls = 19,
    /// The update service answered with an error status.
    Service = 20,
    /// The operation was cancelled by the caller (progress callback or Ctrl+C).
    Cancelled = 21,
    /// A package with this GUID exists with different content.
    Conflict = 22,
    /// A path in external data is absolute, escapes its folder, or passes through a link.
    UnsafePath = 23,
    /// An operation timed out.
    Timeout = 24,
    /// A bug: an internal invariant failed or a panic was caught.
    Internal = 25,
}

impl ErrorKind {
    /// Short stable identifier, used as PowerShell error IDs and JSON `kind` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::NotASiteDatabase => "NotASiteDatabase",
            ErrorKind::SchemaTooNew => "SchemaTooNew",
            ErrorKind::Busy => "Busy",
            ErrorKind::Io => "Io",
            ErrorKind::DiskFull => "DiskFull",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Database => "Database",
            ErrorKind::InvalidCab => "InvalidCab",
            ErrorKind::InvalidManifest => "InvalidManifest",
            ErrorKind::SignatureInvalid => "SignatureInvalid",
            ErrorKind::IntegrityMismatch => "IntegrityMismatch",
            ErrorKind::WrongHierarchy => "WrongHierarchy",
            ErrorKind::Network => "Network",
            ErrorKind::ProxyConnect => "ProxyConnect",
            ErrorKind::ProxyAuth => "ProxyAuth",
            ErrorKind::Tls => "Tls",
            ErrorKind::Service => "Service",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::UnsafePath => "UnsafePath",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Internal => "Internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The library's error: a kind plus one clear line for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: one_line(message.into()),
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "the operation was cancelled")
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Classify an I/O error that happened while doing `what` (e.g. "writing /mnt/usb/x.cab").
    /// The operating system's own error code decides first (through `platform::classify`,
    /// which knows errno from `GetLastError` numbers), then the portable kind.
    pub fn io(what: impl fmt::Display, err: &std::io::Error) -> Self {
        use crate::platform::OsClass;
        use std::io::ErrorKind as K;
        let class = err.raw_os_error().and_then(crate::platform::classify);
        let kind = match class {
            Some(OsClass::DiskFull | OsClass::FileTooLarge) => ErrorKind::DiskFull,
            Some(OsClass::ReadOnly | OsClass::PermissionDenied) => ErrorKind::PermissionDenied,
            Some(OsClass::InUse) => ErrorKind::Busy,
            Some(OsClass::DeviceGone) => ErrorKind::Io,
            None => match err.kind() {
                K::NotFound => ErrorKind::NotFound,
                K::PermissionDenied | K::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
                K::AlreadyExists => ErrorKind::AlreadyExists,
                K::StorageFull | K::QuotaExceeded | K::FileTooLarge => ErrorKind::DiskFull,
                K::TimedOut => ErrorKind::Timeout,
                _ => ErrorKind::Io,
            },
        };
        let detail = match (kind, class) {
            (_, Some(OsClass::InUse)) => {
                "the file is in use by another process (an antivirus scanner, Explorer or another run); try again when it has let go".to_string()
            }
            (_, Some(OsClass::DeviceGone)) => {
                "the drive is not ready or was removed; reconnect it and run again".to_string()
            }
            (ErrorKind::DiskFull, _) => {
                "no space left on the device (or the file-size limit was reached)".to_string()
            }
            (ErrorKind::PermissionDenied, _) => {
                "permission denied (or the file system is read-only)".to_string()
            }
            _ => err.to_string(),
        };
        Error::new(kind, format!("{what}: {detail}"))
    }

    /// Prefix the message with context, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error::new(self.kind, format!("{what}: {}", self.message))
    }
}

/// Keep a message on one line: hostile input can smuggle line breaks and other control
/// characters into it (serde echoes an unknown enum value verbatim, for one), which would
/// forge extra lines in logs, reports and the CLI's one-line errors. They are shown escaped.
pub(crate) fn one_line(message: String) -> String {
    if !message.contains(char::is_control) {
        return message;
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Run `f`, turning a panic inside it into `Err` without printing it: for third-party
/// parsers that panic on hostile input (the `cab` crate, minisign — found by fuzzing, see
/// tests/HOSTILE.md), so the caller can answer with a clean error, and for the C
/// boundary (`ffi::panic`), since a library must never write to its host's streams. The
/// message stays off standard error (the CLI promises one line per failure) through a
/// panic hook, installed once and chaining to the previous one, that is silent inside
/// this function and, while a C call runs ([`QuietProcess`]), on the library's worker
/// threads too. What a silenced panic would have printed is kept for the thread that
/// panicked: see [`take_quiet_panic`].
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    install_quiet_hook();
    struct Quiet;
    impl Drop for Quiet {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(q.get() - 1));
        }
    }
    QUIET.with(|q| q.set(q.get() + 1));
    let _quiet = Quiet;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

thread_local! {
    /// Depth of `catch_panic` calls on this thread.
    static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// "message (at file:line:column)" of this thread's last silenced panic.
    static LAST_QUIET_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// C calls in progress anywhere in the process. While one runs, every panic is silent:
/// in the shared library every thread running this code is the library's own (a caller
/// thread inside a call, or a worker it started), and a worker's panic reaches the
/// caller through the boundary anyway.
static QUIET_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Held by the C boundary for the length of one call: see [`QUIET_CALLS`].
pub(crate) struct QuietProcess(());

impl QuietProcess {
    pub(crate) fn enter() -> QuietProcess {
        install_quiet_hook();
        QUIET_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        QuietProcess(())
    }
}

impl Drop for QuietProcess {
    fn drop(&mut self) {
        QUIET_CALLS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The message and location of the calling thread's last silenced panic, once.
pub(crate) fn take_quiet_panic() -> Option<String> {
    LAST_QUIET_PANIC
        .try_with(|p| p.borrow_mut().take())
        .ok()
        .flatten()
}

fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET.try_with(std::cell::Cell::get).unwrap_or(0) > 0
                || QUIET_CALLS.load(std::sync::atomic::Ordering::SeqCst) > 0;
            if !quiet {
                previous(info);
                return;
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("panic with a non-text payload");
            let text = match info.location() {
                Some(l) => format!("{message} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => message.to_string(),
            };
            let _ = LAST_QUIET_PANIC.try_with(|p| *p.borrow_mut() = Some(one_line(text)));
        }));
    });
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        if let rusqlite::Error::SqliteFailure(e, _) = &err {
            match e.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return Error::new(
                        ErrorKind::Busy,
                        "the site database is in use by another process; try again when it has finished",
                    )
                }
                ErrorCode::NotADatabase => {
                    return Error::new(ErrorKind::NotASiteDatabase, "the file is not a SQLite database")
                }
                ErrorCode::DiskFull => {
                    return Error::new(ErrorKind::DiskFull, "site database: no space left on the device")
                }
                ErrorCode::ReadOnly => {
                    return Error::new(
                        ErrorKind::PermissionDenied,
                        format!("site database cannot be written (read-only): {err}"),
                    )
                }
                // Also what a reader gets for a file it may not read (found by the
                // hostile-input tests: "for writing" misled a read-only Prepare).
                ErrorCode::PermissionDenied | ErrorCode::CannotOpen => {
                    return Error::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "site database cannot be opened (permission denied, or its folder is not writable): {err}"
                        ),
                    )
                }
                _ => {}
            }
        }
        Error::new(ErrorKind::Database, format!("site database: {err}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::new(ErrorKind::InvalidArgument, format!("invalid JSON: {err}"))
    }
}
