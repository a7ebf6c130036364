//! Sites: create, read, fill with sample data, and list their updates.

use super::panic::{boundary, test_panic_hook};
use super::progress::{sct_progress_cb, ProgressBridge};
use super::status::sct_status;
use super::strings::{arg_path, arg_str, check_out, parse_options, to_json, write_out};
use crate::site::{NewSite, Site};
use std::os::raw::{c_char, c_void};

/// Create a new site database at `site_db` (which must not exist yet; its folder must).
///
/// `options_json` (the library's `NewSite`):
/// `{"site_code": "PS1", "site_version": "5.00.9128.1000",
///   "diagnostics_level": "Basic"|"Enhanced"|"Full" (optional, default "Enhanced"),
///   "hierarchy_id": "<guid>" (optional, a fresh GUID when absent or null),
///   "site_name": "..." (optional, default "Site <code>"),
///   "scp_mode": "Offline"|"Online" (optional, default "Offline")}`
///
/// On success `*out_json` receives the new site's info, the same document as
/// `sct_site_info`. Fails with `SCT_ALREADY_EXISTS` when `site_db` exists,
/// `SCT_INVALID_ARGUMENT` for bad options (an unknown field included), and
/// `SCT_CONFLICT` when another site database in that folder already owns the content
/// library there (one site database per folder; see `sct_import`); a failure leaves no
/// file behind.
///
/// # Safety
/// `site_db` and `options_json` (required) are NUL-terminated; `out_json` (required)
/// points to a writable `char *`.
#[no_mangle]
pub unsafe extern "C" fn sct_site_create(
    site_db: *const c_char,
    options_json: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_site_create", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        let opts = unsafe { arg_str(options_json, "options_json") }?;
        check_out(out_json, "out_json")?;
        let new: NewSite = parse_options(opts, "site")?;
        let site = Site::create(&path, &new)?;
        let json = to_json(&site.info()?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}

/// Read a site's identity and usage-row counts.
///
/// On success `*out_json` receives:
/// `{"path": "<site_db>", "hierarchy_id": "<guid>", "site_code": "PS1",
///   "site_name": "Site PS1", "site_version": "5.00.9128.1000",
///   "diagnostics_level": "Basic"|"Enhanced"|"Full", "scp_mode": "Offline"|"Online",
///   "created": "<RFC 3339 UTC>", "schema_version": <n>,
///   "usage_rows": [<Basic rows>, <Enhanced rows>, <Full rows>]}`
///
/// TEST-ONLY: when the environment variable `SCT_FFI_TEST_PANIC` is `1`, this function
/// panics internally and returns `SCT_PANIC`; the panic never reaches the caller.
///
/// # Safety
/// `site_db` (required) is NUL-terminated; `out_json` (required) points to a writable
/// `char *`.
#[no_mangle]
pub unsafe extern "C" fn sct_site_info(
    site_db: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_site_info", || {
        test_panic_hook("sct_site_info");
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        check_out(out_json, "out_json")?;
        let json = to_json(&Site::open(&path)?.info()?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}

/// Fill the site with `rows` generated sample usage rows spread over the three
/// diagnostics levels (for demos and tests); the same `seed` gives the same rows.
/// Progress reports phase 7 (Generate) in rows; cancelling inserts nothing.
/// On success `*out_rows` receives the number of rows inserted.
///
/// # Safety
/// `site_db` (required) is NUL-terminated; `out_rows` (required) points to a writable
/// `uint64_t`; `progress_cb` may be NULL (no progress), and otherwise is callable with
/// `user_data`, which is passed through untouched and may be NULL.
#[no_mangle]
pub unsafe extern "C" fn sct_generate_sample_data(
    site_db: *const c_char,
    rows: u64,
    seed: u64,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_rows: *mut u64,
) -> sct_status {
    boundary("sct_generate_sample_data", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        check_out(out_rows, "out_rows")?;
        let mut bridge = ProgressBridge::new(progress_cb, user_data);
        let mut site = Site::open(&path)?;
        let n = crate::site::sample::generate_with_progress(&mut site, rows, seed, &mut |p| {
            bridge.report(p)
        })?;
        // SAFETY: checked above.
        unsafe { write_out(out_rows, n) };
        Ok(())
    })
}

/// The site's Updates and Servicing list, newest version first.
///
/// On success `*out_json` receives an array of:
/// `{"package_guid": "<guid>", "name": "...", "full_version": "5.00.9132.1000",
///   "type": "Update"|"Hotfix", "min_site_version": "...", "max_site_version": "..."|null,
///   "state": "Available"|"ReadyToInstall"|"NotApplicable"|"Installed"|"Failed",
///   "state_code": <Configuration Manager state number>, "size": <bytes>,
///   "file_count": <n>, "manifest_sha256": "<hex>", "publisher_key_id": "<hex>"|null,
///   "content_path": "<folder>"|null, "source_path": "<folder>"|null,
///   "imported": "<RFC 3339 UTC>"|null}`
/// `content_path` is as recorded: relative to the folder holding the site database
/// (`EasySetupPayload/Offline/<guid>`), so the site's folder can be moved; `sct_import`
/// gives the same folder as an absolute path. `source_path` is the pack folder it was
/// imported from, as the import's `source` named it.
///
/// # Safety
/// `site_db` (required) is NUL-terminated; `out_json` (required) points to a writable
/// `char *`.
#[no_mangle]
pub unsafe extern "C" fn sct_list_updates(
    site_db: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_list_updates", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        check_out(out_json, "out_json")?;
        let json = to_json(&Site::open(&path)?.list_updates()?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::panic::boundary;

    /// A panic raised on the progress path (inside the library's call to the callback)
    /// is caught by the export's boundary, and the site is left as it was.
    #[test]
    fn panic_in_the_callback_path_is_caught_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.db");
        let new: NewSite =
            serde_json::from_str(r#"{"site_code":"PS1","site_version":"5.00.9128.1000"}"#).unwrap();
        Site::create(&path, &new).unwrap();
        let status = boundary("test", || {
            let mut site = Site::open(&path)?;
            crate::site::sample::generate_with_progress(&mut site, 500, 1, &mut |_| {
                panic!("a bug on the progress path")
            })?;
            Ok(())
        });
        assert_eq!(status, sct_status::SCT_PANIC);
        let info = Site::open(&path).unwrap().info().unwrap();
        assert_eq!(info.usage_rows, [0, 0, 0]);
    }
}
