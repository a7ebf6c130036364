//! An output file written front to back at explicit positions.
//!
//! On Linux whole aligned stretches are written with `O_DIRECT` from a staging buffer,
//! past the page cache, from a file's first byte; a caller's bytes in aligned memory (a
//! [`super::Batch`], as Connect and Export hand over) at an aligned position are written
//! from that memory, without the copy into the staging buffer (`perf`: that copy was 3-6%
//! of Connect's samples; one 1 GiB file 1.50 -> 1.41 s, Export 0.75 -> 0.69 s, 1,000
//! files the same; alternating runs, medians of five or six). On the development machine
//! writing 1 GiB through the page cache and flushing it took 0.6-2.7 s, of which
//! 0.26-2.2 s of system CPU (the kernel copying every byte into freshly allocated cache
//! pages, then writing them back), and with `O_DIRECT` in 2 MiB writes 0.56-0.67 s with
//! 0.07 s (`dd`). The data is going to the disk anyway (the callers flush before they
//! rely on it) and nothing here reads it back soon, so the cache pages only cost.
//! Durability is unchanged: the flush still comes. The parts that cannot be aligned (a
//! resumed file's first bytes up to the next 4 KiB, what is left over at a flush) are
//! written through the page cache, and a file system that refuses `O_DIRECT` gets
//! everything that way.
//! Elsewhere: plain writes, with the writeback started early ([`WRITEBACK_EVERY`]).
//!
//! Small files too: a pack of 1,000 files of about 1 MiB, alternating runs, medians of
//! four, each into a folder of its own: 2.91 s through the page cache, 1.94 s direct
//! (CPU 4.18 -> 2.29 s); 5,000 files of 4-64 KiB the same either way (3.04 / 2.99 s). An
//! earlier version wrote each file's first 2 MiB through the page cache and measured that
//! cheaper for small files (1.5-2.0 s against 1.7-2.3 s direct, the machine in a faster
//! state); a buffered head followed by direct writes turned out the slow case: the same
//! pack with only the first 64 KiB of each file buffered took 2.85 s. Export's CSV: 0.665
//! -> 0.605 s (medians of six).
//!
//! Used where the writes run on a thread of their own, so that a direct write's wait for
//! the disk keeps nobody else waiting: Connect's downloads (`connect::sink`), Export's
//! CSV (`BackgroundWriter`; written from the thread that hashes, it had cost Export
//! 0.035-0.075 s, alternating runs, medians of six) and Import's copy of a large file
//! from another drive (`import::place`; a 1 GiB pack from a tmpfs 1.68-1.73 -> 0.82 s,
//! CPU 2.1-2.2 -> 0.93 s, the benchmark's row). Also Import's copies of smaller files
//! from another drive, written on the placing worker's own thread (read, hash, write in
//! turn): there the direct write's wait is the worker's, but each of the two workers
//! waits for its own, and a page cache page costs its allocation and a copy, far more
//! where a virtual machine's host has taken the free memory back (1,000 files of 1 MiB
//! 2.16-3.13 -> 1.61-1.74 s, CPU 3.6-5.2 -> 1.6-1.7 s, on such a machine). Not for
//! Prepare's cab, which is read back (hashed) right after it is written.

use std::fs::File;

/// Start the writeback of each this many bytes written through the page cache.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A file and where its next byte goes. Call [`OutFile::flush`] before relying on the
/// file: dropping it without that loses what is still staged (at most 2 MiB).
pub(crate) struct OutFile {
    file: File,
    /// Where the next byte goes: everything before it is written or staged.
    pos: u64,
    /// Where buffered writes last had their writeback started.
    flushed_to: u64,
    /// Staged bytes for `O_DIRECT` writes (from the first write on, where the file system
    /// takes them).
    #[cfg(target_os = "linux")]
    direct: Option<direct::Staging>,
    /// Whether `O_DIRECT` may still be tried (not refused by this file system).
    #[cfg(target_os = "linux")]
    may_go_direct: bool,
    /// Tests: writebacks started.
    #[cfg(test)]
    writebacks: usize,
}

