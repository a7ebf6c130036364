//! Import: verified, transactional, idempotent import of update packs into a real site
//! database. Every refusal asserts its kind and that the site is exactly as it was.

#[cfg(unix)]
#[path = "common/fifo.rs"]
mod fifo;
#[path = "common/packs.rs"]
mod packs;
#[path = "common/start.rs"]
mod start;

use packs::{bytes, pack_dir, write_pack, write_signed_manifest, PackSpec, Publisher};
use serviceconnection::import::{
    import, ImportOptions, ImportResult, ImportStatus, CONTENT_LIBRARY, INSECURE_NOTE,
    JOURNAL_SUFFIX, LOCK_SUFFIX, PAUSE_ENV, STAGING_SUFFIX,
};
use serviceconnection::pack::manifest::{CONTENT_DIR, MANIFEST_FILE};
use serviceconnection::progress::{self, Progress};
use serviceconnection::site::updates::{UpdateRecord, UpdateState};
use serviceconnection::{ErrorKind, NewSite, Site};
use start::Start;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SITE_VERSION: &str = "5.00.9128.1000";

/// A site in a temporary folder trusting `publisher`, and an empty update-pack source.
struct Env {
    _dir: tempfile::TempDir,
    db: PathBuf,
    src: PathBuf,
    hierarchy: uuid::Uuid,
    publisher: Publisher,
}

fn env_at(version: &str, trust: bool) -> Env {
    env_in(version, uuid::Uuid::new_v4(), trust)
}

fn env_in(version: &str, hierarchy: uuid::Uuid, trust: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("site").join("site.db");
    std::fs::create_dir(db.parent().unwrap()).unwrap();
    let site = Site::create(
        &db,
        &NewSite {
            site_code: "PS1".into(),
            site_version: version.parse().unwrap(),
            diagnostics_level: Default::default(),
            hierarchy_id: Some(hierarchy),
            site_name: None,
            scp_mode: Default::default(),
        },
    )
    .unwrap();
    let publisher = Publisher::new();
    if trust {
        site.add_trusted_publisher(publisher.public_key(), "test publisher")
            .unwrap();
    }
    let src = dir.path().join("UpdatePacks");
    std::fs::create_dir(&src).unwrap();
    Env {
        _dir: dir,
        db,
        src,
        hierarchy,
        publisher,
    }
}

fn env() -> Env {
    env_at(SITE_VERSION, true)
}

impl Env {
    fn opts(&self) -> ImportOptions {
        ImportOptions::new(&self.db, &self.src)
    }
    fn run(&self) -> Vec<ImportResult> {
        import(&self.opts(), &mut progress::ignore).expect("import runs")
    }
    fn add(&self, spec: &PackSpec) -> PathBuf {
        write_pack(&self.src, self.hierarchy, spec, &self.publisher)
    }
    fn site(&self) -> Site {
        Site::open(&self.db).unwrap()
    }
    fn library(&self) -> PathBuf {
        self.db.parent().unwrap().join(CONTENT_LIBRARY)
    }
    /// A site that already holds one imported update, so "unchanged" means something.
    fn with_one_imported() -> (Env, PackSpec) {
        let e = env();
        let spec = PackSpec::update(
            "Configuration Manager 2409",
            "5.00.9132.1000",
            "5.00.9106.1000",
        );
        e.add(&spec);
        let r = e.run();
        assert_eq!(status_of(&r, spec.id), ImportStatus::Imported, "{r:#?}");
        (e, spec)
    }
}

/// Everything an import may change, for "the site is exactly as it was".
#[derive(Debug, PartialEq)]
struct Snapshot {
    updates: Vec<UpdateRecord>,
    files: Vec<(String, String, i64, String)>,
    /// Every entry under EasySetupPayload/: folders as "dir", files as their SHA-256.
    library: BTreeMap<PathBuf, String>,
    /// Entries beside the database other than SQLite's own, the library and the import lock.
    beside_db: Vec<String>,
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd {
        let e = e.unwrap();
        let rel = rel.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.insert(rel.clone(), "dir".into());
            walk(root, &rel, out);
        } else {
            let b = std::fs::read(root.join(&rel)).unwrap();
            out.insert(rel, serviceconnection::hashing::sha256_hex(&b));
        }
    }
}

fn snapshot(e: &Env) -> Snapshot {
    let site = Site::open_read_only(&e.db).unwrap();
    let c = site.connection();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let fk: i64 = c
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0, "dangling update_package_files rows");
    let mut st = c
        .prepare("SELECT package_guid, path, size, sha256 FROM update_package_files ORDER BY package_guid, path")
        .unwrap();
    let files = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let dir = e.db.parent().unwrap();
    let mut library = BTreeMap::new();
    walk(dir, Path::new("EasySetupPayload"), &mut library);
    let db_name = e.db.file_name().unwrap().to_str().unwrap().to_string();
    let mut beside_db: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            *n != db_name
                && n != "EasySetupPayload"
                && *n != format!("{db_name}-wal")
                && *n != format!("{db_name}-shm")
                && *n != format!("{db_name}{LOCK_SUFFIX}")
        })
        .collect();
    beside_db.sort();
    Snapshot {
        updates: site.list_updates().unwrap(),
        files,
        library,
        beside_db,
    }
}

fn result_of(r: &[ImportResult], id: uuid::Uuid) -> &ImportResult {
    let mut it = r.iter().filter(|x| x.package_guid == Some(id));
    let one = it
        .next()
        .unwrap_or_else(|| panic!("no result for {id}: {r:#?}"));
    assert!(it.next().is_none(), "two results for {id}: {r:#?}");
    one
}

fn status_of(r: &[ImportResult], id: uuid::Uuid) -> ImportStatus {
    result_of(r, id).status
}

/// Import, expect exactly one refusal of `id` with `kind`, and the site unchanged.
fn assert_refused(e: &Env, id: uuid::Uuid, kind: ErrorKind, reason_has: &str) -> ImportResult {
    let before = snapshot(e);
    let r = e.run();
    let res = result_of(&r, id).clone();
    assert_eq!(res.status, ImportStatus::Refused, "{res:#?}");
    assert_eq!(res.error_kind.as_deref(), Some(kind.as_str()), "{res:#?}");
    let reason = res.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(reason_has),
        "reason {reason:?} lacks {reason_has:?}"
    );
    assert!(res.state.is_none() && res.content_path.is_none());
    assert_eq!(snapshot(e), before, "the site changed after a refusal");
    res
}

/// Content in the library is byte-identical to the spec.
fn assert_placed(e: &Env, spec: &PackSpec) {
    let dir = e.library().join(spec.id.to_string());
    let mut listed = BTreeMap::new();
    walk(&dir, Path::new(""), &mut listed);
    let files: Vec<_> = listed.iter().filter(|(_, v)| *v != "dir").collect();
    assert_eq!(files.len(), spec.files.len(), "{listed:#?}");
    for (p, b) in &spec.files {
        assert_eq!(&std::fs::read(dir.join(p)).unwrap(), b, "{p} differs");
    }
}

