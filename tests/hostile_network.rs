//! Network faults against Connect: a connection reset in the middle of a file, answers
//! whose `Content-Length` or `Content-Range` lie, an expired TLS certificate, and a proxy
//! that drops every connection. Each run must report a clear error of the right kind and
//! leave nothing at a final name that is not whole and verified; where the fault goes
//! away, a re-run completes. (Stalls, 5xx/429, cut bodies, servers ignoring `Range`, and
//! tampered content of the right length are in tests/connect.rs; see tests/HOSTILE.md.)
//!
//! Runs on Windows too (under Wine in CI), except the expired certificate (made with the
//! `openssl` program) and the USB folder removed mid-download (Windows refuses to remove a
//! folder that holds an open file, so the fault cannot be made that way there).

#[path = "common/service.rs"]
mod service;
#[path = "common/site.rs"]
mod site;
#[cfg(unix)]
#[path = "common/tls.rs"]
mod tls;

use serviceconnection::api::PackType;
use serviceconnection::connect::{
    connect, ConnectOptions, ConnectReport, FileStatus, PackStatus, ProxyOptions,
};
use serviceconnection::pack::manifest::{CONTENT_DIR, MANIFEST_FILE};
use serviceconnection::ErrorKind;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const FILE: &str = "payload/big.bin";
const SIZE: usize = 600_000;

struct Scene {
    store: service::TestStore,
    id: uuid::Uuid,
    data: Vec<u8>,
    work: tempfile::TempDir,
    cab: PathBuf,
}

fn scene() -> Scene {
    let store = service::TestStore::new();
    let data = service::pseudo_random(SIZE, 11);
    let content = service::write_content(&store.dir().join("c"), &[(FILE, &data)]);
    let id = store.publish(
        "Big",
        "5.00.9132.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    let work = tempfile::tempdir().unwrap();
    let cab = work.path().join("UsageData.cab");
    service::write_usage_cab(&cab, site::HIERARCHY.parse().unwrap(), site::SITE_VERSION);
    Scene {
        store,
        id,
        data,
        work,
        cab,
    }
}

impl Scene {
    fn opts(&self, dest: &Path, uri: &str) -> ConnectOptions {
        let mut o = ConnectOptions::new(&self.cab, dest, uri);
        o.max_attempts = 3;
        o.retry_base_delay_ms = 10;
        o
    }
    fn final_path(&self, dest: &Path) -> PathBuf {
        dest.join(site::HIERARCHY)
            .join(self.id.to_string())
            .join(CONTENT_DIR)
            .join(FILE)
    }
    /// Nothing unverified at a final name: the content file and the manifest are either
    /// absent or exactly right, and the manifest only beside complete content.
    fn check_final_names(&self, dest: &Path) {
        let f = self.final_path(dest);
        if f.exists() {
            assert_eq!(
                std::fs::read(&f).unwrap(),
                self.data,
                "an unverified file at {f:?}"
            );
        }
        let m = dest
            .join(site::HIERARCHY)
            .join(self.id.to_string())
            .join(MANIFEST_FILE);
        if m.exists() {
            assert!(f.exists(), "a manifest beside incomplete content");
        }
    }
}

fn the_pack(r: &ConnectReport, id: uuid::Uuid) -> &serviceconnection::connect::PackReport {
    r.packs
        .iter()
        .find(|p| p.package_guid == id)
        .expect("pack in the report")
}

/// What the fault injector does to answers for the content file.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Send the head and this many body bytes, then reset the connection (RST).
    ResetAfter(usize),
    /// Declare a `Content-Length` this much smaller than the body, and send all of it.
    LengthTooSmall(usize),
    /// Declare a `Content-Length` this much larger than the body, send the body, close.
    LengthTooLarge(usize),
    /// For a 206 answer, claim the range starts at 0 (the body is still the asked range).
    RangeStartsAtZero,
    /// Send the head and this many body bytes, then wait until the test releases the
    /// front (`FaultFront::release`), then send the rest.
    #[cfg_attr(not(unix), allow(dead_code))] // its test is Unix-only
    PauseAfter(usize),
}

