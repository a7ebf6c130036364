//! Prepare and Export on real site databases, checked with tools we did not write
//! (cabextract, gcab) and an independent CSV parser (the `csv` crate).

#[path = "common/site.rs"]
mod site;

use serviceconnection::site::{DiagnosticsLevel, Site};
use serviceconnection::usage::{
    export_csv, for_each_usage_row, prepare, read_usage_cab_file, UsageFormat, UsageManifest,
    USAGE_CSV_COLUMNS,
};
use serviceconnection::{ErrorKind, Progress};
use std::path::{Path, PathBuf};

fn never_cancel(_: &Progress) -> bool {
    true
}

/// Extract `cab` with cabextract into `<dir>/x` and return that folder.
fn cabextract(cab: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("x");
    std::fs::create_dir_all(&out).unwrap();
    let (ok, text) = site::tool(
        "cabextract",
        &["-q", "-d", out.to_str().unwrap(), cab.to_str().unwrap()],
        dir,
    );
    assert!(ok, "cabextract failed: {text}");
    out
}

fn parse_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .unwrap();
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn cab_is_accepted_by_stock_tools_and_matches_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 20_000);
    site::insert_rows(&db, &site::tricky_rows());
    let cab = dir.path().join("UsageData.cab");
    let r = prepare(&db, &cab, false, &mut never_cancel).unwrap();
    assert_eq!(r.format, UsageFormat::Cab);
    assert_eq!(r.path, cab);
    assert_eq!(r.size, std::fs::metadata(&cab).unwrap().len());
    assert_eq!(r.sha256, site::sha256_file(&cab));
    let expected = site::count_at_or_below(&db, DiagnosticsLevel::Enhanced);
    assert_eq!(r.record_count, expected);

    let (ok, text) = site::tool("cabextract", &["-t", cab.to_str().unwrap()], dir.path());
    assert!(
        ok && (cfg!(windows) || text.contains("All done, no errors")),
        "cabextract -t: {text}"
    );
    let (ok, text) = site::tool("gcab", &["-t", cab.to_str().unwrap()], dir.path());
    assert!(ok, "gcab -t: {text}");
    let (ok, listing) = site::tool("gcab", &["-l", cab.to_str().unwrap()], dir.path());
    assert!(ok);
    for name in ["manifest.json", "SiteVersion.txt", "UsageData.csv"] {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "gcab does not list {name}: {listing}"
        );
    }

    let x = cabextract(&cab, dir.path());
    let manifest =
        UsageManifest::from_bytes(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.format_version, 1);
    assert_eq!(manifest.hierarchy_id.to_string(), site::HIERARCHY);
    assert_eq!(manifest.site_version.as_str(), site::SITE_VERSION);
    assert_eq!(manifest.diagnostics_level, DiagnosticsLevel::Enhanced);
    assert!(manifest.tool_version.starts_with("ServiceConnection "));
    assert!(chrono::DateTime::parse_from_rfc3339(&manifest.created).is_ok());
    assert_eq!(manifest.files.len(), 1);
    for f in &manifest.files {
        let p = x.join(&f.name);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), f.size, "{}", f.name);
        assert_eq!(site::sha256_file(&p), f.sha256, "{}", f.name);
    }
    assert_eq!(manifest.files[0].name, "UsageData.csv");
    assert_eq!(manifest.files[0].records, expected);
    let (_, rows) = parse_csv(&x.join("UsageData.csv"));
    assert_eq!(rows.len() as u64, expected);
    assert_eq!(
        std::fs::read_to_string(x.join("SiteVersion.txt")).unwrap(),
        site::SITE_VERSION
    );
    // And our own reader (used by Connect and the service) agrees.
    assert_eq!(read_usage_cab_file(&cab).unwrap(), manifest);
}

#[test]
fn csv_export_is_byte_identical_to_the_cabs_usage_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 5_000);
    site::insert_rows(&db, &site::tricky_rows());
    let cab = dir.path().join("u.cab");
    let csv = dir.path().join("u.csv");
    let p = prepare(&db, &cab, false, &mut never_cancel).unwrap();
    let e = export_csv(&db, &csv, false, &mut never_cancel).unwrap();
    assert_eq!(e.format, UsageFormat::Csv);
    assert_eq!(p.record_count, e.record_count);
    assert_eq!(e.sha256, site::sha256_file(&csv));
    assert_eq!(e.size, std::fs::metadata(&csv).unwrap().len());
    let x = cabextract(&cab, dir.path());
    assert!(
        std::fs::read(x.join("UsageData.csv")).unwrap() == std::fs::read(&csv).unwrap(),
        "the exported CSV differs from the cab's UsageData.csv"
    );
}

