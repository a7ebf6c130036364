//! Console content on the service side (SPEC section 10): `sct-service console publish`
//! and the `GET /v1/console-content` routes.
//!
//! Where the versions live: in the content store (`--content`, default the store folder),
//! one immutable set of objects per version, and not in the catalog (the document is
//! self-describing and signed, and the versions form a plain sequence):
//!
//! ```text
//! console/<content_version>/console-content.json          the exact signed bytes
//! console/<content_version>/console-content.json.minisig  their minisign signature
//! ```
//!
//! How the next `content_version` is taken, safely against concurrent publishers:
//! - In a folder, under the store lock: the version is written into `staging/` and the
//!   complete folder renamed into `console/` (the atomic step that makes it visible; a
//!   publish killed earlier leaves only a staging folder, removed by the next publish).
//! - In an object store (`s3://`), with no lock to hold: the document is written with a
//!   create-only PUT (`If-None-Match: *`) at `console/<N>/console-content.json`, N one
//!   above the highest listed; if another publisher created it first, the next number is
//!   tried (the document is stamped and signed again, since N is inside it). The signature
//!   is written after the document, and a version counts (for serving and `list`) only
//!   once its signature exists, so a publish killed in between leaves a number that is
//!   skipped, never a half version. Readers take the highest complete version.
//!
//! Every version is kept; the newest is the highest complete number.
//!
//! The signature's trusted comment is `console-content version:<N> sha256:<hex>`, so a
//! client that fetched the document and the signature in two requests can tell that both
//! belong to the same publication (another may have come in between).

use super::content::{Content, ObjectContent};
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

fn console_dir(root: &Path) -> PathBuf {
    root.join(CONSOLE_DIR)
}

/// A canonical decimal version name ("7", not "07"), so one number is one version.
fn version_number(name: &str) -> Option<u64> {
    name.parse::<u64>().ok().filter(|n| n.to_string() == name)
}

/// The version numbers of the published folders under the folder `root`, ascending.
fn versions(root: &Path) -> Result<Vec<u64>> {
    let dir = console_dir(root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), &e))?;
        if let Some(n) = e.file_name().to_str().and_then(version_number) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Read one stored version: the document bytes and the signature text.
