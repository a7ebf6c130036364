//! The panic boundary. Unwinding into C is undefined behaviour, so every export runs its
//! body inside `catch_unwind`; a caught panic (a bug) becomes `SCT_PANIC` with a message,
//! and the calling process carries on. The progress and row callbacks are called from
//! inside the same boundary, so a panic anywhere on that path is caught here too.

use super::error::{clear_last_error, set_last_error, FfiResult};
use super::status::sct_status;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run an operation's body: `SCT_OK` and a cleared last error on success, its status and
/// message on failure, `SCT_PANIC` if it panicked. `function` names the export in messages.
pub(crate) fn boundary(function: &str, body: impl FnOnce() -> FfiResult) -> sct_status {
    // AssertUnwindSafe: after a panic nothing the body touched is used again; all state
    // it borrowed from the caller is plain data, and the library's own state is per call.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            sct_status::SCT_OK
        }
        Ok(Err(failure)) => {
            set_last_error(failure.status, &failure.message);
            failure.status
        }
        Err(payload) => {
            let message = format!(
                "internal error in {function}: {} (a bug in ServiceConnection; please report it)",
                panic_message(&*payload)
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
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
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
