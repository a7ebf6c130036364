//! The real `serviceconnectiontool` binary: the original syntax, every bad input with its
//! exit status and its single standard-error line, and files left exactly as they were.

#[path = "common/site.rs"]
mod site;

use serviceconnection::site::DiagnosticsLevel;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_serviceconnectiontool");

/// Run the tool in `cwd` with a clean environment (no SCT_* variables unless given).
fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(EXE);
    c.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env_remove("SCT_SITE_DB")
        .env_remove("SCT_SERVICE_URI")
        .env_remove("SCT_SERVICE_TOKEN")
        .env_remove("SCT_PROXY_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    site::output(&mut c)
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    run_env(cwd, args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn assert_ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert_eq!(stderr(o), "", "nothing on standard error on success");
    stdout(o)
}

/// Exit status `code`, exactly one stderr line in the tool's format containing `words`,
/// and nothing on standard output.
fn assert_fails(o: &Output, code: i32, words: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stderr: {err}stdout: {}",
        stdout(o)
    );
    assert_eq!(err.lines().count(), 1, "exactly one line: {err:?}");
    assert!(err.ends_with('\n'));
    assert!(
        err.starts_with("serviceconnectiontool: error: "),
        "format: {err:?}"
    );
    assert!(
        err.to_lowercase().contains(&words.to_lowercase()),
        "{err:?} should mention {words:?}"
    );
    assert_eq!(stdout(o), "", "nothing on standard output on failure");
}

/// A folder with a site database (Enhanced, 2,000 rows) and an existing file `keep.cab`.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 2_000);
    std::fs::write(dir.path().join("keep.cab"), b"an older cab").unwrap();
    (dir, db)
}

