//! Starting a test's child processes: [`Start`] adds `spawn_retrying`, `output_retrying`
//! and `status_retrying` to [`Command`].
//!
//! Why: under Wine (the Windows test run, `.ci/wine-run`) starting a process now and then
//! fails before the new process runs a line of its program. Wine's `NtCreateUserProcess`
//! waits for the child to report that its start-up is done; when the child goes away
//! without reporting a status it returns `STATUS_INTERNAL_ERROR`, which `CreateProcessW`
//! hands on as `ERROR_INTERNAL_ERROR` (1359). CI met it in the import crash test, which
//! starts many children in a row (that test retried it first), and on 2 December 2026 on
//! another machine in `original_flow`'s second start of the tool; here it did not come
//! back in 1,000 starts with four starting at once nor in 60 runs of that test under load.
//! A child that never got to its program has done nothing, so the Windows build retries
//! that one error (a few times, saying so on standard error); every other error, and
//! every error on Linux, is returned at once.
//! Include with `#[path = "common/start.rs"] mod start;` and `use start::Start;`.
#![allow(dead_code)]

use std::io;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::Duration;

/// `ERROR_INTERNAL_ERROR`: what Wine's process creation fails with when the new process
/// ends during Wine's own start-up.
pub const WINE_START_FAILURE: i32 = 1359;

/// How many times a start is tried in all.
pub const ATTEMPTS: u32 = 5;

/// Starting a [`Command`], retrying Wine's start-up failure (see the module's comment).
pub trait Start {
    /// [`Command::spawn`], retried on Wine's start-up failure.
    fn spawn_retrying(&mut self) -> io::Result<Child>;
    /// [`Command::output`], retried on Wine's start-up failure.
    fn output_retrying(&mut self) -> io::Result<Output>;
    /// [`Command::status`], retried on Wine's start-up failure.
    fn status_retrying(&mut self) -> io::Result<ExitStatus>;
}

impl Start for Command {
    fn spawn_retrying(&mut self) -> io::Result<Child> {
        let what = format!("{self:?}");
        retry_start(&what, cfg!(windows), || self.spawn())
    }

    fn output_retrying(&mut self) -> io::Result<Output> {
        let what = format!("{self:?}");
        retry_start(&what, cfg!(windows), || self.output())
    }

    fn status_retrying(&mut self) -> io::Result<ExitStatus> {
        let what = format!("{self:?}");
        retry_start(&what, cfg!(windows), || self.status())
    }
}

/// Runs `start` up to [`ATTEMPTS`] times while it fails with [`WINE_START_FAILURE`] (only
/// when `retry` is set: on Windows); returns its first success or its last error.
pub fn retry_start<T>(
    what: &str,
    retry: bool,
    mut start: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(e)
                if retry && e.raw_os_error() == Some(WINE_START_FAILURE) && attempt < ATTEMPTS =>
            {
                eprintln!(
                    "start.rs: {what} did not start ({e}: Wine's start-up of the new process \
                     failed); attempt {} of {ATTEMPTS}",
                    attempt + 1
                );
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                attempt += 1;
            }
            other => return other,
        }
    }
}
