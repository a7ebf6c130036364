//! Update packs for tests, built with the real signing code in the on-drive layout Connect
//! writes: `<root>/<hierarchy-id>/<package-guid>/{manifest.json, manifest.json.minisig,
//! content/...}`. Hostile variants (tampered, traversal, links) are made from these.
#![allow(dead_code)]

use serviceconnection::api::PackType;
use serviceconnection::hashing::sha256_hex;
use serviceconnection::pack::manifest::{
    CONTENT_DIR, MANIFEST_FILE, PACK_FORMAT_VERSION, SIGNATURE_FILE,
};
use serviceconnection::pack::{PackFile, PackManifest, Publisher as ManifestPublisher};
use serviceconnection::signing::{PublicKey, SecretKey};
use serviceconnection::SiteVersion;
use std::path::{Path, PathBuf};

/// A publisher: an Ed25519 key pair, as the update service holds it.
pub struct Publisher {
    pub key: SecretKey,
    pub name: String,
}

impl Publisher {
    pub fn new() -> Self {
        Publisher {
            key: SecretKey::generate().expect("key generation"),
            name: "Test Publisher".to_string(),
        }
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    pub fn key_id(&self) -> String {
        self.key.public_key().key_id()
    }

    /// Sign manifest bytes as the service does (minisign text).
    pub fn sign(&self, bytes: &[u8]) -> String {
        self.key
            .sign(bytes, "file:manifest.json")
            .expect("signing works")
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What a pack holds.
#[derive(Clone, Debug)]
pub struct PackSpec {
    pub id: uuid::Uuid,
    pub name: String,
    pub version: String,
    pub pack_type: PackType,
    pub min_site_version: String,
    pub max_site_version: Option<String>,
    pub hierarchies: Vec<uuid::Uuid>,
    /// (path under content/, bytes)
    pub files: Vec<(String, Vec<u8>)>,
}

impl PackSpec {
    /// An update to `version` for sites at `min` and later, with two files (one nested).
    pub fn update(name: &str, version: &str, min: &str) -> Self {
        let seed = version.bytes().map(u64::from).sum::<u64>() + name.len() as u64;
        PackSpec {
            id: uuid::Uuid::new_v4(),
            name: name.to_string(),
            version: version.to_string(),
            pack_type: PackType::Update,
            min_site_version: min.to_string(),
            max_site_version: None,
            hierarchies: Vec::new(),
            files: vec![
                ("setup.exe".to_string(), bytes(seed, 70_000)),
                (
                    "payload/data/cab1.cab".to_string(),
                    bytes(seed + 1, 150_000),
                ),
            ],
        }
    }

    pub fn with_files(mut self, files: Vec<(String, Vec<u8>)>) -> Self {
        self.files = files;
        self
    }

    pub fn with_max(mut self, max: &str) -> Self {
        self.max_site_version = Some(max.to_string());
        self
    }

    pub fn for_hierarchies(mut self, h: Vec<uuid::Uuid>) -> Self {
        self.hierarchies = h;
        self
    }

    pub fn hotfix(mut self) -> Self {
        self.pack_type = PackType::Hotfix;
        self
    }

    pub fn manifest(&self, publisher: &Publisher) -> PackManifest {
        let v = |s: &str| s.parse::<SiteVersion>().expect("test version");
        PackManifest {
            format_version: PACK_FORMAT_VERSION,
            id: self.id,
            name: self.name.clone(),
            version: v(&self.version),
            pack_type: self.pack_type,
            min_site_version: v(&self.min_site_version),
            max_site_version: self.max_site_version.as_deref().map(v),
            hierarchies: self.hierarchies.clone(),
            publisher: ManifestPublisher {
                name: publisher.name.clone(),
                key_id: publisher.key_id(),
            },
            created: "2026-11-26T12:00:00Z".to_string(),
            files: self
                .files
                .iter()
                .map(|(p, b)| PackFile {
                    path: p.clone(),
                    size: b.len() as u64,
                    sha256: sha256_hex(b),
                })
                .collect(),
        }
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// `<root>/<hierarchy>/<guid>`.
pub fn pack_dir(root: &Path, hierarchy: uuid::Uuid, id: uuid::Uuid) -> PathBuf {
    root.join(hierarchy.to_string()).join(id.to_string())
}

/// Write `bytes` as the pack's manifest with `publisher`'s signature beside it.
pub fn write_signed_manifest(dir: &Path, bytes: &[u8], publisher: &Publisher) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), bytes).unwrap();
    std::fs::write(dir.join(SIGNATURE_FILE), publisher.sign(bytes)).unwrap();
}

/// Write a complete, valid pack for `hierarchy` under `root`; returns its folder.
pub fn write_pack(
    root: &Path,
    hierarchy: uuid::Uuid,
    spec: &PackSpec,
    publisher: &Publisher,
) -> PathBuf {
    let dir = pack_dir(root, hierarchy, spec.id);
    write_signed_manifest(&dir, &spec.manifest(publisher).to_bytes(), publisher);
    let content = dir.join(CONTENT_DIR);
    std::fs::create_dir_all(&content).unwrap();
    for (p, b) in &spec.files {
        let f = content.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b).unwrap();
    }
    dir
}
