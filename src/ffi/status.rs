//! The status code every `sct_` function returns.

use crate::error::ErrorKind;

/// What a `sct_` call returned: `SCT_OK`, or why it failed.
///
/// Values are stable and start at 7000 so they never collide with `errno`-style or
/// boolean returns. `SCT_OK + n` is the library's error kind number `n` (the same
/// kinds the command line and the PowerShell module report); the values from 7100 on
/// are failures of the C boundary itself. After any failure,
/// `sct_last_error_message()` says what went wrong on the calling thread.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub enum sct_status {
    /// Success.
    SCT_OK = 7000,
    /// A caller-supplied argument or option is malformed or missing (including bad options JSON).
    SCT_INVALID_ARGUMENT = 7001,
    /// A file, folder, site or package that must exist does not.
    SCT_NOT_FOUND = 7002,
    /// The destination already exists and overwriting was not requested.
    SCT_ALREADY_EXISTS = 7003,
    /// The file is not a ServiceConnection site database.
    SCT_NOT_A_SITE_DATABASE = 7004,
    /// The site database was written by a newer version of this library.
    SCT_SCHEMA_TOO_NEW = 7005,
    /// Another process holds the site database (or another lock) and did not let go in
    /// time; or, at once and without waiting, a call writing to a site database was made
    /// from inside a progress callback of an operation writing to the same site database
    /// on the same thread (it would wait for itself).
    SCT_BUSY = 7006,
    /// An operating-system I/O failure not covered by a more precise status.
    SCT_IO = 7007,
    /// No space left on the destination device.
    SCT_DISK_FULL = 7008,
    /// The operating system refused access.
    SCT_PERMISSION_DENIED = 7009,
    /// SQLite reported a failure.
    SCT_DATABASE = 7010,
    /// A usage-data cab is corrupt, truncated or not a usage cab.
    SCT_INVALID_CAB = 7011,
    /// A manifest (usage or pack) is malformed or violates the format.
    SCT_INVALID_MANIFEST = 7012,
    /// A signature is missing, malformed, or does not verify against a trusted key.
    SCT_SIGNATURE_INVALID = 7013,
    /// Content does not match its manifest (size or SHA-256), or files are missing/extra.
    SCT_INTEGRITY_MISMATCH = 7014,
    /// Data belongs to a different hierarchy than the one it is used with.
    SCT_WRONG_HIERARCHY = 7015,
    /// The update service could not be reached or the connection failed.
    SCT_NETWORK = 7016,
    /// The proxy could not be reached.
    SCT_PROXY_CONNECT = 7017,
    /// The proxy refused the credentials (HTTP 407).
    SCT_PROXY_AUTH = 7018,
    /// A TLS handshake or certificate verification failed.
    SCT_TLS = 7019,
    /// The update service answered with an error status.
    SCT_SERVICE = 7020,
    /// The progress callback returned non-zero. Prepare, Export, sample data and Import
    /// then leave nothing behind; Connect keeps only its resumable `.sct-partial`
    /// downloads and files it verified, and writes no `manifest.json` for an unfinished
    /// pack (see `sct_connect`).
    SCT_CANCELLED = 7021,
    /// A package with this GUID exists with different content; or the content library
    /// beside a site database belongs to another site database in the same folder.
    SCT_CONFLICT = 7022,
    /// A path in external data is absolute, escapes its folder, or passes through a link.
    SCT_UNSAFE_PATH = 7023,
    /// An operation timed out.
    SCT_TIMEOUT = 7024,
    /// A bug: an internal invariant failed.
    SCT_INTERNAL = 7025,
    /// A required pointer argument was NULL.
    SCT_NULL_PARAMETER = 7100,
    /// A string argument was not valid UTF-8.
    SCT_INVALID_UTF8 = 7101,
    /// A panic was caught at the boundary (a bug); the process is unharmed.
    SCT_PANIC = 7102,
}

impl sct_status {
    /// The status for a library error kind (`SCT_OK + kind number`).
    pub fn from_kind(kind: ErrorKind) -> sct_status {
        use sct_status::*;
        match kind {
            ErrorKind::InvalidArgument => SCT_INVALID_ARGUMENT,
            ErrorKind::NotFound => SCT_NOT_FOUND,
            ErrorKind::AlreadyExists => SCT_ALREADY_EXISTS,
            ErrorKind::NotASiteDatabase => SCT_NOT_A_SITE_DATABASE,
            ErrorKind::SchemaTooNew => SCT_SCHEMA_TOO_NEW,
            ErrorKind::Busy => SCT_BUSY,
            ErrorKind::Io => SCT_IO,
            ErrorKind::DiskFull => SCT_DISK_FULL,
            ErrorKind::PermissionDenied => SCT_PERMISSION_DENIED,
            ErrorKind::Database => SCT_DATABASE,
            ErrorKind::InvalidCab => SCT_INVALID_CAB,
            ErrorKind::InvalidManifest => SCT_INVALID_MANIFEST,
            ErrorKind::SignatureInvalid => SCT_SIGNATURE_INVALID,
            ErrorKind::IntegrityMismatch => SCT_INTEGRITY_MISMATCH,
            ErrorKind::WrongHierarchy => SCT_WRONG_HIERARCHY,
            ErrorKind::Network => SCT_NETWORK,
            ErrorKind::ProxyConnect => SCT_PROXY_CONNECT,
            ErrorKind::ProxyAuth => SCT_PROXY_AUTH,
            ErrorKind::Tls => SCT_TLS,
            ErrorKind::Service => SCT_SERVICE,
            ErrorKind::Cancelled => SCT_CANCELLED,
            ErrorKind::Conflict => SCT_CONFLICT,
            ErrorKind::UnsafePath => SCT_UNSAFE_PATH,
            ErrorKind::Timeout => SCT_TIMEOUT,
            ErrorKind::Internal => SCT_INTERNAL,
        }
    }

