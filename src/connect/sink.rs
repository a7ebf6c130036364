//! A download's partial file, hashed and written by two threads of its own (from
//! `writer_pool`), so that the task receiving the body only copies it. A file whose
//! rest fits in what may be in flight ([`ONE_THREAD_MAX`]) gets one thread that hashes
//! and then writes each batch, and that thread also moves the verified file to its final
//! name ([`Place`]): per file that is one thread hand-off instead of two, one per batch
//! instead of two, and no hand-off to the blocking pool for the rename. 1,000 files of
//! 1 MiB 1.83 -> 1.70 s (CPU 2.06 -> 1.88 s), 5,000 files of 4-64 KiB 2.45 -> 1.93 s
//! (CPU 3.04 -> 2.17 s); alternating runs, medians of four.
//!
//! The receiving task copies each chunk into a batch buffer ([`BATCH`], reused across the
//! run's files) and lets the chunk go at once; full batches go to the hashing thread, then
//! to the writing thread, and come back empty. Three stages on two cores, and why:
//! - SHA-256 of one file cannot be split, and at 1.6-1.8 GB/s on one core it is the
//!   longest stage; on the receiving task (as before) it was added to the socket copy and
//!   the runtime's own work, so that task set the pace (`perf`: 86% of the client's
//!   samples on it). A 1 GiB download from the service on 127.0.0.1, alternating runs,
//!   medians of five: 1.17 s with hashing on the receiving task, 1.33 s with it on the
//!   writing thread (which then waits for the disk between hashes), 1.02 s as here.
//! - Copying instead of handing hyper's buffer itself over: while the writer held the
//!   last one, hyper allocated a fresh receive buffer for every read and glibc gave the
//!   memory back and faulted it in again (85,000-95,000 page faults per GiB, `time -f
//!   %R`); a copied chunk is dropped before the next read, so hyper reuses its buffer
//!   (2,800 faults). The copy costs less than the faults did: 1.41 -> 1.21 s.
//!
//! At most [`IN_FLIGHT`] bytes are between the receiving task and the file, so memory
//! stays flat however large the file. The bytes hashed are the bytes written: the same
//! buffer, hashed before it is written.
//!
//! The writing thread writes through [`OutFile`]: on Linux a file's bytes go to the disk
//! with `O_DIRECT` past the page cache, otherwise the writeback of what was written
//! is started early, so the flush before the pack's manifest (one `syncfs`) finds little
//! left to write instead of the whole pack. Durability is unchanged: that flush still
//! comes.

use super::writer_pool::{Done, Pool};
use crate::fsutil::{Batch, Batches, OutFile};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes received but not yet written, per file (4 downloads at once: 16 MiB at most).
/// 4 MiB rather than 2 so that batches wait for a busy writing thread, which then takes
/// them together ([`GATHER`]).
const IN_FLIGHT: usize = 4 << 20;
/// Up to this many batches already waiting are written together, in one `O_DIRECT`
/// write (`OutFile::write_parts`): a 1 GiB file, alternating runs, medians of four and
/// five: 1.21 -> 1.08 s, CPU 1.32 -> 1.14 s (2 MiB in flight and the same gathering:
/// 1.31 against 1.05 s); peak RSS 14 -> 18 MiB. 1,000 files of 1 MiB the same (1.37 s
/// both).
const GATHER: usize = 4;
/// Bytes per batch handed to the hashing thread.
const BATCH: usize = 512 << 10;
/// Bytes still to come up to which a file is hashed and written by one thread instead of
/// two (all of it can be in flight at once, so the two would not overlap much).
const ONE_THREAD_MAX: u64 = IN_FLIGHT as u64;
/// Empty batch buffers kept for reuse (as many as 4 downloads can have in flight, plus
/// the ones being filled).
const MAX_SPARE: usize = 4 * (IN_FLIGHT / BATCH + 1);