#[test]
fn valid_import_records_ready_to_install_and_places_identical_content() {
    let e = env();
    let a = PackSpec::update(
        "Configuration Manager 2409",
        "5.00.9132.1000",
        "5.00.9106.1000",
    );
    let b = PackSpec::update("Hotfix KB1234", "5.00.9128.1101", "5.00.9128.1000")
        .hotfix()
        .with_max("5.00.9128.1000")
        .with_files(vec![
            ("empty.txt".into(), Vec::new()),
            ("a/b/c/deep.bin".into(), bytes(9, 3 * 1024 * 1024 + 17)),
            ("a/top.bin".into(), bytes(10, 1000)),
        ]);
    e.add(&a);
    e.add(&b);
    std::fs::write(e.src.join("connect-report.json"), b"{}").unwrap();
    let mut reports: Vec<Progress> = Vec::new();
    let r = import(&e.opts(), &mut |p: &Progress| {
        reports.push(p.clone());
        true
    })
    .unwrap();
    assert_eq!(r.len(), 2, "{r:#?}");
    for spec in [&a, &b] {
        let res = result_of(&r, spec.id);
        assert_eq!(res.status, ImportStatus::Imported, "{res:#?}");
        assert_eq!(res.state, Some(UpdateState::ReadyToInstall));
        assert_eq!(res.state_code, Some(262146));
        assert_eq!(res.name.as_deref(), Some(spec.name.as_str()));
        assert_eq!(res.hierarchy_id, Some(e.hierarchy));
        assert!(res.error_kind.is_none() && res.reason.is_none(), "{res:#?}");
        let cp = res.content_path.clone().unwrap();
        assert!(cp.is_absolute() && cp.ends_with(spec.id.to_string()));
        assert_placed(&e, spec);
    }
    let total = a.total_size() + b.total_size();
    let last = reports.last().expect("progress was reported");
    assert_eq!((last.done, last.total), (total, total));
    // Each phase (5 Verify, then 6 Import) counts up on its own.
    assert!(reports
        .windows(2)
        .all(|w| w[0].phase != w[1].phase || w[0].done <= w[1].done));

    let site = e.site();
    let list = site.list_updates().unwrap();
    assert_eq!(list.len(), 2);
    // Newest version first.
    assert_eq!(list[0].package_guid, a.id);
    let rec = site.get_update(&b.id).unwrap().unwrap();
    assert_eq!(rec.update_type, "Hotfix");
    assert_eq!(rec.state, UpdateState::ReadyToInstall);
    assert_eq!(rec.state_code, 262146);
    assert_eq!(rec.size, b.total_size());
    assert_eq!(rec.file_count, 3);
    assert_eq!(rec.max_site_version.as_deref(), Some("5.00.9128.1000"));
    assert_eq!(rec.publisher_key_id, Some(e.publisher.key_id()));
    assert_eq!(
        rec.content_path.as_deref(),
        Some(format!("{CONTENT_LIBRARY}/{}", b.id).as_str())
    );
    let manifest_bytes =
        std::fs::read(pack_dir(&e.src, e.hierarchy, b.id).join(MANIFEST_FILE)).unwrap();
    assert_eq!(
        rec.manifest_sha256,
        serviceconnection::hashing::sha256_hex(&manifest_bytes)
    );
    assert!(rec.source_path.unwrap().ends_with(&b.id.to_string()));
    assert!(rec.imported.is_some());
    let files = site.update_files(&b.id).unwrap();
    let want = b.manifest(&e.publisher).files;
    assert_eq!(files.len(), want.len());
    for (f, w) in files.iter().zip(&want) {
        assert_eq!((&f.path, f.size, &f.sha256), (&w.path, w.size, &w.sha256));
    }
    // Nothing left over: no staging folder, no journal.
    let s = snapshot(&e);
    assert!(s.beside_db.is_empty(), "{:?}", s.beside_db);
    assert!(!s
        .library
        .keys()
        .any(|k| k.to_string_lossy().contains(STAGING_SUFFIX)));
}

#[test]
fn reimport_is_already_imported_and_changes_nothing() {
    let (e, spec) = Env::with_one_imported();
    let before = snapshot(&e);
    let r = e.run();
    assert_eq!(r.len(), 1, "{r:#?}");
    let res = result_of(&r, spec.id);
    assert_eq!(res.status, ImportStatus::AlreadyImported);
    assert_eq!(res.state, Some(UpdateState::ReadyToInstall));
    assert_eq!(snapshot(&e), before);
}

#[test]
fn tampered_manifest_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Tampered", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    let m = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), m.replace("Tampered", "TampereD")).unwrap();
    let res = assert_refused(&e, spec.id, ErrorKind::SignatureInvalid, "signature");
    // Nothing of an unauthenticated manifest is believed.
    assert!(res.name.is_none());
}

#[test]
fn tampered_content_of_the_same_size_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Tampered content", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    let f = dir.join(CONTENT_DIR).join("payload/data/cab1.cab");
    let mut b = std::fs::read(&f).unwrap();
    b[100_000] ^= 0x40;
    std::fs::write(&f, b).unwrap();
    assert_refused(&e, spec.id, ErrorKind::IntegrityMismatch, "SHA-256");
}

#[test]
fn truncated_file_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Truncated", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(CONTENT_DIR).join("setup.exe"))
        .unwrap();
    f.set_len(1234).unwrap();
    assert_refused(&e, spec.id, ErrorKind::IntegrityMismatch, "truncated");
}

#[test]
fn missing_file_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Missing", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    std::fs::remove_file(dir.join(CONTENT_DIR).join("payload/data/cab1.cab")).unwrap();
    assert_refused(
        &e,
        spec.id,
        ErrorKind::IntegrityMismatch,
        "payload/data/cab1.cab is missing",
    );
}

#[test]
fn extra_file_is_refused_in_content_and_beside_the_manifest() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Extra", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    std::fs::write(dir.join(CONTENT_DIR).join("payload/evil.dll"), b"MZ").unwrap();
    assert_refused(
        &e,
        spec.id,
        ErrorKind::IntegrityMismatch,
        "payload/evil.dll is not listed",
    );
    std::fs::remove_file(dir.join(CONTENT_DIR).join("payload/evil.dll")).unwrap();
    std::fs::create_dir(dir.join(CONTENT_DIR).join("unlisted-folder")).unwrap();
    assert_refused(
        &e,
        spec.id,
        ErrorKind::IntegrityMismatch,
        "unlisted-folder is not listed",
    );
    std::fs::remove_dir(dir.join(CONTENT_DIR).join("unlisted-folder")).unwrap();
    std::fs::write(dir.join("autorun.inf"), b"x").unwrap();
    assert_refused(
        &e,
        spec.id,
        ErrorKind::IntegrityMismatch,
        "autorun.inf is not listed",
    );
    // With the extras gone, the very same pack imports.
    std::fs::remove_file(dir.join("autorun.inf")).unwrap();
    assert_eq!(status_of(&e.run(), spec.id), ImportStatus::Imported);
    assert_placed(&e, &spec);
}

#[test]
fn path_traversal_signed_by_the_trusted_key_is_refused() {
    let (e, _) = Env::with_one_imported();
    for (i, bad) in ["../outside.bin", "/etc/passwd", "a/../../outside.bin"]
        .into_iter()
        .enumerate()
    {
        let spec = PackSpec::update(
            &format!("Traversal {i}"),
            "5.00.9135.1000",
            "5.00.9106.1000",
        )
        .with_files(vec![
            ("ok.bin".into(), bytes(1, 10)),
            (bad.into(), bytes(2, 20)),
        ]);
        let dir = e.add_raw(&spec, |m| m);
        // The target really exists, so only the path check can stop it.
        std::fs::write(dir.join("outside.bin"), bytes(2, 20)).unwrap();
        let res = assert_refused(&e, spec.id, ErrorKind::UnsafePath, "unsafe path");
        assert!(res.name.is_none());
    }
}

impl Env {
    /// Write a pack whose manifest bytes are produced by `edit` from the spec's manifest
    /// JSON and then signed by the trusted key (hostile but authentic manifests).
    fn add_raw(&self, spec: &PackSpec, edit: impl Fn(String) -> String) -> PathBuf {
        let dir = pack_dir(&self.src, self.hierarchy, spec.id);
        let json = String::from_utf8(spec.manifest(&self.publisher).to_bytes()).unwrap();
        write_signed_manifest(&dir, edit(json).as_bytes(), &self.publisher);
        let content = dir.join(CONTENT_DIR);
        std::fs::create_dir_all(&content).unwrap();
        for (p, b) in &spec.files {
            if let Ok(rel) = serviceconnection::fsutil::safe_relative_path(p) {
                let f = content.join(rel);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, b).unwrap();
            }
        }
        dir
    }
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Linked file", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    // The link points at a file with exactly the listed bytes: only the link check stops it.
    let f = dir.join(CONTENT_DIR).join("setup.exe");
    let target = e.src.join("elsewhere.exe");
    std::fs::rename(&f, &target).unwrap();
    std::os::unix::fs::symlink(&target, &f).unwrap();
    assert_refused(&e, spec.id, ErrorKind::UnsafePath, "symbolic link");

    let spec2 = PackSpec::update("Linked folder", "5.00.9136.1000", "5.00.9106.1000");
    let dir2 = e.add(&spec2);
    let d = dir2.join(CONTENT_DIR).join("payload");
    let moved = e.src.join("payload-elsewhere");
    std::fs::rename(&d, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &d).unwrap();
    assert_refused(&e, spec2.id, ErrorKind::UnsafePath, "symbolic link");

    // A linked pack folder and a linked manifest.
    let spec3 = PackSpec::update("Linked pack", "5.00.9137.1000", "5.00.9106.1000");
    let real = e.add(&spec3);
    let moved3 = e.src.join("pack-elsewhere");
    std::fs::rename(&real, &moved3).unwrap();
    std::os::unix::fs::symlink(&moved3, &real).unwrap();
    assert_refused(&e, spec3.id, ErrorKind::UnsafePath, "symbolic link");

    let spec4 = PackSpec::update("Linked manifest", "5.00.9138.1000", "5.00.9106.1000");
    let dir4 = e.add(&spec4);
    let m = dir4.join(MANIFEST_FILE);
    std::fs::rename(&m, e.src.join("manifest-elsewhere.json")).unwrap();
    std::os::unix::fs::symlink(e.src.join("manifest-elsewhere.json"), &m).unwrap();
    assert_refused(&e, spec4.id, ErrorKind::UnsafePath, "symbolic link");
}

