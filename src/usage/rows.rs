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
    /// Raw value bytes → index into `hashes` (an index, so a hit is one lookup).
    memo: HashMap<Box<[u8]>, usize, BuildFx>,
    hashes: Vec<String>,
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
            hashes: Vec::new(),
        }
    }

    /// Lowercase hex SHA-256 of `<hierarchy-id lowercase>:<value>`; empty stays empty.
    pub fn hash(&mut self, value: &str) -> &str {
        self.hash_bytes(value.as_bytes())
    }

    /// [`IdentityHasher::hash`] of raw column bytes; bytes that are not UTF-8 are hashed
    /// as their lossy conversion, which is how every other reader of the row sees them.
    pub(crate) fn hash_bytes(&mut self, value: &[u8]) -> &str {
        if value.is_empty() {
            return "";
        }
        let i = match self.memo.get(value) {
            Some(&i) => i,
            None => {
                if self.hashes.len() >= MEMO_LIMIT {
                    self.memo.clear();
                    self.hashes.clear();
                }
                let text = String::from_utf8_lossy(value);
                let mut h = Sha256::new();
                h.update(self.salt.as_bytes());
                h.update(b":");
                h.update(text.as_bytes());
                self.hashes.push(hex::encode(h.finalize()));
                self.memo.insert(value.into(), self.hashes.len() - 1);
                self.hashes.len() - 1
            }
        };
        &self.hashes[i]
    }
}

/// Stream the site's outgoing rows on the calling thread: `start` is called once with
/// the site identity and the number of rows that will follow, then `row` once per row
/// (returning `Ok(false)` stops early). Returns the number of rows delivered.
pub(crate) fn stream_rows(
    site: &Site,
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    row: &mut dyn FnMut(&UsageRecord) -> Result<bool>,
) -> Result<u64> {
    // Set by the start callback, used by the batch callback.
    let hasher: std::cell::RefCell<Option<IdentityHasher>> = std::cell::RefCell::new(None);
    let mut rec = UsageRecord::default();
    let mut n = 0u64;
    read_batches(
        site,
        &mut |info, total| {
            *hasher.borrow_mut() = Some(IdentityHasher::new(&info.hierarchy_id));
            start(&info, total)?;
            Ok(true)
        },
        &mut |mut batch| {
            let mut h = hasher.borrow_mut();
            let h = h
                .as_mut()
                .ok_or_else(|| Error::internal("rows before the row stream started"))?;
            for i in 0..batch.len() {
                let f = |k: usize| batch.field(i * RAW_TEXT_COLUMNS + k);
                rec.id = batch.id(i);
                rec.level = batch.level(i);
                put_text(&mut rec.category, f(0));
                put_text(&mut rec.metric, f(1));
                put_text(&mut rec.instance, f(2));
                put_text(&mut rec.value, f(3));
                put_hashed(&mut rec.site_code, f(HASHED_COLUMNS[0]), h);
                put_hashed(&mut rec.site_name, f(HASHED_COLUMNS[1]), h);
                put_hashed(&mut rec.server_name, f(HASHED_COLUMNS[2]), h);
                put_text(&mut rec.collected_utc, f(7));
                n += 1;
                if !row(&rec)? {
                    return Ok(None);
                }
            }
            batch.clear();
            Ok(Some(batch))
        },
    )?;
    Ok(n)
}

/// Text as the rest of the tool sees it: bytes that are not UTF-8 are converted lossily.
fn put_text(dst: &mut String, b: &[u8]) {
    dst.clear();
    dst.push_str(&String::from_utf8_lossy(b));
}

fn put_hashed(dst: &mut String, b: &[u8], hasher: &mut IdentityHasher) {
    dst.clear();
    dst.push_str(hasher.hash_bytes(b));
}

/// The statements that select the outgoing rows for a site's diagnostics level.
///
/// At `Full` every row leaves the site, so neither statement filters: the count is
/// SQLite's page-counting `COUNT(*)` instead of a scan that decodes every row, and a
/// row with a level outside 1–3 (only possible in a database whose CHECK constraint
/// was removed) stops the stream with an error instead of being skipped silently.
/// Below `Full`, rows above the level are filtered out.
struct RowQuery {
    /// The level bound, or `None` at `Full` (no filter).
    bound: Option<i64>,
    count_sql: &'static str,
    rows_sql: &'static str,
}

