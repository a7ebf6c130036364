//! The reference update service, end to end: the real `sct-service` binary on 127.0.0.1
//! port 0, packs published through the real `publish`, real HTTP clients.

#[path = "../../tests/common/service.rs"]
mod service;
#[path = "../../tests/common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use service::{pseudo_random, write_cab, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::{ApiError, Health, PackType, UploadResponse};
#[cfg(unix)] // only the minisign test reads a manifest
use serviceconnection::pack::PackManifest;
use start::Start;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

// ---------- small HTTP helpers ----------

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    fn error_code(&self) -> String {
        let e: ApiError = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "status {} body is not an ApiError: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        e.error.code
    }
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn send(req: reqwest::RequestBuilder) -> Resp {
    rt().block_on(async move {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    })
}

fn get(url: &str) -> Resp {
    send(client().get(url))
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(r)
}

fn upload(svc: &TestService, selection: Option<&str>, body: Vec<u8>) -> Resp {
    let url = match selection {
        Some(s) => format!("{}/v1/usage?selection={s}", svc.url()),
        None => format!("{}/v1/usage", svc.url()),
    };
    send(client().post(url).body(body))
}

fn upload_cab(svc: &TestService, selection: Option<&str>, cab: &Path) -> Resp {
    upload(svc, selection, std::fs::read(cab).unwrap())
}

