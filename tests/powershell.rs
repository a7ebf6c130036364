//! Runs the PowerShell module's Pester 5 suite (`tests/powershell/*.Tests.ps1`) with `pwsh`
//! against the library and `sct-service` that cargo just built, and fails when Pester reports
//! any failure or finds no test. `pwsh` comes from `PATH`, else `../shared/tools/bin/pwsh`
//! beside the repository; when neither exists this test fails rather than skipping, so a
//! machine without PowerShell cannot pass silently.

#[path = "common/workspace_bin.rs"]
mod workspace_bin;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn find_pwsh() -> PathBuf {
    let exe = if cfg!(windows) { "pwsh.exe" } else { "pwsh" };
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(exe);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let shared = repo().join("../shared/tools/bin").join(exe);
    if shared.is_file() {
        return shared;
    }
    panic!(
        "pwsh (PowerShell 7 with Pester 5) was not found on PATH nor at {}: install PowerShell \
         or lay out shared/tools; the PowerShell module's tests cannot be skipped",
        shared.display()
    );
}

/// The cdylib cargo builds beside the test's binaries (`target/<profile>/`).
fn native_library(bin_dir: &Path) -> PathBuf {
    let name = if cfg!(windows) {
        "serviceconnection.dll"
    } else if cfg!(target_os = "macos") {
        "libserviceconnection.dylib"
    } else {
        "libserviceconnection.so"
    };
    bin_dir.join(name)
}

/// Single-quoted PowerShell string literal.
fn ps_quote(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', "''"))
}

#[test]
fn pester_suite_passes() {
    let pwsh = find_pwsh();
    let service = workspace_bin::workspace_bin("sct-service");
    let bin_dir = service.parent().expect("binary has a folder");
    let library = native_library(bin_dir);
    assert!(
        library.is_file(),
        "the native library {} was not built (cargo builds the cdylib with the tests)",
        library.display()
    );
    let out_dir = tempfile::tempdir().expect("temp dir");
    let results = out_dir.path().join("pester-results.xml");
    let suite = repo().join("tests/powershell");
    let script = format!(
        r#"$ErrorActionPreference = 'Stop'
Import-Module Pester -MinimumVersion 5.0 -ErrorAction Stop
$c = New-PesterConfiguration
$c.Run.Path = {suite}
$c.Run.PassThru = $true
$c.Output.Verbosity = 'Detailed'
$c.Output.RenderMode = 'Plaintext'
$c.TestResult.Enabled = $true
$c.TestResult.OutputFormat = 'NUnitXml'
$c.TestResult.OutputPath = {results}
$r = Invoke-Pester -Configuration $c
"PESTER total=$($r.TotalCount) passed=$($r.PassedCount) failed=$($r.FailedCount) skipped=$($r.SkippedCount) notrun=$($r.NotRunCount) result=$($r.Result)"
if ($r.TotalCount -le 0 -or $r.FailedCount -gt 0 -or $r.Result -ne 'Passed') {{ exit 1 }}
exit 0
"#,
        suite = ps_quote(&suite),
        results = ps_quote(&results),
    );
    let output = Command::new(&pwsh)
        .args(["-NoProfile", "-NonInteractive", "-Command", &script])
        .current_dir(out_dir.path())
        .env("SCT_NATIVE_LIBRARY", &library)
        .env("SCT_SERVICE_EXE", &service)
        .env("SCT_PWSH", &pwsh)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pwsh.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("PESTER total="))
        .unwrap_or_else(|| panic!("Pester did not run to the end (exit {:?})", output.status));
    let total: u64 = summary
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|n| n.parse().ok())
        .expect("summary has a total");
    assert!(total > 0, "Pester found no tests: {summary}");
    assert!(
        output.status.success(),
        "the Pester suite failed: {summary}"
    );
    assert!(results.is_file(), "Pester wrote no result file");
}
