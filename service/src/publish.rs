//! `sct-service keygen` and `sct-service publish`: creating a store and turning a folder
//! of content into a signed, recorded update pack.
//!
//! Publishing is crash-safe: content is copied (and hashed while copying, so the digest
//! is of exactly the stored bytes) into `staging/<guid>/`, the manifest is written and
//! signed there, the folder is renamed into `packs/<guid>/`, and only then is the pack
//! recorded in the catalog, in one transaction. Until that row exists nothing serves,
//! lists or offers the pack; the next publish removes leftovers of a killed one.

use super::catalog::{self, duplicate_error, Catalog, CatalogPack, CatalogUrl, SqliteCatalog};
use super::content::{pack_key, Content, ContentUrl, ObjectContent};
use super::{mkdirs, Store};
use crate::api::PackType;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{safe_relative_path, sync_dir, AtomicFile};
use crate::hashing::HashingWriter;
use crate::pack::manifest::{
    PackFile, PackManifest, Publisher, CONTENT_DIR, MANIFEST_FILE, PACK_FORMAT_VERSION,
    SIGNATURE_FILE,
};
use crate::signing::SecretKey;
use crate::version::SiteVersion;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default `--publisher-name`.
pub const DEFAULT_PUBLISHER_NAME: &str = "ServiceConnection reference update service";

/// Test hook: when set to a file path, `publish` waits (after staging, before the pack
/// becomes visible) until that file exists, so a test can kill it at that moment.
pub const PAUSE_ENV: &str = "SCT_TEST_PAUSE_PUBLISH";
/// Test hook: where [`PAUSE_ENV`] pauses: `staged` (default: before the rename into
/// `packs/`) or `renamed` (after the rename, before the catalog row).
pub const PAUSE_AT_ENV: &str = "SCT_TEST_PAUSE_PUBLISH_AT";

/// Create the store at `root`: the folder, the catalog, `publisher.key` (0600) and
/// `publisher.pub`. Refuses a store that already has a key. Returns the public key.
pub fn keygen(root: &Path) -> Result<crate::signing::PublicKey> {
    let store = Store::at(root);
    // publisher.pub alone counts too: its key may be kept offline, and sites trust it.
    for existing in [store.secret_key_path(), store.public_key_path()] {
        if existing.symlink_metadata().is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} already exists; refusing to replace the signing key that sites trust",
                    existing.display()
                ),
            ));
        }
    }
    mkdirs(root)?;
    if !store.catalog_path().exists() {
        SqliteCatalog::create(&store.catalog_path())?;
    } else {
        SqliteCatalog::open(&store.catalog_path())?;
    }
    let key = SecretKey::generate()?;
    // Owner-only from the moment the file exists (0600, or on Windows a protected DACL
    // with the current user alone), and the rename keeps it.
    let mut f = AtomicFile::create_private(&store.secret_key_path(), false)?;
    f.write_all(key.to_file_text()?.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", store.secret_key_path().display()), &e))?;
    f.commit()?;
    // Public: the mode (or inherited ACL) every output gets.
    let mut p = AtomicFile::create(&store.public_key_path(), false)?;
    p.write_all(key.public_key().to_file_text().as_bytes())
        .map_err(|e| Error::io(format!("writing {}", store.public_key_path().display()), &e))?;
    p.commit()?;
    for d in [store.packs_dir(), store.staging_dir(), store.uploads_dir()] {
        mkdirs(&d)?;
    }
    Ok(key.public_key().clone())
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub name: String,
    pub version: SiteVersion,
    pub pack_type: PackType,
    pub min_site_version: SiteVersion,
    pub max_site_version: Option<SiteVersion>,
    /// Empty: every hierarchy.
    pub hierarchies: Vec<uuid::Uuid>,
    pub publisher_name: String,
    pub content_dir: PathBuf,
}

