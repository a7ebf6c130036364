//! Connect: upload usage cabs to the update service and download the update packs that
//! apply to each hierarchy — bounded parallelism, resumable with `Range`, verified while
//! streaming, written atomically, through an optional authenticating proxy.
//!
//! Layout written under `dest` (SPEC section 5):
//! `<dest>/<hierarchy-id>/<package-guid>/{manifest.json, manifest.json.minisig, content/...}`
//! and `<dest>/connect-report.json`.
//!
//! Invariants a later step (and a re-run) can rely on:
//! - A file at its final name under `content/` has been verified (size and SHA-256)
//!   against the signed-for manifest; bytes in flight live only in `<name>.sct-partial`.
//! - `manifest.json` is written last, after every content file verified and after the
//!   signature, so a pack folder holding `manifest.json` is complete. (Import still
//!   checks every file itself; this only makes a half-done folder easy to recognise.)
//! - A cancelled or killed run may leave `.sct-partial` files; a re-run hashes their bytes
//!   and continues them with `Range: bytes=N-` + `If-Range: "<sha256>"`, and skips files
//!   already complete (`AlreadyComplete`, nothing transferred).
//! - A pack offered to several hierarchies crosses the network once; the other
//!   hierarchies' folders get copies of the verified files, verified again while copied.
//!
//! - A folder holding `.sct-connect.lock` is being written by a Connect run; a second
//!   run on the same destination at the same time is refused (`Busy`).
//!
//! The progress callback always runs on the caller's thread: the downloads run on a tokio
//! runtime owned by a worker thread and send their progress over a channel.
//!
//! Without a proxy option Connect connects directly: `HTTP_PROXY`/`HTTPS_PROXY` in the
//! environment are deliberately not used, so what happens is what the options say.

mod client;
mod console;
mod download;
mod report;
mod sink;
mod upload;
mod writer_pool;

pub use console::{ConsoleReport, ConsoleStatus};

use crate::api::Selection;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::{Phase, Progress, ProgressFn};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Name of the report written at the top of the destination.
pub const REPORT_FILE: &str = "connect-report.json";

/// Proxy settings. The password is never logged, serialized or shown by `Debug`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyOptions {
    /// `host[:port]`, scheme optional (`http://` assumed), port 80 by default.
    pub uri: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    /// A usage cab, or a folder of uniquely named usage cabs (one per hierarchy).
    pub source: PathBuf,
    /// More usage cabs or folders of cabs for the same run, taken after `source` in this
    /// order (a path given twice counts once; the first cab of a hierarchy wins), so a
    /// caller with cabs in several places gets one run and one report naming the real
    /// files, without copying them anywhere.
    #[serde(default)]
    pub additional_sources: Vec<PathBuf>,
    /// The update-pack destination folder (created if missing; its parent must exist).
    pub dest: PathBuf,
    /// Base URI of the update service, e.g. `https://updates.contoso.com` or `http://127.0.0.1:8080`.
    pub service_uri: String,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub proxy: Option<ProxyOptions>,
    /// Extra CA certificate (PEM) trusted for the service's TLS, for a private CA.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token for a service that requires one. Never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Concurrent file downloads (default 4): requests and transfers at once. As many
    /// more downloads whose bytes have all arrived may still be finishing (their last
    /// writes, hash check and rename); each holds at most 4 MiB received but not yet
    /// written.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Attempts per request on transient failures, including the first (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// A transfer that receives (or sends) no byte for this long is abandoned and retried
    /// (default 60 s). There is deliberately no whole-request timeout.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// First backoff between attempts, doubled each time with jitter (default 1000 ms).
    #[serde(default = "default_retry_base")]
    pub retry_base_delay_ms: u64,
    /// Overall download bandwidth limit in bytes per second (none by default).
    #[serde(default)]
    pub max_bytes_per_second: Option<u64>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("source", &self.source)
            .field("additional_sources", &self.additional_sources)
            .field("dest", &self.dest)
            .field("service_uri", &self.service_uri)
            .field("selection", &self.selection)
            .field("proxy", &self.proxy)
            .field("ca_cert", &self.ca_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("parallelism", &self.parallelism)
            .field("max_attempts", &self.max_attempts)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("retry_base_delay_ms", &self.retry_base_delay_ms)
            .field("max_bytes_per_second", &self.max_bytes_per_second)
            .finish()
    }
}