#[test]
fn level_filtering_matches_the_database_at_each_level() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Basic, 6_000);
    let mut seen = Vec::new();
    for (i, level) in [
        DiagnosticsLevel::Basic,
        DiagnosticsLevel::Enhanced,
        DiagnosticsLevel::Full,
    ]
    .into_iter()
    .enumerate()
    {
        Site::open(&db)
            .unwrap()
            .set_diagnostics_level(level)
            .unwrap();
        let expected = site::count_at_or_below(&db, level);
        let csv = dir.path().join(format!("{level}.csv"));
        let cab = dir.path().join(format!("{level}.cab"));
        let e = export_csv(&db, &csv, false, &mut never_cancel).unwrap();
        let p = prepare(&db, &cab, false, &mut never_cancel).unwrap();
        assert_eq!(e.diagnostics_level, level);
        assert_eq!(e.record_count, expected, "{level}");
        assert_eq!(p.record_count, expected, "{level}");
        assert_eq!(read_usage_cab_file(&cab).unwrap().total_records(), expected);
        let (_, rows) = parse_csv(&csv);
        assert_eq!(rows.len() as u64, expected, "{level}");
        let allowed = ["Basic", "Enhanced", "Full"][..=i].to_vec();
        assert!(
            rows.iter().all(|r| allowed.contains(&r[1].as_str())),
            "{level}: a row above the level"
        );
        assert!(
            rows.iter().any(|r| r[1] == allowed[i]),
            "{level}: no rows of the level itself"
        );
        seen.push(expected);
    }
    assert!(
        seen[0] < seen[1] && seen[1] < seen[2] && seen[2] == 6_000,
        "{seen:?}"
    );
}

#[test]
fn identifying_attributes_leave_only_as_salted_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let other: uuid::Uuid = "0b7d3f1a-9c2e-4e55-8f00-aaaaaaaaaaaa".parse().unwrap();
    let db_a = site::create_site(dir.path(), DiagnosticsLevel::Full, 3_000);
    let db_b = site::create_site_with(
        dir.path(),
        "b.db",
        DiagnosticsLevel::Full,
        3_000,
        Some(other),
    );
    site::insert_rows(&db_a, &site::tricky_rows());
    site::insert_rows(&db_b, &site::tricky_rows());
    let a = dir.path().join("a.csv");
    let b = dir.path().join("b.csv");
    export_csv(&db_a, &a, false, &mut never_cancel).unwrap();
    export_csv(&db_b, &b, false, &mut never_cancel).unwrap();

    let raw = site::raw_rows(&db_a);
    let (header, rows) = parse_csv(&a);
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    assert_eq!(raw.len(), rows.len());
    for (r, c) in raw.iter().zip(&rows) {
        assert_eq!(c[col("id")], r.id.to_string());
        assert_eq!(
            c[col("site_code")],
            site::salted(site::HIERARCHY, &r.site_code)
        );
        assert_eq!(
            c[col("site_name")],
            site::salted(site::HIERARCHY, &r.site_name)
        );
        assert_eq!(
            c[col("server_name")],
            site::salted(site::HIERARCHY, &r.server_name)
        );
        // Everything else leaves as stored.
        assert_eq!(c[col("category")], r.category);
        assert_eq!(c[col("value")], r.value);
        assert_eq!(c[col("collected_utc")], r.collected_utc);
    }
    assert!(
        rows.iter().any(|c| c[col("site_name")].is_empty()),
        "empty stays empty"
    );

    // Same data, other hierarchy: different hashes (salted), same everything else.
    let (_, rows_b) = parse_csv(&b);
    assert_eq!(rows.len(), rows_b.len());
    let first = rows
        .iter()
        .position(|c| !c[col("site_code")].is_empty())
        .unwrap();
    assert_ne!(
        rows[first][col("site_code")],
        rows_b[first][col("site_code")]
    );
    assert_eq!(rows[first][col("metric")], rows_b[first][col("metric")]);

    // No identifying text survives anywhere in the output.
    let text = std::fs::read_to_string(&a).unwrap();
    for secret in ["PS1", "PS2", "contoso", "Zürich", "São Paulo", "srv,01"] {
        assert!(!text.contains(secret), "{secret} leaked into the CSV");
    }
}

