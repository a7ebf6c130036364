//! Connect against the real reference service (`sct-service serve` on 127.0.0.1), with
//! usage cabs made by the real Prepare, through the real tinyproxy, with real TLS, and a
//! real process killed mid-download.

// On Windows the tinyproxy and TLS tests are left out (Linux programs): what only they
// use is unused there.
#![cfg_attr(windows, allow(dead_code, unused_imports))]

#[cfg(unix)]
#[path = "common/fifo.rs"]
mod fifo;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/service.rs"]
mod service;
#[path = "common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;
#[path = "common/tls.rs"]
mod tls;

#[cfg(unix)]
use proxy::TinyProxy;
use proxy::{Action, Flaky};
use service::{pseudo_random, write_content, TestService, TestStore};
use serviceconnection::api::{PackType, Selection};
use serviceconnection::connect::{
    connect, ConnectOptions, ConnectReport, FileStatus, PackReport, PackStatus, ProxyOptions,
    UploadStatus, REPORT_FILE,
};
use serviceconnection::pack::manifest::{CONTENT_DIR, MANIFEST_FILE, SIGNATURE_FILE};
use serviceconnection::progress::{Phase, Progress};
use serviceconnection::{ErrorKind, NewSite, Site};
use start::Start;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SITE_VERSION: &str = "5.00.9128.1000";

/// A usage cab made the real way: a site database with sample rows, then Prepare.
fn usage_cab(dir: &Path, name: &str, site_version: &str) -> (PathBuf, uuid::Uuid) {
    let db = dir.join(format!("{name}.db"));
    let mut site = Site::create(
        &db,
        &NewSite {
            site_code: "PS1".into(),
            site_version: site_version.parse().unwrap(),
            diagnostics_level: Default::default(),
            hierarchy_id: None,
            site_name: None,
            scp_mode: Default::default(),
        },
    )
    .unwrap();
    serviceconnection::site::sample::generate(&mut site, 40, 7).unwrap();
    let hierarchy = site.info().unwrap().hierarchy_id;
    drop(site);
    let cab = dir.join(format!("{name}.cab"));
    serviceconnection::usage::prepare(&db, &cab, false, &mut serviceconnection::progress::ignore)
        .unwrap();
    (cab, hierarchy)
}

/// Options tuned for tests: quick backoff, few attempts.
fn options(source: &Path, dest: &Path, url: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(source, dest, url);
    o.retry_base_delay_ms = 20;
    o.max_attempts = 3;
    o.idle_timeout_secs = 20;
    o
}

fn run(opts: &ConnectOptions) -> serviceconnection::Result<ConnectReport> {
    connect(opts, &mut serviceconnection::progress::ignore)
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn partials(root: &Path) -> Vec<String> {
    tree(root)
        .into_iter()
        .filter(|p| p.ends_with(".sct-partial"))
        .collect()
}

/// Publish update `name` (5.00.9132.1000, for a site at [`SITE_VERSION`]) with these files
/// as its content, written under `store.dir()/c`. Returns the pack id.
fn publish_update(store: &TestStore, name: &str, files: &[(&str, &[u8])]) -> uuid::Uuid {
    let content = write_content(&store.dir().join("c"), files);
    store.publish(
        name,
        "5.00.9132.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &content,
    )
}

fn pack(r: &ConnectReport, id: uuid::Uuid) -> &PackReport {
    r.packs
        .iter()
        .find(|p| p.package_guid == id)
        .unwrap_or_else(|| panic!("pack {id} not in report: {r:#?}"))
}

/// A store holding the usual scene: an older and a newer update, a hotfix, and an update
/// for an older site version that no longer applies.
struct Scene {
    store: TestStore,
    update_old: uuid::Uuid,
    update_new: uuid::Uuid,
    hotfix: uuid::Uuid,
    stale: uuid::Uuid,
    new_files: Vec<(String, Vec<u8>)>,
}

fn scene() -> Scene {
    let store = TestStore::new();
    let new_files = vec![
        ("setup.exe".to_string(), pseudo_random(300_000, 1)),
        (
            "payload/data 1/big.cab".to_string(),
            pseudo_random(1_200_000, 2),
        ),
        ("empty.txt".to_string(), Vec::new()),
    ];
    let mk = |name: &str, files: &[(String, Vec<u8>)]| {
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        write_content(&store.dir().join(name), &refs)
    };
    let c_old = mk("c_old", &[("a.bin".into(), pseudo_random(50_000, 3))]);
    let c_new = mk("c_new", &new_files);
    let c_hf = mk("c_hf", &[("fix.msp".into(), pseudo_random(20_000, 4))]);
    let c_stale = mk("c_stale", &[("old.bin".into(), pseudo_random(10_000, 5))]);
    let update_old = store.publish(
        "Update 2207",
        "5.00.9130.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &c_old,
    );
    let update_new = store.publish(
        "Update 2303",
        "5.00.9132.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &c_new,
    );
    let hotfix = store.publish(
        "Hotfix KB1",
        "5.00.9129.1001",
        PackType::Hotfix,
        SITE_VERSION,
        None,
        &[],
        &c_hf,
    );
    let stale = store.publish(
        "Update 2203",
        "5.00.9120.1000",
        PackType::Update,
        "5.00.9100.1000",
        Some("5.00.9120.1000"),
        &[],
        &c_stale,
    );
    Scene {
        store,
        update_old,
        update_new,
        hotfix,
        stale,
        new_files,
    }
}

#[test]
fn single_cab_latest_layout_report_and_progress_on_callers_thread() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site1", SITE_VERSION);
    let dest = work.path().join("UpdatePacks");
    let caller = std::thread::current().id();
    let mut events: Vec<Progress> = Vec::new();
    let mut foreign_thread = false;
    let report = connect(&options(&cab, &dest, svc.url()), &mut |p: &Progress| {
        foreign_thread |= std::thread::current().id() != caller;
        events.push(p.clone());
        true
    })
    .unwrap();
    assert!(
        !foreign_thread,
        "the progress callback ran on another thread"
    );
    assert!(report.is_success(), "{report:#?}");

    // One upload, one pack (Latest = the newest applicable update only).
    assert_eq!(report.uploads.len(), 1);
    let u = &report.uploads[0];
    assert_eq!(u.status, UploadStatus::Uploaded);
    assert_eq!(u.hierarchy_id, Some(h));
    assert_eq!(u.site_version.as_deref(), Some(SITE_VERSION));
    assert_eq!(u.offered, 1);
    assert_eq!(report.packs.len(), 1);
    let p = pack(&report, sc.update_new);
    assert_eq!(p.status, PackStatus::Downloaded);
    assert_eq!(p.hierarchy_id, h);
    assert_eq!(p.name, "Update 2303");
    assert_eq!(p.pack_type, "Update");
    let total: u64 = sc.new_files.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(p.size, total);
    assert_eq!(report.bytes_transferred, total);

    // Layout: <dest>/<hierarchy>/<guid>/{manifest.json, .minisig, content/...}, byte-identical.
    let dir = dest.join(h.to_string()).join(sc.update_new.to_string());
    assert_eq!(p.path, dir);
    let served = std::fs::read(sc.store.pack_dir(&sc.update_new).join(MANIFEST_FILE)).unwrap();
    assert_eq!(std::fs::read(dir.join(MANIFEST_FILE)).unwrap(), served);
    assert!(std::fs::read_to_string(dir.join(SIGNATURE_FILE))
        .unwrap()
        .starts_with("untrusted comment:"));
    for (path, bytes) in &sc.new_files {
        assert_eq!(
            &std::fs::read(dir.join(CONTENT_DIR).join(path)).unwrap(),
            bytes,
            "{path}"
        );
        let f = p.files.iter().find(|f| &f.path == path).unwrap();
        assert_eq!(f.status, FileStatus::Downloaded);
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.sha256, serviceconnection::hashing::sha256_hex(bytes));
        assert_eq!(f.bytes_transferred, bytes.len() as u64);
    }
    assert!(partials(&dest).is_empty(), "{:?}", tree(&dest));
    // Only this hierarchy's folder, the report and the run lock at the top.
    let mut top: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut want = [
        ".sct-connect.lock".to_string(),
        h.to_string(),
        REPORT_FILE.to_string(),
    ];
    want.sort();
    assert_eq!(top, want);

    // The report on disk is the one returned.
    let on_disk: ConnectReport =
        serde_json::from_slice(&std::fs::read(dest.join(REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk.packs.len(), 1);
    assert_eq!(on_disk.packs[0].files.len(), 3);
    assert_eq!(on_disk.selection, Selection::Latest);
    assert_eq!(on_disk.service_uri, svc.url());
    assert_eq!(on_disk.uploads[0].cab, cab);

    // Progress: uploads and downloads reported, overall done reaches the total.
    assert!(events.iter().any(|e| e.phase == Phase::Upload));
    assert!(events
        .iter()
        .any(|e| e.phase == Phase::Download && e.item_total == 1_200_000));
    let last = events.last().unwrap();
    assert_eq!((last.done, last.total), (total, total));
    assert!(
        events.iter().all(|e| e.done <= e.total || e.total == 0),
        "{events:?}"
    );

    // The service really received the cab.
    assert_eq!(sc.store.uploads().len(), 1);
}

#[test]
fn each_selection_offers_the_right_packs() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let cases = [
        (Selection::Latest, vec![sc.update_new]),
        (
            Selection::SiteVersion,
            vec![sc.hotfix, sc.update_old, sc.update_new],
        ),
        (Selection::Hotfix, vec![sc.hotfix]),
        (
            Selection::All,
            vec![sc.stale, sc.hotfix, sc.update_old, sc.update_new],
        ),
    ];
    for (sel, expected) in cases {
        let dest = work.path().join(format!("dest-{}", sel.as_str()));
        let mut o = options(&cab, &dest, svc.url());
        o.selection = sel;
        let r = run(&o).unwrap();
        assert!(r.is_success(), "{sel:?}: {r:#?}");
        let mut got: Vec<uuid::Uuid> = r.packs.iter().map(|p| p.package_guid).collect();
        let mut want = expected.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{sel:?}");
        assert_eq!(r.selection, sel);
        assert_eq!(r.uploads[0].offered, expected.len());
        for p in &r.packs {
            assert!(p.path.join(MANIFEST_FILE).is_file(), "{sel:?} {}", p.name);
        }
    }
}

