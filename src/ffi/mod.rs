//! The C ABI (SPEC section 7): one `sct_` function per operation, declared in the
//! cbindgen-generated `include/serviceconnection.h` (regenerate with
//! `SCT_BLESS=1 cargo test --test ffi_header`).
//!
//! Conventions, after rustls-ffi: every operation returns an [`sct_status`]; pointer
//! arguments are NULL-checked and strings UTF-8-checked; out-parameters are written only
//! on success; every body runs inside a panic boundary ([`panic`]); a failure's message is
//! kept per thread ([`error`]); results are JSON strings the caller frees with
//! `sct_string_free`. No global mutable state: concurrent calls from different threads
//! are independent (calls on one site are serialised by SQLite's locking).
//!
//! This layer stays thin: it converts arguments and results, and all logic lives in the
//! library modules it calls.

pub mod connect;
pub mod console;
pub mod error;
pub mod import;
pub mod panic;
pub mod progress;
pub mod site;
pub mod status;
pub mod strings;
pub mod trust;
pub mod usage;
pub mod version;

pub use progress::{sct_progress, sct_progress_cb};
pub use status::sct_status;
pub use usage::sct_usage_row_cb;
pub use version::SCT_ABI_VERSION;
