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
/// Selections: `Latest` (the newest update that applies to the site version, no
/// hotfixes), `SiteVersion` (every update and hotfix newer than the site version,
/// including later steps of an upgrade chain that do not apply yet), `Hotfix` (every
/// hotfix), `All` (everything published for the hierarchy).
///
/// `options_json` (the library's `ConnectOptions`):
/// `{"source": "<usage cab or folder of cabs>",
///   "additional_sources": ["<more cabs or folders>", ...] (optional),
///   "dest": "<update pack folder>",
///   "service_uri": "http://127.0.0.1:8080",
///   "selection": "Latest"|"SiteVersion"|"Hotfix"|"All" (optional, default "Latest"),
///   "proxy": {"uri": "host[:port]", "username": "...", "password": "..."} (optional),
///   "ca_cert": "<PEM file>" (optional), "token": "<bearer token>" (optional),
///   "parallelism": 4 (optional, 1 to 64), "max_attempts": 5 (optional),
///   "idle_timeout_secs": 60 (optional), "retry_base_delay_ms": 1000 (optional),
///   "max_bytes_per_second": <n> (optional, no limit by default)}`
/// Secrets in the options (token, proxy password) never appear in messages or results.
///
/// On success `*out_json` receives the Connect report (also written to
/// `connect-report.json`):
/// `{"tool_version": "...", "service_uri": "...", "selection": "Latest", "started": "<RFC 3339>",
///   "finished": "<RFC 3339>", "bytes_transferred": <pack content bytes received in this run>,
///   "uploads": [{"cab": "<path>", "hierarchy_id": "<guid>"|null, "site_version": "..."|null,
///                "status": "Uploaded"|"Skipped"|"Failed", "offered": <n>, "message": "..."|null,
///                "kind": "<status name>" (only when there was a failure)}],
///   "packs": [{"hierarchy_id": "<guid>", "package_guid": "<guid>", "name": "...",
///              "version": "...", "type": "Update"|"Hotfix", "size": <bytes>, "path": "<folder>",
///              "status": "Downloaded"|"AlreadyComplete"|"Failed",
///              "files": [{"path": "...", "size": <bytes>, "sha256": "<hex>",
///                         "status": "Downloaded"|"Resumed"|"AlreadyComplete"|"Failed",
///                         "bytes_transferred": <bytes>, "message": "..."|null,
///                         "kind": "<status name>" (only on failure)}],
///              "message": "..."|null, "kind": "<status name>" (only on failure)}],
///   "bytes_transferred": <bytes>,
///   "console_content": {"status": "Downloaded"|"Unchanged"|"NonePublished"|"Failed"|"Skipped",
///                       "content_version": <n>|null, "published": "<RFC 3339>"|null,
///                       "path": "<dest>/ConsoleContent", "bytes_transferred": <bytes>,
///                       "resumed": false, "message": "..."|null,
///                       "kind": "<status name>" (only on failure)}}`
/// The console content (`<dest>/ConsoleContent/console-content.json` and `.minisig`) is
/// fetched once per run, after the uploads and the packs (a cancelled run has not
/// touched it, but for a `.sct-partial`); `NonePublished` is not a failure, `Skipped`
/// means no upload of the run got through, so it was not asked (the uploads say why).
/// `kind` is a status name as `sct_status_name` gives it (`"Network"`, `"IntegrityMismatch"`, ...).
/// Paths in the report are as given in the options (`cab`) or under `dest` (`path`).
///
/// Which failures fail the call and which are items of the report:
/// - The call fails (no report) for bad options, a source without usage cabs, a
///   destination that cannot be used or is being written by another Connect run
///   (`SCT_BUSY`), and cancellation. It also fails when every cab that was tried failed
///   for one cause that concerns the whole run: the proxy cannot be reached
///   (`SCT_PROXY_CONNECT`), the proxy refused the credentials (`SCT_PROXY_AUTH`), or TLS
///   verification failed (`SCT_TLS`); `connect-report.json` is still written then.
/// - Everything else is an item with `SCT_OK`: the service unreachable or answering with
///   an error, a damaged cab, a pack or file that could not be fetched or verified. An
///   upload is `Failed` when the cab was tried and did not go through (`kind` and
///   `message` say why; re-run to retry it); it is `Skipped` when it was deliberately
///   not sent: a file that is not a usage cab, or a second cab of a hierarchy already in
///   the run. Check every `status`.
///
/// Cancellation (the progress callback returned non-zero) returns `SCT_CANCELLED` and
/// keeps exactly what the next run resumes from, none of which anything trusts:
/// `.sct-partial` files holding bytes received, content files already verified at their
/// final names, `manifest.json.minisig`, the folders it created, and the lock file
/// `<dest>/.sct-connect.lock` (every run leaves it). No `manifest.json` is written for a pack
/// that was not finished (a pack a cancelled run was re-checking loses its
/// `manifest.json` until the next run has verified it again), so Import refuses such a
/// folder; packs finished before the cancellation are complete and keep theirs. No
/// `connect-report.json` is written (one from an earlier run is left as it was).
///
/// # Safety
/// `options_json` (required) is NUL-terminated; `out_json` (required) points to a
/// writable `char *`; `progress_cb` may be NULL (no progress), and otherwise is callable
/// with `user_data`, which is passed through untouched and may be NULL.
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

#[cfg(test)]
mod tests {
    /// Every top-level field of the Connect report is shown in the header (issue 16:
    /// `bytes_transferred` was missing).
    #[test]
    fn the_header_shows_every_report_field() {
        let header = include_str!("../../include/serviceconnection.h");
        let report = serde_json::to_value(crate::connect::ConnectReport::default()).unwrap();
        for key in report.as_object().unwrap().keys() {
            assert!(
                header.contains(&format!("\"{key}\":")),
                "{key} is not shown in the header"
            );
        }
    }
}
