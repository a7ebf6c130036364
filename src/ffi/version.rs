//! Library and ABI versions.

use super::panic::guard;
use std::os::raw::c_char;

/// The C ABI's version: bumped whenever a signature, struct layout, status value or
/// result shape changes incompatibly. Compare `sct_abi_version()` with the
/// `SCT_ABI_VERSION` of the header you compiled against.
pub const SCT_ABI_VERSION: u32 = 1;

static VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version, e.g. `"0.1.0"`. Static: do not free.
#[no_mangle]
pub extern "C" fn sct_version() -> *const c_char {
    guard(c"".as_ptr(), || VERSION_C.as_ptr().cast())
}

/// The C ABI version of the loaded library (see `SCT_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn sct_abi_version() -> u32 {
    SCT_ABI_VERSION
}
