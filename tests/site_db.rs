//! The site database on real SQLite files: creation and validation, refusal of foreign and
//! newer files without touching them, the sample-data generator, and concurrent writers
//! from threads and from separate processes.

#[path = "common/site.rs"]
mod site;
#[path = "common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use serviceconnection::site::{sample, DiagnosticsLevel, NewSite, ScpMode, Site};
use serviceconnection::{ErrorKind, SiteVersion};
use start::Start;
use std::path::Path;

fn new_site(code: &str) -> NewSite {
    NewSite {
        site_code: code.into(),
        site_version: site::SITE_VERSION.parse().unwrap(),
        diagnostics_level: Default::default(),
        hierarchy_id: None,
        site_name: None,
        scp_mode: Default::default(),
    }
}

#[test]
fn create_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let hid: uuid::Uuid = site::HIERARCHY.parse().unwrap();
    let path = dir.path().join("site.db");
    let s = Site::create(
        &path,
        &NewSite {
            site_code: "ps1".into(),
            site_version: "5.00.9132.1000".parse().unwrap(),
            diagnostics_level: DiagnosticsLevel::Full,
            hierarchy_id: Some(hid),
            site_name: Some("Zürich, \"HQ\"".into()),
            scp_mode: ScpMode::Online,
        },
    )
    .unwrap();
    drop(s);
    let info = Site::open_read_only(&path).unwrap().info().unwrap();
    assert_eq!(info.site_code, "PS1", "site code is stored upper case");
    assert_eq!(info.hierarchy_id, hid);
    assert_eq!(info.site_version.as_str(), "5.00.9132.1000");
    assert_eq!(info.diagnostics_level, DiagnosticsLevel::Full);
    assert_eq!(info.scp_mode, ScpMode::Online);
    assert_eq!(info.site_name, "Zürich, \"HQ\"");
    assert_eq!(info.usage_rows, [0, 0, 0]);

    // Defaults: Enhanced, Offline, "Site <code>", and a fresh GUID per site.
    let a = Site::create(&dir.path().join("a.db"), &new_site("AB1"))
        .unwrap()
        .info()
        .unwrap();
    let b = Site::create(&dir.path().join("b.db"), &new_site("AB2"))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(a.diagnostics_level, DiagnosticsLevel::Enhanced);
    assert_eq!(a.scp_mode, ScpMode::Offline);
    assert_eq!(a.site_name, "Site AB1");
    assert_ne!(a.hierarchy_id, b.hierarchy_id);
    assert!(!a.hierarchy_id.is_nil());
}

#[test]
fn existing_file_is_not_overwritten_by_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.db");
    std::fs::write(&path, b"precious").unwrap();
    let e = Site::create(&path, &new_site("PS1")).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_site_codes_are_refused_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for code in ["", "P", "PS", "PS12", "P-1", "P 1", "ÄB1", "PS1 "] {
        let path = dir.path().join("site.db");
        let e = Site::create(&path, &new_site(code)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{code:?}");
        assert!(e.message().contains("site code"), "{}", e.message());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{code:?} left a file"
        );
    }
}

#[test]
fn bad_site_versions_are_refused() {
    for v in [
        "5.00.9128",
        "5.00.9128.1000.1",
        "5.00.x.1000",
        "",
        "v5.00.9128.1000",
    ] {
        let e = v.parse::<SiteVersion>().err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{v:?}");
    }
    let a: SiteVersion = "5.00.9128.1000".parse().unwrap();
    let b: SiteVersion = "5.00.10000.0".parse().unwrap();
    assert!(a < b, "versions compare numerically, not as text");
}

/// Open every way; the file must be refused with `kind` and stay byte-for-byte the same.
fn assert_refused_unchanged(path: &Path, kind: ErrorKind) {
    let before = std::fs::read(path).unwrap();
    for read_only in [false, true] {
        let r = if read_only {
            Site::open_read_only(path)
        } else {
            Site::open(path)
        };
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        assert_eq!(e.kind(), kind, "{}", e.message());
        assert!(
            e.message().contains(&path.display().to_string()),
            "{}",
            e.message()
        );
    }
    let e = serviceconnection::usage::prepare(
        path,
        &path.with_file_name("out.cab"),
        false,
        &mut |_| true,
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), kind);
    assert!(!path.with_file_name("out.cab").exists());
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{} was changed",
        path.display()
    );
}

#[test]
fn newer_schema_is_refused_without_changing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 200);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    assert_refused_unchanged(&path, ErrorKind::SchemaTooNew);
    let e = Site::open(&path).err().unwrap();
    assert!(e.message().contains("newer"), "{}", e.message());
}

