//! The rows that leave the site: usage data at or below the site's diagnostics level,
//! in `id` order, with identifying attributes replaced by salted SHA-256 hashes.
//!
//! Everything here streams one row at a time through a reused [`UsageRecord`], so memory
//! does not grow with the number of rows. Count and rows are read inside one read
//! transaction, so a concurrent writer cannot make them disagree.

use crate::error::{Error, ErrorKind, Result};
use crate::site::{DiagnosticsLevel, Site, SiteInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// The CSV columns, in their stable order (also the JSON field names of [`UsageRecord`]).
pub const USAGE_CSV_COLUMNS: [&str; 10] = [
    "id",
    "level",
    "category",
    "metric",
    "instance",
    "value",
    "site_code",
    "site_name",
    "server_name",
    "collected_utc",
];

/// One usage row as it leaves the site (one CSV record). Identifying attributes
/// (`site_code`, `site_name`, `server_name`) hold lowercase hex SHA-256 of
/// `<hierarchy-id>:<value>`, or stay empty when the site recorded nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: i64,
    pub level: DiagnosticsLevel,
    pub category: String,
    pub metric: String,
    pub instance: String,
    pub value: String,
    pub site_code: String,
    pub site_name: String,
    pub server_name: String,
    pub collected_utc: String,
}

/// Hashes identifying values with the hierarchy ID as salt. Values repeat a lot (a few
/// site codes and servers over millions of rows), so hashes are memoized; the memo is
/// bounded so hostile data with millions of distinct names cannot grow memory.
pub struct IdentityHasher {
    salt: String,
    memo: HashMap<String, String, BuildFx>,
}

/// A multiply-rotate hasher for the memo's short keys: SipHash's flooding resistance is
/// not needed for a bounded memo that is cleared when full, and it cost more per row
/// than the CSV formatting.
#[derive(Default, Clone, Copy)]
struct BuildFx;

impl std::hash::BuildHasher for BuildFx {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const MEMO_LIMIT: usize = 4096;

impl IdentityHasher {
    pub fn new(hierarchy_id: &uuid::Uuid) -> Self {
        IdentityHasher {
            salt: hierarchy_id.to_string().to_ascii_lowercase(),
            memo: HashMap::with_hasher(BuildFx),
        }
    }

    /// Lowercase hex SHA-256 of `<hierarchy-id lowercase>:<value>`; empty stays empty.
    pub fn hash(&mut self, value: &str) -> &str {
        if value.is_empty() {
            return "";
        }
        if !self.memo.contains_key(value) {
            if self.memo.len() >= MEMO_LIMIT {
                self.memo.clear();
            }
            let mut h = Sha256::new();
            h.update(self.salt.as_bytes());
            h.update(b":");
            h.update(value.as_bytes());
            self.memo
                .insert(value.to_string(), hex::encode(h.finalize()));
        }
        &self.memo[value]
    }
}

/// Stream the site's outgoing rows: `start` is called once with the site identity and
/// the number of rows that will follow, then `row` once per row (returning `Ok(false)`
/// stops early). Returns the number of rows delivered.
pub(crate) fn stream_rows(
    site: &Site,
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    row: &mut dyn FnMut(&UsageRecord) -> Result<bool>,
) -> Result<u64> {
    let info = site.info()?;
    let conn = site.connection();
    // One snapshot for the count and the rows (WAL readers never block writers).
    let tx = conn.unchecked_transaction()?;
    let level = info.diagnostics_level.as_i64();
    let total: i64 = tx.query_row(
        "SELECT COUNT(*) FROM usage_data WHERE level <= ?1",
        [level],
        |r| r.get(0),
    )?;
    start(&info, total as u64)?;
    let mut stmt = tx.prepare(
        "SELECT id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc
         FROM usage_data WHERE level <= ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([level])?;
    let mut hasher = IdentityHasher::new(&info.hierarchy_id);
    let mut rec = UsageRecord::default();
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        rec.id = r.get(0)?;
        let lv: i64 = r.get(1)?;
        rec.level = DiagnosticsLevel::from_i64(lv).ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                format!("usage row {} has an invalid level {lv}", rec.id),
            )
        })?;
        set_text(&mut rec.category, r, 2)?;
        set_text(&mut rec.metric, r, 3)?;
        set_text(&mut rec.instance, r, 4)?;
        set_text(&mut rec.value, r, 5)?;
        set_hashed(&mut rec.site_code, r, 6, &mut hasher)?;
        set_hashed(&mut rec.site_name, r, 7, &mut hasher)?;
        set_hashed(&mut rec.server_name, r, 8, &mut hasher)?;
        set_text(&mut rec.collected_utc, r, 9)?;
        n += 1;
        if !row(&rec)? {
            break;
        }
    }
    Ok(n)
}