/// One request written by hand (no client-side normalisation of the path); returns the
/// status code and the body.
fn raw_get(svc: &TestService, path: &str) -> (u16, String) {
    let addr = svc.url().strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn sha256(data: &[u8]) -> String {
    serviceconnection::hashing::sha256_hex(data)
}

/// The names in folder `p`, sorted. With the content in s3s-fs, folders that hold no
/// file are left out: they are what s3s-fs leaves behind deleted keys (an object store
/// has no folders), not objects.
fn dir_entries(p: &Path) -> Vec<String> {
    fn holds_a_file(p: &Path) -> bool {
        std::fs::read_dir(p).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| !e.path().is_dir() || holds_a_file(&e.path()))
        })
    }
    match std::fs::read_dir(p) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap())
                .filter(|e| !service::on_s3() || !e.path().is_dir() || holds_a_file(&e.path()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

const V_SITE: &str = "5.00.9088.1000";

/// A store with one two-file pack; returns (store, pack id, content files).
fn store_with_pack() -> (TestStore, Uuid, Vec<(String, Vec<u8>)>) {
    let store = TestStore::new();
    let files = vec![
        ("readme.txt".to_string(), b"hello, site\n".to_vec()),
        ("bin/payload.bin".to_string(), pseudo_random(300_000, 7)),
        ("dir with space/ü.dat".to_string(), b"unicode".to_vec()),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let content = write_content(&store.dir().join("content"), &refs);
    let id = store.publish(
        "Configuration Manager 2211",
        "5.00.9096.1000",
        PackType::Update,
        "5.00.9040.1000",
        None,
        &[],
        &content,
    );
    (store, id, files)
}

/// Publish pack "Big" (5.00.9100.1000, an update from 5.00.9000.1000) whose content is one
/// file `file` holding `bytes`; the content folder is `store.dir()/c`.
/// Returns (pack id, content folder).
fn publish_one_file(store: &TestStore, file: &str, bytes: &[u8]) -> (Uuid, std::path::PathBuf) {
    let content = write_content(&store.dir().join("c"), &[(file, bytes)]);
    let id = store.publish(
        "Big",
        "5.00.9100.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    (id, content)
}

// ---------- keygen, publish, list ----------

#[test]
fn keygen_creates_store_and_refuses_an_existing_key() {
    let store = TestStore::new();
    let root = store.path();
    for f in ["catalog.sqlite", "publisher.key", "publisher.pub"] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    // Unix: mode 0600. (Windows: an owner-only ACL, which Wine does not enforce.)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("publisher.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "secret key must be private");
    }
    let pk = serviceconnection::signing::PublicKey::from_file(&store.public_key_path()).unwrap();
    assert_eq!(pk.to_base64(), store.public_key_base64());

    let key_before = std::fs::read(root.join("publisher.key")).unwrap();
    let out = Command::new(service::bin())
        .args(["keygen", "--store"])
        .arg(root)
        .output_retrying()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(root.join("publisher.key")).unwrap(),
        key_before
    );
}

#[cfg(unix)] // the stock minisign is a Linux program here
#[test]
fn publish_records_a_signed_pack_that_stock_minisign_verifies() {
    let (store, id, files) = store_with_pack();
    let list = store.list();
    assert_eq!(list.len(), 1);
    let p = &list[0];
    assert_eq!(p.id, id);
    assert_eq!(p.file_count, 3);
    assert_eq!(
        p.size,
        files.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );

    let svc = TestService::start(&store, &[]);
    let base = format!("{}/v1/packages/{id}", svc.url());
    let m = get(&format!("{base}/manifest.json"));
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("etag").unwrap(),
        format!("\"{}\"", sha256(&m.body))
    );
    assert_eq!(sha256(&m.body), p.manifest_sha256);
    let manifest = PackManifest::from_bytes(&m.body).unwrap();
    assert_eq!(manifest.id, id);
    assert_eq!(manifest.version.to_string(), "5.00.9096.1000");
    assert!(manifest.hierarchies.is_empty());
    for (path, data) in &files {
        let f = manifest.files.iter().find(|f| &f.path == path).unwrap();
        assert_eq!(f.size, data.len() as u64);
        assert_eq!(f.sha256, sha256(data));
    }
    let sig = get(&format!("{base}/manifest.json.minisig"));
    assert_eq!(sig.status, 200);

    // The stock tool verifies what we serve against publisher.pub.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), &m.body).unwrap();
    std::fs::write(dir.path().join("manifest.json.minisig"), &sig.body).unwrap();
    let out = Command::new("minisign")
        .arg("-Vm")
        .arg(dir.path().join("manifest.json"))
        .arg("-p")
        .arg(store.public_key_path())
        .output()
        .expect("minisign is installed");
    assert!(
        out.status.success(),
        "minisign: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and rejects a tampered manifest.
    let mut tampered = m.body.clone();
    let pos = tampered.iter().position(|b| *b == b'2').unwrap();
    tampered[pos] = b'3';
    std::fs::write(dir.path().join("manifest.json"), &tampered).unwrap();
    let out = Command::new("minisign")
        .arg("-Vm")
        .arg(dir.path().join("manifest.json"))
        .arg("-p")
        .arg(store.public_key_path())
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Every content file, byte for byte, under its (percent-encoded) manifest path.
    for (path, data) in &files {
        let enc: Vec<String> = path
            .split('/')
            .map(|s| {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect()
            })
            .collect();
        let r = get(&format!("{base}/content/{}", enc.join("/")));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(&r.body, data, "{path}");
        assert_eq!(r.header("etag").unwrap(), format!("\"{}\"", sha256(data)));
        assert_eq!(r.header("accept-ranges").unwrap(), "bytes");
        assert_eq!(r.header("content-length").unwrap(), data.len().to_string());
    }
}

#[test]
fn publish_refuses_duplicates_and_bad_content_leaving_nothing() {
    let (store, id, _) = store_with_pack();
    let content = store.dir().join("content");
    // Same name, version and content: refused with a clear message.
    let out = store.publish_output(
        "Configuration Manager 2211",
        "5.0.9096.1000", // same version, other spelling
        PackType::Update,
        "5.00.9040.1000",
        None,
        &[],
        &content,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already published") && err.contains(&id.to_string()),
        "{err}"
    );

    let empty = store.dir().join("empty");
    std::fs::create_dir(&empty).unwrap();
    // Wine cannot make symbolic links; on Unix the link case is checked too.
    #[cfg(unix)]
    let with_link = write_content(&store.dir().join("linked"), &[("a.txt", b"a")]);
    #[cfg(unix)]
    std::os::unix::fs::symlink("/etc/passwd", with_link.join("passwd")).unwrap();
    // Names that differ only in case are one file on Windows: the clash exists only here.
    #[cfg(unix)]
    let case_clash = write_content(
        &store.dir().join("case"),
        &[("Setup.exe", b"1"), ("setup.EXE", b"2")],
    );
    let cases: Vec<(&Path, &str, Option<&str>, &str)> = vec![
        (&empty, "5.00.9100.1000", None, "holds no files"),
        #[cfg(unix)]
        (&with_link, "5.00.9100.1000", None, "symbolic link"),
        #[cfg(unix)]
        (&case_clash, "5.00.9100.1000", None, "more than case"),
        (
            Path::new("/nonexistent/content"),
            "5.00.9100.1000",
            None,
            "content folder",
        ),
        (&content, "5.00.9100.1000", Some("5.00.9000.1000"), "below"),
    ];
    for (dir, version, max, want) in cases {
        let out = store.publish_output(
            "X",
            version,
            PackType::Update,
            "5.00.9040.1000",
            max,
            &[],
            dir,
        );
        assert_eq!(out.status.code(), Some(1), "{want}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "wanted {want:?} in {err}");
    }
    // A malformed version is a usage error (clap), exit 2.
    let out = store.publish_output(
        "X",
        "5.0.1",
        PackType::Update,
        "5.00.9040.1000",
        None,
        &[],
        &content,
    );
    assert_eq!(out.status.code(), Some(2));

    assert_eq!(store.list().len(), 1);
    assert_eq!(
        dir_entries(&store.content_root().join("packs")),
        vec![id.to_string()]
    );
    assert!(dir_entries(&store.path().join("staging")).is_empty());
    // Different content under the same name and version is a different pack.
    let other = write_content(&store.dir().join("other"), &[("readme.txt", b"changed")]);
    let id2 = store.publish(
        "Configuration Manager 2211",
        "5.00.9096.1000",
        PackType::Update,
        "5.00.9040.1000",
        None,
        &[],
        &other,
    );
    assert_ne!(id2, id);
    assert_eq!(store.list().len(), 2);
}

/// Kill `publish` (SIGKILL) at a pause point; nothing becomes visible and a re-publish works.
fn killed_publish_at(at: &str) {
    let store = TestStore::new();
    let content = write_content(
        &store.dir().join("c"),
        &[("a.bin", &pseudo_random(50_000, 1)), ("b/c.txt", b"c")],
    );
    let go = store.dir().join("go");
    let mut cmd = store.publish_command(
        "P",
        "5.00.9100.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    cmd.env("SCT_TEST_PAUSE_PUBLISH", &go)
        .env("SCT_TEST_PAUSE_PUBLISH_AT", at)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn_retrying().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains(&format!("paused at '{at}'")), "{line}");
    // A folder stages in staging/ and renames into packs/; an object store writes the
    // pack's keys directly (nothing refers to them before the catalog row).
    let leftover = if at == "staged" && !service::on_s3() {
        store.path().join("staging")
    } else {
        store.content_root().join("packs")
    };
    assert_eq!(dir_entries(&leftover).len(), 1, "the publish got this far");
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        store.list().is_empty(),
        "a killed publish must not be visible"
    );
    let svc = TestService::start(&store, &[]);
    let h = Uuid::new_v4();
    let cab = store.dir().join("u.cab");
    write_usage_cab(&cab, h, "5.00.9000.1000");
    let r = upload_cab(&svc, Some("All"), &cab);
    assert_eq!(r.status, 200);
    assert!(r.json::<UploadResponse>().packages.is_empty());
    let half = dir_entries(&leftover).pop().unwrap();
    let (status, _) = raw_get(&svc, &format!("/v1/packages/{half}/manifest.json"));
    assert_eq!(status, 404, "an unrecorded pack is never served");

    // The same publish again succeeds, and the leftovers are gone.
    let id = store.publish(
        "P",
        "5.00.9100.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    assert_eq!(store.list().len(), 1);
    let mut want = vec![id.to_string()];
    if service::on_s3() {
        // Younger than the orphan grace: perhaps another machine's publish in progress,
        // so it stays (unlisted, never served) until a later publish.
        want.push(half);
        want.sort();
    }
    assert_eq!(dir_entries(&store.content_root().join("packs")), want);
    assert!(dir_entries(&store.path().join("staging")).is_empty());
}

#[test]
fn publish_killed_while_staged_leaves_no_visible_pack() {
    killed_publish_at("staged");
}

#[test]
fn publish_killed_after_rename_leaves_no_visible_pack() {
    killed_publish_at("renamed");
}

// ---------- health, version, errors ----------

#[test]
fn health_version_and_unknown_routes() {
    let store = TestStore::new();
    let svc = TestService::start(&store, &[]);
    assert!(svc.url().starts_with("http://127.0.0.1:"), "{}", svc.url());
    for p in ["/v1/health", "/v1/version"] {
        let r = get(&format!("{}{p}", svc.url()));
        assert_eq!(r.status, 200);
        let h: Health = r.json();
        assert_eq!(h.status, "ok");
        assert_eq!(h.version, serviceconnection::VERSION);
        assert_eq!(h.api_version, 1);
    }
    let r = get(&format!("{}/v2/health", svc.url()));
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = send(client().delete(format!("{}/v1/health", svc.url())));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    let r = get(&format!("{}/v1/usage", svc.url()));
    assert_eq!(r.status, 405);
}

#[test]
fn bearer_token_is_required_except_for_health() {
    let (store, id, files) = store_with_pack();
    let token_file = store.token_file("s3cret-token");
    let svc = TestService::start_args(
        store.path(),
        [std::ffi::OsStr::new("--token-file"), token_file.as_os_str()],
    );
    let url = format!("{}/v1/packages/{id}/content/readme.txt", svc.url());
    let r = get(&url);
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    for bad in [
        "Bearer wrong",
        "Bearer s3cret-token2",
        "Basic czNjcmV0LXRva2Vu",
        "Bearer",
    ] {
        let r = get_with(&url, &[("authorization", bad)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "unauthorized"),
            "{bad}"
        );
    }
    let r = get_with(&url, &[("authorization", "Bearer s3cret-token")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, files[0].1);
    // Upload refused before the body is looked at.
    let r = upload(&svc, None, b"whatever".to_vec());
    assert_eq!(r.status, 401);
    assert_eq!(get(&format!("{}/v1/health", svc.url())).status, 200);
    assert!(
        !svc.log().contains("s3cret"),
        "the token leaked into the log"
    );
}

// ---------- downloads: Range, ETag, HEAD, traversal ----------

#[test]
fn range_if_range_etag_and_head() {
    let (store, id, files) = store_with_pack();
    let svc = TestService::start(&store, &[]);
    let data = &files[1].1;
    let len = data.len();
    let url = format!("{}/v1/packages/{id}/content/bin/payload.bin", svc.url());
    let etag = format!("\"{}\"", sha256(data));

    let r = get_with(&url, &[("range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[1000..2000]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 1000-1999/{len}")
    );
    assert_eq!(r.header("content-length").unwrap(), "1000");
    assert_eq!(r.header("etag").unwrap(), etag);

    let r = get_with(&url, &[("range", "bytes=299000-")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &data[299_000..]));
    let r = get_with(&url, &[("range", "bytes=-10")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &data[len - 10..]));

    let r = get_with(&url, &[("range", &format!("bytes={len}-"))]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (416, "range_not_satisfiable")
    );
    assert_eq!(r.header("content-range").unwrap(), format!("bytes */{len}"));

    // If-Range: the current ETag resumes; a stale one gets the whole new file.
    let r = get_with(&url, &[("range", "bytes=5-9"), ("if-range", &etag)]);
    assert_eq!((r.status, r.body.as_slice()), (206, &data[5..10]));
    let r = get_with(&url, &[("range", "bytes=5-9"), ("if-range", "\"0000\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body, data);
    // Several ranges: answered with the whole file (allowed by RFC 9110).
    let r = get_with(&url, &[("range", "bytes=0-1,5-6")]);
    assert_eq!((r.status, r.body.len()), (200, len));

    let r = get_with(&url, &[("if-none-match", &etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0));

    let r = send(client().head(&url));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").unwrap(), len.to_string());
    assert_eq!(r.header("etag").unwrap(), etag);
    assert!(r.body.is_empty());
    let r = send(client().head(&url).header("range", "bytes=0-9"));
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-length").unwrap(), "10");

    // The manifest is rangeable too (a resuming client may ask).
    let m = get(&format!("{}/v1/packages/{id}/manifest.json", svc.url()));
    let r = get_with(
        &format!("{}/v1/packages/{id}/manifest.json", svc.url()),
        &[("range", "bytes=0-0")],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &m.body[..1]));
}

/// Content is streamed from the store in chunks (a file larger than one chunk, whole and
/// from an offset, comes out byte-exact), and a stored file whose size is no longer what
/// the signed manifest says (the store was tampered with) is refused with a clear error
/// before a byte is sent.
#[test]
fn content_is_streamed_exactly_and_a_resized_stored_file_is_refused() {
    let store = TestStore::new();
    let data = pseudo_random(700_001, 11);
    let (id, _) = publish_one_file(&store, "big.bin", &data);
    let svc = TestService::start(&store, &[]);
    let url = format!("{}/v1/packages/{id}/content/big.bin", svc.url());
    let r = get(&url);
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    assert!(r.body == data, "the body differs from the published file");
    let r = get_with(&url, &[("range", "bytes=262143-")]);
    assert_eq!(r.status, 206);
    assert!(r.body == data[262_143..], "the range differs");

    if service::on_s3() {
        return; // the object store checks sizes its own way (s3_content.rs)
    }
    let stored = store.pack_dir(&id).join("content").join("big.bin");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap();
    f.set_len(data.len() as u64 - 1).unwrap();
    let r = get(&url);
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal"));
    assert!(
        svc.log()
            .contains("is 700000 bytes but its manifest says 700001"),
        "{}",
        svc.log()
    );
}

/// A stored file cut short while it is being sent (someone truncating the store by hand)
/// ends that download early, over plain HTTP (where Linux sends the file from windows
/// mapped over the page cache: a read of a page past the new end by the process would
/// raise SIGBUS and kill the service) and over TLS (read into buffers). The service lives
/// on, answers the next request, and refuses the file with a clear error from then on.
#[test]
fn a_stored_file_cut_short_mid_download_ends_that_download_only() {
    if service::on_s3() {
        return; // the object store is not a folder to truncate (s3_content.rs)
    }
    const BIG: usize = 48 * 1024 * 1024;
    // The TLS half needs a certificate from `openssl` (unix).
    let cases: &[bool] = if cfg!(unix) { &[false, true] } else { &[false] };
    for &tls in cases {
        let store = TestStore::new();
        let (id, _) = publish_one_file(&store, "big.bin", &pseudo_random(BIG, 21));
        let stored = store.pack_dir(&id).join("content").join("big.bin");
        let (mut svc, client) = if tls {
            let (svc, client, _) = tls_service(&store);
            (svc, client)
        } else {
            (TestService::start(&store, &[]), client())
        };
        let url = format!("{}/v1/packages/{id}/content/big.bin", svc.url());
        let (received, ended) = rt().block_on(async {
            let mut r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let mut received = 0usize;
            while received < 1024 * 1024 {
                received += r.chunk().await.unwrap().expect("more body").len();
            }
            // Stop reading until the socket buffers are full and the service is waiting
            // with bytes of the file in hand, then cut the file short under it.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&stored)
                .unwrap()
                .set_len(512 * 1024)
                .unwrap();
            let ended = loop {
                match tokio::time::timeout(std::time::Duration::from_secs(30), r.chunk()).await {
                    Ok(Ok(Some(c))) => received += c.len(),
                    Ok(Ok(None)) => break "the body ended",
                    Ok(Err(_)) => break "the connection failed",
                    Err(_) => panic!("the download neither went on nor ended in 30 s"),
                }
            };
            (received, ended)
        });
        assert!(
            received < BIG,
            "tls {tls}: all {BIG} bytes arrived although the file was cut short ({ended})"
        );
        assert!(
            svc.is_running(),
            "tls {tls}: the service died: {}",
            svc.log()
        );
        let health = send(client.get(format!("{}/v1/health", svc.url())));
        assert_eq!(health.status, 200, "tls {tls}");
        let r = send(client.get(&url));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (500, "internal"),
            "tls {tls}"
        );
        assert!(
            svc.log().contains("is 524288 bytes but its manifest says"),
            "tls {tls}: {}",
            svc.log()
        );
    }
}

/// The service over TLS with a self-signed certificate, a client that trusts it, and the
/// certificate and key files the service was given.
#[cfg(unix)]
fn tls_service(
    store: &TestStore,
) -> (
    TestService,
    reqwest::Client,
    (std::path::PathBuf, std::path::PathBuf),
) {
    let (cert, key) = self_signed_cert(store.dir());
    let svc = TestService::start_args(
        store.path(),
        [
            std::ffi::OsStr::new("--tls-cert"),
            cert.as_os_str(),
            std::ffi::OsStr::new("--tls-key"),
            key.as_os_str(),
        ],
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    (svc, c, (cert, key))
}

#[cfg(not(unix))]
fn tls_service(
    _: &TestStore,
) -> (
    TestService,
    reqwest::Client,
    (std::path::PathBuf, std::path::PathBuf),
) {
    unreachable!("the TLS cases need openssl's certificate (unix)")
}

#[test]
fn path_traversal_and_unknown_files_are_refused() {
    let (store, id, _) = store_with_pack();
    // A file on disk that the signed manifest does not list must never be served.
    std::fs::write(store.pack_dir(&id).join("content").join("extra.txt"), b"x").unwrap();
    let svc = TestService::start(&store, &[]);
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("/v1/packages/{id}/content/../manifest.json"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/../../../../etc/passwd"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/%2e%2e/%2e%2e/catalog.sqlite"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/bin%2f..%2f..%2fmanifest.json"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content//etc/passwd"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/bin\\payload.bin"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/./readme.txt"),
            400,
            "bad_path",
        ),
        (
            format!("/v1/packages/{id}/content/readme.txt%00.bin"),
            400,
            "bad_path",
        ),
        (format!("/v1/packages/{id}/content/%FF%FE"), 400, "bad_path"),
        (
            format!("/v1/packages/{id}/content/extra.txt"),
            404,
            "not_found",
        ),
        (
            format!("/v1/packages/{id}/content/nothing.bin"),
            404,
            "not_found",
        ),
        (
            format!("/v1/packages/{}/manifest.json", Uuid::new_v4()),
            404,
            "not_found",
        ),
        (
            format!("/v1/packages/{}/content/readme.txt", Uuid::new_v4()),
            404,
            "not_found",
        ),
        (
            "/v1/packages/..%2f..%2fpublisher.key/manifest.json".into(),
            400,
            "invalid_package_id",
        ),
        (
            "/v1/packages/not-a-guid/manifest.json".into(),
            400,
            "invalid_package_id",
        ),
        ("/v1/packages/../publisher.key".into(), 404, "not_found"),
        ("/../../publisher.key".into(), 404, "not_found"),
    ];
    for (path, status, code) in &cases {
        let (s, body) = raw_get(&svc, path);
        assert_eq!(s, *status, "{path}: {body}");
        let e: ApiError = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
        assert_eq!(e.error.code, *code, "{path}");
        assert!(!body.contains("untrusted comment"), "{path} leaked a key");
    }
    // The server is still fine.
    let (s, body) = raw_get(&svc, &format!("/v1/packages/{id}/content/readme.txt"));
    assert_eq!((s, body.as_str()), (200, "hello, site\n"));
}

#[test]
fn client_disconnect_mid_download_then_full_download() {
    let store = TestStore::new();
    let big = pseudo_random(24 * 1024 * 1024, 42);
    let (id, _) = publish_one_file(&store, "big.bin", &big);
    let mut svc = TestService::start(&store, &[]);
    let addr = svc.url().strip_prefix("http://").unwrap().to_string();
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /v1/packages/{id}/content/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        assert!(String::from_utf8_lossy(&buf[..n.min(20)]).starts_with("HTTP/1.1 200"));
        drop(s); // gone mid-body
    }
    // A client that stops reading (slow) does not block others either.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "GET /v1/packages/{id}/content/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let r = get(&format!("{}/v1/packages/{id}/content/big.bin", svc.url()));
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), sha256(&big));
    assert!(svc.is_running());
    drop(slow);
}

#[test]
fn many_concurrent_clients_download_byte_exact() {
    let store = TestStore::new();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pseudo_random(1_000_000 + i * 12_345, i as u64),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let content = write_content(&store.dir().join("c"), &refs);
    let id = store.publish(
        "Load",
        "5.00.9100.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    let svc = TestService::start(&store, &[]);
    let base = format!("{}/v1/packages/{id}/content", svc.url());
    let files = std::sync::Arc::new(files);
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let base = base.clone();
            let files = files.clone();
            std::thread::spawn(move || {
                for k in 0..files.len() {
                    let (name, data) = &files[(t + k) % files.len()];
                    // Half the clients fetch in two ranged halves, as a resuming client does.
                    let body = if t % 2 == 0 {
                        get(&format!("{base}/{name}")).body
                    } else {
                        let mid = data.len() / 2;
                        let mut a = get_with(
                            &format!("{base}/{name}"),
                            &[("range", &format!("bytes=0-{}", mid - 1))],
                        )
                        .body;
                        a.extend(
                            get_with(
                                &format!("{base}/{name}"),
                                &[("range", &format!("bytes={mid}-"))],
                            )
                            .body,
                        );
                        a
                    };
                    assert!(body == *data, "thread {t} got corrupt {name}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("download thread");
    }
}

// ---------- uploads and selection ----------

#[test]
fn upload_is_stored_recorded_and_answered() {
    let (store, id, _) = store_with_pack();
    let svc = TestService::start(&store, &[]);
    let h = Uuid::new_v4();
    let cab = store.dir().join("usage.cab");
    write_usage_cab(&cab, h, V_SITE);
    let r = upload_cab(&svc, None, &cab);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a: UploadResponse = r.json();
    assert_eq!(a.hierarchy_id, h);
    assert_eq!(a.site_version.to_string(), V_SITE);
    assert_eq!(a.selection, serviceconnection::api::Selection::Latest);
    assert_eq!(a.packages.len(), 1);
    let p = &a.packages[0];
    assert_eq!(p.id, id);
    assert_eq!(p.manifest_url, format!("/v1/packages/{id}/manifest.json"));
    assert_eq!(
        p.signature_url,
        format!("/v1/packages/{id}/manifest.json.minisig")
    );
    assert_eq!(p.content_url, format!("/v1/packages/{id}/content/"));
    let m = get(&format!("{}{}", svc.url(), p.manifest_url));
    assert_eq!(sha256(&m.body), p.manifest_sha256);

    let uploads = store.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].id, a.upload_id);
    assert_eq!(uploads[0].hierarchy_id, h);
    assert_eq!(uploads[0].offered, 1);
    assert!(
        uploads[0].path.starts_with(&format!("uploads/{h}/")),
        "{}",
        uploads[0].path
    );
    let stored = std::fs::read(store.content_root().join(&uploads[0].path)).unwrap();
    assert_eq!(stored, std::fs::read(&cab).unwrap());
    assert_eq!(uploads[0].sha256, sha256(&stored));
    // Stock tools read what was stored (cabextract is a Linux program; on Windows the
    // byte comparison above stands).
    #[cfg(unix)]
    {
        let out = Command::new("cabextract")
            .arg("-l")
            .arg(store.content_root().join(&uploads[0].path))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("manifest.json"));
    }
}

#[test]
fn every_upload_error_has_its_own_code_and_leaves_nothing() {
    let store = TestStore::new();
    let svc = TestService::start(&store, &["--max-upload-bytes", "20000"]);
    let scratch = store.dir();
    let h = Uuid::new_v4();

    // A cab without manifest.json, made by the stock gcab.
    let plain = scratch.join("plain");
    write_content(&plain, &[("UsageData.csv", b"a,b\r\n1,2\r\n")]);
    let no_manifest = scratch.join("nomanifest.cab");
    if cfg!(unix) {
        let st = Command::new("gcab")
            .arg("-cz")
            .arg(&no_manifest)
            .arg("UsageData.csv")
            .current_dir(&plain)
            .status()
            .expect("gcab is installed");
        assert!(st.success());
    } else {
        // No gcab on Windows: the cab crate makes the same one-file cab.
        write_cab(&no_manifest, &[("UsageData.csv", b"a,b\r\n1,2\r\n")]);
    }

    let bad_json = scratch.join("badjson.cab");
    write_cab(
        &bad_json,
        &[
            ("manifest.json", b"{ not json"),
            ("UsageData.csv", b"a\r\n"),
        ],
    );
    let data = b"a,b\r\n1,2\r\n";
    let mut m = service::usage_manifest(h, V_SITE, data);
    m.files[0].sha256 = sha256(b"something else");
    let bad_hash = scratch.join("badhash.cab");
    write_cab(
        &bad_hash,
        &[("manifest.json", &m.to_bytes()), ("UsageData.csv", data)],
    );
    let mut m2 = service::usage_manifest(h, V_SITE, data);
    m2.files[0].name = "Missing.csv".into();
    let missing_file = scratch.join("missingfile.cab");
    write_cab(
        &missing_file,
        &[("manifest.json", &m2.to_bytes()), ("UsageData.csv", data)],
    );
    let mut truncated = std::fs::read(&bad_hash).unwrap();
    truncated.truncate(truncated.len() / 2);

    let good = scratch.join("good.cab");
    write_usage_cab(&good, h, V_SITE);

    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (None, b"this is not a cabinet".to_vec(), 422, "not_a_cab"),
        (None, Vec::new(), 422, "not_a_cab"),
        (
            None,
            std::fs::read(&no_manifest).unwrap(),
            422,
            "manifest_missing",
        ),
        (
            None,
            std::fs::read(&bad_json).unwrap(),
            422,
            "manifest_invalid",
        ),
        (
            None,
            std::fs::read(&bad_hash).unwrap(),
            422,
            "hash_mismatch",
        ),
        (
            None,
            std::fs::read(&missing_file).unwrap(),
            422,
            "hash_mismatch",
        ),
        (None, pseudo_random(30_000, 3), 413, "payload_too_large"),
        (
            Some("Newest"),
            std::fs::read(&good).unwrap(),
            400,
            "unknown_selection",
        ),
    ];
    for (sel, body, status, code) in cases {
        let r = upload(&svc, sel, body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A truncated cab is refused too (its exact code depends on where the cut falls).
    let r = upload(&svc, None, truncated);
    assert_eq!(r.status, 422);

    // A body that announces no length and grows past the limit (chunked) is cut off.
    let addr = svc.url().strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/usage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    // Three 8 KiB chunks (past the 20000-byte limit), no final chunk: the server must
    // answer 413 from what it has read, without waiting for the end of the body.
    let chunk = vec![b'x'; 8192];
    for _ in 0..3 {
        write!(s, "2000\r\n").unwrap();
        s.write_all(&chunk).unwrap();
        write!(s, "\r\n").unwrap();
    }
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("payload_too_large") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload_too_large"));

    assert!(
        store.uploads().is_empty(),
        "a refused upload must not be recorded"
    );
    let uploads_dir = store.content_root().join("uploads");
    // Nothing but the (empty) spool folder; an object store needs none.
    let spool: Vec<String> = if service::on_s3() {
        Vec::new()
    } else {
        vec![".incoming".to_string()]
    };
    assert_eq!(dir_entries(&uploads_dir), spool);
    assert!(
        dir_entries(&uploads_dir.join(".incoming")).is_empty(),
        "temporary upload left behind"
    );
    // And a good one still goes through.
    assert_eq!(upload_cab(&svc, Some("all"), &good).status, 200);
    assert_eq!(store.uploads().len(), 1);
}

/// (name, version, type, min, max, hierarchies)
type FixturePack<'a> = (
    &'a str,
    &'a str,
    PackType,
    &'a str,
    Option<&'a str>,
    &'a [Uuid],
);

/// Publish the selection fixture.
fn selection_fixture(store: &TestStore, ring: Uuid) {
    use PackType::*;
    let packs: &[FixturePack] = &[
        (
            "u2203",
            "5.00.9078.1000",
            Update,
            "5.00.9000.1000",
            None,
            &[],
        ),
        (
            "u2207",
            "5.00.9088.1000",
            Update,
            "5.00.9040.1000",
            None,
            &[],
        ),
        (
            "u2211",
            "5.00.9096.1000",
            Update,
            "5.00.9058.1000",
            None,
            &[],
        ),
        (
            "hf2207",
            "5.00.9088.1005",
            Hotfix,
            "5.00.9088.1000",
            Some("5.00.9088.1000"),
            &[],
        ),
        (
            "hf-old",
            "5.00.9040.1010",
            Hotfix,
            "5.00.9040.1000",
            Some("5.00.9040.1000"),
            &[],
        ),
        (
            "ring2303",
            "5.00.9106.1000",
            Update,
            "5.00.9058.1000",
            None,
            &[ring],
        ),
        (
            "u10",
            "5.00.10000.1000",
            Update,
            "5.00.9096.1000",
            Some("5.00.9096.1000"),
            &[],
        ),
    ];
    for (i, (name, v, t, min, max, h)) in packs.iter().enumerate() {
        let c = write_content(
            &store.dir().join(format!("sel{i}")),
            &[("payload.txt", name.as_bytes())],
        );
        store.publish(name, v, *t, min, *max, h, &c);
    }
}

#[test]
fn selection_rules_table() {
    let store = TestStore::new();
    let ring = Uuid::new_v4();
    selection_fixture(&store, ring);
    let svc = TestService::start(&store, &[]);
    let other = Uuid::new_v4();
    // (hierarchy, site version, selection, expected names in answer order)
    let table: &[(Uuid, &str, Option<&str>, &[&str])] = &[
        // Latest (default): the newest applicable update newer than the site, no hotfixes.
        (other, "5.00.9040.1000", None, &["u2207"]),
        (other, "5.00.9040.1000", Some("Latest"), &["u2207"]),
        (other, "5.00.9058.1000", None, &["u2211"]),
        (other, "5.00.9088.1000", None, &["u2211"]),
        // 5.0.10000 > 5.0.9096 numerically (not as text).
        (other, "5.00.9096.1000", None, &["u10"]),
        (other, "5.00.10000.1000", None, &[]),
        (other, "5.00.8999.1000", None, &[]),
        // The targeted ring release is offered to its hierarchy only.
        (ring, "5.00.9058.1000", None, &["ring2303"]),
        (ring, "5.00.9096.1000", None, &["u10"]),
        // SiteVersion: every update and hotfix newer than the site, including later
        // steps of an upgrade chain that do not apply yet (u10 needs 9096 first).
        (
            other,
            "5.00.9088.1000",
            Some("SiteVersion"),
            &["hf2207", "u2211", "u10"],
        ),
        (
            other,
            "5.00.9040.1000",
            Some("siteversion"),
            &["hf-old", "u2203", "u2207", "hf2207", "u2211", "u10"],
        ),
        (
            ring,
            "5.00.9088.1000",
            Some("SiteVersion"),
            &["hf2207", "u2211", "ring2303", "u10"],
        ),
        (other, "5.00.10000.1000", Some("SiteVersion"), &[]),
        // Hotfix: every hotfix, whatever the version.
        (
            other,
            "5.00.10000.1000",
            Some("Hotfix"),
            &["hf-old", "hf2207"],
        ),
        (
            other,
            "5.00.8000.1000",
            Some("HOTFIX"),
            &["hf-old", "hf2207"],
        ),
        // All: every candidate.
        (
            other,
            "5.00.8000.1000",
            Some("All"),
            &["hf-old", "u2203", "u2207", "hf2207", "u2211", "u10"],
        ),
        (
            ring,
            "5.00.8000.1000",
            Some("All"),
            &[
                "hf-old", "u2203", "u2207", "hf2207", "u2211", "ring2303", "u10",
            ],
        ),
    ];
    // One cab per (hierarchy, site version), written once: a cab records its files' times
    // (2-second steps), so writing the same one again later could give other bytes.
    let mut cabs = std::collections::BTreeMap::new();
    let mut distinct = std::collections::BTreeSet::new();
    for (h, site, sel, want) in table {
        let cab = cabs
            .entry((*h, *site))
            .or_insert_with(|| {
                let cab = store.dir().join(format!("u-{h}-{site}.cab"));
                write_usage_cab(&cab, *h, site);
                cab
            })
            .clone();
        distinct.insert(sha256(&std::fs::read(&cab).unwrap()));
        let r = upload_cab(&svc, *sel, &cab);
        assert_eq!(
            r.status,
            200,
            "{site} {sel:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let a: UploadResponse = r.json();
        let got: Vec<&str> = a.packages.iter().map(|p| p.name.as_str()).collect();
        let who = if *h == ring { "ring" } else { "other" };
        assert_eq!(&got, want, "{who} at {site}, selection {sel:?}");
    }
    // The same cab sent again (with another selection) is the same upload.
    assert!(distinct.len() < table.len());
    assert_eq!(store.uploads().len(), distinct.len());
}

// ---------- TLS and shutdown ----------

#[cfg(unix)]
fn self_signed_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cnf = dir.join("openssl.cnf");
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name=dn\nx509_extensions=ext\nprompt=no\n[dn]\nCN=localhost\n\
         [ext]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-config")
        .arg(&cnf)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[cfg(unix)] // the certificate is made with the openssl command
#[test]
fn tls_serves_https_with_the_given_certificate() {
    let (store, id, files) = store_with_pack();
    let (svc, tls_client, (_, key)) = tls_service(&store);
    assert!(svc.url().starts_with("https://127.0.0.1:"), "{}", svc.url());
    let r = send(tls_client.get(format!(
        "{}/v1/packages/{id}/content/bin/payload.bin",
        svc.url()
    )));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, files[1].1);
    let h = Uuid::new_v4();
    let cab = store.dir().join("u.cab");
    write_usage_cab(&cab, h, V_SITE);
    let r = send(
        tls_client
            .post(format!("{}/v1/usage", svc.url()))
            .body(std::fs::read(&cab).unwrap()),
    );
    assert_eq!(r.status, 200);
    // A client that does not trust the certificate is refused by the handshake...
    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = rt().block_on(untrusting.get(format!("{}/v1/health", svc.url())).send());
    assert!(res.is_err());
    // ... and plain HTTP on the TLS port gets no HTTP answer, while the server lives on.
    let plain = svc.url().replace("https://", "http://");
    let res = rt().block_on(client().get(format!("{plain}/v1/health")).send());
    assert!(res.is_err() || res.unwrap().status().as_u16() >= 400);
    assert_eq!(
        send(tls_client.get(format!("{}/v1/health", svc.url()))).status,
        200
    );

    // Mismatched or missing TLS files: a clear error, not a server.
    let out = Command::new(service::bin())
        .arg("serve")
        .arg("--store")
        .arg(store.path())
        .arg("--tls-cert")
        .arg(&key)
        .arg("--tls-key")
        .arg(&key)
        .output_retrying()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_down_gracefully() {
    let store = TestStore::new();
    let svc = TestService::start(&store, &[]);
    assert_eq!(get(&format!("{}/v1/health", svc.url())).status, 200);
    let url = svc.url().to_string();
    let status = svc.stop();
    assert!(status.success(), "{status:?}");
    // The port is closed.
    let addr = url.strip_prefix("http://").unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn serve_refuses_a_missing_store_and_an_empty_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(service::bin())
        .args(["serve", "--store"])
        .arg(dir.path().join("nope"))
        .output_retrying()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(
        out.stdout.is_empty(),
        "no listening line when it cannot serve"
    );
    let store = TestStore::new();
    let empty = store.dir().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(service::bin())
        .args(["serve", "--store"])
        .arg(store.path())
        .arg("--token-file")
        .arg(&empty)
        .output_retrying()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

// ---------- real Prepare output, memory ----------

#[test]
fn upload_of_a_cab_written_by_prepare() {
    use serviceconnection::{NewSite, Site};
    let store = TestStore::new();
    selection_fixture(&store, Uuid::new_v4());
    let svc = TestService::start(&store, &[]);
    let h = Uuid::new_v4();
    let db = store.dir().join("site.db");
    let mut site = Site::create(
        &db,
        &NewSite {
            site_code: "PS1".into(),
            site_version: V_SITE.parse().unwrap(),
            diagnostics_level: Default::default(),
            hierarchy_id: Some(h),
            site_name: None,
            scp_mode: Default::default(),
        },
    )
    .unwrap();
    serviceconnection::site::sample::generate(&mut site, 2_000, 11).unwrap();
    drop(site);
    let cab = store.dir().join("UsageData.cab");
    serviceconnection::usage::prepare(&db, &cab, false, &mut serviceconnection::progress::ignore)
        .unwrap();
    let r = upload_cab(&svc, Some("SiteVersion"), &cab);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a: UploadResponse = r.json();
    assert_eq!(a.hierarchy_id, h);
    let got: Vec<&str> = a.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, ["hf2207", "u2211", "u10"]);
    let stored = store.uploads();
    assert_eq!(
        std::fs::read(store.content_root().join(&stored[0].path)).unwrap(),
        std::fs::read(&cab).unwrap()
    );

    // The same cab with one byte of compressed data flipped is refused, and not stored.
    let mut bad = std::fs::read(&cab).unwrap();
    let at = bad.len() - 100;
    bad[at] ^= 0xff;
    let r = upload(&svc, None, bad);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let code = r.error_code();
    assert!(
        ["cab_corrupt", "hash_mismatch", "manifest_invalid"].contains(&code.as_str()),
        "{code}"
    );
    assert_eq!(store.uploads().len(), 1);
}

/// Peak resident memory of a process, from /proc (Linux).
#[cfg(target_os = "linux")]
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[cfg(target_os = "linux")] // peak memory from /proc
#[test]
fn memory_stays_flat_for_large_downloads_and_uploads() {
    const BIG: usize = 64 * 1024 * 1024;
    let store = TestStore::new();
    let (id, content) = publish_one_file(&store, "big.bin", &pseudo_random(BIG, 5));
    let want = sha256(&std::fs::read(content.join("big.bin")).unwrap());
    std::fs::remove_dir_all(&content).unwrap();
    let svc = TestService::start(&store, &["--max-upload-bytes", "200000000"]);
    let url = format!("{}/v1/packages/{id}/content/big.bin", svc.url());
    rt().block_on(async {
        use sha2::Digest;
        let mut r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            h.update(&chunk);
        }
        assert_eq!(hex::encode(h.finalize()), want);
    });
    // An upload as large (not a cab, so refused only after it was all received).
    let r = upload(&svc, None, pseudo_random(BIG, 6));
    assert_eq!((r.status, r.error_code().as_str()), (422, "not_a_cab"));
    let peak = peak_rss_bytes(svc.pid());
    assert!(
        peak < (BIG as u64) / 2,
        "the server's peak memory ({peak} bytes) grew with the {BIG}-byte transfers"
    );
}

/// Signals are Unix; Wine cannot deliver a console Ctrl+C to a child (README, Windows).
#[cfg(unix)]
#[test]
fn sigterm_lets_a_download_in_flight_finish() {
    let store = TestStore::new();
    // Larger than the loopback socket buffers can hold, so most is sent after the signal.
    let big = pseudo_random(32 * 1024 * 1024, 9);
    let (id, _) = publish_one_file(&store, "big.bin", &big);
    let svc = TestService::start(&store, &[]);
    let addr = svc.url().strip_prefix("http://").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /v1/packages/{id}/content/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; 4096];
    let n = s.read(&mut got).unwrap();
    got.truncate(n);
    // SAFETY: kill(2) on the child we started.
    unsafe {
        libc::kill(svc.pid() as libc::pid_t, libc::SIGTERM);
    }
    s.read_to_end(&mut got).unwrap();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        got[split..] == big[..],
        "the download in flight was cut short"
    );
    let status = svc.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn concurrent_publishes_are_serialised_and_duplicates_caught() {
    let store = std::sync::Arc::new(TestStore::new());
    let distinct = write_content(&store.dir().join("same"), &[("same.txt", b"same content")]);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            let same = distinct.clone();
            std::thread::spawn(move || {
                if i < 3 {
                    // Three different packs.
                    let c = write_content(
                        &store.dir().join(format!("c{i}")),
                        &[("f.bin", &pseudo_random(200_000, i))],
                    );
                    store
                        .publish_output(
                            &format!("P{i}"),
                            "5.00.9100.1000",
                            PackType::Update,
                            "5.00.9000.1000",
                            None,
                            &[],
                            &c,
                        )
                        .status
                        .success()
                } else {
                    // Three publishes of the same thing: exactly one may win.
                    store
                        .publish_output(
                            "Same",
                            "5.00.9100.1000",
                            PackType::Update,
                            "5.00.9000.1000",
                            None,
                            &[],
                            &same,
                        )
                        .status
                        .success()
                }
            })
        })
        .collect();
    let ok: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(&ok[..3], &[true, true, true]);
    assert_eq!(ok[3..].iter().filter(|b| **b).count(), 1, "{ok:?}");
    let list = store.list();
    assert_eq!(list.len(), 4);
    assert_eq!(dir_entries(&store.content_root().join("packs")).len(), 4);
    assert!(dir_entries(&store.path().join("staging")).is_empty());
}

#[test]
fn the_signing_key_is_needed_to_publish_but_not_to_serve() {
    let (store, id, _) = store_with_pack();
    let out = service::with_catalog(
        Command::new(service::bin())
            .args(["list", "--store"])
            .arg(store.path()),
        store.path(),
    )
    .output_retrying()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&id.to_string()) && text.contains("all hierarchies"),
        "{text}"
    );

    // Keep the key offline: the service still serves what was published.
    let offline = store.dir().join("publisher.key.offline");
    std::fs::rename(store.path().join("publisher.key"), &offline).unwrap();
    let svc = TestService::start(&store, &[]);
    assert_eq!(
        get(&format!("{}/v1/packages/{id}/manifest.json", svc.url())).status,
        200
    );
    let c = write_content(&store.dir().join("c2"), &[("x.txt", b"x")]);
    let out = store.publish_output(
        "New",
        "5.00.9200.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &c,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signing key"));
    assert_eq!(store.list().len(), 1);
    // Nor does keygen replace the key while publisher.pub (what sites trust) is there.
    let out = Command::new(service::bin())
        .args(["keygen", "--store"])
        .arg(store.path())
        .output_retrying()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!store.path().join("publisher.key").exists());
}

