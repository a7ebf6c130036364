//! A download's partial file, hashed and written on a thread of its own.
//!
//! Why: profiling a 1 GiB download (`perf record`) showed the receiving thread (copying
//! from the socket, then SHA-256) as the busier of the two cores and the write into the
//! page cache (`copy_folio_from_iter_atomic`, then the kernel's writeback) as the largest
//! cost on the other. Here the receiving task only hands each chunk over (no copy:
//! `Bytes` is reference-counted), and this thread copies it into an aligned block, hashes
//! the copy (still in this core's cache) and writes full blocks with direct I/O
//! (`O_DIRECT`: from the block to the device, no page cache, no writeback to do later).
//! The bytes hashed are the bytes written: the same block. At most [`IN_FLIGHT`] bytes wait
//! between the two threads, and each download holds one block of [`DIRECT_BLOCK`] bytes
//! (kept for reuse by the next download), so memory stays flat however large the file.
//!
//! Direct writes must start, end and sit in memory at multiples of
//! [`platform::DIRECT_IO_ALIGN`]. So a block always starts at an aligned file offset;
//! resuming at an unaligned length reads the bytes since the last aligned offset back
//! into the block; and what is not a whole aligned unit at a pause (the file's last few
//! KiB, or before a retry) is written through the page cache and kept in the block, to be
//! written again, directly, when the block fills.
//!
//! Where direct I/O is refused (Windows; on Linux, file systems that reject `O_DIRECT`
//! when it is set or at the first write: FUSE, some network file systems, tmpfs before
//! 6.6) the chunks are written through the page cache as they come, and the thread asks
//! the kernel to start writing them every [`WRITEBACK_EVERY`] bytes
//! (`platform::start_writeback`), so the flush before the pack's manifest (one `syncfs`)
//! finds little left to do. Durability is the same either way: nothing here is relied
//! on; that flush still comes (and covers the file's size and extents, which a direct
//! write leaves to it too).
//!
//! [`platform::DIRECT_IO_ALIGN`]: crate::platform::DIRECT_IO_ALIGN

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes received but not yet taken by the writer, per file (4 downloads at once: 8 MiB
/// at most).
const IN_FLIGHT: usize = 2 << 20;
/// Page-cache path: start the writeback of each this many bytes written.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// Size of one direct write. Each is synchronous (the thread waits for the device), so
/// blocks must be large: measured with `dd` on this project's disk, 256 KiB blocks took
/// 1.7 times as long as 1 MiB ones.
const DIRECT_BLOCK: usize = 2 << 20;
const ALIGN: usize = crate::platform::DIRECT_IO_ALIGN;
/// Blocks kept for the next downloads (4 run at once by default), so a pack of many small
/// files does not map, fault in and unmap a fresh block per file.
const SPARE_BLOCKS: usize = 8;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Whether a sink tries direct I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Where the OS and file system take it (the default).
    Try,
    /// Always through the page cache.
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
    /// Tests: `O_DIRECT` is accepted when set but every direct write is refused with
    /// `EINVAL`, as some file systems do.
    #[cfg(test)]
    RefusedAtWrite,
}

/// [`DIRECT_BLOCK`] bytes at an address aligned to [`ALIGN`], taken from (and given back
/// to) the spare blocks.
struct Block {
    raw: Vec<u8>,
    at: usize,
}

impl Block {
    fn take() -> Block {
        let raw = SPARE
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            // Zeroed by the kernel as pages are first touched: nothing is resident yet.
            .unwrap_or_else(|| vec![0u8; DIRECT_BLOCK + ALIGN]);
        let at = raw.as_ptr().align_offset(ALIGN);
        Block { raw, at }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + DIRECT_BLOCK]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        if let Ok(mut spare) = SPARE.lock() {
            if spare.len() < SPARE_BLOCKS {
                spare.push(raw);
            }
        }
    }
}

enum Cmd {
    Data(Bytes, OwnedSemaphorePermit),
    /// Truncate to `len`, whose bytes hash to the given state, and go on from there.
    Reset(u64, Box<Sha256>, oneshot::Sender<std::io::Result<()>>),
    /// Everything before it is written (and flushed to disk when `sync`): the hash of
    /// every byte so far, or the first write error.
    Drain(bool, oneshot::Sender<std::io::Result<Sha256>>),
}

/// The hashing-and-writing thread of one partial file. Dropping it waits for the writes
/// already handed over (at most [`IN_FLIGHT`] bytes), so the file is settled afterwards.
pub(crate) struct Sink {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    budget: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
    direct: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the file writer stopped")
}

impl Sink {
    /// Write to `file` (opened for reading and writing) from byte 0 with an empty hash;
    /// [`Sink::reset`] continues an existing partial file instead.
    pub(crate) fn start(file: File) -> std::io::Result<Sink> {
        Sink::start_with(file, Direct::Try)
    }

