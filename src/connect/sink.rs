//! A download's partial file, written on a thread of its own (one of `writer_pool`'s).
//!
//! Why: profiling a 1 GiB download (`perf record`) showed the write into the page cache
//! (`copy_folio_from_iter_atomic`) as the largest cost, ahead of SHA-256, and
//! `tokio::fs::File` added a copy of every chunk and a blocking-pool hand-off per write.
//! Here the receiving task hashes each chunk and hands it over (no copy: `Bytes` is
//! reference-counted), and this one thread writes it: receiving plus hashing on one core,
//! writing on the other, which balances the two best on two cores (hashing here too made
//! this thread the slower one). At most [`IN_FLIGHT`] bytes wait between the two, so
//! memory stays flat however large the file. The bytes hashed are the bytes written: the
//! same immutable buffer.
//!
//! The thread writes through [`OutFile`]: on Linux a large file's bytes go to the disk
//! with `O_DIRECT` past the page cache, otherwise the writeback of what was written is
//! started early, so the flush before the pack's manifest (one `syncfs`) finds little left
//! to write instead of the whole pack. Durability is unchanged: that flush still comes.

use super::writer_pool::{Done, Pool};
use crate::fsutil::OutFile;
use bytes::Bytes;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes received but not yet written, per file (4 downloads at once: 8 MiB at most).
const IN_FLIGHT: usize = 2 << 20;

enum Cmd {
    Data(Bytes, OwnedSemaphorePermit),
    /// Truncate to `len` and go on writing from there.
    Reset(u64, oneshot::Sender<std::io::Result<()>>),
    /// Everything before it is written (and flushed to disk when `sync`), or the first
    /// write error.
    Drain(bool, oneshot::Sender<std::io::Result<()>>),
}

/// The writing thread of one partial file. Dropping it waits for the writes
/// already handed over (at most [`IN_FLIGHT`] bytes), so the file is settled afterwards.
pub(crate) struct Sink {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    budget: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
    done: Option<Done>,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the file writer stopped")
}

impl Sink {
    /// Write to `file` from byte `len` on (its file position is not used).
    pub(crate) fn start(pool: &Pool, file: File, len: u64) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        // A thread kept from an earlier file where one is idle (`writer_pool`).
        let done = pool.run("sct-connect-write", move || run(file, len, rx, &flag))?;
        Ok(Sink {
            tx: Some(tx),
            budget: Arc::new(Semaphore::new(IN_FLIGHT)),
            failed,
            done: Some(done),
        })
    }

    fn send(&self, cmd: Cmd) -> std::io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(gone)
    }

    /// Hand `data` over to be written; waits while [`IN_FLIGHT`] bytes are pending. A
    /// write that failed earlier is returned here (and by every later `drain`).
    pub(crate) async fn write(&self, data: Bytes) -> std::io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return self.drain(false).await;
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

    /// Wait for every write handed over (and, with `sync`, flush the file's data to disk).
    pub(crate) async fn drain(&self, sync: bool) -> std::io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Drain(sync, reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Cut the file to `len` bytes and go on writing from there.
    pub(crate) async fn reset(&self, len: u64) -> std::io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Reset(len, reply))?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(done) = self.done.take() {
            done.wait();
        }
    }
}

fn run(file: File, len: u64, mut rx: mpsc::UnboundedReceiver<Cmd>, failed: &AtomicBool) {
    let mut out = OutFile::new(file, len);
    let mut error: Option<std::io::Error> = None;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Data(data, permit) => {
                if error.is_none() {
                    if let Err(e) = out.write(&data) {
                        error = Some(e);
                        failed.store(true, Ordering::Release);
                    }
                }
                drop(permit);
            }
            Cmd::Reset(to, reply) => {
                let r = out.reset(to);
                error = None;
                failed.store(false, Ordering::Release);
                let _ = reply.send(r);
            }
            Cmd::Drain(sync, reply) => {
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

    /// Chunks are written in order, many more than fit in flight at once; a reset keeps
    /// the prefix and writing goes on after it.
    #[test]
    fn writes_in_order_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sct-partial");
        let file = File::create(&path).unwrap();
        let pool = Pool::new();
        runtime().block_on(async {
            let sink = Sink::start(&pool, file, 0).unwrap();
            let mut all = Vec::new();
            for i in 0..200u32 {
                let chunk: Vec<u8> = (0..(i * 997 % 70_000)).map(|b| (b ^ i) as u8).collect();
                all.extend_from_slice(&chunk);
                sink.write(Bytes::from(chunk)).await.unwrap();
            }
            assert!(all.len() > 2 * IN_FLIGHT);
            sink.drain(true).await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), all);

            sink.reset(10).await.unwrap();
            sink.write(Bytes::from_static(b"tail")).await.unwrap();
            sink.drain(false).await.unwrap();
            let mut expect = all[..10].to_vec();
            expect.extend_from_slice(b"tail");
            assert_eq!(std::fs::read(&path).unwrap(), expect);
        });
    }

    /// A write that fails (here: the file was opened read-only) is reported, with its OS
    /// error, until a reset; nothing after it is written.
    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        let pool = Pool::new();
        runtime().block_on(async {
            let sink = Sink::start(&pool, file, 0).unwrap();
            sink.write(Bytes::from_static(b"abc")).await.unwrap();
            let e = sink.drain(false).await.unwrap_err();
            assert!(e.raw_os_error().is_some(), "{e}");
            assert!(sink.write(Bytes::from_static(b"def")).await.is_err());
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
        let pool = Pool::new();
        let mut all = vec![b'p'; 1000];
        runtime().block_on(async {
            let sink = Sink::start(&pool, file, 1000).unwrap();
            for i in 0..300u32 {
                let c = chunk(i);
                all.extend_from_slice(&c);
                sink.write(Bytes::from(c)).await.unwrap();
                if i == 100 {
                    // A drain in the middle (a connection that dropped) settles the file
                    // at an unaligned length; writing goes on from there.
                    sink.drain(false).await.unwrap();
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), all.len() as u64);
                }
            }
            sink.drain(true).await.unwrap();
            let total = all.len();
            assert!(total > 10 << 20, "{total}");
            let cached = cached_bytes(&path);
            if direct {
                // The first DIRECT_AFTER bytes and a few unaligned edges.
                assert!(
                    cached < 3 << 20,
                    "{cached} of {total} bytes went through the page cache"
                );
            } else {
                eprintln!("this file system refuses O_DIRECT: only the content is checked");
            }
            assert_eq!(std::fs::read(&path).unwrap(), all);

            // Cut back to an unaligned length and go on from there.
            sink.reset(5_000_001).await.unwrap();
            all.truncate(5_000_001);
            for i in 300..400u32 {
                let c = chunk(i);
                all.extend_from_slice(&c);
                sink.write(Bytes::from(c)).await.unwrap();
            }
        });
        // Dropping the sink writes what was still staged.
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }
}
