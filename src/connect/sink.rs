//! A download's partial file, hashed and written by two threads of its own (from
//! `writer_pool`), so that the task receiving the body only copies it.
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
use crate::fsutil::{Batches, OutFile};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes received but not yet written, per file (4 downloads at once: 8 MiB at most).
const IN_FLIGHT: usize = 2 << 20;
/// Bytes per batch handed to the hashing thread.
const BATCH: usize = 512 << 10;
/// Empty batch buffers kept for reuse (as many as 4 downloads can have in flight, plus
/// the ones being filled).
const MAX_SPARE: usize = 4 * (IN_FLIGHT / BATCH + 1);

/// Empty batch buffers for the sinks of one Connect run.
pub(crate) fn batches() -> Arc<Batches> {
    Arc::new(Batches::new(BATCH, MAX_SPARE))
}

/// What the receiving task sends the hashing thread.
enum ToHasher {
    Data(Vec<u8>, Option<OwnedSemaphorePermit>),
    /// Truncate to `len` and go on from there; the hash of those `len` bytes.
    Reset(u64, Box<Sha256>, oneshot::Sender<std::io::Result<()>>),
    /// Everything before it is written (and flushed to disk when `sync`): the hash of
    /// the file, or the first write error.
    Drain(bool, oneshot::Sender<std::io::Result<Sha256>>),
}

/// What the hashing thread passes on to the writing thread.
enum ToWriter {
    Data(Vec<u8>, Option<OwnedSemaphorePermit>),
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
    ready: VecDeque<Vec<u8>>,
    /// The batch being filled.
    fill: Vec<u8>,
    batches: Arc<Batches>,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the file writer stopped")
}

impl Sink {
    /// Write to `file` from byte `len` on (its file position is not used). Call
    /// [`Sink::reset`] with the hash of those `len` bytes before writing.
    pub(crate) fn start(
        pool: &Pool,
        batches: &Arc<Batches>,
        file: File,
        len: u64,
    ) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (to_writer, writer_rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let back = batches.clone();
        // Threads kept from an earlier file where some are idle (`writer_pool`). The
        // writer first: the hasher ends when the sink does, and the writer after it.
        let written = pool.run("sct-connect-write", move || {
            write(file, len, writer_rx, &flag, &back)
        })?;
        pool.run("sct-connect-hash", move || hash(rx, to_writer))?;
        Ok(Sink {
            tx: Some(tx),
            budget: Arc::new(Semaphore::new(IN_FLIGHT)),
            failed,
            written: Some(written),
            ready: VecDeque::new(),
            fill: Vec::new(),
            batches: batches.clone(),
        })
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
        while let Some(len) = self.ready.front().map(Vec::len) {
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
        self.hand_over().await?;
        let (reply, rx) = oneshot::channel();
        self.send(ToHasher::Drain(sync, reply))?;
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

/// The hashing thread: hashes each batch and passes it on. Ends when the sink is dropped
/// (or the writer has gone), which ends the writer after what was passed on.
fn hash(mut rx: mpsc::UnboundedReceiver<ToHasher>, tx: mpsc::UnboundedSender<ToWriter>) {
    let mut hasher = Sha256::new();
    while let Some(cmd) = rx.blocking_recv() {
        let passed = match cmd {
            ToHasher::Data(batch, permit) => {
                hasher.update(&batch);
                tx.send(ToWriter::Data(batch, permit))
            }
            ToHasher::Reset(len, hashed, reply) => {
                hasher = *hashed;
                tx.send(ToWriter::Reset(len, reply))
            }
            ToHasher::Drain(sync, reply) => {
                let (written, rx) = oneshot::channel();
                let passed = tx.send(ToWriter::Drain(sync, written));
                let r = rx.blocking_recv().unwrap_or_else(|_| Err(gone()));
                let _ = reply.send(r.map(|()| hasher.clone()));
                passed
            }
        };
        if passed.is_err() {
            return;
        }
    }
}

/// The writing thread.
fn write(
    file: File,
    len: u64,
    mut rx: mpsc::UnboundedReceiver<ToWriter>,
    failed: &AtomicBool,
    batches: &Batches,
) {
    let mut out = OutFile::new(file, len);
    let mut error: Option<std::io::Error> = None;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            ToWriter::Data(batch, permit) => {
                if error.is_none() {
                    if let Err(e) = out.write(&batch) {
                        error = Some(e);
                        failed.store(true, Ordering::Release);
                    }
                }
                batches.give_back(batch);
                drop(permit);
            }
            ToWriter::Reset(len, reply) => {
                let r = out.reset(len);
                error = None;
                failed.store(false, Ordering::Release);
                let _ = reply.send(r);
            }
            ToWriter::Drain(sync, reply) => {
                // Staged bytes are written now: a failure here is the file's write error
                // like any other (it stays until a reset).
                if error.is_none() {
                    if let Err(e) = out.flush() {
                        error = Some(e);
                        failed.store(true, Ordering::Release);
                    }
                }
                let r = match &error {
                    Some(e) => Err(copy_error(e)),
                    None if sync => out.file().sync_all(),
                    None => Ok(()),
                };
                let _ = reply.send(r);
            }
        }
    }
    // Dropped: what is still staged goes to the file, so it is settled afterwards (an
    // error here has nobody left to tell; the next run re-checks the partial file).
    if error.is_none() {
        let _ = out.flush();
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
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let mut sink = Sink::start(&pool, &batches, file, 0).unwrap();
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

    /// Dropping the sink writes what was copied in but not yet handed over.
    #[test]
    fn dropping_writes_what_was_copied_in() {
        let (_dir, path, file) = new_partial();
        let (pool, batches) = (Pool::new(), batches());
        runtime().block_on(async {
            let mut sink = Sink::start(&pool, &batches, file, 0).unwrap();
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
            let mut sink = Sink::start(&pool, &batches, file, 0).unwrap();
            sink.reset(0, Sha256::new()).await.unwrap();
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
            let mut sink = Sink::start(&pool, &batches, file, 0).unwrap();
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
            let mut sink = Sink::start(&pool, &batches, file, 1000).unwrap();
            sink.reset(1000, Sha256::new_with_prefix(&all))
                .await
                .unwrap();
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
