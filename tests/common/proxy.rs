//! Network middlemen for Connect's tests: the real `tinyproxy` (Debian package) run in the
//! foreground on 127.0.0.1, with or without BasicAuth; and a tiny "flaky" TCP front on
//! 127.0.0.1 that sits before the real update service and fails chosen requests on purpose
//! (drops the connection, answers 5xx/429, cuts a body short). The front is test-only
//! plumbing for fault injection: every byte it passes comes from the real service.
//! Include with `#[path = "common/proxy.rs"] mod proxy;`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `tinyproxy -d`; killed on drop.
pub struct TinyProxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyProxy {
    /// Start tinyproxy on a free port; `auth` = Some((user, password)) enables BasicAuth.
    pub fn start(auth: Option<(&str, &str)>) -> TinyProxy {
        for _ in 0..5 {
            if let Some(p) = Self::try_start(auth) {
                return p;
            }
        }
        panic!("tinyproxy did not start");
    }

    fn try_start(auth: Option<(&str, &str)>) -> Option<TinyProxy> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nLogLevel Info\n\
             LogFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display()
        );
        if let Some((u, p)) = auth {
            conf.push_str(&format!("BasicAuth {u} {p}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (apt-get install tinyproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // port taken meanwhile, most likely
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(TinyProxy {
                    child,
                    port,
                    log,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as `-proxyserveruri` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the flaky front does with one request whose path matches.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward to the real service.
    Pass,
    /// Read the request, then close the connection without an answer.
    Drop,
    /// Answer this status (no body), with `Retry-After: secs` if given.
    Status(u16, Option<u32>),
    /// Forward, but pass only this many bytes of the answer (headers included), then close.
    Truncate(usize),
    /// Forward this many bytes of the answer, then go silent with the connection still
    /// open (until the client gives up or a minute passes).
    Stall(usize),
    /// Forward without the `Range` and `If-Range` headers (a server that ignores ranges).
    StripRange,
    /// Answer this status and body instead of the service.
    Respond(u16, Vec<u8>),
}

/// A TCP front before the real service. Every request gets `Connection: close`, so each
/// request is one connection and the front sees every request.
pub struct Flaky {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
}

struct Plan {
    /// Requests whose path contains this are subject to the plan.
    matching: String,
    queue: VecDeque<Action>,
    /// What to do with matching requests once the queue is empty.
    then: Action,
}

impl Flaky {
    /// Start a front forwarding to `backend` (`http://127.0.0.1:PORT`). Requests whose path
    /// contains `matching` get the `actions` in order, then `then` for ever after.
    pub fn start(backend: &str, matching: &str, actions: Vec<Action>, then: Action) -> Flaky {
        let backend = backend
            .strip_prefix("http://")
            .expect("plain http backend")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(Plan {
            matching: matching.to_string(),
            queue: actions.into(),
            then,
        }));
        let h = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (h, plan, backend) = (h.clone(), plan.clone(), backend.clone());
                std::thread::spawn(move || serve(conn, &backend, &h, &plan));
            }
        });
        Flaky { addr, heads }
    }

    /// `http://127.0.0.1:PORT` of the front.
    pub fn url(&self) -> &str {
        &self.addr
    }

    /// The request heads seen so far (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Requests seen whose request line contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.heads()
            .iter()
            .filter(|h| h.lines().next().unwrap_or("").contains(needle))
            .count()
    }
}

fn serve(mut client: TcpStream, backend: &str, heads: &Mutex<Vec<String>>, plan: &Mutex<Plan>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end..].to_vec();
    heads.lock().unwrap().push(head.clone());
    let request_line = head.lines().next().unwrap_or("").to_string();
    let action = {
        let mut p = plan.lock().unwrap();
        if request_line.contains(&p.matching) {
            p.queue.pop_front().unwrap_or_else(|| p.then.clone())
        } else {
            Action::Pass
        }
    };
    match action {
        Action::Drop => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Action::Status(code, retry_after) => {
            let mut resp =
                format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n");
            if let Some(s) = retry_after {
                resp.push_str(&format!("Retry-After: {s}\r\n"));
            }
            resp.push_str("\r\n");
            let _ = client.write_all(resp.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
        }
        Action::Respond(code, body) => {
            let resp = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = client.write_all(resp.as_bytes());
            let _ = client.write_all(&body);
            let _ = client.shutdown(Shutdown::Both);
        }
        Action::Pass => forward(client, backend, &head, &rest, usize::MAX, false),
        Action::Truncate(n) => forward(client, backend, &head, &rest, n, false),
        Action::Stall(n) => forward(client, backend, &head, &rest, n, true),
        Action::StripRange => {
            let stripped: String = head
                .split_inclusive("\r\n")
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    !l.starts_with("range:") && !l.starts_with("if-range:")
                })
                .collect();
            forward(client, backend, &stripped, &rest, usize::MAX, false)
        }
    }
}

fn forward(
    mut client: TcpStream,
    backend: &str,
    head: &str,
    rest: &[u8],
    limit: usize,
    stall: bool,
) {
    let Ok(mut up) = TcpStream::connect(backend) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let mut new_head = String::new();
    for line in head.trim_end_matches("\r\n\r\n").split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str("Connection: close\r\n\r\n");
    if up.write_all(new_head.as_bytes()).is_err() || up.write_all(rest).is_err() {
        return;
    }
    // Client → service (request bodies) on a thread; service → client here.
    let (mut c_read, mut u_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
    });
    let mut passed = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while passed < limit {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - passed),
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        passed += n;
    }
    if stall {
        // Silent but open: wait for the client to hang up.
        let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
        let mut sink = [0u8; 1024];
        while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
}
