//! The usage CSV: the one serialization of the outgoing rows, used for the cab's
//! `UsageData.csv` and for Export, so both hold exactly the same bytes.
//!
//! Format: RFC 4180 — a header row ([`USAGE_CSV_COLUMNS`]), CRLF line ends, fields quoted
//! only when they hold a comma, quote, CR or LF (quotes doubled), UTF-8 without a byte
//! order mark (a BOM would change the bytes every other consumer hashes and parses, and
//! Excel's *Data > From Text/CSV* reads UTF-8 without one).

use super::rows::{
    stream_raw_batches, IdentityHasher, RawBatch, HASHED_COLUMNS, RAW_TEXT_COLUMNS,
    USAGE_CSV_COLUMNS,
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
/// Rows arrive in raw batches ([`stream_raw_batches`]) and are formatted straight from
/// SQLite's bytes: UTF-8 is checked once per batch, and the fields that need quoting
/// are found by one vectorized scan of the batch for `,` `"` CR and LF. The result is
/// byte for byte what formatting each [`super::UsageRecord`] would give (a test keeps
/// it so).
pub(crate) fn write_usage_csv(
    site: &Site,
    out: &mut dyn Write,
    phase: Phase,
    what: &str,
    progress: ProgressFn,
) -> Result<CsvOutcome> {
    let mut wtr = CsvWriter::new(out, what);
    wtr.record(USAGE_CSV_COLUMNS)?;
    // Set by the start callback, read by the batch callback.
    let info: RefCell<Option<SiteInfo>> = RefCell::new(None);
    let hasher: RefCell<Option<IdentityHasher>> = RefCell::new(None);
    let total = Cell::new(0u64);
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
    let mut quote: Vec<bool> = Vec::new();
    stream_raw_batches(
        site,
        &mut |i, t| {
            *hasher.borrow_mut() = Some(IdentityHasher::new(&i.hierarchy_id));
            *info.borrow_mut() = Some(i.clone());
            total.set(t);
            Ok(())
        },
        &mut |batch: &RawBatch| {
            if done >= next_report {
                if !report(done, total.get()) {
                    cancelled = true;
                    return Ok(false);
                }
                next_report = done + PROGRESS_EVERY;
            }
            let mut h = hasher.borrow_mut();
            let h = h
                .as_mut()
                .ok_or_else(|| Error::internal("rows before the row stream started"))?;
            wtr.batch(batch, h, &mut quote)?;
            done += batch.len() as u64;
            Ok(true)
        },
    )?;
    if cancelled || !report(done, total.get()) {
        return Err(Error::cancelled());
    }
    wtr.flush()?;
    Ok(CsvOutcome {
        info: info
            .into_inner()
            .ok_or_else(|| Error::internal("row stream did not start"))?,
        records: done,
    })
}

/// Bytes gathered before they are handed to the output in one write.
const CSV_BUF: usize = 256 * 1024;

/// An RFC 4180 record writer producing exactly what the `csv` crate does with
/// `QuoteStyle::Necessary` and CRLF: a field is quoted (quotes doubled) only when it holds
/// a comma, quote, CR or LF. Written by hand because the generic writer was a tenth of
/// Export's time; records are gathered into one large buffer so the hashing writer and
/// the file see few, large writes.
struct CsvWriter<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    what: &'a str,
}

impl<'a> CsvWriter<'a> {
    fn new(out: &'a mut dyn Write, what: &'a str) -> Self {
        CsvWriter {
            out,
            buf: Vec::with_capacity(CSV_BUF + 4096),
            what,
        }
    }

    fn record<'f>(&mut self, fields: impl IntoIterator<Item = &'f str>) -> Result<()> {
        for (i, f) in fields.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let b = f.as_bytes();
            self.field(b, needs_quotes(b));
        }
        self.end_record()
    }

    /// Append one field, quoted (quotes doubled) if `quoted`.
    fn field(&mut self, b: &[u8], quoted: bool) {
        if quoted {
            self.buf.push(b'"');
            for part in b.split_inclusive(|&c| c == b'"') {
                self.buf.extend_from_slice(part);
                if part.last() == Some(&b'"') {
                    self.buf.push(b'"');
                }
            }
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(b);
        }
    }

    fn end_record(&mut self) -> Result<()> {
        self.buf.extend_from_slice(b"\r\n");
        if self.buf.len() >= CSV_BUF {
            self.drain()?;
        }
        Ok(())
    }

    /// Append a batch of raw rows as records (see [`write_usage_csv`]). `quote` is
    /// scratch space kept across batches.
    fn batch(
        &mut self,
        batch: &RawBatch,
        hasher: &mut IdentityHasher,
        quote: &mut Vec<bool>,
    ) -> Result<()> {
        let fields = batch.len() * RAW_TEXT_COLUMNS;
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
            self.buf
                .extend_from_slice(id.format(batch.id(row)).as_bytes());
            self.buf.push(b',');
            self.buf
                .extend_from_slice(batch.level(row).as_str().as_bytes());
            for col in 0..RAW_TEXT_COLUMNS {
                let f = row * RAW_TEXT_COLUMNS + col;
                let raw = batch.field(f);
                self.buf.push(b',');
                if HASHED_COLUMNS.contains(&col) {
                    // Lowercase hex: never needs quotes.
                    self.buf
                        .extend_from_slice(hasher.hash_bytes(raw).as_bytes());
                } else if utf8 {
                    self.field(raw, quote[f]);
                } else {
                    // Lossy conversion keeps ASCII bytes, so the quoting found above holds.
                    let text = String::from_utf8_lossy(raw);
                    self.field(text.as_bytes(), quote[f]);
                }
            }
            self.end_record()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        self.out
            .write_all(&self.buf)
            .map_err(|e| map_io(self.what, &e))?;
        self.buf.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.drain()?;
        self.out.flush().map_err(|e| map_io(self.what, &e))
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
        let mut w = CsvWriter::new(&mut ours, "test");
        let mut theirs = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(Vec::new());
        for i in 0..tricky.len() {
            let rec: Vec<&str> = (0..10).map(|k| tricky[(i + k) % tricky.len()]).collect();
            w.record(rec.iter().copied()).unwrap();
            theirs.write_record(&rec).unwrap();
        }
        w.flush().unwrap();
        let theirs = theirs.into_inner().unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }
}
