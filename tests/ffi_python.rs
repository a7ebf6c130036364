//! The C ABI from another language: tests/python/ffi_test.py drives the built
//! libserviceconnection.so through Python's ctypes.

#[path = "common/service.rs"]
mod service;

#[path = "common/ffi.rs"]
mod ffi;

use std::process::Command;

fn python(mode: &str, setup: impl FnOnce(&mut Command)) {
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(ffi::root().join("tests/python/ffi_test.py"))
        .arg(mode)
        .env("SCT_LIB", ffi::private_cdylib(work.path()))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    setup(&mut cmd);
    let out = cmd.output().expect("run python3");
    ffi::assert_passed(&format!("ffi_test.py {mode}"), &out);
}

/// Versions, last-error retrieval, NULL arguments, invalid UTF-8, bad paths, the forced
/// panic, sites, sample data with progress and cancellation, trust, four threads.
#[test]
fn python_ctypes_basics() {
    let store = service::TestStore::new();
    let scratch = tempfile::tempdir().unwrap();
    python("basics", |c| {
        ffi::basic_env(c, scratch.path(), &store.public_key_path())
    });
}

/// Prepare -> Connect -> Import against the reference service on 127.0.0.1.
#[test]
fn python_ctypes_full_flow() {
    let flow = ffi::FlowService::start();
    let scratch = tempfile::tempdir().unwrap();
    python("flow", |c| {
        ffi::basic_env(c, scratch.path(), &flow.store.public_key_path());
        ffi::flow_env(c, &flow);
    });
}