fn default_parallelism() -> usize {
    4
}
fn default_attempts() -> u32 {
    5
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_retry_base() -> u64 {
    1000
}

impl ConnectOptions {
    pub fn new(
        source: impl Into<PathBuf>,
        dest: impl Into<PathBuf>,
        service_uri: impl Into<String>,
    ) -> Self {
        ConnectOptions {
            source: source.into(),
            additional_sources: Vec::new(),
            dest: dest.into(),
            service_uri: service_uri.into(),
            selection: Selection::default(),
            proxy: None,
            ca_cert: None,
            token: None,
            parallelism: default_parallelism(),
            max_attempts: default_attempts(),
            idle_timeout_secs: default_idle_timeout(),
            retry_base_delay_ms: default_retry_base(),
            max_bytes_per_second: None,
        }
    }
}

/// What Connect did; also written to `connect-report.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectReport {
    pub tool_version: String,
    pub service_uri: String,
    pub selection: Selection,
    pub started: String,
    pub finished: String,
    pub uploads: Vec<UploadReport>,
    pub packs: Vec<PackReport>,
    /// Bytes received over the network for pack content in this run.
    #[serde(default)]
    pub bytes_transferred: u64,
    /// The console content fetch (`<dest>/ConsoleContent/`); absent in reports of
    /// versions that did not fetch it.
    #[serde(default)]
    pub console_content: Option<ConsoleReport>,
}