impl RowQuery {
    fn for_level(level: DiagnosticsLevel) -> RowQuery {
        if level == DiagnosticsLevel::Full {
            RowQuery {
                bound: None,
                count_sql: "SELECT COUNT(*) FROM usage_data",
                rows_sql: "SELECT id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc
                           FROM usage_data ORDER BY id",
            }
        } else {
            RowQuery {
                bound: Some(level.as_i64()),
                count_sql: "SELECT COUNT(*) FROM usage_data WHERE level <= ?1",
                rows_sql: "SELECT id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc
                           FROM usage_data WHERE level <= ?1 ORDER BY id",
            }
        }
    }

    fn params(&self) -> Vec<i64> {
        self.bound.into_iter().collect()
    }

    fn count(&self, conn: &rusqlite::Connection) -> Result<u64> {
        let n: i64 = conn.query_row(
            self.count_sql,
            rusqlite::params_from_iter(self.params()),
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

/// Rows per batch handed from the SQLite thread to a formatting thread.
const BATCH_ROWS: usize = 2048;

/// Rows as SQLite returned them, a batch at a time: `id`, `level` and the eight text
/// columns (category through collected_utc) as raw bytes, concatenated, with each
/// column's end offset. Text is not validated here: the consumer checks a whole batch's
/// UTF-8 at once, which is far cheaper than a check per field.
pub(crate) struct RawBatch {
    ids: Vec<i64>,
    levels: Vec<DiagnosticsLevel>,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Text columns per row in a [`RawBatch`].
pub(crate) const RAW_TEXT_COLUMNS: usize = 8;
/// The text columns of a [`RawBatch`] that leave the site hashed: site_code, site_name,
/// server_name.
pub(crate) const HASHED_COLUMNS: [usize; 3] = [4, 5, 6];

impl RawBatch {
    fn new() -> Self {
        RawBatch {
            ids: Vec::with_capacity(BATCH_ROWS),
            levels: Vec::with_capacity(BATCH_ROWS),
            bytes: Vec::with_capacity(BATCH_ROWS * 256),
            ends: Vec::with_capacity(BATCH_ROWS * RAW_TEXT_COLUMNS),
        }
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.levels.clear();
        self.bytes.clear();
        self.ends.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn id(&self, row: usize) -> i64 {
        self.ids[row]
    }

    pub(crate) fn level(&self, row: usize) -> DiagnosticsLevel {
        self.levels[row]
    }

    /// The bytes of every text field of the batch, back to back.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Field `f` counting over the whole batch (row `f / 8`, text column `f % 8`).
    pub(crate) fn field(&self, f: usize) -> &[u8] {
        let from = if f == 0 { 0 } else { self.ends[f - 1] };
        &self.bytes[from..self.ends[f]]
    }

    /// The field holding byte `pos` of [`RawBatch::bytes`].
    pub(crate) fn field_at(&self, pos: usize) -> usize {
        self.ends.partition_point(|&e| e <= pos)
    }

    /// Whether every field is valid UTF-8 (the common case, checked in one pass: the
    /// whole buffer is valid and no field boundary splits a character).
    pub(crate) fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.bytes).is_ok()
            && self
                .ends
                .iter()
                .all(|&e| e >= self.bytes.len() || (self.bytes[e] as i8) >= -0x40)
    }
}

/// What the reading thread hands a formatting worker, in order.
enum Job {
    /// The site identity, first (a worker builds its state from it).
    Start(SiteInfo),
    Rows(RawBatch),
    /// No more rows: the worker passes this on to the caller, which then knows every
    /// batch arrived (a worker that vanished instead is an error, never a short output).
    End,
    Failed(Error),
}

/// What a worker hands the caller, in order: a batch's output and its row count, the end
/// of the rows (`None`), or an error.
type Mapped<O> = Result<Option<(O, u64)>>;

/// Batches queued per worker (and results waiting per worker): enough to keep every
/// thread busy, few enough that memory stays flat.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// The outgoing rows, read in batches on one thread and turned into output (`map`) on
/// `workers` threads in parallel, handed to `each` in `id` order on the caller's thread.
///
/// Why this shape: hashing identifying columns and formatting rows is independent per
/// batch, so it runs on every core, and the caller's thread is left with what must be
/// sequential (hashing the whole output, writing it). Batch `k` goes to worker
/// `k % workers` and the caller takes results from the workers in the same rotation, so
/// the order is kept without sorting, and the output is byte for byte what one thread
/// would produce. The reading thread opens its own read-only connection and reads the
/// identity, the count and the rows in one read transaction, so they come from one
/// snapshot of the site. One reading connection, not several over ranges of ids: on
/// two cores the reading thread is already at most half the CPU time, so splitting it
/// would not shorten the run (README, Performance), and sharing one WAL snapshot
/// between connections needs an SQLite build option the bundled library lacks.
///
/// `init` builds a worker's state from the site identity (on that worker's thread); `map`
/// turns a batch into an output value (reused across batches). `start` is called once
/// with the identity and the number of rows that will follow, then `each` per batch with
/// its output and row count (returning `Ok(false)` stops early). At most a few batches
/// per worker are in flight, so memory stays flat; stopping early, or an error on any
/// thread, ends every thread. Returns the number of rows delivered.
pub(crate) fn map_raw_batches<S, O>(
    site: &Site,
    workers: usize,
    init: &(dyn Fn(&SiteInfo) -> S + Sync),
    map: &(dyn Fn(&mut S, &RawBatch, &mut O) -> Result<()> + Sync),
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    each: &mut dyn FnMut(&O, u64) -> Result<bool>,
) -> Result<u64>
where
    O: Default + Send,
{
    use std::sync::mpsc::{channel, sync_channel};
    let workers = workers.max(1);
    let path = site.path().to_path_buf();
    let (start_tx, start_rx) = sync_channel::<Result<(SiteInfo, u64)>>(1);
    let (back_tx, back_rx) = channel::<RawBatch>();
    let mut jobs = Vec::with_capacity(workers);
    let mut results = Vec::with_capacity(workers);
    let mut spares = Vec::with_capacity(workers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_tx, job_rx) = sync_channel::<Job>(IN_FLIGHT_PER_WORKER);
            let (res_tx, res_rx) = sync_channel::<Mapped<O>>(IN_FLIGHT_PER_WORKER);
            let (spare_tx, spare_rx) = channel::<O>();
            let back = back_tx.clone();
            jobs.push(job_tx);
            results.push(res_rx);
            spares.push(spare_tx);
            scope.spawn(move || {
                let mut state: Option<S> = None;
                for job in job_rx {
                    let msg = match job {
                        Job::Start(info) => {
                            state = Some(init(&info));
                            continue;
                        }
                        Job::Rows(batch) => match state.as_mut() {
                            Some(s) => {
                                let mut out = spare_rx.try_recv().unwrap_or_default();
                                let r = map(s, &batch, &mut out)
                                    .map(|()| Some((out, batch.len() as u64)));
                                let _ = back.send(batch);
                                r
                            }
                            None => Err(Error::internal("rows before the row stream started")),
                        },
                        Job::End => Ok(None),
                        Job::Failed(e) => Err(e),
                    };
                    if res_tx.send(msg).is_err() {
                        return;
                    }
                }
            });
        }
        drop(back_tx);
        scope.spawn(move || read_into_jobs(&path, &start_tx, &jobs, &back_rx));
        collect_in_order(start_rx, results, spares, start, each)
    })
}

