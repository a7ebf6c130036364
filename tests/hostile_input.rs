//! Hostile inputs found by fuzzing, end to end through the real steps: each once made a
//! third-party parser panic. Now each is one clean refusal and changes nothing.

#[path = "common/packs.rs"]
mod packs;
#[path = "common/site.rs"]
mod site;
#[path = "common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use packs::{write_pack, PackSpec, Publisher};
use serviceconnection::import::{import, ImportOptions, ImportStatus};
use serviceconnection::pack::manifest::SIGNATURE_FILE;
use serviceconnection::site::{DiagnosticsLevel, Site};
use start::Start;

/// A genuinely signed pack whose `.minisig` has its last line (the trusted-comment
/// signature) cut short: minisign 0.10 panicked on it. Import refuses the pack with
/// `SignatureInvalid`, the site is unchanged, and the command line shows one clean line.
#[test]
fn signature_with_a_short_trusted_comment_signature_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 10);
    let publisher = Publisher::new();
    Site::open(&db)
        .unwrap()
        .add_trusted_publisher(publisher.public_key(), "test")
        .unwrap();
    let src = dir.path().join("UpdatePacks");
    let spec = PackSpec::update("Short sig", "5.00.9132.1000", "5.00.9106.1000");
    let pack = write_pack(&src, site::HIERARCHY.parse().unwrap(), &spec, &publisher);
    let sig_path = pack.join(SIGNATURE_FILE);
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    let mut lines: Vec<&str> = sig.lines().collect();
    assert_eq!(lines.len(), 4, "{sig}");
    lines[3] = "ABjsJP5mE3d6oN/VvXa9ukkEz9UCA==";
    std::fs::write(&sig_path, lines.join("\n") + "\n").unwrap();

    let r = import(&ImportOptions::new(&db, &src), &mut |_| true).unwrap();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_ne!(r[0].status, ImportStatus::Imported, "{r:#?}");
    assert_eq!(
        r[0].error_kind.as_deref(),
        Some("SignatureInvalid"),
        "{r:#?}"
    );
    let reason = r[0].reason.clone().unwrap();
    assert!(reason.contains("malformed"), "{reason}");
    assert!(Site::open_read_only(&db)
        .unwrap()
        .list_updates()
        .unwrap()
        .is_empty());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serviceconnectiontool"))
        .args(["-import", "-sitedb"])
        .arg(&db)
        .arg("-updatepacksrc")
        .arg(&src)
        .output_retrying()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(!err.contains("panicked"), "{err}");
    assert!(Site::open_read_only(&db)
        .unwrap()
        .list_updates()
        .unwrap()
        .is_empty());
}

/// The cab that panicked the `cab` crate (fuzzing find), given to the real command line
/// tool as Connect's source: one clean refusal, and no panic text on standard error.
#[test]
fn the_cab_crate_crasher_is_one_clean_line_in_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let crasher = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/usage_cab"),
    )
    .expect("fuzz/regressions/usage_cab")
    .map(|e| e.unwrap().path())
    .find(|p| p.is_file())
    .expect("a usage_cab regression is kept");
    let cab = dir.path().join("UsageData.cab");
    std::fs::copy(&crasher, &cab).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serviceconnectiontool"))
        .args(["-connect", "-usagedatasrc"])
        .arg(&cab)
        .arg("-updatepackdest")
        .arg(dir.path().join("out"))
        .args(["-serviceuri", "http://127.0.0.1:9"])
        .output_retrying()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("panicked"), "{all}");
    // Our own cab reader refuses it with what is wrong (the `cab` crate, which panicked,
    // now reads only LZX cabs, still behind the panic guard).
    let refusal = all
        .lines()
        .find(|l| l.contains("not uploaded"))
        .unwrap_or_else(|| panic!("no refusal of the cab: {all}"));
    assert!(
        refusal.contains("UsageData.cab: the cab's manifest.json cannot be read"),
        "{all}"
    );
    assert_ne!(out.status.code(), Some(0));
}
