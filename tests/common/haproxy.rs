//! A real load balancer for replica tests: Debian's `haproxy` in the foreground on a free
//! 127.0.0.1 port, in front of `sct-service` replicas, health-checking each with
//! `GET /v1/ready`, retrying refused connections on another replica (`option
//! redispatch`), and naming the replica that answered in an `X-Replica` header.
//! Stopped (killed) on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Balancer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

/// How requests are spread.
#[derive(Clone, Copy)]
pub enum Balance {
    /// Each new connection to the next replica.
    RoundRobin,
    /// Every connection to the first replica that is up (so a test knows which replica
    /// serves, and which to kill).
    First,
}

impl Balancer {
    /// Balance across the replicas at `backends` (`http://127.0.0.1:PORT` URLs).
    pub fn start(backends: &[&str], balance: Balance) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut cfg = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  \
             retries 3\n  option redispatch\n  timeout check 5s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
             backend replicas\n  balance {}\n  option httpchk GET /v1/ready\n  http-check expect status 200\n  \
             default-server inter 300ms fall 2 rise 1 maxconn 1000\n  http-response set-header X-Replica %s\n",
            match balance {
                Balance::RoundRobin => "roundrobin",
                Balance::First => "first",
            }
        );
        for (i, b) in backends.iter().enumerate() {
            let addr = b.strip_prefix("http://").expect("plain http replicas");
            cfg.push_str(&format!("  server r{i} {addr} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("haproxy is installed (apt-get install haproxy)");
        assert!(
            check.status.success(),
            "haproxy refuses the configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .spawn()
            .expect("start haproxy");
        let b = Balancer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        b.wait_listening(port);
        // With `first`, only the first replica answers while it is up.
        b.wait_all_up(match balance {
            Balance::RoundRobin => backends.len(),
            Balance::First => 1,
        });
        b
    }

    /// Until every replica has answered a `GET /v1/ready` through the balancer (its
    /// health checks have found them all up), so a test starts with all of them in use.
    fn wait_all_up(&self, n: usize) {
        let addr = self.url.strip_prefix("http://").unwrap().to_string();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            if let Some(r) = ready_via(&addr) {
                seen.insert(r);
                if seen.len() == n {
                    return;
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        panic!(
            "only {seen:?} of {n} replicas came up behind haproxy: {}",
            self.log()
        );
    }

    /// Until the frontend accepts connections (haproxy binds right after parsing).
    fn wait_listening(&self, port: u16) {
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "haproxy did not start listening on port {port}: {}",
            self.log()
        );
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(Path::new(self._dir.path()).join("haproxy.log")).unwrap_or_default()
    }
}

/// `GET /v1/ready` through the balancer: the `X-Replica` that answered 200, if any.
fn ready_via(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /v1/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    if !out.starts_with("HTTP/1.1 200") {
        return None;
    }
    out.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-replica: ")
            .map(str::to_owned)
    })
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
