//! Where pack content, manifests, signatures and received usage cabs live (`--content URL`).
//!
//! - A folder (the default: the store folder itself) keeps the layout described in the
//!   crate documentation; its code paths are the store's own (staging folder renamed into
//!   `packs/`, symbolic links refused, files streamed from disk).
//! - `s3://BUCKET/PREFIX` is an S3-compatible object store reached through `object_store`
//!   ([`s3::ObjectContent`]): the same keys under `PREFIX/` (`packs/<guid>/manifest.json`,
//!   `packs/<guid>/manifest.json.minisig`, `packs/<guid>/content/<path>`,
//!   `uploads/<hierarchy>/<timestamp>-<upload-id>.cab`), streamed both ways.
//!
//! Either way a pack is visible only through its catalog row, which is written last.

pub mod s3;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use s3::ObjectContent;

/// Parsed `--content` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentUrl {
    /// A folder with the store layout.
    Folder(PathBuf),
    /// `s3://BUCKET/PREFIX` (the prefix may be empty).
    S3 { bucket: String, prefix: String },
}

impl ContentUrl {
    /// `s3://BUCKET[/PREFIX]`, or anything else as a folder path.
    pub fn parse(s: &str) -> Result<ContentUrl> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            // Bucket names: 3..63 of lower-case letters, digits, dots and hyphens.
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                });
            if !bucket_ok {
                return Err(Error::invalid_argument(format!(
                    "--content {s}: '{}' is not an S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens)",
                    bucket.escape_debug()
                )));
            }
            if prefix.split('/').any(|seg| {
                seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || seg.chars().any(|c| c.is_control() || c == '\\')
            }) && !prefix.is_empty()
            {
                return Err(Error::invalid_argument(format!(
                    "--content {s}: the prefix must be plain '/'-separated names"
                )));
            }
            return Ok(ContentUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if s.contains("://") {
            return Err(Error::invalid_argument(format!(
                "--content {s}: only a folder or s3://BUCKET/PREFIX is supported"
            )));
        }
        Ok(ContentUrl::Folder(PathBuf::from(s)))
    }
}

/// An opened content store.
#[derive(Clone, Debug)]
pub enum Content {
    /// The store folder layout under this root.
    Folder(PathBuf),
    /// An object store.
    Object(Arc<ObjectContent>),
}

impl Content {
    /// Open `url` (default: the store folder `store_root`). For S3 the endpoint, region and
    /// credentials come from the `AWS_*` environment variables.
    pub fn open(url: Option<&ContentUrl>, store_root: &Path) -> Result<Content> {
        match url {
            None => Ok(Content::Folder(store_root.to_path_buf())),
            Some(ContentUrl::Folder(p)) => {
                if !p.is_dir() {
                    return Err(Error::new(
                        crate::error::ErrorKind::NotFound,
                        format!("--content {}: no such folder", p.display()),
                    ));
                }
                Ok(Content::Folder(p.clone()))
            }
            Some(ContentUrl::S3 { bucket, prefix }) => Ok(Content::Object(Arc::new(
                ObjectContent::from_env(bucket, prefix)?,
            ))),
        }
    }

    /// The object store, if the content is not a folder.
    pub fn object(&self) -> Option<&Arc<ObjectContent>> {
        match self {
            Content::Object(o) => Some(o),
            Content::Folder(_) => None,
        }
    }

    /// The content store, for messages: its folder or `s3://BUCKET/PREFIX`.
    pub fn describe(&self) -> String {
        match self {
            Content::Folder(root) => root.display().to_string(),
            Content::Object(o) => o.describe(),
        }
    }

    /// Whether the content store answers (for `/v1/ready`): the folder's `packs/` can be
    /// listed, or the bucket can be listed under the prefix.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Content::Folder(root) => {
                let packs = root.join(crate::PACKS_DIR);
                tokio::fs::read_dir(&packs)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::io(format!("content store {}", packs.display()), &e))
            }
            Content::Object(o) => o.ping().await,
        }
    }
}

/// The object key of a pack's file (`manifest.json`, `content/<path>`, ...).
pub fn pack_key(id: &uuid::Uuid, rel: &str) -> String {
    format!("{}/{id}/{rel}", crate::PACKS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ContentUrl::parse("s3://my-bucket/a/b/").unwrap(),
            ContentUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            ContentUrl::parse("s3://my-bucket").unwrap(),
            ContentUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            ContentUrl::parse("/srv/store").unwrap(),
            ContentUrl::Folder("/srv/store".into())
        );
        for bad in [
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
            "gs://bucket/x",
            "https://example/x",
        ] {
            let e = ContentUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains("--content"), "{bad}: {e}");
        }
    }
}