/// A FIFO planted on the drive where a pack's manifest, signature or a content file should
/// be is refused as not a regular file, at once: opening one waits for a writer forever,
/// which no signal ends (the open restarts after the Ctrl-C handler). The watchdog lets
/// such a wait go after 20 s, so the old code fails here instead of hanging.
#[cfg(unix)]
#[test]
fn fifos_planted_on_the_drive_are_refused_without_waiting() {
    let (e, _) = Env::with_one_imported();
    let cases = [
        ("FIFO manifest", MANIFEST_FILE.to_string()),
        ("FIFO signature", format!("{MANIFEST_FILE}.minisig")),
        ("FIFO content", format!("{CONTENT_DIR}/setup.exe")),
    ];
    for (i, (name, rel)) in cases.iter().enumerate() {
        let spec = PackSpec::update(name, &format!("5.00.{}.1000", 9140 + i), "5.00.9106.1000");
        let dir = e.add(&spec);
        let f = dir.join(rel);
        std::fs::remove_file(&f).unwrap();
        fifo::mkfifo(&f);
        let _watchdog = fifo::Watchdog::new(vec![f.clone()], std::time::Duration::from_secs(20));
        let started = std::time::Instant::now();
        assert_refused(&e, spec.id, ErrorKind::UnsafePath, "is not a regular file");
        assert!(started.elapsed().as_secs() < 20, "{name}: waited");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn pack_signed_by_an_untrusted_key_is_refused() {
    let (e, _) = Env::with_one_imported();
    let stranger = Publisher::new();
    let spec = PackSpec::update("Stranger", "5.00.9135.1000", "5.00.9106.1000");
    write_pack(&e.src, e.hierarchy, &spec, &stranger);
    assert_refused(&e, spec.id, ErrorKind::SignatureInvalid, "does not trust");
}

#[test]
fn missing_signature_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Unsigned", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    std::fs::remove_file(dir.join("manifest.json.minisig")).unwrap();
    assert_refused(
        &e,
        spec.id,
        ErrorKind::SignatureInvalid,
        "no signature file",
    );
}

#[test]
fn site_without_trusted_keys_refuses_and_says_to_trust_the_key_first() {
    let e = env_at(SITE_VERSION, false);
    let spec = PackSpec::update("CM 2409", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&spec);
    assert_refused(
        &e,
        spec.id,
        ErrorKind::SignatureInvalid,
        "trust the update service's publisher key first",
    );
}

#[test]
fn insecure_skip_imports_unverified_packs_and_says_so_loudly() {
    let e = env_at(SITE_VERSION, false);
    let stranger = Publisher::new();
    let spec = PackSpec::update("Unverified", "5.00.9132.1000", "5.00.9106.1000");
    let dir = write_pack(&e.src, e.hierarchy, &spec, &stranger);
    std::fs::remove_file(dir.join("manifest.json.minisig")).unwrap();
    let mut o = e.opts();
    o.insecure_skip_signature_check = true;
    let r = import(&o, &mut progress::ignore).unwrap();
    let res = result_of(&r, spec.id);
    assert_eq!(res.status, ImportStatus::Imported);
    assert!(res.reason.as_deref().unwrap().contains(INSECURE_NOTE));
    assert_eq!(
        e.site()
            .get_update(&spec.id)
            .unwrap()
            .unwrap()
            .publisher_key_id,
        None
    );
    // Content is still verified in that mode.
    let spec2 = PackSpec::update("Unverified tampered", "5.00.9133.1000", "5.00.9106.1000");
    let dir2 = write_pack(&e.src, e.hierarchy, &spec2, &stranger);
    let f = dir2.join(CONTENT_DIR).join("setup.exe");
    let mut b = std::fs::read(&f).unwrap();
    b[0] ^= 1;
    std::fs::write(&f, b).unwrap();
    let before = snapshot(&e);
    let r = import(&o, &mut progress::ignore).unwrap();
    assert_eq!(
        result_of(&r, spec2.id).error_kind.as_deref(),
        Some("IntegrityMismatch")
    );
    assert_eq!(snapshot(&e), before);
}

#[test]
fn other_hierarchies_are_skipped_and_only_this_one_imported() {
    let e = env();
    let other = uuid::Uuid::new_v4();
    let foreign = PackSpec::update("For someone else", "5.00.9132.1000", "5.00.9106.1000");
    write_pack(&e.src, other, &foreign, &e.publisher);
    let mine = PackSpec::update("Mine", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&mine);
    std::fs::write(e.src.join("connect-report.json"), b"{}").unwrap();
    std::fs::create_dir(e.src.join("not-a-guid")).unwrap();
    let r = e.run();
    assert_eq!(r.len(), 2, "{r:#?}");
    let skipped = r
        .iter()
        .find(|x| x.status == ImportStatus::Skipped)
        .unwrap();
    assert_eq!(skipped.hierarchy_id, Some(other));
    assert!(skipped.package_guid.is_none());
    let reason = skipped.reason.as_deref().unwrap();
    assert!(
        reason.contains(&other.to_string()) && reason.contains(&e.hierarchy.to_string()),
        "{reason}"
    );
    assert_eq!(status_of(&r, mine.id), ImportStatus::Imported);
    assert!(e.site().get_update(&foreign.id).unwrap().is_none());
    assert!(!e.library().join(foreign.id.to_string()).exists());
}

#[test]
fn source_without_this_hierarchy_reports_one_skipped_result_and_changes_nothing() {
    let (e, spec) = Env::with_one_imported();
    std::fs::remove_dir_all(e.src.join(e.hierarchy.to_string())).unwrap();
    let other = uuid::Uuid::new_v4();
    write_pack(
        &e.src,
        other,
        &PackSpec::update("X", "5.00.9132.1000", "5.00.9106.1000"),
        &e.publisher,
    );
    let before = snapshot(&e);
    let r = e.run();
    assert_eq!(r.len(), 2, "{r:#?}");
    assert!(r.iter().all(|x| x.status == ImportStatus::Skipped));
    let own = r
        .iter()
        .find(|x| x.hierarchy_id == Some(e.hierarchy))
        .unwrap();
    assert!(own
        .reason
        .as_deref()
        .unwrap()
        .contains("no folder for this site's hierarchy"));
    assert_eq!(snapshot(&e), before);
    assert!(e.site().get_update(&spec.id).unwrap().is_some());
    // An empty folder for this hierarchy says so too.
    std::fs::create_dir(e.src.join(e.hierarchy.to_string())).unwrap();
    let r = e.run();
    let own = r
        .iter()
        .find(|x| x.hierarchy_id == Some(e.hierarchy))
        .unwrap();
    assert_eq!(own.status, ImportStatus::Skipped);
    assert!(own
        .reason
        .as_deref()
        .unwrap()
        .contains("holds no update packs"));
}

#[test]
fn missing_source_is_an_error() {
    let e = env();
    let mut o = e.opts();
    o.source = e.src.join("nope");
    let err = import(&o, &mut progress::ignore).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("nope"), "{err}");
}