#[test]
fn tricky_values_round_trip_through_rfc4180() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 50);
    site::insert_rows(&db, &site::tricky_rows());
    let csv = dir.path().join("u.csv");
    let r = export_csv(&db, &csv, false, &mut never_cancel).unwrap();
    let bytes = std::fs::read(&csv).unwrap();
    assert!(!bytes.starts_with(b"\xEF\xBB\xBF"), "no byte-order mark");
    assert!(bytes.starts_with(format!("{}\r\n", USAGE_CSV_COLUMNS.join(",")).as_bytes()));
    assert!(bytes.ends_with(b"\r\n"));
    assert!(std::str::from_utf8(&bytes).is_ok());

    let (header, rows) = parse_csv(&csv);
    assert_eq!(header, USAGE_CSV_COLUMNS);
    assert_eq!(rows.len() as u64, r.record_count);
    assert_eq!(rows.len(), 54);
    let raw = site::raw_rows(&db);
    for (want, got) in raw[50..].iter().zip(&rows[50..]) {
        assert_eq!(got[2], want.category);
        assert_eq!(got[3], want.metric);
        assert_eq!(got[4], want.instance);
        assert_eq!(got[5], want.value);
        assert_eq!(
            got[1],
            ["", "Basic", "Enhanced", "Full"][want.level as usize]
        );
    }
    // Values with embedded line breaks kept exactly (CR, LF, CRLF).
    assert!(rows.iter().any(|r| r[4] == "line1\nline2"));
    assert!(rows.iter().any(|r| r[2] == "Feature\r\nUsage"));
    assert!(rows.iter().any(|r| r[5] == "\r"));
}

#[test]
fn row_stream_matches_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 2_000);
    site::insert_rows(&db, &site::tricky_rows());
    let csv = dir.path().join("u.csv");
    export_csv(&db, &csv, false, &mut never_cancel).unwrap();
    let (_, rows) = parse_csv(&csv);
    let mut got = Vec::new();
    let n = for_each_usage_row(&db, &mut |r| {
        got.push(r.clone());
        Ok(true)
    })
    .unwrap();
    assert_eq!(n as usize, rows.len());
    for (rec, row) in got.iter().zip(&rows) {
        let json = serde_json::to_value(rec).unwrap();
        for (i, c) in USAGE_CSV_COLUMNS.iter().enumerate() {
            let v = &json[c];
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            assert_eq!(text, row[i], "column {c}");
        }
    }
    // Stopping early.
    let mut k = 0;
    let n = for_each_usage_row(&db, &mut |_| {
        k += 1;
        Ok(k < 10)
    })
    .unwrap();
    assert_eq!(n, 10);
}

#[test]
fn empty_site_gives_a_valid_cab_and_a_header_only_csv() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 0);
    let cab = dir.path().join("u.cab");
    let csv = dir.path().join("u.csv");
    assert_eq!(
        prepare(&db, &cab, false, &mut never_cancel)
            .unwrap()
            .record_count,
        0
    );
    assert_eq!(
        export_csv(&db, &csv, false, &mut never_cancel)
            .unwrap()
            .record_count,
        0
    );
    let (ok, text) = site::tool("cabextract", &["-t", cab.to_str().unwrap()], dir.path());
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read(&csv).unwrap(),
        format!("{}\r\n", USAGE_CSV_COLUMNS.join(",")).into_bytes()
    );
}

#[test]
fn progress_counts_rows_and_reaches_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 30_000);
    let mut reports: Vec<(u64, u64)> = Vec::new();
    prepare(&db, &dir.path().join("u.cab"), false, &mut |p| {
        reports.push((p.done, p.total));
        true
    })
    .unwrap();
    assert!(reports.len() >= 3, "{reports:?}");
    assert!(reports.iter().all(|(_, t)| *t == 30_000));
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(reports.last().unwrap().0, 30_000);
}

