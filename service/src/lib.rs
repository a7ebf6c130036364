//! The reference update service (`sct-service`, SPEC sections 4 and 5): a store of signed
//! update packs with its own SQLite catalog, and the HTTP API that Connect talks to.
//!
//! Its own crate of the workspace, so the library that PowerShell and C callers load
//! (`serviceconnection`) carries no server code; it uses that library's public modules
//! for the wire contract, manifests, signatures, hashing and usage cabs.
//!
//! On-disk store layout (everything the service knows lives under one folder):
//!
//! ```text
//! DIR/
//!   catalog.sqlite            packs and received uploads (this module's catalog, WAL mode)
//!   publisher.key             minisign secret key, unencrypted, mode 0600
//!   publisher.pub             minisign public key: what sites trust
//!   .lock                     held (exclusively) while publishing
//!   packs/<guid>/             one published pack, immutable once recorded:
//!     manifest.json             the exact bytes served and signed
//!     manifest.json.minisig     minisign signature of manifest.json
//!     content/...               the payload files
//!   staging/<guid>/           a publish in progress (never served; cleared by the next publish)
//!   uploads/<hierarchy-id>/<timestamp>-<upload-id>.cab   received usage cabs
//!   uploads/.incoming/        uploads being received (temporary, removed on failure)
//!   console/<version>/        console content, one immutable folder per version (console.rs)
//! ```
//!
//! A pack is visible (listed, offered, served) only once its row is in the catalog; the
//! folder is renamed into `packs/` before that row is written, so a publish killed at any
//! moment leaves at most an unlisted folder that the next publish removes.
//!
//! With `--content s3://BUCKET/PREFIX` the `packs/` and `uploads/` keys live in that
//! bucket instead (see [`content`]); the folder keeps the key and, by default, the catalog.

pub mod catalog;
pub mod console;
pub mod content;
pub mod http;
#[cfg(target_os = "linux")]
mod mapped;
pub mod publish;
pub mod range;
pub mod select;
pub mod server;
pub mod tls;
pub mod upload;

// The library's modules under their own names, so `crate::api::...` reads the same here
// as it does in the library (and paths stay stable across the split).
pub(crate) use serviceconnection::{
    api, error, fsutil, hashing, pack, signing, site, usage, version, Result, VERSION,
};

use crate::error::{Error, ErrorKind};
use std::path::{Path, PathBuf};

pub use catalog::{Catalog, CatalogPack, CatalogUrl, SqliteCatalog, UploadInsert, UploadRecord};
pub use publish::{keygen, publish, PublishRequest};
pub use select::select_packs;
pub use server::{serve, ServeOptions};

pub const CATALOG_FILE: &str = "catalog.sqlite";
pub const SECRET_KEY_FILE: &str = "publisher.key";
pub const PUBLIC_KEY_FILE: &str = "publisher.pub";
pub const LOCK_FILE: &str = ".lock";
pub const PACKS_DIR: &str = "packs";
pub const STAGING_DIR: &str = "staging";
pub const UPLOADS_DIR: &str = "uploads";
pub const INCOMING_DIR: &str = ".incoming";
/// Default `--max-upload-bytes`: usage cabs are small; 256 MiB is generous.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// The paths of a store folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store folder that `keygen` already set up (its catalog present). The secret key
    /// is needed only to publish, so a serving machine may run without it.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        if !root.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "store {} does not exist (create it with `sct-service keygen --store {}`)",
                    root.display(),
                    root.display()
                ),
            ));
        }
        for f in [store.catalog_path()] {
            if !f.is_file() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{} is not a service store: {} is missing (run `sct-service keygen --store {}`)",
                        root.display(),
                        f.display(),
                        root.display()
                    ),
                ));
            }
        }
        Ok(store)
    }

    /// A store folder whose catalog is given separately (`--catalog`): only the folder
    /// must exist.
    pub fn open_folder(root: &Path) -> Result<Store> {
        if !root.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "store {} does not exist (create it with `sct-service keygen --store {}`)",
                    root.display(),
                    root.display()
                ),
            ));
        }
        Ok(Store::at(root))
    }

    /// Paths only, no checks (used by `keygen` before the store exists).
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn catalog_path(&self) -> PathBuf {
        self.root.join(CATALOG_FILE)
    }
    pub fn secret_key_path(&self) -> PathBuf {
        self.root.join(SECRET_KEY_FILE)
    }
    pub fn public_key_path(&self) -> PathBuf {
        self.root.join(PUBLIC_KEY_FILE)
    }
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join(PACKS_DIR)
    }
    pub fn pack_dir(&self, id: &uuid::Uuid) -> PathBuf {
        self.packs_dir().join(id.to_string())
    }
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join(UPLOADS_DIR)
    }
    pub fn incoming_dir(&self) -> PathBuf {
        self.uploads_dir().join(INCOMING_DIR)
    }
}

/// Create a folder (and its parents), mapping the error to one clear line.
pub(crate) fn mkdirs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), &e))
}
