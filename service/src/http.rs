//! HTTP handlers of the update service: routing, bearer-token check, JSON errors, and
//! downloads (manifest, signature, content files) with `Range`, `If-Range`, strong ETags
//! and `HEAD`. Files are streamed from disk; nothing is held whole in memory but the
//! (size-limited) manifest and signature. See [`crate::api`] for the wire contract.

use super::catalog::{Catalog, SqliteCatalog};
use super::content::{pack_key, Content, ObjectContent};
use super::range::{decide, RangeAnswer};
use super::Store;
use crate::api::{ApiError, ApiErrorBody, Health, API_PREFIX};
use crate::error::{Error, ErrorKind};
use crate::fsutil::{ensure_no_symlinks, safe_relative_path};
use crate::pack::manifest::{
    PackFile, PackManifest, CONTENT_DIR, MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Version of the HTTP API (`/v1`).
pub const API_VERSION: u32 = 1;
/// Bytes per chunk when streaming a file. Each chunk is one hand-off to tokio's blocking
/// pool; at 64 KiB those hand-offs made serving a 1 GiB pack cost more
/// CPU than the client's download, hashing and write together (`/proc/<pid>/stat`
/// around one download). 256 KiB cuts them by four at about 0.5 MiB in flight per
/// download.
const STREAM_CHUNK: usize = 256 * 1024;
/// Bytes read with the opening of a file, in the same hand-off: a file up to this size
/// (most of a pack's files) is served with one hand-off instead of one plus one per
/// [`STREAM_CHUNK`].
const FIRST_CHUNK: usize = 1024 * 1024;
/// Bytes per mapped window ([`ZeroCopy`]): each is a mapping and an unmapping (and a
/// hand-off to the blocking pool where its pages are not all cached), and holds no buffer
/// of the service's.
const MAPPED_CHUNK: usize = 1024 * 1024;

/// A request extension the server adds where nothing in the process reads a response body
/// after the handler (HTTP/1 on plain TCP: hyper hands the body's buffers to `writev`).
/// There, on Linux, a stored file is sent from windows mapped over the page cache instead
/// of being read into buffers (`crate::mapped`, which explains why only there). Requests
/// without it (TLS, or the router called directly) read into buffers.
#[derive(Clone, Copy, Debug)]
pub struct ZeroCopy;

/// Shared state of a running service.
pub struct AppState {
    pub store: Store,
    /// Shared by all requests; each call is its own transaction.
    pub catalog: Arc<dyn Catalog>,
    /// SHA-256 of the configured bearer token (the token itself is not kept).
    token_digest: Option<[u8; 32]>,
    pub max_upload_bytes: u64,
    /// Published packs are immutable, so what was read once is kept.
    packs: RwLock<HashMap<uuid::Uuid, Arc<ServedPack>>>,
    /// Where content, manifests, signatures and uploads live (`--content`).
    pub content: Content,
    /// `--content-redirect`: answer content requests with a 307 to a presigned URL valid
    /// this long (object stores only).
    pub content_redirect: Option<std::time::Duration>,
}

impl AppState {
    /// State over the store's own SQLite catalog.
    pub fn new(store: Store, token: Option<&str>, max_upload_bytes: u64) -> crate::Result<Self> {
        let catalog = Arc::new(SqliteCatalog::open(&store.catalog_path())?);
        Ok(Self::with_catalog(store, catalog, token, max_upload_bytes))
    }

    /// State over any catalog (`--catalog`).
    pub fn with_catalog(
        store: Store,
        catalog: Arc<dyn Catalog>,
        token: Option<&str>,
        max_upload_bytes: u64,
    ) -> Self {
        AppState {
            content: Content::Folder(store.root().to_path_buf()),
            content_redirect: None,
            store,
            catalog,
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            max_upload_bytes,
            packs: RwLock::new(HashMap::new()),
        }
    }

    /// Serve content from `content` (default: the store folder); with `redirect`, answer
    /// content requests with a 307 to a presigned URL valid that long.
    pub fn with_content(
        mut self,
        content: Content,
        redirect: Option<std::time::Duration>,
    ) -> crate::Result<Self> {
        if redirect.is_some() && content.object().is_none() {
            return Err(Error::invalid_argument(
                "--content-redirect needs an object store (--content s3://BUCKET/PREFIX): a folder has no URLs to redirect to",
            ));
        }
        self.content = content;
        self.content_redirect = redirect;
        Ok(self)
    }
}

/// A published pack as served: its exact manifest bytes, signature and file index.
pub struct ServedPack {
    id: uuid::Uuid,
    dir: PathBuf,
    manifest_bytes: Bytes,
    manifest_etag: String,
    signature: Bytes,
    signature_etag: String,
    files: HashMap<String, PackFile>,
}

/// An error answer: status, stable code, one clear line (the [`ApiError`] body).
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 416: the representation length, sent as `Content-Range: bytes */len`.
    range_len: Option<u64>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            code,
            message: message.into(),
            range_len: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(err: &Error) -> Self {
        eprintln!("sct-service: internal error: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed to answer; see its log",
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: ApiErrorBody {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sct-service\""),
            );
        }
        if let Some(len) = self.range_len {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        res
    }
}