#[test]
fn existing_destination_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 500);
    for (dest, run) in [
        (
            dir.path().join("u.cab"),
            prepare as fn(&Path, &Path, bool, &mut dyn FnMut(&Progress) -> bool) -> _,
        ),
        (dir.path().join("u.csv"), export_csv),
    ] {
        std::fs::write(&dest, b"old contents").unwrap();
        let before = site::snapshot(dir.path());
        let e = run(&db, &dest, false, &mut never_cancel).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(e.message().contains("already exists"), "{}", e.message());
        assert_eq!(site::snapshot(dir.path()), before);
        let r = run(&db, &dest, true, &mut never_cancel).unwrap();
        assert_eq!(r.sha256, site::sha256_file(&dest));
        assert_ne!(std::fs::read(&dest).unwrap(), b"old contents");
    }
}

#[test]
fn bad_destinations_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 500);
    let before = site::snapshot(dir.path());
    let p = |d: &Path| prepare(&db, d, false, &mut never_cancel).err().unwrap();
    let x = |d: &Path| export_csv(&db, d, false, &mut never_cancel).err().unwrap();
    for (e, kind, words) in [
        (
            p(&dir.path().join("u.csv")),
            ErrorKind::InvalidArgument,
            ".cab",
        ),
        (
            p(&dir.path().join("u.txt")),
            ErrorKind::InvalidArgument,
            ".cab",
        ),
        (
            p(&dir.path().join("site.db")),
            ErrorKind::InvalidArgument,
            ".cab",
        ),
        (
            p(&dir.path().join(".cab")),
            ErrorKind::InvalidArgument,
            ".cab",
        ),
        (
            x(&dir.path().join("u.cab")),
            ErrorKind::InvalidArgument,
            ".csv",
        ),
        (
            p(&dir.path().join("missing/u.cab")),
            ErrorKind::NotFound,
            "does not exist",
        ),
        (
            x(&dir.path().join("missing/u.csv")),
            ErrorKind::NotFound,
            "does not exist",
        ),
    ] {
        assert_eq!(e.kind(), kind, "{}", e.message());
        assert!(e.message().contains(words), "{}", e.message());
    }
    // A folder named like the destination.
    std::fs::create_dir(dir.path().join("d.cab")).unwrap();
    assert_eq!(
        p(&dir.path().join("d.cab")).kind(),
        ErrorKind::AlreadyExists
    );
    std::fs::remove_dir(dir.path().join("d.cab")).unwrap();
    assert_eq!(site::snapshot(dir.path()), before);
}

#[test]
fn missing_or_invalid_site_database_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let e = prepare(
        &missing,
        &dir.path().join("u.cab"),
        false,
        &mut never_cancel,
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"junk").unwrap();
    let e = export_csv(&junk, &dir.path().join("u.csv"), false, &mut never_cancel)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::NotASiteDatabase);
    assert_eq!(std::fs::read(&junk).unwrap(), b"junk");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A site database damaged in the middle of its usage rows, as a bad sector or a
/// half-copied file would leave it: whole pages overwritten (SQLite notices while
/// counting), or only the records inside pages (it notices while reading the rows).
/// Prepare, Export and the row stream stop with one clear Database error naming the file,
/// leaving nothing behind and the file as it was.
#[test]
fn a_site_damaged_mid_table_stops_every_reader_cleanly() {
    const PAGE: usize = 4096;
    // (first byte damaged within each page, what is hit)
    for (from, what) in [(0, "whole pages"), (PAGE / 2, "records only")] {
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 40_000);
        {
            // Checkpoint so every row lives in the main file, then damage it there.
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
                .unwrap();
        }
        let mut bytes = std::fs::read(&db).unwrap();
        let at = (bytes.len() / 2) / PAGE * PAGE;
        for p in 0..8 {
            let page = &mut bytes[at + p * PAGE..at + (p + 1) * PAGE];
            for (i, b) in page[from..].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(151).wrapping_add(7);
            }
        }
        std::fs::write(&db, &bytes).unwrap();
        let before = std::fs::read(&db).unwrap();
        let cab = dir.path().join("u.cab");
        let csv = dir.path().join("u.csv");
        let errors = [
            prepare(&db, &cab, false, &mut never_cancel).expect_err("prepare"),
            export_csv(&db, &csv, false, &mut never_cancel).expect_err("export"),
            for_each_usage_row(&db, &mut |_| Ok(true)).expect_err("row stream"),
        ];
        for e in errors {
            assert_eq!(e.kind(), ErrorKind::Database, "{what}: {e}");
            let text = e.to_string();
            assert!(text.contains("malformed"), "{what}: {e}");
            assert!(
                text.contains("site.db"),
                "{what}: the file is not named: {e}"
            );
            assert_eq!(text.lines().count(), 1, "{what}: {e}");
        }
        assert!(!cab.exists() && !csv.exists());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.starts_with("u."))
            .collect();
        assert!(names.is_empty(), "{what}: left behind: {names:?}");
        assert!(
            std::fs::read(&db).unwrap() == before,
            "{what}: the file was changed"
        );
    }
}

