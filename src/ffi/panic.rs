//! The panic boundary. Unwinding into C is undefined behaviour, so every export runs its
//! body inside `catch_unwind`; a caught panic (a bug) becomes `SCT_PANIC` with a message,
//! and the calling process carries on. The progress and row callbacks are called from
//! inside the same boundary, so a panic anywhere on that path is caught here too.
//!
//! A library must not write to its host's streams: the panic is caught silently
//! (`error::catch_panic`), and what Rust would have printed on standard error (the
//! message and where it happened) becomes the call's `sct_last_error_*` message instead.

use super::error::{clear_last_error, set_last_error, FfiResult};
use super::status::sct_status;
use crate::error::{catch_panic, take_quiet_panic, QuietProcess};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run an operation's body: `SCT_OK` and a cleared last error on success, its status and
/// message on failure, `SCT_PANIC` if it panicked. `function` names the export in messages.
pub(crate) fn boundary(function: &str, body: impl FnOnce() -> FfiResult) -> sct_status {
    // Unwind safety: after a panic nothing the body touched is used again; all state it
    // borrowed from the caller is plain data, and the library's own state is per call.
    let _quiet = QuietProcess::enter();
    match catch_panic(body) {
        Ok(Ok(())) => {
            clear_last_error();
            sct_status::SCT_OK
        }
        Ok(Err(failure)) => {
            set_last_error(failure.status, &failure.message);
            failure.status
        }
        Err(payload) => {
            // The hook kept the message with its location; the payload alone has no location.
            let what = take_quiet_panic().unwrap_or_else(|| panic_message(&*payload).to_string());
            let message = format!(
                "internal error in {function}: {what} (a bug in ServiceConnection; please report it)"
            );
            // Dropping a payload can itself panic in pathological cases: keep it inside.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(sct_status::SCT_PANIC, &message);
            sct_status::SCT_PANIC
        }
    }
}

/// Run a function that returns a plain value (a string pointer, a number) and does not
/// touch the last error; `on_panic` is returned if it panics.
pub(crate) fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    let _quiet = QuietProcess::enter();
    match catch_panic(f) {
        Ok(r) => r,
        Err(payload) => {
            let _ = take_quiet_panic();
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            on_panic
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic with a non-text payload"
    }
}

/// Name of the environment variable that makes `sct_site_info` panic (tests only).
pub const TEST_PANIC_ENV: &str = "SCT_FFI_TEST_PANIC";

/// TEST-ONLY hook: with `SCT_FFI_TEST_PANIC=1` in the environment, panic here, so tests
/// in C and Python can prove a panic never crosses the boundary.
pub(crate) fn test_panic_hook(function: &str) {
    if std::env::var_os(TEST_PANIC_ENV).is_some_and(|v| v == "1") {
        panic!("forced by {TEST_PANIC_ENV}=1 in {function} (test-only hook)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::Failure;

    #[test]
    fn boundary_turns_panics_and_failures_into_statuses() {
        let s = boundary("t", || panic!("boom {}", 42));
        assert_eq!(s, sct_status::SCT_PANIC);
        assert_eq!(
            crate::ffi::error::sct_last_error_status(),
            sct_status::SCT_PANIC
        );
        let ptr = crate::ffi::error::sct_last_error_message();
        // SAFETY: a non-NULL string this library just returned, freed once.
        let message = unsafe {
            let text = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
            crate::ffi::strings::sct_string_free(ptr);
            text
        };
        assert!(
            message.contains("boom 42") && message.contains("src/ffi/panic.rs:"),
            "the message and its location are kept: {message}"
        );

        let s = boundary("t", || {
            Err(Failure::new(sct_status::SCT_NOT_FOUND, "no such thing"))
        });
        assert_eq!(s, sct_status::SCT_NOT_FOUND);
        assert_eq!(
            crate::ffi::error::sct_last_error_status(),
            sct_status::SCT_NOT_FOUND
        );

        assert_eq!(boundary("t", || Ok(())), sct_status::SCT_OK);
        assert_eq!(
            crate::ffi::error::sct_last_error_status(),
            sct_status::SCT_OK
        );
        assert!(crate::ffi::error::sct_last_error_message().is_null());
        assert_eq!(guard(7, || panic!("x")), 7);
    }
}