/// The service's router.
pub fn router(state: Arc<AppState>) -> Router {
    let v = |p: &str| format!("{API_PREFIX}{p}");
    Router::new()
        .route(&v("/health"), get(health))
        .route(&v("/version"), get(health))
        .route(&v("/ready"), get(ready))
        .route(&v("/usage"), post(super::upload::upload))
        .route(&v("/packages/{id}/manifest.json"), get(manifest))
        .route(&v("/packages/{id}/manifest.json.minisig"), get(signature))
        .route(&v("/packages/{id}/content/{*path}"), get(content))
        .route(
            &v(super::console::DOCUMENT_ROUTE),
            get(super::console::document),
        )
        .route(
            &v(super::console::SIGNATURE_ROUTE),
            get(super::console::signature),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        service: "sct-service".into(),
        version: crate::VERSION.into(),
        api_version: API_VERSION,
    })
}

/// How long `/v1/ready` waits for the catalog and the content store.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/ready`, for load balancers: 200 only when the catalog answers a query and the
/// content store can be read; otherwise 503 naming what failed. (`/v1/health` is
/// liveness: it answers as long as the process does.)
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ApiFailure> {
    let unavailable = |why: String| {
        eprintln!("sct-service: not ready: {why}");
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("this replica is not ready: {why}"),
        )
    };
    // Each check has its own deadline, so a 503 names the store that did not answer.
    let st = state.clone();
    let catalog = tokio::task::spawn_blocking(move || st.catalog.ping());
    match tokio::time::timeout(READY_TIMEOUT, catalog).await {
        Err(_) => {
            return Err(unavailable(format!(
                "the catalog {} did not answer within {}s",
                state.catalog.describe(),
                READY_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(unavailable(format!("the catalog check failed: {e}"))),
        Ok(Ok(Err(e))) => return Err(unavailable(e.to_string())),
        Ok(Ok(Ok(()))) => {}
    }
    match tokio::time::timeout(READY_TIMEOUT, state.content.ping()).await {
        Err(_) => Err(unavailable(format!(
            "the content store {} did not answer within {}s",
            state.content.describe(),
            READY_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Ok(Ok(())) => Ok(Json(Health {
            status: "ready".into(),
            service: "sct-service".into(),
            version: crate::VERSION.into(),
            api_version: API_VERSION,
        })),
    }
}

async fn not_found() -> ApiFailure {
    ApiFailure::not_found("no such resource on this service")
}

async fn method_not_allowed() -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support that method",
    )
}

/// One line per request on stderr: method, path (escaped, shortened) and status.
/// Headers are never logged (they may hold the token).
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let mut path: String = req.uri().path().escape_debug().collect();
    if path.len() > 200 {
        let mut cut = 200;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push('…');
    }
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let _ = write_line(
        &mut std::io::stderr().lock(),
        format_args!("sct-service: {method} {path} {status}"),
    );
    res
}

/// Write `line` and a newline to `out` in one `write` call. `eprintln!` hands unbuffered
/// stderr each piece of its format on its own: seven `write` calls per request line, each
/// taking the log file's lock, with stderr's lock held across them while the other
/// runtime threads wait for it.
fn write_line(out: &mut impl std::io::Write, line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut text = std::fmt::format(line);
    text.push('\n');
    out.write_all(text.as_bytes())
}

/// Bearer-token check for everything but health and version (constant-time comparison of
/// SHA-256 digests, so neither the content nor the length of the token leaks by timing).
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(want) = &state.token_digest else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == format!("{API_PREFIX}/health")
        || path == format!("{API_PREFIX}/version")
        || path == format!("{API_PREFIX}/ready")
    {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(given) = given else {
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this service requires a bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
    };
    let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let diff = got
        .iter()
        .zip(want.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid for this service",
        )
        .into_response();
    }
    next.run(req).await
}

/// Parse the package GUID from a URL segment.
fn package_id(raw: &str) -> Result<uuid::Uuid, ApiFailure> {
    // Only the canonical hyphenated form: one URL per pack.
    match uuid::Uuid::parse_str(raw) {
        Ok(id) if raw.len() == 36 => Ok(id),
        _ => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_package_id",
            format!(
                "'{}' is not a package GUID",
                raw.chars().take(80).collect::<String>().escape_debug()
            ),
        )),
    }
}