#[test]
fn no_arguments_prints_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&[][..], &["-?"][..], &["-HELP"][..]] {
        let out = assert_ok(&run(dir.path(), args));
        for word in [
            "-prepare",
            "-usagedatadest",
            "-export",
            "-connect",
            "-import",
            "-newsite",
            "SCT_SITE_DB",
        ] {
            assert!(out.contains(word), "help lacks {word}");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn newsite_prepare_export_with_the_original_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = assert_ok(&run(
        d,
        &[
            "-SiteVersion",
            "5.00.9128.1000",
            "-NEWSITE",
            "-sitecode",
            "ps1",
            "-SiteDB",
            "site.db",
            "-diagnosticslevel",
            "full",
            "-hierarchyid",
            "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}",
            "-sampledata",
            "3000",
            "-sitename",
            "Zürich, \"HQ\"",
            "-json",
        ],
    ));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["site_code"], "PS1");
    assert_eq!(info["diagnostics_level"], "Full");
    assert_eq!(info["hierarchy_id"], site::HIERARCHY);
    assert_eq!(info["site_name"], "Zürich, \"HQ\"");
    let total: u64 = info["usage_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 3000);

    // Text mode, options in any order and any case.
    let out = assert_ok(&run(
        d,
        &[
            "-USAGEDATADEST",
            "UsageData.cab",
            "-Prepare",
            "-sitedb",
            "site.db",
        ],
    ));
    assert!(out.starts_with("Prepared 3000 usage records"), "{out}");
    let (ok, text) = site::tool("cabextract", &["-t", "UsageData.cab"], d);
    assert!(ok, "{text}");

    // JSON mode, site from SCT_SITE_DB.
    let out = run_env(
        d,
        &["-export", "-json", "-dest", "UsageData.csv"],
        &[("SCT_SITE_DB", "site.db")],
    );
    let r: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(r["record_count"], 3000);
    assert_eq!(r["format"], "Csv");
    assert_eq!(r["sha256"], site::sha256_file(&d.join("UsageData.csv")));

    // -sitedb wins over SCT_SITE_DB.
    let out = run_env(
        d,
        &["-siteinfo", "-sitedb", "site.db", "-json"],
        &[("SCT_SITE_DB", "nope.db")],
    );
    let r: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(r["site_code"], "PS1");

    // -force replaces an existing file.
    std::fs::write(d.join("UsageData.cab"), b"old").unwrap();
    assert_ok(&run(
        d,
        &[
            "-prepare",
            "-force",
            "-sitedb",
            "site.db",
            "-usagedatadest",
            "UsageData.cab",
        ],
    ));
    let (ok, text) = site::tool("cabextract", &["-t", "UsageData.cab"], d);
    assert!(ok, "{text}");
}

#[test]
fn trust_listupdates_and_siteinfo() {
    let (dir, _db) = workspace();
    let d = dir.path();
    let key = serviceconnection::signing::SecretKey::generate().unwrap();
    std::fs::write(d.join("publisher.pub"), key.public_key().to_file_text()).unwrap();
    let out = assert_ok(&run(
        d,
        &[
            "-trust",
            "-sitedb",
            "site.db",
            "-publickey",
            "publisher.pub",
            "-json",
        ],
    ));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["key_id"], key.public_key().key_id());
    let out = assert_ok(&run(d, &["-listupdates", "-sitedb", "site.db", "-json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
    assert_eq!(
        assert_ok(&run(d, &["-listupdates", "-sitedb", "site.db"])),
        "No updates.\n"
    );
    let out = assert_ok(&run(d, &["-siteinfo", "-sitedb", "site.db"]));
    assert!(out.contains("Site code:         PS1"), "{out}");

    std::fs::write(d.join("bad.pub"), "not a key\n").unwrap();
    let before = site::snapshot(d);
    assert_fails(
        &run(
            d,
            &["-trust", "-sitedb", "site.db", "-publickey", "bad.pub"],
        ),
        2,
        "not a minisign public key",
    );
    assert_eq!(site::snapshot(d), before);
}

#[test]
fn command_line_mistakes_exit_2_and_change_nothing() {
    let (dir, _db) = workspace();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["-prepare", "-sitedb", "site.db"], "needs -usagedatadest"),
        (&["-export", "-sitedb", "site.db"], "needs -dest"),
        (
            &[
                "-prepare",
                "-sitedb",
                "site.db",
                "-usagedatadest",
                "u.cab",
                "-bogus",
            ],
            "unknown option -bogus",
        ),
        (
            &["-prepare", "-sitedb", "site.db", "-usagedatadest"],
            "-usagedatadest needs a value",
        ),
        (
            &["-prepare", "-sitedb", "-usagedatadest", "u.cab"],
            "-sitedb needs a value",
        ),
        (
            &[
                "-prepare",
                "-sitedb",
                "site.db",
                "-SITEDB",
                "site.db",
                "-usagedatadest",
                "u.cab",
            ],
            "twice",
        ),
        (
            &[
                "-prepare",
                "-export",
                "-sitedb",
                "site.db",
                "-usagedatadest",
                "u.cab",
            ],
            "one mode",
        ),
        (&["-sitedb", "site.db"], "no mode"),
        (&["-prepare", "-usagedatadest", "u.cab"], "SCT_SITE_DB"),
        (
            &["-prepare", "-sitedb", "site.db", "-usagedatadest", "u.csv"],
            ".cab",
        ),
        (
            &[
                "-prepare",
                "-sitedb",
                "site.db",
                "-usagedatadest",
                "site.db",
            ],
            ".cab",
        ),
        (&["-export", "-sitedb", "site.db", "-dest", "u.cab"], ".csv"),
        (
            &["-prepare", "-sitedb", "site.db", "-dest", "u.csv"],
            "does not apply",
        ),
        (&["-prepare", "site.db"], "unexpected argument"),
        (
            &["-prepare", "-sitedb=site.db", "-usagedatadest", "u.cab"],
            "with a space",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "n.db",
                "-sitecode",
                "PS12",
                "-siteversion",
                "5.00.9128.1000",
            ],
            "site code",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "n.db",
                "-sitecode",
                "PS1",
                "-siteversion",
                "5.00.9128",
            ],
            "four-part version",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "n.db",
                "-sitecode",
                "PS1",
                "-siteversion",
                "5.00.9128.1000",
                "-diagnosticslevel",
                "Verbose",
            ],
            "diagnostics level",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "n.db",
                "-sitecode",
                "PS1",
                "-siteversion",
                "5.00.9128.1000",
                "-hierarchyid",
                "xyz",
            ],
            "not a GUID",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "n.db",
                "-sitecode",
                "PS1",
                "-siteversion",
                "5.00.9128.1000",
                "-sampledata",
                "lots",
            ],
            "whole number",
        ),
        (
            &[
                "-newsite",
                "-sitecode",
                "PS1",
                "-siteversion",
                "5.00.9128.1000",
            ],
            "SCT_SITE_DB",
        ),
        (
            &[
                "-connect",
                "-usagedatasrc",
                "keep.cab",
                "-updatepackdest",
                "packs",
            ],
            "SCT_SERVICE_URI",
        ),
        (
            &[
                "-connect",
                "-usagedatasrc",
                "keep.cab",
                "-updatepackdest",
                "packs",
                "-serviceuri",
                "http://127.0.0.1:9",
                "-downloadall",
                "-downloadhotfix",
            ],
            "cannot be combined",
        ),
        (
            &[
                "-connect",
                "-usagedatasrc",
                "keep.cab",
                "-updatepackdest",
                "packs",
                "-serviceuri",
                "http://127.0.0.1:9",
                "-proxyusername",
                "meg",
            ],
            "-proxyserveruri",
        ),
        (
            &[
                "-connect",
                "-usagedatasrc",
                "keep.cab",
                "-updatepackdest",
                "packs",
                "-serviceuri",
                "http://127.0.0.1:9",
                "-proxyserveruri",
                "127.0.0.1:9",
                "-proxyusername",
                "meg",
            ],
            "SCT_PROXY_PASSWORD",
        ),
        (
            &[
                "-connect",
                "-usagedatasrc",
                "keep.cab",
                "-updatepackdest",
                "packs",
                "-serviceuri",
                "http://127.0.0.1:9",
                "-parallel",
                "0",
            ],
            "-parallel",
        ),
        (&["-import"], "needs -updatepacksrc"),
        (&["-trust", "-sitedb", "site.db"], "needs -publickey"),
    ];
    let before = site::snapshot(d);
    for (args, words) in cases {
        let o = run(d, args);
        assert_fails(&o, 2, words);
        assert_eq!(site::snapshot(d), before, "{args:?} changed files");
    }
}

