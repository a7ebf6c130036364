//! Update packs: the signed manifest format and the on-drive layout
//! (`<dest>/<hierarchy-id>/<package-guid>/{manifest.json, manifest.json.minisig, content/...}`).

pub mod manifest;

pub use manifest::{PackFile, PackManifest, Publisher};