#[test]
fn folder_of_cabs_with_targeted_pack_duplicate_and_bad_cab() {
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("usb");
    std::fs::create_dir(&src).unwrap();
    let (cab_a, ha) = usage_cab(&src, "a-site", SITE_VERSION);
    let (_cab_b, hb) = usage_cab(&src, "b-site", SITE_VERSION);
    let (_cab_c, hc) = usage_cab(&src, "c-site", SITE_VERSION);
    // A second cab of hierarchy A under another name: skipped, A still proceeds.
    std::fs::copy(&cab_a, src.join("z-copy-of-a.CAB")).unwrap();
    // A ".cab" that is not a usage cab, and files that are not cabs at all.
    std::fs::write(src.join("broken.cab"), b"MSCF but not really").unwrap();
    std::fs::write(src.join("notes.txt"), b"ignored").unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "db") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let general = write_content(
        &store.dir().join("g"),
        &[("g.bin", &pseudo_random(40_000, 9))],
    );
    let targeted = write_content(
        &store.dir().join("t"),
        &[("t.bin", &pseudo_random(30_000, 10))],
    );
    let general_id = store.publish(
        "General",
        "5.00.9130.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &general,
    );
    let targeted_id = store.publish(
        "Early ring",
        "5.00.9131.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[hb],
        &targeted,
    );
    let svc = TestService::start(&store, &[]);
    let dest = work.path().join("packs");
    let r = run(&options(&src, &dest, svc.url())).unwrap();

    assert_eq!(r.uploads.len(), 5, "{r:#?}");
    let by_name = |n: &str| {
        r.uploads
            .iter()
            .find(|u| u.cab.file_name().unwrap() == n)
            .unwrap_or_else(|| panic!("{n} not in {r:#?}"))
    };
    for (n, h) in [("a-site.cab", ha), ("b-site.cab", hb), ("c-site.cab", hc)] {
        let u = by_name(n);
        assert_eq!(u.status, UploadStatus::Uploaded, "{u:?}");
        assert_eq!(u.hierarchy_id, Some(h));
    }
    let dup = by_name("z-copy-of-a.CAB");
    assert_eq!(dup.status, UploadStatus::Skipped);
    assert_eq!(dup.hierarchy_id, Some(ha));
    let msg = dup.message.as_deref().unwrap();
    assert!(
        msg.contains("second cab of hierarchy") && msg.contains("a-site.cab"),
        "{msg}"
    );
    let bad = by_name("broken.cab");
    assert_eq!(bad.status, UploadStatus::Skipped);
    assert_eq!(bad.kind, Some(ErrorKind::InvalidCab));
    assert!(
        bad.message.as_deref().unwrap().contains("not a usage cab"),
        "{bad:?}"
    );
    assert!(!r.is_success());
    assert_eq!(
        store.uploads().len(),
        3,
        "only the three valid cabs reach the service"
    );

    // The targeted pack went to hierarchy B only; the general one, Latest for A and C.
    // Latest for B is its newest update: the targeted one.
    let mut got: Vec<(uuid::Uuid, uuid::Uuid)> = r
        .packs
        .iter()
        .map(|p| (p.hierarchy_id, p.package_guid))
        .collect();
    got.sort();
    let mut want = vec![(ha, general_id), (hb, targeted_id), (hc, general_id)];
    want.sort();
    assert_eq!(got, want);
    for (h, id) in want {
        assert!(dest
            .join(h.to_string())
            .join(id.to_string())
            .join(MANIFEST_FILE)
            .is_file());
    }
    assert!(r.packs.iter().all(|p| p.status == PackStatus::Downloaded));
    // The general pack crossed the network once; the second hierarchy got a verified copy.
    assert_eq!(r.bytes_transferred, 40_000 + 30_000);
    let copies: Vec<&PackReport> = r
        .packs
        .iter()
        .filter(|p| p.package_guid == general_id && p.files[0].bytes_transferred == 0)
        .collect();
    assert_eq!(copies.len(), 1, "{r:#?}");
    assert!(copies[0].files[0]
        .message
        .as_deref()
        .unwrap()
        .contains("copied from"));
    let g = pseudo_random(40_000, 9);
    for h in [ha, hc] {
        let f = dest
            .join(h.to_string())
            .join(general_id.to_string())
            .join(CONTENT_DIR)
            .join("g.bin");
        assert_eq!(std::fs::read(f).unwrap(), g);
    }
}

