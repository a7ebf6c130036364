//! Import: verify the update packs of this site's hierarchy and record them in the site.

use super::panic::boundary;
use super::progress::{sct_progress_cb, ProgressBridge};
use super::status::sct_status;
use super::strings::{arg_str, check_out, parse_options, to_json, write_out};
use crate::import::ImportOptions;
use std::os::raw::{c_char, c_void};

/// Import: for every pack under `<source>/<this site's hierarchy-id>/`, verify its
/// signature against the site's trusted keys and every file's size and SHA-256, then
/// record it in the site's Updates and Servicing list and copy its content beside the
/// site database, all or nothing per pack. Other hierarchies' folders are reported as
/// skipped; re-importing is reported as already imported. A pack whose version range
/// excludes the site is still recorded, as `NotApplicable`, so the later steps of a
/// multi-step upgrade can come in one trip. Progress reports phase 5 (Verify: bytes
/// hashed, as every file is checked while it is staged), then phase 6 (Import: bytes of
/// the packs recorded and moved into place).
///
/// One site database per folder: the content library (`EasySetupPayload/` beside the
/// site database) belongs to the first site database that imports there. An import into
/// another site database in the same folder fails with `SCT_CONFLICT`, naming the owner,
/// and changes nothing (and `sct_site_create` refuses a new one there).
///
/// `options_json` (the library's `ImportOptions`):
/// `{"site_db": "<site database>", "source": "<update pack folder written by Connect>",
///   "insecure_skip_signature_check": false (optional; DANGEROUS, accepts unsigned or
///   untrusted packs)}`
///
/// The console content in `<source>/ConsoleContent/` is one more result (last), with
/// `"item": "ConsoleContent"`, `"version"` its content_version and `"status"`
/// `Imported`, `AlreadyImported` or `Refused` (unsigned, tampered, untrusted, or older than
/// the site's: a rollback); without that folder there is no such result.
///
/// On success `*out_json` receives an array with one object per pack (or skipped folder):
/// `{"item": "UpdatePack"|"ConsoleContent", "hierarchy_id": "<guid>"|null, "package_guid": "<guid>"|null, "name": "..."|null,
///   "version": "..."|null, "type": "Update"|"Hotfix"|null,
///   "status": "Imported"|"AlreadyImported"|"Skipped"|"Refused",
///   "state": "ReadyToInstall"|"NotApplicable"|...|null, "state_code": <n>|null,
///   "reason": "..."|null, "error_kind": "<status name, e.g. SignatureInvalid>"|null,
///   "source_path": "<folder>", "content_path": "<absolute folder>"|null}`
/// `source_path` is the pack's folder under `source` (as `source` was given);
/// `content_path` is the pack's folder in the content library as an absolute path (the
/// same folder `sct_list_updates` gives relative to the site database's folder).
/// A refused pack is a result with `SCT_OK` (the site is unchanged for it); a failure
/// status means the run could not start or was undone as a whole (site or source
/// missing, another site database owns the folder, busy, cancelled). A cancelled import
/// leaves the site and its content library exactly as they were.
///
/// # Safety
/// `options_json` (required) is NUL-terminated; `out_json` (required) points to a
/// writable `char *`; `progress_cb` may be NULL (no progress), and otherwise is callable
/// with `user_data`, which is passed through untouched and may be NULL.
#[no_mangle]
pub unsafe extern "C" fn sct_import(
    options_json: *const c_char,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_import", || {
        // SAFETY: forwarded from the caller.
        let opts = unsafe { arg_str(options_json, "options_json") }?;
        check_out(out_json, "out_json")?;
        let opts: ImportOptions = parse_options(opts, "import")?;
        let mut bridge = ProgressBridge::new(progress_cb, user_data);
        let results = crate::import::import(&opts, &mut |p| bridge.report(p))?;
        let json = to_json(&results)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}
