//! Usage data: Prepare (cab), Export (CSV) and reading the rows that would leave the site.

use super::error::{Failure, FfiResult};
use super::panic::boundary;
use super::progress::{sct_progress_cb, ProgressBridge};
use super::status::sct_status;
use super::strings::{arg_path, check_out, lossless_c_string, to_json, write_out};
use crate::error::{Error, ErrorKind};
use crate::usage::{UsageDataFile, UsageRecord};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;

/// A usage-row callback: receives one row as a JSON object (valid only during the call),
/// on the calling thread. Return 0 for the next row, non-zero to stop early (not an
/// error). Like `sct_progress_cb`, it must not unwind through the library.
#[allow(non_camel_case_types)]
pub type sct_usage_row_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, row_json: *const c_char) -> c_int>;

type UsageFn = fn(&Path, &Path, bool, crate::progress::ProgressFn) -> crate::Result<UsageDataFile>;

/// Shared body of `sct_prepare` and `sct_export_csv`.
///
/// # Safety
/// As the exports.
unsafe fn write_usage(
    run: UsageFn,
    site_db: *const c_char,
    dest: *const c_char,
    force: bool,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> FfiResult {
    // SAFETY: forwarded from the caller.
    let site_db = unsafe { arg_path(site_db, "site_db") }?;
    let dest = unsafe { arg_path(dest, "dest") }?;
    check_out(out_json, "out_json")?;
    let mut bridge = ProgressBridge::new(progress_cb, user_data);
    let written = run(&site_db, &dest, force, &mut |p| bridge.report(p))?;
    let json = to_json(&written)?;
    // SAFETY: checked above.
    unsafe { write_out(out_json, json) };
    Ok(())
}

/// Prepare: write the site's usage data (at its diagnostics level, identifying
/// attributes hashed) into the usage cab `dest` (must end in `.cab`; its folder must
/// exist). An existing `dest` is refused (`SCT_ALREADY_EXISTS`) unless `force`.
/// Progress reports phase 1 (Prepare) in rows, as they are written (every few thousand
/// rows), out of the rows that leave the site. Written atomically: a failure or
/// cancellation leaves nothing at `dest`, and an existing file there untouched.
///
/// On success `*out_json` receives:
/// `{"path": "<dest>", "format": "Cab", "hierarchy_id": "<guid>",
///   "site_version": "5.00.9128.1000", "diagnostics_level": "Enhanced",
///   "record_count": <rows>, "size": <bytes>, "sha256": "<hex of the file>"}`
///
/// # Safety
/// `site_db` and `dest` (required) are NUL-terminated; `out_json` (required) points to a
/// writable `char *`; `progress_cb` may be NULL (no progress), and otherwise is callable
/// with `user_data`, which is passed through untouched and may be NULL.
#[no_mangle]
pub unsafe extern "C" fn sct_prepare(
    site_db: *const c_char,
    dest: *const c_char,
    force: bool,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_prepare", || {
        // SAFETY: forwarded from the caller.
        unsafe {
            write_usage(
                crate::usage::prepare,
                site_db,
                dest,
                force,
                progress_cb,
                user_data,
                out_json,
            )
        }
    })
}

/// Export: write exactly the rows Prepare would put in the cab as an RFC 4180 CSV file
/// `dest` (must end in `.csv`), so the administrator can review what leaves the site.
/// Same rules as `sct_prepare`; progress reports phase 2 (Export); the result has
/// `"format": "Csv"`.
///
/// # Safety
/// As `sct_prepare`.
#[no_mangle]
pub unsafe extern "C" fn sct_export_csv(
    site_db: *const c_char,
    dest: *const c_char,
    force: bool,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_export_csv", || {
        // SAFETY: forwarded from the caller.
        unsafe {
            write_usage(
                crate::usage::export_csv,
                site_db,
                dest,
                force,
                progress_cb,
                user_data,
                out_json,
            )
        }
    })
}

/// Stream the rows Prepare and Export would write (level-filtered, identifying attributes
/// hashed, in order) to `row_cb`, one JSON object per call:
/// `{"id": <n>, "level": "Basic"|"Enhanced"|"Full", "category": "...", "metric": "...",
///   "instance": "...", "value": "...", "site_code": "<sha256 hex or empty>",
///   "site_name": "<sha256 hex or empty>", "server_name": "<sha256 hex or empty>",
///   "collected_utc": "<RFC 3339 UTC>"}`
/// A non-zero return from `row_cb` stops early; that is still `SCT_OK`. On success
/// `*out_count` receives the number of rows passed to `row_cb`. Memory stays flat
/// whatever the number of rows. `row_cb` is required.
///
/// # Safety
/// `site_db` (required) is NUL-terminated; `out_count` (required) points to a writable
/// `uint64_t`; `row_cb` (required) is callable with `user_data`, which is passed
/// through untouched and may be NULL.
#[no_mangle]
pub unsafe extern "C" fn sct_usage_rows(
    site_db: *const c_char,
    row_cb: sct_usage_row_cb,
    user_data: *mut c_void,
    out_count: *mut u64,
) -> sct_status {
    boundary("sct_usage_rows", || {
        // SAFETY: forwarded from the caller.
        let site_db = unsafe { arg_path(site_db, "site_db") }?;
        let Some(cb) = row_cb else {
            return Err(Failure::new(
                sct_status::SCT_NULL_PARAMETER,
                "argument 'row_cb' is NULL",
            ));
        };
        check_out(out_count, "out_count")?;
        let mut line = Vec::with_capacity(512);
        let n = crate::usage::for_each_usage_row(&site_db, &mut |rec: &UsageRecord| {
            line.clear();
            serde_json::to_writer(&mut line, rec).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("a usage row could not be serialized: {e}"),
                )
            })?;
            let text = lossless_c_string(&String::from_utf8_lossy(&line));
            // SAFETY: the caller supplied `cb` for this use; `text` outlives the call.
            Ok(unsafe { cb(user_data, text.as_ptr()) } == 0)
        })?;
        // SAFETY: checked above.
        unsafe { write_out(out_count, n) };
        Ok(())
    })
}
