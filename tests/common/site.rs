//! Test helpers for site databases: create a site (optionally with generated sample data),
//! add hand-picked rows, count rows straight from SQLite, and snapshot folders so a test
//! can prove a failure changed nothing.
//!
//! Pull in with `#[path = "common/site.rs"] mod site;`.
#![allow(dead_code)]

#[path = "start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use serviceconnection::site::{DiagnosticsLevel, NewSite, Site};
use start::Start;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fixed hierarchy ID for tests that need a known salt.
pub const HIERARCHY: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
pub const SITE_VERSION: &str = "5.00.9128.1000";

/// Create `<dir>/site.db` (site code PS1, version 5.00.9128.1000) at `level`, with
/// `rows` generated sample rows (seed 42). Returns the database path.
pub fn create_site(dir: &Path, level: DiagnosticsLevel, rows: u64) -> PathBuf {
    create_site_with(
        dir,
        "site.db",
        level,
        rows,
        Some(HIERARCHY.parse().unwrap()),
    )
}

/// Like [`create_site`] with a chosen file name and hierarchy ID (`None`: a fresh GUID).
pub fn create_site_with(
    dir: &Path,
    name: &str,
    level: DiagnosticsLevel,
    rows: u64,
    hierarchy_id: Option<uuid::Uuid>,
) -> PathBuf {
    let path = dir.join(name);
    let mut site = Site::create(
        &path,
        &NewSite {
            site_code: "PS1".into(),
            site_version: SITE_VERSION.parse().unwrap(),
            diagnostics_level: level,
            hierarchy_id,
            site_name: Some("Primary Site, Seattle".into()),
            scp_mode: Default::default(),
        },
    )
    .expect("create site");
    if rows > 0 {
        serviceconnection::site::sample::generate(&mut site, rows, 42).expect("sample data");
    }
    path
}

/// A usage row as stored (before hashing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    pub id: i64,
    pub level: i64,
    pub category: String,
    pub metric: String,
    pub instance: String,
    pub value: String,
    pub site_code: String,
    pub site_name: String,
    pub server_name: String,
    pub collected_utc: String,
}

/// Rows whose values need CSV quoting or are not ASCII, one per level.
pub fn tricky_rows() -> Vec<(i64, [&'static str; 7])> {
    vec![
        (
            1,
            [
                "Hierarchy, \"quoted\"",
                "Comma,Metric",
                "line1\nline2",
                "a \"b\" c",
                "PS,1",
                "Zürich \"HQ\", Süd",
                "srv,01.contoso.com",
            ],
        ),
        (
            2,
            [
                "Feature\r\nUsage",
                "Ünïcödé ✓",
                "東京",
                "  padded  ",
                "",
                "",
                "",
            ],
        ),
        (
            3,
            [
                "Full",
                "\"",
                ",",
                "\r",
                "X\"Y",
                "São Paulo\nMatriz",
                "=cmd|' /C calc'!A0",
            ],
        ),
        (1, ["", "", "", "", "", "", ""]),
    ]
}

/// Insert rows `(level, [category, metric, instance, value, site_code, site_name, server_name])`.
pub fn insert_rows(db: &Path, rows: &[(i64, [&str; 7])]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    for (level, v) in rows {
        conn.execute(
            "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '2025-12-01T00:00:00Z')",
            rusqlite::params![level, v[0], v[1], v[2], v[3], v[4], v[5], v[6]],
        )
        .unwrap();
    }
}

/// Every usage row as stored, in id order.
pub fn raw_rows(db: &Path) -> Vec<RawRow> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, level, category, metric, instance, value, site_code, site_name, server_name, collected_utc FROM usage_data ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(RawRow {
                id: r.get(0)?,
                level: r.get(1)?,
                category: r.get(2)?,
                metric: r.get(3)?,
                instance: r.get(4)?,
                value: r.get(5)?,
                site_code: r.get(6)?,
                site_name: r.get(7)?,
                server_name: r.get(8)?,
                collected_utc: r.get(9)?,
            })
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Rows at or below `level`, counted by SQLite directly.
pub fn count_at_or_below(db: &Path, level: DiagnosticsLevel) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM usage_data WHERE level <= ?1",
        [level.as_i64()],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// `PRAGMA integrity_check` answer ("ok" when healthy).
pub fn integrity_check(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    serviceconnection::hashing::sha256_hex(&std::fs::read(path).unwrap())
}

/// The salted hash identifying attributes leave the site as.
pub fn salted(hierarchy: &str, value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        serviceconnection::hashing::sha256_hex(
            format!("{}:{value}", hierarchy.to_ascii_lowercase()).as_bytes(),
        )
    }
}