#[test]
fn rerun_skips_complete_files_and_refetches_damaged_ones() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let o = options(&cab, &dest, svc.url());
    let first = run(&o).unwrap();
    assert!(first.is_success());

    let second = run(&o).unwrap();
    let p = pack(&second, sc.update_new);
    assert_eq!(p.status, PackStatus::AlreadyComplete, "{p:#?}");
    assert!(p
        .files
        .iter()
        .all(|f| f.status == FileStatus::AlreadyComplete && f.bytes_transferred == 0));
    assert_eq!(second.bytes_transferred, 0);

    // Damage one file (same size, one byte flipped) and delete another.
    let content = dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(CONTENT_DIR);
    let big = content.join("payload/data 1/big.cab");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&big, &bytes).unwrap();
    std::fs::remove_file(content.join("setup.exe")).unwrap();
    let third = run(&o).unwrap();
    assert!(third.is_success(), "{third:#?}");
    let p = pack(&third, sc.update_new);
    assert_eq!(p.status, PackStatus::Downloaded);
    let f = |n: &str| p.files.iter().find(|f| f.path == n).unwrap();
    assert_eq!(f("empty.txt").status, FileStatus::AlreadyComplete);
    assert_eq!(f("setup.exe").status, FileStatus::Downloaded);
    assert_eq!(f("setup.exe").bytes_transferred, 300_000);
    // The damaged file was never trusted: dropped, fetched again in full, now right.
    assert_eq!(f("payload/data 1/big.cab").status, FileStatus::Downloaded);
    assert_eq!(f("payload/data 1/big.cab").bytes_transferred, 1_200_000);
    // A shorter copy (cut short) is continued from its bytes instead.
    std::fs::write(&big, &sc.new_files[1].1[..700_000]).unwrap();
    let fourth = run(&o).unwrap();
    let p = pack(&fourth, sc.update_new);
    let big_report = p
        .files
        .iter()
        .find(|f| f.path == "payload/data 1/big.cab")
        .unwrap();
    assert_eq!(big_report.status, FileStatus::Resumed);
    assert_eq!(big_report.bytes_transferred, 500_000);
    assert_eq!(std::fs::read(&big).unwrap(), sc.new_files[1].1);
    assert!(partials(&dest).is_empty(), "{:?}", tree(&dest));

    // A run killed while writing the manifest leaves its temporary file beside it; the
    // next run removes it, so Import finds exactly the files it expects.
    let pack_dir = content.parent().unwrap();
    let stale = pack_dir.join(".manifest.json.Ab12Cd.sct-partial");
    std::fs::write(&stale, b"{\"half\": ").unwrap();
    let fifth = run(&o).unwrap();
    assert!(fifth.is_success(), "{fifth:#?}");
    assert!(!stale.exists(), "{:?}", tree(&dest));
    assert!(partials(&dest).is_empty(), "{:?}", tree(&dest));
}

