//! The whole service suite (`service.rs`) again, with every test store's catalog in its
//! own database of a real PostgreSQL server (see `tests/common/postgres.rs`): the
//! harness switches on this target's name.

#[path = "service.rs"]
mod suite;