/// The pack `id`, read from the store the first time it is asked for.
async fn load_pack(state: &Arc<AppState>, id: uuid::Uuid) -> Result<Arc<ServedPack>, ApiFailure> {
    if let Some(p) = state.packs.read().expect("pack cache").get(&id) {
        return Ok(p.clone());
    }
    let st = state.clone();
    let handle = tokio::runtime::Handle::current();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Option<ServedPack>, Error> {
        let record = st.catalog.get_pack(&id)?;
        let Some(record) = record else {
            return Ok(None);
        };
        let dir = match &st.content {
            Content::Folder(root) => Store::at(root).pack_dir(&id),
            Content::Object(_) => PathBuf::new(),
        };
        let read = |name: &str| -> Result<Vec<u8>, Error> {
            if let Some(o) = st.content.object() {
                return handle.block_on(o.read_small(&pack_key(&id, name), MAX_MANIFEST_BYTES));
            }
            let p = dir.join(name);
            let meta = p
                .symlink_metadata()
                .map_err(|e| Error::io(format!("reading {}", p.display()), &e))?;
            if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
                return Err(Error::new(
                    ErrorKind::IntegrityMismatch,
                    format!("{} is not a regular file of a sane size", p.display()),
                ));
            }
            std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), &e))
        };
        let manifest_bytes = read(MANIFEST_FILE)?;
        let sha = crate::hashing::sha256_hex(&manifest_bytes);
        if sha != record.manifest_sha256 {
            return Err(Error::new(
                ErrorKind::IntegrityMismatch,
                format!("the stored manifest of pack {id} does not match the catalog"),
            ));
        }
        let manifest = PackManifest::from_bytes(&manifest_bytes)?;
        let signature = read(SIGNATURE_FILE)?;
        let signature_etag = format!("\"{}\"", crate::hashing::sha256_hex(&signature));
        Ok(Some(ServedPack {
            id,
            dir,
            manifest_etag: format!("\"{sha}\""),
            manifest_bytes: Bytes::from(manifest_bytes),
            signature: Bytes::from(signature),
            signature_etag,
            files: manifest
                .files
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect(),
        }))
    })
    .await
    .map_err(|e| ApiFailure::internal(&Error::internal(format!("loading a pack: {e}"))))?
    .map_err(|e| ApiFailure::internal(&e))?;
    let Some(pack) = loaded else {
        return Err(ApiFailure::not_found(format!(
            "no package {id} is published here"
        )));
    };
    let pack = Arc::new(pack);
    state
        .packs
        .write()
        .expect("pack cache")
        .insert(id, pack.clone());
    Ok(pack)
}

type IdPath = Result<UrlPath<String>, axum::extract::rejection::PathRejection>;
type IdFilePath = Result<UrlPath<(String, String)>, axum::extract::rejection::PathRejection>;

fn bad_url(e: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        "bad_path",
        format!("the URL path is not valid: {e}"),
    )
}