/// Links planted on the transfer drive where Connect keeps its partial files are refused,
/// never followed: neither a download nor the copy of a pack already fetched for another
/// hierarchy reads or writes the file a link names outside the destination (one holding
/// the very bytes the download starts with, so that following it would look like a
/// resume), and a dangling link creates nothing where it points. The pack fails with
/// `UnsafePath`, naming the link; once it is gone, the next run finishes the pack.
/// Unix only: Wine creates no symbolic links (the Windows code opens the link itself,
/// `FILE_FLAG_OPEN_REPARSE_POINT`, and refuses it, as Import's reading does).
#[cfg(unix)]
#[test]
fn links_planted_where_partial_files_go_are_refused_not_followed() {
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("usb");
    std::fs::create_dir(&src).unwrap();
    let (_, ha) = usage_cab(&src, "a-site", SITE_VERSION);
    let (_, hc) = usage_cab(&src, "c-site", SITE_VERSION);
    let big = pseudo_random(1_200_000, 21);
    let small = pseudo_random(30_000, 22);
    let content = write_content(
        &store.dir().join("g"),
        &[("data/big.bin", &big), ("small.bin", &small)],
    );
    let id = store.publish(
        "General",
        "5.00.9130.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &content,
    );
    let svc = TestService::start(&store, &[]);
    let dest = work.path().join("packs");
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("precious");
    std::fs::write(&victim, &big[..100_000]).unwrap();
    let never = outside.join("never-made");
    let partial = |h: uuid::Uuid, rel: &str| {
        let p = dest
            .join(h.to_string())
            .join(id.to_string())
            .join(CONTENT_DIR)
            .join(format!("{rel}.sct-partial"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    };
    // Hierarchy A downloads the pack (its cab comes first), C copies A's verified files.
    let links = [
        (partial(ha, "data/big.bin"), &victim),
        (partial(ha, "small.bin"), &never),
        (partial(hc, "data/big.bin"), &victim),
        (partial(hc, "small.bin"), &never),
    ];
    for (link, target) in &links {
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    let o = options(&src, &dest, svc.url());
    // A dangling link as the run's lock file: refused before anything is written.
    let lock = dest.join(serviceconnection::connect::LOCK_FILE);
    std::os::unix::fs::symlink(&never, &lock).unwrap();
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafePath, "{e}");
    assert!(e.to_string().contains("links are never followed"), "{e}");
    assert!(!never.exists() && !dest.join(REPORT_FILE).exists());
    std::fs::remove_file(&lock).unwrap();
    let refused = |r: &ConnectReport, h: uuid::Uuid| {
        let p = r
            .packs
            .iter()
            .find(|p| p.hierarchy_id == h && p.package_guid == id)
            .unwrap_or_else(|| panic!("{h} not in {r:#?}"));
        assert_eq!(p.status, PackStatus::Failed, "{p:#?}");
        assert_eq!(p.kind, Some(ErrorKind::UnsafePath), "{p:#?}");
        let msg = p.message.as_deref().unwrap();
        assert!(
            msg.contains(".sct-partial is a symbolic link; links are never followed"),
            "{msg}"
        );
    };
    let untouched = || {
        assert_eq!(std::fs::read(&victim).unwrap(), &big[..100_000]);
        assert!(!never.exists(), "a dangling link's target was created");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    };

    // Both hierarchies' links: A's download is refused, and so is C's (with nothing to
    // copy from, it downloads).
    let r = run(&o).unwrap();
    refused(&r, ha);
    refused(&r, hc);
    untouched();

    // A's links gone: A downloads; C's copy of A's files is refused.
    for (link, _) in &links[..2] {
        std::fs::remove_file(link).unwrap();
    }
    let r = run(&o).unwrap();
    let a = r.packs.iter().find(|p| p.hierarchy_id == ha).unwrap();
    assert_eq!(a.status, PackStatus::Downloaded, "{a:#?}");
    refused(&r, hc);
    untouched();
    let copied = |h: uuid::Uuid, rel: &str| {
        std::fs::read(
            dest.join(h.to_string())
                .join(id.to_string())
                .join(CONTENT_DIR)
                .join(rel),
        )
        .unwrap()
    };
    assert_eq!(copied(ha, "data/big.bin"), big);

    // All links gone: the next run finishes C's pack, as a copy of A's.
    for (link, _) in &links[2..] {
        std::fs::remove_file(link).unwrap();
    }
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert_eq!(copied(hc, "data/big.bin"), big);
    assert_eq!(copied(hc, "small.bin"), small);
    untouched();
    assert!(partials(&dest).is_empty(), "{:?}", tree(&dest));
}

/// A FIFO planted on the drive where a content file's partial or the run's lock file goes
/// is refused as not a regular file, at once: opening one to write waits for a reader
/// forever (the watchdog lets such a wait go after 20 s, so the old code fails here
/// instead of hanging).
#[cfg(unix)]
#[test]
fn fifos_planted_where_partial_files_go_are_refused_without_waiting() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let content = dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(CONTENT_DIR);
    std::fs::create_dir_all(&content).unwrap();
    let partial = content.join("setup.exe.sct-partial");
    let lock = dest.join(serviceconnection::connect::LOCK_FILE);
    fifo::mkfifo(&lock);
    fifo::mkfifo(&partial);
    let _watchdog =
        fifo::Watchdog::new(vec![lock.clone(), partial.clone()], Duration::from_secs(20));
    let o = options(&cab, &dest, svc.url());
    let started = Instant::now();
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafePath, "{e}");
    assert!(e.to_string().contains("is not a regular file"), "{e}");
    std::fs::remove_file(&lock).unwrap();
    let r = run(&o).unwrap();
    let p = pack(&r, sc.update_new);
    assert_eq!(p.status, PackStatus::Failed, "{p:#?}");
    assert_eq!(p.kind, Some(ErrorKind::UnsafePath), "{p:#?}");
    let msg = p.message.as_deref().unwrap();
    assert!(
        msg.contains("setup.exe.sct-partial is not a regular file"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited on a FIFO"
    );
    // Once it is gone, the next run finishes the pack.
    std::fs::remove_file(&partial).unwrap();
    assert!(run(&o).unwrap().is_success());
    assert_eq!(
        std::fs::read(content.join("setup.exe")).unwrap(),
        sc.new_files[0].1
    );
}

const CHILD_ENV: &str = "SCT_CONNECT_TEST_CHILD_OPTIONS";
const CHILD_RESULT: &str = "CHILD-RESULT ";

/// When this test binary was started by [`spawn_child`], run Connect with the options in
/// the environment, print the outcome as one JSON line and exit; otherwise return.
fn child_mode() {
    let Ok(json) = std::env::var(CHILD_ENV) else {
        return;
    };
    let o: ConnectOptions = serde_json::from_str(&json).unwrap();
    let out = match run(&o) {
        Ok(r) => serde_json::json!({ "report": r }),
        Err(e) => serde_json::json!({ "kind": e.kind(), "message": e.message() }),
    };
    println!("{CHILD_RESULT}{out}");
    std::process::exit(0);
}

/// Run Connect in a separate process: this test binary again, filtered to `test`, which
/// calls [`child_mode`] first.
fn spawn_child(
    test: &str,
    opts: serde_json::Value,
    cmd: impl FnOnce(&mut std::process::Command),
) -> std::process::Child {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, opts.to_string())
        .stdout(std::process::Stdio::piped());
    cmd(&mut c);
    c.spawn_retrying().unwrap()
}