/// Empty batch buffers for the sinks of one Connect run.
pub(crate) fn batches() -> Arc<Batches> {
    Arc::new(Batches::new(BATCH, MAX_SPARE))
}

/// What the receiving task sends the hashing thread.
enum ToHasher {
    Data(Batch, Option<OwnedSemaphorePermit>),
    /// Truncate to `len` and go on from there; the hash of those `len` bytes.
    Reset(u64, Box<Sha256>, oneshot::Sender<std::io::Result<()>>),
    /// Everything before it is written (and flushed to disk when `sync`): the hash of
    /// the file, or the first write error; and with a [`Place`], whether the file was
    /// moved to its final name.
    Drain(
        bool,
        Option<Place>,
        oneshot::Sender<std::io::Result<Drained>>,
    ),
}

/// The hash of a drained file, and whether it was moved into place (`None`: it was not
/// tried, no place being given or the hash not matching).
type Drained = (Sha256, Option<std::io::Result<()>>);

/// Where a file goes once all of it is written and its SHA-256 is `sha256` (hex): moved
/// there by the thread that hashed it, which saves a pack of many small files a hand-off
/// to the blocking pool per file.
pub(crate) struct Place {
    pub(crate) from: std::path::PathBuf,
    pub(crate) to: std::path::PathBuf,
    pub(crate) sha256: String,
}

impl Place {
    /// Rename the file if `hashed` is the hash it should have.
    fn apply(&self, hashed: &Sha256) -> Option<std::io::Result<()>> {
        (hex::encode(hashed.clone().finalize()) == self.sha256)
            .then(|| crate::fsutil::rename_retrying(&self.from, &self.to))
    }
}

/// What the hashing thread passes on to the writing thread.
enum ToWriter {
    Data(Batch, Option<OwnedSemaphorePermit>),
    Reset(u64, oneshot::Sender<std::io::Result<()>>),
    Drain(bool, oneshot::Sender<std::io::Result<()>>),
}

/// The hashing and writing threads of one partial file. Dropping it waits for every byte
/// copied in to be written ([`IN_FLIGHT`] bytes and the batch being filled, plus what a
/// write cut short had copied in), so the file is settled afterwards.
pub(crate) struct Sink {
    tx: Option<mpsc::UnboundedSender<ToHasher>>,
    budget: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
    written: Option<Done>,
    /// Full batches not handed over yet (waiting for room), oldest first.
    ready: VecDeque<Batch>,
    /// The batch being filled.
    fill: Batch,
    batches: Arc<Batches>,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the file writer stopped")
}