/// The reading thread of [`map_raw_batches`]: batch `k` to worker `k % workers`, then
/// the end (or the error) to the worker whose turn is next. Returns quietly when the
/// caller is gone (it stopped early).
fn read_into_jobs(
    path: &Path,
    start: &std::sync::mpsc::SyncSender<Result<(SiteInfo, u64)>>,
    jobs: &[std::sync::mpsc::SyncSender<Job>],
    back: &std::sync::mpsc::Receiver<RawBatch>,
) {
    let started = std::cell::Cell::new(false);
    let mut seq = 0usize;
    let read = Site::open_read_only(path).and_then(|site| {
        read_batches(
            &site,
            &mut |info, total| {
                started.set(true);
                for j in jobs {
                    if j.send(Job::Start(info.clone())).is_err() {
                        return Ok(false);
                    }
                }
                Ok(start.send(Ok((info, total))).is_ok())
            },
            &mut |full| {
                if jobs[seq % jobs.len()].send(Job::Rows(full)).is_err() {
                    return Ok(None);
                }
                seq += 1;
                Ok(Some(back.try_recv().unwrap_or_else(|_| RawBatch::new())))
            },
        )
    });
    let last = &jobs[seq % jobs.len()];
    match read {
        Ok(()) => {
            let _ = last.send(Job::End);
        }
        Err(e) if started.get() => {
            let _ = last.send(Job::Failed(e));
        }
        Err(e) => {
            let _ = start.send(Err(e));
        }
    }
}