/// Rows per batch handed from the SQLite thread to the formatting thread.
const BATCH_ROWS: usize = 2048;

/// Raw rows as SQLite returned them: `id`, `level` and the eight text columns (category
/// through collected_utc) as bytes, concatenated, with each column's end offset.
struct RawBatch {
    ids: Vec<i64>,
    levels: Vec<DiagnosticsLevel>,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl RawBatch {
    fn new() -> Self {
        RawBatch {
            ids: Vec::with_capacity(BATCH_ROWS),
            levels: Vec::with_capacity(BATCH_ROWS),
            bytes: Vec::with_capacity(BATCH_ROWS * 256),
            ends: Vec::with_capacity(BATCH_ROWS * 8),
        }
    }
    fn clear(&mut self) {
        self.ids.clear();
        self.levels.clear();
        self.bytes.clear();
        self.ends.clear();
    }
}

enum Raw {
    Start(SiteInfo, u64),
    Rows(RawBatch),
}

/// [`stream_rows`] with the SQLite work on a second thread: one thread steps the
/// statement and copies out raw column bytes while the caller's thread converts, hashes
/// and hands each row to `row`, so Prepare and Export use two cores. The reading thread
/// opens its own read-only connection to the same file and reads the site identity, the
/// count and the rows in one read transaction, so they cannot disagree. At most a few
/// batches are in flight, so memory stays flat; stopping early (or an error) ends the
/// reading thread.
pub(crate) fn stream_rows_pipelined(
    site: &Site,
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    row: &mut dyn FnMut(&UsageRecord) -> Result<bool>,
) -> Result<u64> {
    let path = site.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Raw>>(2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<RawBatch>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Err(e) = read_raw(&path, &tx, &back_rx) {
                let _ = tx.send(Err(e));
            }
        });
        consume_raw(rx, back_tx, start, row)
    })
}

/// The caller's side of [`stream_rows_pipelined`]; owns the receiver so returning (early
/// or not) drops it and releases the reading thread.
fn consume_raw(
    rx: std::sync::mpsc::Receiver<Result<Raw>>,
    back: std::sync::mpsc::Sender<RawBatch>,
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    row: &mut dyn FnMut(&UsageRecord) -> Result<bool>,
) -> Result<u64> {
    let mut hasher: Option<IdentityHasher> = None;
    let mut rec = UsageRecord::default();
    let mut n = 0u64;
    for msg in rx.iter() {
        match msg? {
            Raw::Start(info, total) => {
                hasher = Some(IdentityHasher::new(&info.hierarchy_id));
                start(&info, total)?;
            }
            Raw::Rows(batch) => {
                let h = hasher
                    .as_mut()
                    .ok_or_else(|| Error::internal("rows before the row stream started"))?;
                let mut prev = 0usize;
                for (i, (&id, &level)) in batch.ids.iter().zip(&batch.levels).enumerate() {
                    let ends = &batch.ends[i * 8..i * 8 + 8];
                    let col = |k: usize| {
                        let from = if k == 0 { prev } else { ends[k - 1] };
                        &batch.bytes[from..ends[k]]
                    };
                    rec.id = id;
                    rec.level = level;
                    put_text(&mut rec.category, col(0));
                    put_text(&mut rec.metric, col(1));
                    put_text(&mut rec.instance, col(2));
                    put_text(&mut rec.value, col(3));
                    put_hashed(&mut rec.site_code, col(4), h);
                    put_hashed(&mut rec.site_name, col(5), h);
                    put_hashed(&mut rec.server_name, col(6), h);
                    put_text(&mut rec.collected_utc, col(7));
                    prev = ends[7];
                    n += 1;
                    if !row(&rec)? {
                        return Ok(n);
                    }
                }
                let _ = back.send(batch);
            }
        }
    }
    Ok(n)
}

fn put_text(dst: &mut String, b: &[u8]) {
    dst.clear();
    match std::str::from_utf8(b) {
        Ok(s) => dst.push_str(s),
        Err(_) => dst.push_str(&String::from_utf8_lossy(b)),
    }
}

fn put_hashed(dst: &mut String, b: &[u8], hasher: &mut IdentityHasher) {
    let v = match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    };
    dst.clear();
    dst.push_str(hasher.hash(&v));
}

