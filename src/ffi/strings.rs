//! Strings across the boundary: reading the caller's UTF-8 arguments, handing out
//! library-owned strings (JSON results, messages) and taking them back in `sct_string_free`.

use super::error::{Failure, FfiResult};
use super::panic::guard;
use super::status::sct_status;
use serde::Serialize;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::PathBuf;

/// A required string argument. NULL → `SCT_NULL_PARAMETER`, bad UTF-8 → `SCT_INVALID_UTF8`.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::new(
            sct_status::SCT_NULL_PARAMETER,
            format!("argument '{name}' is NULL"),
        ));
    }
    // SAFETY: non-NULL, and the caller promises NUL termination.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Failure::new(
            sct_status::SCT_INVALID_UTF8,
            format!(
                "argument '{name}' is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// An optional string argument: NULL → `None`.
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn opt_arg_str<'a>(p: *const c_char, name: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { arg_str(p, name) }.map(Some)
    }
}

/// A required path argument (UTF-8, non-empty).
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn arg_path(p: *const c_char, name: &str) -> FfiResult<PathBuf> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { arg_str(p, name) }?;
    if s.is_empty() {
        return Err(Failure::new(
            sct_status::SCT_INVALID_ARGUMENT,
            format!("argument '{name}' is an empty path"),
        ));
    }
    Ok(PathBuf::from(s))
}

/// Check an out-parameter before any work is done, so a NULL one costs nothing.
pub(crate) fn check_out<T>(p: *mut T, name: &str) -> FfiResult<()> {
    if p.is_null() {
        Err(Failure::new(
            sct_status::SCT_NULL_PARAMETER,
            format!("out-parameter '{name}' is NULL"),
        ))
    } else {
        Ok(())
    }
}

/// Write an out-parameter (checked with [`check_out`] before).
///
/// # Safety
/// `p` is non-NULL and writable.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T) {
    // SAFETY: the caller checked `p` and promises it is writable.
    unsafe { p.write(value) }
}

/// Parse an options JSON argument into `T`. Parse errors keep serde's position and field
/// names, but never echo a value, since option documents can hold secrets (tokens,
/// proxy passwords).
pub(crate) fn parse_options<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &str,
) -> FfiResult<T> {
    serde_json::from_str(json).map_err(|e| {
        Failure::new(
            sct_status::SCT_INVALID_ARGUMENT,
            format!("{what} options JSON is invalid: {}", redact_serde_error(&e)),
        )
    })
}

/// serde's "invalid type: string \"hunter2\", expected u32" would echo the value; keep
/// only the category of what was found.
fn redact_serde_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for prefix in ["invalid type: ", "invalid value: ", "invalid length: "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            if let Some(i) = rest.find(", expected") {
                let found = rest[..i].split([' ', '`', '"']).next().unwrap_or("value");
                return crate::error::one_line(format!("{prefix}{found}{}", &rest[i..]));
            }
        }
    }
    // serde echoes unknown field and variant names verbatim: keep them on one line.
    crate::error::one_line(text)
}

/// Serialize a result into a library-owned JSON string.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> FfiResult<*mut c_char> {
    let text = serde_json::to_string(value).map_err(|e| {
        Failure::new(
            sct_status::SCT_INTERNAL,
            format!("the result could not be serialized: {e}"),
        )
    })?;
    Ok(into_c_string(lossless_c_string(&text)))
}

/// A C string from text that may (in theory) hold NUL bytes; they become U+FFFD rather
/// than truncating the message. JSON from serde never holds one (it escapes `\u0000`).
pub(crate) fn lossless_c_string(text: &str) -> CString {
    CString::new(text).unwrap_or_else(|_| {
        CString::new(text.replace('\0', "\u{FFFD}")).expect("NUL bytes were replaced")
    })
}

/// Hand a string to the caller; it comes back through [`sct_string_free`].
pub(crate) fn into_c_string(s: CString) -> *mut c_char {
    s.into_raw()
}

/// Free a string returned by this library (a JSON result, or `sct_last_error_message`).
/// NULL is accepted and ignored. Freeing anything else, or the same string twice, is
/// undefined behaviour.
///
/// # Safety
/// `s` is NULL or a string this library returned and that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn sct_string_free(s: *mut c_char) {
    guard((), || {
        if !s.is_null() {
            // SAFETY: the caller promises `s` came from `CString::into_raw` here.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

/// [`parse_options`] with the failure reduced to the message the C caller would read: for
/// the fuzzing crate (`fuzzing/`), which checks those messages; not a supported API.
#[doc(hidden)]
pub fn parse_options_for_fuzzing<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &str,
) -> Result<T, String> {
    parse_options(json, what).map_err(|f| f.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Opts {
        token: u32,
    }

    #[test]
    fn options_errors_never_echo_values() {
        let err = parse_options::<Opts>(r#"{"token":"hunter2"}"#, "test").unwrap_err();
        assert_eq!(err.status, sct_status::SCT_INVALID_ARGUMENT);
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        assert!(
            err.message.contains("invalid type: string, expected u32"),
            "{}",
            err.message
        );
        let err = parse_options::<Opts>(r#"{}"#, "test").unwrap_err();
        assert!(
            err.message.contains("missing field `token`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn argument_checks() {
        // SAFETY: NULL and valid static C strings.
        unsafe {
            let e = arg_str(std::ptr::null(), "site_db").unwrap_err();
            assert_eq!(e.status, sct_status::SCT_NULL_PARAMETER);
            assert!(e.message.contains("site_db"));
            let e = arg_str(c"\xff\xfe".as_ptr(), "dest").unwrap_err();
            assert_eq!(e.status, sct_status::SCT_INVALID_UTF8);
            let e = arg_path(c"".as_ptr(), "dest").unwrap_err();
            assert_eq!(e.status, sct_status::SCT_INVALID_ARGUMENT);
            assert_eq!(opt_arg_str(std::ptr::null(), "c").unwrap(), None);
            assert_eq!(arg_str(c"ok".as_ptr(), "x").unwrap(), "ok");
        }
    }
}