/// The caller's side of [`map_raw_batches`]. Owns the receivers, so returning (early or
/// not) releases every other thread.
fn collect_in_order<O>(
    start_rx: std::sync::mpsc::Receiver<Result<(SiteInfo, u64)>>,
    results: Vec<std::sync::mpsc::Receiver<Mapped<O>>>,
    spares: Vec<std::sync::mpsc::Sender<O>>,
    start: &mut dyn FnMut(&SiteInfo, u64) -> Result<()>,
    each: &mut dyn FnMut(&O, u64) -> Result<bool>,
) -> Result<u64> {
    let stopped = || Error::internal("a usage row thread stopped unexpectedly");
    let (info, total) = start_rx.recv().map_err(|_| stopped())??;
    drop(start_rx);
    start(&info, total)?;
    let mut n = 0u64;
    for k in (0..results.len()).cycle() {
        match results[k].recv().map_err(|_| stopped())?? {
            Some((out, rows)) => {
                n += rows;
                if !each(&out, rows)? {
                    break;
                }
                let _ = spares[k].send(out);
            }
            None => break,
        }
    }
    Ok(n)
}

/// The one reader of outgoing rows, for both [`stream_rows`] and [`map_raw_batches`].
/// In one read transaction it reads the identity and the row count and hands them to
/// `start` (`Ok(false)` stops), then fills batches of [`BATCH_ROWS`] rows and hands each
/// full one to `full`, which returns an empty batch to fill next (or `None` to stop).
///
/// It steps the statement through SQLite's C API ([`RawStatement`]) rather than
/// rusqlite's typed rows: with ten columns per row, rusqlite's per-value checks cost
/// more than SQLite's own work and made this the slowest stage of Prepare.
fn read_batches(
    site: &Site,
    start: &mut dyn FnMut(SiteInfo, u64) -> Result<bool>,
    full: &mut dyn FnMut(RawBatch) -> Result<Option<RawBatch>>,
) -> Result<()> {
    let conn = site.connection();
    // SQLite's own failures (a damaged file, say) name the database; the callbacks'
    // errors are passed on as they are.
    let shown = site.path().display();
    let named = |e: Error| e.context(&shown);
    // One snapshot for the identity, the count and the rows (WAL readers never block
    // writers).
    let txn = conn.unchecked_transaction()?;
    let info = site.identity()?;
    let query = RowQuery::for_level(info.diagnostics_level);
    let total = query.count(&txn).map_err(named)?;
    if !start(info, total)? {
        return Ok(());
    }
    let mut stmt = RawStatement::prepare(&txn, query.rows_sql).map_err(named)?;
    if let Some(bound) = query.bound {
        stmt.bind_i64(1, bound)?;
    }
    let mut batch = RawBatch::new();
    while stmt.step().map_err(named)? {
        let id = stmt.integer(0).ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                "a usage row has an id that is not an integer",
            )
        })?;
        let raw_level = stmt.integer(1);
        let level = raw_level
            .and_then(DiagnosticsLevel::from_i64)
            .ok_or_else(|| {
                let shown = raw_level.map_or_else(|| "that is not a number".into(), |l| l.to_string());
                Error::new(
                    ErrorKind::Database,
                    format!("usage row {id} has an invalid level {shown} (1 Basic, 2 Enhanced and 3 Full are valid)"),
                )
            })?;
        batch.ids.push(id);
        batch.levels.push(level);
        for c in 2..2 + RAW_TEXT_COLUMNS as i32 {
            stmt.push_text(c, &mut batch.bytes);
            batch.ends.push(batch.bytes.len());
        }
        if batch.len() == BATCH_ROWS {
            match full(batch)? {
                Some(next) => batch = next,
                None => return Ok(()),
            }
            batch.clear();
        }
    }
    if batch.len() > 0 {
        full(batch)?;
    }
    Ok(())
}

/// A prepared statement driven through SQLite's C API, finalized on drop. It borrows
/// the connection, so it cannot outlive it (or the transaction it reads in).
struct RawStatement<'c> {
    db: *mut rusqlite::ffi::sqlite3,
    stmt: std::ptr::NonNull<rusqlite::ffi::sqlite3_stmt>,
    _conn: std::marker::PhantomData<&'c rusqlite::Connection>,
}