#[test]
fn a_stalled_client_is_disconnected_after_the_idle_timeout() {
    let store = TestStore::new();
    let big = pseudo_random(32 * 1024 * 1024, 13);
    let (id, _) = publish_one_file(&store, "big.bin", &big);
    let svc = TestService::start(&store, &["--idle-timeout", "1"]);
    let addr = svc.url().strip_prefix("http://").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /v1/packages/{id}/content/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    // Stop reading until the server has given up on us (it logs that), then drain.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !svc.log().contains("closing a connection idle") {
        assert!(
            std::time::Instant::now() < deadline,
            "never closed: {}",
            svc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        got.len() < big.len(),
        "the stalled download should have been cut"
    );
    // Everyone else is still served.
    let r = get(&format!("{}/v1/packages/{id}/content/big.bin", svc.url()));
    assert!(r.status == 200 && r.body == big);
}

/// At `--max-connections`, a further client waits (in the listen backlog) instead of
/// being served alongside, and is served as soon as a connection closes.
#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let store = TestStore::new();
    let svc = TestService::start(&store, &["--max-connections", "1"]);
    let addr = svc.url().strip_prefix("http://").unwrap().to_string();
    let health = |s: &mut std::net::TcpStream| {
        write!(s, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).map(|_| buf)
    };
    // The one connection allowed, kept open (keep-alive) after a first answer.
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(&health(&mut held).unwrap(), b"HTTP/1.1 200");
    // A second client connects (the kernel queues it) but gets no answer while held.
    let mut waiting = std::net::TcpStream::connect(&addr).unwrap();
    waiting
        .set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    let e = health(&mut waiting).expect_err("answered beyond the connection cap");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    // Closing the held connection lets the waiting one in; its request was queued.
    drop(held);
    waiting
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 12];
    waiting.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[test]
fn a_foreign_or_newer_catalog_is_refused_untouched() {
    let store = TestStore::new();
    let catalog = store.path().join("catalog.sqlite");
    let list_err = || {
        let out = Command::new(service::bin())
            .args(["list", "--store"])
            .arg(store.path())
            .output_retrying()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    {
        let c = rusqlite::Connection::open(&catalog).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = std::fs::read(&catalog).unwrap();
    let err = list_err();
    assert!(err.contains("newer sct-service"), "{err}");
    assert_eq!(std::fs::read(&catalog).unwrap(), before);
    // A site database (or any other SQLite file) is not a catalog.
    std::fs::remove_file(&catalog).unwrap();
    serviceconnection::Site::create(
        &catalog,
        &serviceconnection::NewSite {
            site_code: "PS1".into(),
            site_version: V_SITE.parse().unwrap(),
            diagnostics_level: Default::default(),
            hierarchy_id: None,
            site_name: None,
            scp_mode: Default::default(),
        },
    )
    .unwrap();
    let err = list_err();
    assert!(err.contains("not an sct-service catalog"), "{err}");
}