impl Sink {
    /// Write to `file` from byte `len` on (its file position is not used); `hashed` is
    /// the hash of those `len` bytes, and `to_come` how many more the file should get.
    /// A file whose rest fits in what may be in flight ([`ONE_THREAD_MAX`]) is hashed and
    /// written by one thread, a larger one by two.
    pub(crate) fn start(
        pool: &Pool,
        batches: &Arc<Batches>,
        file: File,
        len: u64,
        hashed: Sha256,
        to_come: u64,
    ) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let back = batches.clone();
        // Threads kept from an earlier file where some are idle (`writer_pool`).
        let written = if to_come <= ONE_THREAD_MAX {
            pool.run("sct-connect-file", move || {
                hash_and_write(hashed, rx, Writer::new(file, len, &flag, &back));
            })?
        } else {
            // The writer first: the hasher ends when the sink does, and the writer after it.
            let (to_writer, writer_rx) = mpsc::unbounded_channel();
            let written = pool.run("sct-connect-write", move || {
                write_gathered(Writer::new(file, len, &flag, &back), writer_rx)
            })?;
            pool.run("sct-connect-hash", move || {
                hash(hashed, rx, |cmd| to_writer.send(cmd).is_ok())
            })?;
            written
        };
        Ok(Sink::with(tx, failed, written, batches))
    }

    /// The sink whose threads take `tx`'s commands, report a failed write in `failed`, and
    /// signal `written` when they end.
    fn with(
        tx: mpsc::UnboundedSender<ToHasher>,
        failed: Arc<AtomicBool>,
        written: Done,
        batches: &Arc<Batches>,
    ) -> Sink {
        Sink {
            tx: Some(tx),
            budget: Arc::new(Semaphore::new(IN_FLIGHT)),
            failed,
            written: Some(written),
            ready: VecDeque::new(),
            fill: Batch::empty(),
            batches: batches.clone(),
        }
    }

    /// Run `prepare` on the thread that would write the file: where it gives back a file
    /// (an empty one, to be written from its first byte, for a download of at most
    /// [`ONE_THREAD_MAX`] bytes), that thread goes on as the file's sink and the sink is
    /// returned with `prepare`'s value; otherwise the thread is done and there is no sink.
    /// For a pack of many small files this saves each file a hand-off to the blocking
    /// pool (preparing there, then starting a sink).
    pub(crate) async fn start_prepared<T: Send + 'static>(
        pool: &Pool,
        batches: &Arc<Batches>,
        prepare: impl FnOnce() -> (T, Option<File>) + Send + 'static,
    ) -> std::io::Result<(T, Option<Sink>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let back = batches.clone();
        let (prepared, was_prepared) = oneshot::channel();
        let written = pool.run("sct-connect-file", move || {
            let (value, file) = prepare();
            let Some(file) = file else {
                let _ = prepared.send((value, false));
                return;
            };
            let _ = prepared.send((value, true));
            hash_and_write(Sha256::new(), rx, Writer::new(file, 0, &flag, &back));
        })?;
        let (value, sinking) = was_prepared.await.map_err(|_| gone())?;
        Ok((
            value,
            sinking.then(|| Sink::with(tx, failed, written, batches)),
        ))
    }

    /// Whether a download of `to_come` more bytes can be prepared by its sink's thread
    /// ([`Sink::start_prepared`]).
    pub(crate) fn prepares_for(to_come: u64) -> bool {
        to_come <= ONE_THREAD_MAX
    }

    fn send(&self, cmd: ToHasher) -> std::io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(gone)
    }

    /// Copy `data` into the current batch and let it go, then hand full batches over;
    /// waits while [`IN_FLIGHT`] bytes are pending. A write that failed earlier is
    /// returned here (and by every later `drain`).
    ///
    /// `data` is dropped before any wait, so that hyper can reuse its receive buffer for
    /// its next read (see the module's comment). Copied bytes are the sink's from then on:
    /// if this future is dropped while it waits, they are still handed over, in order,
    /// by the next call or when the sink is dropped.
    pub(crate) async fn write(&mut self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return self.drain(false).await.map(drop);
        }
        let mut rest = data.as_ref();
        while !rest.is_empty() {
            if self.fill.capacity() == 0 {
                self.fill = self.batches.take();
            }
            let n = rest.len().min(BATCH - self.fill.len());
            self.fill.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.fill.len() == BATCH {
                self.ready.push_back(std::mem::take(&mut self.fill));
            }
        }
        drop(data);
        self.send_ready().await
    }

    /// Hand over the full batches, each once there is room for it.
    async fn send_ready(&mut self) -> std::io::Result<()> {
        while let Some(len) = self.ready.front().map(|b| b.len()) {
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(len as u32)
                .await
                .map_err(|_| gone())?;
            // Taken only now: a wait cut short leaves the batch where it was.
            let batch = self.ready.pop_front().expect("a batch is ready");
            self.send(ToHasher::Data(batch, Some(permit)))?;
        }
        Ok(())
    }

    /// Hand over every byte copied in, the batch being filled included.
    async fn hand_over(&mut self) -> std::io::Result<()> {
        if !self.fill.is_empty() {
            self.ready.push_back(std::mem::take(&mut self.fill));
        }
        self.send_ready().await
    }

    /// Wait for every write handed over (and, with `sync`, flush the file's data to disk):
    /// the hash of every byte in the file.
    pub(crate) async fn drain(&mut self, sync: bool) -> std::io::Result<Sha256> {
        self.drain_to(sync, None).await.map(|(hashed, _)| hashed)
    }

    /// [`Sink::drain`], and then, if the file's hash is `place.sha256`, move it to
    /// `place.to` (the rename's outcome is the second value; `None` where the hash
    /// differs).
    pub(crate) async fn drain_and_place(
        &mut self,
        sync: bool,
        place: Place,
    ) -> std::io::Result<Drained> {
        self.drain_to(sync, Some(place)).await
    }

    async fn drain_to(&mut self, sync: bool, place: Option<Place>) -> std::io::Result<Drained> {
        self.hand_over().await?;
        let (reply, rx) = oneshot::channel();
        self.send(ToHasher::Drain(sync, place, reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Cut the file to `len` bytes and go on writing from there; `hashed` is the hash of
    /// those `len` bytes.
    pub(crate) async fn reset(&mut self, len: u64, hashed: Sha256) -> std::io::Result<()> {
        self.hand_over().await?;
        let (reply, rx) = oneshot::channel();
        self.send(ToHasher::Reset(len, Box::new(hashed), reply))?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // What was copied in is handed over, in order (without waiting for the budget:
        // nothing comes after it).
        if !self.fill.is_empty() {
            self.ready.push_back(std::mem::take(&mut self.fill));
        }
        while let Some(batch) = self.ready.pop_front() {
            let _ = self.send(ToHasher::Data(batch, None));
        }
        self.tx = None;
        if let Some(written) = self.written.take() {
            written.wait();
        }
    }
}

/// The hashing thread: hashes each batch (from `hasher`'s state on) and passes it on to
/// the writer (false: the writer has gone). Ends when the sink is dropped (or the writer
/// has gone), which ends the writer after what was passed on.
fn hash(
    mut hasher: Sha256,
    mut rx: mpsc::UnboundedReceiver<ToHasher>,
    mut pass: impl FnMut(ToWriter) -> bool,
) {
    while let Some(cmd) = rx.blocking_recv() {
        let passed = match cmd {
            ToHasher::Data(batch, permit) => {
                hasher.update(&batch);
                pass(ToWriter::Data(batch, permit))
            }
            ToHasher::Reset(len, hashed, reply) => {
                hasher = *hashed;
                pass(ToWriter::Reset(len, reply))
            }
            ToHasher::Drain(sync, place, reply) => {
                let (written, rx) = oneshot::channel();
                let passed = pass(ToWriter::Drain(sync, written));
                let r = rx.blocking_recv().unwrap_or_else(|_| Err(gone()));
                let r = r.map(|()| {
                    let placed = place.and_then(|p| p.apply(&hasher));
                    (hasher.clone(), placed)
                });
                // A file moved into place is done: nothing more comes, so the thread
                // ends now instead of sleeping until the sink is dropped and being woken
                // for that (whose drop then rarely waits). 1,000 files of 1 MiB, alternating
                // runs, medians of 11: 1.354 -> 1.305 s, CPU 1.68 -> 1.61 s; context
                // switches for 1,000 files of 4 KiB 13,000 -> 10,000.
                let placed = matches!(r, Ok((_, Some(Ok(())))));
                let _ = reply.send(r);
                passed && !placed
            }
        };
        if !passed {
            return;
        }
    }
}

/// The one thread of a small file: hashes each batch, then writes it.
fn hash_and_write(hashed: Sha256, rx: mpsc::UnboundedReceiver<ToHasher>, mut writer: Writer) {
    hash(hashed, rx, |cmd| {
        writer.handle(cmd);
        true
    });
    writer.finish();
}

/// The writing thread of a large file: each batch is written together with those already
/// waiting behind it (up to [`GATHER`]). Ends when the hasher has gone.
fn write_gathered(mut writer: Writer, mut rx: mpsc::UnboundedReceiver<ToWriter>) {
    let mut next = None;
    while let Some(cmd) = next.take().or_else(|| rx.blocking_recv()) {
        let ToWriter::Data(batch, permit) = cmd else {
            writer.handle(cmd);
            continue;
        };
        let mut group = vec![(batch, permit)];
        while group.len() < GATHER {
            match rx.try_recv() {
                Ok(ToWriter::Data(batch, permit)) => group.push((batch, permit)),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        writer.write_group(group);
    }
    writer.finish();
}

/// The writing side: the file, and the first write error (it stays until a reset).
struct Writer<'a> {
    out: OutFile,
    error: Option<std::io::Error>,
    failed: &'a AtomicBool,
    batches: &'a Batches,
}

impl<'a> Writer<'a> {
    fn new(file: File, len: u64, failed: &'a AtomicBool, batches: &'a Batches) -> Self {
        Writer {
            out: OutFile::new(file, len),
            error: None,
            failed,
            batches,
        }
    }

    /// Batches in file order, written together (see [`OutFile::write_parts`]), then kept
    /// for reuse and their room in flight given back.
    fn write_group(&mut self, group: Vec<(Batch, Option<OwnedSemaphorePermit>)>) {
        if self.error.is_none() {
            let parts: Vec<&[u8]> = group.iter().map(|(b, _)| &b[..]).collect();
            if let Err(e) = self.out.write_parts(&parts) {
                self.error = Some(e);
                self.failed.store(true, Ordering::Release);
            }
        }
        for (batch, permit) in group {
            self.batches.give_back(batch);
            drop(permit);
        }
    }

    fn handle(&mut self, cmd: ToWriter) {
        match cmd {
            ToWriter::Data(batch, permit) => self.write_group(vec![(batch, permit)]),
            ToWriter::Reset(len, reply) => {
                let r = self.out.reset(len);
                self.error = None;
                self.failed.store(false, Ordering::Release);
                let _ = reply.send(r);
            }
            ToWriter::Drain(sync, reply) => {
                // Staged bytes are written now: a failure here is the file's write error
                // like any other (it stays until a reset).
                if self.error.is_none() {
                    if let Err(e) = self.out.flush() {
                        self.error = Some(e);
                        self.failed.store(true, Ordering::Release);
                    }
                }
                let r = match &self.error {
                    Some(e) => Err(copy_error(e)),
                    None if sync => self.out.file().sync_all(),
                    None => Ok(()),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Nothing more comes: what is still staged goes to the file, so it is settled
    /// afterwards (an error here has nobody left to tell; the next run re-checks the
    /// partial file).
    fn finish(mut self) {
        if self.error.is_none() {
            let _ = self.out.flush();
        }
    }
}

/// The same error again (it stays until a reset): the OS code is kept, so a full disk is
/// still reported as one.
fn copy_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use crate::fsutil::test_support::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn hex_of(hasher: Sha256) -> String {
        hex::encode(hasher.finalize())
    }

    /// An empty partial file in a folder of its own.
    fn new_partial() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sct-partial");
        let file = File::create(&path).unwrap();
        (dir, path, file)
    }

    /// Chunks of every size (empty, smaller than a batch, larger than all that may be in
    /// flight) are written in order and hashed; a reset keeps the prefix and its hash, and
    /// writing goes on after it.
    #[test]
    fn writes_and_hashes_in_order_and_resets() {
        // Two threads (a large file), and one (a file that fits in flight: given more).
        for to_come in [u64::MAX, 0] {
            writes_and_hashes_in_order_and_resets_with(to_come);
        }
    }

    fn writes_and_hashes_in_order_and_resets_with(to_come: u64) {
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let mut sink = Sink::start(&pool, &batches, file, 0, Sha256::new(), to_come).unwrap();
            let mut all = Vec::new();
            for i in 0..200u32 {
                let chunk: Vec<u8> = (0..(i * 997 % 70_000)).map(|b| (b ^ i) as u8).collect();
                all.extend_from_slice(&chunk);
                sink.write(&chunk).await.unwrap();
            }
            let big: Vec<u8> = (0..3 * IN_FLIGHT + 123).map(|b| (b % 251) as u8).collect();
            all.extend_from_slice(&big);
            sink.write(&big).await.unwrap();
            assert!(all.len() > 4 * IN_FLIGHT);
            let hashed = sink.drain(true).await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), all);
            assert_eq!(hex_of(hashed), sha(&all));

            sink.reset(10, Sha256::new_with_prefix(&all[..10]))
                .await
                .unwrap();
            sink.write(b"tail").await.unwrap();
            let hashed = sink.drain(false).await.unwrap();
            let mut expect = all[..10].to_vec();
            expect.extend_from_slice(b"tail");
            assert_eq!(std::fs::read(&path).unwrap(), expect);
            assert_eq!(hex_of(hashed), sha(&expect));
        });
        // Batch buffers came back for the next file, no more than are kept.
        let spare = batches.kept();
        assert!((1..=MAX_SPARE).contains(&spare), "{spare}");
    }

    /// A drained file is moved to its final name only when its hash is the one given;
    /// otherwise it stays where it is, nothing appears at the final name, and the sink
    /// goes on. Once the file is in place its threads end without waiting for the sink
    /// to be dropped. One thread (a small file) and two (a large one).
    #[test]
    fn a_file_is_placed_only_when_its_hash_matches() {
        for to_come in [5, u64::MAX] {
            let (dir, path, file) = new_partial();
            let to = dir.path().join("f");
            let (pool, batches) = (Pool::new(), batches());
            let place = |sha256: String| Place {
                from: path.clone(),
                to: to.clone(),
                sha256,
            };
            let ended = |sink: &Sink, wait| sink.written.as_ref().unwrap().ran_within(wait);
            runtime().block_on(async {
                let mut sink =
                    Sink::start(&pool, &batches, file, 0, Sha256::new(), to_come).unwrap();
                sink.write(b"hel").await.unwrap();
                let (hashed, placed) = sink
                    .drain_and_place(false, place(sha(b"other")))
                    .await
                    .unwrap();
                assert_eq!(hex_of(hashed), sha(b"hel"));
                assert!(placed.is_none(), "a file with the wrong hash was moved");
                assert!(path.exists() && !to.exists());
                let wait = std::time::Duration::from_millis(200);
                assert!(
                    !ended(&sink, wait),
                    "the sink stopped with its file not placed"
                );
                sink.write(b"lo").await.unwrap();
                let (_, placed) = sink
                    .drain_and_place(true, place(sha(b"hello")))
                    .await
                    .unwrap();
                assert!(matches!(placed, Some(Ok(()))), "{placed:?}");
                let wait = std::time::Duration::from_secs(10);
                assert!(
                    ended(&sink, wait),
                    "the sink's threads outlived the placed file"
                );
            });
            assert!(!path.exists());
            assert_eq!(std::fs::read(&to).unwrap(), b"hello");
        }
    }

    /// A download prepared by its sink's thread: with a file, that thread is its sink
    /// (the bytes written from the file's first, hashed); without one, there is no sink.
    #[test]
    fn a_prepared_file_is_sunk_by_the_thread_that_prepared_it() {
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let (value, sink) =
                Sink::start_prepared(&pool, &batches, move || ("opened", Some(file)))
                    .await
                    .unwrap();
            assert_eq!(value, "opened");
            let mut sink = sink.expect("a sink for the prepared file");
            sink.write(b"prepared").await.unwrap();
            assert_eq!(hex_of(sink.drain(true).await.unwrap()), sha(b"prepared"));
            assert_eq!(std::fs::read(&path).unwrap(), b"prepared");
            drop(sink);

            let (value, sink) = Sink::start_prepared(&pool, &batches, || (7, None))
                .await
                .unwrap();
            assert_eq!(value, 7);
            assert!(sink.is_none(), "a sink without a file");
        });
    }

    /// Dropping the sink writes what was copied in but not yet handed over.
    #[test]
    fn dropping_writes_what_was_copied_in() {
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let mut sink = Sink::start(&pool, &batches, file, 0, Sha256::new(), 17).unwrap();
            sink.write(b"less than a batch").await.unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), b"less than a batch");
    }

    /// A write whose future is dropped while it waits for room (a download cut short)
    /// loses nothing it copied in: the sink hands the rest over, in order, when dropped.
    #[test]
    fn a_write_dropped_while_waiting_loses_nothing() {
        use futures_util::FutureExt;
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        // Far more than may be in flight: the write must wait after copying it all.
        let all: Vec<u8> = (0..32 * IN_FLIGHT).map(|b| (b % 253) as u8).collect();
        runtime().block_on(async {
            let to_come = all.len() as u64;
            let mut sink = Sink::start(&pool, &batches, file, 0, Sha256::new(), to_come).unwrap();
            assert!(
                sink.write(&all[..]).now_or_never().is_none(),
                "it did not wait"
            );
        });
        assert!(
            std::fs::read(&path).unwrap() == all,
            "bytes lost or out of order"
        );
    }

    /// A write that fails (here: the file was opened read-only) is reported, with its OS
    /// error, until a reset; nothing after it is written.
    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let mut sink = Sink::start(&pool, &batches, file, 0, Sha256::new(), 3).unwrap();
            sink.write(b"abc").await.unwrap();
            let e = sink.drain(false).await.unwrap_err();
            assert!(e.raw_os_error().is_some(), "{e}");
            assert!(sink.write(b"def").await.is_err());
            assert!(sink.drain(false).await.is_err());
        });
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    /// On Linux the bulk of a file is written past the page cache (`O_DIRECT`), from an
    /// unaligned start (a resumed file), across drains at unaligned lengths and a reset,
    /// and every byte arrives in order.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_writes_bypass_the_page_cache_and_every_byte_arrives() {
        let dir = disk_dir();
        let path = dir.path().join("f.sct-partial");
        std::fs::write(&path, vec![b'p'; 1000]).unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(1000)).unwrap();
        let direct = takes_o_direct(dir.path());
        let (pool, batches) = (Pool::new(), batches());
        let mut all = vec![b'p'; 1000];
        runtime().block_on(async {
            // Started with the hash of the 1,000 bytes already there (no reset).
            let hashed = Sha256::new_with_prefix(&all);
            let mut sink = Sink::start(&pool, &batches, file, 1000, hashed, u64::MAX).unwrap();
            for i in 0..300u32 {
                let c = chunk(i);
                all.extend_from_slice(&c);
                sink.write(&c).await.unwrap();
                if i == 100 {
                    // A drain in the middle (a connection that dropped) settles the file
                    // at an unaligned length; writing goes on from there.
                    let hashed = sink.drain(false).await.unwrap();
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), all.len() as u64);
                    assert_eq!(hex_of(hashed), sha(&all));
                }
            }
            let hashed = sink.drain(true).await.unwrap();
            assert_eq!(hex_of(hashed), sha(&all));
            let total = all.len();
            assert!(total > 10 << 20, "{total}");
            let cached = cached_bytes(&path);
            if direct {
                // A few unaligned edges: the first bytes after the reset and the drain.
                assert!(
                    cached < 64 << 10,
                    "{cached} of {total} bytes went through the page cache"
                );
            } else {
                eprintln!("this file system refuses O_DIRECT: only the content is checked");
            }
            assert_eq!(std::fs::read(&path).unwrap(), all);

            // Cut back to an unaligned length and go on from there.
            all.truncate(5_000_001);
            sink.reset(5_000_001, Sha256::new_with_prefix(&all))
                .await
                .unwrap();
            for i in 300..400u32 {
                let c = chunk(i);
                all.extend_from_slice(&c);
                sink.write(&c).await.unwrap();
            }
        });
        // Dropping the sink writes what was still staged.
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }
}
