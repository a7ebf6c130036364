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
//! The thread also asks the kernel to start writing what it wrote every
//! [`WRITEBACK_EVERY`] bytes (`platform::start_writeback`): the flush before the pack's
//! manifest (one `syncfs`) then finds little left to write instead of the whole pack.
//! Durability is unchanged: nothing here is relied on; that flush still comes.

use super::writer_pool::{Done, Pool};
use bytes::Bytes;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes received but not yet written, per file (4 downloads at once: 8 MiB at most).
const IN_FLIGHT: usize = 2 << 20;
/// Start the writeback of each this many bytes written.
const WRITEBACK_EVERY: u64 = 8 << 20;

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
    /// Write to `file` from byte `len` (where its file position must be).
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
    let mut out = Out::new(file, len);
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
                    None if sync => out.file.sync_all(),
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

/// The partial file and where the next byte goes.
///
/// On Linux, whole aligned stretches are written with `O_DIRECT` from a staging buffer,
/// past the page cache: on the development machine writing 1 GiB through the page cache
/// and flushing it took 0.6-2.7 s of which 0.26-2.2 s of system CPU (the kernel copying
/// every byte into freshly allocated cache pages, then writing them back), and with
/// `O_DIRECT` in 2 MiB writes 0.56-0.67 s with 0.07 s (`dd`). The data is going to the
/// disk anyway (the pack is flushed before its manifest is written) and nothing reads it
/// back soon, so the cache pages only cost. Durability is unchanged: the flush still
/// comes. The parts that cannot be aligned (a resumed file's first bytes up to the next
/// 4 KiB, the tail before a drain) are written through the page cache as before, and a
/// file system that refuses `O_DIRECT` gets everything that way. Elsewhere: plain writes,
/// with the writeback started early ([`WRITEBACK_EVERY`]).
struct Out {
    file: File,
    /// Where the next byte goes: everything before it is written or staged.
    pos: u64,
    /// Where buffered writes last had their writeback started.
    flushed_to: u64,
    /// Where writing (re)started: the first [`DIRECT_AFTER`] bytes from here are buffered.
    #[cfg(target_os = "linux")]
    start: u64,
    /// Staged bytes for `O_DIRECT` writes, once the file is large enough.
    #[cfg(target_os = "linux")]
    direct: Option<direct::Staging>,
    /// Whether `O_DIRECT` may still be tried (not refused by this file system).
    #[cfg(target_os = "linux")]
    may_go_direct: bool,
}

/// Bytes of a file written through the page cache before it goes `O_DIRECT`: most packs
/// are many small files, for which the page cache costs little and `O_DIRECT`'s
/// synchronous writes cost more (1,000 files of 1 MiB: 1.9-2.3 s against 1.6-1.8 s when
/// they went direct); the large ones are what the page cache makes slow.
#[cfg(target_os = "linux")]
const DIRECT_AFTER: u64 = 2 << 20;