#[cfg(unix)] // only the disk-full test reads a child's result
fn child_result(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_RESULT).map(|(_, json)| json))
        .unwrap_or_else(|| {
            panic!(
                "no result from the child: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// Kill a real Connect process while it downloads, then resume: only the rest moves.
#[test]
fn resume_after_the_process_is_killed() {
    child_mode();
    let store = TestStore::new();
    let size = 8 * 1024 * 1024;
    let data = pseudo_random(size, 42);
    let id = publish_update(&store, "Big", &[("big/file.bin", &data)]);
    let svc = TestService::start(&store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let final_path = dest
        .join(h.to_string())
        .join(id.to_string())
        .join(CONTENT_DIR)
        .join("big/file.bin");
    let partial = PathBuf::from(format!("{}.sct-partial", final_path.display()));

    let opts_json = serde_json::json!({
        "source": cab, "dest": dest, "service_uri": svc.url(),
        "max_bytes_per_second": 1_500_000, "retry_base_delay_ms": 20,
    });
    let mut child = spawn_child("resume_after_the_process_is_killed", opts_json, |_| {});
    // Wait (polling the file, not sleeping blindly) until a good part has arrived.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len > 2 * 1024 * 1024 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited before it was killed"
        );
        assert!(Instant::now() < deadline, "the download never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !final_path.exists(),
        "nothing at the final name after a kill"
    );
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size as u64);
    let pack_dir = dest.join(h.to_string()).join(id.to_string());
    assert!(
        !pack_dir.join(MANIFEST_FILE).exists(),
        "no manifest for an incomplete pack"
    );

    let r = run(&options(&cab, &dest, svc.url())).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let f = &pack(&r, id).files[0];
    assert_eq!(f.status, FileStatus::Resumed);
    assert_eq!(
        f.bytes_transferred,
        size as u64 - kept,
        "only the rest is transferred"
    );
    assert_eq!(std::fs::read(&final_path).unwrap(), data, "byte-identical");
    assert!(pack_dir.join(MANIFEST_FILE).is_file());
    assert!(partials(&dest).is_empty());
    assert!(
        svc.log().contains("206"),
        "the service served a partial answer:\n{}",
        svc.log()
    );
}

#[test]
fn tampered_content_is_refetched_a_bounded_number_of_times_then_fails() {
    let store = TestStore::new();
    let good = pseudo_random(100_000, 1);
    let other = pseudo_random(50_000, 2);
    let id = publish_update(
        &store,
        "Tampered",
        &[("bad.bin", &good), ("ok.bin", &other)],
    );
    // Same length, different bytes: the server serves them under the right size and ETag.
    let stored = store.pack_dir(&id).join(CONTENT_DIR).join("bad.bin");
    assert!(
        stored.is_file(),
        "store layout changed: {}",
        stored.display()
    );
    let mut evil = good.clone();
    evil[50_000] ^= 1;
    std::fs::write(&stored, &evil).unwrap();
    let svc = TestService::start(&store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let r = run(&options(&cab, &dest, svc.url())).unwrap();
    let p = pack(&r, id);
    assert_eq!(p.status, PackStatus::Failed);
    assert_eq!(p.kind, Some(ErrorKind::IntegrityMismatch));
    let bad = p.files.iter().find(|f| f.path == "bad.bin").unwrap();
    assert_eq!(bad.status, FileStatus::Failed);
    assert_eq!(bad.kind, Some(ErrorKind::IntegrityMismatch));
    assert!(
        bad.message.as_deref().unwrap().contains("3 downloads"),
        "{bad:?}"
    );
    assert_eq!(
        bad.bytes_transferred,
        3 * 100_000,
        "fetched exactly three times"
    );
    let ok = p.files.iter().find(|f| f.path == "ok.bin").unwrap();
    assert_eq!(ok.status, FileStatus::Downloaded);
    let dir = dest.join(h.to_string()).join(id.to_string());
    assert!(
        !dir.join(CONTENT_DIR).join("bad.bin").exists(),
        "no unverified file at a final name"
    );
    assert!(
        !dir.join(MANIFEST_FILE).exists(),
        "an incomplete pack has no manifest"
    );
    assert!(partials(&dest).is_empty(), "{:?}", tree(&dest));
    assert!(!r.is_success());
    let on_disk = std::fs::read_to_string(dest.join(REPORT_FILE)).unwrap();
    assert!(on_disk.contains("IntegrityMismatch"));
}

#[test]
fn transient_failures_are_retried_and_a_cut_download_resumes() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    // Injected faults on the big file: dropped connection, 503 with Retry-After, 429, then
    // an answer cut after ~300 KB; after that the real service answers.
    let flaky = Flaky::start(
        svc.url(),
        "/big.cab",
        vec![
            Action::Drop,
            Action::Status(503, Some(1)),
            Action::Status(429, Some(0)),
            Action::Truncate(300_000),
        ],
        Action::Pass,
    );
    // Upload: one 502 first.
    let flaky_upload = Flaky::start(
        flaky.url(),
        "/v1/usage",
        vec![Action::Status(502, None)],
        Action::Pass,
    );
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let mut o = options(&cab, &dest, flaky_upload.url());
    o.max_attempts = 5;
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert_eq!(
        flaky_upload.count("POST /v1/usage"),
        2,
        "the upload was retried once"
    );
    let p = pack(&r, sc.update_new);
    let f = p
        .files
        .iter()
        .find(|f| f.path == "payload/data 1/big.cab")
        .unwrap();
    assert_eq!(f.status, FileStatus::Resumed, "{f:?}");
    assert_eq!(flaky.count("/big.cab"), 5);
    let ranged = flaky
        .heads()
        .iter()
        .filter(|h| h.contains("/big.cab") && h.to_ascii_lowercase().contains("range: bytes="))
        .count();
    assert_eq!(ranged, 1, "the cut answer was continued with Range");
    let sha = serviceconnection::hashing::sha256_hex(&sc.new_files[1].1);
    assert!(
        flaky.heads().iter().any(|h| h
            .to_ascii_lowercase()
            .contains(&format!("if-range: \"{sha}\""))),
        "the continuation is conditional on the file's SHA-256"
    );
    // Bytes moved: what the cut answer carried plus the rest — less than two copies.
    assert!(
        f.bytes_transferred >= 1_200_000 && f.bytes_transferred < 1_500_000,
        "{f:?}"
    );
    let path = dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(CONTENT_DIR)
        .join("payload/data 1/big.cab");
    assert_eq!(std::fs::read(path).unwrap(), sc.new_files[1].1);
}

#[test]
fn persistent_5xx_gives_up_after_max_attempts_and_4xx_fails_fast() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);

    let flaky = Flaky::start(svc.url(), "/setup.exe", vec![], Action::Status(503, None));
    let dest = work.path().join("a");
    let r = run(&options(&cab, &dest, flaky.url())).unwrap();
    let p = pack(&r, sc.update_new);
    assert_eq!(p.status, PackStatus::Failed);
    let f = p.files.iter().find(|f| f.path == "setup.exe").unwrap();
    assert_eq!(f.status, FileStatus::Failed);
    assert_eq!(f.kind, Some(ErrorKind::Service));
    assert!(f.message.as_deref().unwrap().contains("503"), "{f:?}");
    assert_eq!(flaky.count("/setup.exe"), 3, "max_attempts = 3");
    let dir = dest.join(h.to_string()).join(sc.update_new.to_string());
    assert!(!dir.join(CONTENT_DIR).join("setup.exe").exists());
    assert!(!dir.join(MANIFEST_FILE).exists());
    // The other files of the pack completed and are kept for the next run.
    assert!(dir
        .join(CONTENT_DIR)
        .join("payload/data 1/big.cab")
        .is_file());

    let flaky = Flaky::start(svc.url(), "/setup.exe", vec![], Action::Status(403, None));
    let dest = work.path().join("b");
    let r = run(&options(&cab, &dest, flaky.url())).unwrap();
    let f = pack(&r, sc.update_new)
        .files
        .iter()
        .find(|f| f.path == "setup.exe")
        .unwrap()
        .clone();
    assert_eq!(f.status, FileStatus::Failed);
    assert!(f.message.as_deref().unwrap().contains("403"), "{f:?}");
    assert_eq!(flaky.count("/setup.exe"), 1, "a 403 is not retried");
}

#[test]
fn missing_signature_fails_the_pack_before_any_content() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let flaky = Flaky::start(svc.url(), ".minisig", vec![], Action::Status(404, None));
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let r = run(&options(&cab, &dest, flaky.url())).unwrap();
    let p = pack(&r, sc.update_new);
    assert_eq!(p.status, PackStatus::Failed);
    assert_eq!(p.kind, Some(ErrorKind::SignatureInvalid));
    assert!(
        p.message.as_deref().unwrap().contains("no signature"),
        "{p:?}"
    );
    assert_eq!(
        flaky.count(".minisig"),
        1,
        "a missing signature is not retried"
    );
    assert_eq!(
        flaky.count("/content/"),
        0,
        "no content fetched for an unsigned pack"
    );
    assert!(!dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(MANIFEST_FILE)
        .exists());
}

