//! The release archives `bash .ci/package` builds in `target/dist/`: what each holds, that
//! the Windows binaries import only system DLLs and the Linux ones need only glibc, that the shipped tools run (the Windows one
//! under Wine), and that the PowerShell module package installs with `Install-PSResource`
//! into a clean `pwsh` and works there.
//!
//! The archives are built by `.ci/package` (CI runs it before the tests). When they are
//! missing this test runs it (a release build for both platforms: minutes); after changing
//! the code, run `bash .ci/package` again to test fresh archives.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let dist = root().join("target/dist");
        if !dist
            .join(format!("ServiceConnection.{VERSION}.nupkg"))
            .is_file()
        {
            let out = package_command().output().expect("run .ci/package");
            assert!(
                out.status.success(),
                ".ci/package failed:\n{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        dist
    })
}

/// `bash .ci/package` with the environment it has when CI runs it before the tests:
/// without the variables `cargo test` sets for a test (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_DIR`, `RUSTUP_TOOLCHAIN`, `LD_LIBRARY_PATH`, …). With them the release
/// builds inside it no longer matched the ones CI had just made and were all compiled
/// again: five minutes of every CI run.
fn package_command() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join(".ci/package"));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || matches!(
                key,
                "CARGO"
                    | "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
                    | "RUSTUP_TOOLCHAIN"
                    | "RUSTUP_TOOLCHAIN_SOURCE"
                    | "RUST_RECURSION_COUNT"
                    | "LD_LIBRARY_PATH"
            );
        if set_for_tests {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn zip_path() -> PathBuf {
    dist().join(format!("ServiceConnection-{VERSION}-win-x64.zip"))
}

fn tar_path() -> PathBuf {
    dist().join(format!("ServiceConnection-{VERSION}-linux-x64.tar.gz"))
}

/// Unpack both archives into a fresh folder (once per test that needs them).
fn unpack() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    run(Command::new("unzip")
        .arg("-q")
        .arg(zip_path())
        .arg("-d")
        .arg(t.path()));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(tar_path())
        .arg("-C")
        .arg(t.path()));
    let win = t
        .path()
        .join(format!("ServiceConnection-{VERSION}-win-x64"));
    let linux = t
        .path()
        .join(format!("ServiceConnection-{VERSION}-linux-x64"));
    (t, win, linux)
}

fn listing(top: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(top, top, &mut out);
    out
}

#[test]
fn archives_hold_the_tools_the_library_its_header_and_the_module() {
    let (_t, win, linux) = unpack();
    let module_files = [
        "ServiceConnection/ServiceConnection.psd1",
        "ServiceConnection/ServiceConnection.psm1",
        "ServiceConnection/Private/Initialize-NativeLibrary.ps1",
        "ServiceConnection/Private/Native.cs",
        "ServiceConnection/Public/Export-UsageData.ps1",
    ];
    let w = listing(&win);
    for f in [
        "serviceconnectiontool.exe",
        "sct-service.exe",
        "lib/serviceconnection.dll",
        "lib/libserviceconnection.dll.a",
        "include/serviceconnection.h",
        "README.md",
        // What the module loads on Windows x64 (Get-NativeLibraryRid: win-x64).
        "ServiceConnection/lib/win-x64/serviceconnection.dll",
    ]
    .into_iter()
    .chain(module_files)
    {
        assert!(w.contains(f), "the win-x64 zip lacks {f}: {w:#?}");
    }
    let l = listing(&linux);
    for f in [
        "serviceconnectiontool",
        "sct-service",
        "lib/libserviceconnection.so",
        "include/serviceconnection.h",
        "README.md",
        "ServiceConnection/lib/linux-x64/libserviceconnection.so",
    ]
    .into_iter()
    .chain(module_files)
    {
        assert!(l.contains(f), "the linux-x64 archive lacks {f}: {l:#?}");
    }
    // Nothing of the other platform, nothing a developer's build left in the module folder.
    assert!(!w.iter().any(|f| f.ends_with(".so")), "{w:#?}");
    assert!(!l.iter().any(|f| f.ends_with(".dll")), "{l:#?}");
    // The header is the committed one; the DLL is the one the module carries.
    assert_eq!(
        std::fs::read(win.join("include/serviceconnection.h")).unwrap(),
        std::fs::read(root().join("include/serviceconnection.h")).unwrap()
    );
    assert_eq!(
        std::fs::read(win.join("lib/serviceconnection.dll")).unwrap(),
        std::fs::read(win.join("ServiceConnection/lib/win-x64/serviceconnection.dll")).unwrap()
    );
    // SHA256SUMS covers every artifact.
    let sums = std::fs::read_to_string(dist().join("SHA256SUMS")).unwrap();
    for a in [
        zip_path(),
        tar_path(),
        dist().join(format!("ServiceConnection.{VERSION}.nupkg")),
    ] {
        let name = a.file_name().unwrap().to_str().unwrap();
        let line = sums
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("SHA256SUMS lacks {name}:\n{sums}"));
        let out = run(Command::new("sha256sum").arg(&a));
        assert_eq!(
            text(&out.stdout).split_whitespace().next(),
            line.split_whitespace().next(),
            "{name}"
        );
    }
}

