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
//! Each window's pages are faulted in on the blocking pool (`MADV_POPULATE_READ`, Linux
//! 5.14) before hyper gets it, so a runtime thread never waits for the disk, and a file
//! cut short before that fails there with a clear error. A window is unmapped when hyper
//! drops its last `Bytes`, so the service's resident memory holds only the windows in
//! flight, whatever the file's size.

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
