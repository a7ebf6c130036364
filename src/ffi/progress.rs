//! Progress callbacks: the library's `FnMut(&Progress) -> bool` seen from C.

use crate::progress::Progress;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

/// One progress report, valid only during the callback that receives it.
///
/// `phase` and its unit: 1 Prepare and 2 Export (rows written so far, out of the rows
/// that leave the site), 3 Upload (bytes sent), 4 Download (bytes received or already on
/// disk), 5 Verify (bytes hashed: Connect checking files already on disk, Import
/// checking every file while staging it), 6 Import (bytes of the verified packs recorded
/// and moved into the content library), 7 Generate (sample rows inserted). Reports come
/// as the work goes, not only at its ends; within a phase `done` never decreases. A
/// total of 0 means unknown.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct sct_progress {
    /// Which step is running (see above).
    pub phase: u32,
    /// What is being worked on (a file name, a package GUID), UTF-8, possibly empty;
    /// never NULL. Owned by the library and valid only until the callback returns.
    pub item: *const c_char,
    /// Units done for the current item, and its total (0 when unknown).
    pub item_done: u64,
    pub item_total: u64,
    /// Units done overall, and the overall total (0 when unknown).
    pub done: u64,
    pub total: u64,
}

/// A progress callback: called on the thread that made the call, during the call, never
/// concurrently. Return 0 to continue, non-zero to cancel: the operation then stops and
/// returns `SCT_CANCELLED`, leaving what its function says (nothing, except Connect's
/// resumable downloads: see `sct_connect`). `user_data` is passed through untouched.
/// The callback may call other `sct_` functions (a write to the site database being
/// written by this operation fails at once with `SCT_BUSY`); it must not unwind through
/// the library (no C++ exception or `longjmp` out of it).
#[allow(non_camel_case_types)]
pub type sct_progress_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const sct_progress) -> c_int>;

/// Adapts a C callback (possibly NULL) to the library's progress closure.
pub(crate) struct ProgressBridge {
    cb: sct_progress_cb,
    user_data: *mut c_void,
    /// The last item's C string, reused while the item stays the same.
    item: CString,
    item_text: String,
}

impl ProgressBridge {
    pub fn new(cb: sct_progress_cb, user_data: *mut c_void) -> Self {
        ProgressBridge {
            cb,
            user_data,
            item: CString::default(),
            item_text: String::new(),
        }
    }

    /// Forward one report; `false` (cancel) when the callback returned non-zero.
    pub fn report(&mut self, p: &Progress) -> bool {
        let Some(cb) = self.cb else { return true };
        if p.item != self.item_text {
            self.item = super::strings::lossless_c_string(&p.item);
            self.item_text.clone_from(&p.item);
        }
        let report = sct_progress {
            phase: p.phase as u32,
            item: self.item.as_ptr(),
            item_done: p.item_done,
            item_total: p.item_total,
            done: p.done,
            total: p.total,
        };
        // SAFETY: the caller supplied `cb` for exactly this use; `report` and the item
        // string outlive the call.
        unsafe { cb(self.user_data, &report) == 0 }
    }
}
