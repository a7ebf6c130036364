//! Test harness for the reference update service: a throwaway store made by the real
//! `sct-service keygen`, packs published by the real `publish`, and a real server on
//! 127.0.0.1 port 0. Include with `#[path = "common/service.rs"] mod service;`.
//!
//! ```ignore
//! let store = service::TestStore::new();
//! let content = service::write_content(&store.dir().join("c1"), &[("a.bin", b"data")]);
//! let id = store.publish("Config 2207", "5.00.9088.1000", PackType::Update, "5.00.9040.1000", None, &[], &content);
//! let svc = service::TestService::start(&store, &[]);
//! let url = format!("{}/v1/health", svc.url());
//! ```
#![allow(dead_code)]

use serviceconnection::api::PackType;
use serviceconnection::usage::{UsageFile, UsageManifest};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// One pack of `sct-service list --json`: the command's JSON contract, read the way an
/// operator's script would (the tests do not link the service's own types).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ListedPack {
    pub id: uuid::Uuid,
    pub name: String,
    pub version: serviceconnection::SiteVersion,
    #[serde(rename = "type")]
    pub pack_type: PackType,
    pub min_site_version: serviceconnection::SiteVersion,
    pub max_site_version: Option<serviceconnection::SiteVersion>,
    pub hierarchies: Vec<uuid::Uuid>,
    pub content_digest: String,
    pub manifest_sha256: String,
    pub size: u64,
    pub file_count: u64,
    pub publisher_name: String,
    pub published: String,
}

/// One received usage cab of `sct-service list --uploads --json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ListedUpload {
    pub id: String,
    pub hierarchy_id: uuid::Uuid,
    pub site_version: String,
    pub diagnostics_level: String,
    pub selection: serviceconnection::api::Selection,
    /// Relative to the store root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub received: String,
    pub offered: u64,
}

#[path = "start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;
#[path = "workspace_bin.rs"]
mod workspace_bin;
use start::Start;

#[path = "postgres.rs"]
pub mod postgres;

#[path = "s3.rs"]
pub mod s3;

/// Whether this test process keeps every test store's content in the shared s3s-fs
/// server (`--content s3://...`, one prefix per store): the `*_s3*` suites do (their
/// `service.rs` compiled again, e.g. `service_s3_postgres`), and any suite does with
/// `SCT_TEST_CONTENT=s3`.
pub fn on_s3() -> bool {
    option_env!("CARGO_CRATE_NAME").is_some_and(|n| n.ends_with("_s3") || n.contains("_s3_"))
        || std::env::var("SCT_TEST_CONTENT").is_ok_and(|v| v == "s3")
}

/// (store folder, `--content` URL, folder where s3s-fs keeps that prefix's objects) of
/// each test store whose content is in the object store.
static CONTENTS: std::sync::Mutex<Vec<(PathBuf, String, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

fn content_of(store: &Path) -> Option<(String, PathBuf)> {
    CONTENTS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _, _)| p == store)
        .map(|(_, u, d)| (u.clone(), d.clone()))
}

/// Point `cmd` at the content store of the store at `store` (nothing for a store that
/// keeps its own content); the S3 credentials go in the environment.
pub fn with_content<'c>(cmd: &'c mut Command, store: &Path) -> &'c mut Command {
    if let Some((url, _)) = content_of(store) {
        cmd.arg("--content").arg(url).envs(s3::shared().env());
    }
    cmd
}

/// Whether this test process runs the service on a PostgreSQL catalog: the
/// `service_postgres` suite does (it is `service.rs` compiled again), and any suite does
/// with `SCT_TEST_CATALOG=postgres` in the environment.
pub fn on_postgres() -> bool {
    option_env!("CARGO_CRATE_NAME").is_some_and(|n| n.ends_with("_postgres"))
        || std::env::var("SCT_TEST_CATALOG").is_ok_and(|v| v == "postgres")
}

