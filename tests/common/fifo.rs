//! FIFOs planted where a file is expected, and a watchdog that keeps a test of code that
//! must never wait on one from hanging when it does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Make a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// From `after` on, until dropped, opens each FIFO at `paths` for reading and for writing
/// without blocking, over and over: whoever waits in `open` on one of them (a reader for
/// a writer, or the other way round) is let go, so the test fails on what it then gets
/// (an empty read, a broken pipe) instead of hanging.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(paths: Vec<PathBuf>, after: Duration) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let start = Instant::now();
            while !s.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                if start.elapsed() < after {
                    continue;
                }
                for p in &paths {
                    let open = |write: bool| {
                        std::fs::OpenOptions::new()
                            .read(!write)
                            .write(write)
                            .custom_flags(libc::O_NONBLOCK)
                            .open(p)
                    };
                    let reading = open(false);
                    drop(open(true));
                    drop(reading);
                }
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