/// 0 running, 1 paused (answer held), 2 released.
type Gate = Arc<(Mutex<u8>, std::sync::Condvar)>;

/// A deliberate fault injector: an HTTP/1.1 front on 127.0.0.1 before the real update
/// service. Requests whose path contains `matching` have their answer fetched whole from
/// the service and then damaged by the `Fault`; everything else passes unchanged.
struct FaultFront {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    gate: Gate,
}

impl FaultFront {
    fn start(backend: &str, matching: &'static str, fault: Fault) -> FaultFront {
        let backend = backend.strip_prefix("http://").unwrap().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate: Gate = Arc::new((Mutex::new(0), std::sync::Condvar::new()));
        let (s, g) = (seen.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(c) = conn else { break };
                let (b, s, g) = (backend.clone(), s.clone(), g.clone());
                std::thread::spawn(move || front_serve(c, &b, matching, fault, &s, &g));
            }
        });
        FaultFront { addr, seen, gate }
    }
    /// Block until a `PauseAfter` answer is being held.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn wait_paused(&self) {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        while *g == 0 {
            g = cv.wait(g).unwrap();
        }
    }
    /// Let held answers continue (and later ones pass without pausing).
    #[cfg_attr(not(unix), allow(dead_code))]
    fn release(&self) {
        let (m, cv) = &*self.gate;
        *m.lock().unwrap() = 2;
        cv.notify_all();
    }
    /// Request heads for paths containing `needle`.
    fn requests(&self, needle: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.lines().next().unwrap_or("").contains(needle))
            .cloned()
            .collect()
    }
}