/// `--catalog URL` of each test store whose catalog is not its own catalog.sqlite.
static CATALOGS: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Point `cmd` at the catalog of the store at `store` (nothing for a store on its own
/// catalog.sqlite); the PostgreSQL password goes in the environment, never an argument.
pub fn with_catalog<'c>(cmd: &'c mut Command, store: &Path) -> &'c mut Command {
    let url = CATALOGS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p == store)
        .map(|(_, u)| u.clone());
    if let Some(url) = url {
        cmd.arg("--catalog")
            .arg(url)
            .env("PGPASSWORD", postgres::server().password());
    }
    cmd
}

/// Path of the `sct-service` binary: cargo names it to the service crate's own tests;
/// the library's tests find it beside them in `target/<profile>/` (see `workspace_bin`).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match option_env!("CARGO_BIN_EXE_sct-service") {
        Some(p) => p.to_string(),
        None => workspace_bin::workspace_bin("sct-service")
            .to_string_lossy()
            .into_owned(),
    })
}

/// A store in a temporary folder (removed on drop), created by `sct-service keygen`.
pub struct TestStore {
    dir: tempfile::TempDir,
    root: PathBuf,
    public_key_base64: String,
}

impl TestStore {
    /// A store on the backend this test process uses (see [`on_postgres`]).
    pub fn new() -> TestStore {
        Self::with_postgres(on_postgres())
    }

    /// A store whose catalog is a fresh, migrated PostgreSQL database.
    pub fn new_on_postgres() -> TestStore {
        Self::with_postgres(true)
    }

    fn with_postgres(pg: bool) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let out = Command::new(bin())
            .args(["keygen", "--store"])
            .arg(&root)
            .output_retrying()
            .expect("run sct-service keygen");
        assert!(
            out.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public_key_base64 = String::from_utf8(out.stdout).unwrap().trim().to_string();
        if pg {
            let pg = postgres::server();
            let url = pg.url(&pg.create_database());
            let out = Command::new(bin())
                .args(["migrate", "--catalog", &url])
                .env("PGPASSWORD", pg.password())
                .output_retrying()
                .expect("run sct-service migrate");
            assert!(
                out.status.success(),
                "migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            CATALOGS.lock().unwrap().push((root.clone(), url));
        }
        if on_s3() {
            let server = s3::shared();
            let prefix = s3::unique_prefix();
            CONTENTS.lock().unwrap().push((
                root.clone(),
                format!("s3://{}/{prefix}", s3::BUCKET),
                server.bucket_dir().join(&prefix),
            ));
        }
        TestStore {
            dir,
            root,
            public_key_base64,
        }
    }

    /// The `--catalog` URL when the store's catalog is not its own catalog.sqlite.
    pub fn catalog_url(&self) -> Option<String> {
        CATALOGS
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == self.root)
            .map(|(_, u)| u.clone())
    }

    /// The store folder (`--store`).
    pub fn path(&self) -> &Path {
        &self.root
    }
    /// The folder holding `packs/` and `uploads/`: the store folder, or (content in
    /// s3s-fs) the folder where s3s-fs keeps the store's prefix, object keys as paths.
    pub fn content_root(&self) -> PathBuf {
        content_of(&self.root).map_or_else(|| self.root.clone(), |(_, d)| d)
    }
    /// Keep this store's content from now on in its own prefix of the process's shared
    /// s3s-fs server (what `on_s3()` does for every store), e.g. for one setup of a
    /// benchmark. Call before publishing or serving.
    pub fn use_shared_s3(&self) {
        if content_of(&self.root).is_none() {
            let prefix = s3::unique_prefix();
            CONTENTS.lock().unwrap().push((
                self.root.clone(),
                format!("s3://{}/{prefix}", s3::BUCKET),
                s3::shared().bucket_dir().join(&prefix),
            ));
        }
    }
    /// The `--content` URL when the content is not in the store folder.
    pub fn content_url(&self) -> Option<String> {
        content_of(&self.root).map(|(u, _)| u)
    }
    /// A scratch folder beside the store, removed with it (for content folders, cabs...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// `publisher.key`: the store's minisign secret key (the store layout of `keygen`).
    pub fn secret_key_path(&self) -> PathBuf {
        self.root.join("publisher.key")
    }
    /// `publisher.pub`: what sites trust.
    pub fn public_key_path(&self) -> PathBuf {
        self.root.join("publisher.pub")
    }
    /// The key as `keygen` printed it (base64 line).
    pub fn public_key_base64(&self) -> &str {
        &self.public_key_base64
    }
    /// Where a published pack lives in the store.
    pub fn pack_dir(&self, id: &uuid::Uuid) -> PathBuf {
        self.content_root().join("packs").join(id.to_string())
    }

