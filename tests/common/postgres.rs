//! A real PostgreSQL server for tests: Debian's PostgreSQL (15) binaries, `initdb` into
//! a temporary folder (as the `postgres` user when the tests run as root, since the
//! server refuses to run as root), `pg_ctl start` on a free 127.0.0.1 port with TLS on
//! (a private test CA, so clients verify the certificate) and password (SCRAM) logins
//! over TCP. One server per test process, started on first use (about a second) and
//! stopped with the process (an `atexit` hook: `pg_ctl stop -m immediate`, then the
//! folder is removed). Each caller gets its own fresh database.
//!
//! The binaries are found in `SCT_TEST_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, which `.ci/setup`
//! installs); a missing server is a clear panic, never a skip.
#![allow(dead_code)]

// Suites that include tls.rs themselves load it twice; both copies are the same helpers.
#[allow(clippy::duplicate_mod)]
#[path = "tls.rs"]
pub mod pg_tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The login every test database belongs to (a superuser of the throwaway cluster).
pub const USER: &str = "sct";

pub struct PgServer {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    ca: PathBuf,
    password: String,
    as_postgres: bool,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The process's server, started on first use.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(|| {
        let s = PgServer::start();
        // SAFETY: registering a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(stop_at_exit) };
        s
    })
}

extern "C" fn stop_at_exit() {
    if let Some(s) = SERVER.get() {
        s.stop();
    }
}

fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCT_TEST_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb \
             (apt-get install postgresql, or set SCT_TEST_PG_BINDIR)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether this process runs as root (then the server runs as `postgres`).
fn is_root() -> bool {
    #[cfg(unix)]
    // SAFETY: geteuid has no preconditions.
    return unsafe { libc::geteuid() } == 0;
    #[cfg(not(unix))]
    return false;
}

/// The `postgres` account's uid and gid.
#[cfg(unix)]
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, but there is no 'postgres' user to run the test server as"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl PgServer {
    fn start() -> PgServer {
        let bindir = bindir();
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("sct-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let data = root.join("data");
        let socket_dir = root.join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        // TLS material: the server's key must be the server user's, mode 0600.
        std::fs::create_dir_all(root.join("tls")).unwrap();
        let ca = pg_tls::make_test_ca(&root.join("tls"), pg_tls::TestCaOpts::fresh());
        let server_cert = root.join("server.pem");
        let server_key = root.join("server.key");
        std::fs::copy(&ca.cert, &server_cert).unwrap();
        std::fs::copy(&ca.key, &server_key).unwrap();
        set_mode(&server_key, 0o600);
        #[cfg(unix)]
        if as_postgres {
            let (uid, gid) = postgres_ids();
            for p in [&root, &socket_dir, &pwfile, &server_cert, &server_key] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
            }
            // The CA file is read by the tests (root) only.
        }
        let s = PgServer {
            root: root.clone(),
            data: data.clone(),
            socket_dir: socket_dir.clone(),
            bindir,
            port: 0,
            ca: ca.ca.clone(),
            password,
            as_postgres,
        };
        let out = s
            .server_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // TCP logins only with TLS (hostssl), so a plain connection is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        // A free port can be taken between our probe and the server's bind: retry.
        let mut s = s;
        for attempt in 0..5 {
            s.port = free_port();
            let opts = format!(
                "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                s.port,
                socket_dir.display(),
                server_cert.display(),
                server_key.display()
            );
            let out = s
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(root.join("server.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"])
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return s;
            }
            if attempt == 4 {
                panic!(
                    "pg_ctl start failed: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(root.join("server.log")).unwrap_or_default()
                );
            }
        }
        unreachable!()
    }

    /// A server binary, run as `postgres` when we are root.
    fn server_cmd(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn stop(&self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of [`USER`], for `PGPASSWORD` (never on a command line).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA that signed the server's certificate (`sslrootcert`).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Run SQL as the superuser over the Unix socket (trust); returns psql's output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A fresh, empty database; returns its name.
    pub fn create_database(&self) -> String {
        let name = format!(
            "sct_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// The `--catalog` URL of database `db`: verified TLS against the test CA.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{db}?sslmode=require&sslrootcert={}",
            self.port,
            self.ca.display()
        )
    }
}

fn set_mode(p: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = (p, mode);
}