impl ConnectReport {
    /// True when every cab uploaded, every offered pack is complete and verified, and the
    /// console content did not fail (none published is not a failure).
    pub fn is_success(&self) -> bool {
        self.console_content
            .as_ref()
            .is_none_or(|c| c.status != ConsoleStatus::Failed)
            && self
                .uploads
                .iter()
                .all(|u| u.status == UploadStatus::Uploaded)
            && self.packs.iter().all(|p| {
                matches!(
                    p.status,
                    PackStatus::Downloaded | PackStatus::AlreadyComplete
                )
            })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum UploadStatus {
    Uploaded,
    /// Not a usage cab, or a second cab of the same hierarchy: not uploaded.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadReport {
    pub cab: PathBuf,
    pub hierarchy_id: Option<uuid::Uuid>,
    pub site_version: Option<String>,
    pub status: UploadStatus,
    /// Packages offered for this hierarchy.
    pub offered: usize,
    pub message: Option<String>,
    /// The kind of failure, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PackStatus {
    /// Every file fetched (or resumed) and verified in this run.
    Downloaded,
    /// Already complete and verified on the drive from an earlier run.
    AlreadyComplete,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackReport {
    pub hierarchy_id: uuid::Uuid,
    pub package_guid: uuid::Uuid,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub pack_type: String,
    pub size: u64,
    /// `<dest>/<hierarchy-id>/<package-guid>`.
    pub path: PathBuf,
    pub status: PackStatus,
    pub files: Vec<FileReport>,
    pub message: Option<String>,
    /// The kind of failure, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FileStatus {
    Downloaded,
    /// Continued from bytes already on disk with a `Range` request.
    Resumed,
    AlreadyComplete,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub status: FileStatus,
    /// Bytes transferred over the network in this run.
    pub bytes_transferred: u64,
    pub message: Option<String>,
    /// The kind of failure, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

/// Run Connect. Per-cab and per-pack failures are recorded in the report (and the report
/// is still written); an `Err` means nothing useful could be done at all: bad options,
/// destination unusable, cancelled, or every upload failed for one cause that concerns the
/// whole run (proxy unreachable, proxy credentials refused, TLS verification failed; the
/// report is still written then).
///
/// `progress` runs on the calling thread; returning `false` cancels every transfer and
/// the call returns [`ErrorKind::Cancelled`]. Bytes already received stay in
/// `.sct-partial` files (never at a final name) so that the next run resumes them.
pub fn connect(opts: &ConnectOptions, progress: ProgressFn) -> Result<ConnectReport> {
    if opts.parallelism == 0 || opts.parallelism > 64 {
        return Err(Error::invalid_argument(format!(
            "parallelism must be between 1 and 64 (got {})",
            opts.parallelism
        )));
    }
    if opts.max_attempts == 0 {
        return Err(Error::invalid_argument("max_attempts must be at least 1"));
    }
    if opts.idle_timeout_secs == 0 {
        return Err(Error::invalid_argument(
            "idle_timeout_secs must be at least 1",
        ));
    }
    let cancel = CancellationToken::new();
    let http = client::Http::new(opts, cancel.clone())?;
    let cabs =
        upload::find_all_cabs(std::iter::once(&opts.source).chain(&opts.additional_sources))?;
    let dest = prepare_dest(&opts.dest)?;
    let lock = lock_dest(&dest)?;

    let (tx, rx) = sync_channel::<Msg>(1024);
    let ctx = Arc::new(Ctx {
        http,
        dest,
        selection: opts.selection,
        service_uri: opts.service_uri.trim().to_string(),
        slots: tokio::sync::Semaphore::new(opts.parallelism),
        finishing: tokio::sync::Semaphore::new(opts.parallelism),
        events: Events {
            tx: tx.clone(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        },
        writers: writer_pool::Pool::new(),
        batches: sink::batches(),
    });
    // One runtime thread per download at once (2 to 8), but no more than there are cores
    // (at least 2): the downloads wait on the network and on their sinks' threads, and
    // runtime threads beyond the cores only park and wake each other. 2 cores, 1,000
    // files of 1 MiB, 4 threads -> 2, alternating runs, medians of 11: 1.309 -> 1.246 s
    // and 1.312 -> 1.227 s; a 1 GiB file the same (1.135 / 1.121 s).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = opts.parallelism.clamp(2, 8).min(cores.max(2));
    let worker = std::thread::Builder::new()
        .name("sct-connect".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("sct-connect-io")
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let r = rt.block_on(run(ctx.clone(), cabs));
                    rt.shutdown_timeout(std::time::Duration::from_secs(5));
                    // Every sink has ended with its task: end their threads too, so none
                    // outlives the call.
                    ctx.writers.close();
                    r
                }
                Err(e) => Err(Error::internal(format!(
                    "cannot start the I/O runtime: {e}"
                ))),
            };
            let last = ctx.events.snapshot(Phase::Download, String::new(), 0, 0);
            let _ = tx.send(Msg::Progress(last));
            let _ = tx.send(Msg::Done(Box::new(result)));
        })
        .map_err(|e| Error::internal(format!("cannot start the Connect worker: {e}")))?;
    // Should the callback panic, unwinding drops this and stops the worker's transfers.
    let stop_on_unwind = CancelOnDrop(cancel.clone());
    let result = pump(&rx, progress, &cancel);
    drop(stop_on_unwind);
    let joined = worker.join();
    drop(lock);
    match (result, joined) {
        (_, Err(_)) => Err(Error::internal("the Connect worker panicked")),
        (Some(r), Ok(())) => r,
        (None, Ok(())) => Err(Error::internal(
            "the Connect worker stopped without a result",
        )),
    }
}

/// Deliver progress to the caller's callback until the worker finishes. After the
/// callback asks to cancel it is not called again.
fn pump(
    rx: &Receiver<Msg>,
    progress: ProgressFn,
    cancel: &CancellationToken,
) -> Option<Result<ConnectReport>> {
    let mut cancelled = false;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Progress(p) => {
                if !cancelled && !progress(&p) {
                    cancelled = true;
                    cancel.cancel();
                }
            }
            Msg::Done(r) => {
                return Some(if cancelled {
                    Err(Error::cancelled())
                } else {
                    *r
                })
            }
        }
    }
    None
}

/// Create the destination folder if needed (its parent must exist) and check it is a folder.
fn prepare_dest(dest: &Path) -> Result<PathBuf> {
    if dest.as_os_str().is_empty() {
        return Err(Error::invalid_argument("no update-pack destination given"));
    }
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() && dest.is_dir() => {}
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("destination {} exists and is not a folder", dest.display()),
            ))
        }
        Err(_) => {
            let parent = crate::fsutil::parent_dir(dest);
            if !parent.is_dir() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the folder {} that should hold the destination does not exist",
                        parent.display()
                    ),
                ));
            }
            if let Err(e) = std::fs::create_dir(dest) {
                if !(e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir()) {
                    return Err(Error::io(format!("creating {}", dest.display()), &e));
                }
            }
        }
    }
    Ok(dest.to_path_buf())
}

/// File locked for the duration of a run, so two Connect runs never write the same
/// partial files at once.
pub const LOCK_FILE: &str = ".sct-connect.lock";