/// DLLs every Windows 10+ x64 installation has. Anything else (the MinGW runtime, the
/// Visual C++ redistributable, .NET) would have to be installed by the administrator.
const SYSTEM_DLLS: &[&str] = &[
    "advapi32.dll",
    "bcrypt.dll",
    "bcryptprimitives.dll",
    "crypt32.dll",
    "kernel32.dll",
    "msvcrt.dll",
    "ncrypt.dll",
    "ntdll.dll",
    "ole32.dll",
    "oleaut32.dll",
    "secur32.dll",
    "shell32.dll",
    "user32.dll",
    "userenv.dll",
    "ws2_32.dll",
];

fn imported_dlls(file: &Path) -> BTreeSet<String> {
    let out = run(Command::new("x86_64-w64-mingw32-objdump")
        .arg("-p")
        .arg(file));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DLL Name: "))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn windows_binaries_import_only_system_dlls() {
    let (_t, win, _) = unpack();
    for f in [
        "serviceconnectiontool.exe",
        "sct-service.exe",
        "lib/serviceconnection.dll",
    ] {
        let dlls = imported_dlls(&win.join(f));
        assert!(
            dlls.contains("kernel32.dll"),
            "{f}: objdump read no imports: {dlls:?}"
        );
        let foreign: Vec<&String> = dlls
            .iter()
            .filter(|d| !SYSTEM_DLLS.contains(&d.as_str()) && !d.starts_with("api-ms-win-"))
            .collect();
        assert!(
            foreign.is_empty(),
            "{f} imports DLLs that are not part of Windows: {foreign:?} (all: {dlls:?})"
        );
    }
}

/// Shared libraries every glibc-based Linux x86-64 system has.
const SYSTEM_SHARED_LIBRARIES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
];