    /// Every status, for tests and for `sct_status_name`.
    pub const ALL: [sct_status; 29] = {
        use sct_status::*;
        [
            SCT_OK,
            SCT_INVALID_ARGUMENT,
            SCT_NOT_FOUND,
            SCT_ALREADY_EXISTS,
            SCT_NOT_A_SITE_DATABASE,
            SCT_SCHEMA_TOO_NEW,
            SCT_BUSY,
            SCT_IO,
            SCT_DISK_FULL,
            SCT_PERMISSION_DENIED,
            SCT_DATABASE,
            SCT_INVALID_CAB,
            SCT_INVALID_MANIFEST,
            SCT_SIGNATURE_INVALID,
            SCT_INTEGRITY_MISMATCH,
            SCT_WRONG_HIERARCHY,
            SCT_NETWORK,
            SCT_PROXY_CONNECT,
            SCT_PROXY_AUTH,
            SCT_TLS,
            SCT_SERVICE,
            SCT_CANCELLED,
            SCT_CONFLICT,
            SCT_UNSAFE_PATH,
            SCT_TIMEOUT,
            SCT_INTERNAL,
            SCT_NULL_PARAMETER,
            SCT_INVALID_UTF8,
            SCT_PANIC,
        ]
    };

    /// Stable short name: the error kind's name (`"NotFound"`), or `"Ok"`,
    /// `"NullParameter"`, `"InvalidUtf8"`, `"Panic"`.
    pub fn name(self) -> &'static str {
        self.name_c().to_str().unwrap_or("Unknown")
    }

    /// [`Self::name`] as a static C string.
    pub fn name_c(self) -> &'static std::ffi::CStr {
        use sct_status::*;
        match self {
            SCT_OK => c"Ok",
            SCT_INVALID_ARGUMENT => c"InvalidArgument",
            SCT_NOT_FOUND => c"NotFound",
            SCT_ALREADY_EXISTS => c"AlreadyExists",
            SCT_NOT_A_SITE_DATABASE => c"NotASiteDatabase",
            SCT_SCHEMA_TOO_NEW => c"SchemaTooNew",
            SCT_BUSY => c"Busy",
            SCT_IO => c"Io",
            SCT_DISK_FULL => c"DiskFull",
            SCT_PERMISSION_DENIED => c"PermissionDenied",
            SCT_DATABASE => c"Database",
            SCT_INVALID_CAB => c"InvalidCab",
            SCT_INVALID_MANIFEST => c"InvalidManifest",
            SCT_SIGNATURE_INVALID => c"SignatureInvalid",
            SCT_INTEGRITY_MISMATCH => c"IntegrityMismatch",
            SCT_WRONG_HIERARCHY => c"WrongHierarchy",
            SCT_NETWORK => c"Network",
            SCT_PROXY_CONNECT => c"ProxyConnect",
            SCT_PROXY_AUTH => c"ProxyAuth",
            SCT_TLS => c"Tls",
            SCT_SERVICE => c"Service",
            SCT_CANCELLED => c"Cancelled",
            SCT_CONFLICT => c"Conflict",
            SCT_UNSAFE_PATH => c"UnsafePath",
            SCT_TIMEOUT => c"Timeout",
            SCT_INTERNAL => c"Internal",
            SCT_NULL_PARAMETER => c"NullParameter",
            SCT_INVALID_UTF8 => c"InvalidUtf8",
            SCT_PANIC => c"Panic",
        }
    }

    /// The status with this numeric value, if any.
    pub fn from_u32(n: u32) -> Option<sct_status> {
        Self::ALL.iter().copied().find(|s| *s as u32 == n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error kind maps to `7000 + its number`, and the status name is the kind's name.
    #[test]
    fn kind_statuses_are_base_plus_kind_number_and_names_match() {
        let kinds: Vec<sct_status> = sct_status::ALL
            .iter()
            .copied()
            .filter(|s| (7001..7100).contains(&(*s as u32)))
            .collect();
        assert_eq!(kinds.len(), 25);
        for status in kinds {
            let kind: ErrorKind = serde_json::from_str(&format!("\"{}\"", status.name()))
                .unwrap_or_else(|_| panic!("{} names no error kind", status.name()));
            assert_eq!(kind as u32 + 7000, status as u32);
            assert_eq!(sct_status::from_kind(kind), status);
            assert_eq!(kind.as_str(), status.name());
        }
        assert_eq!(sct_status::from_u32(7000), Some(sct_status::SCT_OK));
        assert_eq!(sct_status::from_u32(7102), Some(sct_status::SCT_PANIC));
        assert_eq!(sct_status::from_u32(6999), None);
        assert_eq!(sct_status::from_u32(7026), None);
    }

    /// The header lists every status name `sct_status_name` can give (issue 16: only a
    /// few were listed).
    #[test]
    fn the_header_lists_every_status_name() {
        let header = include_str!("../../include/serviceconnection.h");
        for status in sct_status::ALL {
            let quoted = format!("`\"{}\"`", status.name());
            assert!(header.contains(&quoted), "{quoted} is not in the header");
        }
    }
}
