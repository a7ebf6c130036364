//! The whole service suite (`service.rs`) again, with every test store's catalog in its
//! own database of a real PostgreSQL server (see `tests/common/postgres.rs`): the
//! harness switches on this target's name.
// PostgreSQL, haproxy and s3s-fs test servers run on Unix only.
#![cfg(unix)]

#[path = "service.rs"]
mod suite;
