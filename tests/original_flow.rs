//! The original tool's whole procedure, end to end, through the real `serviceconnectiontool`
//! binary against the real `sct-service` on 127.0.0.1: help, -newsite, -prepare, -force,
//! -export, -trust, -connect, a second -connect, -import, a second -import, -listupdates.
//!
//! The transfer drive is `SCT_TEST_DRIVE` when set: on Windows (Wine, through `.ci/wine-run`)
//! that is `E:\`, a drive letter mapped in the Wine prefix, so every path the administrator
//! types is a Windows path (`E:\UsageData.cab`, `E:\`, `E:\UpdatePacks`). Elsewhere it is a
//! temporary folder. The site lives on another drive (the system temporary folder).

#[path = "common/service.rs"]
mod service;
#[path = "common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use serviceconnection::api::PackType;
use start::Start;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_serviceconnectiontool");

/// The transfer drive's root and, when it is a temporary folder, its guard.
fn transfer_drive() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("SCT_TEST_DRIVE") {
        Some(d) => {
            let root = PathBuf::from(d);
            // The runner maps a fresh empty folder for each test binary: anything here
            // would be uploaded by `-connect -usagedatasrc E:\`.
            let entries = std::fs::read_dir(&root)
                .unwrap_or_else(|e| panic!("SCT_TEST_DRIVE={} is not usable: {e}", root.display()))
                .count();
            assert_eq!(entries, 0, "SCT_TEST_DRIVE={} is not empty", root.display());
            (root, None)
        }
        None => {
            // Windows CI always runs this through the Wine runner, which maps E:.
            assert!(
                !cfg!(windows) || std::env::var_os("CI").is_none(),
                "on Windows in CI the transfer drive must be mapped (SCT_TEST_DRIVE)"
            );
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    }
}

