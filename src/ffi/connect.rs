//! Connect: upload usage cabs and download the update packs offered for each hierarchy.

use super::panic::boundary;
use super::progress::{sct_progress_cb, ProgressBridge};
use super::status::sct_status;
use super::strings::{arg_str, check_out, parse_options, to_json, write_out};
use crate::connect::ConnectOptions;
use std::os::raw::{c_char, c_void};

/// Connect: upload every usage cab in `source` to the update service and download the
/// update packs offered for each hierarchy into `dest`
/// (`<dest>/<hierarchy-id>/<package-guid>/...` and `<dest>/connect-report.json`) —
/// resumed where an earlier run stopped, verified while streaming, written atomically.
/// Progress reports phases 3 (Upload), 4 (Download) and 5 (Verify) in bytes.
///
/// `options_json` (the library's `ConnectOptions`):
/// `{"source": "<usage cab or folder of cabs>",
///   "additional_sources": ["<more cabs or folders>", ...] (optional),
///   "dest": "<update pack folder>",
///   "service_uri": "http://127.0.0.1:8080",
///   "selection": "Latest"|"SiteVersion"|"Hotfix"|"All" (optional, default "Latest"),
///   "proxy": {"uri": "host[:port]", "username": "...", "password": "..."} (optional),
///   "ca_cert": "<PEM file>" (optional), "token": "<bearer token>" (optional),
///   "parallelism": 4 (optional), "max_attempts": 5 (optional)}`
/// Secrets in the options (token, proxy password) never appear in messages or results.
///
/// On success `*out_json` receives the Connect report (also written to
/// `connect-report.json`):
/// `{"tool_version": "...", "service_uri": "...", "selection": "Latest", "started": "<RFC 3339>",
///   "finished": "<RFC 3339>",
///   "uploads": [{"cab": "<path>", "hierarchy_id": "<guid>"|null, "site_version": "..."|null,
///                "status": "Uploaded"|"Skipped"|"Failed", "offered": <n>, "message": "..."|null}],
///   "packs": [{"hierarchy_id": "<guid>", "package_guid": "<guid>", "name": "...",
///              "version": "...", "type": "Update"|"Hotfix", "size": <bytes>, "path": "<folder>",
///              "status": "Downloaded"|"AlreadyComplete"|"Failed",
///              "files": [{"path": "...", "size": <bytes>, "sha256": "<hex>",
///                         "status": "Downloaded"|"Resumed"|"AlreadyComplete"|"Failed",
///                         "bytes_transferred": <bytes>, "message": "..."|null}],
///              "message": "..."|null}],
///   "bytes_transferred": <bytes>,
///   "console_content": {"status": "Downloaded"|"Unchanged"|"NonePublished"|"Failed"|"Skipped",
///                       "content_version": <n>|null, "published": "<RFC 3339>"|null,
///                       "path": "<dest>/ConsoleContent", "bytes_transferred": <bytes>,
///                       "resumed": false, "message": "..."|null}}`
/// The console content (`<dest>/ConsoleContent/console-content.json` and `.minisig`) is
/// fetched once per run after the uploads; `NonePublished` is not a failure, `Skipped`
/// means no upload of the run got through, so it was not asked (the uploads say why).
/// A cab or pack that failed is reported in the document with `SCT_OK`: check every
/// `status`. A failure status means nothing useful could be done (bad options, the
/// destination unusable, cancelled).
///
/// # Safety
/// `options_json` is NULL or NUL-terminated; `out_json` is NULL or writable;
/// `progress_cb`, if not NULL, is callable with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn sct_connect(
    options_json: *const c_char,
    progress_cb: sct_progress_cb,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_connect", || {
        // SAFETY: forwarded from the caller.
        let opts = unsafe { arg_str(options_json, "options_json") }?;
        check_out(out_json, "out_json")?;
        let opts: ConnectOptions = parse_options(opts, "connect")?;
        let mut bridge = ProgressBridge::new(progress_cb, user_data);
        let report = crate::connect::connect(&opts, &mut |p| bridge.report(p))?;
        let json = to_json(&report)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}