#[test]
fn inapplicable_version_is_recorded_as_not_applicable() {
    let e = env();
    // Needs a newer site than 5.00.9128.1000: the second step of a two-step upgrade.
    let later = PackSpec::update("CM 2503", "5.00.9135.1000", "5.00.9132.1000");
    // Only for sites up to 5.00.9120.1000.
    let older = PackSpec::update("Old hotfix", "5.00.9120.1010", "5.00.9100.1000")
        .with_max("5.00.9120.1000");
    e.add(&later);
    e.add(&older);
    let r = e.run();
    for s in [&later, &older] {
        let res = result_of(&r, s.id);
        assert_eq!(res.status, ImportStatus::Imported, "{res:#?}");
        assert_eq!(res.state, Some(UpdateState::NotApplicable));
        assert_eq!(res.state_code, Some(393214));
        assert!(res.reason.as_deref().unwrap().contains("NotApplicable"));
        let rec = e.site().get_update(&s.id).unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.state_code),
            (UpdateState::NotApplicable, 393214)
        );
        assert_placed(&e, s);
    }
}

#[test]
fn after_an_upgrade_the_next_step_becomes_ready_and_passed_ones_not_applicable() {
    let e = env();
    // One trip brings a two-step upgrade: 9128 → 9132 → 9135.
    let first =
        PackSpec::update("CM 2409", "5.00.9132.1000", "5.00.9128.1000").with_max("5.00.9128.1000");
    let second = PackSpec::update("CM 2503", "5.00.9135.1000", "5.00.9132.1000");
    e.add(&first);
    e.add(&second);
    e.run();
    let state = |id| e.site().get_update(&id).unwrap().unwrap();
    assert_eq!(state(first.id).state, UpdateState::ReadyToInstall);
    assert_eq!(state(second.id).state, UpdateState::NotApplicable);

    // The first step is installed: the library call that records it re-evaluates.
    let changed = e
        .site()
        .set_site_version(&"5.00.9132.1000".parse().unwrap())
        .unwrap();
    assert_eq!(changed.len(), 2, "{changed:?}");
    for (id, want) in [
        (first.id, UpdateState::NotApplicable),
        (second.id, UpdateState::ReadyToInstall),
    ] {
        let rec = state(id);
        assert_eq!((rec.state, rec.state_code), (want, want.code()));
        assert!(changed.contains(&(id, want)));
    }

    // Another writer (the site itself) records the next upgrade directly: the next
    // Import brings the states in line before anything else, and re-imports nothing.
    rusqlite::Connection::open(&e.db)
        .unwrap()
        .execute(
            "UPDATE site SET site_version = '5.00.9128.1000' WHERE id = 1",
            [],
        )
        .unwrap();
    let r = e.run();
    for s in [&first, &second] {
        assert_eq!(result_of(&r, s.id).status, ImportStatus::AlreadyImported);
    }
    assert_eq!(state(first.id).state, UpdateState::ReadyToInstall);
    assert_eq!(state(second.id).state, UpdateState::NotApplicable);
    assert_eq!(
        result_of(&r, second.id).state,
        Some(UpdateState::NotApplicable)
    );

    // Installed and Failed are the site's own verdicts and are left alone.
    rusqlite::Connection::open(&e.db)
        .unwrap()
        .execute(
            "UPDATE update_packages SET state = 'Installed', state_code = 196612 WHERE package_guid = ?1",
            [first.id.to_string()],
        )
        .unwrap();
    let changed = e
        .site()
        .set_site_version(&"5.00.9135.1000".parse().unwrap())
        .unwrap();
    assert_eq!(changed, vec![(second.id, UpdateState::ReadyToInstall)]);
    assert_eq!(state(first.id).state, UpdateState::Installed);
}

#[test]
fn targeted_pack_for_other_hierarchies_is_refused_as_foreign() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Early ring", "5.00.9135.1000", "5.00.9106.1000")
        .for_hierarchies(vec![uuid::Uuid::new_v4()]);
    e.add(&spec);
    assert_refused(
        &e,
        spec.id,
        ErrorKind::WrongHierarchy,
        "not to this site's hierarchy",
    );
    // Naming this hierarchy is fine.
    let ok = PackSpec::update("Early ring mine", "5.00.9136.1000", "5.00.9106.1000")
        .for_hierarchies(vec![uuid::Uuid::new_v4(), e.hierarchy]);
    e.add(&ok);
    assert_eq!(status_of(&e.run(), ok.id), ImportStatus::Imported);
}

#[test]
fn folder_name_must_equal_manifest_id() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Renamed", "5.00.9135.1000", "5.00.9106.1000");
    let dir = e.add(&spec);
    let other = uuid::Uuid::new_v4();
    std::fs::rename(&dir, pack_dir(&e.src, e.hierarchy, other)).unwrap();
    assert_refused(
        &e,
        other,
        ErrorKind::InvalidManifest,
        "does not match its folder name",
    );
}

#[test]
fn oversized_or_malformed_manifest_is_refused() {
    let (e, _) = Env::with_one_imported();
    let spec = PackSpec::update("Bad JSON", "5.00.9135.1000", "5.00.9106.1000");
    e.add_raw(&spec, |j| {
        j.replace("\"format_version\": 1", "\"format_version\": 1, \"x\": 2")
    });
    assert_refused(&e, spec.id, ErrorKind::InvalidManifest, "not valid");
    let big = PackSpec::update("Huge", "5.00.9136.1000", "5.00.9106.1000");
    let dir = e.add(&big);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(MANIFEST_FILE))
        .unwrap();
    f.set_len(17 * 1024 * 1024).unwrap();
    assert_refused(&e, big.id, ErrorKind::InvalidManifest, "larger than");
}

#[test]
fn different_pack_under_a_used_guid_is_a_conflict() {
    let (e, spec) = Env::with_one_imported();
    std::fs::remove_dir_all(e.src.join(e.hierarchy.to_string())).unwrap();
    let mut other = PackSpec::update("Impostor", "5.00.9140.1000", "5.00.9106.1000");
    other.id = spec.id;
    e.add(&other);
    assert_refused(&e, spec.id, ErrorKind::Conflict, "already imported");
    assert_placed(&e, &spec);
}

#[test]
fn one_bad_pack_does_not_stop_the_good_ones() {
    let e = env();
    let good = PackSpec::update("Good", "5.00.9132.1000", "5.00.9106.1000");
    let bad = PackSpec::update("Bad", "5.00.9133.1000", "5.00.9106.1000");
    e.add(&good);
    let dir = e.add(&bad);
    std::fs::write(dir.join(CONTENT_DIR).join("setup.exe"), b"short").unwrap();
    let r = e.run();
    assert_eq!(status_of(&r, good.id), ImportStatus::Imported);
    assert_eq!(status_of(&r, bad.id), ImportStatus::Refused);
    let s = snapshot(&e);
    assert_eq!(s.updates.len(), 1);
    assert!(!e.library().join(bad.id.to_string()).exists());
    assert!(!s
        .library
        .keys()
        .any(|k| k.to_string_lossy().contains(STAGING_SUFFIX)));
    assert_placed(&e, &good);
}