fn tool(args: &[&str], service_uri: &str) -> Output {
    Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("SCT_SITE_DB")
        .env_remove("SCT_SERVICE_TOKEN")
        .env_remove("SCT_PROXY_PASSWORD")
        .env("SCT_SERVICE_URI", service_uri)
        .output_retrying()
        .expect("run serviceconnectiontool")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit 0, nothing on standard error; returns standard output.
fn ok(args: &[&str], service_uri: &str) -> String {
    let o = tool(args, service_uri);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "serviceconnectiontool {args:?}: {}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn ok_json(args: &[&str], service_uri: &str) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("-json");
    let out = ok(&a, service_uri);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn original_syntax_flow_on_a_transfer_drive() {
    let (drive, _guard) = transfer_drive();
    let cab = drive.join("UsageData.cab");
    let csv = drive.join("UsageData.csv");
    let packs = drive.join("UpdatePacks");
    let site_dir = tempfile::tempdir().unwrap();
    let db = site_dir.path().join("site.db");

    // The cloud side: one update for the site's version, content in a subfolder.
    let store = service::TestStore::new();
    let content = service::write_content(
        &store.dir().join("content"),
        &[
            ("setup/update.bin", &service::pseudo_random(200_000, 7)),
            ("readme.txt", b"Configuration Manager 2207\r\n"),
        ],
    );
    let pack = store.publish(
        "Configuration Manager 2207",
        "5.00.9132.1000",
        PackType::Update,
        "5.00.9128.1000",
        None,
        &[],
        &content,
    );
    let svc = service::TestService::start(&store, &[]);
    let uri = svc.url();

    // Help.
    let help = ok(&[], uri);
    for word in ["-prepare", "-usagedatadest", "-connect", "-import"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }

    // -newsite
    let info = ok_json(
        &[
            "-newsite",
            "-sitedb",
            s(&db),
            "-sitecode",
            "PS1",
            "-siteversion",
            "5.00.9128.1000",
            "-sampledata",
            "2000",
        ],
        uri,
    );
    assert_eq!(info["site_code"], "PS1");
    let hierarchy = info["hierarchy_id"].as_str().unwrap().to_string();

    // -prepare to E:\UsageData.cab; a second run refuses to overwrite; -force replaces.
    let out = ok(
        &["-prepare", "-sitedb", s(&db), "-usagedatadest", s(&cab)],
        uri,
    );
    assert!(out.starts_with("Prepared "), "{out}");
    let manifest = serviceconnection::usage::read_usage_cab_file(&cab).expect("a valid usage cab");
    assert_eq!(manifest.hierarchy_id.to_string(), hierarchy);
    let first = std::fs::read(&cab).unwrap();
    let again = tool(
        &["-prepare", "-sitedb", s(&db), "-usagedatadest", s(&cab)],
        uri,
    );
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(&cab).unwrap(),
        first,
        "the refused run changed the cab"
    );
    ok(
        &[
            "-prepare",
            "-force",
            "-sitedb",
            s(&db),
            "-usagedatadest",
            s(&cab),
        ],
        uri,
    );
    let manifest = serviceconnection::usage::read_usage_cab_file(&cab).expect("a valid usage cab");

    // -export: the same CSV bytes the cab carries.
    let export = ok_json(&["-export", "-sitedb", s(&db), "-dest", s(&csv)], uri);
    let csv_entry = manifest
        .files
        .iter()
        .find(|f| f.name == "UsageData.csv")
        .expect("the cab lists UsageData.csv");
    assert_eq!(export["sha256"], csv_entry.sha256.as_str());
    assert_eq!(
        std::fs::metadata(&csv).unwrap().len(),
        csv_entry.size,
        "the export is the cab's CSV"
    );
    // Connect uploads every cab in the source; the CSV is left alone.

    // -trust
    let trusted = ok_json(
        &[
            "-trust",
            "-sitedb",
            s(&db),
            "-publickey",
            s(&store.public_key_path()),
        ],
        uri,
    );
    assert_eq!(trusted["key_id"].as_str().unwrap().len(), 16);

    // -connect E:\ -> E:\UpdatePacks
    let root = drive.to_str().unwrap();
    let report = ok_json(
        &[
            "-connect",
            "-usagedatasrc",
            root,
            "-updatepackdest",
            s(&packs),
        ],
        uri,
    );
    let uploads = report["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 1, "{report}");
    assert_eq!(uploads[0]["status"], "Uploaded");
    assert_eq!(uploads[0]["cab"], s(&cab));
    let got = report["packs"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{report}");
    assert_eq!(got[0]["status"], "Downloaded");
    let pack_dir = packs.join(&hierarchy).join(pack.to_string());
    assert_eq!(got[0]["path"], s(&pack_dir));
    assert!(pack_dir.join("manifest.json").is_file());
    assert_eq!(
        std::fs::read(pack_dir.join("content").join("setup").join("update.bin")).unwrap(),
        service::pseudo_random(200_000, 7)
    );
    assert!(packs.join("connect-report.json").is_file());

    // Running it again finds the pack complete and fetches nothing.
    let report = ok_json(
        &[
            "-connect",
            "-usagedatasrc",
            root,
            "-updatepackdest",
            s(&packs),
        ],
        uri,
    );
    assert_eq!(report["packs"][0]["status"], "AlreadyComplete", "{report}");
    assert_eq!(report["bytes_transferred"], 0);

    // -import from E:\UpdatePacks, then again.
    let imported = ok_json(
        &["-import", "-sitedb", s(&db), "-updatepacksrc", s(&packs)],
        uri,
    );
    assert_eq!(imported.as_array().unwrap().len(), 1, "{imported}");
    assert_eq!(imported[0]["status"], "Imported", "{imported}");
    assert_eq!(imported[0]["state"], "ReadyToInstall");
    let library = PathBuf::from(imported[0]["content_path"].as_str().unwrap());
    assert!(
        library.starts_with(site_dir.path()),
        "content beside the site: {}",
        library.display()
    );
    assert_eq!(
        std::fs::read(library.join("setup").join("update.bin")).unwrap(),
        service::pseudo_random(200_000, 7)
    );
    let again = ok_json(
        &["-import", "-sitedb", s(&db), "-updatepacksrc", s(&packs)],
        uri,
    );
    assert_eq!(again[0]["status"], "AlreadyImported", "{again}");

    // -listupdates
    let list = ok_json(&["-listupdates", "-sitedb", s(&db)], uri);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["package_guid"], pack.to_string());
    assert_eq!(list[0]["state"], "ReadyToInstall");
    let text_list = ok(&["-listupdates", "-sitedb", s(&db)], uri);
    assert!(
        text_list.contains("Configuration Manager 2207"),
        "{text_list}"
    );

    // The second Connect sends the same cab again: the service records it once (issue 18:
    // one upload per hierarchy and SHA-256, whichever replica receives it).
    assert_eq!(store.uploads().len(), 1);
}

/// The start helper every Windows test run relies on: it retries Wine's start-up failure
/// (and only that, and only when told to), a bounded number of times.
#[test]
fn starting_retries_wines_start_up_failure_and_nothing_else() {
    use std::cell::Cell;
    use std::io;
    let wine = || io::Error::from_raw_os_error(start::WINE_START_FAILURE);

    // Two start-up failures, then the start: three tries, the start's result.
    let calls = Cell::new(0);
    let got = start::retry_start("t", true, || {
        calls.set(calls.get() + 1);
        if calls.get() < 3 {
            Err(wine())
        } else {
            Ok(7)
        }
    });
    assert_eq!((got.unwrap(), calls.get()), (7, 3));

    // Any other error comes back from the first try.
    let calls = Cell::new(0);
    let got: io::Result<()> = start::retry_start("t", true, || {
        calls.set(calls.get() + 1);
        Err(io::Error::from(io::ErrorKind::NotFound))
    });
    assert_eq!(
        (got.unwrap_err().kind(), calls.get()),
        (io::ErrorKind::NotFound, 1)
    );

    // A start that keeps failing gives up after ATTEMPTS tries with the last error.
    let calls = Cell::new(0);
    let got: io::Result<()> = start::retry_start("t", true, || {
        calls.set(calls.get() + 1);
        Err(wine())
    });
    assert_eq!(
        got.unwrap_err().raw_os_error(),
        Some(start::WINE_START_FAILURE)
    );
    assert_eq!(calls.get(), start::ATTEMPTS);

    // Not told to retry (Linux): the first error is final.
    let calls = Cell::new(0);
    let got: io::Result<()> = start::retry_start("t", false, || {
        calls.set(calls.get() + 1);
        Err(wine())
    });
    assert!(got.is_err());
    assert_eq!(calls.get(), 1);
}
