//! Empty byte buffers of one size, kept for reuse: the writers that take a producer's
//! bytes on another thread (`connect::sink`, [`super::BackgroundWriter`]) copy them into
//! such batches, and a batch written comes back here instead of to the allocator (a fresh
//! half-MiB buffer each time is a page fault per 4 KiB of it). [`Spare`] is the keeping
//! itself, also used for `OutFile`'s aligned staging buffers.

use std::sync::Mutex;

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
    spare: Spare<Vec<u8>>,
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
    pub(crate) fn take(&self) -> Vec<u8> {
        self.spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Keep `batch` (emptied) for the next [`Batches::take`], unless enough are kept.
    pub(crate) fn give_back(&self, mut batch: Vec<u8>) {
        batch.clear();
        self.spare.give_back(batch);
    }

    /// How many empty buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.spare.kept()
    }
}