    pub(crate) fn start_with(file: File, direct: Direct) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let direct_flag = Arc::new(AtomicBool::new(false));
        let (flag, on) = (failed.clone(), direct_flag.clone());
        let thread = std::thread::Builder::new()
            .name("sct-connect-write".into())
            .spawn(move || Writer::new(file, direct, flag, on).run(rx))?;
        Ok(Sink {
            tx: Some(tx),
            budget: Arc::new(Semaphore::new(IN_FLIGHT)),
            failed,
            direct: direct_flag,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Cmd) -> std::io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(gone)
    }

    /// Hand `data` over to be hashed and written; waits while [`IN_FLIGHT`] bytes are
    /// pending. A write that failed earlier is returned here (and by every later `drain`).
    pub(crate) async fn write(&self, data: Bytes) -> std::io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return self.drain(false).await.map(|_| ());
        }
        let want = data.len().clamp(1, IN_FLIGHT) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| gone())?;
        self.send(Cmd::Data(data, permit))
    }

    /// Wait for every write handed over (and, with `sync`, flush the file's data to
    /// disk); the hash of every byte in the file.
    pub(crate) async fn drain(&self, sync: bool) -> std::io::Result<Sha256> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Drain(sync, reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Cut the file to `len` bytes, whose hash is `hashed`, and go on writing from there.
    pub(crate) async fn reset(&self, len: u64, hashed: Sha256) -> std::io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Reset(len, Box::new(hashed), reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Whether the file is being written with direct I/O (false after a fallback).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn writes_directly(&self) -> bool {
        self.direct.load(Ordering::Acquire)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    file: File,
    hasher: Sha256,
    /// Bytes in the file so far, counting those still in `block`.
    len: u64,
    /// Direct I/O: the block being filled. It holds the file's bytes from `block_start`
    /// (aligned) to `len`. `None`: writing through the page cache, at the file position.
    block: Option<Block>,
    block_start: u64,
    /// Page-cache path: where the writeback started last.
    flushed_to: u64,
    error: Option<std::io::Error>,
    failed: Arc<AtomicBool>,
    direct: Arc<AtomicBool>,
    #[cfg(test)]
    refuse_direct_writes: bool,
}

/// `EINVAL` (Unix) or `ERROR_INVALID_PARAMETER` (Windows): the file system refused the
/// direct write (alignment, or no direct I/O at all).
fn refused(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput
}

impl Writer {
    fn new(file: File, direct: Direct, failed: Arc<AtomicBool>, on: Arc<AtomicBool>) -> Writer {
        let block = (direct != Direct::Off && crate::platform::set_direct_io(&file, true).is_ok())
            .then(Block::take);
        on.store(block.is_some(), Ordering::Release);
        Writer {
            file,
            hasher: Sha256::new(),
            len: 0,
            block,
            block_start: 0,
            flushed_to: 0,
            error: None,
            failed,
            direct: on,
            #[cfg(test)]
            refuse_direct_writes: direct == Direct::RefusedAtWrite,
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Data(data, permit) => {
                    if self.error.is_none() {
                        if let Err(e) = self.put(&data) {
                            self.error = Some(e);
                            self.failed.store(true, Ordering::Release);
                        }
                    }
                    drop(permit);
                }
                Cmd::Reset(to, hashed, reply) => {
                    self.error = None;
                    self.failed.store(false, Ordering::Release);
                    let _ = reply.send(self.reset(to, *hashed));
                }
                Cmd::Drain(sync, reply) => {
                    let r = match self.error.as_ref() {
                        Some(e) => Err(copy_error(e)),
                        None => self.drain(sync).map(|()| self.hasher.clone()),
                    };
                    if let Err(e) = &r {
                        if self.error.is_none() {
                            self.error = Some(copy_error(e));
                            self.failed.store(true, Ordering::Release);
                        }
                    }
                    let _ = reply.send(r);
                }
            }
        }
        // Dropped without a drain (cancelled, or a failure reported elsewhere): what is
        // in the block is written anyway, so a later run resumes from every byte hashed.
        if self.error.is_none() {
            let _ = self.write_block();
        }
    }

    /// Hash and write (or add to the block) `data`.
    fn put(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let Some(block) = self.block.as_mut() else {
                self.file.write_all(data)?;
                self.hasher.update(data);
                self.len += data.len() as u64;
                if self.len - self.flushed_to >= WRITEBACK_EVERY {
                    crate::platform::start_writeback(
                        &self.file,
                        self.flushed_to,
                        self.len - self.flushed_to,
                    );
                    self.flushed_to = self.len;
                }
                return Ok(());
            };
            let fill = (self.len - self.block_start) as usize;
            let n = data.len().min(DIRECT_BLOCK - fill);
            let copy = &mut block.bytes()[fill..fill + n];
            copy.copy_from_slice(&data[..n]);
            self.hasher.update(copy);
            self.len += n as u64;
            data = &data[n..];
            if fill + n == DIRECT_BLOCK {
                self.write_block()?;
            }
        }
        Ok(())
    }

    /// Write the block's bytes: the aligned part directly, the rest (less than one aligned
    /// unit: a pause at an unaligned length) through the page cache. That rest stays at
    /// the start of the block, which then starts at the last aligned offset.
    fn write_block(&mut self) -> std::io::Result<()> {
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        let fill = (self.len - self.block_start) as usize;
        let aligned = fill / ALIGN * ALIGN;
        if aligned > 0 {
            let r = direct_write(
                &mut self.file,
                &block.bytes()[..aligned],
                self.block_start,
                #[cfg(test)]
                self.refuse_direct_writes,
            );
            match r {
                Ok(()) => {}
                Err(e) if refused(&e) => return self.fall_back(),
                Err(e) => return Err(e),
            }
        }
        if fill > aligned {
            let tail = &block.bytes()[aligned..fill];
            crate::platform::set_direct_io(&self.file, false)?;
            self.file
                .seek(SeekFrom::Start(self.block_start + aligned as u64))?;
            self.file.write_all(tail)?;
            crate::platform::set_direct_io(&self.file, true)?;
        }
        block.bytes().copy_within(aligned..fill, 0);
        self.block_start += aligned as u64;
        Ok(())
    }

    /// Direct I/O refused at a write: write the block through the page cache and go on
    /// that way.
    fn fall_back(&mut self) -> std::io::Result<()> {
        let Some(mut block) = self.block.take() else {
            return Ok(());
        };
        self.direct.store(false, Ordering::Release);
        crate::platform::set_direct_io(&self.file, false)?;
        let fill = (self.len - self.block_start) as usize;
        self.file.seek(SeekFrom::Start(self.block_start))?;
        self.file.write_all(&block.bytes()[..fill])?;
        self.flushed_to = self.block_start;
        Ok(())
    }

    fn drain(&mut self, sync: bool) -> std::io::Result<()> {
        self.write_block()?;
        if self.block.is_none() && self.len > self.flushed_to {
            crate::platform::start_writeback(
                &self.file,
                self.flushed_to,
                self.len - self.flushed_to,
            );
            self.flushed_to = self.len;
        }
        if sync {
            self.file.sync_all()?;
        }
        Ok(())
    }

    fn reset(&mut self, to: u64, hashed: Sha256) -> std::io::Result<()> {
        // Bytes before `to` still in the block go to the file first; the rest is dropped.
        if self.block.is_some() && to > self.block_start {
            self.len = self.len.min(to);
            self.write_block()?;
        }
        self.file.set_len(to)?;
        self.len = to;
        self.hasher = hashed;
        self.flushed_to = to;
        match self.block.as_mut() {
            None => {
                self.file.seek(SeekFrom::Start(to))?;
            }
            Some(block) => {
                // The block starts at the last aligned offset: read back the bytes since.
                self.block_start = to / ALIGN as u64 * ALIGN as u64;
                let head = (to - self.block_start) as usize;
                if head > 0 {
                    crate::platform::set_direct_io(&self.file, false)?;
                    self.file.seek(SeekFrom::Start(self.block_start))?;
                    self.file.read_exact(&mut block.bytes()[..head])?;
                    crate::platform::set_direct_io(&self.file, true)?;
                }
            }
        }
        Ok(())
    }
}

