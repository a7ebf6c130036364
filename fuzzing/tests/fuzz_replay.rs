//! Replays every committed fuzz corpus file and every crasher kept in `fuzz/regressions/`
//! through the same entry points the cargo-fuzz targets call (this crate, `sct_fuzzing`),
//! so a regression fails the normal test suite without a nightly compiler or libFuzzer.
//! Layout: `fuzz/seeds/<target>/*` (hand-made, named, never minimized),
//! `fuzz/corpus/<target>/*` (minimized with `cargo fuzz cmin`) and
//! `fuzz/regressions/<target>/*` (crashers found, fixed).

use std::path::{Path, PathBuf};

/// `fuzz/` at the workspace root (this crate is `fuzzing/`).
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files kept for `target`: seeds, corpus and regressions together.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = fuzz_dir();
    let mut files = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.expect("read corpus entry").path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Run `f` on every kept input of `target`, naming the file that fails.
fn replay(target: &str, f: fn(&[u8])) {
    let files = inputs(target);
    // A missing or emptied corpus would make this test pass vacuously.
    assert!(
        files.len() >= 3,
        "fuzz/corpus/{target} holds only {} files",
        files.len()
    );
    for p in &files {
        let data = std::fs::read(p).expect("read corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: input {} fails", p.display());
    }
}

#[test]
fn replay_usage_cab() {
    replay("usage_cab", sct_fuzzing::fuzz_usage_cab);
}

#[test]
fn replay_console_content() {
    replay("console_content", sct_fuzzing::fuzz_console_content);
}

#[test]
fn replay_pack_manifest() {
    replay("pack_manifest", sct_fuzzing::fuzz_pack_manifest);
}

#[test]
fn replay_service_request() {
    replay("service_request", |d| {
        sct_fuzzing::fuzz_service_request(d);
    });
    // The seeds must reach every kind of answer, or the fuzzer starts blind.
    let mut seen = std::collections::BTreeSet::new();
    for p in inputs("service_request")
        .into_iter()
        // By path component, not by text: Windows paths use `\`.
        .filter(|p| p.components().any(|c| c.as_os_str() == "seeds"))
    {
        let data = std::fs::read(&p).unwrap();
        if let Some(s) = sct_fuzzing::fuzz_service_request(&data) {
            seen.insert(s);
        }
    }
    for want in [200, 206, 304, 400, 401, 404, 405, 422] {
        assert!(seen.contains(&want), "no seed gets {want}: {seen:?}");
    }
}

#[test]
fn replay_cli_args() {
    replay("cli_args", sct_fuzzing::fuzz_cli_args);
}

#[test]
fn replay_options_json() {
    replay("options_json", sct_fuzzing::fuzz_options_json);
}

/// The entry points must be able to fail: a seed that the fuzz logic is known to accept
/// still passes, and the trusted key really verifies the committed signed seed (otherwise
/// the signature target would only ever exercise the "untrusted key" path).
#[test]
fn signed_seed_verifies_with_the_fuzz_key() {
    let data = std::fs::read(fuzz_dir().join("seeds/pack_manifest/signed")).expect("signed seed");
    let i = data.iter().position(|&b| b == 0).expect("NUL separator");
    let key = serviceconnection::signing::PublicKey::parse(sct_fuzzing::FUZZ_TRUSTED_KEY).unwrap();
    let sig = std::str::from_utf8(&data[i + 1..]).unwrap();
    serviceconnection::signing::verify(&data[..i], sig, std::slice::from_ref(&key))
        .expect("seed verifies");
    let mut altered = data[..i].to_vec();
    altered[10] ^= 1;
    let e = serviceconnection::signing::verify(&altered, sig, &[key]).unwrap_err();
    assert_eq!(e.kind(), serviceconnection::ErrorKind::SignatureInvalid);
}