fn read_head(s: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn front_serve(
    mut client: TcpStream,
    backend: &str,
    matching: &str,
    fault: Fault,
    seen: &Mutex<Vec<String>>,
    gate: &Gate,
) {
    let Some((head, rest)) = read_head(&mut client) else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    seen.lock().unwrap().push(head.clone());
    // Forward with `Connection: close`, so the answer ends where the service closes.
    let mut fwd = String::new();
    for line in head.trim_end().split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            fwd.push_str(line);
            fwd.push_str("\r\n");
        }
    }
    fwd.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = TcpStream::connect(backend) else {
        return;
    };
    up.write_all(fwd.as_bytes()).unwrap();
    up.write_all(&rest).unwrap();
    let request_line = head.lines().next().unwrap_or("").to_string();
    if !request_line.contains(matching) || request_line.starts_with("POST") {
        // Plain pass-through (uploads stream their body after the head).
        let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
        });
        let _ = std::io::copy(&mut up, &mut client);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (ahead, body) = answer.split_at(split);
    let ahead = String::from_utf8_lossy(ahead).into_owned();
    let rewrite = |f: &dyn Fn(&str) -> Option<String>| -> String {
        let mut out = String::new();
        for line in ahead.trim_end().split("\r\n") {
            out.push_str(&f(line).unwrap_or_else(|| line.to_string()));
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out
    };
    let is = |line: &str, name: &str| line.to_ascii_lowercase().starts_with(name);
    match fault {
        Fault::ResetAfter(n) => {
            let _ = client.write_all(ahead.as_bytes());
            let _ = client.write_all(&body[..n.min(body.len())]);
            reset_on_close(&client);
            drop(client);
            return;
        }
        Fault::LengthTooSmall(k) => {
            let h = rewrite(&|l| {
                is(l, "content-length:")
                    .then(|| format!("content-length: {}", body.len().saturating_sub(k)))
            });
            let _ = client.write_all(h.as_bytes());
            let _ = client.write_all(body);
        }
        Fault::LengthTooLarge(k) => {
            let h = rewrite(&|l| {
                is(l, "content-length:").then(|| format!("content-length: {}", body.len() + k))
            });
            let _ = client.write_all(h.as_bytes());
            let _ = client.write_all(body);
        }
        Fault::PauseAfter(n) => {
            let n = n.min(body.len());
            let _ = client.write_all(ahead.as_bytes());
            let _ = client.write_all(&body[..n]);
            let _ = client.flush();
            let (m, cv) = &**gate;
            let mut g = m.lock().unwrap();
            if *g == 0 {
                *g = 1;
                cv.notify_all();
            }
            while *g != 2 {
                g = cv.wait(g).unwrap();
            }
            drop(g);
            let _ = client.write_all(&body[n..]);
        }
        Fault::RangeStartsAtZero => {
            let h = rewrite(&|l| {
                if !is(l, "content-range:") {
                    return None;
                }
                // bytes a-b/len  ->  bytes 0-(b-a)/len
                let v = l.split_once(':').unwrap().1.trim();
                let (range, len) = v.strip_prefix("bytes ")?.split_once('/')?;
                let (a, b) = range.split_once('-')?;
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                Some(format!("content-range: bytes 0-{}/{len}", b - a))
            });
            let _ = client.write_all(h.as_bytes());
            let _ = client.write_all(body);
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Make closing `s` send a reset (RST) instead of an orderly FIN: `SO_LINGER` with a zero
/// timeout, which both Unix and Winsock honour.
fn reset_on_close(s: &TcpStream) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own open socket with a correctly sized value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawSocket;
        // Winsock's own declarations (ws2_32 is linked by the standard library already).
        #[repr(C)]
        struct Linger {
            l_onoff: u16,
            l_linger: u16,
        }
        const SOL_SOCKET: i32 = 0xffff;
        const SO_LINGER: i32 = 0x0080;
        #[link(name = "ws2_32")]
        extern "system" {
            fn setsockopt(s: usize, level: i32, name: i32, value: *const u8, len: i32) -> i32;
        }
        let linger = Linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own open socket with a correctly sized value.
        let rc = unsafe {
            setsockopt(
                s.as_raw_socket() as usize,
                SOL_SOCKET,
                SO_LINGER,
                &linger as *const Linger as *const u8,
                std::mem::size_of::<Linger>() as i32,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }
}

/// A reset in the middle of the file on every attempt: the pack fails as a network error
/// in one line, the bytes received are kept only under a temporary name, and the re-run
/// (fault gone) resumes from them and verifies the whole file.
#[test]
fn connection_reset_mid_file_fails_cleanly_then_the_rerun_resumes() {
    let sc = scene();
    let svc = service::TestService::start(&sc.store, &[]);
    let front = FaultFront::start(svc.url(), "/content/", Fault::ResetAfter(SIZE / 3));
    let dest = sc.work.path().join("packs");
    let r = connect(&sc.opts(&dest, &front.addr), &mut |_| true).unwrap();
    let p = the_pack(&r, sc.id);
    assert_eq!(p.status, PackStatus::Failed, "{p:#?}");
    assert_eq!(p.kind, Some(ErrorKind::Network), "{p:#?}");
    let m = p.message.clone().unwrap_or_default();
    assert!(!m.is_empty() && !m.contains('\n'), "{m:?}");
    assert_eq!(front.requests("/content/").len(), 3, "bounded retries");
    assert!(!sc.final_path(&dest).exists());
    sc.check_final_names(&dest);

    let r = connect(&sc.opts(&dest, svc.url()), &mut |_| true).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let f = &the_pack(&r, sc.id).files[0];
    assert_eq!(f.status, FileStatus::Resumed, "{f:#?}");
    assert!(
        f.bytes_transferred < SIZE as u64,
        "only the rest moved: {f:#?}"
    );
    assert_eq!(std::fs::read(sc.final_path(&dest)).unwrap(), sc.data);
}

/// Answers whose `Content-Length` is smaller or larger than the body: never a wrong file
/// at the final name; a body that cannot be the file fails the pack with a clear kind,
/// and a clean re-run completes.
#[test]
fn lying_content_length_never_leaves_a_wrong_file() {
    for fault in [Fault::LengthTooSmall(1000), Fault::LengthTooLarge(1000)] {
        let sc = scene();
        let svc = service::TestService::start(&sc.store, &[]);
        let front = FaultFront::start(svc.url(), "/content/", fault);
        let dest = sc.work.path().join("packs");
        let r = connect(&sc.opts(&dest, &front.addr), &mut |_| true).unwrap();
        let p = the_pack(&r, sc.id);
        match fault {
            // Fewer bytes than the file: it can never verify.
            Fault::LengthTooSmall(_) => {
                assert_eq!(p.status, PackStatus::Failed, "{fault:?}: {p:#?}");
                assert!(
                    matches!(
                        p.kind,
                        Some(ErrorKind::Network | ErrorKind::IntegrityMismatch)
                    ),
                    "{fault:?}: {p:#?}"
                );
                assert!(!sc.final_path(&dest).exists(), "{fault:?}");
            }
            // Every byte of the file arrived before the lie: the SHA-256, not the framing,
            // decides, so success is right provided the file is exact (checked below).
            _ => assert!(
                p.status == PackStatus::Downloaded || p.kind.is_some(),
                "{fault:?}: {p:#?}"
            ),
        }
        if let Some(m) = &p.message {
            assert!(!m.contains('\n'), "{m:?}");
        }
        sc.check_final_names(&dest);

        let r = connect(&sc.opts(&dest, svc.url()), &mut |_| true).unwrap();
        assert!(r.is_success(), "{fault:?}: {r:#?}");
        assert_eq!(std::fs::read(sc.final_path(&dest)).unwrap(), sc.data);
    }
}

/// A resumed download whose 206 answer names the wrong range: the bytes are not appended
/// at the wrong place. Connect either refuses the answer or restarts, and in the end the
/// file at the final name (if any) is exactly right.
#[test]
fn wrong_content_range_on_resume_is_not_trusted() {
    let sc = scene();
    let svc = service::TestService::start(&sc.store, &[]);
    let dest = sc.work.path().join("packs");
    // First a cut download, so a partial file is there to resume.
    {
        let front = FaultFront::start(svc.url(), "/content/", Fault::ResetAfter(SIZE / 2));
        let mut o = sc.opts(&dest, &front.addr);
        o.max_attempts = 1;
        let r = connect(&o, &mut |_| true).unwrap();
        assert_eq!(the_pack(&r, sc.id).status, PackStatus::Failed);
    }
    let front = FaultFront::start(svc.url(), "/content/", Fault::RangeStartsAtZero);
    let r = connect(&sc.opts(&dest, &front.addr), &mut |_| true).unwrap();
    let ranged = front
        .requests("/content/")
        .iter()
        .filter(|h| h.to_ascii_lowercase().contains("\r\nrange: bytes="))
        .count();
    assert!(ranged >= 1, "the resume asked for a range");
    let p = the_pack(&r, sc.id);
    if p.status == PackStatus::Failed {
        let m = p.message.clone().unwrap_or_default();
        assert!(!m.is_empty() && !m.contains('\n'), "{m:?}");
    }
    sc.check_final_names(&dest);
    let r = connect(&sc.opts(&dest, svc.url()), &mut |_| true).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert_eq!(std::fs::read(sc.final_path(&dest)).unwrap(), sc.data);
}

/// A service whose certificate expired: Connect refuses it as a TLS error naming the
/// certificate, uploads nothing and writes no pack.
#[cfg(unix)] // the certificates are made with the `openssl` program
#[test]
fn expired_tls_certificate_is_refused() {
    let sc = scene();
    let dir = tempfile::tempdir().unwrap();
    // A certificate for 127.0.0.1 signed by a private CA, valid 2020-01-01 to 2020-01-02.
    let certs = tls::make_test_ca(dir.path(), tls::TestCaOpts::expired());
    let svc = service::TestService::start_args(sc.store.path(), certs.service_args());
    assert!(svc.url().starts_with("https://"), "{}", svc.url());
    let dest = sc.work.path().join("packs");
    let mut o = sc.opts(&dest, svc.url());
    o.ca_cert = Some(certs.ca.clone());
    let message = match connect(&o, &mut |_| true) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
            e.message().to_string()
        }
        Ok(r) => {
            let u = &r.uploads[0];
            assert_eq!(u.kind, Some(ErrorKind::Tls), "{r:#?}");
            assert!(r.packs.is_empty());
            u.message.clone().unwrap_or_default()
        }
    };
    let lower = message.to_ascii_lowercase();
    assert!(lower.contains("certificate"), "{message}");
    assert!(
        lower.contains("expired") || lower.contains("not valid after"),
        "{message}"
    );
    // The CA was given: the hint must point at the certificate, not at the CA option.
    assert!(lower.contains("must renew"), "{message}");
    assert!(
        !lower.contains("private certificate authority"),
        "{message}"
    );
    assert!(!message.contains('\n'));
    assert!(sc.store.uploads().is_empty(), "nothing was uploaded");
    assert!(!sc.final_path(&dest).exists());
}

/// A proxy that accepts each connection and drops it at once: a proxy error in one line
/// (not a misleading "service unreachable"), and nothing uploaded.
#[test]
fn proxy_that_drops_the_connection_is_reported_as_a_proxy_failure() {
    let sc = scene();
    let svc = service::TestService::start(&sc.store, &[]);
    // Deliberate fault injector: reads the request head, then closes without answering.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let hits = Arc::new(Mutex::new(0usize));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in proxy.incoming() {
            let Ok(mut c) = conn else { break };
            *h.lock().unwrap() += 1;
            let _ = read_head(&mut c);
            let _ = c.shutdown(Shutdown::Both);
        }
    });
    let dest = sc.work.path().join("packs");
    let mut o = sc.opts(&dest, svc.url());
    o.proxy = Some(ProxyOptions {
        uri: proxy_addr,
        username: None,
        password: None,
    });
    let (kind, message) = match connect(&o, &mut |_| true) {
        Err(e) => (e.kind(), e.message().to_string()),
        Ok(r) => {
            let u = &r.uploads[0];
            (u.kind.unwrap(), u.message.clone().unwrap_or_default())
        }
    };
    assert!(*hits.lock().unwrap() >= 1, "the proxy was used");
    assert!(
        matches!(kind, ErrorKind::ProxyConnect | ErrorKind::Network),
        "{kind:?}: {message}"
    );
    assert!(message.to_ascii_lowercase().contains("proxy"), "{message}");
    assert!(!message.contains('\n'));
    assert!(sc.store.uploads().is_empty(), "nothing was uploaded");
    assert!(!sc.final_path(&dest).exists());
}