#[test]
fn unreachable_service_still_writes_the_report() {
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let url = format!("http://127.0.0.1:{}", proxy::free_port());
    let dest = work.path().join("packs");
    let mut o = options(&cab, &dest, &url);
    o.max_attempts = 2;
    let r = run(&o).unwrap();
    assert_eq!(r.uploads.len(), 1);
    let u = &r.uploads[0];
    assert_eq!(u.status, UploadStatus::Failed);
    assert_eq!(u.hierarchy_id, Some(h));
    assert_eq!(u.kind, Some(ErrorKind::Network));
    let msg = u.message.as_deref().unwrap();
    assert!(
        msg.contains("connection refused") && msg.contains(&url),
        "{msg}"
    );
    assert!(r.packs.is_empty());
    let on_disk: ConnectReport =
        serde_json::from_slice(&std::fs::read(dest.join(REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk.uploads[0].status, UploadStatus::Failed);
}

const PROXY_USER: &str = "meg";
const PROXY_PASSWORD: &str = "Pr0xy-S3cret-xyz";

fn assert_no_secret(dest: &Path, text: &str) {
    assert!(!text.contains(PROXY_PASSWORD), "password leaked: {text}");
    if let Ok(report) = std::fs::read_to_string(dest.join(REPORT_FILE)) {
        assert!(!report.contains(PROXY_PASSWORD), "password in the report");
    }
}

#[cfg(unix)] // tinyproxy is a Linux program
#[test]
fn through_tinyproxy_without_and_with_basic_auth() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);

    let open = TinyProxy::start(None);
    let dest = work.path().join("open");
    let mut o = options(&cab, &dest, svc.url());
    o.proxy = Some(ProxyOptions {
        uri: open.addr(),
        username: None,
        password: None,
    });
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert!(
        open.log().contains("/v1/usage"),
        "the upload went through the proxy:\n{}",
        open.log()
    );
    assert!(
        open.log().contains("/content/"),
        "downloads went through the proxy"
    );

    let guarded = TinyProxy::start(Some((PROXY_USER, PROXY_PASSWORD)));
    let dest = work.path().join("auth");
    let mut o = options(&cab, &dest, svc.url());
    o.proxy = Some(ProxyOptions {
        uri: format!("http://{}", guarded.addr()),
        username: Some(PROXY_USER.into()),
        password: Some(PROXY_PASSWORD.into()),
    });
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert!(dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(MANIFEST_FILE)
        .is_file());
    assert_no_secret(&dest, &format!("{r:?} {o:?}"));
}

#[cfg(unix)] // tinyproxy is a Linux program
#[test]
fn wrong_proxy_password_is_a_proxy_auth_error() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let guarded = TinyProxy::start(Some((PROXY_USER, "the-right-one")));
    let dest = work.path().join("packs");
    let mut o = options(&cab, &dest, svc.url());
    o.proxy = Some(ProxyOptions {
        uri: guarded.addr(),
        username: Some(PROXY_USER.into()),
        password: Some(PROXY_PASSWORD.into()),
    });
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ProxyAuth, "{e}");
    assert!(
        e.message().contains("refused the credentials for user meg"),
        "{e}"
    );
    assert_no_secret(&dest, &format!("{e} {e:?}"));
    // The report says the same and nothing was downloaded.
    let report: ConnectReport =
        serde_json::from_slice(&std::fs::read(dest.join(REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(report.uploads[0].kind, Some(ErrorKind::ProxyAuth));
    assert!(report.packs.is_empty());
    assert_eq!(sc.store.uploads().len(), 0);
}

#[test]
fn wrong_proxy_port_is_a_proxy_connect_error() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let port = proxy::free_port();
    let dest = work.path().join("packs");
    let mut o = options(&cab, &dest, svc.url());
    o.max_attempts = 2;
    o.proxy = Some(ProxyOptions {
        uri: format!("127.0.0.1:{port}"),
        username: Some(PROXY_USER.into()),
        password: Some(PROXY_PASSWORD.into()),
    });
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ProxyConnect, "{e}");
    assert!(
        e.message()
            .contains(&format!("cannot reach proxy 127.0.0.1:{port}")),
        "{e}"
    );
    assert!(
        !e.message().contains(svc.url()),
        "the service is not blamed: {e}"
    );
    assert_no_secret(&dest, &format!("{e} {e:?}"));
}

#[cfg(unix)] // the test CA is made with the openssl command
#[test]
fn tls_needs_the_private_ca_and_works_with_it() {
    let sc = scene();
    let certs = tempfile::tempdir().unwrap();
    let test_ca = tls::make_test_ca(certs.path(), tls::TestCaOpts::fresh());
    let svc = TestService::start_args(sc.store.path(), test_ca.service_args());
    assert!(svc.url().starts_with("https://"), "{}", svc.url());
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);

    let dest = work.path().join("no-ca");
    let e = run(&options(&cab, &dest, svc.url())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(e.message().contains("certificate"), "{e}");
    assert!(sc.store.uploads().is_empty());

    let dest = work.path().join("with-ca");
    let mut o = options(&cab, &dest, svc.url());
    o.ca_cert = Some(test_ca.ca.clone());
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert!(dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(MANIFEST_FILE)
        .is_file());

    // A file that is not a certificate is refused up front, before anything is created.
    let dest = work.path().join("bad-ca");
    let mut o = options(&cab, &dest, svc.url());
    o.ca_cert = Some(cab.clone());
    assert_eq!(run(&o).unwrap_err().kind(), ErrorKind::Tls);
    assert!(!dest.exists());
}

#[test]
fn bearer_token_is_sent_and_never_reported() {
    let sc = scene();
    let token = "tok-7f3a-never-shown";
    let token_file = sc.store.token_file(token);
    let svc = TestService::start_args(
        sc.store.path(),
        [OsStr::new("--token-file"), token_file.as_os_str()],
    );
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("without");
    let r = run(&options(&cab, &dest, svc.url())).unwrap();
    assert_eq!(r.uploads[0].status, UploadStatus::Failed);
    assert!(
        r.uploads[0].message.as_deref().unwrap().contains("token"),
        "{r:#?}"
    );

    let dest = work.path().join("with");
    let mut o = options(&cab, &dest, svc.url());
    o.token = Some(token.into());
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let report = std::fs::read_to_string(dest.join(REPORT_FILE)).unwrap();
    assert!(!report.contains(token));
    assert!(!format!("{o:?} {r:?}").contains(token));
}

