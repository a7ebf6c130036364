//! Console content: what the site holds (Import brings it in; see `sct_import`).

use super::panic::boundary;
use super::status::sct_status;
use super::strings::{arg_path, check_out, to_json, write_out};
use crate::site::Site;
use std::os::raw::c_char;

/// The console content the site holds (the newest imported version), with only the
/// messages meant for this site's hierarchy or for every hierarchy.
///
/// On success `*out_json` receives:
/// `{"imported": true|false (false: none imported yet; the rest is null or empty),
///   "content_version": <n>|null, "published": "<RFC 3339>"|null,
///   "imported_utc": "<RFC 3339>"|null, "publisher_key_id": "<hex>"|null,
///   "document_sha256": "<hex>"|null,
///   "servicing": [{"product": "Windows 11", "version": "24H2" (optional),
///                  "build": "26100.2454" (optional), "channel": "...",
///                  "release_date": "<YYYY-MM-DD or RFC 3339>",
///                  "end_of_servicing": "<YYYY-MM-DD or RFC 3339>"}],
///   "messages": [{"id": "...", "severity": "Info"|"Warning"|"Critical", "title": "...",
///                 "body": "...", "link": "https://..." (optional),
///                 "published": "<date>", "expires": "<date>" (optional),
///                 "hierarchies": ["<guid>", ...] (optional; absent: every hierarchy),
///                 "expired": true|false (judged now)}]}`
/// Messages come most severe first, then newest first; expired ones are included and
/// marked, for the caller to hide or show. Fields marked optional are absent when unset.
///
/// # Safety
/// `site_db` is NULL or NUL-terminated; `out_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sct_console_content(
    site_db: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_console_content", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        check_out(out_json, "out_json")?;
        let json = to_json(&Site::open_read_only(&path)?.console_content()?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}
