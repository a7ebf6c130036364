//! The usage CSV: the one serialization of the outgoing rows, used for the cab's
//! `UsageData.csv` and for Export, so both hold exactly the same bytes.
//!
//! Format: RFC 4180 — a header row ([`USAGE_CSV_COLUMNS`]), CRLF line ends, fields quoted
//! only when they hold a comma, quote, CR or LF (quotes doubled), UTF-8 without a byte
//! order mark (a BOM would change the bytes every other consumer hashes and parses, and
//! Excel's *Data > From Text/CSV* reads UTF-8 without one).

use super::rows::{stream_rows, UsageRecord, USAGE_CSV_COLUMNS};
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress, ProgressFn};
use crate::site::{Site, SiteInfo};
use std::fmt::Write as _;
use std::io::Write;

/// Rows between progress reports (and cancellation checks).
pub(crate) const PROGRESS_EVERY: u64 = 8192;

/// What writing the CSV produced.
pub(crate) struct CsvOutcome {
    pub info: SiteInfo,
    pub records: u64,
}

/// Write the site's outgoing rows as CSV to `out`. `what` names the destination in
/// error messages. Progress is reported in rows; a `false` from `progress` cancels.
pub(crate) fn write_usage_csv(
    site: &Site,
    out: &mut dyn Write,
    phase: Phase,
    what: &str,
    progress: ProgressFn,
) -> Result<CsvOutcome> {
    let io_err = |e: csv::Error| -> Error {
        match e.into_kind() {
            csv::ErrorKind::Io(e) => map_io(what, &e),
            other => Error::internal(format!("writing CSV to {what}: {other:?}")),
        }
    };
    let mut wtr = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .buffer_capacity(256 * 1024)
        .from_writer(out);
    wtr.write_record(USAGE_CSV_COLUMNS).map_err(io_err)?;
    let info = std::cell::RefCell::new(None);
    let total = std::cell::Cell::new(0u64);
    let mut id = String::new();
    let mut report = |done: u64, total: u64| -> bool {
        progress(&Progress {
            phase,
            item: super::manifest::USAGE_DATA_FILE.to_string(),
            item_done: done,
            item_total: total,
            done,
            total,
        })
    };
    let mut cancelled = false;
    let mut done = 0u64;
    let n = stream_rows(
        site,
        &mut |i, t| {
            *info.borrow_mut() = Some(i.clone());
            total.set(t);
            Ok(())
        },
        &mut |r: &UsageRecord| {
            if done % PROGRESS_EVERY == 0 && !report(done, total.get()) {
                cancelled = true;
                return Ok(false);
            }
            id.clear();
            let _ = write!(id, "{}", r.id);
            wtr.write_record([
                id.as_str(),
                r.level.as_str(),
                &r.category,
                &r.metric,
                &r.instance,
                &r.value,
                &r.site_code,
                &r.site_name,
                &r.server_name,
                &r.collected_utc,
            ])
            .map_err(io_err)?;
            done += 1;
            Ok(true)
        },
    )?;
    if cancelled || !report(done, total.get()) {
        return Err(Error::cancelled());
    }
    debug_assert_eq!(n, done);
    wtr.flush().map_err(|e| map_io(what, &e))?;
    Ok(CsvOutcome {
        info: info
            .into_inner()
            .ok_or_else(|| Error::internal("row stream did not start"))?,
        records: done,
    })
}

/// Classify an I/O error while writing `what`; the cab writer's size limit gets its own
/// message because it is the one I/O error a user can do something about here.
pub(crate) fn map_io(what: &str, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains("maximum size") {
        return Error::new(
            crate::ErrorKind::InvalidArgument,
            format!("writing {what}: the usage data is larger than the 2 GiB a cab file can hold"),
        );
    }
    Error::io(format!("writing {what}"), e)
}
