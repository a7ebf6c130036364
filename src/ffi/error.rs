//! The per-thread last error: every `sct_` operation clears it on success and sets it on
//! failure, so a caller reads the message for *its* last call without any locking.
//! The retrieval functions here never change it.

use super::panic::guard;
use super::status::sct_status;
use super::strings::{into_c_string, lossless_c_string};
use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::c_char;

thread_local! {
    static LAST_ERROR: RefCell<Option<(sct_status, CString)>> = const { RefCell::new(None) };
}

/// Record a failure for the calling thread.
pub(crate) fn set_last_error(status: sct_status, message: &str) {
    let message = lossless_c_string(message);
    // `try_with`: during thread teardown there is nowhere to keep it, and that is fine.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = Some((status, message)));
}

/// Forget the calling thread's last failure (the call that just finished succeeded).
pub(crate) fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = None);
}

/// A copy of the calling thread's last failure (none during thread teardown).
fn last_error() -> Option<(sct_status, CString)> {
    LAST_ERROR.try_with(|e| e.borrow().clone()).ok().flatten()
}

/// The status of the calling thread's last failed `sct_` call, or `SCT_OK` when its last
/// call succeeded (or it made none).
#[no_mangle]
pub extern "C" fn sct_last_error_status() -> sct_status {
    guard(sct_status::SCT_OK, || {
        last_error().map_or(sct_status::SCT_OK, |(s, _)| s)
    })
}

/// A copy of the message for the calling thread's last failed `sct_` call: one line of
/// UTF-8 saying what went wrong. Returns NULL when the last call succeeded (or none was
/// made). The string belongs to the caller: free it with `sct_string_free`.
/// Does not change the last error.
#[no_mangle]
pub extern "C" fn sct_last_error_message() -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        last_error().map_or(std::ptr::null_mut(), |(_, msg)| into_c_string(msg))
    })
}

/// Copy the calling thread's last error message into `buf` (`len` bytes), always
/// NUL-terminated and truncated to `len - 1` bytes if it does not fit. `*out_len`
/// receives the message's full length in bytes without the NUL, so a caller can detect
/// truncation (`*out_len >= len`) and retry with a bigger buffer; it is 0 when the last
/// call succeeded. `buf` may be NULL only when `len` is 0 (a size query).
///
/// Returns `SCT_OK`, or `SCT_NULL_PARAMETER` when `out_len` is NULL or `buf` is NULL
/// with a non-zero `len`. Does not change the last error.
///
/// # Safety
/// `buf` must point to `len` writable bytes; `out_len` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn sct_last_error_copy(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sct_status {
    guard(sct_status::SCT_PANIC, || {
        if out_len.is_null() || (buf.is_null() && len > 0) {
            return sct_status::SCT_NULL_PARAMETER;
        }
        let message = last_error().map(|(_, m)| m).unwrap_or_default();
        let bytes = message.as_bytes();
        if len > 0 {
            let n = bytes.len().min(len - 1);
            // SAFETY: the caller promises `len` writable bytes at `buf`; n + 1 <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { *out_len = bytes.len() };
        sct_status::SCT_OK
    })
}

/// The stable short name of a status value: its constant's name without `SCT_`, in
/// PascalCase — `"Ok"`, `"InvalidArgument"`, `"NotFound"`, `"AlreadyExists"`,
/// `"NotASiteDatabase"`, `"SchemaTooNew"`, `"Busy"`, `"Io"`, `"DiskFull"`,
/// `"PermissionDenied"`, `"Database"`, `"InvalidCab"`, `"InvalidManifest"`,
/// `"SignatureInvalid"`, `"IntegrityMismatch"`, `"WrongHierarchy"`, `"Network"`,
/// `"ProxyConnect"`, `"ProxyAuth"`, `"Tls"`, `"Service"`, `"Cancelled"`, `"Conflict"`,
/// `"UnsafePath"`, `"Timeout"`, `"Internal"`, `"NullParameter"`, `"InvalidUtf8"`,
/// `"Panic"` — the same names as `error_kind` in Import results and `kind` in the
/// Connect report; `"Unknown"` for a value that is no status. Static: do not free.
#[no_mangle]
pub extern "C" fn sct_status_name(status: u32) -> *const c_char {
    guard(c"Unknown".as_ptr(), || {
        sct_status::from_u32(status)
            .map(|s| s.name_c())
            .unwrap_or(c"Unknown")
            .as_ptr()
    })
}

/// Why an export failed: the status to return and the message to keep as last error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: sct_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: sct_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(err: crate::Error) -> Self {
        Failure::new(sct_status::from_kind(err.kind()), err.message())
    }
}

/// What an export's body returns; the boundary turns it into a status and the last error.
pub(crate) type FfiResult<T = ()> = Result<T, Failure>;