/// The Linux binaries link ISA-L's assembly in statically (src/usage/cab/deflate.rs).
/// They must still need nothing beyond glibc, need no text relocations, keep the stack
/// non-executable (an object without a `.note.GNU-stack` section makes the linker ask for
/// an executable stack, which recent glibc refuses when `dlopen`ing the library into a
/// process such as pwsh), and the library must export the C ABI and nothing else.
#[test]
fn linux_binaries_need_only_glibc_keep_the_stack_non_executable_and_export_only_the_c_abi() {
    let (_t, _, linux) = unpack();
    for f in [
        "serviceconnectiontool",
        "sct-service",
        "lib/libserviceconnection.so",
    ] {
        let path = linux.join(f);
        let dynamic = text(&run(Command::new("readelf").arg("-dW").arg(&path)).stdout);
        let needed: Vec<&str> = dynamic
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| l.split('[').nth(1))
            .map(|n| n.trim_end_matches(']'))
            .collect();
        assert!(
            needed.contains(&"libc.so.6"),
            "{f}: readelf read no NEEDED entries:\n{dynamic}"
        );
        let foreign: Vec<&&str> = needed
            .iter()
            .filter(|n| !SYSTEM_SHARED_LIBRARIES.contains(n))
            .collect();
        assert!(foreign.is_empty(), "{f} needs more than glibc: {foreign:?}");
        assert!(
            !dynamic.contains("TEXTREL"),
            "{f}: text relocations:\n{dynamic}"
        );
        let headers = text(&run(Command::new("readelf").arg("-lW").arg(&path)).stdout);
        let stack = headers
            .lines()
            .find(|l| l.trim_start().starts_with("GNU_STACK"))
            .unwrap_or_else(|| panic!("{f}: no GNU_STACK program header:\n{headers}"));
        assert_eq!(
            stack.split_whitespace().nth(6),
            Some("RW"),
            "{f}: the stack is not read-write only: {stack}"
        );
    }
    let exports = text(
        &run(Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(linux.join("lib/libserviceconnection.so")))
        .stdout,
    );
    let names: Vec<&str> = exports
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(
        names.contains(&"sct_version"),
        "nm read no exports:\n{exports}"
    );
    let foreign: Vec<&&str> = names.iter().filter(|n| !n.starts_with("sct_")).collect();
    assert!(foreign.is_empty(), "exported beyond the C ABI: {foreign:?}");
}

#[test]
fn the_packaged_tools_run() {
    let (_t, win, linux) = unpack();
    let out = run(Command::new(linux.join("serviceconnectiontool")).arg("-?"));
    assert!(text(&out.stdout).contains("-usagedatadest"));
    let out = run(Command::new(linux.join("sct-service")).arg("--version"));
    assert!(text(&out.stdout).contains(VERSION), "{}", text(&out.stdout));
    // The Windows tool, straight from the zip, under Wine (the runner sets up the prefix).
    let out = run(Command::new(root().join(".ci/wine-run"))
        .arg(win.join("serviceconnectiontool.exe"))
        .arg("-?"));
    assert!(
        text(&out.stdout).contains("-usagedatadest"),
        "{}",
        text(&out.stdout)
    );
}