#[test]
fn cancellation_leaves_the_site_unchanged() {
    let (e, _) = Env::with_one_imported();
    let a = PackSpec::update("A", "5.00.9135.1000", "5.00.9106.1000")
        .with_files(vec![("big.bin".into(), bytes(3, 4 * 1024 * 1024))]);
    let b = PackSpec::update("B", "5.00.9136.1000", "5.00.9106.1000");
    e.add(&a);
    e.add(&b);
    let before = snapshot(&e);
    let mut calls = 0;
    let err = import(&e.opts(), &mut |p: &Progress| {
        calls += 1;
        p.done < 2 * 1024 * 1024
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(calls > 1);
    assert_eq!(snapshot(&e), before);
    // A fresh site whose library did not exist keeps not having one.
    let f = env();
    f.add(&a);
    let err = import(&f.opts(), &mut |_: &Progress| false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(!f.db.parent().unwrap().join("EasySetupPayload").exists());
    assert!(snapshot(&f).beside_db.is_empty());
}

#[test]
fn unrecorded_folder_in_the_library_is_never_adopted_or_removed() {
    let e = env();
    let spec = PackSpec::update("P", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&spec);
    let squatter = e.library().join(spec.id.to_string());
    std::fs::create_dir_all(&squatter).unwrap();
    std::fs::write(squatter.join("setup.exe"), b"not from this site").unwrap();
    assert_refused(&e, spec.id, ErrorKind::Conflict, "has no record of it");
    assert_eq!(
        std::fs::read(squatter.join("setup.exe")).unwrap(),
        b"not from this site"
    );
    std::fs::remove_dir_all(&squatter).unwrap();
    assert_eq!(status_of(&e.run(), spec.id), ImportStatus::Imported);
    assert_placed(&e, &spec);
}

#[test]
fn deleted_content_folder_is_reported_and_repaired_by_reimport() {
    let (e, spec) = Env::with_one_imported();
    let before = snapshot(&e);
    std::fs::remove_dir_all(e.library().join(spec.id.to_string())).unwrap();
    // Without the pack in the source: reported.
    let hier = e.src.join(e.hierarchy.to_string());
    let aside = e.src.join("aside");
    std::fs::rename(&hier, &aside).unwrap();
    let r = e.run();
    let res = result_of(&r, spec.id);
    assert_eq!(res.status, ImportStatus::Refused);
    assert_eq!(res.error_kind.as_deref(), Some("NotFound"));
    assert!(res
        .reason
        .as_deref()
        .unwrap()
        .contains("import its pack again"));
    // With it: placed again, the row kept.
    std::fs::rename(&aside, &hier).unwrap();
    let r = e.run();
    let res = result_of(&r, spec.id);
    assert_eq!(res.status, ImportStatus::Imported, "{res:#?}");
    assert!(res.reason.as_deref().unwrap().contains("missing"));
    assert_placed(&e, &spec);
    let after = snapshot(&e);
    assert_eq!(after.library, before.library);
    assert_eq!(after.files, before.files);
    assert_eq!(after.updates.len(), 1);
    assert_eq!(
        after.updates[0].manifest_sha256,
        before.updates[0].manifest_sha256
    );
}

#[test]
fn concurrent_imports_in_threads_import_each_pack_once() {
    let e = env();
    let specs: Vec<PackSpec> = (0..3)
        .map(|i| {
            PackSpec::update(
                &format!("P{i}"),
                &format!("5.00.913{i}.1000"),
                "5.00.9106.1000",
            )
        })
        .collect();
    for s in &specs {
        e.add(s);
    }
    let all: Vec<Vec<ImportResult>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| import(&e.opts(), &mut progress::ignore).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_each_imported_once(&all, &specs);
    for s in &specs {
        assert_placed(&e, s);
    }
    assert_eq!(snapshot(&e).updates.len(), 3);
}

fn assert_each_imported_once(all: &[Vec<ImportResult>], specs: &[PackSpec]) {
    for s in specs {
        let statuses: Vec<ImportStatus> = all.iter().map(|r| status_of(r, s.id)).collect();
        let imported = statuses
            .iter()
            .filter(|x| **x == ImportStatus::Imported)
            .count();
        let already = statuses
            .iter()
            .filter(|x| **x == ImportStatus::AlreadyImported)
            .count();
        assert_eq!((imported, already), (1, all.len() - 1), "{statuses:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Real processes: concurrent imports, and imports killed with SIGKILL at exact points.

/// Not a test on its own: the body of a child process started by the tests below.
#[test]
#[ignore = "helper: runs as a child process of the kill and concurrency tests"]
fn child_import_process() {
    let (Ok(db), Ok(src)) = (
        std::env::var("SCT_CHILD_DB"),
        std::env::var("SCT_CHILD_SRC"),
    ) else {
        return;
    };
    let before = peak_rss_kib();
    let r = import(&ImportOptions::new(db, src), &mut progress::ignore).expect("child import");
    println!("SCT_CHILD_PEAK_KIB {before} {}", peak_rss_kib());
    println!("SCT_CHILD_RESULTS {}", serde_json::to_string(&r).unwrap());
}

/// This process's peak resident set (`VmHWM`), in KiB; 0 where /proc is missing.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_flat_while_importing_a_large_pack() {
    use sha2::Digest;
    use std::io::Write;
    let e = env();
    let id = uuid::Uuid::new_v4();
    let dir = pack_dir(&e.src, e.hierarchy, id);
    std::fs::create_dir_all(dir.join(CONTENT_DIR)).unwrap();
    // 64 MiB written and hashed in 1 MiB pieces, never whole in memory.
    let mut f = std::fs::File::create(dir.join(CONTENT_DIR).join("big.bin")).unwrap();
    let mut h = sha2::Sha256::new();
    let mut size = 0u64;
    let mut chunk = bytes(1000, 1024 * 1024);
    for i in 0..64u64 {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&chunk).unwrap();
        h.update(&chunk);
        size += chunk.len() as u64;
    }
    drop(f);
    let mut spec =
        PackSpec::update("Big", "5.00.9132.1000", "5.00.9106.1000").with_files(Vec::new());
    spec.id = id;
    let mut m = spec.manifest(&e.publisher);
    m.files.push(serviceconnection::pack::PackFile {
        path: "big.bin".into(),
        size,
        sha256: hex::encode(h.finalize()),
    });
    write_signed_manifest(&dir, &m.to_bytes(), &e.publisher);
    let lines = finish_child(spawn_child(&e, None));
    let r: Vec<ImportResult> = serde_json::from_str(
        lines
            .iter()
            .find_map(|l| l.split_once("SCT_CHILD_RESULTS ").map(|x| x.1))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status_of(&r, id), ImportStatus::Imported, "{r:#?}");
    // (libtest may print its "test ... " prefix on the same line.)
    let line = lines
        .iter()
        .find_map(|l| l.split_once("SCT_CHILD_PEAK_KIB ").map(|x| x.1))
        .unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let grew_kib = v[1].saturating_sub(v[0]);
    assert!(v[0] > 0, "no VmHWM reading");
    assert!(
        grew_kib < 24 * 1024,
        "peak memory grew by {grew_kib} KiB while importing 64 MiB"
    );
    eprintln!("peak memory grew by {grew_kib} KiB while importing 64 MiB");
    let placed = std::fs::metadata(e.library().join(id.to_string()).join("big.bin")).unwrap();
    assert_eq!(placed.len(), size);
}

fn spawn_child(e: &Env, pause_at: Option<&str>) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_import_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SCT_CHILD_DB", &e.db)
    .env("SCT_CHILD_SRC", &e.src)
    .env_remove(PAUSE_ENV)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let flag = pause_at.map(|stage| {
        let flag = pause_flag();
        c.env(PAUSE_ENV, format!("{stage}:{}", flag.display()));
        flag
    });
    let child = c
        .spawn_retrying()
        .unwrap_or_else(|e| panic!("starting the child import failed: {e}"));
    if let Some(flag) = flag {
        PAUSE_FLAGS.lock().unwrap().insert(child.id(), flag);
    }
    child
}

/// Where a paused child writes its marker, by child pid ([`read_until`] looks there).
static PAUSE_FLAGS: std::sync::Mutex<BTreeMap<u32, PathBuf>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Unix: the pause point appends its marker to our end of the child's stdout pipe.
#[cfg(unix)]
fn pause_flag() -> PathBuf {
    PathBuf::from("/dev/stdout")
}

/// Windows has no `/dev/stdout`: the marker goes to a file of its own, which
/// [`read_until`] watches.
#[cfg(windows)]
fn pause_flag() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("sct-pause-{}-{n}.txt", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Read the child's stdout until `marker` appears; panics if it exits first.
fn read_until(child: &mut Child, marker: &str) -> String {
    let flag = PAUSE_FLAGS.lock().unwrap().remove(&child.id());
    let flag = flag.expect("read_until is for children spawned with a pause point");
    #[cfg(unix)]
    let _ = flag; // the marker comes through the stdout pipe
    #[cfg(windows)]
    {
        // The marker is in the child's flag file: watch it (and the child).
        loop {
            let text = std::fs::read_to_string(&flag).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                let _ = std::fs::remove_file(&flag);
                return line.to_string();
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains(marker) {
            // Keep the pipe open (a paused child must not get EPIPE).
            std::mem::forget(lines);
            return line;
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    panic!("child exited ({status}) before printing {marker:?}; stderr:\n{err}");
}

/// Wait for a child that runs to the end; its stdout lines (it must have succeeded).
fn finish_child(mut child: Child) -> Vec<String> {
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed ({status}); stderr:\n{err}");
    out.lines().map(str::to_string).collect()
}

fn child_results(child: Child) -> Vec<ImportResult> {
    let lines = finish_child(child);
    let line = lines
        .iter()
        .find_map(|l| l.split_once("SCT_CHILD_RESULTS ").map(|x| x.1))
        .expect("the child printed its results");
    serde_json::from_str(line).unwrap()
}

#[test]
fn concurrent_imports_from_several_processes_import_each_pack_once() {
    let e = env();
    let specs: Vec<PackSpec> = (0..3)
        .map(|i| {
            PackSpec::update(
                &format!("P{i}"),
                &format!("5.00.913{i}.1000"),
                "5.00.9106.1000",
            )
        })
        .collect();
    for s in &specs {
        e.add(s);
    }
    let children: Vec<Child> = (0..3).map(|_| spawn_child(&e, None)).collect();
    let all: Vec<Vec<ImportResult>> = children.into_iter().map(child_results).collect();
    assert_each_imported_once(&all, &specs);
    for s in &specs {
        assert_placed(&e, s);
    }
}

#[test]
fn second_import_waits_for_the_lock_then_refuses_busy_with_a_clear_message() {
    let e = env();
    let spec = PackSpec::update("P", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&spec);
    let mut holder = spawn_child(&e, Some("locked"));
    read_until(&mut holder, "SCT_TEST_PAUSED locked");
    let before = snapshot(&e);
    let mut o = e.opts();
    o.lock_wait_ms = Some(300);
    let err = import(&o, &mut progress::ignore).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(
        err.message().contains("another import into this site"),
        "{err}"
    );
    assert_eq!(snapshot(&e), before);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The kernel released the dead holder's lock.
    assert_eq!(status_of(&e.run(), spec.id), ImportStatus::Imported);
}

const STAGES: &[&str] = &[
    "locked",
    "journaled",
    "staging",
    "staged",
    "recorded",
    "renamed-first",
    "renamed",
    "committed",
];

#[test]
fn import_killed_at_any_point_leaves_the_site_unchanged_or_complete_and_a_rerun_completes() {
    kill_at_every_stage(&|| {
        let e = env();
        let specs = vec![
            PackSpec::update("A", "5.00.9132.1000", "5.00.9106.1000"),
            PackSpec::update("B", "5.00.9133.1000", "5.00.9106.1000"),
        ];
        for s in &specs {
            e.add(s);
        }
        (e, specs)
    });
}

/// Kill a child import (SIGKILL) at every pause point; after each kill the recorded list
/// is all or nothing, recovery alone restores the site exactly (or keeps it complete),
/// and a re-run completes the import. `make` gives a fresh site, source and its packs.
fn kill_at_every_stage(make: &dyn Fn() -> (Env, Vec<PackSpec>)) {
    for stage in STAGES {
        let (e, specs) = make();
        let n = specs.len();
        let initial = snapshot(&e);
        let mut child = spawn_child(&e, Some(stage));
        read_until(&mut child, &format!("SCT_TEST_PAUSED {stage}"));
        child.kill().unwrap();
        child.wait().unwrap();

        // Right after the kill: the recorded list is all or nothing.
        let recorded = Site::open_read_only(&e.db)
            .unwrap()
            .list_updates()
            .unwrap()
            .len();
        let committed = *stage == "committed";
        assert_eq!(
            recorded,
            if committed { n } else { 0 },
            "after kill at {stage}"
        );
        if committed {
            for s in &specs {
                assert_placed(&e, s);
            }
        }

        // Recovery alone (no packs in the source) restores exactly the state before,
        // or keeps the complete import.
        let hier = e.src.join(e.hierarchy.to_string());
        let aside = e.src.join("aside");
        std::fs::rename(&hier, &aside).unwrap();
        e.run();
        let recovered = snapshot(&e);
        if committed {
            assert_eq!(recovered.updates.len(), n);
            assert!(
                recovered.beside_db.is_empty(),
                "journal left: {:?}",
                recovered.beside_db
            );
        } else {
            assert_eq!(recovered, initial, "after kill at {stage} and recovery");
        }

        // The re-run completes the job.
        std::fs::rename(&aside, &hier).unwrap();
        let r = e.run();
        let want = if committed {
            ImportStatus::AlreadyImported
        } else {
            ImportStatus::Imported
        };
        for s in &specs {
            assert_eq!(status_of(&r, s.id), want, "re-run after kill at {stage}");
            assert_placed(&e, s);
        }
        let done = snapshot(&e);
        assert_eq!(done.updates.len(), n);
        assert!(done.beside_db.is_empty());
        let top: Vec<_> = std::fs::read_dir(e.library())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(top.len(), n, "library after kill at {stage}: {top:?}");
        let journal = {
            let mut n = e.db.file_name().unwrap().to_os_string();
            n.push(JOURNAL_SUFFIX);
            e.db.with_file_name(n)
        };
        assert!(!journal.exists());
    }
}

// ---------------------------------------------------------------------------------------
// Packs produced by the real reference service (`sct-service publish` + `serve`) and
// downloaded by the real Connect, from usage cabs made by the real Prepare.

#[path = "common/service.rs"]
mod service;

use serviceconnection::api::{PackType, Selection};
use serviceconnection::connect::{connect, ConnectOptions};
use serviceconnection::pack::PackManifest;
use serviceconnection::signing::SecretKey;

/// Connect's output for two hierarchies, and what the service published.
struct Connected {
    store: service::TestStore,
    /// The update-pack folder Connect wrote.
    out: PathBuf,
    /// The site that made the first cab (hierarchy `h1`); imports straight from `out`.
    site1: PathBuf,
    h1: uuid::Uuid,
    h2: uuid::Uuid,
    /// For every hierarchy, applies to SITE_VERSION.
    update: PackSpec,
    /// For every hierarchy, only for sites up to 5.00.9120.1000.
    stale: PackSpec,
    /// A hotfix released only to `h2`.
    targeted: PackSpec,
}

#[allow(clippy::too_many_arguments)]
fn published(
    store: &service::TestStore,
    name: &str,
    version: &str,
    pack_type: PackType,
    min: &str,
    max: Option<&str>,
    hierarchies: &[uuid::Uuid],
    files: Vec<(String, Vec<u8>)>,
) -> PackSpec {
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let content = service::write_content(&store.dir().join(format!("content-{name}")), &refs);
    let id = store.publish(name, version, pack_type, min, max, hierarchies, &content);
    PackSpec {
        id,
        name: name.into(),
        version: version.into(),
        pack_type,
        min_site_version: min.into(),
        max_site_version: max.map(Into::into),
        hierarchies: hierarchies.to_vec(),
        files,
    }
}

fn connected() -> Connected {
    let store = service::TestStore::new();
    let (h1, h2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let update = published(
        &store,
        "Update 2303",
        "5.00.9132.1000",
        PackType::Update,
        SITE_VERSION,
        None,
        &[],
        vec![
            ("setup.exe".into(), bytes(21, 300_000)),
            ("payload/data 1/big.cab".into(), bytes(22, 1_500_000)),
            ("empty.txt".into(), Vec::new()),
        ],
    );
    let stale = published(
        &store,
        "Update 2203",
        "5.00.9120.1000",
        PackType::Update,
        "5.00.9100.1000",
        Some("5.00.9120.1000"),
        &[],
        vec![("old.bin".into(), bytes(23, 40_000))],
    );
    let targeted = published(
        &store,
        "Hotfix KB2",
        "5.00.9128.1010",
        PackType::Hotfix,
        SITE_VERSION,
        None,
        &[h2],
        vec![("fix.msp".into(), bytes(24, 20_000))],
    );
    // Two offline sites, one usage cab each, on one transfer drive.
    let usb = store.dir().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let mut site1 = PathBuf::new();
    for (i, h) in [h1, h2].into_iter().enumerate() {
        let sdir = store.dir().join(format!("site{i}"));
        std::fs::create_dir(&sdir).unwrap();
        let db = sdir.join("site.db");
        let mut site = Site::create(
            &db,
            &NewSite {
                site_code: format!("PS{i}"),
                site_version: SITE_VERSION.parse().unwrap(),
                diagnostics_level: Default::default(),
                hierarchy_id: Some(h),
                site_name: None,
                scp_mode: Default::default(),
            },
        )
        .unwrap();
        serviceconnection::site::sample::generate(&mut site, 30, i as u64).unwrap();
        drop(site);
        serviceconnection::usage::prepare(
            &db,
            &usb.join(format!("usage{i}.cab")),
            false,
            &mut progress::ignore,
        )
        .unwrap();
        if i == 0 {
            site1 = db;
        }
    }
    let svc = service::TestService::start(&store, &[]);
    let out = usb.join("UpdatePacks");
    let mut o = ConnectOptions::new(&usb, &out, svc.url());
    o.selection = Selection::All;
    let report = connect(&o, &mut progress::ignore).unwrap();
    assert!(report.is_success(), "{report:#?}");
    drop(svc);
    Connected {
        store,
        out,
        site1,
        h1,
        h2,
        update,
        stale,
        targeted,
    }
}

/// Recursive copy of a folder (files and folders only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (f, t) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&f, &t);
        } else {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

impl Connected {
    /// A fresh site of hierarchy `h` trusting the service's key, with a copy of Connect's
    /// output as its source.
    fn site_env(&self, h: uuid::Uuid) -> Env {
        let e = env_in(SITE_VERSION, h, false);
        e.site()
            .add_trusted_publisher(
                &serviceconnection::signing::PublicKey::from_file(&self.store.public_key_path())
                    .unwrap(),
                "reference service",
            )
            .unwrap();
        std::fs::remove_dir(&e.src).unwrap();
        copy_tree(&self.out, &e.src);
        e
    }

    /// The service's own signing key, to make authentic-but-hostile manifests.
    fn service_key(&self) -> SecretKey {
        let text = std::fs::read_to_string(self.store.secret_key_path()).unwrap();
        SecretKey::parse(&text).unwrap()
    }
}

#[test]
fn connect_output_imports_into_the_site_that_prepared_it() {
    let c = connected();
    let site_dir = c.site1.parent().unwrap().to_path_buf();
    // The very site that prepared the cab trusts the service's published key.
    let pubkey =
        serviceconnection::signing::PublicKey::from_file(&c.store.public_key_path()).unwrap();
    Site::open(&c.site1)
        .unwrap()
        .add_trusted_publisher(&pubkey, "reference service")
        .unwrap();
    // Three imports at once from the same drive: each pack is imported once.
    let all: Vec<Vec<ImportResult>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    import(&ImportOptions::new(&c.site1, &c.out), &mut progress::ignore).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_each_imported_once(&all, &[c.update.clone(), c.stale.clone()]);
    let r = &all[0];
    // The other hierarchy's folder is skipped; its targeted hotfix is not here.
    let skipped: Vec<_> = r
        .iter()
        .filter(|x| x.status == ImportStatus::Skipped)
        .collect();
    assert_eq!(skipped.len(), 1, "{r:#?}");
    assert_eq!(skipped[0].hierarchy_id, Some(c.h2));
    assert!(r.iter().all(|x| x.package_guid != Some(c.targeted.id)));
    assert_eq!(r.len(), 3, "{r:#?}");
    let site = Site::open(&c.site1).unwrap();
    let up = site.get_update(&c.update.id).unwrap().unwrap();
    assert_eq!(
        (up.state, up.state_code),
        (UpdateState::ReadyToInstall, 262146)
    );
    assert_eq!(
        (up.name.as_str(), up.update_type.as_str()),
        ("Update 2303", "Update")
    );
    let st = site.get_update(&c.stale.id).unwrap().unwrap();
    assert_eq!(
        (st.state, st.state_code),
        (UpdateState::NotApplicable, 393214)
    );
    assert_eq!(up.publisher_key_id, Some(pubkey.key_id()));
    for s in [&c.update, &c.stale] {
        let dir = site_dir.join(CONTENT_LIBRARY).join(s.id.to_string());
        for (p, b) in &s.files {
            assert_eq!(&std::fs::read(dir.join(p)).unwrap(), b, "{p}");
        }
    }
    // Re-import: nothing changes.
    let r = import(&ImportOptions::new(&c.site1, &c.out), &mut progress::ignore).unwrap();
    assert_eq!(status_of(&r, c.update.id), ImportStatus::AlreadyImported);
    assert_eq!(status_of(&r, c.stale.id), ImportStatus::AlreadyImported);

    // The second hierarchy's site gets its targeted hotfix too.
    let e2 = c.site_env(c.h2);
    let r = e2.run();
    for s in [&c.update, &c.stale, &c.targeted] {
        assert_eq!(status_of(&r, s.id), ImportStatus::Imported, "{r:#?}");
        assert_placed(&e2, s);
    }
    assert_eq!(
        r.iter()
            .filter(|x| x.status == ImportStatus::Skipped)
            .count(),
        1
    );
}

#[cfg(unix)]
#[test]
fn damaged_or_hostile_connect_output_is_refused_and_changes_nothing() {
    let c = connected();
    type Damage = fn(&Connected, &Path);
    let cases: Vec<(&str, Damage, ErrorKind, &str)> = vec![
        (
            "tampered manifest",
            |_, d| {
                let m = std::fs::read_to_string(d.join(MANIFEST_FILE)).unwrap();
                std::fs::write(
                    d.join(MANIFEST_FILE),
                    m.replace("Update 2303", "Update 2304"),
                )
                .unwrap();
            },
            ErrorKind::SignatureInvalid,
            "signature",
        ),
        (
            "tampered content",
            |_, d| {
                let f = d.join(CONTENT_DIR).join("payload/data 1/big.cab");
                let mut b = std::fs::read(&f).unwrap();
                b[1_000_000] ^= 0xff;
                std::fs::write(&f, b).unwrap();
            },
            ErrorKind::IntegrityMismatch,
            "SHA-256",
        ),
        (
            "truncated file",
            |_, d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(CONTENT_DIR).join("setup.exe"))
                    .unwrap();
                f.set_len(299_999).unwrap();
            },
            ErrorKind::IntegrityMismatch,
            "truncated",
        ),
        (
            "missing file",
            |_, d| {
                std::fs::remove_file(d.join(CONTENT_DIR).join("empty.txt")).unwrap();
            },
            ErrorKind::IntegrityMismatch,
            "content/empty.txt is missing",
        ),
        (
            "extra file",
            |_, d| {
                std::fs::write(d.join(CONTENT_DIR).join("payload/extra.dll"), b"MZ").unwrap();
            },
            ErrorKind::IntegrityMismatch,
            "content/payload/extra.dll is not listed",
        ),
        (
            "unfinished download",
            |_, d| {
                std::fs::write(d.join(CONTENT_DIR).join("setup.exe.sct-partial"), b"MZ").unwrap();
            },
            ErrorKind::IntegrityMismatch,
            "run Connect again",
        ),
        (
            "path traversal signed by the service key",
            |c, d| {
                let mut m =
                    PackManifest::from_bytes(&std::fs::read(d.join(MANIFEST_FILE)).unwrap())
                        .unwrap();
                m.files[0].path = "../../../outside.exe".into();
                let bytes = m.to_bytes();
                std::fs::write(d.join(MANIFEST_FILE), &bytes).unwrap();
                let sig = c.service_key().sign(&bytes, "file:manifest.json").unwrap();
                std::fs::write(d.join("manifest.json.minisig"), sig).unwrap();
            },
            ErrorKind::UnsafePath,
            "'..' component",
        ),
        (
            "symbolic link",
            |_, d| {
                let f = d.join(CONTENT_DIR).join("setup.exe");
                let aside = d.parent().unwrap().join("setup-elsewhere.exe");
                std::fs::rename(&f, &aside).unwrap();
                std::os::unix::fs::symlink(&aside, &f).unwrap();
            },
            ErrorKind::UnsafePath,
            "symbolic link",
        ),
        (
            "signed by another key",
            |_, d| {
                let other = SecretKey::generate().unwrap();
                let bytes = std::fs::read(d.join(MANIFEST_FILE)).unwrap();
                let sig = other.sign(&bytes, "file:manifest.json").unwrap();
                std::fs::write(d.join("manifest.json.minisig"), sig).unwrap();
            },
            ErrorKind::SignatureInvalid,
            "does not trust",
        ),
    ];
    for (what, damage, kind, reason) in cases {
        let e = c.site_env(c.h1);
        // First the valid rest of the drive, so "unchanged" covers a non-empty site.
        let pack = pack_dir(&e.src, c.h1, c.update.id);
        let aside = e.src.join("aside");
        std::fs::rename(&pack, &aside).unwrap();
        assert_eq!(
            status_of(&e.run(), c.stale.id),
            ImportStatus::Imported,
            "{what}"
        );
        std::fs::rename(&aside, &pack).unwrap();
        damage(&c, &pack);
        let res = assert_refused(&e, c.update.id, kind, reason);
        assert!(
            !e.library().join(c.update.id.to_string()).exists(),
            "{what}"
        );
        eprintln!("{what}: refused as {kind}: {}", res.reason.unwrap());
    }
}

#[test]
fn connect_output_with_a_used_guid_but_different_content_is_a_conflict() {
    let c = connected();
    let e = c.site_env(c.h1);
    assert_eq!(status_of(&e.run(), c.update.id), ImportStatus::Imported);
    // The same GUID, re-published with different content and signed by the service's key.
    let d = pack_dir(&e.src, c.h1, c.update.id);
    let mut m = PackManifest::from_bytes(&std::fs::read(d.join(MANIFEST_FILE)).unwrap()).unwrap();
    m.name = "Update 2303 (re-release)".into();
    let bytes = m.to_bytes();
    std::fs::write(d.join(MANIFEST_FILE), &bytes).unwrap();
    std::fs::write(
        d.join("manifest.json.minisig"),
        c.service_key().sign(&bytes, "file:manifest.json").unwrap(),
    )
    .unwrap();
    assert_refused(&e, c.update.id, ErrorKind::Conflict, "already imported");
    assert_placed(&e, &c.update);
    assert_eq!(
        e.site().get_update(&c.update.id).unwrap().unwrap().name,
        "Update 2303"
    );
}

#[test]
fn connect_output_import_killed_at_any_point_is_recovered_and_completed() {
    let c = connected();
    kill_at_every_stage(&|| (c.site_env(c.h1), vec![c.update.clone(), c.stale.clone()]));
}

/// Progress: phase 5 (Verify) counts the bytes hashed as they go, up to every byte of
/// the packs; then phase 6 (Import) counts the bytes of the packs moved into place.
/// Cancelling during phase 6 still leaves the site exactly as it was.
#[test]
fn progress_reports_verify_then_placement_and_cancelling_placement_changes_nothing() {
    use serviceconnection::progress::Phase;
    let (e, _) = Env::with_one_imported();
    let a = PackSpec::update("A", "5.00.9135.1000", "5.00.9106.1000")
        .with_files(vec![("big.bin".into(), bytes(5, 3 * 1024 * 1024))]);
    let b = PackSpec::update("B", "5.00.9136.1000", "5.00.9106.1000");
    e.add(&a);
    e.add(&b);
    let total: u64 = [&a, &b]
        .iter()
        .flat_map(|s| s.files.iter())
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();

    let before = snapshot(&e);
    let mut seen: Vec<Progress> = Vec::new();
    let err = import(&e.opts(), &mut |p: &Progress| {
        seen.push(p.clone());
        p.phase != Phase::Import || p.done == 0
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(
        snapshot(&e),
        before,
        "cancelled while placing: nothing changed"
    );
    assert!(seen.iter().any(|p| p.phase == Phase::Import && p.done > 0));

    let mut seen: Vec<Progress> = Vec::new();
    let r = import(&e.opts(), &mut |p: &Progress| {
        seen.push(p.clone());
        true
    })
    .unwrap();
    assert_eq!(status_of(&r, a.id), ImportStatus::Imported);
    assert_eq!(status_of(&r, b.id), ImportStatus::Imported);
    let verify: Vec<&Progress> = seen.iter().filter(|p| p.phase == Phase::Verify).collect();
    let place: Vec<&Progress> = seen.iter().filter(|p| p.phase == Phase::Import).collect();
    assert_eq!(
        verify.len() + place.len(),
        seen.len(),
        "only phases 5 and 6"
    );
    let first_place = seen.iter().position(|p| p.phase == Phase::Import).unwrap();
    assert!(
        seen[..first_place].iter().all(|p| p.phase == Phase::Verify),
        "Verify comes first, then placement"
    );
    // Verify moves as bytes are hashed, not only at the ends.
    assert!(
        verify.iter().any(|p| p.done > 0 && p.done < total),
        "intermediate Verify reports"
    );
    assert!(verify.iter().all(|p| p.total == total));
    assert!(verify.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(verify.last().unwrap().done, total);
    assert!(place.iter().all(|p| p.total == total));
    assert!(place.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(place.last().unwrap().done, total);
    let items: Vec<&str> = place.iter().map(|p| p.item.as_str()).collect();
    assert!(
        items.contains(&a.id.to_string().as_str()) && items.contains(&b.id.to_string().as_str())
    );
}

/// Two site databases in one folder would share one content library. The first to
/// import owns it; the second is refused at Import, naming the first, and a third is
/// refused at creation. Moved to a folder of its own, the second site imports normally.
#[test]
fn a_second_site_database_in_the_folder_is_refused_naming_the_owner() {
    let e = env();
    let spec = PackSpec::update("Update 2409", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&spec);
    let folder = e.db.parent().unwrap().to_path_buf();
    let second = folder.join("second.db");
    let new_site = |path: &Path| {
        Site::create(
            path,
            &NewSite {
                site_code: "PS2".into(),
                site_version: SITE_VERSION.parse().unwrap(),
                diagnostics_level: Default::default(),
                hierarchy_id: Some(e.hierarchy),
                site_name: None,
                scp_mode: Default::default(),
            },
        )
    };
    // Nothing is shared before the first import: creating it there is allowed.
    new_site(&second)
        .unwrap()
        .add_trusted_publisher(e.publisher.public_key(), "test publisher")
        .unwrap();

    // The first site's flow.
    assert_eq!(status_of(&e.run(), spec.id), ImportStatus::Imported);
    assert_placed(&e, &spec);
    let before = snapshot(&e);

    // The second site's flow: refused as a whole, naming the owner; nothing changes.
    let err = import(&ImportOptions::new(&second, &e.src), &mut progress::ignore).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.message().contains(&e.db.display().to_string())
            && err.message().contains("folder of its own"),
        "{err}"
    );
    assert!(!err.message().contains("sct-staging"), "{err}");
    assert!(Site::open(&second)
        .unwrap()
        .list_updates()
        .unwrap()
        .is_empty());
    assert_eq!(snapshot(&e), before);

    // A third site database is refused at creation, leaving no file.
    let third = folder.join("third.db");
    let err = new_site(&third).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("site.db"), "{err}");
    assert!(!third.exists());

    // The first site carries on.
    assert_eq!(status_of(&e.run(), spec.id), ImportStatus::AlreadyImported);

    // The second site, moved to a folder of its own, imports normally.
    let own = e._dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let moved = own.join("second.db");
    std::fs::rename(&second, &moved).unwrap();
    let r = import(&ImportOptions::new(&moved, &e.src), &mut progress::ignore).unwrap();
    assert_eq!(status_of(&r, spec.id), ImportStatus::Imported, "{r:#?}");
    assert!(own.join(CONTENT_LIBRARY).join(spec.id.to_string()).is_dir());
}

/// From inside an import's progress callback, a write to the same site database fails at
/// once with `Busy`, saying why (it would wait for itself); reads work. The import then
/// completes normally.
#[test]
fn writes_from_inside_the_import_callback_fail_at_once() {
    let e = env();
    let spec = PackSpec::update("Update 2409", "5.00.9132.1000", "5.00.9106.1000");
    e.add(&spec);
    let mut nested: Vec<(ErrorKind, String)> = Vec::new();
    let mut read_ok = false;
    let r = import(&e.opts(), &mut |_: &Progress| {
        if nested.is_empty() {
            let err = import(&e.opts(), &mut progress::ignore).unwrap_err();
            nested.push((err.kind(), err.message().to_string()));
            let err = e
                .site()
                .remove_trusted_publisher(&e.publisher.key_id())
                .unwrap_err();
            nested.push((err.kind(), err.message().to_string()));
            read_ok = e.site().trusted_publishers().unwrap().len() == 1;
        }
        true
    })
    .unwrap();
    assert_eq!(status_of(&r, spec.id), ImportStatus::Imported);
    assert_eq!(nested.len(), 2);
    for (kind, message) in &nested {
        assert_eq!(*kind, ErrorKind::Busy, "{message}");
        assert!(
            message.contains("same thread") && message.contains("an import"),
            "{message}"
        );
    }
    assert!(read_ok, "reads work from inside the callback");
}
