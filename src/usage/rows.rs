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

mod scan;

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
    /// Every outgoing row, through the row-scan aggregate ([`scan`]: it sees them in
    /// rowid order, which is `id` order, and checks it).
    rows_sql: &'static str,
    /// The rows with ids in `?1..=?2` (the level bound, when there is one, is `?3`).
    range_sql: &'static str,
}

impl RowQuery {
    fn for_level(level: DiagnosticsLevel) -> RowQuery {
        if level == DiagnosticsLevel::Full {
            RowQuery {
                bound: None,
                count_sql: "SELECT COUNT(*) FROM usage_data",
                rows_sql: "SELECT sct_usage_rows(id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                           FROM usage_data",
                range_sql: "SELECT sct_usage_rows(id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                            FROM usage_data WHERE id BETWEEN ?1 AND ?2",
            }
        } else {
            RowQuery {
                bound: Some(level.as_i64()),
                count_sql: "SELECT COUNT(*) FROM usage_data WHERE level <= ?1",
                rows_sql: "SELECT sct_usage_rows(id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                           FROM usage_data WHERE level <= ?1",
                range_sql: "SELECT sct_usage_rows(id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                            FROM usage_data WHERE id BETWEEN ?1 AND ?2 AND level <= ?3",
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
#[derive(Default)]
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

/// What a lane's reading thread hands a formatting worker, in order.
enum Job {
    /// The site identity, first (a worker builds its state from it).
    Start(SiteInfo),
    Rows(RawBatch),
    /// The end of one chunk of ids: the worker passes it on, and the caller then turns
    /// to the next chunk's lane (a worker that vanished instead is an error, never a
    /// short output).
    ChunkEnd,
    Failed(Error),
}

/// What a worker hands the caller, in order: a batch's output and its row count, the end
/// of a chunk (`None`), or an error.
type Mapped<O> = Result<Option<(O, u64)>>;

/// Batches queued per worker (and results waiting per worker): enough to keep every
/// thread busy, few enough that memory stays flat.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// Connections that read rows at once, at most (one per core up to this).
const MAX_LANES: usize = 4;

/// Rows per chunk of ids, on average, when several connections read: one batch, so a
/// lane can read its next chunk while the caller still takes the previous lane's.
const CHUNK_ROWS: u64 = BATCH_ROWS as u64;

/// Up to this many chunks (about half a million dense ids) the rows are counted on the
/// caller's thread before it takes the first batch: milliseconds, and every progress
/// report from the first one then carries the total. Above it the count runs on a
/// thread of its own, where it no longer holds up the start (see [`map_raw_batches`]).
const COUNT_ASIDE_ABOVE_CHUNKS: u64 = 256;

#[cfg(test)]
thread_local! {
    /// Tests: count on a thread of its own whatever the size.
    static COUNT_ASIDE_ALWAYS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the rows of `chunks` are counted on a thread of their own.
fn count_aside(chunks: &Chunks) -> bool {
    #[cfg(test)]
    if COUNT_ASIDE_ALWAYS.with(|c| c.get()) {
        return true;
    }
    chunks.count() > COUNT_ASIDE_ABOVE_CHUNKS
}

/// The outgoing rows, read on one or more connections ("lanes") and turned into output
/// (`map`) on formatting threads, handed to `each` in `id` order on the caller's thread.
///
/// Why this shape: stepping SQLite through ten columns per row is the largest single
/// cost of Prepare and Export, and one connection can only be stepped by one thread. So
/// on a machine with several cores the ids are cut into consecutive chunks of about
/// [`CHUNK_ROWS`] rows and chunk `c` is read by lane `c % lanes`, each lane on its own
/// connection, all of them in read transactions on the same snapshot ([`open_lanes`]).
/// Within a lane, batch `k` goes to the lane's worker `k % workers`, which hashes the
/// identifying columns and formats the rows; the caller takes results chunk by chunk,
/// from each lane's workers in the same rotation. The order is kept without sorting, and
/// the output is byte for byte what one thread would produce. Where one snapshot cannot
/// be shared (see [`open_lanes`]) or the rows are few, one lane reads everything.
///
/// `init` builds a worker's state from the site identity (on that worker's thread); `map`
/// turns a batch into an output value (reused across batches). `start` is called once
/// with the identity before any row; `total` once with the number of rows that will
/// follow, as soon as it is known (before the first batch when one connection reads;
/// otherwise when the connection that counts is done, which may be after some batches);
/// `each` per batch with its output and row count (returning `Ok(false)` stops early).
/// All three run on the caller's thread. At most a few batches per worker are in
/// flight, so memory stays flat; stopping early, or an error on any thread, ends every
/// thread. Returns the number of rows delivered.
pub(crate) fn map_raw_batches<S, O>(
    site: &Site,
    workers: usize,
    init: &(dyn Fn(&SiteInfo) -> S + Sync),
    map: &(dyn Fn(&mut S, &RawBatch, &mut O) -> Result<()> + Sync),
    start: &mut dyn FnMut(&SiteInfo) -> Result<()>,
    total: &mut dyn FnMut(u64),
    each: &mut dyn FnMut(&O, u64) -> Result<bool>,
) -> Result<u64>
where
    O: Default + Send,
{
    use std::sync::mpsc::{channel, sync_channel};
    let cores = workers.max(1);
    let plan = ReadPlan::open(site.path(), cores.min(MAX_LANES))?;
    start(&plan.info)?;
    if let Total::Counted(n) = plan.total {
        total(n);
    }
    let lanes = plan.lanes.len();
    let per_lane = (cores / lanes).max(1);
    let (chunks, info, query) = (plan.chunks, &plan.info, &plan.query);
    let shown = site.path().display().to_string();
    std::thread::scope(|scope| {
        let mut results = Vec::with_capacity(lanes);
        let mut spares = Vec::with_capacity(lanes);
        for (lane, lane_site) in plan.lanes.into_iter().enumerate() {
            let (back_tx, back_rx) = channel::<RawBatch>();
            let mut jobs = Vec::with_capacity(per_lane);
            let mut lane_results = Vec::with_capacity(per_lane);
            let mut lane_spares = Vec::with_capacity(per_lane);
            for _ in 0..per_lane {
                let (job_tx, job_rx) = sync_channel::<Job>(IN_FLIGHT_PER_WORKER);
                let (res_tx, res_rx) = sync_channel::<Mapped<O>>(IN_FLIGHT_PER_WORKER);
                let (spare_tx, spare_rx) = channel::<O>();
                let back = back_tx.clone();
                jobs.push(job_tx);
                lane_results.push(res_rx);
                lane_spares.push(spare_tx);
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
                            Job::ChunkEnd => Ok(None),
                            Job::Failed(e) => Err(e),
                        };
                        if res_tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(back_tx);
            results.push(lane_results);
            spares.push(lane_spares);
            scope.spawn(move || {
                let mut out = LaneOut {
                    jobs,
                    back: back_rx,
                    seq: 0,
                };
                if out.start(info) {
                    let read = read_lane(&lane_site, query, chunks, lane, lanes, &mut out);
                    if let Err(e) = read {
                        out.send(Job::Failed(e));
                    }
                }
            });
        }
        // With several lanes the rows of a large table are counted on a thread of their
        // own while the caller already takes batches: counting walks every page of the
        // table (about 45 ms per 2 million rows), and on the caller's thread it held up the
        // first batches while the lanes sat idle. A small table is counted here first.
        let counting = match plan.total {
            Total::Counted(_) => None,
            Total::Later(counter) => {
                let (tx, rx) = sync_channel::<Result<u64>>(1);
                let interrupt = counter.connection().get_interrupt_handle();
                let shown = shown.as_str();
                let count = move || {
                    // Counting reads every page once: a page cache would only add memory.
                    let _ = counter
                        .connection()
                        .execute_batch("PRAGMA cache_size = -64");
                    let n = query
                        .count(counter.connection())
                        .map_err(|e| e.context(shown));
                    let _ = tx.send(n);
                };
                if count_aside(&chunks) {
                    scope.spawn(count);
                } else {
                    // Sent already: taken before the first batch is handed on.
                    count();
                }
                Some(Counting {
                    rx,
                    interrupt,
                    shown,
                })
            }
        };
        collect_in_order(results, spares, chunks.count(), counting, total, each)
    })
}

/// The row count, for [`collect_in_order`]: being taken on a thread of its own, or (a
/// small table) already taken and waiting in `rx`.
struct Counting<'a> {
    rx: std::sync::mpsc::Receiver<Result<u64>>,
    /// Stops the count when the caller stops early, so it is not waited for.
    interrupt: rusqlite::InterruptHandle,
    shown: &'a str,
}

/// The connections that read, the identity, the row count or the connection that will
/// count (all on one snapshot), and how the ids are cut into chunks.
struct ReadPlan {
    lanes: Vec<Site>,
    info: SiteInfo,
    query: RowQuery,
    chunks: Chunks,
    total: Total,
}

/// The number of rows that will follow: counted before reading when one connection reads
/// everything, or by a connection of its own while the lanes already read (counting
/// walks every page of the table: tens of milliseconds per million rows).
enum Total {
    Counted(u64),
    Later(Site),
}

impl ReadPlan {
    fn open(path: &Path, want_lanes: usize) -> Result<ReadPlan> {
        let want = if want_lanes > 1 { want_lanes + 1 } else { 1 };
        let mut conns = open_lanes(path, want)?;
        let shown = path.display();
        let info = conns[0].identity()?;
        let query = RowQuery::for_level(info.diagnostics_level);
        let chunks = if conns.len() > 1 {
            Chunks::of_ids(conns[0].connection()).map_err(|e| e.context(&shown))?
        } else {
            Chunks::All
        };
        let total = if matches!(chunks, Chunks::All) {
            conns.truncate(1);
            let n = query
                .count(conns[0].connection())
                .map_err(|e| e.context(&shown))?;
            Total::Counted(n)
        } else {
            Total::Later(conns.pop().expect("several connections"))
        };
        Ok(ReadPlan {
            lanes: conns,
            info,
            query,
            chunks,
            total,
        })
    }
}

/// `want` read-only connections to the site at `path`, each in a read transaction, all
/// on one snapshot; or just one when that cannot be arranged at once.
///
/// Why the write lock: in WAL mode a reader's snapshot is the last commit when it first
/// reads, and writers go on committing while it reads. SQLite's snapshot API
/// (`sqlite3_snapshot_open`) would hand one snapshot to several connections, but the
/// bundled SQLite is not built with it. Holding the write lock (`BEGIN IMMEDIATE`, which
/// writes nothing) while every connection takes its first read keeps commits out for
/// those few milliseconds, so they all start at the same commit; it is released at once.
/// (In rollback-journal mode overlapping readers already exclude commits.) Where the lock
/// cannot be had without waiting — a writer is mid-transaction, the file or its folder is
/// read-only — one connection reads everything, as a plain read transaction.
fn open_lanes(path: &Path, want: usize) -> Result<Vec<Site>> {
    let mut lanes = vec![Site::open_read_only(path)?];
    let lock = (want > 1).then(|| hold_write_lock(path)).flatten();
    if lock.is_some() {
        while lanes.len() < want {
            match Site::open_read_only(path) {
                Ok(s) => lanes.push(s),
                Err(_) => break,
            }
        }
    }
    for lane in &lanes {
        lane.connection().execute_batch("BEGIN")?;
        // The snapshot is taken at the first read.
        lane.identity()?;
    }
    if let Some(lock) = lock {
        let _ = lock.execute_batch("ROLLBACK");
    }
    Ok(lanes)
}

/// A connection holding the site's write lock, or `None` if it cannot be had at once.
fn hold_write_lock(path: &Path) -> Option<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(path, flags).ok()?;
    conn.busy_timeout(std::time::Duration::ZERO).ok()?;
    conn.execute_batch("BEGIN IMMEDIATE").ok()?;
    Some(conn)
}

/// How the ids are cut for the lanes: everything in one statement, or consecutive
/// ranges of `width` ids from `first` to `last`, `count` of them: [`CHUNK_ROWS`] ids
/// each (as many rows for the usual dense ids; fewer below the Full level), wider where
/// the ids span so much that there would be more than [`MAX_CHUNKS`]. Uneven ids only
/// make chunks uneven: slower, never wrong.
#[derive(Clone, Copy, Debug)]
enum Chunks {
    All,
    Ranges {
        first: i64,
        last: i64,
        width: i128,
        count: u64,
    },
}

/// At most this many chunks, however far apart the ids are (an empty chunk costs a
/// lookup and a hand-off: microseconds).
const MAX_CHUNKS: i128 = 1 << 16;

impl Chunks {
    /// Ranges over the ids of the snapshot `conn` reads in; `All` when they span too few
    /// ids to be worth splitting, the table is empty, or the ids are not all integers
    /// (then the one statement reports the row whose id is not).
    fn of_ids(conn: &rusqlite::Connection) -> Result<Chunks> {
        use rusqlite::types::Value;
        // Two statements: SQLite answers a lone MIN or MAX of the rowid from one end of
        // the b-tree, but both in one statement by scanning every row.
        let end = |sql| conn.query_row(sql, [], |r| r.get::<_, Value>(0));
        let (lo, hi) = (
            end("SELECT MIN(id) FROM usage_data")?,
            end("SELECT MAX(id) FROM usage_data")?,
        );
        let (Value::Integer(first), Value::Integer(last)) = (lo, hi) else {
            return Ok(Chunks::All);
        };
        if (last as i128 - first as i128) < 2 * CHUNK_ROWS as i128 {
            return Ok(Chunks::All);
        }
        Ok(Chunks::split(first, last))
    }

    fn split(first: i64, last: i64) -> Chunks {
        let span = last as i128 - first as i128 + 1;
        let width = (CHUNK_ROWS as i128).max((span + MAX_CHUNKS - 1) / MAX_CHUNKS);
        Chunks::Ranges {
            first,
            last,
            width,
            count: ((span + width - 1) / width) as u64,
        }
    }

    fn count(&self) -> u64 {
        match self {
            Chunks::All => 1,
            Chunks::Ranges { count, .. } => *count,
        }
    }

    /// The ids of chunk `c` (inclusive), or `None` for `All`.
    fn range(&self, c: u64) -> Option<(i64, i64)> {
        match *self {
            Chunks::All => None,
            Chunks::Ranges {
                first, last, width, ..
            } => {
                let lo = first as i128 + c as i128 * width;
                let hi = (lo + width - 1).min(last as i128);
                Some((lo as i64, hi as i64))
            }
        }
    }
}

/// A lane's way to its workers: batch `k` (and every chunk end) to worker `k % workers`,
/// and emptied batches back.
struct LaneOut {
    jobs: Vec<std::sync::mpsc::SyncSender<Job>>,
    back: std::sync::mpsc::Receiver<RawBatch>,
    seq: usize,
}

impl LaneOut {
    /// The site identity to every worker, first; `false` when the caller is gone.
    fn start(&mut self, info: &SiteInfo) -> bool {
        self.jobs
            .iter()
            .all(|j| j.send(Job::Start(info.clone())).is_ok())
    }

    /// Send `job` to the worker whose turn it is; `false` when the caller is gone (it
    /// stopped early).
    fn send(&mut self, job: Job) -> bool {
        let ok = self.jobs[self.seq % self.jobs.len()].send(job).is_ok();
        self.seq += 1;
        ok
    }

    /// Hand a full batch on and get an empty one to fill next (`None`: stop).
    fn rows(&mut self, batch: RawBatch) -> Option<RawBatch> {
        self.send(Job::Rows(batch))
            .then(|| self.back.try_recv().unwrap_or_else(|_| RawBatch::new()))
    }
}

/// One lane's reading: chunks `lane`, `lane + lanes`, … in order, each followed by its
/// chunk end. Returns quietly when the caller is gone.
fn read_lane(
    site: &Site,
    query: &RowQuery,
    chunks: Chunks,
    lane: usize,
    lanes: usize,
    out: &mut LaneOut,
) -> Result<()> {
    let shown = site.path().display().to_string();
    let sql = match chunks {
        Chunks::All => query.rows_sql,
        Chunks::Ranges { .. } => query.range_sql,
    };
    let mut scan = scan::RowScan::prepare(site.connection(), sql).map_err(|e| e.context(&shown))?;
    let mut batch = RawBatch::new();
    let mut c = lane as u64;
    let mut params = Vec::with_capacity(3);
    while c < chunks.count() {
        params.clear();
        if let Some((lo, hi)) = chunks.range(c) {
            params.extend([lo, hi]);
        }
        params.extend(query.bound);
        let Some(partial) = scan.fill(&params, batch, &shown, &mut |b| Ok(out.rows(b)))? else {
            return Ok(());
        };
        batch = if partial.len() > 0 {
            match out.rows(partial) {
                Some(b) => b,
                None => return Ok(()),
            }
        } else {
            partial
        };
        batch.clear();
        if !out.send(Job::ChunkEnd) {
            return Ok(());
        }
        c += lanes as u64;
    }
    Ok(())
}

/// The caller's side of [`map_raw_batches`]: chunk by chunk, each from its lane's
/// workers in rotation, handing the count to `total` when it arrives. Owns the
/// receivers, so returning (early or not) releases every other thread.
///
/// With several lanes every row is in exactly one chunk of one snapshot, so the rows
/// delivered must add up to the count. They do not when records are damaged in a way a
/// range of ids steps over (a scan of the whole table reports those as malformed) or ids
/// are not integers (only where the schema is not this tool's).
fn collect_in_order<O>(
    results: Vec<Vec<std::sync::mpsc::Receiver<Mapped<O>>>>,
    spares: Vec<Vec<std::sync::mpsc::Sender<O>>>,
    chunks: u64,
    counting: Option<Counting<'_>>,
    total: &mut dyn FnMut(u64),
    each: &mut dyn FnMut(&O, u64) -> Result<bool>,
) -> Result<u64> {
    let stopped = || Error::internal("a usage row thread stopped unexpectedly");
    let lanes = results.len();
    let mut turn = vec![0usize; lanes];
    let mut n = 0u64;
    let mut counted: Option<u64> = None;
    // Whatever the way out, a count still running is stopped rather than waited for.
    let _stop_count = counting.as_ref().map(|c| StopCount(&c.interrupt));
    let mut take_count = |wait: bool| -> Result<()> {
        let Some(c) = counting.as_ref().filter(|_| counted.is_none()) else {
            return Ok(());
        };
        let got = if wait {
            c.rx.recv().map_err(|_| stopped())?
        } else {
            match c.rx.try_recv() {
                Ok(got) => got,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(stopped()),
            }
        };
        let t = got?;
        counted = Some(t);
        total(t);
        Ok(())
    };
    take_count(false)?;
    for c in 0..chunks {
        let lane = (c % lanes as u64) as usize;
        loop {
            let w = turn[lane];
            turn[lane] = (w + 1) % results[lane].len();
            match results[lane][w].recv().map_err(|_| stopped())?? {
                Some((out, rows)) => {
                    take_count(false)?;
                    n += rows;
                    if !each(&out, rows)? {
                        return Ok(n);
                    }
                    let _ = spares[lane][w].send(out);
                }
                None => break,
            }
        }
    }
    take_count(true)?;
    match (counting.as_ref(), counted) {
        (Some(c), Some(total)) if total != n => Err(Error::new(
            ErrorKind::Database,
            format!(
                "{}: database disk image is malformed: it counts {total} outgoing usage rows but {n} could be read by id",
                c.shown
            ),
        )),
        _ => Ok(n),
    }
}

/// Interrupts the counting connection when dropped (a no-op once the count is done).
struct StopCount<'a>(&'a rusqlite::InterruptHandle);

impl Drop for StopCount<'_> {
    fn drop(&mut self) {
        self.0.interrupt();
    }
}

/// The outgoing rows on the calling thread, for [`stream_rows`]: in one read transaction
/// it reads the identity and the row count and hands them to `start` (`Ok(false)`
/// stops), then fills batches of [`BATCH_ROWS`] rows and hands each full one to `full`,
/// which returns an empty batch to fill next (or `None` to stop).
///
/// Rows are read through SQLite's C API ([`scan`]) rather than rusqlite's typed rows:
/// with ten columns per row, rusqlite's per-value checks cost more than SQLite's own
/// work and made this the slowest stage of Prepare.
fn read_batches(
    site: &Site,
    start: &mut dyn FnMut(SiteInfo, u64) -> Result<bool>,
    full: &mut dyn FnMut(RawBatch) -> Result<Option<RawBatch>>,
) -> Result<()> {
    let conn = site.connection();
    let shown = site.path().display().to_string();
    // One snapshot for the identity, the count and the rows (WAL readers never block
    // writers).
    let txn = conn.unchecked_transaction()?;
    let info = site.identity()?;
    let query = RowQuery::for_level(info.diagnostics_level);
    let total = query.count(&txn).map_err(|e| e.context(&shown))?;
    if !start(info, total)? {
        return Ok(());
    }
    let mut scan = scan::RowScan::prepare(&txn, query.rows_sql).map_err(|e| e.context(&shown))?;
    if let Some(last) = scan.fill(&query.params(), RawBatch::new(), &shown, full)? {
        if last.len() > 0 {
            full(last)?;
        }
    }
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
pub(super) mod tests {
    use super::*;

    pub(super) fn site_with_rows(dir: &Path, rows: u64) -> std::path::PathBuf {
        let path = dir.join("site.db");
        let mut site = Site::create(
            &path,
            &crate::site::NewSite {
                site_code: "PS1".into(),
                site_version: "5.00.9128.1000".parse().unwrap(),
                diagnostics_level: DiagnosticsLevel::Full,
                hierarchy_id: None,
                site_name: None,
                scp_mode: Default::default(),
            },
        )
        .unwrap();
        crate::site::sample::generate(&mut site, rows, 7).unwrap();
        path
    }

    /// The lanes' connections all read the same snapshot while a writer commits as fast
    /// as it can (each commit moves a window of ids by one, so every commit changes MIN,
    /// MAX or both). Where the write lock could not be had at once there is one lane.
    #[test]
    fn lanes_share_one_snapshot_while_a_writer_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = site_with_rows(dir.path(), 2_000);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let commits = std::sync::atomic::AtomicU64::new(0);
        let (mut shared, mut single) = (0, 0);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let w = rusqlite::Connection::open(&path).unwrap();
                w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                // Commits without a flush to disk: many of them while the lanes open.
                w.pragma_update(None, "synchronous", "OFF").unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    w.execute_batch(
                        "BEGIN IMMEDIATE;
                         DELETE FROM usage_data WHERE id = (SELECT MIN(id) FROM usage_data);
                         INSERT INTO usage_data (level, category, metric, value, collected_utc)
                         VALUES (3, 'Late', 'Row', 'x', '2026-01-01T00:00:00Z');
                         COMMIT;",
                    )
                    .unwrap();
                    commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Room between commits for the lock to be free now and then.
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            });
            // Stops the writer however this loop ends (a failed assertion included).
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let stopper = Stop(&stop);
            // At least 300 rounds, and on until the writer has committed often enough to
            // have had its chances (it gets few on a loaded machine) and the lanes have
            // shared a snapshot often enough (under Wine the lock is more often busy: 21 of
            // 300 rounds in one CI run), within a minute.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut rounds = 0;
            while rounds < 300
                || ((commits.load(std::sync::atomic::Ordering::Relaxed) < 100 || shared < 30)
                    && std::time::Instant::now() < deadline)
            {
                rounds += 1;
                let lanes = open_lanes(&path, 3).unwrap();
                let seen: Vec<(i64, i64)> = lanes
                    .iter()
                    .map(|l| {
                        l.connection()
                            .query_row(
                                "SELECT (SELECT MIN(id) FROM usage_data), (SELECT MAX(id) FROM usage_data)",
                                [],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )
                            .unwrap()
                    })
                    .collect();
                assert!(
                    seen.windows(2).all(|w| w[0] == w[1]),
                    "lanes on different snapshots: {seen:?}"
                );
                if lanes.len() > 1 {
                    assert_eq!(lanes.len(), 3);
                    shared += 1;
                } else {
                    single += 1;
                }
            }
            drop(stopper);
            writer.join().unwrap();
            let commits = commits.load(std::sync::atomic::Ordering::Relaxed);
            assert!(commits >= 100, "the writer kept committing: {commits}");
        });
        assert!(shared >= 30, "shared {shared}, single {single}");
    }

    /// Counted on a thread of its own (as large tables are), the total still reaches the
    /// caller exactly once and matches the rows; stopping at the first batch does not wait
    /// for the rest (the count still running is interrupted).
    #[test]
    fn a_count_on_its_own_thread_reaches_the_caller_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = site_with_rows(dir.path(), 20_000);
        let site = Site::open_read_only(&path).unwrap();
        COUNT_ASIDE_ALWAYS.with(|c| c.set(true));
        for stop_early in [false, true] {
            let (mut started, mut totals, mut rows, mut batches) = (false, Vec::new(), 0, 0);
            let n = map_raw_batches(
                &site,
                2,
                &|_| (),
                &|_, batch: &RawBatch, out: &mut u64| {
                    *out = batch.len() as u64;
                    Ok(())
                },
                &mut |_| {
                    started = true;
                    Ok(())
                },
                &mut |t| totals.push(t),
                &mut |out: &u64, r| {
                    assert_eq!(*out, r);
                    rows += r;
                    batches += 1;
                    Ok(!stop_early)
                },
            )
            .unwrap();
            assert!(started);
            assert_eq!(n, rows);
            if stop_early {
                assert_eq!(batches, 1);
                assert!(
                    totals.len() <= 1 && totals.iter().all(|&t| t == 20_000),
                    "{totals:?}"
                );
            } else {
                assert_eq!((n, totals), (20_000, vec![20_000]));
            }
        }
        COUNT_ASIDE_ALWAYS.with(|c| c.set(false));
    }

    /// Chunks cover every id from the first to the last exactly once, in order, with
    /// about CHUNK_ROWS rows each for dense ids, and stay few for sparse or extreme ones.
    #[test]
    fn chunks_cover_the_ids_once() {
        for (first, last) in [
            (1i64, 2_000_000i64),
            (-5, 70_000),
            (i64::MIN, i64::MAX),
            (i64::MAX - 5_000, i64::MAX),
            (0, 3 << 40),
        ] {
            let c = Chunks::split(first, last);
            let span = last as i128 - first as i128 + 1;
            assert!(c.count() as i128 <= MAX_CHUNKS, "{c:?}");
            if span <= MAX_CHUNKS * CHUNK_ROWS as i128 {
                assert_eq!(
                    c.count() as i128,
                    (span + CHUNK_ROWS as i128 - 1) / CHUNK_ROWS as i128
                );
            }
            let mut next = first as i128;
            for k in 0..c.count() {
                let (lo, hi) = c.range(k).unwrap();
                assert_eq!(lo as i128, next, "{c:?} chunk {k}");
                assert!(hi >= lo);
                next = hi as i128 + 1;
            }
            assert_eq!(next, last as i128 + 1, "{c:?}");
        }
        assert!(Chunks::All.range(0).is_none());
    }

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
