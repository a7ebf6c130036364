//! The C ABI from C: tests/c/ffi_test.c is compiled with the system C compiler against the
//! committed include/serviceconnection.h, linked to the built libserviceconnection.so, and
//! run directly and under Valgrind (zero leaks or invalid accesses).

#[path = "common/service.rs"]
mod service;

#[path = "common/ffi.rs"]
mod ffi;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compile tests/c/ffi_test.c in `work` against a private copy of the library there.
fn c_program(work: &Path) -> PathBuf {
    ffi::private_cdylib(work);
    let exe = work.join("ffi_test");
    let out = Command::new("cc")
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-g", "-O0"])
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(ffi::root().join("include"))
        .arg(ffi::root().join("tests/c/ffi_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(work)
        .arg("-lserviceconnection")
        .arg(format!("-Wl,-rpath,{}", work.display()))
        .arg("-pthread")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "compiling tests/c/ffi_test.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(mode: &str, valgrind: bool, setup: impl FnOnce(&mut Command)) {
    let work = tempfile::tempdir().unwrap();
    let exe = c_program(work.path());
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--show-leak-kinds=definite,indirect,possible",
            "--error-exitcode=97",
            "--quiet",
        ])
        .arg(format!(
            "--suppressions={}",
            ffi::root().join("tests/c/valgrind.supp").display()
        ))
        .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.arg(mode);
    setup(&mut cmd);
    let out = cmd.output().expect("run the C test program");
    let what = format!(
        "ffi_test {mode}{}",
        if valgrind { " under valgrind" } else { "" }
    );
    // Exit status 97 is Valgrind's: a leak or an invalid access (details on stderr).
    ffi::assert_passed(&what, &out);
}

fn basics(valgrind: bool) {
    let store = service::TestStore::new();
    let scratch = tempfile::tempdir().unwrap();
    run("basics", valgrind, |c| {
        ffi::basic_env(c, scratch.path(), &store.public_key_path())
    });
}

fn flow(valgrind: bool) {
    let flow = ffi::FlowService::start();
    let scratch = tempfile::tempdir().unwrap();
    run("flow", valgrind, |c| {
        ffi::basic_env(c, scratch.path(), &flow.store.public_key_path());
        ffi::flow_env(c, &flow);
    });
}

fn valgrind_available() -> bool {
    if ffi::have("valgrind") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "valgrind is required in CI (apt-get install valgrind)"
    );
    eprintln!("valgrind is not installed: skipping the Valgrind run");
    false
}

/// Versions, last-error retrieval, NULL arguments, invalid UTF-8, bad paths, the forced
/// panic, site creation, sample data with progress and cancellation, trust, and four
/// threads on different sites at once.
#[test]
fn c_program_basics() {
    basics(false);
}

#[test]
fn c_program_basics_under_valgrind() {
    if valgrind_available() {
        basics(true);
    }
}

/// Prepare -> Connect -> Import against the reference service on 127.0.0.1, with
/// cancellation of each step from the progress callback.
#[test]
fn c_program_full_flow() {
    flow(false);
}

#[test]
fn c_program_full_flow_under_valgrind() {
    if valgrind_available() {
        flow(true);
    }
}

/// The header is also valid C++ (cbindgen's `cpp_compat` guards).
#[test]
fn header_compiles_as_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("check.cpp");
    std::fs::write(
        &src,
        "#include \"serviceconnection.h\"\n\
         int main() { return sct_abi_version() == SCT_ABI_VERSION && SCT_OK == 7000 ? 0 : 1; }\n",
    )
    .unwrap();
    let out = Command::new("c++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(ffi::root().join("include"))
        .arg(&src)
        .output()
        .expect("run c++");
    assert!(
        out.status.success(),
        "the header does not compile as C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
