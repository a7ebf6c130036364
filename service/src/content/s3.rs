//! Content in an S3-compatible object store (`--content s3://BUCKET/PREFIX`), through the
//! `object_store` crate: SigV4 requests, streamed ranged GETs, multipart PUTs for large
//! objects (memory stays at one part per upload), and presigned GET URLs for
//! `--content-redirect`.
//!
//! Configuration comes from the environment, as every S3 tool reads it:
//! `AWS_ENDPOINT_URL` (default: AWS itself), `AWS_REGION` (default `us-east-1`),
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both required: the instance-metadata
//! fallback is not used, so a misconfigured replica fails at once instead of probing the
//! network), and `AWS_ALLOW_HTTP=true` to allow a plain-HTTP endpoint.

use crate::error::{Error, ErrorKind, Result};
use axum::body::Body;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Part size of multipart uploads (S3's minimum is 5 MiB); smaller objects are one PUT.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload sent at once.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// An S3 bucket and key prefix.
#[derive(Debug)]
pub struct ObjectContent {
    s3: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

fn s3_error(what: &str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what}: {e}"))
}

impl ObjectContent {
    /// The bucket `bucket`, keys under `prefix`, configured from the `AWS_*` variables.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<ObjectContent> {
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                return Err(Error::invalid_argument(format!(
                    "--content s3://{bucket}: {var} is not set (the S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )));
            }
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            let allow_http = b
                .get_config_value(&AmazonS3ConfigKey::Client(
                    object_store::ClientConfigKey::AllowHttp,
                ))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if endpoint.starts_with("http://") && !allow_http {
                return Err(Error::invalid_argument(format!(
                    "AWS_ENDPOINT_URL {endpoint} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it"
                )));
            }
        }
        let s3 = b
            .build()
            .map_err(|e| Error::invalid_argument(format!("--content s3://{bucket}: {e}")))?;
        Ok(ObjectContent {
            s3: Arc::new(s3),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `s3://BUCKET/PREFIX` (for messages).
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The object path of `key` (a `/`-separated relative key such as `packs/<id>/...`),
    /// under the prefix. Keys are the pack's own (already validated) file names, stored
    /// as they are, so the bucket reads like the folder layout; a segment object_store
    /// would refuse is stored percent-encoded instead.
    pub fn path(&self, key: &str) -> ObjectPath {
        let segments = || {
            self.prefix
                .split('/')
                .chain(key.split('/'))
                .filter(|s| !s.is_empty())
        };
        ObjectPath::parse(segments().collect::<Vec<_>>().join("/"))
            .unwrap_or_else(|_| segments().collect())
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.s3.clone()
    }

    /// Whether the bucket answers: one listing request under the prefix.
    pub async fn ping(&self) -> Result<()> {
        let prefix = self.path("");
        let mut list = self.s3.list(Some(&prefix));
        match list.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(s3_error(&format!("content store {}", self.describe()), e)),
        }
    }

    /// A whole small object (manifest, signature), refused when larger than `limit`.
    pub async fn read_small(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        let what = format!("reading {}/{key}", self.describe());
        let got = self
            .s3
            .get(&self.path(key))
            .await
            .map_err(|e| s3_error(&what, e))?;
        if got.meta.size > limit {
            return Err(Error::new(
                ErrorKind::IntegrityMismatch,
                format!("{what}: {} bytes is not a sane size", got.meta.size),
            ));
        }
        Ok(got.bytes().await.map_err(|e| s3_error(&what, e))?.to_vec())
    }

    /// A streaming body of `count` bytes of `key` from `start`; refuses an object whose
    /// size is not the `size` the manifest promises (the bucket was tampered with).
    pub async fn body(&self, key: &str, size: u64, start: u64, count: u64) -> Result<Body> {
        let what = format!("reading {}/{key}", self.describe());
        if count == 0 {
            let meta = self
                .s3
                .head(&self.path(key))
                .await
                .map_err(|e| s3_error(&what, e))?;
            check_size(&what, meta.size, size)?;
            return Ok(Body::empty());
        }
        let got = self
            .s3
            .get_opts(
                &self.path(key),
                GetOptions {
                    range: Some(GetRange::Bounded(start..start + count)),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| s3_error(&what, e))?;
        check_size(&what, got.meta.size, size)?;
        let stream = got.into_stream().map_err(move |e| {
            eprintln!("sct-service: {what}: {e}");
            std::io::Error::other(e)
        });
        Ok(Body::from_stream(stream))
    }

    /// A presigned GET URL of `key`, valid for `ttl`.
    pub async fn presign(&self, key: &str, ttl: Duration) -> Result<url::Url> {
        self.s3
            .signed_url(axum::http::Method::GET, &self.path(key), ttl)
            .await
            .map_err(|e| s3_error(&format!("presigning {}/{key}", self.describe()), e))
    }

    /// Store small bytes (manifest, signature) under `key`.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.s3
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| s3_error(&format!("writing {}/{key}", self.describe()), e))
    }

    /// Store small bytes under `key` only if no object is there yet (a create-only PUT,
    /// `If-None-Match: *`); `Ok(false)` when another writer got there first.
    pub async fn put_create(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .s3
            .put_opts(&self.path(key), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(s3_error(&format!("writing {}/{key}", self.describe()), e)),
        }
    }

    /// The names one level below `key_prefix` (the "folders" of a listing).
    pub async fn child_names(&self, key_prefix: &str) -> Result<Vec<String>> {
        let what = format!("listing {}/{key_prefix}", self.describe());
        let listed = self
            .s3
            .list_with_delimiter(Some(&self.path(key_prefix)))
            .await
            .map_err(|e| s3_error(&what, e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Stream everything `reader` yields into `key` (multipart above [`PART_SIZE`]),
    /// hashing exactly the bytes sent; returns (size, SHA-256 hex). A failure aborts the
    /// multipart upload, so no half object is left.
    pub async fn put_stream<R: tokio::io::AsyncRead + Unpin>(
        &self,
        key: &str,
        mut reader: R,
    ) -> Result<(u64, String)> {
        let what = format!("writing {}/{key}", self.describe());
        // At most PART_SIZE buffered and MAX_PARTS_IN_FLIGHT parts being sent: memory is
        // bounded whatever the object's size.
        let mut w = BufWriter::with_capacity(self.store(), self.path(key), PART_SIZE)
            .with_max_concurrency(MAX_PARTS_IN_FLIGHT);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let result: std::io::Result<()> = async {
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                w.write_all(&buf[..n]).await?;
            }
            w.shutdown().await
        }
        .await;
        if let Err(e) = result {
            let _ = w.abort().await;
            return Err(Error::io(what, &e));
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Remove `key` (a missing object is not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.s3.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(&format!("removing {}/{key}", self.describe()), e)),
        }
    }

    /// Remove every object under `key_prefix` (a killed or refused publish's objects).
    pub async fn delete_prefix(&self, key_prefix: &str) -> Result<()> {
        let what = format!("removing {}/{key_prefix}", self.describe());
        let prefix = self.path(key_prefix);
        let keys: Vec<ObjectPath> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| s3_error(&what, e))?;
        for k in keys {
            match self.s3.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_error(&what, e)),
            }
        }
        Ok(())
    }

    /// When the newest object under `key_prefix` was written (`None`: no object).
    pub async fn newest(&self, key_prefix: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let what = format!("listing {}/{key_prefix}", self.describe());
        let mut list = self.s3.list(Some(&self.path(key_prefix)));
        let mut newest = None;
        while let Some(m) = list.next().await {
            let m = m.map_err(|e| s3_error(&what, e))?;
            newest = newest.max(Some(m.last_modified));
        }
        Ok(newest)
    }

    /// The pack GUIDs that have objects under `packs/`.
    pub async fn pack_ids(&self) -> Result<Vec<uuid::Uuid>> {
        let what = format!("listing {}/{}", self.describe(), crate::PACKS_DIR);
        let listed = self
            .s3
            .list_with_delimiter(Some(&self.path(crate::PACKS_DIR)))
            .await
            .map_err(|e| s3_error(&what, e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| n.parse().ok()))
            .collect())
    }

    /// Whether `key` exists (for tests and checks).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.s3.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(s3_error(&format!("reading {}/{key}", self.describe()), e)),
        }
    }
}

fn check_size(what: &str, actual: u64, want: u64) -> Result<()> {
    if actual != want {
        return Err(Error::new(
            ErrorKind::IntegrityMismatch,
            format!("{what}: the object is {actual} bytes but its manifest says {want}"),
        ));
    }
    Ok(())
}