impl Out {
    fn new(file: File, pos: u64) -> Out {
        Out {
            file,
            pos,
            flushed_to: pos,
            #[cfg(target_os = "linux")]
            start: pos,
            #[cfg(target_os = "linux")]
            direct: None,
            #[cfg(target_os = "linux")]
            may_go_direct: true,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        let mut data = data;
        #[cfg(target_os = "linux")]
        if self.direct.is_none() && self.may_go_direct && self.pos - self.start >= DIRECT_AFTER {
            self.direct = direct::Staging::acquire(&self.file);
            self.may_go_direct = self.direct.is_some();
        }
        #[cfg(target_os = "linux")]
        while !data.is_empty() {
            let Some(stage) = self.direct.as_mut() else {
                break;
            };
            if stage.is_empty() && !direct::aligned(self.pos) {
                // Up to the next boundary through the page cache.
                let n = data.len().min(direct::to_boundary(self.pos));
                self.buffered(&data[..n])?;
                data = &data[n..];
                continue;
            }
            let n = stage.push(data);
            let full = stage.is_full();
            self.pos += n as u64;
            data = &data[n..];
            if full {
                self.write_stage(false)?;
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        self.buffered(data)
    }

    /// `data` at `pos` through the page cache, starting its writeback every so often.
    fn buffered(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_all_at(&self.file, data, self.pos)?;
        self.pos += data.len() as u64;
        if self.pos - self.flushed_to >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    fn start_writeback(&mut self) {
        if self.pos > self.flushed_to {
            crate::platform::start_writeback(
                &self.file,
                self.flushed_to,
                self.pos - self.flushed_to,
            );
        }
        self.flushed_to = self.pos;
    }

    /// Everything handed over is in the file.
    fn flush(&mut self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        self.write_stage(true)?;
        self.start_writeback();
        Ok(())
    }

    /// Cut the file to `to` bytes and go on writing from there.
    fn reset(&mut self, to: u64) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(stage) = self.direct.as_mut() {
            stage.clear();
        }
        self.file.set_len(to)?;
        self.pos = to;
        self.flushed_to = to;
        #[cfg(target_os = "linux")]
        {
            self.start = to;
        }
        Ok(())
    }

    /// Write the staged bytes: their aligned part with `O_DIRECT`, and with `all` the
    /// rest through the page cache. A file system that refuses `O_DIRECT` (`EINVAL`) gets
    /// the whole stage, and every later write, through the page cache.
    #[cfg(target_os = "linux")]
    fn write_stage(&mut self, all: bool) -> std::io::Result<()> {
        let Some(stage) = self.direct.as_mut() else {
            return Ok(());
        };
        let start = self.pos - stage.len() as u64;
        match stage.write_direct(&self.file, start) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let staged = stage.take_all();
                self.direct = None;
                self.may_go_direct = false;
                self.pos = start;
                return self.buffered(&staged);
            }
            Err(e) => return Err(e),
        }
        if all {
            let rest = stage.take_all();
            self.pos -= rest.len() as u64;
            self.buffered(&rest)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl Drop for Out {
    fn drop(&mut self) {
        if let Some(stage) = self.direct.take() {
            stage.release();
        }
    }
}

#[cfg(target_os = "linux")]
mod direct {
    use std::alloc::{alloc, dealloc, Layout};
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// `O_DIRECT` alignment of buffer, offset and length: 4 KiB covers 512-byte and 4K
    /// sector disks.
    const ALIGN: usize = 4096;
    /// Bytes per direct write (and staged per file: 4 downloads at once, 8 MiB at most).
    const STAGE: usize = 2 << 20;

    pub(super) fn aligned(pos: u64) -> bool {
        pos % ALIGN as u64 == 0
    }

    pub(super) fn to_boundary(pos: u64) -> usize {
        ALIGN - (pos % ALIGN as u64) as usize
    }

    /// An aligned buffer of [`STAGE`] bytes, the first `len` staged for the file.
    pub(super) struct Staging {
        ptr: *mut u8,
        len: usize,
        /// Tests: act as a file system that refuses `O_DIRECT` writes.
        #[cfg(test)]
        pub(super) refuse: bool,
    }

    // SAFETY: the buffer is owned by the Staging alone and only used through `&mut self`.
    unsafe impl Send for Staging {}

    thread_local! {
        static SPARE: std::cell::Cell<Option<Staging>> = const { std::cell::Cell::new(None) };
    }

    fn layout() -> Layout {
        Layout::from_size_align(STAGE, ALIGN).expect("valid layout")
    }

    /// Turn `O_DIRECT` on or off for `file`'s writes; whether that worked.
    fn set_direct(file: &File, on: bool) -> bool {
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor `file` keeps open; F_GETFL/F_SETFL take an int.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return false;
            }
            let want = if on {
                flags | libc::O_DIRECT
            } else {
                flags & !libc::O_DIRECT
            };
            libc::fcntl(fd, libc::F_SETFL, want) == 0
        }
    }

    impl Staging {
        /// A staging buffer for `file` (this thread's spare one if it has one: the writer
        /// pool's threads write one file after another), or `None` where `O_DIRECT`
        /// cannot be had.
        pub(super) fn acquire(file: &File) -> Option<Staging> {
            // Probe that the flag can be set, and leave it off until a direct write.
            if !set_direct(file, true) {
                return None;
            }
            set_direct(file, false);
            if let Some(spare) = SPARE.take() {
                return Some(spare);
            }
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc(layout()) };
            if ptr.is_null() {
                return None;
            }
            Some(Staging {
                ptr,
                len: 0,
                #[cfg(test)]
                refuse: false,
            })
        }

        /// Keep the buffer as this thread's spare for its next file (freed when the
        /// thread ends).
        pub(super) fn release(mut self) {
            self.len = 0;
            #[cfg(test)]
            {
                self.refuse = false;
            }
            SPARE.set(Some(self));
        }

        pub(super) fn len(&self) -> usize {
            self.len
        }

        pub(super) fn is_empty(&self) -> bool {
            self.len == 0
        }

        pub(super) fn is_full(&self) -> bool {
            self.len == STAGE
        }

        pub(super) fn clear(&mut self) {
            self.len = 0;
        }

        /// Stage as much of `data` as fits; how much that was.
        pub(super) fn push(&mut self, data: &[u8]) -> usize {
            let n = data.len().min(STAGE - self.len);
            // SAFETY: `len + n <= STAGE` bytes of the allocation; `data` is another buffer.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(self.len), n) };
            self.len += n;
            n
        }

        /// Write the staged bytes' whole 4 KiB blocks at `start` (aligned) with
        /// `O_DIRECT`, keeping the rest staged at the front.
        pub(super) fn write_direct(&mut self, file: &File, start: u64) -> std::io::Result<()> {
            let whole = self.len - self.len % ALIGN;
            if whole == 0 {
                return Ok(());
            }
            debug_assert!(aligned(start));
            // SAFETY: the first `len` bytes are initialised (pushed).
            let bytes = unsafe { std::slice::from_raw_parts(self.ptr, whole) };
            #[cfg(test)]
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            if !set_direct(file, true) {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            let r = file.write_all_at(bytes, start);
            set_direct(file, false);
            r?;
            let rest = self.len - whole;
            // SAFETY: both ranges lie within the allocation; `copy` allows overlap.
            unsafe { std::ptr::copy(self.ptr.add(whole), self.ptr, rest) };
            self.len = rest;
            Ok(())
        }

        /// The staged bytes, unstaged.
        pub(super) fn take_all(&mut self) -> Vec<u8> {
            // SAFETY: the first `len` bytes are initialised (pushed).
            let v = unsafe { std::slice::from_raw_parts(self.ptr, self.len) }.to_vec();
            self.len = 0;
            v
        }
    }

    impl Drop for Staging {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with the same layout.
            unsafe { dealloc(self.ptr, layout()) };
        }
    }
}

/// Write all of `data` at byte `pos` of `file` (the file position is not used).
fn write_all_at(file: &File, data: &[u8], pos: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(data, pos)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut data, mut pos) = (data, pos);
        while !data.is_empty() {
            match file.seek_write(data, pos) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

    /// A folder on the build's disk (the system's temporary folder may be a tmpfs, whose
    /// files are all "cached").
    #[cfg(target_os = "linux")]
    fn disk_dir() -> tempfile::TempDir {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    /// Whether the file system of `dir` takes O_DIRECT, asked without the code under test.
    #[cfg(target_os = "linux")]
    fn takes_o_direct(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .is_ok()
    }

    /// Bytes of `path` in the page cache (`mincore` over a mapping of the file).
    #[cfg(target_os = "linux")]
    fn cached_bytes(path: &std::path::Path) -> usize {
        use std::os::fd::AsRawFd;
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore
        // writes one byte per page into `vec`, which has that many.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
            libc::munmap(p, len);
        }
        vec.iter().filter(|&&b| b & 1 == 1).count() * page
    }

    #[cfg(target_os = "linux")]
    fn chunk(i: u32) -> Vec<u8> {
        (0..(i * 7919 % 90_001))
            .map(|b| (b ^ (i * 31)) as u8)
            .collect()
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
                    cached < (DIRECT_AFTER + (1 << 20)) as usize,
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

    /// Where the file system refuses `O_DIRECT` writes, what was staged and everything
    /// after it goes through the page cache instead, and nothing is lost.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_system_refusing_o_direct_gets_every_byte_through_the_page_cache() {
        let dir = disk_dir();
        let path = dir.path().join("f");
        if !takes_o_direct(dir.path()) {
            eprintln!("this file system refuses O_DIRECT already");
            return;
        }
        let file = File::create(&path).unwrap();
        let mut out = Out::new(file, 0);
        let mut all = Vec::new();
        let mut i = 0;
        // Past the buffered start, until the staging buffer is in use.
        while out.direct.is_none() {
            assert!(all.len() < 4 << 20, "O_DIRECT never started");
            let c = chunk(i);
            all.extend_from_slice(&c);
            out.write(&c).unwrap();
            i += 1;
        }
        out.direct.as_mut().unwrap().refuse = true;
        for i in i..i + 80 {
            let c = chunk(i);
            all.extend_from_slice(&c);
            out.write(&c).unwrap();
        }
        out.flush().unwrap();
        assert!(out.direct.is_none(), "fell back to buffered writes");
        assert!(all.len() > 3 << 20);
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }

    /// A file smaller than [`DIRECT_AFTER`] is written through the page cache alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_small_file_goes_through_the_page_cache() {
        let dir = disk_dir();
        let path = dir.path().join("small");
        let mut out = Out::new(File::create(&path).unwrap(), 0);
        let data: Vec<u8> = (0..(DIRECT_AFTER as usize - 5000))
            .map(|b| b as u8)
            .collect();
        out.write(&data).unwrap();
        out.flush().unwrap();
        assert!(out.direct.is_none());
        drop(out);
        let cached = cached_bytes(&path);
        assert!(cached >= data.len(), "{cached} of {} cached", data.len());
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