/// The files of a content folder: (relative `/` path, absolute path), sorted by path.
/// Refuses symbolic links, special files, non-UTF-8 or unsafe names, and an empty folder.
pub fn scan_content(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = dir
        .symlink_metadata()
        .map_err(|e| Error::io(format!("content folder {}", dir.display()), &e))?;
    if meta.file_type().is_symlink() {
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!(
                "content folder {} is a symbolic link; links are never followed",
                dir.display()
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(Error::invalid_argument(format!(
            "content {} is not a folder",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&abs)
            .map_err(|e| Error::io(format!("reading {}", abs.display()), &e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", abs.display()), &e))?;
            let path = entry.path();
            let name = entry.file_name().into_string().map_err(|n| {
                Error::new(
                    ErrorKind::UnsafePath,
                    format!("{}: the name {n:?} is not UTF-8", abs.display()),
                )
            })?;
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            safe_relative_path(&child_rel)
                .map_err(|e| e.context(format!("content folder {}", dir.display())))?;
            let ft = entry
                .file_type()
                .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
            if ft.is_symlink() {
                return Err(Error::new(
                    ErrorKind::UnsafePath,
                    format!(
                        "{} is a symbolic link; a pack holds regular files only",
                        path.display()
                    ),
                ));
            } else if ft.is_dir() {
                stack.push((path, child_rel));
            } else if ft.is_file() {
                out.push((child_rel, path));
            } else {
                return Err(Error::invalid_argument(format!(
                    "{} is not a regular file; a pack holds regular files only",
                    path.display()
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::invalid_argument(format!(
            "content folder {} holds no files; an update pack needs content",
            dir.display()
        )));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Sites may live on case-insensitive file systems (Windows): two names that differ
    // only by case (`A.bin` beside `a.bin`, or `Docs/x` beside `docs/y`) would be one
    // file or folder there.
    if let Some((other, rel)) = crate::fsutil::case_collision(out.iter().map(|(r, _)| r.as_str())) {
        return Err(Error::invalid_argument(format!(
            "content folder {} has both '{other}' and '{rel}'; names must differ by more than case",
            dir.display()
        )));
    }
    Ok(out)
}

/// SHA-256 over the sorted `path\tsize\tsha256\n` lines: equal content, equal digest.
pub fn content_digest(files: &[PackFile]) -> String {
    let mut sorted: Vec<&PackFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut text = String::new();
    for f in sorted {
        text.push_str(&format!("{}\t{}\t{}\n", f.path, f.size, f.sha256));
    }
    crate::hashing::sha256_hex(text.as_bytes())
}

/// An exclusive lock on the store for the length of a publish.
pub(super) struct StoreLock(std::fs::File);

impl StoreLock {
    pub(super) fn take(store: &Store) -> Result<StoreLock> {
        use fs4::fs_std::FileExt;
        let path = store.root().join(super::LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
        f.lock_exclusive()
            .map_err(|e| Error::io(format!("locking {}", path.display()), &e))?;
        Ok(StoreLock(f))
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        use fs4::fs_std::FileExt;
        let _ = FileExt::unlock(&self.0);
    }
}

/// Remove what killed publishes left: everything in `staging/`, and folders in `packs/`
/// that the catalog does not know. Runs under the store lock only.
fn sweep_leftovers(store: &Store, catalog: &dyn Catalog) -> Result<()> {
    if let Ok(rd) = std::fs::read_dir(store.staging_dir()) {
        for e in rd.flatten() {
            let _ = remove_any(&e.path());
        }
    }
    if let Ok(rd) = std::fs::read_dir(store.packs_dir()) {
        for e in rd.flatten() {
            let name = e.file_name();
            let known = match name.to_str().and_then(|n| n.parse::<uuid::Uuid>().ok()) {
                Some(id) => catalog.get_pack(&id)?.is_some(),
                None => false,
            };
            if !known {
                let _ = remove_any(&e.path());
            }
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    }
}

/// Removes a staging folder, or a pack's objects, unless disarmed.
enum Cleanup {
    Dir(Option<PathBuf>),
    Objects(Option<(Arc<ObjectContent>, String)>),
}
impl Cleanup {
    fn disarm(&mut self) {
        match self {
            Cleanup::Dir(d) => *d = None,
            Cleanup::Objects(o) => *o = None,
        }
    }
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Dir(d) => {
                if let Some(p) = d.take() {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
            Cleanup::Objects(o) => {
                if let Some((o, prefix)) = o.take() {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        if let Err(e) = rt.block_on(o.delete_prefix(&prefix)) {
                            eprintln!("sct-service: could not remove {prefix}: {e}");
                        }
                    }
                }
            }
        }
    }
}

fn pause_point(at: &str) {
    let Some(file) = std::env::var_os(PAUSE_ENV) else {
        return;
    };
    let want = std::env::var(PAUSE_AT_ENV).unwrap_or_else(|_| "staged".into());
    if want != at {
        return;
    }
    eprintln!(
        "sct-service: paused at '{at}' until {} exists",
        Path::new(&file).display()
    );
    while !Path::new(&file).exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Publish `req` into the store at `root` with its own catalog and key; returns the
/// recorded pack.
pub fn publish(root: &Path, req: &PublishRequest) -> Result<CatalogPack> {
    let store = Store::open(root)?;
    publish_to(
        &store,
        &CatalogUrl::Sqlite(store.catalog_path()),
        &store.secret_key_path(),
        None,
        req,
    )
}

/// Publish `req` with its row in `catalog`, signed with the minisign secret key in
/// `key_file` (which a serving replica never needs), its content, manifest and signature
/// in `content` (default: the store folder `store`, whose `.lock` serialises publishes
/// from this machine).
pub fn publish_to(
    store: &Store,
    catalog: &CatalogUrl,
    key_file: &Path,
    content: Option<&ContentUrl>,
    req: &PublishRequest,
) -> Result<CatalogPack> {
    let content = Content::open(content, store.root())?;
    if req.name.trim().is_empty() || req.name.chars().any(char::is_control) {
        return Err(Error::invalid_argument(
            "the pack name must be non-empty text without control characters",
        ));
    }
    if let Some(max) = &req.max_site_version {
        if max < &req.min_site_version {
            return Err(Error::invalid_argument(format!(
                "--max-site-version {max} is below --min-site-version {}",
                req.min_site_version
            )));
        }
    }
    let mut hierarchies = req.hierarchies.clone();
    hierarchies.sort();
    hierarchies.dedup();
    let files = scan_content(&req.content_dir)?;
    let key_text = std::fs::read_to_string(key_file).map_err(|e| {
        Error::io(
            format!("reading the signing key {}", key_file.display()),
            &e,
        )
    })?;
    let key = SecretKey::parse(&key_text)?;

    let _lock = StoreLock::take(store)?;
    let catalog = catalog::open(catalog)?;
    let id = uuid::Uuid::new_v4();
    let mut pack_files = Vec::with_capacity(files.len());
    // Content first: into a staging folder, or straight to the pack's keys in the object
    // store (nothing refers to them until the catalog row exists).
    let (target, mut cleanup) = match &content {
        Content::Folder(root) => {
            let cstore = Store::at(root);
            sweep_leftovers(&cstore, catalog.as_ref())?;
            mkdirs(&cstore.staging_dir())?;
            mkdirs(&cstore.packs_dir())?;
            let stage = cstore.staging_dir().join(id.to_string());
            let cleanup = Cleanup::Dir(Some(stage.clone()));
            let content_root = stage.join(CONTENT_DIR);
            mkdirs(&content_root)?;
            for (rel, src) in &files {
                pack_files.push(copy_hashing(src, &content_root, rel)?);
            }
            (Target::Folder { cstore, stage }, cleanup)
        }
        Content::Object(o) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the runtime", &e))?;
            // The catalog is synchronous (its PostgreSQL client must not run inside the
            // runtime): ask it between the object store's asynchronous steps.
            let mut unknown = Vec::new();
            for id in rt.block_on(o.pack_ids())? {
                if catalog.get_pack(&id)?.is_none() {
                    unknown.push(id);
                }
            }
            rt.block_on(sweep_objects(o, &unknown))?;
            let cleanup =
                Cleanup::Objects(Some((o.clone(), format!("{}/{id}/", crate::PACKS_DIR))));
            for (rel, src) in &files {
                pack_files.push(rt.block_on(upload_hashing(o, &id, src, rel))?);
            }
            (Target::Object { o: o.clone(), rt }, cleanup)
        }
    };
    let digest = content_digest(&pack_files);
    if let Some(existing) = catalog.find_duplicate(&req.name, &req.version, &digest)? {
        return Err(duplicate_error(&existing));
    }
    let manifest = PackManifest {
        format_version: PACK_FORMAT_VERSION,
        id,
        name: req.name.clone(),
        version: req.version.clone(),
        pack_type: req.pack_type,
        min_site_version: req.min_site_version.clone(),
        max_site_version: req.max_site_version.clone(),
        hierarchies: hierarchies.clone(),
        publisher: Publisher {
            name: req.publisher_name.clone(),
            key_id: key.public_key().key_id(),
        },
        created: crate::site::now_rfc3339(),
        files: pack_files,
    };
    manifest.validate()?;
    let bytes = manifest.to_bytes();
    let signature = key.sign(
        &bytes,
        &format!(
            "package:{id} name:{} version:{} type:{}",
            req.name.replace(|c: char| c.is_control(), " "),
            req.version,
            req.pack_type.as_str()
        ),
    )?;
    match &target {
        Target::Folder { cstore, stage } => {
            write_synced(&stage.join(MANIFEST_FILE), &bytes)?;
            write_synced(&stage.join(SIGNATURE_FILE), signature.as_bytes())?;
            sync_dir(stage);

            pause_point("staged");
            let dest = cstore.pack_dir(&id);
            std::fs::rename(stage, &dest).map_err(|e| {
                Error::io(
                    format!("moving {} into {}", stage.display(), dest.display()),
                    &e,
                )
            })?;
            cleanup = Cleanup::Dir(Some(dest.clone()));
            sync_dir(&cstore.packs_dir());
            sync_dir(&cstore.staging_dir());
            pause_point("renamed");
        }
        Target::Object { o, rt } => {
            pause_point("staged");
            rt.block_on(o.put_bytes(&pack_key(&id, MANIFEST_FILE), bytes.clone()))?;
            rt.block_on(o.put_bytes(
                &pack_key(&id, SIGNATURE_FILE),
                signature.as_bytes().to_vec(),
            ))?;
            pause_point("renamed");
        }
    }

    let record = CatalogPack {
        id,
        name: req.name.clone(),
        version: req.version.clone(),
        pack_type: req.pack_type,
        min_site_version: req.min_site_version.clone(),
        max_site_version: req.max_site_version.clone(),
        hierarchies,
        content_digest: digest,
        manifest_sha256: crate::hashing::sha256_hex(&bytes),
        size: manifest.total_size(),
        file_count: manifest.files.len() as u64,
        publisher_name: req.publisher_name.clone(),
        published: manifest.created.clone(),
    };
    catalog.insert_pack(&record)?;
    cleanup.disarm();
    Ok(record)
}

/// Where a publish in progress puts its pack.
enum Target {
    Folder {
        cstore: Store,
        stage: PathBuf,
    },
    Object {
        o: Arc<ObjectContent>,
        rt: tokio::runtime::Runtime,
    },
}

/// Stream `src` to the pack's `content/rel` object, hashing the bytes as they are sent.
async fn upload_hashing(
    o: &ObjectContent,
    id: &uuid::Uuid,
    src: &Path,
    rel: &str,
) -> Result<PackFile> {
    let input = tokio::fs::File::open(src)
        .await
        .map_err(|e| Error::io(format!("reading {}", src.display()), &e))?;
    let (size, sha256) = o
        .put_stream(&pack_key(id, &format!("{CONTENT_DIR}/{rel}")), input)
        .await?;
    Ok(PackFile {
        path: rel.to_string(),
        size,
        sha256,
    })
}

/// How old an unlisted pack's objects must be before a publish removes them: a younger
/// one may be another publishing machine's publish in progress.
pub const ORPHAN_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Remove the objects of packs that killed publishes left (`unknown` to the catalog) and
/// older than [`ORPHAN_GRACE`]. They are never visible, so this only reclaims space.
async fn sweep_objects(o: &ObjectContent, unknown: &[uuid::Uuid]) -> Result<()> {
    let cutoff = chrono::Utc::now() - ORPHAN_GRACE;
    for id in unknown {
        let prefix = format!("{}/{id}/", crate::PACKS_DIR);
        if o.newest(&prefix).await?.is_some_and(|t| t < cutoff) {
            o.delete_prefix(&prefix).await?;
        }
    }
    Ok(())
}

/// Copy `src` to `content_root/rel`, hashing the bytes as they are written.
fn copy_hashing(src: &Path, content_root: &Path, rel: &str) -> Result<PackFile> {
    let dest = content_root.join(safe_relative_path(rel)?);
    if let Some(parent) = dest.parent() {
        mkdirs(parent)?;
    }
    // Scanned as a regular file; opened without following a link (symbolic link or
    // junction) that may have replaced it since.
    let mut input = crate::fsutil::open_no_follow(src).map_err(|e| {
        if crate::fsutil::is_link_refusal(&e) {
            Error::new(
                ErrorKind::UnsafePath,
                format!(
                    "{} is a symbolic link; a pack holds regular files only",
                    src.display()
                ),
            )
        } else {
            Error::io(format!("reading {}", src.display()), &e)
        }
    })?;
    let out = std::fs::File::create(&dest)
        .map_err(|e| Error::io(format!("writing {}", dest.display()), &e))?;
    let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(256 * 1024, out));
    std::io::copy(&mut input, &mut w)
        .map_err(|e| Error::io(format!("copying {}", src.display()), &e))?;
    let (buf, size, sha256) = w.finish();
    let out = buf
        .into_inner()
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error()))?;
    out.sync_all()
        .map_err(|e| Error::io(format!("writing {}", dest.display()), &e))?;
    Ok(PackFile {
        path: rel.to_string(),
        size,
        sha256,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
}