impl OutFile {
    /// Write `file` from byte `pos` on (its file position is not used).
    pub(crate) fn new(file: File, pos: u64) -> Self {
        OutFile {
            file,
            pos,
            flushed_to: pos,
            #[cfg(target_os = "linux")]
            direct: None,
            #[cfg(target_os = "linux")]
            may_go_direct: true,
            #[cfg(test)]
            writebacks: 0,
        }
    }

    /// Append `data` (it may stay staged until the next flush).
    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        let mut data = data;
        #[cfg(target_os = "linux")]
        self.acquire_staging();
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
            let whole = direct::whole_blocks(data);
            if stage.is_empty() && whole >= direct::FROM_CALLER_MIN {
                // Aligned memory (a `Batch`) at an aligned position: written as it is,
                // without the copy into the staging buffer.
                match stage.write_at(&self.file, &data[..whole], self.pos) {
                    Ok(()) => {
                        self.wrote_direct(self.pos, whole);
                        self.pos += whole as u64;
                        data = &data[whole..];
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.refused();
                        break;
                    }
                    Err(e) => return Err(e),
                }
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

    /// Append `parts` in order, as [`OutFile::write`] each. On Linux, those of them that
    /// are whole aligned blocks in aligned memory (full [`super::Batch`]es) at an aligned
    /// position go to the disk in one `O_DIRECT` write: fewer, larger writes, which this
    /// disk takes faster (`dd` of 1 GiB with `O_DIRECT`: 0.81-0.84 s in 512 KiB writes,
    /// 0.67-0.75 s in 2 MiB ones).
    pub(crate) fn write_parts(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        let parts = &parts[self.write_direct_parts(parts)?..];
        for part in parts {
            self.write(part)?;
        }
        Ok(())
    }

    /// The leading `parts` that can be written together with `O_DIRECT`, written; how many
    /// (none where fewer than two qualify, or the file system refuses).
    #[cfg(target_os = "linux")]
    fn write_direct_parts(&mut self, parts: &[&[u8]]) -> std::io::Result<usize> {
        self.acquire_staging();
        let Some(stage) = self.direct.as_mut() else {
            return Ok(0);
        };
        let n = parts
            .iter()
            .take_while(|p| !p.is_empty() && direct::whole_blocks(p) == p.len())
            .count();
        if n < 2 || !stage.is_empty() || !direct::aligned(self.pos) {
            return Ok(0);
        }
        match stage.write_parts_at(&self.file, &parts[..n], self.pos) {
            Ok(()) => {
                let len = parts[..n].iter().map(|p| p.len()).sum::<usize>();
                self.wrote_direct(self.pos, len);
                self.pos += len as u64;
                Ok(n)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refused();
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// `data` at `pos` through the page cache, starting its writeback every so often.
    fn buffered(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        if let Some(stage) = &self.direct {
            stage.buffered_next(&self.file)?;
        }
        write_all_at(&self.file, data, self.pos)?;
        self.pos += data.len() as u64;
        if self.pos - self.flushed_to >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    /// `len` bytes from `start` went to the disk directly: where nothing written through
    /// the page cache waits before them, the next writeback starts after them (a file
    /// written wholly direct starts none: one `sync_file_range` call less per file).
    #[cfg(target_os = "linux")]
    fn wrote_direct(&mut self, start: u64, len: usize) {
        if self.flushed_to == start {
            self.flushed_to = start + len as u64;
        }
    }

    fn start_writeback(&mut self) {
        if self.pos > self.flushed_to {
            #[cfg(test)]
            {
                self.writebacks += 1;
            }
            crate::platform::start_writeback(
                &self.file,
                self.flushed_to,
                self.pos - self.flushed_to,
            );
        }
        self.flushed_to = self.pos;
    }

    /// The file being written.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Everything handed over is in the file.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        self.write_stage(true)?;
        self.start_writeback();
        Ok(())
    }

    /// Cut the file to `to` bytes and go on writing from there.
    pub(crate) fn reset(&mut self, to: u64) -> std::io::Result<()> {
        // Staged bytes wholly past the cut are dropped; if the cut falls inside or after
        // them they are written first (dropping them would leave a hole of zeros).
        #[cfg(target_os = "linux")]
        if let Some(stage) = self.direct.as_mut() {
            if to <= self.pos - stage.len() as u64 {
                stage.clear();
            } else {
                self.write_stage(true)?;
            }
        }
        self.file.set_len(to)?;
        self.pos = to;
        self.flushed_to = to;
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
        let written = match stage.write_direct(&self.file, start) {
            Ok(written) => written,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let staged = stage.take_all();
                self.refused();
                self.pos = start;
                return self.buffered(&staged);
            }
            Err(e) => return Err(e),
        };
        let rest = all.then(|| stage.take_all());
        self.wrote_direct(start, written);
        if let Some(rest) = rest {
            self.pos -= rest.len() as u64;
            self.buffered(&rest)?;
        }
        Ok(())
    }

    /// Where the file has no staging buffer yet and may still go direct, get one (none
    /// where the file system does not take `O_DIRECT`).
    #[cfg(target_os = "linux")]
    fn acquire_staging(&mut self) {
        if self.direct.is_none() && self.may_go_direct {
            self.direct = direct::Staging::acquire(&self.file);
            self.may_go_direct = self.direct.is_some();
        }
    }

    /// The file system refused an `O_DIRECT` write: this file is written through the page
    /// cache from now on.
    #[cfg(target_os = "linux")]
    fn refused(&mut self) {
        if let Some(stage) = self.direct.take() {
            stage.release(&self.file);
        }
        self.may_go_direct = false;
    }
}

#[cfg(target_os = "linux")]
impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some(stage) = self.direct.take() {
            stage.release(&self.file);
        }
    }
}

#[cfg(target_os = "linux")]
mod direct {
    use crate::fsutil::batches::{Batch, Spare, ALIGN};
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Bytes per direct write, and staged per file (4 downloads at once: 2 MiB at most).
    /// Connect's batches are as large, so a small file's bytes go to the disk while it is
    /// still being received instead of all at its end: 1,000 files of about 1 MiB 1.83
    /// against 1.94 s with 2 MiB, a 1 GiB file no slower (1.16 against 1.27 s); medians of
    /// four and of six.
    const STAGE: usize = 512 << 10;