#[test]
fn cancellation_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 40_000);
    let existing = dir.path().join("old.cab");
    std::fs::write(&existing, b"keep me").unwrap();
    let before = site::snapshot(dir.path());
    for dest in ["u.cab", "u.csv", "old.cab"] {
        let dest = dir.path().join(dest);
        let mut calls = 0;
        let mut cancel_midway = |p: &Progress| {
            calls += 1;
            p.done < 20_000
        };
        let r = if dest.extension().unwrap() == "csv" {
            export_csv(&db, &dest, true, &mut cancel_midway)
        } else {
            prepare(&db, &dest, true, &mut cancel_midway)
        };
        assert_eq!(r.err().unwrap().kind(), ErrorKind::Cancelled);
        assert!(calls > 2, "cancelled only after rows were written");
        assert_eq!(site::snapshot(dir.path()), before, "{}", dest.display());
    }
    // Cancelling at the very end (the last report) also leaves nothing.
    let e = prepare(&db, &dir.path().join("u.cab"), false, &mut |p| {
        p.done < p.total
    })
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(site::snapshot(dir.path()), before);
}

#[test]
fn small_cabs_are_accepted_by_cabextract_and_gcab() {
    // Tiny MSZIP blocks are where encoders emit unusual Huffman trees that some
    // decoders (libmspack) reject; sweep them.
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 0);
    for n in 0..12u64 {
        if n > 0 {
            let mut s = Site::open(&db).unwrap();
            serviceconnection::site::sample::generate(&mut s, 1, n).unwrap();
        }
        let cab = dir.path().join(format!("u{n}.cab"));
        prepare(&db, &cab, false, &mut never_cancel).unwrap();
        for tool in ["cabextract", "gcab"] {
            let (ok, text) = site::tool(tool, &["-t", cab.to_str().unwrap()], dir.path());
            let clean = tool == "gcab" || cfg!(windows) || text.contains("All done, no errors");
            assert!(ok && clean, "{tool} -t with {n} rows: {text}");
        }
    }
}

/// Rows that are not clean UTF-8 text: invalid bytes, blobs, a NUL, and a character
/// split across two columns (each column invalid, their concatenation valid).
fn insert_odd_bytes(db: &Path, rows: &[[&[u8]; 4]]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    for (i, r) in rows.iter().enumerate() {
        conn.execute(
            "INSERT INTO usage_data (level, category, metric, instance, value, site_code, server_name, collected_utc)
             VALUES (?1, ?2, CAST(?3 AS TEXT), ?4, ?5, CAST(?6 AS TEXT), ?7, '2025-12-01T00:00:00Z')",
            rusqlite::params![
                (i % 3 + 1) as i64,
                r[0],
                r[1],
                r[2],
                r[3],
                r[2],
                r[3]
            ],
        )
        .unwrap();
    }
}

/// The CSV that formatting each row of the row stream with the `csv` crate gives: the
/// reference the batch formatter of Prepare and Export must match byte for byte.
fn reference_csv(db: &Path) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(Vec::new());
    w.write_record(USAGE_CSV_COLUMNS).unwrap();
    for_each_usage_row(db, &mut |r| {
        w.write_record([
            r.id.to_string().as_str(),
            r.level.as_str(),
            &r.category,
            &r.metric,
            &r.instance,
            &r.value,
            &r.site_code,
            &r.site_name,
            &r.server_name,
            &r.collected_utc,
        ])
        .unwrap();
        Ok(true)
    })
    .unwrap();
    w.into_inner().unwrap()
}