async fn manifest(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    id: IdPath,
) -> Result<Response, ApiFailure> {
    let UrlPath(id) = id.map_err(bad_url)?;
    let pack = load_pack(&state, package_id(&id)?).await?;
    Ok(send(
        &method,
        &headers,
        &pack.manifest_etag,
        "application/json",
        Source::Memory(pack.manifest_bytes.clone()),
    )
    .await)
}

async fn signature(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    id: IdPath,
) -> Result<Response, ApiFailure> {
    let UrlPath(id) = id.map_err(bad_url)?;
    let pack = load_pack(&state, package_id(&id)?).await?;
    Ok(send(
        &method,
        &headers,
        &pack.signature_etag,
        "text/plain; charset=utf-8",
        Source::Memory(pack.signature.clone()),
    )
    .await)
}

async fn content(
    State(state): State<Arc<AppState>>,
    zero_copy: Option<axum::Extension<ZeroCopy>>,
    method: Method,
    headers: HeaderMap,
    params: IdFilePath,
) -> Result<Response, ApiFailure> {
    let UrlPath((id, path)) = params.map_err(bad_url)?;
    let id = package_id(&id)?;
    // Validate before touching the store: `..`, absolute, backslashes, control characters.
    let rel = safe_relative_path(&path).map_err(|e| {
        ApiFailure::new(StatusCode::BAD_REQUEST, "bad_path", e.message().to_string())
    })?;
    let pack = load_pack(&state, id).await?;
    // Only files the signed manifest lists are ever served.
    let Some(file) = pack.files.get(&path) else {
        return Err(ApiFailure::not_found(format!(
            "package {id} has no file '{}'",
            path.escape_debug()
        )));
    };
    let etag = format!("\"{}\"", file.sha256);
    let src = if let Some(o) = state.content.object() {
        let key = pack_key(&pack.id, &format!("{CONTENT_DIR}/{path}"));
        // HEAD is answered here: a presigned URL is signed for GET only.
        if let Some(ttl) = state.content_redirect.filter(|_| method == Method::GET) {
            return redirect(o, &key, ttl, &etag).await;
        }
        Source::Object(o.clone(), key, file.size)
    } else {
        let root = pack.dir.join(CONTENT_DIR);
        ensure_no_symlinks(&root, &rel).map_err(|e| ApiFailure::internal(&e))?;
        Source::File(root.join(&rel), file.size, zero_copy.is_some())
    };
    Ok(send(&method, &headers, &etag, "application/octet-stream", src).await)
}

/// `--content-redirect`: a 307 to a presigned URL of the object. 307 keeps the method
/// (GET or HEAD) and the client's `Range`; the URL carries its own short-lived signature,
/// so no token is needed (or sent) there.
async fn redirect(
    o: &ObjectContent,
    key: &str,
    ttl: std::time::Duration,
    etag: &str,
) -> Result<Response, ApiFailure> {
    let url = o
        .presign(key, ttl)
        .await
        .map_err(|e| ApiFailure::internal(&e))?;
    Ok(Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, url.as_str())
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::empty())
        .expect("valid response"))
}

pub(super) enum Source {
    Memory(Bytes),
    /// A file, the size the manifest promises, and whether its bytes may go to the socket
    /// straight from the page cache ([`ZeroCopy`]).
    File(PathBuf, u64, bool),
    /// An object (store, key) and the size the manifest promises.
    Object(Arc<ObjectContent>, String, u64),
}