    /// Aligned bytes handed over in one piece are written from the caller's memory, not
    /// staged, from this many on (fewer are staged, so as not to make many small writes).
    pub(super) const FROM_CALLER_MIN: usize = 64 << 10;

    pub(super) fn aligned(pos: u64) -> bool {
        pos % ALIGN as u64 == 0
    }

    pub(super) fn to_boundary(pos: u64) -> usize {
        ALIGN - (pos % ALIGN as u64) as usize
    }

    /// How many of `data`'s bytes are whole blocks that can be written with `O_DIRECT` as
    /// they are: none unless the memory is aligned (a [`Batch`]).
    pub(super) fn whole_blocks(data: &[u8]) -> usize {
        if (data.as_ptr() as usize) % ALIGN != 0 {
            return 0;
        }
        data.len() - data.len() % ALIGN
    }

    /// Write all of `parts`, one after another, at `pos` of `file`.
    fn pwritev_all(file: &File, parts: &[&[u8]], mut pos: u64) -> std::io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0;
        let mut iov = Vec::with_capacity(parts.len());
        while done < total {
            // The parts' bytes from `done` on.
            iov.clear();
            let mut skip = done;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                iov.push(libc::iovec {
                    iov_base: p[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: p.len() - skip,
                });
                skip = 0;
            }
            let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: `iov` describes `count` live slices of `parts`, read only.
            let n =
                unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, pos as libc::off_t) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n as usize;
            pos += n as u64;
        }
        Ok(())
    }

    /// An aligned buffer of [`STAGE`] bytes, the first `len()` staged for the file.
    pub(super) struct Staging {
        buf: Batch,
        /// The file's status flags without `O_DIRECT`, read once.
        flags: libc::c_int,
        /// Whether the file's `O_DIRECT` flag is on. It is switched only when the kind of
        /// write changes (on for a direct write, off for one through the page cache, and
        /// off when the staging ends), not twice around every direct write: four `fcntl`
        /// calls per write, 16 per downloaded file of 1 MiB, came to about 10 ms per 1,000
        /// files. The flag belongs to the open file, which a duplicated descriptor shares,
        /// so it is always off again once the staging ends.
        on: std::cell::Cell<bool>,
        /// Tests: times the `O_DIRECT` flag was switched.
        #[cfg(test)]
        pub(super) switches: std::cell::Cell<usize>,
        /// Tests: act as a file system that refuses `O_DIRECT` writes.
        #[cfg(test)]
        pub(super) refuse: bool,
        /// Tests: bytes copied in, over the buffer's life with this file.
        #[cfg(test)]
        pub(super) copied: usize,
        /// Tests: `O_DIRECT` writes made for this file.
        #[cfg(test)]
        pub(super) direct_writes: std::cell::Cell<usize>,
    }

    /// Staging buffers of files written to the end, for the next files. Shared by all
    /// threads: Connect's writer pool keeps up to 16 threads, and one spare buffer per
    /// thread kept 8 MiB for 4 downloads at once. At most six: 4 downloads at once, and
    /// Export's CSV.
    static SPARE: Spare<Batch> = Spare::new(6);

    /// `file`'s status flags without `O_DIRECT`, or `None` where they cannot be read.
    fn flags_of(file: &File) -> Option<libc::c_int> {
        // SAFETY: fcntl on a descriptor `file` keeps open; F_GETFL takes no argument.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        (flags >= 0).then_some(flags & !libc::O_DIRECT)
    }

    /// Set `file`'s status flags to `flags`, with `O_DIRECT` if `on`.
    fn set_flags(file: &File, flags: libc::c_int, on: bool) -> std::io::Result<()> {
        let want = if on { flags | libc::O_DIRECT } else { flags };
        // SAFETY: fcntl on a descriptor `file` keeps open; F_SETFL takes an int.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, want) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    impl Staging {
        /// A staging buffer for `file` (a spare one if there is one: Connect writes one
        /// file after another), or `None` where `O_DIRECT` cannot be had.
        pub(super) fn acquire(file: &File) -> Option<Staging> {
            // The flag is set now (where it cannot be, nothing goes direct) and left on for
            // the first direct write.
            let flags = flags_of(file)?;
            set_flags(file, flags, true).ok()?;
            Some(Staging {
                buf: SPARE.take().unwrap_or_else(|| Batch::with_capacity(STAGE)),
                flags,
                on: std::cell::Cell::new(true),
                #[cfg(test)]
                switches: std::cell::Cell::new(1),
                #[cfg(test)]
                refuse: false,
                #[cfg(test)]
                copied: 0,
                #[cfg(test)]
                direct_writes: std::cell::Cell::new(0),
            })
        }

        /// Turn `file`'s `O_DIRECT` flag on or off, unless it is already.
        fn switch(&self, file: &File, on: bool) -> std::io::Result<()> {
            if self.on.get() != on {
                set_flags(file, self.flags, on)?;
                self.on.set(on);
                #[cfg(test)]
                self.switches.set(self.switches.get() + 1);
            }
            Ok(())
        }

        /// Ready `file` for a write through the page cache (`O_DIRECT` off).
        pub(super) fn buffered_next(&self, file: &File) -> std::io::Result<()> {
            self.switch(file, false)
        }

        /// The staging of `file` ends: its `O_DIRECT` flag is turned off (not reported if
        /// that fails, which clearing a flag that could be set does not), and the buffer is
        /// kept for the next file, unless enough are kept (then it is freed).
        pub(super) fn release(mut self, file: &File) {
            let _ = self.switch(file, false);
            self.buf.clear();
            SPARE.give_back(std::mem::take(&mut self.buf));
        }

        pub(super) fn len(&self) -> usize {
            self.buf.len()
        }

        pub(super) fn is_empty(&self) -> bool {
            self.buf.is_empty()
        }

        pub(super) fn is_full(&self) -> bool {
            self.buf.len() == STAGE
        }

        pub(super) fn clear(&mut self) {
            self.buf.clear();
        }

        /// Stage as much of `data` as fits; how much that was.
        pub(super) fn push(&mut self, data: &[u8]) -> usize {
            let n = self.buf.push(data);
            #[cfg(test)]
            {
                self.copied += n;
            }
            n
        }

        /// Write `bytes` (aligned memory, whole blocks) at `start` (aligned) with
        /// `O_DIRECT`.
        pub(super) fn write_at(
            &self,
            file: &File,
            bytes: &[u8],
            start: u64,
        ) -> std::io::Result<()> {
            self.write_parts_at(file, &[bytes], start)
        }

        /// Write `parts` (each aligned memory, whole blocks) one after another from
        /// `start` (aligned) with `O_DIRECT`, in one `pwritev` where the disk takes it all.
        pub(super) fn write_parts_at(
            &self,
            file: &File,
            parts: &[&[u8]],
            start: u64,
        ) -> std::io::Result<()> {
            debug_assert!(aligned(start) && parts.iter().all(|p| whole_blocks(p) == p.len()));
            #[cfg(test)]
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            if self.switch(file, true).is_err() {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            let r = pwritev_all(file, parts, start);
            #[cfg(test)]
            self.direct_writes.set(self.direct_writes.get() + 1);
            r
        }

        /// Write the staged bytes' whole 4 KiB blocks at `start` (aligned) with
        /// `O_DIRECT`, keeping the rest staged at the front; how many bytes were written.
        pub(super) fn write_direct(&mut self, file: &File, start: u64) -> std::io::Result<usize> {
            let whole = whole_blocks(&self.buf);
            if whole == 0 {
                return Ok(0);
            }
            self.write_at(file, &self.buf[..whole], start)?;
            self.buf.drop_front(whole);
            Ok(whole)
        }

        /// The staged bytes, unstaged.
        pub(super) fn take_all(&mut self) -> Vec<u8> {
            let v = self.buf.to_vec();
            self.buf.clear();
            v
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

/// Helpers for tests of files written through [`OutFile`].
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod test_support {
    use std::fs::File;

    /// A folder on the build's disk (the system's temporary folder may be a tmpfs, whose
    /// files are all "cached").
    pub(crate) fn disk_dir() -> tempfile::TempDir {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    /// A folder on the build's disk whose file system takes O_DIRECT; `None` (with a
    /// note saying `what` cannot be checked) where it does not.
    pub(crate) fn direct_dir(what: &str) -> Option<tempfile::TempDir> {
        let dir = disk_dir();
        if takes_o_direct(dir.path()) {
            return Some(dir);
        }
        eprintln!("this file system refuses O_DIRECT: {what} is not checked");
        None
    }

    /// Whether the file system of `dir` takes O_DIRECT, asked without the code under test.
    pub(crate) fn takes_o_direct(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .is_ok()
    }

    /// Bytes of `path` in the page cache (`mincore` over a mapping of the file).
    pub(crate) fn cached_bytes(path: &std::path::Path) -> usize {
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

    /// A batch (aligned memory) of `len` bytes made from `seed`.
    pub(crate) fn batch(seed: u32, len: usize) -> crate::fsutil::Batch {
        let mut b = crate::fsutil::Batch::with_capacity(512 << 10);
        let c: Vec<u8> = (0..len as u32).map(|i| (i ^ seed) as u8).collect();
        b.extend_from_slice(&c);
        b
    }

    pub(crate) fn chunk(i: u32) -> Vec<u8> {
        (0..(i * 7919 % 90_001))
            .map(|b| (b ^ (i * 31)) as u8)
            .collect()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::test_support::*;
    use super::*;

    /// Where the file system refuses `O_DIRECT` writes, what was staged and everything
    /// after it goes through the page cache instead, and nothing is lost.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_system_refusing_o_direct_gets_every_byte_through_the_page_cache() {
        let Some(dir) = direct_dir("falling back from a refused O_DIRECT") else {
            return;
        };
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut out = OutFile::new(file, 0);
        let mut all = Vec::new();
        let mut i = 0;
        // Until the staging buffer is in use.
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

    /// Aligned batches are written from their own memory (nothing is staged), past the
    /// page cache; where the file system refuses that, the batch and everything after it
    /// go through the page cache, and nothing is lost either way.
    #[test]
    fn aligned_batches_are_written_as_they_are() {
        use crate::fsutil::Batch;
        let Some(dir) = direct_dir("writing batches from their own memory") else {
            return;
        };
        // Batch by batch, and in groups (`write_parts`: one write for the whole batches
        // at the front of a group).
        let singly: &[usize] = &[1; 8];
        let grouped: &[usize] = &[3, 1, 4];
        for (groups, writes) in [(singly, 8), (grouped, 4)] {
            for refuse_at in [None, Some(3)] {
                let path = dir.path().join("f");
                let mut out = OutFile::new(File::create(&path).unwrap(), 0);
                let mut all = Vec::new();
                let mut i = 0;
                for &n in groups {
                    if refuse_at.is_some_and(|r| (i..i + n).contains(&r)) {
                        out.direct.as_mut().unwrap().refuse = true;
                    }
                    // The last batch ends in a partial block.
                    let group: Vec<Batch> = (i..i + n)
                        .map(|i| batch(i as u32, if i == 7 { 300_001 } else { 512 << 10 }))
                        .collect();
                    i += n;
                    for b in &group {
                        all.extend_from_slice(b);
                    }
                    let parts: Vec<&[u8]> = group.iter().map(|b| &b[..]).collect();
                    out.write_parts(&parts).unwrap();
                    if refuse_at.is_none() {
                        // Only a partial block's bytes were copied into the staging buffer.
                        let copied = out.direct.as_ref().map_or(usize::MAX, |d| d.copied);
                        assert!(copied < 4096, "{copied} bytes copied by batch {i}");
                    }
                }
                if refuse_at.is_none() {
                    let stage = out.direct.as_ref().unwrap();
                    assert_eq!(
                        stage.direct_writes.get(),
                        writes,
                        "direct writes for groups {groups:?}"
                    );
                    // Turned on once, for all of them.
                    assert_eq!(stage.switches.get(), 1, "O_DIRECT switched");
                }
                out.flush().unwrap();
                drop(out);
                // Before reading it back (which brings it into the page cache).
                let cached = cached_bytes(&path);
                match refuse_at {
                    None => assert!(cached <= 4096, "{cached} bytes cached"),
                    Some(_) => assert!(cached > 2 << 20, "only {cached} bytes cached"),
                }
                assert!(
                    std::fs::read(&path).unwrap() == all,
                    "bytes lost or out of order"
                );
            }
        }
    }

    /// Whether `O_DIRECT` is on for the open file behind `f`.
    fn goes_direct(f: &File) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on a descriptor `f` keeps open.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0);
        flags & libc::O_DIRECT != 0
    }

    /// `O_DIRECT` is switched only where the kind of write changes, and is off again
    /// for the open file (which a duplicated descriptor shares) once the file is done or
    /// the file system refused it; the writeback is started only for what went through
    /// the page cache; every byte arrives either way.
    #[test]
    fn o_direct_is_switched_only_where_the_kind_of_write_changes() {
        let Some(dir) = direct_dir("switching O_DIRECT") else {
            return;
        };
        // (first byte, last batch's length, refused at batch): switches, writebacks.
        let cases = [
            // Whole blocks from byte 0: turned on once, and no writeback.
            ((0, 512 << 10, None), (1, 0)),
            // A partial last block: off for it (through the page cache), its writeback.
            ((0, 300_001, None), (2, 1)),
            // A resumed file's head up to the boundary through the page cache: off, then
            // on for the batches, off for the tail; one writeback from the head on.
            ((100, 300_001, None), (4, 1)),
            // Refused at the third batch: off, and through the page cache from there.
            ((0, 300_001, Some(2)), (1, 1)),
        ];
        for ((first, last, refuse_at), (switches, writebacks)) in cases {
            let path = dir.path().join("f");
            let file = File::create(&path).unwrap();
            let twin = file.try_clone().unwrap();
            let mut all = vec![7u8; first as usize];
            std::fs::write(&path, &all).unwrap();
            let mut out = OutFile::new(file, first);
            if first > 0 {
                let head = vec![9u8; 4096 - first as usize];
                out.write(&head).unwrap();
                all.extend_from_slice(&head);
            }
            for i in 0..4 {
                if refuse_at == Some(i) {
                    out.direct.as_mut().unwrap().refuse = true;
                }
                let b = batch(i as u32, if i == 3 { last } else { 512 << 10 });
                out.write(&b).unwrap();
                all.extend_from_slice(&b);
                if refuse_at.is_some_and(|r| i >= r) {
                    assert!(!goes_direct(&twin), "O_DIRECT on after a refusal");
                }
            }
            let switched = out.direct.as_ref().map(|d| d.switches.get());
            out.flush().unwrap();
            let case = (first, last, refuse_at);
            if refuse_at.is_none() {
                let switched = out.direct.as_ref().unwrap().switches.get();
                assert_eq!(switched, switches, "O_DIRECT switched, {case:?}");
            } else {
                assert_eq!(switched, None, "still direct after a refusal, {case:?}");
            }
            assert_eq!(out.writebacks, writebacks, "writebacks started, {case:?}");
            drop(out);
            assert!(!goes_direct(&twin), "O_DIRECT left on, {case:?}");
            assert!(std::fs::read(&path).unwrap() == all, "bytes lost, {case:?}");
        }
    }

    /// A small file goes past the page cache too, but for its unaligned last bytes.
    #[test]
    fn a_small_file_bypasses_the_page_cache_but_for_its_last_page() {
        let Some(dir) = direct_dir("a small file bypassing the page cache") else {
            return;
        };
        let path = dir.path().join("small");
        let mut out = OutFile::new(File::create(&path).unwrap(), 0);
        let data: Vec<u8> = (0..(1 << 20) - 5000).map(|b| b as u8).collect();
        for c in data.chunks(70_001) {
            out.write(c).unwrap();
        }
        out.flush().unwrap();
        drop(out);
        let cached = cached_bytes(&path);
        assert!(cached <= 4096, "{cached} of {} bytes cached", data.len());
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// A cut inside the staged bytes keeps those before it; one before them drops them;
    /// writing goes on from the cut either way.
    #[test]
    fn a_reset_inside_or_before_the_staged_bytes_keeps_what_comes_before_it() {
        let Some(dir) = direct_dir("a reset among staged bytes") else {
            return;
        };
        let path = dir.path().join("f");
        let mut out = OutFile::new(File::create(&path).unwrap(), 0);
        let mut all: Vec<u8> = Vec::new();
        let push = |out: &mut OutFile, all: &mut Vec<u8>, n: usize, seed: u8| {
            let c: Vec<u8> = (0..n).map(|b| (b as u8).wrapping_mul(seed)).collect();
            all.extend_from_slice(&c);
            out.write(&c).unwrap();
        };
        // A few direct writes, then 100,000 bytes staged (not yet written).
        push(&mut out, &mut all, (2 << 20) + 5000, 3);
        push(&mut out, &mut all, 100_000, 5);
        let staged = out.direct.as_ref().expect("staging in use").len();
        assert!(staged > 50_000, "{staged} bytes staged");
        // Cut in the middle of the staged bytes.
        let cut = all.len() - 40_000;
        out.reset(cut as u64).unwrap();
        all.truncate(cut);
        push(&mut out, &mut all, 70_000, 7);
        // Stage more, then cut before all of it.
        let before = all.len();
        push(&mut out, &mut all, 30_000, 11);
        out.reset(before as u64 - 10).unwrap();
        all.truncate(before - 10);
        push(&mut out, &mut all, 12_345, 13);
        out.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }
}
