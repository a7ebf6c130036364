//! Linux: windows of a stored file mapped into memory, handed to hyper as `Bytes` so a
//! download goes from the page cache into the socket with one copy (the kernel's, in
//! `writev`) instead of two (`read` into a buffer, then `writev`).
//!
//! Why this is safe against a store file cut short while it is served: the service never
//! touches a window's bytes itself. The kernel reads them, inside `writev`, and a page
//! past a truncated file's end makes that call fail with `EFAULT` (the connection is
//! dropped, as for any write error) where a read by the process would raise `SIGBUS`.
//! So windows are used only where nothing in the process reads the body: HTTP/1 on plain
//! TCP. Over TLS, rustls encrypts the body in the process, and HTTP/2 copies small DATA
//! frames into a buffer of its own; those downloads are read into buffers as before
//! (`crate::http`).
//!
//! Each window's pages are faulted in (`MADV_POPULATE_READ`, Linux 5.14) before hyper gets
//! it, so a file cut short before that fails there with a clear error. Where the file's
//! folders and the window's pages are all in the page cache (`openat2` with
//! `RESOLVE_CACHED`, `mincore`) that happens right on the runtime thread, since nothing
//! waits for the disk; otherwise on the blocking pool, as every window once did. Each
//! hand-off to the pool cost two thread wake-ups per file and per window: with Connect of
//! 1,000 files of 1 MiB, alternating runs against two services, medians of 11, 11 and 15,
//! the service's CPU 0.73 -> 0.56, 0.85 -> 0.62 and 0.71 -> 0.48 s and Connect 1.412 ->
//! 1.336, 1.527 -> 1.513 and 1.415 -> 1.338 s. A window is unmapped when hyper drops its
//! last `Bytes`, so the service's resident memory holds only the windows in flight,
//! whatever the file's size.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A read-only shared mapping of `len` bytes of a file, `data` bytes into the mapping
/// (the mapping starts on a page boundary).
pub struct Window {
    map: NonNull<libc::c_void>,
    map_len: usize,
    data: usize,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by the `Window` alone; nothing mutates it.
unsafe impl Send for Window {}
unsafe impl Sync for Window {}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data + len <= map_len` and the mapping lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().cast::<u8>().add(self.data), self.len)
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, once.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// What mapping a window gave.
pub enum Mapped {
    Window(Window),
    /// The kernel cannot do it here (no `MADV_POPULATE_READ` before Linux 5.14, a file
    /// system without `mmap`): read into a buffer instead.
    Unsupported,
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

/// Map `len` (> 0) bytes of `f` from `offset` and fault them in. Blocking: call it on the
/// blocking pool. `UnexpectedEof` if the file no longer holds them (cut short since its
/// size was checked).
pub fn map(f: &File, offset: u64, len: usize) -> io::Result<Mapped> {
    map_with(f, offset, len, false)
}

/// [`map`] without waiting for the disk, for a runtime thread: `None` where some of the
/// pages are not in the page cache (the caller then maps them on the blocking pool), or
/// where anything else goes wrong (the blocking pool's attempt reports it).
pub fn map_cached(f: &File, offset: u64, len: usize) -> Option<Window> {
    match map_with(f, offset, len, true) {
        Ok(Mapped::Window(w)) => Some(w),
        _ => None,
    }
}

/// Open `path` read-only without waiting for the disk (`openat2` with `RESOLVE_CACHED`,
/// Linux 5.12), for a runtime thread: `None` where resolving it would read a folder from
/// the disk, or where anything else stops it (the blocking pool's attempt reports it).
pub fn open_cached(path: &std::path::Path) -> Option<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Set once the kernel turns out not to have it: not asked again.
    static MISSING: AtomicBool = AtomicBool::new(false);
    if MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero is a valid `open_how` (no flags, mode or resolve bits).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: a NUL-terminated path and an `open_how` of the size given, both live for the
    // call; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error().raw_os_error();
        // EAGAIN: not all cached. Before 5.12 (or under a filter that refuses it): ENOSYS,
        // or EINVAL for the unknown resolve bit.
        if matches!(
            e,
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EPERM)
        ) {
            MISSING.store(true, Ordering::Relaxed);
        }
        return None;
    }
    // SAFETY: a descriptor the kernel just opened for us alone.
    Some(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// Whether every page of the mapping `p..p + len` is in the page cache (false where the
/// kernel will not say: `mincore` reports the page cache only for files the process may
/// write, since Linux 5.0).
fn cached(p: *mut libc::c_void, len: usize) -> bool {
    let pages = len.div_ceil(page_size() as usize);
    let mut vec = vec![0u8; pages];
    // SAFETY: `p` is a mapping of `len` bytes; `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(p, len, vec.as_mut_ptr()) };
    r == 0 && vec.iter().all(|b| b & 1 == 1)
}

fn map_with(f: &File, offset: u64, len: usize, only_cached: bool) -> io::Result<Mapped> {
    let start = offset - offset % page_size();
    let data = (offset - start) as usize;
    let map_len = data + len;
    let Ok(file_offset) = libc::off_t::try_from(start) else {
        return Ok(Mapped::Unsupported);
    };
    // SAFETY: a new read-only mapping at an address the kernel picks; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            file_offset,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::EINVAL) => Ok(Mapped::Unsupported),
            _ => Err(e),
        };
    }
    let w = Window {
        map: NonNull::new(p).expect("mmap returned a mapping"),
        map_len,
        data,
        len,
    };
    if only_cached && !cached(p, map_len) {
        return Ok(Mapped::Unsupported);
    }
    // SAFETY: advice on the mapping just made.
    if unsafe { libc::madvise(p, map_len, libc::MADV_POPULATE_READ) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) => Ok(Mapped::Unsupported),
            // The pages past the file's end: it was cut short.
            Some(libc::EFAULT) => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Err(e),
        };
    }
    Ok(Mapped::Window(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A folder on the disk the tests are built on (beside the test executable), where
    /// pages can be dropped from the page cache (a tmpfs `/tmp` keeps them).
    fn disk_dir() -> tempfile::TempDir {
        let exe = std::env::current_exe().unwrap();
        tempfile::tempdir_in(exe.parent().unwrap()).unwrap()
    }

    fn bytes(window: &Window) -> &[u8] {
        window.as_ref()
    }

    /// A file whose pages are cached opens and maps without the blocking pool, with the
    /// file's bytes; a missing one does not open; once its pages are dropped from the page
    /// cache it is not mapped that way (the blocking pool's `map` still gives the bytes).
    #[test]
    fn cached_files_open_and_map_on_the_spot_and_uncached_ones_do_not() {
        let dir = disk_dir();
        let path = dir.path().join("stored.bin");
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
        let mut f = File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert!(open_cached(&dir.path().join("missing.bin")).is_none());

        let f = open_cached(&path).expect("a file just written opens from the cache");
        let w = map_cached(&f, 4097, 1 << 20).expect("cached pages map on the spot");
        assert_eq!(bytes(&w), &data[4097..4097 + (1 << 20)]);
        drop(w);

        // Dropped from the page cache (its pages are clean: written and synced).
        // SAFETY: advice on a descriptor we own.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
        assert!(
            map_cached(&f, 2 << 20, 1 << 20).is_none(),
            "pages not in the page cache were mapped on the spot"
        );
        match map(&f, 2 << 20, 1 << 20).unwrap() {
            Mapped::Window(w) => assert_eq!(bytes(&w), &data[2 << 20..3 << 20]),
            Mapped::Unsupported => panic!("this kernel maps files (Linux 5.14 or later)"),
        }
    }
}