fn lock_dest(dest: &Path) -> Result<std::fs::File> {
    let path = dest.join(LOCK_FILE);
    // A link there is refused, not followed (a dangling one would create its target), and
    // so is a FIFO (whose opening would wait for a reader).
    let f = crate::fsutil::open_write_no_follow(&path).map_err(
        |e| match crate::fsutil::open_error("opening", &path.display().to_string(), &e) {
            refused if refused.kind() == ErrorKind::UnsafePath => refused,
            _ => Error::io(format!("cannot write in {}", dest.display()), &e),
        },
    )?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&f) {
        Ok(true) => Ok(f),
        Ok(false) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "another Connect run is writing to {}; wait for it to finish",
                dest.display()
            ),
        )),
        Err(e) => Err(Error::io(format!("locking {}", path.display()), &e)),
    }
}

struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

enum Msg {
    Progress(Progress),
    /// Boxed: a report is far larger than a progress message (more so on Windows, whose
    /// paths are wider), and the channel carries mostly progress.
    Done(Box<Result<ConnectReport>>),
}

/// State shared by every task of one run.
pub(crate) struct Ctx {
    pub http: client::Http,
    pub dest: PathBuf,
    pub selection: Selection,
    pub service_uri: String,
    /// Bounds the concurrent transfers across all files of all packs.
    pub slots: tokio::sync::Semaphore,
    /// Bounds the downloads whose bytes have all arrived and are still being hashed,
    /// written and moved into place, having given their transfer slot to the next file
    /// (`download::Turn`); as many as [`Ctx::slots`].
    pub finishing: tokio::sync::Semaphore,
    pub events: Events,
    /// The threads that write downloads; closed (every thread joined) before the run
    /// returns.
    pub writers: writer_pool::Pool,
    pub batches: Arc<crate::fsutil::Batches>,
}

