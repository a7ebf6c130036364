//! Threads for the download sinks of one Connect run, kept for the next file instead of
//! one started and ended per file, and all ended before the run returns.
//!
//! Why: a pack of 1,000 files started and ended 1,000 threads (`strace -c`: 1,014
//! `clone3`, each with its stack mapped, guarded, faulted in and unmapped again). A thread
//! that finishes a file waits up to [`IDLE_FOR`] for the next one; at most [`MAX_IDLE`]
//! wait. The pool belongs to the run ([`super::Ctx`]) and [`Pool::close`] ends and joins
//! every thread, so a library caller is left with no thread of ours once `connect`
//! returns (a C program that exits at once stays clean under valgrind).

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// Idle threads kept (Connect runs 4 downloads at once by default, each with a hashing
/// and a writing thread).
const MAX_IDLE: usize = 8;
/// How long an idle thread waits for another file before it ends.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// The writer threads of one run.
pub(crate) struct Pool {
    state: Arc<Mutex<State>>,
    idle_for: Duration,
}

#[derive(Default)]
struct State {
    /// Idle threads, each by an id and the sender of its next job. A job is sent while
    /// this lock is held, so a thread that finds itself still listed here (under the
    /// lock) knows that no job is on its way. The sender here is the only one: dropping
    /// it ends the thread's wait at once.
    idle: Vec<(u64, Sender<Job>)>,
    /// Every thread started and not yet joined.
    threads: Vec<JoinHandle<()>>,
    next_id: u64,
    closed: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Signalled when the job has run (or its thread died: the sender is dropped either way).
/// In a mutex only to be `Sync`, so that a sink holding it may be shared by reference.
pub(crate) struct Done(Mutex<Receiver<()>>);

impl Done {
    pub(crate) fn wait(self) {
        let rx = self.0.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = rx.recv();
    }

    /// Whether the job has run, waiting up to `wait` for it.
    #[cfg(test)]
    pub(crate) fn ran_within(&self, wait: Duration) -> bool {
        let rx = self.0.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(rx.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool::with_idle_for(IDLE_FOR)
    }

    fn with_idle_for(idle_for: Duration) -> Pool {
        Pool {
            state: Arc::new(Mutex::new(State::default())),
            idle_for,
        }
    }

    /// Run `job` on an idle thread, or on a new one named `name`.
    pub(crate) fn run(
        &self,
        name: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Done> {
        let (done_tx, done_rx) = channel();
        let mut job: Job = Box::new(move || {
            job();
            let _ = done_tx.send(());
        });
        let mut state = lock(&self.state);
        if state.closed {
            return Err(std::io::Error::other("the Connect run has ended"));
        }
        while let Some((_, tx)) = state.idle.pop() {
            match tx.send(job) {
                Ok(()) => return Ok(Done(Mutex::new(done_rx))),
                // That thread ended (it panicked): try the next.
                Err(back) => job = back.0,
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let shared = self.state.clone();
        let idle_for = self.idle_for;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || worker(&shared, id, idle_for, job))?;
        // Threads that ended on their own need no join.
        state.threads.retain(|t| !t.is_finished());
        state.threads.push(handle);
        Ok(Done(Mutex::new(done_rx)))
    }

    /// End every thread: idle ones at once, busy ones after their job. Later `run`s fail.
    pub(crate) fn close(&self) {
        let (idle, threads) = {
            let mut state = lock(&self.state);
            state.closed = true;
            (
                std::mem::take(&mut state.idle),
                std::mem::take(&mut state.threads),
            )
        };
        // Dropping an idle thread's sender ends its wait.
        drop(idle);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn worker(state: &Mutex<State>, id: u64, idle_for: Duration, first: Job) {
    let mut job = first;
    loop {
        job();
        // A new channel for each wait, its one sender in the idle list: closing the pool
        // drops it and the wait ends at once. (A sender kept here as well made `close`
        // wait out IDLE_FOR, 5 s, at the end of every Connect run.)
        let rx = {
            let mut state = lock(state);
            if state.closed || state.idle.len() >= MAX_IDLE {
                return;
            }
            let (tx, rx) = channel::<Job>();
            state.idle.push((id, tx));
            rx
        };
        job = match rx.recv_timeout(idle_for) {
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut state = lock(state);
                match state.idle.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        state.idle.swap_remove(at);
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

    /// Jobs run, each `Done` is signalled after its job, and threads are reused: many
    /// jobs in sequence run on a few threads (a job can arrive between the previous
    /// one's signal and its thread going idle, and then starts a second thread).
    #[test]
    fn jobs_run_and_threads_are_reused() {
        let pool = Pool::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for _ in 0..50 {
            let (ran, threads) = (ran.clone(), threads.clone());
            pool.run("sct-test-pool", move || {
                threads.lock().unwrap().insert(std::thread::current().id());
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
            .wait();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        let used = threads.lock().unwrap().len();
        assert!(used < 10, "50 jobs in sequence took {used} threads");
    }

    /// A job that panics ends its thread; `Done` is still signalled and the pool goes on.
    #[test]
    fn a_panicking_job_does_not_hang_its_waiter() {
        let pool = Pool::new();
        pool.run("sct-test-pool", || panic!("job panicked on purpose"))
            .unwrap()
            .wait();
        let (tx, rx) = channel();
        pool.run("sct-test-pool", move || tx.send(7).unwrap())
            .unwrap()
            .wait();
        assert_eq!(rx.recv().unwrap(), 7);
    }

    /// Closing ends every thread before it returns, idle and busy ones alike (each
    /// thread's thread-local destructor has run), and no job is taken afterwards. Idle
    /// threads end when the pool closes, not when their idle time is up: here that is an
    /// hour, and `close` must return long before.
    #[test]
    fn closing_ends_every_thread() {
        static EXITED: AtomicUsize = AtomicUsize::new(0);
        struct CountExit;
        impl Drop for CountExit {
            fn drop(&mut self) {
                EXITED.fetch_add(1, Ordering::SeqCst);
            }
        }
        thread_local!(static GUARD: CountExit = const { CountExit });
        let pool = Arc::new(Pool::with_idle_for(Duration::from_secs(3600)));
        let (release, wait) = channel::<()>();
        let busy = pool
            .run("sct-test-pool", move || {
                GUARD.with(|_| ());
                let _ = wait.recv();
            })
            .unwrap();
        // Three more that wait for one another, so they run on three more threads, which
        // then go idle.
        let together = Arc::new(std::sync::Barrier::new(3));
        let idle: Vec<Done> = (0..3)
            .map(|_| {
                let together = together.clone();
                pool.run("sct-test-pool", move || {
                    GUARD.with(|_| ());
                    together.wait();
                })
                .unwrap()
            })
            .collect();
        idle.into_iter().for_each(Done::wait);
        release.send(()).unwrap();
        busy.wait();
        let (closed_tx, closed) = channel();
        let closing = pool.clone();
        std::thread::spawn(move || {
            closing.close();
            let _ = closed_tx.send(());
        });
        // A bound for liveness, not speed: with the hour-long idle time, a `close` that
        // waited for idle threads to time out would still be waiting.
        closed
            .recv_timeout(Duration::from_secs(60))
            .expect("close still waits for idle threads after 60 s");
        assert_eq!(EXITED.load(Ordering::SeqCst), 4);
        assert!(pool.run("sct-test-pool", || ()).is_err());
    }
}