impl<'c> RawStatement<'c> {
    fn prepare(conn: &'c rusqlite::Connection, sql: &str) -> Result<Self> {
        use rusqlite::ffi;
        // SAFETY: the handle stays valid while `conn` is borrowed, which the lifetime
        // ensures; `sql` is passed with its length, so it needs no terminating NUL.
        unsafe {
            let db = conn.handle();
            let mut stmt = std::ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast(),
                sql.len() as std::os::raw::c_int,
                &mut stmt,
                std::ptr::null_mut(),
            );
            if rc != ffi::SQLITE_OK {
                return Err(sqlite_error(db, rc));
            }
            let stmt = std::ptr::NonNull::new(stmt)
                .ok_or_else(|| Error::internal("SQLite prepared an empty statement"))?;
            Ok(RawStatement {
                db,
                stmt,
                _conn: std::marker::PhantomData,
            })
        }
    }

    fn bind_i64(&mut self, index: i32, v: i64) -> Result<()> {
        // SAFETY: `stmt` is a live statement; SQLite checks the index.
        let rc = unsafe { rusqlite::ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index, v) };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(sqlite_error(self.db, rc));
        }
        Ok(())
    }

    /// Advance to the next row: `true` at a row, `false` when done.
    fn step(&mut self) -> Result<bool> {
        use rusqlite::ffi;
        // SAFETY: `stmt` is a live statement.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(sqlite_error(self.db, rc)),
        }
    }

    /// Column `i` of the current row as SQLite's value object: one call per column
    /// instead of three (`sqlite3_column_type`, `_blob` and `_bytes` each take the
    /// connection's API guard, which cost more than SQLite's decoding of the row).
    ///
    /// SQLite calls the object unprotected (no mutex is held while it is read); that
    /// is sound here because the connection is used by this one thread only
    /// (`SQLITE_OPEN_NO_MUTEX`) and the value is read before the next step.
    fn value(&self, i: i32) -> *mut rusqlite::ffi::sqlite3_value {
        // SAFETY: called only after `step` returned a row; SQLite range-checks `i`
        // (an out-of-range index gives a NULL value).
        unsafe { rusqlite::ffi::sqlite3_column_value(self.stmt.as_ptr(), i) }
    }

    /// Column `i` of the current row if it holds an integer.
    fn integer(&self, i: i32) -> Option<i64> {
        use rusqlite::ffi;
        let v = self.value(i);
        // SAFETY: `v` is the current row's value, read before the next step.
        unsafe {
            (ffi::sqlite3_value_type(v) == ffi::SQLITE_INTEGER).then(|| ffi::sqlite3_value_int64(v))
        }
    }

    /// Append column `i` of the current row as text bytes: text and blobs as stored,
    /// NULL as nothing, numbers (only in a database whose columns lost their TEXT
    /// affinity) in Rust's rendering.
    fn push_text(&self, i: i32, out: &mut Vec<u8>) {
        use rusqlite::ffi;
        let v = self.value(i);
        // SAFETY: `v` is the current row's value, read before the next step. The type
        // is read before any conversion; for text and blobs the pointer is read before
        // the length, as SQLite requires, and copied before the next step.
        unsafe {
            match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v) as *const u8;
                    let n = ffi::sqlite3_value_bytes(v);
                    if !p.is_null() && n > 0 {
                        out.extend_from_slice(std::slice::from_raw_parts(p, n as usize));
                    }
                }
                ffi::SQLITE_INTEGER => out.extend_from_slice(
                    itoa::Buffer::new()
                        .format(ffi::sqlite3_value_int64(v))
                        .as_bytes(),
                ),
                ffi::SQLITE_FLOAT => {
                    out.extend_from_slice(ffi::sqlite3_value_double(v).to_string().as_bytes())
                }
                _ => {}
            }
        }
    }
}

impl Drop for RawStatement<'_> {
    fn drop(&mut self) {
        // SAFETY: `stmt` is live and finalized exactly once.
        unsafe {
            rusqlite::ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// SQLite's error for `rc` on `db`, as rusqlite would report it.
fn sqlite_error(db: *mut rusqlite::ffi::sqlite3, rc: std::os::raw::c_int) -> Error {
    // SAFETY: `db` is a live connection; the message is copied at once.
    let msg = unsafe {
        let m = rusqlite::ffi::sqlite3_errmsg(db);
        (!m.is_null()).then(|| std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), msg).into()
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