#[test]
fn foreign_files_are_refused_without_changing_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(&text, "this is not a database\n".repeat(100)).unwrap();
    assert_refused_unchanged(&text, ErrorKind::NotASiteDatabase);

    let random = dir.path().join("random.db");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&random, bytes).unwrap();
    assert_refused_unchanged(&random, ErrorKind::NotASiteDatabase);

    // A real SQLite database that is somebody else's.
    let other = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    assert_refused_unchanged(&other, ErrorKind::NotASiteDatabase);

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert_refused_unchanged(&empty, ErrorKind::NotASiteDatabase);

    let missing = dir.path().join("missing.db");
    assert_eq!(
        Site::open(&missing).err().unwrap().kind(),
        ErrorKind::NotFound
    );
    assert!(
        !missing.exists(),
        "opening a missing site must not create it"
    );
    assert_eq!(
        Site::open(dir.path()).err().unwrap().kind(),
        ErrorKind::NotASiteDatabase
    );
}

#[test]
fn sample_data_is_realistic_and_spans_all_levels() {
    let dir = tempfile::tempdir().unwrap();
    let path = site::create_site(dir.path(), DiagnosticsLevel::Full, 5000);
    let rows = site::raw_rows(&path);
    assert_eq!(rows.len(), 5000);
    let info = Site::open_read_only(&path).unwrap().info().unwrap();
    assert_eq!(info.usage_rows.iter().sum::<u64>(), 5000);
    for (i, n) in info.usage_rows.iter().enumerate() {
        assert!(*n > 500, "level {} has only {n} rows", i + 1);
    }
    let categories: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.category.as_str()).collect();
    for c in [
        "Hierarchy",
        "ClientCountByOS",
        "FeatureUsage",
        "ClientSettings",
        "UpdateCompliance",
        "ServerRoles",
        "DatabaseHealth",
        "CollectionEvaluation",
    ] {
        assert!(categories.contains(c), "no {c} rows");
    }
    assert!(rows.iter().all(|r| !r.site_code.is_empty()));
    assert!(rows.iter().any(|r| !r.site_name.is_empty()));
    assert!(rows.iter().any(|r| !r.server_name.is_empty()));
    assert!(
        rows.iter().any(|r| r.site_name.is_empty()),
        "not every row is about a site"
    );
    assert!(
        rows.iter().any(|r| !r.site_name.is_ascii()),
        "real names are not all ASCII"
    );
    assert!(rows
        .iter()
        .all(|r| r.collected_utc.ends_with('Z') && r.collected_utc.len() == 20));
}

#[test]
fn sample_data_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::create(&dir.path().join("a.db"), &new_site("PS1")).unwrap();
    let mut b = Site::create(&dir.path().join("b.db"), &new_site("PS1")).unwrap();
    let mut c = Site::create(&dir.path().join("c.db"), &new_site("PS1")).unwrap();
    assert_eq!(sample::generate(&mut a, 3000, 7).unwrap(), 3000);
    assert_eq!(sample::generate(&mut b, 3000, 7).unwrap(), 3000);
    assert_eq!(sample::generate(&mut c, 3000, 8).unwrap(), 3000);
    drop((a, b, c));
    let ra = site::raw_rows(&dir.path().join("a.db"));
    assert_eq!(ra, site::raw_rows(&dir.path().join("b.db")));
    assert_ne!(ra, site::raw_rows(&dir.path().join("c.db")));
}

#[test]
fn cancelled_generation_inserts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 100);
    let mut s = Site::open(&path).unwrap();
    let mut calls = 0;
    let e = sample::generate_with_progress(&mut s, 100_000, 1, &mut |p| {
        calls += 1;
        p.done < 20_000
    })
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert!(calls >= 2);
    drop(s);
    assert_eq!(site::raw_rows(&path).len(), 100);
}

const WRITER_ENV: &str = "SCT_TEST_CHILD_WRITER_DB";

/// Not a test on its own: the body of a writer process spawned by
/// `concurrent_writers_do_not_corrupt_the_database` (does nothing without its variable).
#[test]
fn child_writer_process() {
    let Ok(db) = std::env::var(WRITER_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("SCT_TEST_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    for round in 0..5 {
        let mut s = Site::open(Path::new(&db)).unwrap();
        sample::generate(&mut s, 400, seed * 100 + round).unwrap();
    }
}

#[test]
fn concurrent_writers_do_not_corrupt_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = site::create_site(dir.path(), DiagnosticsLevel::Full, 0);
    let children: Vec<_> = (0..3)
        .map(|i| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_writer_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WRITER_ENV, &path)
                .env("SCT_TEST_CHILD_SEED", (i + 1).to_string())
                .stdout(std::process::Stdio::null())
                .spawn_retrying()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for round in 0..5 {
                    let mut s = Site::open(&path).unwrap();
                    sample::generate(&mut s, 400, 1000 + t * 10 + round).unwrap();
                    // Readers run alongside the writers.
                    let info = Site::open_read_only(&path).unwrap().info().unwrap();
                    assert!(info.usage_rows.iter().sum::<u64>() >= 400);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer process failed");
    }
    assert_eq!(site::integrity_check(&path), "ok");
    let rows = site::raw_rows(&path);
    assert_eq!(
        rows.len(),
        (4 + 3) * 5 * 400,
        "every writer's rows are there"
    );
    let info = Site::open_read_only(&path).unwrap().info().unwrap();
    assert_eq!(info.usage_rows.iter().sum::<u64>(), rows.len() as u64);
}
