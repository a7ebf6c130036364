//! The whole service suite (`service.rs`) again on the scaled-out engines together: every
//! test store's catalog in its own database of a real PostgreSQL server (see
//! `tests/common/postgres.rs`) and its content, manifests, signatures and received
//! uploads in its own prefix of a real S3-compatible server (`s3s-fs`, see
//! `tests/common/s3.rs`). The harness switches on this target's name. The tests look at
//! the stored objects through the folder s3s-fs keeps them in
//! (`TestStore::content_root`), whose layout is the store folder's.
// PostgreSQL, haproxy and s3s-fs test servers run on Unix only.
#![cfg(unix)]

#[path = "service.rs"]
mod suite;
