//! Empty byte buffers of one size, kept for reuse: the writers that take a producer's
//! bytes on another thread (`connect::sink`, [`super::BackgroundWriter`]) copy them into
//! such batches, and a batch written comes back here instead of to the allocator (a fresh
//! half-MiB buffer each time is a page fault per 4 KiB of it).

use std::sync::Mutex;

pub(crate) struct Batches {
    size: usize,
    /// Empty buffers kept at most (more are freed).
    keep: usize,
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Batches {
    /// Buffers of `size` bytes, at most `keep` of them kept.
    pub(crate) fn new(size: usize, keep: usize) -> Self {
        Batches {
            size,
            keep,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer of the batch size: a kept one if there is one.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        spare.pop().unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Keep `batch` (emptied) for the next [`Batches::take`], unless enough are kept.
    pub(crate) fn give_back(&self, mut batch: Vec<u8>) {
        batch.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < self.keep {
            spare.push(batch);
        }
    }

    /// How many empty buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.spare.lock().unwrap().len()
    }
}