    /// Run `sct-service publish` and return its GUID; panics (with stderr) on failure.
    #[allow(clippy::too_many_arguments)] // the shape of the `publish` command line
    pub fn publish(
        &self,
        name: &str,
        version: &str,
        pack_type: PackType,
        min: &str,
        max: Option<&str>,
        hierarchies: &[uuid::Uuid],
        content_dir: &Path,
    ) -> uuid::Uuid {
        let out = self.publish_output(name, version, pack_type, min, max, hierarchies, content_dir);
        assert!(
            out.status.success(),
            "publish {name} {version} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .expect("publish prints a GUID")
    }

    /// The `publish` command, ready to run (for tests of failures and kills).
    #[allow(clippy::too_many_arguments)] // the shape of the `publish` command line
    pub fn publish_command(
        &self,
        name: &str,
        version: &str,
        pack_type: PackType,
        min: &str,
        max: Option<&str>,
        hierarchies: &[uuid::Uuid],
        content_dir: &Path,
    ) -> Command {
        let mut c = Command::new(bin());
        c.arg("publish").arg("--store").arg(&self.root);
        with_content(with_catalog(&mut c, &self.root), &self.root)
            .args([
                "--name",
                name,
                "--version",
                version,
                "--type",
                pack_type.as_str(),
            ])
            .args(["--min-site-version", min]);
        if let Some(max) = max {
            c.args(["--max-site-version", max]);
        }
        for h in hierarchies {
            c.args(["--hierarchy", &h.to_string()]);
        }
        c.arg(content_dir);
        c
    }

    /// Run `sct-service console publish` with `draft` and return the version it prints;
    /// panics (with stderr) on failure.
    pub fn publish_console(&self, draft: &serde_json::Value) -> u64 {
        let file = self
            .dir()
            .join(format!("console-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&file, serde_json::to_vec_pretty(draft).unwrap()).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["console", "publish", "--store"]).arg(&self.root);
        // Into the store's content store (the bucket when this suite runs on S3).
        with_content(&mut cmd, &self.root);
        let out = cmd
            .arg(&file)
            .output_retrying()
            .expect("run sct-service console publish");
        assert!(
            out.status.success(),
            "console publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .expect("console publish prints the version")
    }

    /// Run `publish` and return its output, success or not.
    #[allow(clippy::too_many_arguments)] // the shape of the `publish` command line
    pub fn publish_output(
        &self,
        name: &str,
        version: &str,
        pack_type: PackType,
        min: &str,
        max: Option<&str>,
        hierarchies: &[uuid::Uuid],
        content_dir: &Path,
    ) -> Output {
        self.publish_command(name, version, pack_type, min, max, hierarchies, content_dir)
            .output_retrying()
            .expect("run sct-service publish")
    }

    /// `sct-service list --json`: the catalog's packs.
    pub fn list(&self) -> Vec<ListedPack> {
        self.list_json(false)
    }

    /// `sct-service list --uploads --json`: the received usage cabs.
    pub fn uploads(&self) -> Vec<ListedUpload> {
        self.list_json(true)
    }

    fn list_json<T: serde::de::DeserializeOwned>(&self, uploads: bool) -> T {
        let mut c = Command::new(bin());
        c.args(["list", "--json", "--store"]).arg(&self.root);
        with_catalog(&mut c, &self.root);
        if uploads {
            c.arg("--uploads");
        }
        let out = c.output_retrying().expect("run sct-service list");
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("list --json")
    }

    /// Write `token` to a file beside the store, for `--token-file`.
    pub fn token_file(&self, token: &str) -> PathBuf {
        let p = self.dir.path().join("token.txt");
        std::fs::write(&p, format!("{token}\n")).unwrap();
        p
    }
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `sct-service serve`; killed (SIGKILL) on drop. Its stderr goes to a log file.
pub struct TestService {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl TestService {
    /// Start `serve --store <store> --listen 127.0.0.1:0 <extra_args>` and wait for its
    /// `sct-service listening on <url>` line.
    pub fn start(store: &TestStore, extra_args: &[&str]) -> TestService {
        Self::start_args(store.path(), extra_args.iter().map(|s| s.as_ref()))
    }

    /// Like [`start`](Self::start) with arbitrary (path) arguments.
    pub fn start_args<'a>(
        store: &Path,
        extra_args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
    ) -> TestService {
        Self::start_env(store, extra_args, std::iter::empty::<(String, String)>())
    }

    /// Like [`start_args`](Self::start_args) with extra environment variables (e.g. the
    /// `AWS_*` of an S3 content store).
    pub fn start_env<'a, K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        store: &Path,
        extra_args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> TestService {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("sct-service.log");
        let mut child = with_content(
            with_catalog(
                Command::new(bin())
                    .envs(env)
                    .arg("serve")
                    .arg("--store")
                    .arg(store),
                store,
            ),
            store,
        )
        .args(["--listen", "127.0.0.1:0"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn_retrying()
        .expect("spawn sct-service serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("sct-service listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sct-service did not start (first line {line:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let url = url.to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        TestService {
            child: Some(child),
            url,
            log,
            _logdir: logdir,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://`), no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The server's stderr so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Send SIGTERM and wait for a graceful exit. (Unix: Windows has no signal to send a
    /// console-less child; its Ctrl+C path is covered by the code's own tests.)
    #[cfg(unix)]
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        child.wait().unwrap()
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Create `dir` holding `files` (relative `/` paths, created with their folders).
pub fn write_content(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    for (rel, data) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    dir.to_path_buf()
}

/// Deterministic pseudo-random bytes (a content file that does not compress).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Write an MS-CAB (MSZIP) holding `files` in order, with the `cab` crate.
pub fn write_cab(dest: &Path, files: &[(&str, &[u8])]) {
    let mut builder = cab::CabinetBuilder::new();
    {
        let folder = builder.add_folder(cab::CompressionType::MsZip);
        for (name, _) in files {
            folder.add_file(*name);
        }
    }
    let f = std::fs::File::create(dest).unwrap();
    let mut w = builder.build(f).unwrap();
    let mut i = 0;
    while let Some(mut fw) = w.next_file().unwrap() {
        fw.write_all(files[i].1).unwrap();
        i += 1;
    }
    w.finish().unwrap();
}

/// The manifest a usage cab of `hierarchy` at `site_version` with `data` as its
/// `UsageData.csv` should carry.
pub fn usage_manifest(hierarchy: uuid::Uuid, site_version: &str, data: &[u8]) -> UsageManifest {
    UsageManifest {
        format_version: serviceconnection::usage::manifest::USAGE_FORMAT_VERSION,
        hierarchy_id: hierarchy,
        site_version: site_version.parse().unwrap(),
        diagnostics_level: serviceconnection::DiagnosticsLevel::Enhanced,
        created: "2026-01-01T00:00:00Z".into(),
        tool_version: serviceconnection::tool_version(),
        files: vec![UsageFile {
            name: "UsageData.csv".into(),
            size: data.len() as u64,
            records: data
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                .saturating_sub(1) as u64,
            sha256: serviceconnection::hashing::sha256_hex(data),
        }],
    }
}

/// A valid usage cab (manifest.json, UsageData.csv, SiteVersion.txt) built by hand with the
/// `cab` crate, for tests that do not want a site database.
pub fn write_usage_cab(dest: &Path, hierarchy: uuid::Uuid, site_version: &str) {
    let data = b"category,name,value\r\nhardware,cpu_count,4\r\nsoftware,os,Windows\r\n";
    let manifest = usage_manifest(hierarchy, site_version, data);
    write_cab(
        dest,
        &[
            ("manifest.json", &manifest.to_bytes()),
            ("UsageData.csv", data),
            ("SiteVersion.txt", site_version.as_bytes()),
        ],
    );
}
