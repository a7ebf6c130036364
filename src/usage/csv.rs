//! The usage CSV: the one serialization of the outgoing rows, used for the cab's
//! `UsageData.csv` and for Export, so both hold exactly the same bytes.
//!
//! Format: RFC 4180 — a header row ([`USAGE_CSV_COLUMNS`]), CRLF line ends, fields quoted
//! only when they hold a comma, quote, CR or LF (quotes doubled), UTF-8 without a byte
//! order mark (a BOM would change the bytes every other consumer hashes and parses, and
//! Excel's *Data > From Text/CSV* reads UTF-8 without one).

use super::rows::{
    map_raw_batches, IdentityHasher, RawBatch, HASHED_COLUMNS, RAW_TEXT_COLUMNS, USAGE_CSV_COLUMNS,
};
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress, ProgressFn};
use crate::site::{Site, SiteInfo};
use std::cell::{Cell, RefCell};
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
///
/// Rows arrive in raw batches and are formatted on one thread per core
/// ([`map_raw_batches`]), straight from SQLite's bytes: UTF-8 is checked once per batch,
/// and the fields that need quoting are found by one vectorized scan of the batch for `,`
/// `"` CR and LF. Formatted batches reach `out` in `id` order, in large writes, so the
/// result is byte for byte what formatting each [`super::UsageRecord`] in turn would give
/// (a test keeps it so).
pub(crate) fn write_usage_csv(
    site: &Site,
    out: &mut dyn Write,
    phase: Phase,
    what: &str,
    progress: ProgressFn,
) -> Result<CsvOutcome> {
    let mut header = Vec::new();
    record(&mut header, USAGE_CSV_COLUMNS);
    out.write_all(&header).map_err(|e| map_io(what, &e))?;
    // Set by the start callback, read by the batch callback.
    let info: RefCell<Option<SiteInfo>> = RefCell::new(None);
    let total: Cell<Option<u64>> = Cell::new(None);
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
    let mut next_report = 0u64;
    map_raw_batches(
        site,
        format_workers(),
        &|i: &SiteInfo| Formatter::new(&i.hierarchy_id),
        &|f: &mut Formatter, batch: &RawBatch, text: &mut Vec<u8>| {
            text.clear();
            f.batch(batch, text);
            Ok(())
        },
        &mut |i| {
            *info.borrow_mut() = Some(i.clone());
            Ok(())
        },
        &mut |t| total.set(Some(t)),
        &mut |text: &Vec<u8>, rows| {
            // Reports wait for the row count, so every report carries the total (a large
            // table is counted alongside the first batches: tens of milliseconds).
            if let (true, Some(t)) = (done >= next_report, total.get()) {
                if !report(done, t) {
                    cancelled = true;
                    return Ok(false);
                }
                next_report = done + PROGRESS_EVERY;
            }
            out.write_all(text).map_err(|e| map_io(what, &e))?;
            done += rows;
            Ok(true)
        },
    )?;
    // map_raw_batches has handed over the total before returning.
    if cancelled || !report(done, total.get().unwrap_or(done)) {
        return Err(Error::cancelled());
    }
    out.flush().map_err(|e| map_io(what, &e))?;
    Ok(CsvOutcome {
        info: info
            .into_inner()
            .ok_or_else(|| Error::internal("row stream did not start"))?,
        records: done,
    })
}

/// Threads that format rows: one per core (they share the cores with the reading thread
/// and the consumer, which hashes and, in Prepare, compresses; a thread with nothing to
/// do sleeps).
fn format_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Append one RFC 4180 record, exactly as the `csv` crate writes it with
/// `QuoteStyle::Necessary` and CRLF: a field is quoted (quotes doubled) only when it holds
/// a comma, quote, CR or LF. Written by hand because the generic writer was a tenth of
/// Export's time.
fn record<'f>(buf: &mut Vec<u8>, fields: impl IntoIterator<Item = &'f str>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let b = f.as_bytes();
        field(buf, b, needs_quotes(b));
    }
    buf.extend_from_slice(b"\r\n");
}

/// Append one field, quoted (quotes doubled) if `quoted`.
fn field(buf: &mut Vec<u8>, b: &[u8], quoted: bool) {
    if quoted {
        buf.push(b'"');
        for part in b.split_inclusive(|&c| c == b'"') {
            buf.extend_from_slice(part);
            if part.last() == Some(&b'"') {
                buf.push(b'"');
            }
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(b);
    }
}

/// One formatting thread's state: its memo of identity hashes and scratch space.
struct Formatter {
    hasher: IdentityHasher,
    quote: Vec<bool>,
}

impl Formatter {
    fn new(hierarchy_id: &uuid::Uuid) -> Self {
        Formatter {
            hasher: IdentityHasher::new(hierarchy_id),
            quote: Vec::new(),
        }
    }

    /// Append a batch of raw rows as records (see [`write_usage_csv`]).
    fn batch(&mut self, batch: &RawBatch, buf: &mut Vec<u8>) {
        let fields = batch.len() * RAW_TEXT_COLUMNS;
        let quote = &mut self.quote;
        quote.clear();
        quote.resize(fields, false);
        let bytes = batch.bytes();
        for pos in
            memchr::memchr3_iter(b',', b'"', b'\n', bytes).chain(memchr::memchr_iter(b'\r', bytes))
        {
            quote[batch.field_at(pos)] = true;
        }
        let utf8 = batch.is_utf8();
        let mut id = itoa::Buffer::new();
        for row in 0..batch.len() {
            buf.extend_from_slice(id.format(batch.id(row)).as_bytes());
            buf.push(b',');
            buf.extend_from_slice(batch.level(row).as_str().as_bytes());
            for col in 0..RAW_TEXT_COLUMNS {
                let f = row * RAW_TEXT_COLUMNS + col;
                let raw = batch.field(f);
                buf.push(b',');
                if HASHED_COLUMNS.contains(&col) {
                    // Lowercase hex: never needs quotes.
                    buf.extend_from_slice(self.hasher.hash_bytes(raw).as_bytes());
                } else if utf8 {
                    field(buf, raw, quote[f]);
                } else {
                    // Lossy conversion keeps ASCII bytes, so the quoting found above holds.
                    let text = String::from_utf8_lossy(raw);
                    field(buf, text.as_bytes(), quote[f]);
                }
            }
            buf.extend_from_slice(b"\r\n");
        }
    }
}

/// RFC 4180: a field is quoted when it holds a comma, quote, CR or LF.
fn needs_quotes(b: &[u8]) -> bool {
    b.iter().any(|&c| matches!(c, b',' | b'"' | b'\r' | b'\n'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_records_match_the_csv_crate_byte_for_byte() {
        let tricky = [
            "",
            "plain",
            "a,b",
            "say \"hi\"",
            "\"",
            "\"\"",
            "line\nbreak",
            "cr\rhere",
            "crlf\r\n",
            "ünïcødé, ok",
            " spaced ",
            "#hash",
            "tab\there",
        ];
        let mut ours = Vec::new();
        let mut theirs = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(Vec::new());
        for i in 0..tricky.len() {
            let rec: Vec<&str> = (0..10).map(|k| tricky[(i + k) % tricky.len()]).collect();
            record(&mut ours, rec.iter().copied());
            theirs.write_record(&rec).unwrap();
        }
        let theirs = theirs.into_inner().unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }
}
