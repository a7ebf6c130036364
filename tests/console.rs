//! Console content end to end (SPEC section 10), over the real `sct-service` on 127.0.0.1,
//! real site databases and the real command-line tools: publish → serve (ETag, 304) →
//! Connect (fetch, unchanged, resume, none published) → Import (verify, filter, record,
//! rollback, tampering, crash) → read back (`-consolecontent`, the library).

#[cfg(unix)]
#[path = "common/fifo.rs"]
mod fifo;
#[path = "common/service.rs"]
mod service;
#[path = "common/site.rs"]
mod site;
#[path = "common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use serviceconnection::connect::{connect, ConnectOptions, ConsoleStatus};
use serviceconnection::console::{DOCUMENT_FILE, FOLDER, SIGNATURE_FILE};
use serviceconnection::import::{import, ImportItem, ImportOptions, ImportResult, ImportStatus};
use serviceconnection::progress;
use serviceconnection::signing::PublicKey;
use serviceconnection::site::DiagnosticsLevel;
use serviceconnection::{ErrorKind, Site};
use start::Start;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOOL: &str = env!("CARGO_BIN_EXE_serviceconnectiontool");

/// A change made to a drive's `ConsoleContent` folder.
type Mutation = Box<dyn Fn(&Path)>;
/// A change made to a publisher's draft.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;
/// Another hierarchy than the test site's (`site::HIERARCHY`).
const OTHER: &str = "9a1b2c3d-0000-4000-8000-00000000beef";

/// A publisher's draft: two servicing rows and four messages — one for this site's
/// hierarchy, one for another hierarchy only, one for every hierarchy, one expired.
fn draft(tag: &str) -> serde_json::Value {
    serde_json::json!({
        "servicing": [
            {"product": "Windows 11", "version": "24H2", "build": "26100.2454",
             "channel": "General Availability", "release_date": "2024-10-01",
             "end_of_servicing": "2026-10-13"},
            {"product": "Windows 10 Enterprise LTSC 2021", "build": "19044",
             "channel": "LTSC", "release_date": "2021-11-16",
             "end_of_servicing": "2027-01-12T00:00:00Z"}
        ],
        "messages": [
            {"id": format!("mine-{tag}"), "severity": "Warning", "title": "For this hierarchy",
             "body": "Install the 2509 hotfix.\nThen restart.", "published": "2026-11-01",
             "hierarchies": [site::HIERARCHY]},
            {"id": format!("theirs-{tag}"), "severity": "Critical", "title": "SECRET-OTHER-HIERARCHY",
             "body": "Only for another hierarchy.", "published": "2026-11-02",
             "hierarchies": [OTHER]},
            {"id": format!("all-{tag}"), "severity": "Info", "title": "For everyone",
             "body": "Servicing dashboard refreshed.", "link": "https://contoso.com/kb1",
             "published": "2026-11-03T08:00:00Z"},
            {"id": format!("old-{tag}"), "severity": "Info", "title": "Expired notice",
             "body": "Long gone.", "published": "2020-01-01", "expires": "2020-02-01"}
        ]
    })
}