#[test]
fn csv_bytes_match_the_row_stream_across_batches_and_odd_bytes() {
    for level in [DiagnosticsLevel::Full, DiagnosticsLevel::Enhanced] {
        let dir = tempfile::tempdir().unwrap();
        // More than two batches of 2,048 rows, with the odd rows in the last one.
        let db = site::create_site(dir.path(), level, 5_000);
        // The split character alone among clean rows, so its batch is otherwise valid
        // UTF-8 (4,000 copied rows keep it apart from the other odd rows).
        insert_odd_bytes(&db, &[[b"ab\xE6\x9D", b"\xB1xy", b"ok", b"1"]]);
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute(
                "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                 SELECT level, category, metric, instance, value, site_code, site_name, server_name, collected_utc
                 FROM usage_data WHERE id <= 4000",
                [],
            )
            .unwrap();
        site::insert_rows(&db, &site::tricky_rows());
        insert_odd_bytes(
            &db,
            &[
                [b"nul\0inside", b"caf\xC3\xA9", b"\xC3", b"\xA9"],
                [b"\"\xF0\x9F\x98\x80\"", b"\r\n", b"srv\xFF", b"1"],
                [b"\xFF\xFE,\"x\"", b"\xB1xy", b"ok", b"\xE6"],
            ],
        );
        site::insert_rows(&db, &site::tricky_rows());
        let csv = dir.path().join("u.csv");
        let r = export_csv(&db, &csv, false, &mut never_cancel).unwrap();
        let ours = std::fs::read(&csv).unwrap();
        let reference = reference_csv(&db);
        if ours != reference {
            let at = ours
                .iter()
                .zip(&reference)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let from = at.saturating_sub(80);
            panic!(
                "Export differs from the reference at {level:?}, byte {at}:\nours: {:?}\nref:  {:?}",
                String::from_utf8_lossy(&ours[from..(at + 80).min(ours.len())]),
                String::from_utf8_lossy(&reference[from..(at + 80).min(reference.len())])
            );
        }
        assert!(
            std::str::from_utf8(&ours).is_ok(),
            "invalid bytes were replaced"
        );
        assert!(r.record_count > 2_048, "more than one batch");
        let cab = dir.path().join("u.cab");
        prepare(&db, &cab, false, &mut never_cancel).unwrap();
        let x = cabextract(&cab, dir.path());
        assert!(std::fs::read(x.join("UsageData.csv")).unwrap() == reference);
    }
}

/// Random fields drawn mostly from the bytes that matter (quote, comma, CR, LF, NUL, the
/// pieces of multi-byte characters, bytes that are never UTF-8), stored as text or blob
/// at every level: the batch formatter must still match the reference byte for byte.
#[test]
fn random_hostile_fields_match_the_row_stream() {
    const ALPHABET: &[u8] = b",\"\r\n\0a Z\xC3\xA9\xE6\x9D\xB1\xF0\x9F\x98\x80\xFF\x80";
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 0);
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        for _ in 0..5_000 {
            let mut field = || -> Vec<u8> {
                let len = (next() % 12) as usize;
                (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                    .collect()
            };
            let f: Vec<Vec<u8>> = (0..7).map(|_| field()).collect();
            let as_text = next() % 2 == 0;
            let sql = if as_text {
                "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                 VALUES (?1, CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS TEXT), CAST(?5 AS TEXT), CAST(?6 AS TEXT), CAST(?7 AS TEXT), CAST(?8 AS TEXT), '2025-12-01T00:00:00Z')"
            } else {
                "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '2025-12-01T00:00:00Z')"
            };
            tx.execute(
                sql,
                rusqlite::params![
                    (next() % 3 + 1) as i64,
                    f[0],
                    f[1],
                    f[2],
                    f[3],
                    f[4],
                    f[5],
                    f[6]
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    for level in [DiagnosticsLevel::Full, DiagnosticsLevel::Basic] {
        Site::open(&db)
            .unwrap()
            .set_diagnostics_level(level)
            .unwrap();
        let csv = dir.path().join(format!("{level:?}.csv"));
        export_csv(&db, &csv, false, &mut never_cancel).unwrap();
        let ours = std::fs::read(&csv).unwrap();
        assert!(
            ours == reference_csv(&db),
            "Export differs from the reference at {level:?}"
        );
        let (_, rows) = parse_csv(&csv);
        assert!(rows.len() > 1_000, "{level:?}: {} rows", rows.len());
    }
}

#[test]
fn a_row_with_an_impossible_level_is_an_error_at_full_and_left_out_below() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 100);
    {
        // Only a database whose CHECK constraint was bypassed can hold such a row.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA ignore_check_constraints = ON;
             INSERT INTO usage_data (level, category, metric, value, collected_utc)
             VALUES (7, 'Odd', 'Level', '1', '2025-12-01T00:00:00Z');",
        )
        .unwrap();
    }
    let before = site::snapshot(dir.path());
    let e = prepare(&db, &dir.path().join("u.cab"), false, &mut never_cancel)
        .expect_err("a level-7 row is refused at Full");
    assert_eq!(e.kind(), ErrorKind::Database);
    assert!(e.to_string().contains("invalid level 7"), "{e}");
    assert_eq!(site::snapshot(dir.path()), before, "nothing written");
    let e = for_each_usage_row(&db, &mut |_| Ok(true)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Database);

    Site::open(&db)
        .unwrap()
        .set_diagnostics_level(DiagnosticsLevel::Enhanced)
        .unwrap();
    let csv = dir.path().join("u.csv");
    let r = export_csv(&db, &csv, false, &mut never_cancel).unwrap();
    let (_, rows) = parse_csv(&csv);
    assert_eq!(rows.len() as u64, r.record_count);
    assert!(rows.iter().all(|r| r[2] != "Odd"));
}

