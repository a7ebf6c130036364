//! Console content on the service side (SPEC section 10): `sct-service console publish`
//! and the `GET /v1/console-content` routes.
//!
//! Where the versions live: in the store folder, one immutable folder per version,
//!
//! ```text
//! DIR/console/<content_version>/console-content.json          the exact signed bytes
//! DIR/console/<content_version>/console-content.json.minisig  their minisign signature
//! ```
//!
//! and not in the catalog: the document is self-describing and signed, the versions form
//! a plain sequence, and the rename of a complete folder from `staging/` into `console/`
//! is the atomic step that makes a version visible (a publish killed earlier leaves only a
//! staging folder, removed by the next publish). Every version is kept; the newest is the
//! highest number. Publishing holds the store lock, so two publishers never take the same
//! number.
//!
//! The signature's trusted comment is `console-content version:<N> sha256:<hex>`, so a
//! client that fetched the document and the signature in two requests can tell that both
//! belong to the same publication (another may have come in between).

use super::http::{send, ApiFailure, AppState, Source};
use super::publish::StoreLock;
use super::{mkdirs, Store};
use crate::error::{Error, ErrorKind, Result};
use crate::signing::SecretKey;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serviceconnection::console::{
    ConsoleContent, Draft, DOCUMENT_FILE, MAX_DOCUMENT_BYTES, SIGNATURE_FILE,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Folder of the console content versions in the store.
pub const CONSOLE_DIR: &str = "console";

/// `GET` path of the newest document.
pub const DOCUMENT_ROUTE: &str = "/console-content";
/// `GET` path of its signature.
pub const SIGNATURE_ROUTE: &str = "/console-content.json.minisig";

/// One published version, as `list --console` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsoleVersion {
    pub content_version: u64,
    pub published: String,
    pub servicing: usize,
    pub messages: usize,
    pub size: u64,
    pub sha256: String,
}

pub use serviceconnection::console::trusted_comment;

fn console_dir(store: &Store) -> PathBuf {
    store.root().join(CONSOLE_DIR)
}

/// The version numbers of the published folders, ascending.
fn versions(store: &Store) -> Result<Vec<u64>> {
    let dir = console_dir(store);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), &e))?;
        // Canonical decimal names only ("7", not "07"), so one number is one folder.
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok().filter(|n| n.to_string() == s))
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Read one stored version: the document bytes and the signature text.
fn read_version(store: &Store, n: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let dir = console_dir(store).join(n.to_string());
    let read = |name: &str, limit: u64| -> Result<Vec<u8>> {
        let p = dir.join(name);
        let meta = p
            .symlink_metadata()
            .map_err(|e| Error::io(format!("reading {}", p.display()), &e))?;
        if !meta.is_file() || meta.len() > limit {
            return Err(Error::new(
                ErrorKind::IntegrityMismatch,
                format!("{} is not a regular file of a sane size", p.display()),
            ));
        }
        std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), &e))
    };
    Ok((
        read(DOCUMENT_FILE, MAX_DOCUMENT_BYTES)?,
        read(
            SIGNATURE_FILE,
            serviceconnection::console::MAX_SIGNATURE_BYTES,
        )?,
    ))
}

/// Every published version, oldest first.
pub fn list(store_root: &Path) -> Result<Vec<ConsoleVersion>> {
    let store = Store::open(store_root)?;
    let mut out = Vec::new();
    for n in versions(&store)? {
        let (bytes, _) = read_version(&store, n)?;
        let doc = ConsoleContent::from_bytes(&bytes)
            .map_err(|e| e.context(format!("stored console content version {n}")))?;
        out.push(ConsoleVersion {
            content_version: n,
            published: doc.published,
            servicing: doc.servicing.len(),
            messages: doc.messages.len(),
            size: bytes.len() as u64,
            sha256: crate::hashing::sha256_hex(&bytes),
        });
    }
    Ok(out)
}

