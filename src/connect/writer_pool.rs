//! Threads for the download sinks, kept for the next file instead of one started and
//! ended per file.
//!
//! Why: a pack of 1,000 files started and ended 1,000 threads (`strace -c`: 1,014
//! `clone3`, each with its stack mapped, guarded, faulted in and unmapped again). A thread
//! that finishes a file waits [`IDLE_FOR`] for the next one; at most [`MAX_IDLE`] wait, so
//! a run leaves no more than that behind, and none once it has been idle that long.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// Idle threads kept (Connect runs 4 downloads at once by default).
const MAX_IDLE: usize = 8;
/// How long an idle thread waits for another file before it ends.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// Idle threads, each by an id and the sender of its next job. A job is sent while this
/// lock is held, so a thread that finds itself still listed here (under the lock) knows
/// that no job is on its way.
static IDLE: Mutex<Vec<(u64, Sender<Job>)>> = Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Signalled when the job has run (or its thread died: the sender is dropped either way).
/// In a mutex only to be `Sync` (a sink is used from async tasks by reference).
pub(crate) struct Done(Mutex<Receiver<()>>);

impl Done {
    pub(crate) fn wait(self) {
        let rx = self.0.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = rx.recv();
    }
}

/// Run `job` on an idle thread, or on a new one named `name`.
pub(crate) fn run(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<Done> {
    let (done_tx, done_rx) = channel();
    let mut job: Job = Box::new(move || {
        job();
        let _ = done_tx.send(());
    });
    {
        let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((_, tx)) = idle.pop() {
            match tx.send(job) {
                Ok(()) => return Ok(Done(Mutex::new(done_rx))),
                // That thread ended (it panicked): try the next.
                Err(back) => job = back.0,
            }
        }
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || worker(job))?;
    Ok(Done(Mutex::new(done_rx)))
}

fn worker(first: Job) {
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = channel::<Job>();
    let mut job = first;
    loop {
        job();
        {
            let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push((id, tx.clone()));
        }
        job = match rx.recv_timeout(IDLE_FOR) {
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
                match idle.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        idle.swap_remove(at);
                        return;
                    }
                    // Taken (and the job sent) just as the wait ended.
                    None => match rx.try_recv() {
                        Ok(next) => next,
                        Err(_) => return,
                    },
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Jobs run, each `Done` is signalled after its job, and threads are reused: many
    /// jobs in sequence run on far fewer threads than jobs.
    #[test]
    fn jobs_run_and_threads_are_reused() {
        let ran = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for _ in 0..50 {
            let (ran, threads) = (ran.clone(), threads.clone());
            run("sct-test-pool", move || {
                threads.lock().unwrap().insert(std::thread::current().id());
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
            .wait();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        // Other tests may use the pool at the same time; sequential jobs alone would
        // need one thread.
        assert!(threads.lock().unwrap().len() <= MAX_IDLE + 1);
    }

    /// A job that panics ends its thread; `Done` is still signalled and the pool goes on.
    #[test]
    fn a_panicking_job_does_not_hang_its_waiter() {
        run("sct-test-pool", || panic!("job panicked on purpose"))
            .unwrap()
            .wait();
        let (tx, rx) = channel();
        run("sct-test-pool", move || tx.send(7).unwrap())
            .unwrap()
            .wait();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
