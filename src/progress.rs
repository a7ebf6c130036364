//! Progress reports for long operations, and cancellation.
//!
//! Operations take `&mut dyn FnMut(&Progress) -> bool`; returning `false` cancels the
//! operation, which then fails with [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)
//! and leaves no output anything would trust: Prepare, Export, sample data and Import
//! leave nothing; Connect keeps only what a re-run resumes from (`.sct-partial` files,
//! verified content files, no `manifest.json` for an unfinished pack; see
//! [`crate::connect::connect`]). Callbacks always run on the caller's thread; a write
//! they make to the site database their operation is writing fails at once
//! ([`crate::site::reentry`]).

use serde::Serialize;

/// Which step a progress report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u32)]
pub enum Phase {
    Prepare = 1,
    Export = 2,
    Upload = 3,
    Download = 4,
    /// Bytes hashed: Connect re-checking files on disk, Import checking while staging.
    Verify = 5,
    /// Bytes of verified packs recorded and moved into the content library.
    Import = 6,
    Generate = 7,
}

#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub phase: Phase,
    /// What is being worked on now (a file name, a package GUID); may be empty.
    pub item: String,
    /// Units (bytes or rows) done for the current item, and its total (0 when unknown).
    pub item_done: u64,
    pub item_total: u64,
    /// Units done overall, and the overall total (0 when unknown).
    pub done: u64,
    pub total: u64,
}

/// A callback that never cancels, for callers that do not want progress.
pub fn ignore(_: &Progress) -> bool {
    true
}

/// The callback type every long operation takes.
pub type ProgressFn<'a> = &'a mut dyn FnMut(&Progress) -> bool;