/// The USB folder (the update-pack destination) is removed while a file downloads: the
/// pack fails with a clear file-system error, and Connect never re-creates the folder (on
/// a pulled drive that would write into the bare mount point).
#[cfg(unix)] // Windows refuses to remove a folder holding an open file
#[test]
fn usb_destination_removed_mid_download_fails_and_is_not_recreated() {
    let sc = scene();
    let svc = service::TestService::start(&sc.store, &[]);
    let front = FaultFront::start(svc.url(), "/content/", Fault::PauseAfter(SIZE / 2));
    let usb = sc.work.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let dest = usb.join("UpdatePacks");
    let opts = sc.opts(&dest, &front.addr);
    let run = std::thread::spawn(move || connect(&opts, &mut |_| true));
    front.wait_paused();
    std::fs::remove_dir_all(&usb).unwrap();
    front.release();
    let r = run.join().unwrap();
    let (kind, message) = match r {
        Err(e) => (e.kind(), e.message().to_string()),
        Ok(rep) => {
            let p = the_pack(&rep, sc.id);
            assert_eq!(p.status, PackStatus::Failed, "{rep:#?}");
            (p.kind.unwrap(), p.message.clone().unwrap_or_default())
        }
    };
    assert!(
        matches!(kind, ErrorKind::NotFound | ErrorKind::Io),
        "{kind:?}: {message}"
    );
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
    assert!(!usb.exists(), "Connect re-created the removed folder");
}