/// Run `sct-service console publish` with `doc`; returns (success, stdout, stderr).
fn publish_console(store: &service::TestStore, doc: &serde_json::Value) -> (bool, String, String) {
    let file = store
        .dir()
        .join(format!("draft-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = site::output(
        Command::new(service::bin())
            .args(["console", "publish", "--store"])
            .arg(store.path())
            .arg(&file),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn publish_ok(store: &service::TestStore, doc: &serde_json::Value) -> u64 {
    let (ok, out, err) = publish_console(store, doc);
    assert!(ok, "console publish failed: {err}");
    out.trim().parse().expect("publish prints the version")
}

/// A site (hierarchy `site::HIERARCHY`) with sample rows, trusting `key`; and a usage cab.
struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
    cab: PathBuf,
}

impl Env {
    fn new(key: Option<&Path>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 50);
        if let Some(k) = key {
            let s = Site::open(&db).unwrap();
            s.add_trusted_publisher(&PublicKey::from_file(k).unwrap(), "test")
                .unwrap();
        }
        let cab = dir.path().join("UsageData.cab");
        serviceconnection::usage::prepare(&db, &cab, false, &mut progress::ignore).unwrap();
        Env { dir, db, cab }
    }
    fn drive(&self) -> PathBuf {
        self.dir.path().join("UpdatePacks")
    }
    fn connect(&self, url: &str) -> serviceconnection::connect::ConnectReport {
        let mut o = ConnectOptions::new(&self.cab, self.drive(), url);
        o.retry_base_delay_ms = 10;
        connect(&o, &mut progress::ignore).expect("connect runs")
    }
    fn import_from(&self, src: &Path) -> Vec<ImportResult> {
        import(&ImportOptions::new(&self.db, src), &mut progress::ignore).expect("import runs")
    }
    fn console_item(&self, src: &Path) -> Option<ImportResult> {
        self.import_from(src)
            .into_iter()
            .find(|r| r.item == ImportItem::ConsoleContent)
    }
    fn held(&self) -> Option<u64> {
        Site::open(&self.db)
            .unwrap()
            .console_content()
            .unwrap()
            .content_version
    }
}

/// Copy version `n` from the store to `<drive>/ConsoleContent/`, as Connect would leave it.
fn stage_from_store(store: &service::TestStore, n: u64, drive: &Path) -> PathBuf {
    let from = store.path().join("console").join(n.to_string());
    let to = drive.join(FOLDER);
    std::fs::create_dir_all(&to).unwrap();
    for f in [DOCUMENT_FILE, SIGNATURE_FILE] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to
}

/// One raw HTTP/1.1 GET on 127.0.0.1: (status, headers lower-cased, body).
fn http_get(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hs, raw[split + 4..].to_vec())
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_whole_path_over_the_real_service() {
    let store = service::TestStore::new();
    assert_eq!(publish_ok(&store, &draft("v1")), 1);
    let svc = service::TestService::start(&store, &[]);
    let env = Env::new(Some(&store.public_key_path()));

    // Connect fetches it once, after the uploads, into <dest>/ConsoleContent/.
    let r = env.connect(svc.url());
    assert!(r.is_success(), "{r:#?}");
    let c = r
        .console_content
        .as_ref()
        .expect("console content reported");
    assert_eq!(c.status, ConsoleStatus::Downloaded, "{c:#?}");
    assert_eq!(c.content_version, Some(1));
    let folder = env.drive().join(FOLDER);
    let doc = std::fs::read(folder.join(DOCUMENT_FILE)).unwrap();
    assert_eq!(c.bytes_transferred, doc.len() as u64);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.drive().join("connect-report.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["console_content"]["status"], "Downloaded");

    // Stock minisign verifies the published signature (a Linux program: on Windows the
    // format is the same bytes, checked here on Linux).
    #[cfg(unix)]
    {
        let (ok, out) = site::tool(
            "minisign",
            &[
                "-Vm",
                folder.join(DOCUMENT_FILE).to_str().unwrap(),
                "-x",
                folder.join(SIGNATURE_FILE).to_str().unwrap(),
                "-p",
                store.public_key_path().to_str().unwrap(),
            ],
            env.dir.path(),
        );
        assert!(ok, "minisign -V refused the signature: {out}");
        assert!(out.contains("console-content version:1"), "{out}");
    }

    // Again: the copy is current, the service answers 304, nothing is sent.
    let r2 = env.connect(svc.url());
    let c2 = r2.console_content.unwrap();
    assert_eq!(c2.status, ConsoleStatus::Unchanged, "{c2:#?}");
    assert_eq!(c2.bytes_transferred, 0);
    assert_eq!(std::fs::read(folder.join(DOCUMENT_FILE)).unwrap(), doc);

    // Import: verified, filtered to this hierarchy, recorded; once.
    let item = env
        .console_item(&env.drive())
        .expect("a console content item");
    assert_eq!(item.status, ImportStatus::Imported, "{item:#?}");
    assert_eq!(item.version.as_deref(), Some("1"));
    assert!(
        item.reason.as_deref().unwrap().contains("3 of 4 messages"),
        "{item:#?}"
    );
    let again = env.console_item(&env.drive()).unwrap();
    assert_eq!(again.status, ImportStatus::AlreadyImported, "{again:#?}");

    let view = Site::open(&env.db).unwrap().console_content().unwrap();
    assert_eq!(view.content_version, Some(1));
    assert_eq!(view.servicing.len(), 2);
    assert_eq!(view.servicing[1].build.as_deref(), Some("19044"));
    let ids: Vec<&str> = view
        .messages
        .iter()
        .map(|m| m.message.id.as_str())
        .collect();
    // Most severe first, then newest first; the other hierarchy's message is gone.
    assert_eq!(ids, ["mine-v1", "all-v1", "old-v1"]);
    assert!(view.messages[2].expired && !view.messages[0].expired);

    // Read back through the command line: text hides expired, -json has everything we keep.
    let out = site::output(
        Command::new(TOOL)
            .args(["-consolecontent", "-sitedb"])
            .arg(&env.db),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Console content version 1"), "{text}");
    assert!(
        text.contains("mine-v1") && text.contains("Windows 11"),
        "{text}"
    );
    assert!(
        !text.contains("old-v1") && text.contains("1 expired message(s) hidden"),
        "{text}"
    );
    let out = site::output(
        Command::new(TOOL)
            .args(["-CONSOLECONTENT", "-json", "-includeexpired", "-sitedb"])
            .arg(&env.db),
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["content_version"], 1);
    // The JSON shape is the library's view, field for field.
    let typed: serviceconnection::site::console::ConsoleContentView =
        serde_json::from_str(&json).unwrap();
    assert_eq!(typed, view);
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    // Another hierarchy's message is never shown, anywhere.
    for shown in [text.to_string(), json.to_string()] {
        assert!(!shown.contains("SECRET-OTHER-HIERARCHY") && !shown.contains("theirs-v1"));
    }
    // Nor is it stored: the table read directly, not through the library.
    let titles: String = rusqlite::Connection::open(&env.db)
        .unwrap()
        .query_row(
            "SELECT coalesce(group_concat(title), '') FROM console_messages",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(titles.contains("For this hierarchy"), "{titles}");
    assert!(!titles.contains("SECRET-OTHER-HIERARCHY"), "{titles}");

    // A newer publication reaches the site on the next trip.
    assert_eq!(publish_ok(&store, &draft("v2")), 2);
    let r3 = env.connect(svc.url());
    let c3 = r3.console_content.unwrap();
    assert_eq!(
        (c3.status, c3.content_version),
        (ConsoleStatus::Downloaded, Some(2))
    );
    let item = env.console_item(&env.drive()).unwrap();
    assert_eq!(item.status, ImportStatus::Imported, "{item:#?}");
    assert_eq!(env.held(), Some(2));

    // The service keeps every version and lists them.
    let out = site::output(
        Command::new(service::bin())
            .args(["list", "--console", "--json", "--store"])
            .arg(store.path()),
    );
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["content_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let out = site::output(
        Command::new(service::bin())
            .args(["list", "--store"])
            .arg(store.path()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("console content version 1") && text.contains("console content version 2"),
        "{text}"
    );
    drop(svc);
}

#[test]
fn the_service_answers_304_on_if_none_match_and_serves_the_newest() {
    let store = service::TestStore::new();
    let svc = service::TestService::start(&store, &[]);
    // Nothing published yet: a clear 404.
    let (status, _, body) = http_get(svc.url(), "/v1/console-content", &[]);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no console content"));

    publish_ok(&store, &draft("a"));
    let (status, hs, body) = http_get(svc.url(), "/v1/console-content", &[]);
    assert_eq!(status, 200);
    let etag = header(&hs, "etag").unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", serviceconnection::hashing::sha256_hex(&body))
    );
    let (status, _, body304) = http_get(
        svc.url(),
        "/v1/console-content",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(status, 304);
    assert!(body304.is_empty());
    let (status, _, sig) = http_get(svc.url(), "/v1/console-content.json.minisig", &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&sig).contains("console-content version:1"));

    // A second publication is served at once, and the old ETag no longer matches.
    publish_ok(&store, &draft("b"));
    let (status, _, body2) = http_get(
        svc.url(),
        "/v1/console-content",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body2).unwrap();
    assert_eq!(doc["content_version"], 2);
    // Ranges work on it (what a resumed Connect asks for).
    let (status, hs, part) = http_get(svc.url(), "/v1/console-content", &[("Range", "bytes=10-")]);
    assert_eq!(status, 206);
    assert_eq!(part, body2[10..]);
    assert!(header(&hs, "content-range")
        .unwrap()
        .starts_with("bytes 10-"));
}

#[test]
fn connect_against_a_service_without_console_content_still_succeeds() {
    let store = service::TestStore::new();
    let content = service::write_content(&store.dir().join("c"), &[("a.bin", b"payload")]);
    store.publish(
        "Configuration Manager 2509",
        "5.00.9132.1000",
        serviceconnection::api::PackType::Update,
        site::SITE_VERSION,
        None,
        &[],
        &content,
    );
    let svc = service::TestService::start(&store, &[]);
    let env = Env::new(Some(&store.public_key_path()));
    let out = site::output(
        Command::new(TOOL)
            .args(["-connect", "-json", "-usagedatasrc"])
            .arg(&env.cab)
            .arg("-updatepackdest")
            .arg(env.drive())
            .args(["-serviceuri", svc.url()]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["console_content"]["status"], "NonePublished");
    assert_eq!(r["packs"][0]["status"], "Downloaded");
    assert!(
        !env.drive().join(FOLDER).exists(),
        "an empty ConsoleContent folder"
    );
    // Import of that drive: the pack, and no console content item at all.
    let results = env.import_from(&env.drive());
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0].status, ImportStatus::Imported);
    assert_eq!(results[0].item, ImportItem::UpdatePack);
    assert_eq!(env.held(), None);
}

#[test]
fn an_interrupted_download_is_resumed_with_a_range() {
    let store = service::TestStore::new();
    publish_ok(&store, &draft("r"));
    let svc = service::TestService::start(&store, &[]);
    let env = Env::new(None);
    let full = std::fs::read(store.path().join("console/1").join(DOCUMENT_FILE)).unwrap();
    let sha = serviceconnection::hashing::sha256_hex(&full);
    let folder = env.drive().join(FOLDER);
    std::fs::create_dir_all(&folder).unwrap();
    let half = full.len() / 2;
    let partial = folder.join(format!("{DOCUMENT_FILE}.{sha}.sct-partial"));
    std::fs::write(&partial, &full[..half]).unwrap();
    let c = env.connect(svc.url()).console_content.unwrap();
    assert_eq!(c.status, ConsoleStatus::Downloaded, "{c:#?}");
    assert!(c.resumed);
    assert_eq!(c.bytes_transferred, (full.len() - half) as u64);
    assert_eq!(std::fs::read(folder.join(DOCUMENT_FILE)).unwrap(), full);
    assert!(!partial.exists());

    // A partial of wrong bytes under the right name is caught by the hash, never kept.
    std::fs::remove_file(folder.join(DOCUMENT_FILE)).unwrap();
    let mut bad = full[..half].to_vec();
    bad[0] ^= 0x55;
    std::fs::write(&partial, &bad).unwrap();
    let c = env.connect(svc.url()).console_content.unwrap();
    assert_eq!(c.status, ConsoleStatus::Failed, "{c:#?}");
    assert_eq!(c.kind, Some(ErrorKind::IntegrityMismatch));
    assert!(!folder.join(DOCUMENT_FILE).exists() && !partial.exists());
    // ...and the next run fetches it whole.
    let c = env.connect(svc.url()).console_content.unwrap();
    assert_eq!(c.status, ConsoleStatus::Downloaded, "{c:#?}");
    assert_eq!(std::fs::read(folder.join(DOCUMENT_FILE)).unwrap(), full);

    // A partial of an older publication: If-Range no longer matches, the newest comes whole.
    publish_ok(&store, &draft("r2"));
    let newest = std::fs::read(store.path().join("console/2").join(DOCUMENT_FILE)).unwrap();
    std::fs::remove_file(folder.join(DOCUMENT_FILE)).unwrap();
    std::fs::write(&partial, &full[..half]).unwrap();
    let c = env.connect(svc.url()).console_content.unwrap();
    assert_eq!(
        (c.status, c.content_version),
        (ConsoleStatus::Downloaded, Some(2)),
        "{c:#?}"
    );
    assert!(!c.resumed);
    assert_eq!(c.bytes_transferred, newest.len() as u64);
    assert_eq!(std::fs::read(folder.join(DOCUMENT_FILE)).unwrap(), newest);
    assert!(!partial.exists(), "the stale partial is removed");

    // A link planted under the name the newest document's partial has is refused, never
    // followed: the file it names outside the drive is neither cut nor written. Unix
    // only: Wine creates no symbolic links.
    #[cfg(unix)]
    {
        std::fs::remove_file(folder.join(DOCUMENT_FILE)).unwrap();
        let sha = serviceconnection::hashing::sha256_hex(&newest);
        let partial = folder.join(format!("{DOCUMENT_FILE}.{sha}.sct-partial"));
        let victim = env.dir.path().join("precious");
        std::fs::write(&victim, b"not the drive's to touch").unwrap();
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        // The console content failed, refused as unsafe for the reason given.
        let refused = |c: &serviceconnection::connect::ConsoleReport, why: &str| {
            assert_eq!(c.status, ConsoleStatus::Failed, "{c:#?}");
            assert_eq!(c.kind, Some(ErrorKind::UnsafePath), "{c:#?}");
            assert!(c.message.as_deref().unwrap().contains(why), "{c:#?}");
        };
        let c = env.connect(svc.url()).console_content.unwrap();
        refused(&c, "is a symbolic link; links are never followed");
        assert_eq!(std::fs::read(&victim).unwrap(), b"not the drive's to touch");
        assert!(!folder.join(DOCUMENT_FILE).exists());
        // A FIFO there is refused too, without waiting for a reader (the watchdog lets
        // such a wait go after 20 s, so that the test fails instead of hanging).
        std::fs::remove_file(&partial).unwrap();
        fifo::mkfifo(&partial);
        let watchdog =
            fifo::Watchdog::new(vec![partial.clone()], std::time::Duration::from_secs(20));
        let started = std::time::Instant::now();
        let c = env.connect(svc.url()).console_content.unwrap();
        assert!(started.elapsed().as_secs() < 20, "waited on a FIFO");
        drop(watchdog);
        refused(&c, "is not a regular file");
        // Once it is gone, the next run fetches the document.
        std::fs::remove_file(&partial).unwrap();
        let c = env.connect(svc.url()).console_content.unwrap();
        assert_eq!(c.status, ConsoleStatus::Downloaded, "{c:#?}");
        assert_eq!(std::fs::read(folder.join(DOCUMENT_FILE)).unwrap(), newest);
    }
}

#[test]
fn a_rollback_is_refused_with_a_reason_that_says_so() {
    let store = service::TestStore::new();
    publish_ok(&store, &draft("1"));
    publish_ok(&store, &draft("2"));
    let env = Env::new(Some(&store.public_key_path()));
    let newer = env.dir.path().join("newer");
    stage_from_store(&store, 2, &newer);
    assert_eq!(
        env.console_item(&newer).unwrap().status,
        ImportStatus::Imported
    );
    let before = site::snapshot(env.dir.path());
    let older = env.dir.path().join("older");
    stage_from_store(&store, 1, &older);
    let item = env.console_item(&older).unwrap();
    assert_eq!(item.status, ImportStatus::Refused, "{item:#?}");
    assert_eq!(item.error_kind.as_deref(), Some("Conflict"));
    let reason = item.reason.unwrap();
    assert!(
        reason.contains("rollback") && reason.contains("version 1") && reason.contains("version 2"),
        "{reason}"
    );
    assert_eq!(env.held(), Some(2));
    let view = Site::open(&env.db).unwrap().console_content().unwrap();
    assert!(view.messages.iter().any(|m| m.message.id == "mine-2"));
    // Nothing at all changed in the site's folder (the drive copies aside).
    let after = site::snapshot(env.dir.path());
    let strip = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .filter(|(k, _)| !k.starts_with("older") && !k.starts_with("site.db"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after));
    // The command line says it too, and fails.
    let out = site::output(
        Command::new(TOOL)
            .args(["-import", "-sitedb"])
            .arg(&env.db)
            .arg("-updatepacksrc")
            .arg(&older),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rollback refused"));
}

#[test]
fn tampered_unsigned_and_untrusted_documents_are_refused_and_nothing_is_recorded() {
    let store = service::TestStore::new();
    publish_ok(&store, &draft("t"));
    let env = Env::new(Some(&store.public_key_path()));
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "tampered",
            Box::new(|f: &Path| {
                let p = f.join(DOCUMENT_FILE);
                let s = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, s.replace("For everyone", "For everyonE")).unwrap();
            }),
            "does not verify",
        ),
        (
            "unsigned",
            Box::new(|f: &Path| std::fs::remove_file(f.join(SIGNATURE_FILE)).unwrap()),
            "not signed",
        ),
        (
            "signature without document",
            Box::new(|f: &Path| std::fs::remove_file(f.join(DOCUMENT_FILE)).unwrap()),
            "is missing",
        ),
        (
            "garbage signature",
            Box::new(|f: &Path| std::fs::write(f.join(SIGNATURE_FILE), "not a signature").unwrap()),
            "malformed",
        ),
    ];
    for (name, mutate, needle) in cases {
        let src = env.dir.path().join(name.replace(' ', "-"));
        let folder = stage_from_store(&store, 1, &src);
        mutate(&folder);
        let item = env.console_item(&src).unwrap();
        assert_eq!(item.status, ImportStatus::Refused, "{name}: {item:#?}");
        let reason = item.reason.clone().unwrap();
        assert!(reason.contains(needle), "{name}: {reason}");
        if name != "signature without document" {
            assert_eq!(
                item.error_kind.as_deref(),
                Some("SignatureInvalid"),
                "{name}"
            );
        }
        assert_eq!(env.held(), None, "{name}: something was recorded");
    }

    // Hostile shapes of the folder: an oversized document is refused unread, a linked
    // folder is never followed.
    let big = env.dir.path().join("oversized");
    let folder = stage_from_store(&store, 1, &big);
    std::fs::File::options()
        .write(true)
        .open(folder.join(DOCUMENT_FILE))
        .unwrap()
        .set_len(serviceconnection::console::MAX_DOCUMENT_BYTES + 1)
        .unwrap();
    let item = env.console_item(&big).unwrap();
    assert_eq!(item.status, ImportStatus::Refused);
    assert!(item.reason.unwrap().contains("refused unread"));
    {
        let linked = env.dir.path().join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        let real = stage_from_store(&store, 1, &env.dir.path().join("real"));
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(&real, linked.join(FOLDER));
        #[cfg(windows)]
        let made = std::os::windows::fs::symlink_dir(&real, linked.join(FOLDER));
        // Windows needs a privilege for links, and Wine 8 reports success for
        // CreateSymbolicLinkW and creates nothing: shown where a link can be made.
        if made.is_ok() && linked.join(FOLDER).symlink_metadata().is_ok() {
            let item = env.console_item(&linked).unwrap();
            assert_eq!(item.status, ImportStatus::Refused);
            assert_eq!(item.error_kind.as_deref(), Some("UnsafePath"));
        } else {
            #[cfg(unix)]
            panic!("no symbolic link on Unix: {made:?}");
            #[cfg(windows)]
            eprintln!("skipped the linked folder: no symbolic link can be made here ({made:?})");
        }
    }
    assert_eq!(env.held(), None);

    // A site that trusts another key: refused as untrusted, nothing recorded.
    let stranger = Env::new(Some(&service::TestStore::new().public_key_path()));
    let src = stranger.dir.path().join("drive");
    stage_from_store(&store, 1, &src);
    let item = stranger.console_item(&src).unwrap();
    assert_eq!(item.status, ImportStatus::Refused);
    assert!(item.reason.unwrap().contains("does not trust"));
    assert_eq!(stranger.held(), None);

    // And one that trusts nothing at all.
    let nobody = Env::new(None);
    let src = nobody.dir.path().join("drive");
    stage_from_store(&store, 1, &src);
    let item = nobody.console_item(&src).unwrap();
    assert_eq!(item.status, ImportStatus::Refused);
    assert_eq!(item.error_kind.as_deref(), Some("SignatureInvalid"));
    assert_eq!(nobody.held(), None);
}

/// Start the command line's Import of `src` into `env`'s site, paused at `stage` (the
/// `import::PAUSE_ENV` hook), and return once it is there. The hook's marker goes to a flag
/// file rather than a pipe: Windows has no `/dev/stdout`, and under Wine a pipe can stay
/// open in Wine's own background processes.
fn import_paused_at(env: &Env, src: &Path, stage: &str) -> std::process::Child {
    let flag = env.dir.path().join(format!("paused-{stage}.txt"));
    let mut child = Command::new(TOOL)
        .args(["-import", "-sitedb"])
        .arg(&env.db)
        .arg("-updatepacksrc")
        .arg(src)
        .env(
            serviceconnection::import::PAUSE_ENV,
            format!("{stage}:{}", flag.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_retrying()
        .unwrap();
    let marker = format!("SCT_TEST_PAUSED {stage}");
    loop {
        if std::fs::read_to_string(&flag).is_ok_and(|t| t.contains(&marker)) {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("import never reached {stage}: it exited with {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn kill_9_during_import_leaves_the_previous_version_intact() {
    let store = service::TestStore::new();
    publish_ok(&store, &draft("k1"));
    publish_ok(&store, &draft("k2"));
    let env = Env::new(Some(&store.public_key_path()));
    let v1 = env.dir.path().join("v1");
    stage_from_store(&store, 1, &v1);
    assert_eq!(
        env.console_item(&v1).unwrap().status,
        ImportStatus::Imported
    );
    let v2 = env.dir.path().join("v2");
    stage_from_store(&store, 2, &v2);

    for stage in ["console-verified", "console-recorded"] {
        let mut child = import_paused_at(&env, &v2, stage);
        child.kill().unwrap(); // SIGKILL; TerminateProcess on Windows
        child.wait().unwrap();
        assert_eq!(site::integrity_check(&env.db), "ok");
        assert_eq!(env.held(), Some(1), "killed at {stage}");
        let view = Site::open(&env.db).unwrap().console_content().unwrap();
        assert!(
            view.messages.iter().all(|m| m.message.id.ends_with("k1")),
            "{stage}"
        );
    }
    // The re-run completes the work.
    let item = env.console_item(&v2).unwrap();
    assert_eq!(item.status, ImportStatus::Imported, "{item:#?}");
    assert_eq!(env.held(), Some(2));
}

#[test]
fn publish_refuses_bad_documents_with_clear_errors_and_stores_nothing() {
    let store = service::TestStore::new();
    let bad: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["content_version"] = 9.into()),
            "content_version",
        ),
        (
            Box::new(|v| v["messages"][0]["severity"] = "Urgent".into()),
            "Urgent",
        ),
        (
            Box::new(|v| v["messages"][3]["expires"] = "2019-12-31".into()),
            "not after",
        ),
        (
            Box::new(|v| v["messages"][0]["hierarchies"][0] = "PS1".into()),
            "GUID",
        ),
        (
            Box::new(|v| v["messages"][1]["id"] = "mine-x".into()),
            "unique",
        ),
        (
            Box::new(|v| v["servicing"][0]["release_date"] = "Oct 2024".into()),
            "not a date",
        ),
        (Box::new(|v| v["surprise"] = true.into()), "surprise"),
    ];
    for (i, (mutate, needle)) in bad.into_iter().enumerate() {
        let mut doc = draft("x");
        mutate(&mut doc);
        let (ok, _, err) = publish_console(&store, &doc);
        assert!(!ok, "case {i} was accepted");
        assert!(err.contains(needle), "case {i}: {err}");
        assert_eq!(err.lines().count(), 1, "case {i}: {err}");
    }
    assert!(
        !store.path().join("console").exists()
            || std::fs::read_dir(store.path().join("console"))
                .unwrap()
                .next()
                .is_none()
    );
    let (ok, _, err) = publish_console(&store, &serde_json::json!("not an object"));
    assert!(!ok && err.contains("console content"), "{err}");
    // The first good one is version 1.
    assert_eq!(publish_ok(&store, &draft("x")), 1);
}

#[test]
fn a_schema_1_site_is_migrated_forward_and_read_only_readers_see_no_content() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Basic, 10);
    // Make it what the previous release wrote: schema 1, no console tables.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "DROP TABLE console_messages; DROP TABLE console_servicing; DROP TABLE console_content;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let version = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    // A reader (the command line's -consolecontent opens read-only) changes nothing.
    let out = site::output(
        Command::new(TOOL)
            .args(["-consolecontent", "-json", "-sitedb"])
            .arg(&db),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["imported"], false);
    assert_eq!(version(&db), 1);
    let out = site::output(
        Command::new(TOOL)
            .args(["-listupdates", "-sitedb"])
            .arg(&db),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Opening it for writing migrates it in place, keeping its data.
    let site = Site::open(&db).unwrap();
    assert_eq!(version(&db), 2);
    assert_eq!(site.info().unwrap().usage_rows.iter().sum::<u64>(), 10);
    assert!(!site.console_content().unwrap().imported);
}

#[test]
fn when_no_upload_gets_through_the_console_content_is_skipped_not_failed_twice() {
    let store = service::TestStore::new();
    publish_ok(&store, &draft("s"));
    let token = store.token_file("tok-123");
    let svc = service::TestService::start_args(
        store.path(),
        [std::ffi::OsStr::new("--token-file"), token.as_os_str()],
    );
    let env = Env::new(None);
    let r = env.connect(svc.url());
    assert!(!r.is_success());
    assert_eq!(
        r.uploads[0].status,
        serviceconnection::connect::UploadStatus::Failed
    );
    let c = r.console_content.unwrap();
    assert_eq!(c.status, ConsoleStatus::Skipped, "{c:#?}");
    assert!(c.message.unwrap().starts_with("not fetched:"));
    assert!(!env.drive().join(FOLDER).exists());
    // With the token it goes through.
    let mut o = ConnectOptions::new(&env.cab, env.drive(), svc.url());
    o.token = Some("tok-123".into());
    let r = connect(&o, &mut progress::ignore).unwrap();
    assert_eq!(r.console_content.unwrap().status, ConsoleStatus::Downloaded);
}