/// Prepare and Export read the identity, the count and every row from one snapshot of
/// the site, even when rows are read on one thread and formatted on others: a writer
/// that commits between progress reports (each commit deletes the lowest row and adds
/// one above the highest, so every committed state holds the same number of rows with
/// contiguous ids) never shows in the output. A torn read would show a gap, a
/// duplicate, a row from after the start, or a count that differs from the total.
#[test]
fn a_writer_committing_during_the_run_never_shows_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    // Twenty batches of rows: far more than are in flight at once.
    let n = 40_000u64;
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, n);
    let writer = rusqlite::Connection::open(&db).unwrap();
    let ids = |path: &Path| -> Vec<i64> {
        let (_, rows) = parse_csv(path);
        rows.iter().map(|r| r[0].parse().unwrap()).collect()
    };
    let (first, last): (i64, i64) = writer
        .query_row("SELECT MIN(id), MAX(id) FROM usage_data", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((last - first + 1) as u64, n);
    for dest in ["u.csv", "u.cab"] {
        let dest = dir.path().join(dest);
        let start: i64 = writer
            .query_row("SELECT MIN(id) FROM usage_data", [], |r| r.get(0))
            .unwrap();
        let mut commits = 0;
        let mut totals = Vec::new();
        let mut commit_midway = |p: &Progress| {
            totals.push(p.total);
            if p.done < p.total {
                // Move the window of rows by one, in one transaction.
                writer
                    .execute_batch(
                        "BEGIN IMMEDIATE;
                         DELETE FROM usage_data WHERE id = (SELECT MIN(id) FROM usage_data);
                         INSERT INTO usage_data (level, category, metric, value, collected_utc)
                         VALUES (3, 'Late', 'Row', 'x', '2026-01-01T00:00:00Z');
                         COMMIT;",
                    )
                    .unwrap();
                commits += 1;
            }
            true
        };
        let (records, csv) = if dest.extension().unwrap() == "csv" {
            let r = export_csv(&db, &dest, false, &mut commit_midway).unwrap();
            (r.record_count, dest.clone())
        } else {
            let r = prepare(&db, &dest, false, &mut commit_midway).unwrap();
            (
                r.record_count,
                cabextract(&dest, dir.path()).join("UsageData.csv"),
            )
        };
        assert!(commits >= 3, "the writer committed while rows were read");
        assert!(totals.iter().all(|&t| t == n), "{totals:?}");
        assert_eq!(records, n);
        let got = ids(&csv);
        let want: Vec<i64> = (start..start + n as i64).collect();
        assert_eq!(
            got,
            want,
            "{}: rows from one snapshot, in order",
            dest.display()
        );
        // The writer's rows are there for the next run.
        let now: i64 = writer
            .query_row("SELECT MIN(id) FROM usage_data", [], |r| r.get(0))
            .unwrap();
        assert_eq!(now, start + commits);
    }
}