/// One direct write of an aligned buffer at an aligned offset.
fn direct_write(
    file: &mut File,
    data: &[u8],
    at: u64,
    #[cfg(test)] refuse: bool,
) -> std::io::Result<()> {
    #[cfg(test)]
    if refuse {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    file.seek(SeekFrom::Start(at))?;
    file.write_all(data)
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

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn open_rw(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|b| (b.wrapping_mul(2_654_435_761) ^ seed) as u8)
            .collect()
    }

    fn hash(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn hex_of(h: Sha256) -> String {
        hex::encode(h.finalize())
    }

    /// Chunks of odd sizes, many more than fit in flight or in one block, are written in
    /// order and hashed; a reset keeps the prefix and writing goes on after it. In every
    /// mode, including a file system that refuses direct writes (the fallback).
    #[test]
    fn writes_in_order_and_resets() {
        for mode in [Direct::Try, Direct::Off, Direct::RefusedAtWrite] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.sct-partial");
            runtime().block_on(async {
                let sink = Sink::start_with(open_rw(&path), mode).unwrap();
                let mut all = Vec::new();
                for i in 0..200u32 {
                    let chunk = data((i * 997 % 70_000) as usize, i);
                    all.extend_from_slice(&chunk);
                    sink.write(Bytes::from(chunk)).await.unwrap();
                }
                assert!(all.len() > DIRECT_BLOCK + 2 * IN_FLIGHT);
                assert_eq!(hex_of(sink.drain(true).await.unwrap()), hash(&all));
                assert_eq!(std::fs::read(&path).unwrap(), all, "{mode:?}");
                if mode != Direct::Try {
                    assert!(!sink.writes_directly(), "{mode:?}");
                }

                sink.reset(10, Sha256::new_with_prefix(&all[..10]))
                    .await
                    .unwrap();
                sink.write(Bytes::from_static(b"tail")).await.unwrap();
                let mut expect = all[..10].to_vec();
                expect.extend_from_slice(b"tail");
                assert_eq!(hex_of(sink.drain(false).await.unwrap()), hash(&expect));
                assert_eq!(std::fs::read(&path).unwrap(), expect, "{mode:?}");
            });
        }
    }

    /// Direct I/O where the file system takes it (the build disk: ext4 or XFS). A file
    /// continued at an unaligned length (the bytes since the last 4 KiB boundary are read
    /// back into the block), paused at unaligned lengths (the tail goes through the page
    /// cache and is written again directly later), and ended with a tail shorter than a
    /// block: every byte and the hash come out right, and direct I/O stayed on.
    #[cfg(target_os = "linux")]
    #[test]
    fn direct_io_resumes_at_an_unaligned_length_and_writes_short_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sct-partial");
        let all = data(3 * DIRECT_BLOCK + 12_345, 7);
        let have = ALIGN * 5 + 1_000;
        std::fs::write(&path, &all[..have]).unwrap();
        runtime().block_on(async {
            let sink = Sink::start(open_rw(&path)).unwrap();
            if !sink.writes_directly() {
                eprintln!("skipped: this file system refuses O_DIRECT");
                return;
            }
            sink.reset(have as u64, Sha256::new_with_prefix(&all[..have]))
                .await
                .unwrap();
            let mut at = have;
            for (i, step) in [100, ALIGN, DIRECT_BLOCK, 3 * ALIGN + 17, 65_536]
                .iter()
                .cycle()
                .enumerate()
            {
                let end = (at + step).min(all.len());
                sink.write(Bytes::copy_from_slice(&all[at..end]))
                    .await
                    .unwrap();
                at = end;
                if i % 3 == 0 {
                    // A pause (as before a retry): what is there is on disk, hashed.
                    let h = sink.drain(false).await.unwrap();
                    assert_eq!(hex_of(h), hash(&all[..at]));
                    assert_eq!(std::fs::read(&path).unwrap(), &all[..at]);
                }
                if at == all.len() {
                    break;
                }
            }
            assert_eq!(hex_of(sink.drain(true).await.unwrap()), hash(&all));
            assert!(sink.writes_directly());
            // Back to an unaligned length and on again.
            let cut = DIRECT_BLOCK + 3;
            sink.reset(cut as u64, Sha256::new_with_prefix(&all[..cut]))
                .await
                .unwrap();
            sink.write(Bytes::copy_from_slice(&all[cut..]))
                .await
                .unwrap();
            assert_eq!(hex_of(sink.drain(false).await.unwrap()), hash(&all));
        });
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }

    /// A sink dropped without a drain (a cancelled download) still writes what it holds,
    /// so the next run resumes from every byte hashed.
    #[test]
    fn dropping_writes_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sct-partial");
        let all = data(DIRECT_BLOCK + ALIGN + 5, 3);
        runtime().block_on(async {
            let sink = Sink::start(open_rw(&path)).unwrap();
            sink.write(Bytes::copy_from_slice(&all)).await.unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }

    /// A write that fails (here: the file was opened read-only) is reported, with its OS
    /// error, until a reset; nothing after it is written.
    #[test]
    fn a_failed_write_is_reported() {
        for mode in [Direct::Try, Direct::Off] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ro");
            std::fs::write(&path, b"").unwrap();
            let file = File::open(&path).unwrap();
            runtime().block_on(async {
                let sink = Sink::start_with(file, mode).unwrap();
                sink.write(Bytes::from(data(DIRECT_BLOCK + 1, 1)))
                    .await
                    .unwrap();
                let e = sink.drain(false).await.unwrap_err();
                assert!(e.raw_os_error().is_some(), "{e}");
                assert!(sink.write(Bytes::from_static(b"def")).await.is_err());
                assert!(sink.drain(false).await.is_err());
            });
            assert_eq!(std::fs::read(&path).unwrap(), b"");
        }
    }
}