#[test]
fn secrets_are_never_accepted_as_arguments() {
    let (dir, _db) = workspace();
    let d = dir.path();
    let before = site::snapshot(d);
    for args in [
        &[
            "-connect",
            "-usagedatasrc",
            "keep.cab",
            "-updatepackdest",
            "p",
            "-proxyusername",
            "meg",
            "-proxypassword",
            "Hunter2secret",
        ][..],
        &["-ProxyPassword=Hunter2secret", "-connect"][..],
        &["-connect", "-password", "Hunter2secret"][..],
        &["-connect", "-servicetoken", "Hunter2secret"][..],
    ] {
        let o = run(d, args);
        assert_fails(&o, 2, "not accepted");
        assert!(
            !stderr(&o).contains("Hunter2secret"),
            "the secret was echoed"
        );
        assert!(stderr(&o).contains("SCT_"), "says what to do instead");
    }
    assert_eq!(site::snapshot(d), before);
}

#[test]
fn operation_failures_exit_1_and_change_nothing() {
    let (dir, _db) = workspace();
    let d = dir.path();
    std::fs::write(d.join("junk.db"), b"definitely not SQLite").unwrap();
    std::fs::write(d.join("keep.csv"), b"an older csv").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-prepare",
                "-sitedb",
                "missing.db",
                "-usagedatadest",
                "u.cab",
            ],
            "does not exist",
        ),
        (
            &["-export", "-sitedb", "junk.db", "-dest", "u.csv"],
            "not a ServiceConnection site database",
        ),
        (
            &[
                "-prepare",
                "-sitedb",
                "site.db",
                "-usagedatadest",
                "nofolder/u.cab",
            ],
            "does not exist",
        ),
        (
            &["-export", "-sitedb", "site.db", "-dest", "nofolder/u.csv"],
            "does not exist",
        ),
        (
            &[
                "-prepare",
                "-sitedb",
                "site.db",
                "-usagedatadest",
                "keep.cab",
            ],
            "already exists (use -force to overwrite it)",
        ),
        (
            &[
                "-export", "-sitedb", "site.db", "-dest", "keep.csv", "-json",
            ],
            "already exists (use -force",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "site.db",
                "-sitecode",
                "PS2",
                "-siteversion",
                "5.00.9128.1000",
            ],
            "already exists",
        ),
        (
            &[
                "-newsite",
                "-sitedb",
                "nofolder/x.db",
                "-sitecode",
                "PS2",
                "-siteversion",
                "5.00.9128.1000",
            ],
            "does not exist",
        ),
        (
            &["-siteinfo", "-sitedb", "junk.db"],
            "not a ServiceConnection site database",
        ),
        (&["-listupdates", "-sitedb", "missing.db"], "does not exist"),
        (
            &["-trust", "-sitedb", "site.db", "-publickey", "missing.pub"],
            "missing.pub",
        ),
        (
            &[
                "-import",
                "-sitedb",
                "site.db",
                "-updatepacksrc",
                "nofolder",
            ],
            "nofolder",
        ),
    ];
    let before = site::snapshot(d);
    for (args, words) in cases {
        let o = run(d, args);
        assert_fails(&o, 1, words);
        assert_eq!(site::snapshot(d), before, "{args:?} changed files");
    }
}

