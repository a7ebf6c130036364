//! Empty byte buffers of one size, kept for reuse: the writers that take a producer's
//! bytes on another thread (`connect::sink`, [`super::BackgroundWriter`]) copy them into
//! such batches, and a batch written comes back here instead of to the allocator (a fresh
//! half-MiB buffer each time is a page fault per 4 KiB of it). [`Spare`] is the keeping
//! itself, also used for `OutFile`'s aligned staging buffers.
//!
//! A [`Batch`]'s memory starts on a 4 KiB boundary, so `OutFile` writes a full batch with
//! `O_DIRECT` straight from it instead of copying it into its staging buffer first.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of a [`Batch`]'s memory: what `O_DIRECT` asks of a buffer on 512-byte and
/// 4K-sector disks alike.
pub(crate) const ALIGN: usize = 4096;

/// A byte buffer of a fixed capacity whose memory is [`ALIGN`]ed.
pub(crate) struct Batch {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: a Batch owns its allocation alone (like a `Vec<u8>`), and shares it only
// through `&self` (reads) and `&mut self` (writes).
unsafe impl Send for Batch {}
unsafe impl Sync for Batch {}

/// A type with the alignment of a batch, for an aligned dangling pointer.
#[repr(align(4096))]
struct Page;
const _: () = assert!(std::mem::align_of::<Page>() == ALIGN);

impl Batch {
    /// No memory at all (a placeholder until a buffer is taken).
    pub(crate) const fn empty() -> Batch {
        Batch {
            ptr: NonNull::<Page>::dangling().cast(),
            len: 0,
            cap: 0,
        }
    }

    /// An empty batch that holds up to `cap` bytes.
    pub(crate) fn with_capacity(cap: usize) -> Batch {
        if cap == 0 {
            return Batch::empty();
        }
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout));
        Batch { ptr, len: 0, cap }
    }

    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, ALIGN).expect("a batch's size fits a layout")
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Append as much of `data` as fits; how much that was.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap - self.len);
        // SAFETY: `len + n <= cap` bytes of the allocation; `data` is not in it (it is
        // borrowed while `self` is borrowed mutably).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), n) };
        self.len += n;
        n
    }

    /// Append all of `data`. Panics if it does not fit (a caller's bug).
    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        let n = self.push(data);
        assert_eq!(n, data.len(), "a batch overflowed");
    }

    /// Drop the first `n` bytes, moving the rest to the front (`OutFile`'s staging, Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        let rest = self.len - n;
        // SAFETY: both ranges lie within the first `len` bytes; `copy` allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(n), self.ptr.as_ptr(), rest) };
        self.len = rest;
    }
}

impl std::ops::Deref for Batch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (pushed); the pointer is non-null
        // and aligned even with no memory.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::empty()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in `with_capacity` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

/// Buffers kept for reuse, at most `keep` of them (more are dropped).
pub(crate) struct Spare<T> {
    keep: usize,
    kept: Mutex<Vec<T>>,
}

impl<T> Spare<T> {
    pub(crate) const fn new(keep: usize) -> Self {
        Spare {
            keep,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// A kept buffer, if there is one.
    pub(crate) fn take(&self) -> Option<T> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keep `buffer` for the next [`Spare::take`], unless enough are kept.
    pub(crate) fn give_back(&self, buffer: T) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < self.keep {
            kept.push(buffer);
        }
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.kept.lock().unwrap().len()
    }
}

pub(crate) struct Batches {
    size: usize,
    spare: Spare<Batch>,
}

impl Batches {
    /// Buffers of `size` bytes, at most `keep` of them kept.
    pub(crate) fn new(size: usize, keep: usize) -> Self {
        Batches {
            size,
            spare: Spare::new(keep),
        }
    }

    /// An empty buffer of the batch size: a kept one if there is one.
    pub(crate) fn take(&self) -> Batch {
        self.spare
            .take()
            .unwrap_or_else(|| Batch::with_capacity(self.size))
    }

    /// Keep `batch` (emptied) for the next [`Batches::take`], unless enough are kept.
    pub(crate) fn give_back(&self, mut batch: Batch) {
        batch.clear();
        self.spare.give_back(batch);
    }

    /// How many empty buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.spare.kept()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch is aligned, holds what was pushed up to its capacity, drops from its
    /// front, and an empty one is aligned too.
    #[test]
    fn a_batch_is_aligned_and_holds_what_was_pushed() {
        let mut b = Batch::with_capacity(3 * ALIGN);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        let data: Vec<u8> = (0..4 * ALIGN).map(|i| (i % 251) as u8).collect();
        assert_eq!(b.push(&data[..100]), 100);
        assert_eq!(b.push(&data[100..]), 3 * ALIGN - 100);
        assert!(b[..] == data[..3 * ALIGN]);
        b.drop_front(ALIGN + 7);
        assert!(b[..] == data[ALIGN + 7..3 * ALIGN]);
        b.clear();
        assert!(b.is_empty() && b.capacity() == 3 * ALIGN);
        let e = Batch::default();
        assert!(e.is_empty() && e.capacity() == 0);
        assert_eq!(e.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    #[should_panic(expected = "overflowed")]
    fn overfilling_a_batch_panics() {
        Batch::with_capacity(10).extend_from_slice(&[0; 11]);
    }
}