#[test]
fn cancelling_from_the_callback_leaves_nothing_at_a_final_name_and_resumes() {
    let store = TestStore::new();
    let data = pseudo_random(4 * 1024 * 1024, 11);
    let id = publish_update(
        &store,
        "Big",
        &[("a.bin", &data), ("b.bin", &data[..3_000_000])],
    );
    let svc = TestService::start(&store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let mut o = options(&cab, &dest, svc.url());
    o.max_bytes_per_second = Some(4_000_000);
    let mut calls_after_cancel = 0;
    let mut cancelled = false;
    let e = connect(&o, &mut |p: &Progress| {
        if cancelled {
            calls_after_cancel += 1;
        }
        if p.phase == Phase::Download && p.done > 500_000 {
            cancelled = true;
            return false;
        }
        true
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(
        calls_after_cancel, 0,
        "the callback is not called after it cancelled"
    );
    let dir = dest.join(h.to_string()).join(id.to_string());
    assert!(!dir.join(CONTENT_DIR).join("a.bin").exists());
    assert!(!dir.join(CONTENT_DIR).join("b.bin").exists());
    assert!(!dir.join(MANIFEST_FILE).exists());
    assert!(
        !partials(&dest).is_empty(),
        "received bytes are kept for the next run"
    );

    let r = run(&options(&cab, &dest, svc.url())).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert_eq!(
        std::fs::read(dir.join(CONTENT_DIR).join("a.bin")).unwrap(),
        data
    );
    assert!(r.bytes_transferred < (data.len() + 3_000_000) as u64);
}

#[test]
fn bad_options_fail_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let url = "http://127.0.0.1:9";

    let dest = work.path().join("missing-parent").join("packs");
    let e = run(&options(&cab, &dest, url)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!work.path().join("missing-parent").exists());

    let dest = work.path().join("packs");
    let e = run(&options(&work.path().join("nope.cab"), &dest, url)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!dest.exists());

    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = run(&options(&empty, &dest, url)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("no .cab file"), "{e}");
    assert!(!dest.exists());

    let mut o = options(&cab, &dest, url);
    o.parallelism = 0;
    assert_eq!(run(&o).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let o = options(&cab, &dest, "ftp://x");
    assert_eq!(run(&o).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let mut o = options(&cab, &dest, url);
    o.proxy = Some(ProxyOptions {
        uri: "proxy:notaport".into(),
        username: None,
        password: None,
    });
    assert_eq!(run(&o).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert!(!dest.exists());

    let file_dest = work.path().join("file");
    std::fs::write(&file_dest, b"x").unwrap();
    let e = run(&options(&cab, &file_dest, url)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&file_dest).unwrap(), b"x");
}

#[test]
fn a_second_concurrent_run_on_the_same_destination_is_refused() {
    use fs4::fs_std::FileExt;
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    std::fs::create_dir(&dest).unwrap();
    let lock = std::fs::File::create(dest.join(".sct-connect.lock")).unwrap();
    assert!(FileExt::try_lock_exclusive(&lock).unwrap());
    let e = run(&options(&cab, &dest, "http://127.0.0.1:9")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(!dest.join(REPORT_FILE).exists());
}

/// A full disk (here: the file-size limit of the process, which fails writes the same
/// way) is permanent: the file fails at once with a clear message, no retry.
/// RLIMIT_FSIZE stands in for a full disk; Windows has no per-process file-size limit.
#[cfg(unix)]
#[test]
fn disk_full_fails_fast_with_a_clear_message() {
    child_mode();
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let front = Flaky::start(svc.url(), "/content/", vec![], Action::Pass);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("packs");
    let opts = serde_json::json!({
        "source": cab, "dest": dest, "service_uri": front.url(),
        "retry_base_delay_ms": 20, "parallelism": 1,
    });
    let child = spawn_child("disk_full_fails_fast_with_a_clear_message", opts, |c| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 500_000,
                    rlim_max: 500_000,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let out = child.wait_with_output().unwrap();
    let result = child_result(&out);
    let report: ConnectReport = serde_json::from_value(result["report"].clone())
        .unwrap_or_else(|e| panic!("{e}: {result}"));
    let p = pack(&report, sc.update_new);
    assert_eq!(p.status, PackStatus::Failed);
    let big = p
        .files
        .iter()
        .find(|f| f.path == "payload/data 1/big.cab")
        .unwrap();
    assert_eq!(big.status, FileStatus::Failed);
    assert_eq!(big.kind, Some(ErrorKind::DiskFull), "{big:?}");
    assert!(
        big.message.as_deref().unwrap().contains("no space left"),
        "{big:?}"
    );
    assert_eq!(front.count("/big.cab"), 1, "a full disk is not retried");
    let dir = dest.join(h.to_string()).join(sc.update_new.to_string());
    assert!(!dir
        .join(CONTENT_DIR)
        .join("payload/data 1/big.cab")
        .exists());
    assert!(!dir.join(MANIFEST_FILE).exists());
    // Files that fit were verified and kept.
    assert_eq!(
        std::fs::read(dir.join(CONTENT_DIR).join("setup.exe")).unwrap(),
        sc.new_files[0].1
    );
}

/// A transfer that goes silent is abandoned after the inactivity timeout and resumed;
/// a slow one that keeps moving is never cut off, however long it takes in total.
#[test]
fn stalled_transfer_times_out_and_resumes_but_slow_ones_finish() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let flaky = Flaky::start(
        svc.url(),
        "/big.cab",
        vec![Action::Stall(400_000)],
        Action::Pass,
    );
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let dest = work.path().join("stall");
    let mut o = options(&cab, &dest, flaky.url());
    o.idle_timeout_secs = 1;
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let f = pack(&r, sc.update_new)
        .files
        .iter()
        .find(|f| f.path == "payload/data 1/big.cab")
        .unwrap()
        .clone();
    assert_eq!(f.status, FileStatus::Resumed, "{f:?}");
    assert_eq!(f.bytes_transferred, 1_200_000, "nothing fetched twice");
    assert_eq!(flaky.count("/big.cab"), 2);
    let file = dest
        .join(h.to_string())
        .join(sc.update_new.to_string())
        .join(CONTENT_DIR)
        .join("payload/data 1/big.cab");
    assert_eq!(std::fs::read(&file).unwrap(), sc.new_files[1].1);

    // 1.5 MB at 500 kB/s takes about three times the 1 s inactivity timeout.
    let flaky = Flaky::start(svc.url(), "/big.cab", vec![], Action::Pass);
    let dest = work.path().join("slow");
    let mut o = options(&cab, &dest, flaky.url());
    o.idle_timeout_secs = 1;
    o.max_bytes_per_second = Some(500_000);
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert_eq!(flaky.count("/big.cab"), 1, "one uninterrupted request");
    assert_eq!(r.bytes_transferred, 1_500_000);
}

/// Partial files left by an earlier run: continued when the service honours the range,
/// restarted when it answers 200 or 416, discarded when too long, and refetched when
/// the bytes on disk turn out not to match.
#[test]
fn partial_files_are_continued_restarted_or_discarded() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, h) = usage_cab(work.path(), "site", SITE_VERSION);
    let good = &sc.new_files[1].1;
    let big = |dest: &Path| {
        dest.join(h.to_string())
            .join(sc.update_new.to_string())
            .join(CONTENT_DIR)
            .join("payload/data 1/big.cab")
    };
    let seed_partial = |dest: &Path, bytes: &[u8]| {
        let p = PathBuf::from(format!("{}.sct-partial", big(dest).display()));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let mut garbage = good[..100_000].to_vec();
    garbage[10] ^= 0xff;
    let mut too_long = good.clone();
    too_long.extend_from_slice(b"extra");
    // (name, partial, injected action, status, bytes transferred)
    let cases: Vec<(&str, Vec<u8>, Action, FileStatus, u64)> = vec![
        (
            "continued",
            good[..100_000].to_vec(),
            Action::Pass,
            FileStatus::Resumed,
            1_100_000,
        ),
        (
            "range ignored",
            good[..100_000].to_vec(),
            Action::StripRange,
            FileStatus::Downloaded,
            1_200_000,
        ),
        (
            "416",
            good[..100_000].to_vec(),
            Action::Status(416, None),
            FileStatus::Downloaded,
            1_200_000,
        ),
        (
            "damaged prefix",
            garbage,
            Action::Pass,
            FileStatus::Downloaded,
            1_100_000 + 1_200_000,
        ),
        (
            "too long",
            too_long,
            Action::Pass,
            FileStatus::Downloaded,
            1_200_000,
        ),
    ];
    for (name, partial, action, status, transferred) in cases {
        let flaky = Flaky::start(svc.url(), "/big.cab", vec![action], Action::Pass);
        let dest = work.path().join(name.replace(' ', "-"));
        seed_partial(&dest, &partial);
        let r = run(&options(&cab, &dest, flaky.url())).unwrap();
        assert!(r.is_success(), "{name}: {r:#?}");
        let f = pack(&r, sc.update_new)
            .files
            .iter()
            .find(|f| f.path == "payload/data 1/big.cab")
            .unwrap()
            .clone();
        assert_eq!(f.status, status, "{name}");
        assert_eq!(f.bytes_transferred, transferred, "{name}");
        assert_eq!(&std::fs::read(big(&dest)).unwrap(), good, "{name}");
        assert!(partials(&dest).is_empty(), "{name}");
    }
}

/// An https:// service through the proxy (a CONNECT tunnel): works, and a refusal of the
/// credentials is named as such although the proxy refuses the tunnel with a 401.
#[cfg(unix)] // tinyproxy and the openssl command are Linux programs
#[test]
fn https_through_tinyproxy_tunnel() {
    let sc = scene();
    let certs = tempfile::tempdir().unwrap();
    let test_ca = tls::make_test_ca(certs.path(), tls::TestCaOpts::fresh());
    let svc = TestService::start_args(sc.store.path(), test_ca.service_args());
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let guarded = TinyProxy::start(Some((PROXY_USER, PROXY_PASSWORD)));
    let dest = work.path().join("ok");
    let mut o = options(&cab, &dest, svc.url());
    o.ca_cert = Some(test_ca.ca.clone());
    o.proxy = Some(ProxyOptions {
        uri: guarded.addr(),
        username: Some(PROXY_USER.into()),
        password: Some(PROXY_PASSWORD.into()),
    });
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    assert!(
        guarded.log().contains("CONNECT"),
        "tunnelled:\n{}",
        guarded.log()
    );

    let dest = work.path().join("wrong");
    o.dest = dest.clone();
    o.proxy.as_mut().unwrap().password = Some("wrong-password".into());
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ProxyAuth, "{e}");
    assert!(
        e.message().contains("refused the credentials for user meg"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains("wrong-password"));
    let report = std::fs::read_to_string(dest.join(REPORT_FILE)).unwrap();
    assert!(!report.contains("wrong-password"));

    o.dest = work.path().join("port");
    o.max_attempts = 1;
    o.proxy.as_mut().unwrap().uri = format!("127.0.0.1:{}", proxy::free_port());
    let e = run(&o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ProxyConnect, "{e}");
    assert!(e.message().contains("cannot reach proxy 127.0.0.1:"), "{e}");
}

/// What the service sends for a pack's manifest and signature is checked before any
/// content is fetched: the manifest's SHA-256 against the offer, the signature's form.
#[test]
fn wrong_manifest_or_malformed_signature_fails_the_pack() {
    let sc = scene();
    let svc = TestService::start(&sc.store, &[]);
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    // Another pack's (valid, signed) manifest in place of this one's.
    let other = std::fs::read(sc.store.pack_dir(&sc.update_old).join(MANIFEST_FILE)).unwrap();
    let cases = [
        (
            "manifest.json",
            Action::Respond(200, other),
            ErrorKind::IntegrityMismatch,
            "SHA-256",
        ),
        (
            ".minisig",
            Action::Respond(200, b"not a signature".to_vec()),
            ErrorKind::SignatureInvalid,
            "malformed",
        ),
    ];
    for (matching, action, kind, words) in cases {
        let flaky = Flaky::start(svc.url(), matching, vec![], action);
        let dest = work.path().join(matching);
        let r = run(&options(&cab, &dest, flaky.url())).unwrap();
        let p = pack(&r, sc.update_new);
        assert_eq!(p.status, PackStatus::Failed, "{matching}");
        assert_eq!(p.kind, Some(kind), "{matching}: {p:?}");
        assert!(
            p.message.as_deref().unwrap().contains(words),
            "{matching}: {p:?}"
        );
        assert!(p.files.is_empty());
        assert_eq!(
            flaky.count("/content/"),
            0,
            "{matching}: no content fetched"
        );
        assert!(!p.path.join(MANIFEST_FILE).exists());
    }
}

/// `SiteVersion` brings every update and hotfix newer than the site, including the later
/// steps of an upgrade chain that do not apply yet (their minimum site version is above
/// the site's), and Import records those as `NotApplicable`: a multi-step upgrade comes
/// in one trip, as SPEC section 4 and the README say.
#[test]
fn site_version_brings_later_steps_of_an_upgrade_chain() {
    use serviceconnection::import::{import, ImportOptions, ImportStatus};
    use serviceconnection::site::updates::UpdateState;
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let (cab, _) = usage_cab(work.path(), "site", SITE_VERSION);
    let content = |name: &str, seed: u64| {
        write_content(
            &store.dir().join(name),
            &[("payload.bin", &pseudo_random(20_000, seed))],
        )
    };
    let step1 = store.publish(
        "Update 2303",
        "5.00.9132.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        &content("c1", 1),
    );
    let step2 = store.publish(
        "Update 2309",
        "5.00.9135.1000",
        PackType::Update,
        "5.00.9132.1000",
        None,
        &[],
        &content("c2", 2),
    );
    let step2_fix = store.publish(
        "Hotfix for 2309",
        "5.00.9135.1002",
        PackType::Hotfix,
        "5.00.9135.1000",
        Some("5.00.9135.1000"),
        &[],
        &content("c3", 3),
    );
    // Not newer than the site: never part of SiteVersion.
    store.publish(
        "Update 2211",
        "5.00.9120.1000",
        PackType::Update,
        "5.00.9100.1000",
        None,
        &[],
        &content("c4", 4),
    );
    let svc = TestService::start(&store, &[]);
    let dest = work.path().join("UpdatePacks");
    let mut o = options(&cab, &dest, svc.url());
    o.selection = Selection::SiteVersion;
    let r = run(&o).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let got: Vec<uuid::Uuid> = r.packs.iter().map(|p| p.package_guid).collect();
    assert_eq!(got, [step1, step2, step2_fix], "in upgrade order: {r:#?}");

    let db = work.path().join("site.db");
    let key = serviceconnection::signing::PublicKey::from_file(&store.public_key_path()).unwrap();
    Site::open(&db)
        .unwrap()
        .add_trusted_publisher(&key, "reference service")
        .unwrap();
    let results = import(
        &ImportOptions::new(&db, &dest),
        &mut serviceconnection::progress::ignore,
    )
    .unwrap();
    let states: Vec<(Option<uuid::Uuid>, ImportStatus, Option<UpdateState>)> = results
        .iter()
        .map(|r| (r.package_guid, r.status, r.state))
        .collect();
    let mut want = vec![
        (
            Some(step1),
            ImportStatus::Imported,
            Some(UpdateState::ReadyToInstall),
        ),
        (
            Some(step2),
            ImportStatus::Imported,
            Some(UpdateState::NotApplicable),
        ),
        (
            Some(step2_fix),
            ImportStatus::Imported,
            Some(UpdateState::NotApplicable),
        ),
    ];
    let mut states = states;
    states.sort_by_key(|s| s.0);
    want.sort_by_key(|s| s.0);
    assert_eq!(states, want);
}