/// The .nupkg, installed with Install-PSResource from the local folder repository into a
/// pwsh whose $HOME (and so its user module path and PSResourceGet settings) is empty,
/// creates and reads a site through the native library it carries.
#[test]
fn module_package_installs_into_a_clean_pwsh_and_runs() {
    let nupkg = dist().join(format!("ServiceConnection.{VERSION}.nupkg"));
    assert!(nupkg.is_file());
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let pwsh = ["pwsh", "../shared/tools/bin/pwsh"]
        .iter()
        .map(|p| {
            if p.contains('/') {
                root().join(p)
            } else {
                PathBuf::from(p)
            }
        })
        .find(|p| {
            Command::new(p)
                .args(["-NoProfile", "-Command", "exit 0"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("pwsh (PowerShell 7) on PATH or in ../shared/tools/bin");
    let script = r#"
        $ErrorActionPreference = 'Stop'
        if (Get-Module -ListAvailable ServiceConnection) { throw 'ServiceConnection is already installed' }
        Register-PSResourceRepository -Name local -Uri $env:SCT_DIST -Trusted -Force
        Install-PSResource -Name ServiceConnection -Repository local -Scope CurrentUser -TrustRepository
        Import-Module ServiceConnection
        $m = Get-Module ServiceConnection
        $site = New-ServiceConnectionSite -Path (Join-Path $env:SCT_WORK 'site.db') -SiteCode PS1 -SiteVersion 5.00.9128.1000
        $info = Get-ServiceConnectionSite -SiteDatabase (Join-Path $env:SCT_WORK 'site.db')
        [pscustomobject]@{
            ModuleBase = $m.ModuleBase
            Version    = $m.Version.ToString()
            SiteCode   = $info.SiteCode
            Library    = Join-Path $m.ModuleBase 'lib/linux-x64/libserviceconnection.so'
            HasLibrary = Test-Path (Join-Path $m.ModuleBase 'lib/linux-x64/libserviceconnection.so')
            HasWinDll  = Test-Path (Join-Path $m.ModuleBase 'lib/win-x64/serviceconnection.dll')
        } | ConvertTo-Json -Compress
    "#;
    let h = home.path();
    // .NET answers "" for a missing XDG folder, and PSResourceGet then keeps its settings
    // in the current folder: they must exist (as on a real machine).
    for d in [".local/share", ".config", ".cache"] {
        std::fs::create_dir_all(h.join(d)).unwrap();
    }
    let before = checkout_state();
    let out = run(Command::new(pwsh)
        .args(["-NoProfile", "-NonInteractive", "-Command", script])
        .env("HOME", h)
        .env("XDG_DATA_HOME", h.join(".local/share"))
        .env("XDG_CONFIG_HOME", h.join(".config"))
        .env("XDG_CACHE_HOME", h.join(".cache"))
        .env_remove("PSModulePath")
        .env_remove("SCT_NATIVE_LIBRARY")
        .env("SCT_DIST", dist())
        .env("SCT_WORK", work.path()));
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["Version"], VERSION);
    assert_eq!(v["SiteCode"], "PS1", "{v}");
    assert_eq!(v["HasLibrary"], true, "{v}");
    assert_eq!(v["HasWinDll"], true, "{v}");
    let base = PathBuf::from(v["ModuleBase"].as_str().unwrap());
    assert!(
        base.starts_with(h),
        "the module was not loaded from the clean install: {}",
        base.display()
    );
    assert!(work.path().join("site.db").is_file());
    assert_checkout_unchanged("Install-PSResource", &before);
}

/// What a packaging step could leave in the checkout: `git status` with untracked and
/// ignored entries (so a `.gitignore` line cannot hide one), and whether the folders
/// PSResourceGet and NuGet write to a missing settings folder's stand-in exist.
fn checkout_state() -> (BTreeSet<String>, Vec<(&'static str, bool)>) {
    let out = run(Command::new("git").arg("-C").arg(root()).args([
        "status",
        "--porcelain",
        "--ignored",
        "--untracked-files=normal",
    ]));
    let status = text(&out.stdout).lines().map(str::to_string).collect();
    let folders = ["NuGet", "PSResourceGet"]
        .into_iter()
        .map(|d| (d, root().join(d).exists()))
        .collect();
    (status, folders)
}

fn assert_checkout_unchanged(step: &str, before: &(BTreeSet<String>, Vec<(&str, bool)>)) {
    let after = checkout_state();
    let new: Vec<&String> = after.0.difference(&before.0).collect();
    assert!(new.is_empty(), "{step} left in the checkout: {new:?}");
    for (d, exists) in &after.1 {
        assert!(
            !exists,
            "{} exists: a pwsh step wrote its settings into the working folder{}",
            root().join(d).display(),
            if before.1.iter().any(|(b, e)| b == d && *e) {
                " (it was there before this test: an earlier run left it; remove it)"
            } else {
                ""
            }
        );
    }
}

/// `.ci/package` (into a folder of its own under target/, so the other tests' archives
/// stay in place) leaves nothing new in the checkout: the release builds are cached by
/// then, so this is the staging, the archives and `Publish-PSResource`.
#[test]
fn packaging_leaves_the_checkout_clean() {
    dist(); // the release builds, once
    let name = "dist-clean-check";
    let before = checkout_state();
    let out = package_command()
        .env("SCT_PACKAGE_DIST", name)
        .output()
        .expect("run .ci/package");
    assert!(
        out.status.success(),
        ".ci/package failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let made = root().join("target").join(name);
    assert!(made
        .join(format!("ServiceConnection.{VERSION}.nupkg"))
        .is_file());
    std::fs::remove_dir_all(&made).unwrap();
    assert_checkout_unchanged(".ci/package", &before);
}