fn read_version(root: &Path, n: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let dir = console_dir(root).join(n.to_string());
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

/// Every published version in the store folder, oldest first.
pub fn list(store_root: &Path) -> Result<Vec<ConsoleVersion>> {
    let store = Store::open(store_root)?;
    list_folder(store.root())
}

/// Every published version in the content store, oldest first.
pub fn list_in(content: &Content) -> Result<Vec<ConsoleVersion>> {
    match content {
        Content::Folder(root) => list_folder(root),
        Content::Object(o) => {
            let rt = runtime()?;
            let mut out = Vec::new();
            for n in rt.block_on(object_versions(o))? {
                if let Some((bytes, _)) = rt.block_on(read_object_version(o, n))? {
                    out.push(describe(n, &bytes)?);
                }
            }
            Ok(out)
        }
    }
}

fn list_folder(root: &Path) -> Result<Vec<ConsoleVersion>> {
    let mut out = Vec::new();
    for n in versions(root)? {
        let (bytes, _) = read_version(root, n)?;
        out.push(describe(n, &bytes)?);
    }
    Ok(out)
}

/// What `list` shows of stored version `n`.
fn describe(n: u64, bytes: &[u8]) -> Result<ConsoleVersion> {
    let doc = ConsoleContent::from_bytes(bytes)
        .map_err(|e| e.context(format!("stored console content version {n}")))?;
    Ok(ConsoleVersion {
        content_version: n,
        published: doc.published,
        servicing: doc.servicing.len(),
        messages: doc.messages.len(),
        size: bytes.len() as u64,
        sha256: crate::hashing::sha256_hex(bytes),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the I/O runtime", &e))
}

fn object_key(n: u64, name: &str) -> String {
    format!("{CONSOLE_DIR}/{n}/{name}")
}

/// The version numbers that have objects in the bucket (complete or not), ascending.
async fn object_versions(o: &ObjectContent) -> Result<Vec<u64>> {
    let mut out: Vec<u64> = o
        .child_names(CONSOLE_DIR)
        .await?
        .iter()
        .filter_map(|n| version_number(n))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Version `n` from the bucket, `None` while (or if forever) its signature is missing.
async fn read_object_version(o: &ObjectContent, n: u64) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let sig = match o
        .read_small(
            &object_key(n, SIGNATURE_FILE),
            serviceconnection::console::MAX_SIGNATURE_BYTES,
        )
        .await
    {
        Ok(sig) => sig,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let doc = o
        .read_small(&object_key(n, DOCUMENT_FILE), MAX_DOCUMENT_BYTES)
        .await?;
    Ok(Some((doc, sig)))
}

/// The newest complete version in the bucket.
async fn newest_object(o: &ObjectContent) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    for n in object_versions(o).await?.into_iter().rev() {
        if let Some(found) = read_object_version(o, n).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// `sct-service console publish`: validate `file`, stamp the next version and the time,
/// sign, and store it as a new version. Returns what was published.
pub fn publish(store_root: &Path, file: &Path) -> Result<ConsoleVersion> {
    let store = Store::open(store_root)?;
    publish_folder(&store, &store.secret_key_path(), file)
}

/// `sct-service console publish --content URL`: the same, signed with `key`, into the
/// content store (a folder with the store layout, or `s3://`; see the module comment for
/// how the version number is taken).
pub fn publish_to(key: &Path, content: &Content, file: &Path) -> Result<ConsoleVersion> {
    match content {
        Content::Folder(root) => publish_folder(&Store::open_folder(root)?, key, file),
        Content::Object(o) => {
            let (draft, key) = prepare(key, file)?;
            let rt = runtime()?;
            rt.block_on(publish_object(o, &draft, &key))
        }
    }
}

/// Read and validate the draft and the signing key before anything is stored.
fn prepare(key_path: &Path, file: &Path) -> Result<(Draft, SecretKey)> {
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
    let key_text = std::fs::read_to_string(key_path).map_err(|e| {
        Error::io(
            format!("reading the signing key {}", key_path.display()),
            &e,
        )
    })?;
    Ok((draft, SecretKey::parse(&key_text)?))
}

/// Version `n` of `draft`: the document, its bytes and their signature.
fn sign(draft: &Draft, key: &SecretKey, n: u64) -> Result<(ConsoleContent, Vec<u8>, String)> {
    let doc = draft.clone().stamp(n, crate::site::now_rfc3339());
    doc.validate()?;
    let bytes = doc.to_bytes();
    let sha = crate::hashing::sha256_hex(&bytes);
    let signature = key.sign(&bytes, &trusted_comment(n, &sha))?;
    Ok((doc, bytes, signature))
}

/// Publishers racing for one number: at most this many are tried before giving up.
const MAX_NUMBER_ATTEMPTS: u64 = 100;

async fn publish_object(
    o: &ObjectContent,
    draft: &Draft,
    key: &SecretKey,
) -> Result<ConsoleVersion> {
    let mut next = object_versions(o).await?.last().copied().unwrap_or(0) + 1;
    for _ in 0..MAX_NUMBER_ATTEMPTS {
        let (_, bytes, signature) = sign(draft, key, next)?;
        // The create-only PUT of the document is what claims the number.
        if o.put_create(&object_key(next, DOCUMENT_FILE), bytes.clone())
            .await?
        {
            o.put_bytes(&object_key(next, SIGNATURE_FILE), signature.into_bytes())
                .await?;
            return describe(next, &bytes);
        }
        next += 1;
    }
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "{}/{CONSOLE_DIR}: no free content_version after {MAX_NUMBER_ATTEMPTS} attempts (other publishers are running)",
            o.describe()
        ),
    ))
}

fn publish_folder(store: &Store, key_path: &Path, file: &Path) -> Result<ConsoleVersion> {
    let (draft, key) = prepare(key_path, file)?;
    let root = store.root();
    let _lock = StoreLock::take(store)?;
    let next = versions(root)?.last().copied().unwrap_or(0) + 1;
    let (_, bytes, signature) = sign(&draft, &key, next)?;

    mkdirs(&store.staging_dir())?;
    mkdirs(&console_dir(root))?;
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
    let dest = console_dir(root).join(next.to_string());
    std::fs::rename(&stage, &dest).map_err(|e| {
        Error::io(
            format!("moving {} into {}", stage.display(), dest.display()),
            &e,
        )
    })?;
    crate::fsutil::sync_dir(&console_dir(root));
    describe(next, &bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
}

/// The newest version's bytes, read from the content store (small; read per request so a
/// new publication is served at once without restarting the service).
async fn newest(state: &Arc<AppState>) -> std::result::Result<(Vec<u8>, Vec<u8>), ApiFailure> {
    let found = match &state.content {
        Content::Folder(root) => {
            let root = root.clone();
            tokio::task::spawn_blocking(move || -> Result<Option<(Vec<u8>, Vec<u8>)>> {
                match versions(&root)?.last() {
                    None => Ok(None),
                    Some(&n) => read_version(&root, n).map(Some),
                }
            })
            .await
            .map_err(|e| {
                ApiFailure::internal(&Error::internal(format!("reading console content: {e}")))
            })?
        }
        Content::Object(o) => newest_object(o).await,
    }
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
