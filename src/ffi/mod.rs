//! The C ABI (issue 6).