/// Answer a download: 304 on a matching `If-None-Match`, 206/416 for `Range`, else 200;
/// `HEAD` gets the same headers without a body.
pub(super) async fn send(
    method: &Method,
    headers: &HeaderMap,
    etag: &str,
    ctype: &'static str,
    src: Source,
) -> Response {
    let len = match &src {
        Source::Memory(b) => b.len() as u64,
        Source::File(_, size, _) | Source::Object(_, _, size) => *size,
    };
    let hv = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mut base = Response::builder()
        .header(header::ETAG, etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(inm) = hv(header::IF_NONE_MATCH) {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return base
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("valid response");
        }
    }
    let (status, start, count) = match decide(hv(header::RANGE), hv(header::IF_RANGE), etag, len) {
        RangeAnswer::Full => (StatusCode::OK, 0, len),
        RangeAnswer::Partial { start, end } => {
            base = base.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut f = ApiFailure::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the requested range is outside the {len} bytes of this file"),
            );
            f.range_len = Some(len);
            let mut res = f.into_response();
            res.headers_mut()
                .insert(header::ETAG, HeaderValue::from_str(etag).expect("etag"));
            res.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return res;
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match src {
            Source::Memory(b) => Body::from(b.slice(start as usize..(start + count) as usize)),
            Source::File(path, size, zero_copy) => {
                match open_range(&path, size, start, count, zero_copy).await {
                    Ok(body) => body,
                    Err(e) => return ApiFailure::internal(&e).into_response(),
                }
            }
            Source::Object(o, key, size) => match o.body(&key, size, start, count).await {
                Ok(body) => body,
                Err(e) => return ApiFailure::internal(&e).into_response(),
            },
        }
    };
    base.status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .expect("valid response")
}