/// Every file under `dir` (recursively) → SHA-256 of its bytes, keyed by relative path.
/// SQLite's `-shm` index files are left out: readers may create them and they hold no data.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(root, &p, out);
            } else if !rel.ends_with("-shm") && !rel.ends_with("-wal") {
                out.insert(rel, sha256_file(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Run `cmd` to completion and collect its output, like [`std::process::Command::output`]
/// (started by [`Start`], which retries Wine's start-up failure).
///
/// On Windows (under Wine) the child's standard output and error go to temporary files
/// rather than pipes: Wine's background processes (services started on demand during a
/// run) can inherit a pipe's write end, and then reading the pipe never sees end-of-file
/// although the child has exited (`newsite_prepare_export_with_the_original_syntax` once
/// hung there for minutes). A file has no such end to wait for.
pub fn output(cmd: &mut std::process::Command) -> std::process::Output {
    if !cfg!(windows) {
        return cmd
            .output_retrying()
            .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    }
    let scratch = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    let status = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status_retrying()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// Run a stock tool; returns (success, stdout+stderr).
///
/// On Windows the Linux cabinet tools are not there; Windows' own `extrac32.exe` (its
/// cabinet API; Wine's under Wine) stands in for `cabextract -t`, `cabextract -q -d DIR`,
/// `gcab -t` and `gcab -l`: see [`windows_cab_tool`].
pub fn tool(program: &str, args: &[&str], cwd: &Path) -> (bool, String) {
    if cfg!(windows) {
        return windows_cab_tool(program, args, cwd);
    }
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run (is it installed?): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The Windows counterpart of the cabinet checks [`tool`] runs on Linux: the cab is
/// extracted by Windows' `extrac32.exe` (which exits 0 even when extraction fails, so every
/// file its `manifest.json` lists is then checked by size and SHA-256, `SiteVersion.txt`
/// against the manifest's site version, and nothing else may be there). Output: one `name size` line per extracted file.
fn windows_cab_tool(program: &str, args: &[&str], cwd: &Path) -> (bool, String) {
    let (cab, dest, keep) = match (program, args) {
        ("cabextract" | "gcab", ["-t", cab]) | ("gcab", ["-l", cab]) => (*cab, None, false),
        ("cabextract", ["-q", "-d", dest, cab]) => (*cab, Some(PathBuf::from(dest)), true),
        _ => panic!("no Windows counterpart for {program} {args:?}"),
    };
    let scratch = tempfile::tempdir().unwrap();
    let dest = dest.unwrap_or_else(|| scratch.path().join("x"));
    std::fs::create_dir_all(&dest).unwrap();
    let out = output(
        std::process::Command::new("extrac32.exe")
            .stdin(std::process::Stdio::null())
            .args(["/Y", "/E", "/L"])
            .arg(&dest)
            .arg(cwd.join(cab))
            .current_dir(cwd),
    );
    let mut text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let found = snapshot(&dest);
    for name in found.keys() {
        let size = std::fs::metadata(dest.join(name)).unwrap().len();
        text.push_str(&format!("{name} {size}\n"));
    }
    let verified = (|| -> Result<(), String> {
        let bytes = std::fs::read(dest.join("manifest.json"))
            .map_err(|e| format!("no manifest.json extracted: {e}"))?;
        let manifest = serviceconnection::usage::UsageManifest::from_bytes(&bytes)
            .map_err(|e| format!("manifest.json does not parse: {e}"))?;
        // The cab also holds SiteVersion.txt (the site's version, as in the manifest),
        // which the manifest does not list among its data files.
        use serviceconnection::usage::manifest::SITE_VERSION_FILE;
        let version = std::fs::read_to_string(dest.join(SITE_VERSION_FILE))
            .map_err(|e| format!("no {SITE_VERSION_FILE} extracted: {e}"))?;
        if version != manifest.site_version.as_str() {
            return Err(format!(
                "{SITE_VERSION_FILE} says {version:?}, the manifest {}",
                manifest.site_version.as_str()
            ));
        }
        let mut expected: Vec<String> = vec!["manifest.json".into(), SITE_VERSION_FILE.into()];
        for f in &manifest.files {
            let p = dest.join(&f.name);
            let size = std::fs::metadata(&p)
                .map_err(|e| format!("{} listed but not extracted: {e}", f.name))?
                .len();
            if size != f.size || sha256_file(&p) != f.sha256 {
                return Err(format!(
                    "{}: size {size} (manifest {}) or SHA-256 differs",
                    f.name, f.size
                ));
            }
            expected.push(f.name.clone());
        }
        expected.sort();
        let got: Vec<String> = found.keys().cloned().collect();
        if got != expected {
            return Err(format!("extracted {got:?}, manifest lists {expected:?}"));
        }
        Ok(())
    })();
    if let Err(why) = &verified {
        text.push_str(&format!(
            "extracted files do not match the cab's manifest.json: {why}\n"
        ));
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dest);
    }
    (out.status.success() && verified.is_ok(), text)
}