#[test]
fn newer_schema_site_is_refused_unchanged() {
    let (dir, db) = workspace();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 42).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = site::snapshot(dir.path());
    for args in [
        &["-prepare", "-sitedb", "site.db", "-usagedatadest", "u.cab"][..],
        &["-trust", "-sitedb", "site.db", "-publickey", "keep.cab"][..],
        &["-siteinfo", "-sitedb", "site.db"][..],
    ] {
        assert_fails(&run(dir.path(), args), 1, "newer");
        assert_eq!(site::snapshot(dir.path()), before);
    }
}

/// Unix modes and users; Windows ACLs cannot be shown under Wine (README, Windows).
#[cfg(unix)]
#[test]
fn unwritable_destination_folder_is_reported_and_nothing_changes() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The site folder stays writable (SQLite readers need its -shm file); the
    // destination folder is not writable by whoever runs the tool.
    let site_dir = base.path().join("site");
    std::fs::create_dir(&site_dir).unwrap();
    let db = site::create_site(&site_dir, DiagnosticsLevel::Enhanced, 300);
    std::fs::set_permissions(&site_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let ro = base.path().join("usb");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("old.cab"), b"old").unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // The unprivileged user may not be able to reach the build folder: give it its own
    // link (or copy) of the binary outside the snapshot.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin_dir.path().join("serviceconnectiontool");
    if std::fs::hard_link(EXE, &exe).is_err() {
        std::fs::copy(EXE, &exe).unwrap();
    }
    let before = site::snapshot(base.path());
    for (mode, opt, file) in [
        ("-prepare", "-usagedatadest", "u.cab"),
        ("-export", "-dest", "u.csv"),
    ] {
        let dest = ro.join(file);
        let mut c = Command::new(&exe);
        c.args([
            mode,
            "-sitedb",
            db.to_str().unwrap(),
            opt,
            dest.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .env_remove("SCT_SITE_DB");
        if is_root {
            // Root may write anywhere: run as an unprivileged user instead.
            c.uid(65534).gid(65534);
        }
        let o = c.output().unwrap();
        assert_fails(&o, 1, "permission denied");
        assert_eq!(site::snapshot(base.path()), before);
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn connect_and_import_are_wired_and_report_failures_in_one_line() {
    let (dir, db) = workspace();
    let d = dir.path();
    // A real usage cab to upload to a service that is not there (port 9, discard: closed).
    serviceconnection::usage::prepare(&db, &d.join("u.cab"), false, &mut |_| true).unwrap();
    let o = run(
        d,
        &[
            "-connect",
            "-usagedatasrc",
            "u.cab",
            "-updatepackdest",
            "packs",
            "-serviceuri",
            "http://127.0.0.1:9",
            "-parallel",
            "2",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).starts_with("serviceconnectiontool: error: "));

    // Import from an empty update-pack folder: nothing for this hierarchy, success.
    std::fs::create_dir(d.join("empty")).unwrap();
    let o = run(
        d,
        &[
            "-import",
            "-sitedb",
            "site.db",
            "-updatepacksrc",
            "empty",
            "-json",
        ],
    );
    let out = assert_ok(&o);
    assert!(serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .is_array());
}

/// SIGINT; Wine cannot deliver a console Ctrl+C to a child (README, Windows).
#[cfg(unix)]
#[test]
fn interrupt_cancels_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 300_000);
    let usb = dir.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    std::fs::write(usb.join("old.cab"), b"old").unwrap();
    let before = site::snapshot(&usb);
    for (mode, opt, file) in [
        ("-prepare", "-usagedatadest", "u.cab"),
        ("-export", "-dest", "u.csv"),
        ("-prepare", "-usagedatadest", "old.cab"),
    ] {
        let child = Command::new(EXE)
            .args([
                mode,
                "-force",
                "-sitedb",
                db.to_str().unwrap(),
                opt,
                usb.join(file).to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the run is writing (its temporary file exists), then press Ctrl+C.
        let started = std::time::Instant::now();
        loop {
            let writing = std::fs::read_dir(&usb).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".sct-partial")
            });
            if writing {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "{mode} never started writing"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        assert_fails(&o, 1, "cancelled");
        assert_eq!(site::snapshot(&usb), before, "{mode} {file} left something");
    }
}

#[test]
fn skipping_signature_checks_is_announced_loudly() {
    let (dir, _db) = workspace();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    let args = ["-import", "-sitedb", "site.db", "-updatepacksrc", "empty"];
    // Without the option: silent success.
    assert_ok(&run(d, &args));
    // With it: the same run succeeds, and standard error says what was turned off.
    let mut insecure = args.to_vec();
    insecure.push("-insecureskipsignaturecheck");
    let o = run(d, &insecure);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("WARNING") && err.contains("NOT verified"),
        "{err:?}"
    );
}

/// The progress line a person at a terminal sees (the tool shows it only when standard
/// error is a terminal: run under `script`, which gives it one) moves while the rows are
/// written, not only at the end.
#[cfg(unix)] // `script` (util-linux) provides the terminal; Windows has no counterpart.
#[test]
fn export_progress_line_moves_as_rows_are_written() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to provide a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    site::create_site(dir.path(), DiagnosticsLevel::Full, 30_000);
    let command = format!("'{EXE}' -export -sitedb site.db -dest UsageData.csv");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .env_remove("SCT_SITE_DB")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let percents: Vec<u64> = text
        .split("Exporting (writing rows): ")
        .skip(1)
        .map(|s| s.trim_start().split('%').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        percents.iter().any(|p| (1..100).contains(p)),
        "the line moves while rows are written: {percents:?} in {text:?}"
    );
    assert_eq!(percents.last(), Some(&100), "{text:?}");
    assert!(text.contains("(30000/30000 rows)"), "{text:?}");
}
