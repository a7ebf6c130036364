//! Shared by the C ABI callers' tests (tests/ffi_c.rs, tests/ffi_python.rs): the built
//! cdylib, and a reference service with one published pack for the full flow.
//! Include with `#[path = "common/ffi.rs"] mod ffi;` after `#[path = "common/service.rs"] mod service;`.
#![allow(dead_code)]

use super::service::{write_content, TestService, TestStore};
use serviceconnection::api::PackType;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The `libserviceconnection.so` that `cargo test` built for this test's profile (the lib
/// target has both crate types, so it is built with the test binaries). Only when it is
/// missing (the test binary run on its own) is it built here with `cargo build --lib`;
/// building it unconditionally would fight `cargo test` over the file, since the two
/// builds unify dev-dependency features differently.
pub fn built_cdylib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        let lib = dir.join("libserviceconnection.so");
        if lib.is_file() {
            return lib;
        }
        let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("build")
            .arg("--lib")
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.parent().unwrap());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().expect("run cargo build --lib");
        assert!(
            out.status.success(),
            "cargo build --lib failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(lib.is_file(), "{} was not built", lib.display());
        lib
    })
}

/// A private copy of the built library in `dir`, so a concurrent build replacing
/// `target/<profile>/libserviceconnection.so` cannot change what a running test loads.
pub fn private_cdylib(dir: &Path) -> PathBuf {
    let copy = dir.join("libserviceconnection.so");
    std::fs::copy(built_cdylib(), &copy).expect("copy libserviceconnection.so");
    copy
}

/// Whether `tool` runs here (`tool --version`).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The reference service with one published Update (5.00.9132.1000, applies from
/// 5.00.9128.1000) offered to every hierarchy, plus a second publisher's key that sites
/// may trust without it helping.
pub struct FlowService {
    pub store: TestStore,
    pub foreign: TestStore,
    pub service: TestService,
    pub pack: uuid::Uuid,
}

impl FlowService {
    pub fn start() -> FlowService {
        let store = TestStore::new();
        let content = write_content(
            &store.dir().join("content"),
            &[
                (
                    "setup/update.bin",
                    &super::service::pseudo_random(300_000, 9),
                ),
                ("readme.txt", b"Configuration Manager 2207 update pack\n"),
            ],
        );
        let pack = store.publish(
            "Configuration Manager 2207",
            "5.00.9132.1000",
            PackType::Update,
            "5.00.9128.1000",
            None,
            &[],
            &content,
        );
        // Console content: one message for every hierarchy, one for another hierarchy only.
        store.publish_console(&serde_json::json!({
            "servicing": [{"product": "Windows 11", "version": "24H2", "channel": "General Availability",
                "release_date": "2024-10-01", "end_of_servicing": "2026-10-13"}],
            "messages": [
                {"id": "for-everyone", "severity": "Info", "title": "Dashboard refreshed",
                 "body": "Servicing data for November.", "published": "2026-11-01"},
                {"id": "for-another", "severity": "Critical", "title": "Not for you",
                 "body": "Another hierarchy's message.", "published": "2026-11-02",
                 "hierarchies": ["9a1b2c3d-0000-4000-8000-00000000beef"]}
            ]
        }));
        let service = TestService::start(&store, &[]);
        FlowService {
            store,
            foreign: TestStore::new(),
            service,
            pack,
        }
    }
}

/// Environment every caller program reads (see tests/c/ffi_test.c).
pub fn basic_env(cmd: &mut Command, scratch: &Path, publisher_pub: &Path) {
    cmd.env("SCT_TEST_DIR", scratch)
        .env("SCT_EXPECT_VERSION", env!("CARGO_PKG_VERSION"))
        .env("SCT_PUBLISHER_PUB", publisher_pub)
        .env_remove("SCT_FFI_TEST_PANIC");
}

/// Add what the full flow needs.
pub fn flow_env(cmd: &mut Command, flow: &FlowService) {
    cmd.env("SCT_SERVICE_URL", flow.service.url())
        .env("SCT_EXPECT_PACK", flow.pack.to_string())
        .env("SCT_FOREIGN_PUB", flow.foreign.public_key_path());
}

/// Assert a caller program passed: exit 0 and its closing `ALL OK` line.
pub fn assert_passed(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{what}:\n{stdout}");
}
