//! A real S3-compatible server for the content-store tests: `s3s-fs` (crates.io, 0.14.1),
//! which keeps objects in a folder and checks every request's SigV4 signature and every
//! presigned URL. `.ci/setup` installs it into `target/tools/bin/` and, for the Windows
//! tests under Wine, its Windows build into `target/x86_64-pc-windows-gnu/tools/bin/`;
//! `SCT_S3S_FS` (`SCT_S3S_FS_WINDOWS` for the Windows build) names another copy. A
//! missing binary is a clear panic, never a silent skip.
//! Include with `#[path = ".../common/s3.rs"] mod s3;`.
#![allow(dead_code)]

#[path = "start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use start::Start;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The test server's credentials (a throw-away server on loopback).
pub const ACCESS_KEY: &str = "sct-test-access";
pub const SECRET_KEY: &str = "sct-test-secret-0123456789";
/// The bucket every test server starts with.
pub const BUCKET: &str = "sct-content";

/// Where `s3s-fs` is: `$SCT_S3S_FS`, else `tools/bin/s3s-fs` in the target folder of
/// this build (`target/`, or `target/<triple>/` when cross-built: the Windows tests find
/// `target/x86_64-pc-windows-gnu/tools/bin/s3s-fs.exe`).
pub fn s3s_fs_bin() -> PathBuf {
    // Its own variable on Windows: the Linux copy that SCT_S3S_FS may name is inherited
    // by the Windows tests under Wine, which must not run it.
    let var = if cfg!(windows) {
        "SCT_S3S_FS_WINDOWS"
    } else {
        "SCT_S3S_FS"
    };
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target[/<triple>]/<profile>/deps/<test> -> target[/<triple>]/
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable sits in target/<profile>/deps");
    let bin = target.join(format!("tools/bin/s3s-fs{}", std::env::consts::EXE_SUFFIX));
    let triple = if cfg!(windows) {
        " --target x86_64-pc-windows-gnu"
    } else {
        ""
    };
    assert!(
        bin.is_file(),
        "{} is missing: run .ci/setup (cargo install --locked{triple} --root {} s3s-fs@0.14.1 --features binary) or set {var}",
        bin.display(),
        target.join("tools").display()
    );
    bin
}

static SHARED: OnceLock<S3Server> = OnceLock::new();
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// One server for the whole test process, started on first use and stopped when the
/// process exits (an `atexit` hook: the process is killed, its folder removed). Callers
/// keep apart by prefix ([`unique_prefix`]).
pub fn shared() -> &'static S3Server {
    SHARED.get_or_init(|| {
        let s = S3Server::start();
        // SAFETY: registering a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(stop_shared_at_exit) };
        s
    })
}

extern "C" fn stop_shared_at_exit() {
    if let Some(s) = SHARED.get() {
        // SAFETY: plain kill(2) of our own child's pid; statics are never dropped.
        #[cfg(unix)]
        unsafe {
            libc::kill(s.child.id() as libc::pid_t, libc::SIGKILL);
        }
        #[cfg(windows)]
        {
            use std::os::windows::io::AsRawHandle;
            #[link(name = "kernel32")]
            extern "system" {
                fn TerminateProcess(process: *mut std::ffi::c_void, code: u32) -> i32;
            }
            // SAFETY: our own child's process handle, still open (the Child is never dropped).
            unsafe { TerminateProcess(s.child.as_raw_handle(), 1) };
        }
        let _ = std::fs::remove_dir_all(s.dir.path());
    }
}

/// A key prefix no other caller in this process uses.
pub fn unique_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `s3s-fs` on 127.0.0.1 with one bucket; killed on drop, its folder removed.
pub struct S3Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).unwrap();
        // s3s-fs takes a port, not port 0: pick a free one, retry if someone else took it.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(s3s_fs_bin())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir.path().join("data"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("s3s-fs.log")).unwrap())
                .spawn_retrying()
                .expect("start s3s-fs");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `AWS_*` variables that point a client at `endpoint` (this server, or a front
    /// before it) with this server's credentials.
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The variables for this server itself.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.url())
    }

    /// The folder s3s-fs keeps the bucket's objects in (`<data>/<bucket>/<key>`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(BUCKET)
    }

    /// Every object key in the bucket, sorted (read from s3s-fs's folder).
    pub fn keys(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    // Object keys are `/`-separated, whatever the platform's paths use.
                    let rel = p.strip_prefix(root).unwrap().components();
                    let parts: Vec<_> = rel.map(|c| c.as_os_str().to_string_lossy()).collect();
                    out.push(parts.join("/"));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.bucket_dir(), &self.bucket_dir(), &mut out);
        out.sort();
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