/// `sct-service console publish`: validate `file`, stamp the next version and the time,
/// sign, and store it as a new version. Returns what was published.
pub fn publish(store_root: &Path, file: &Path) -> Result<ConsoleVersion> {
    let store = Store::open(store_root)?;
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::io(format!("reading {}", file.display()), &e))?;
    if meta.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid_argument(format!(
            "{} is larger than 16 MiB",
            file.display()
        )));
    }
    let input =
        std::fs::read(file).map_err(|e| Error::io(format!("reading {}", file.display()), &e))?;
    let draft = Draft::from_bytes(&input).map_err(|e| e.context(file.display()))?;
    let key_text = std::fs::read_to_string(store.secret_key_path()).map_err(|e| {
        Error::io(
            format!(
                "reading the signing key {}",
                store.secret_key_path().display()
            ),
            &e,
        )
    })?;
    let key = SecretKey::parse(&key_text)?;

    let _lock = StoreLock::take(&store)?;
    let next = versions(&store)?.last().copied().unwrap_or(0) + 1;
    let doc = draft.stamp(next, crate::site::now_rfc3339());
    doc.validate()?;
    let bytes = doc.to_bytes();
    let sha = crate::hashing::sha256_hex(&bytes);
    let signature = key.sign(&bytes, &trusted_comment(next, &sha))?;

    mkdirs(&store.staging_dir())?;
    mkdirs(&console_dir(&store))?;
    let stage = store.staging_dir().join(format!("console-{next}"));
    if stage.symlink_metadata().is_ok() {
        // A publish killed before its rename; nothing serves staging folders.
        std::fs::remove_dir_all(&stage)
            .map_err(|e| Error::io(format!("removing {}", stage.display()), &e))?;
    }
    mkdirs(&stage)?;
    write_synced(&stage.join(DOCUMENT_FILE), &bytes)?;
    write_synced(&stage.join(SIGNATURE_FILE), signature.as_bytes())?;
    crate::fsutil::sync_dir(&stage);
    let dest = console_dir(&store).join(next.to_string());
    std::fs::rename(&stage, &dest).map_err(|e| {
        Error::io(
            format!("moving {} into {}", stage.display(), dest.display()),
            &e,
        )
    })?;
    crate::fsutil::sync_dir(&console_dir(&store));
    Ok(ConsoleVersion {
        content_version: next,
        published: doc.published,
        servicing: doc.servicing.len(),
        messages: doc.messages.len(),
        size: bytes.len() as u64,
        sha256: sha,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
}

/// The newest version's bytes, read from the store (small; read per request so a new
/// publication is served at once without restarting the service).
async fn newest(state: &Arc<AppState>) -> std::result::Result<(Vec<u8>, Vec<u8>), ApiFailure> {
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match versions(&store)?.last() {
            None => Ok(None),
            Some(&n) => read_version(&store, n).map(Some),
        }
    })
    .await
    .map_err(|e| ApiFailure::internal(&Error::internal(format!("reading console content: {e}"))))?
    .map_err(|e| ApiFailure::internal(&e))?;
    found.ok_or_else(|| ApiFailure::not_found("no console content is published on this service"))
}

/// `GET`/`HEAD /v1/console-content`: the newest document.
pub(super) async fn document(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> std::result::Result<Response, ApiFailure> {
    let (bytes, _) = newest(&state).await?;
    let etag = format!("\"{}\"", crate::hashing::sha256_hex(&bytes));
    Ok(send(
        &method,
        &headers,
        &etag,
        "application/json",
        Source::Memory(Bytes::from(bytes)),
    )
    .await)
}

/// `GET`/`HEAD /v1/console-content.json.minisig`: its signature.
pub(super) async fn signature(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> std::result::Result<Response, ApiFailure> {
    let (_, sig) = newest(&state).await?;
    let etag = format!("\"{}\"", crate::hashing::sha256_hex(&sig));
    Ok(send(
        &method,
        &headers,
        &etag,
        "text/plain; charset=utf-8",
        Source::Memory(Bytes::from(sig)),
    )
    .await)
}
