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

/// The same C program built for Windows x64: compiled with mingw-w64 against the Windows
/// `serviceconnection.dll` (linked through its import library `libserviceconnection.dll.a`)
/// and run under Wine (`.ci/wine-run`), with every path a Windows path (`Z:\...`, Wine's
/// view of the Linux root), so options JSON carries escaped backslashes. The reference
/// service is the Linux one on 127.0.0.1. Needs mingw-w64 and Wine (`.ci/setup` installs
/// them; skipped with a message elsewhere, never in CI).
#[cfg(target_os = "linux")]
mod windows {
    use super::{ffi, service};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    const TARGET: &str = "x86_64-pc-windows-gnu";

    fn available() -> bool {
        let ok = ffi::have("x86_64-w64-mingw32-gcc")
            && (ffi::have("wine64") || Path::new("/usr/lib/wine/wine64").is_file());
        assert!(
            ok || std::env::var_os("CI").is_none(),
            "mingw-w64 and Wine are required in CI (bash .ci/setup)"
        );
        if !ok {
            eprintln!("mingw-w64 or Wine is missing: skipping the Windows C test");
        }
        ok
    }

    /// `target/x86_64-pc-windows-gnu/<profile>/`, holding serviceconnection.dll and its
    /// import library; built with `cargo build --lib --target ...` only when missing (as
    /// `ffi::built_cdylib` does for the Linux library).
    fn windows_build() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let linux = ffi::built_cdylib().parent().unwrap().to_path_buf();
            let profile = linux.file_name().unwrap().to_str().unwrap().to_string();
            let target_dir = linux.parent().unwrap();
            let dir = target_dir.join(TARGET).join(&profile);
            if dir.join("serviceconnection.dll").is_file()
                && dir.join("libserviceconnection.dll.a").is_file()
            {
                return dir;
            }
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--lib", "--target", TARGET])
                .arg("--manifest-path")
                .arg(ffi::root().join("Cargo.toml"))
                .arg("--target-dir")
                .arg(target_dir);
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            let out = cmd.output().expect("run cargo build --target");
            assert!(
                out.status.success(),
                "cargo build --lib --target {TARGET} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
    }

    /// A Linux path as the Windows program sees it under Wine (drive Z: is `/`).
    fn wine_path(p: &Path) -> String {
        format!("Z:{}", p.to_str().unwrap().replace('/', "\\"))
    }

    fn run(mode: &str, setup: impl FnOnce(&mut Command)) {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        // The DLL beside the program: Windows looks in the program's folder first.
        for f in ["serviceconnection.dll", "libserviceconnection.dll.a"] {
            std::fs::copy(windows_build().join(f), w.join(f)).unwrap();
        }
        let exe = w.join("ffi_test.exe");
        let out = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-g", "-O0"])
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
            .arg("-I")
            .arg(ffi::root().join("include"))
            .arg(ffi::root().join("tests/c/ffi_test.c"))
            .arg(w.join("libserviceconnection.dll.a"))
            .arg("-o")
            .arg(&exe)
            // The MinGW runtime (winpthreads, libgcc) linked in: no DLL but ours and Windows'.
            .args(["-static", "-pthread"])
            .output()
            .expect("run x86_64-w64-mingw32-gcc");
        assert!(
            out.status.success(),
            "compiling tests/c/ffi_test.c for Windows failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(ffi::root().join(".ci/wine-run"));
        cmd.arg(&exe).arg(mode);
        setup(&mut cmd);
        // The paths the program reads, as Windows paths.
        for var in ["SCT_TEST_DIR", "SCT_PUBLISHER_PUB", "SCT_FOREIGN_PUB"] {
            if let Some(p) = cmd
                .get_envs()
                .find(|(k, _)| *k == var)
                .and_then(|(_, v)| v.map(PathBuf::from))
            {
                cmd.env(var, wine_path(&p));
            }
        }
        let out = cmd.output().expect("run .ci/wine-run");
        ffi::assert_passed(&format!("ffi_test.exe {mode} under Wine"), &out);
    }

    #[test]
    fn c_program_basics_on_windows() {
        if !available() {
            return;
        }
        let store = service::TestStore::new();
        let scratch = tempfile::tempdir().unwrap();
        run("basics", |c| {
            ffi::basic_env(c, scratch.path(), &store.public_key_path())
        });
    }

    #[test]
    fn c_program_full_flow_on_windows() {
        if !available() {
            return;
        }
        let flow = ffi::FlowService::start();
        let scratch = tempfile::tempdir().unwrap();
        run("flow", |c| {
            ffi::basic_env(c, scratch.path(), &flow.store.public_key_path());
            ffi::flow_env(c, &flow);
        });
    }
}