/// The reading thread of [`stream_rows_pipelined`]. Returns quietly when the receiver
/// is gone (the caller stopped early).
fn read_raw(
    path: &Path,
    tx: &std::sync::mpsc::SyncSender<Result<Raw>>,
    back: &std::sync::mpsc::Receiver<RawBatch>,
) -> Result<()> {
    let site = Site::open_read_only(path)?;
    let conn = site.connection();
    let txn = conn.unchecked_transaction()?;
    let info = site.info()?;
    let level = info.diagnostics_level.as_i64();
    let total: i64 = txn.query_row(
        "SELECT COUNT(*) FROM usage_data WHERE level <= ?1",
        [level],
        |r| r.get(0),
    )?;
    if tx.send(Ok(Raw::Start(info, total as u64))).is_err() {
        return Ok(());
    }
    let mut stmt = txn.prepare(
        "SELECT id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc
         FROM usage_data WHERE level <= ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([level])?;
    let mut batch = RawBatch::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let lv: i64 = r.get(1)?;
        let level = DiagnosticsLevel::from_i64(lv).ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                format!("usage row {id} has an invalid level {lv}"),
            )
        })?;
        batch.ids.push(id);
        batch.levels.push(level);
        for c in 2..10 {
            push_raw(&mut batch.bytes, r, c)?;
            batch.ends.push(batch.bytes.len());
        }
        if batch.ids.len() == BATCH_ROWS {
            let next = back.try_recv().unwrap_or_else(|_| RawBatch::new());
            let full = std::mem::replace(&mut batch, next);
            if tx.send(Ok(Raw::Rows(full))).is_err() {
                return Ok(());
            }
            batch.clear();
        }
    }
    if !batch.ids.is_empty() {
        let _ = tx.send(Ok(Raw::Rows(batch)));
    }
    Ok(())
}

/// A column's bytes as [`text_of`] would render them (before UTF-8 conversion).
fn push_raw(out: &mut Vec<u8>, r: &rusqlite::Row<'_>, i: usize) -> Result<()> {
    use rusqlite::types::ValueRef;
    match r.get_ref(i)? {
        ValueRef::Null => {}
        ValueRef::Text(t) | ValueRef::Blob(t) => out.extend_from_slice(t),
        ValueRef::Integer(v) => out.extend_from_slice(v.to_string().as_bytes()),
        ValueRef::Real(v) => out.extend_from_slice(v.to_string().as_bytes()),
    }
    Ok(())
}

/// Read a text column into a reused buffer (no allocation once warm). Numbers stored in
/// a text column by another writer are rendered as text rather than refused.
fn text_of<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> Result<std::borrow::Cow<'a, str>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => "".into(),
        // `from_utf8` is the fast path; lossy conversion only for invalid bytes.
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => s.into(),
            Err(_) => String::from_utf8_lossy(t),
        },
        ValueRef::Integer(v) => v.to_string().into(),
        ValueRef::Real(v) => v.to_string().into(),
        ValueRef::Blob(b) => String::from_utf8_lossy(b),
    })
}

fn set_text(dst: &mut String, r: &rusqlite::Row<'_>, i: usize) -> Result<()> {
    let v = text_of(r, i)?;
    dst.clear();
    dst.push_str(&v);
    Ok(())
}

fn set_hashed(
    dst: &mut String,
    r: &rusqlite::Row<'_>,
    i: usize,
    hasher: &mut IdentityHasher,
) -> Result<()> {
    let v = text_of(r, i)?;
    dst.clear();
    dst.push_str(hasher.hash(&v));
    Ok(())
}

/// Stream the rows that Prepare and Export would write (level-filtered, identifying
/// attributes hashed, in `id` order) to `f`, one reused record at a time. `f` returning
/// `Ok(false)` stops early. Returns the number of rows passed to `f`.
/// Used by the C ABI and the PowerShell `Get-UsageData`.
pub fn for_each_usage_row(
    site_db: &Path,
    f: &mut dyn FnMut(&UsageRecord) -> Result<bool>,
) -> Result<u64> {
    let site = Site::open_read_only(site_db)?;
    stream_rows(&site, &mut |_, _| Ok(()), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_lowercase_and_empty_stays_empty() {
        let a = uuid::Uuid::parse_str("6F1B6E1C-0000-4000-8000-000000000001").unwrap();
        let b = uuid::Uuid::new_v4();
        let mut ha = IdentityHasher::new(&a);
        let mut hb = IdentityHasher::new(&b);
        let expected = crate::hashing::sha256_hex(b"6f1b6e1c-0000-4000-8000-000000000001:PS1");
        assert_eq!(ha.hash("PS1"), expected);
        assert_ne!(ha.hash("PS1").to_string(), hb.hash("PS1"));
        assert_eq!(ha.hash(""), "");
        for i in 0..(MEMO_LIMIT * 2 + 3) {
            let v = format!("server{i}");
            let h = ha.hash(&v).to_string();
            assert_eq!(
                h,
                crate::hashing::sha256_hex(format!("{}:{v}", ha.salt).as_bytes())
            );
        }
        assert!(ha.memo.len() <= MEMO_LIMIT);
    }
}