/// Progress reporting from the worker tasks: overall counters plus a bounded channel to
/// the caller's thread. Intermediate reports are dropped rather than block a transfer
/// when the caller is slow; every report carries absolute numbers, so none is needed.
pub(crate) struct Events {
    tx: SyncSender<Msg>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Events {
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub_total(&self, n: u64) {
        let _ = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
    }
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub_done(&self, n: u64) {
        let _ = self
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }
    fn snapshot(&self, phase: Phase, item: String, item_done: u64, item_total: u64) -> Progress {
        Progress {
            phase,
            item,
            item_done,
            item_total,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }
    pub fn emit(&self, phase: Phase, item: &str, item_done: u64, item_total: u64) {
        let p = self.snapshot(phase, item.to_string(), item_done, item_total);
        match self.tx.try_send(Msg::Progress(p)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Emits at most one report per item every 100 ms, plus the first and the last.
pub(crate) struct Throttle {
    last: Option<std::time::Instant>,
}

impl Throttle {
    pub fn new() -> Self {
        Throttle { last: None }
    }
    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < std::time::Duration::from_millis(100) => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// Kinds that concern the whole run rather than one cab: when every upload failed with
/// one of these, Connect returns it as an error (after writing the report).
fn is_run_wide(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ProxyConnect | ErrorKind::ProxyAuth | ErrorKind::Tls
    )
}

async fn run(ctx: Arc<Ctx>, cabs: Vec<PathBuf>) -> Result<ConnectReport> {
    let started = crate::site::now_rfc3339();
    let uploads = upload::upload_all(&ctx, cabs).await?;
    // Console content: once per run, after the uploads (and the packs, below); its failure
    // never stops the packs. When no upload
    // of the run got through (service unreachable, proxy, TLS, token refused, bad cabs),
    // the run has failed already and asking again would only repeat the failure (and its
    // retries): the fetch is skipped, and the uploads say why.
    let attempted: Vec<&UploadReport> = uploads
        .iter()
        .map(|(u, _)| u)
        .filter(|u| u.status != UploadStatus::Skipped)
        .collect();
    let unreachable = match attempted.first() {
        Some(first) if attempted.iter().all(|u| u.status == UploadStatus::Failed) => Some((
            first.kind.unwrap_or(ErrorKind::Network),
            first.message.clone().unwrap_or_default(),
        )),
        _ => None,
    };
    // A pack offered to several hierarchies is downloaded once; the other hierarchies'
    // folders are filled by copying the verified files (each copy verified again).
    let mut first_dir: std::collections::HashMap<uuid::Uuid, PathBuf> = Default::default();
    let mut primaries = Vec::new();
    let mut copies = Vec::new();
    for (u, answer) in &uploads {
        let (Some(answer), Some(h)) = (answer, u.hierarchy_id) else {
            continue;
        };
        let mut seen = std::collections::HashSet::new();
        for offer in &answer.packages {
            if !seen.insert(offer.id) {
                continue;
            }
            ctx.events.add_total(offer.size);
            let index = primaries.len() + copies.len();
            match first_dir.get(&offer.id) {
                None => {
                    first_dir.insert(offer.id, download::pack_dir(&ctx.dest, h, offer.id));
                    primaries.push((
                        index,
                        download::run_pack(ctx.clone(), h, offer.clone(), None),
                    ));
                }
                Some(dir) => copies.push((
                    index,
                    download::run_pack(ctx.clone(), h, offer.clone(), Some(dir.clone())),
                )),
            }
        }
    }
    let mut packs: Vec<(usize, PackReport)> = Vec::new();
    for group in [primaries, copies] {
        let (indexes, jobs): (Vec<usize>, Vec<_>) = group.into_iter().unzip();
        for (i, r) in indexes
            .into_iter()
            .zip(futures_util::future::join_all(jobs).await)
        {
            packs.push((i, r?));
        }
    }
    packs.sort_by_key(|(i, _)| *i);
    let packs: Vec<PackReport> = packs.into_iter().map(|(_, p)| p).collect();
    if ctx.http.cancel.is_cancelled() {
        return Err(Error::cancelled());
    }
    // After the packs, so a run cancelled (or killed) while downloading them has not
    // replaced the console content either: what it leaves is only what it will resume.
    let console_content = match unreachable {
        Some((kind, why)) => console::not_fetched(&ctx, kind, &why),
        None => console::fetch(&ctx).await?,
    };
    let uploads: Vec<UploadReport> = uploads.into_iter().map(|(u, _)| u).collect();
    let report = ConnectReport {
        tool_version: crate::tool_version(),
        service_uri: ctx.service_uri.clone(),
        selection: ctx.selection,
        started,
        finished: crate::site::now_rfc3339(),
        bytes_transferred: packs
            .iter()
            .flat_map(|p| p.files.iter())
            .map(|f| f.bytes_transferred)
            .sum(),
        uploads,
        packs,
        console_content: Some(console_content),
    };
    report::write(&ctx.dest, &report)?;
    let attempted: Vec<&UploadReport> = report
        .uploads
        .iter()
        .filter(|u| u.status != UploadStatus::Skipped)
        .collect();
    if let Some(first) = attempted.first() {
        if attempted
            .iter()
            .all(|u| u.status == UploadStatus::Failed && u.kind.is_some_and(is_run_wide))
        {
            return Err(Error::new(
                first.kind.unwrap_or(ErrorKind::Network),
                first.message.clone().unwrap_or_default(),
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut o = ConnectOptions::new("usb", "packs", "https://updates.contoso.com");
        o.token = Some("tok-SECRET-1".into());
        o.proxy = Some(ProxyOptions {
            uri: "proxy:8080".into(),
            username: Some("meg".into()),
            password: Some("pw-SECRET-2".into()),
        });
        let shown = format!("{o:?} {o:#?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            shown.contains("meg") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn options_from_json_take_defaults() {
        let o: ConnectOptions = serde_json::from_str(
            r#"{"source":"a.cab","dest":"packs","service_uri":"http://127.0.0.1:1"}"#,
        )
        .unwrap();
        assert_eq!(o.parallelism, 4);
        assert_eq!(o.max_attempts, 5);
        assert_eq!(o.idle_timeout_secs, 60);
        assert_eq!(o.selection, Selection::Latest);
        assert!(o.max_bytes_per_second.is_none());
    }

    #[test]
    fn bad_numbers_are_refused_before_anything_happens() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("packs");
        for f in [
            |o: &mut ConnectOptions| o.parallelism = 0,
            |o: &mut ConnectOptions| o.parallelism = 65,
            |o: &mut ConnectOptions| o.max_attempts = 0,
            |o: &mut ConnectOptions| o.idle_timeout_secs = 0,
        ] {
            let mut o = ConnectOptions::new(d.path(), &dest, "http://127.0.0.1:1");
            f(&mut o);
            let e = connect(&o, &mut crate::progress::ignore).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        }
        assert!(!dest.exists());
    }
}