/// Up to `want` bytes of `f` from its position, read straight into the buffer returned
/// (`read_to_end` fills the spare capacity without zeroing it first). Fewer than `want`
/// (but not none) is the file's end; none where `want` is not zero is an error: the file
/// was cut short since its size was checked.
fn read_chunk(f: &std::fs::File, want: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(want as usize);
    f.take(want).read_to_end(&mut buf)?;
    if buf.is_empty() && want > 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// The next `want` bytes of `f` from `pos`: a mapped window of the page cache where
/// `zero_copy` allows it (cleared, for the rest of the file, where the kernel cannot map
/// it), else read into a buffer from the file's position, which is `pos` whenever
/// `zero_copy` is clear. Blocking.
fn next_chunk(
    f: &std::fs::File,
    pos: u64,
    want: u64,
    zero_copy: &mut bool,
) -> std::io::Result<Bytes> {
    if want == 0 {
        return Ok(Bytes::new());
    }
    #[cfg(target_os = "linux")]
    if *zero_copy {
        match crate::mapped::map(f, pos, want as usize)? {
            crate::mapped::Mapped::Window(w) => return Ok(Bytes::from_owner(w)),
            crate::mapped::Mapped::Unsupported => {
                // Windows do not move the file's position: reading starts from here.
                *zero_copy = false;
                std::io::Seek::seek(&mut &*f, std::io::SeekFrom::Start(pos))?;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        debug_assert!(!*zero_copy, "mapped windows are Linux only");
        let _ = pos; // the file's position, where reading goes on
    }
    read_chunk(f, want).map(Bytes::from)
}

/// Linux: the next `want` (> 0) bytes of `f` from `pos` as a mapped window, where all of
/// them are in the page cache, so that mapping them does not wait for the disk (on a
/// runtime thread); `None` otherwise (the blocking pool maps them, or reports the error).
#[cfg(target_os = "linux")]
fn cached_chunk(f: &std::fs::File, pos: u64, want: u64) -> Option<Bytes> {
    crate::mapped::map_cached(f, pos, want as usize).map(Bytes::from_owner)
}

/// A streaming body of `count` bytes of `path` from `start`; refuses a stored file whose
/// size is not what the manifest says (the store was tampered with).
///
/// Each chunk is read (or mapped, with `zero_copy` on Linux) with `std::fs` on the
/// blocking pool, straight into the buffers that are sent: tokio's `File` reads into a
/// buffer of its own and copies from it (a 1 GiB download cost the service a 1 GiB
/// `memmove`, 9% of its CPU time, `perf record`), and opening, checking the size, seeking
/// and reading the first [`FIRST_CHUNK`] bytes are one hand-off to the pool (which counts
/// when a pack is a thousand small files). With `zero_copy`, a file whose folders and
/// pages are all in the page cache is opened and mapped right on the runtime thread, with
/// no hand-off at all (`crate::mapped` has the numbers).
async fn open_range(
    path: &std::path::Path,
    size: u64,
    start: u64,
    count: u64,
    zero_copy: bool,
) -> Result<Body, Error> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // A stored file whose size is not the manifest's was tampered with.
    let check_size = {
        let shown = shown.clone();
        move |f: &std::fs::File| -> Result<(), Error> {
            let actual = f
                .metadata()
                .map_err(|e| Error::io(format!("reading {shown}"), &e))?
                .len();
            if actual != size {
                return Err(Error::new(
                    ErrorKind::IntegrityMismatch,
                    format!("{shown} is {actual} bytes but its manifest says {size}"),
                ));
            }
            Ok(())
        }
    };
    let what = move |e: &std::io::Error| Error::io(format!("reading {shown}"), e);
    let reading = what.clone();
    let mut zero_copy = zero_copy && cfg!(target_os = "linux");
    let first_len = count.min(FIRST_CHUNK as u64);
    // Where the file's folders and first pages are cached, it is opened and its first
    // window mapped right here: no hand-off to the blocking pool (each costs two thread
    // wake-ups, which add up over a pack of many small files).
    // `Some(Ok)`: open with its first window; `Some(Err)`: open, the window to be mapped
    // on the pool; `None`: all of it on the pool.
    #[cfg(target_os = "linux")]
    let opened = match zero_copy
        .then(|| crate::mapped::open_cached(&path))
        .flatten()
    {
        Some(f) => {
            check_size(&f)?;
            Some(match cached_chunk(&f, start, first_len) {
                Some(first) => Ok((f, first)),
                None => Err(f),
            })
        }
        None => None,
    };
    #[cfg(not(target_os = "linux"))]
    let opened: Option<Result<(std::fs::File, Bytes), std::fs::File>> = None;
    let (f, first, zero_copy) = match opened {
        Some(Ok((f, first))) => (f, first, zero_copy),
        opened => tokio::task::spawn_blocking(move || -> Result<_, Error> {
            use std::io::Seek;
            let mut f = match opened {
                // Opened and its size checked on the runtime thread.
                Some(Err(f)) => f,
                _ => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
                    check_size(&f)?;
                    f
                }
            };
            if start > 0 && !zero_copy {
                f.seek(std::io::SeekFrom::Start(start))
                    .map_err(|e| what(&e))?;
            }
            let first = next_chunk(&f, start, first_len, &mut zero_copy).map_err(|e| what(&e))?;
            Ok((f, first, zero_copy))
        })
        .await
        .map_err(|e| Error::internal(format!("opening a file panicked: {e}")))??,
    };
    let end = start + count;
    let pos = start + first.len() as u64;
    let rest =
        futures_util::stream::try_unfold((f, pos, zero_copy), move |(f, pos, mut zero_copy)| {
            let reading = reading.clone();
            async move {
                if pos == end {
                    return Ok(None);
                }
                let chunk = if zero_copy {
                    MAPPED_CHUNK
                } else {
                    STREAM_CHUNK
                };
                let want = (end - pos).min(chunk as u64);
                #[cfg(target_os = "linux")]
                if zero_copy {
                    if let Some(buf) = cached_chunk(&f, pos, want) {
                        let pos = pos + buf.len() as u64;
                        return Ok(Some((buf, (f, pos, zero_copy))));
                    }
                }
                let (f, got, zero_copy) = tokio::task::spawn_blocking(move || {
                    let r = next_chunk(&f, pos, want, &mut zero_copy);
                    (f, r, zero_copy)
                })
                .await
                .map_err(std::io::Error::other)?;
                let buf = got.map_err(|e| std::io::Error::other(reading(&e).to_string()))?;
                let pos = pos + buf.len() as u64;
                Ok(Some((buf, (f, pos, zero_copy))))
            }
        });
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(first)]);
    let stream = futures_util::StreamExt::chain(first, rest);
    Ok(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    /// A writer that records each `write` call.
    struct Calls(Vec<Vec<u8>>);

    impl std::io::Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A request's log line goes out whole, in one write (`writeln!` makes one per piece of the format).
    #[test]
    fn a_log_line_is_one_write() {
        let (method, path, status) = ("GET", "/v1/packages/x/content/a b", 200);
        let mut out = Calls(Vec::new());
        super::write_line(
            &mut out,
            format_args!("sct-service: {method} {path} {status}"),
        )
        .unwrap();
        assert_eq!(
            out.0,
            vec![b"sct-service: GET /v1/packages/x/content/a b 200\n".to_vec()]
        );
    }
}
