//! `POST /v1/usage`: receive a usage cab (streamed to a temporary file under a size
//! limit, never buffered whole), validate it, store it under
//! `uploads/<hierarchy-id>/<timestamp>-<upload-id>.cab`, record it, and answer with the
//! packs the selection offers that hierarchy.
//!
//! The same cab (same SHA-256, same hierarchy) is one upload however often it is sent and
//! through whichever replica: a cab already recorded is not stored again and the answer
//! carries the first upload's id; two replicas racing with the same cab are decided by
//! the catalog's unique constraint, and the loser removes the copy it stored.

use super::catalog::{UploadInsert, UploadRecord};
use super::content::{Content, ObjectContent};
use super::http::{ApiFailure, AppState};
use super::select::select_packs;
use super::{mkdirs, Store};
use crate::api::{OfferedPack, Selection, UploadResponse, API_PREFIX};
use crate::error::{Error, ErrorKind};
use crate::usage::manifest::{UsageManifest, USAGE_MANIFEST_FILE};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

type RawQuery = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn too_large(limit: u64) -> ApiFailure {
    ApiFailure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the upload is larger than this service accepts ({limit} bytes)"),
    )
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

pub async fn upload(
    State(state): State<Arc<AppState>>,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadResponse>, ApiFailure> {
    let Query(query) = query.map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the query string is not valid: {e}"),
        )
    })?;
    let selection = match query.get("selection") {
        None => Selection::Latest,
        Some(s) => s.parse::<Selection>().map_err(|_| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "unknown_selection",
                format!(
                    "unknown selection '{}' (expected Latest, SiteVersion, Hotfix or All)",
                    s.chars().take(64).collect::<String>().escape_debug()
                ),
            )
        })?,
    };
    let limit = state.max_upload_bytes;
    // Refuse early when the client says how big it is.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large(limit));
        }
    }

    // Receive into a temporary file that removes itself if anything below fails
    // (including the client going away, which drops this future). With a content
    // folder it is a named file beside the uploads (so storing it is a rename); with an
    // object store it is an anonymous one in the system's temporary folder, gone when
    // closed, so a replica keeps nothing of its own.
    let temp = match &state.content {
        Content::Folder(root) => {
            let incoming = Store::at(root).incoming_dir();
            mkdirs(&incoming).map_err(|e| ApiFailure::internal(&e))?;
            let named = tempfile::Builder::new()
                .prefix("upload-")
                .suffix(crate::fsutil::PARTIAL_SUFFIX)
                .tempfile_in(&incoming)
                .map_err(|e| {
                    ApiFailure::internal(&Error::io(
                        format!("creating a file in {}", incoming.display()),
                        &e,
                    ))
                })?;
            Spool::Named(named)
        }
        Content::Object(_) => Spool::Anonymous(tempfile::tempfile().map_err(|e| {
            ApiFailure::internal(&Error::io("creating a temporary file for the upload", &e))
        })?),
    };
    let std_file = temp
        .file()
        .try_clone()
        .map_err(|e| ApiFailure::internal(&Error::io("opening the upload file", &e)))?;
    let mut out =
        tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(std_file));
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the upload was interrupted: {e}"),
            )
        })?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiFailure::internal(&Error::io("writing the upload", &e)))?;
    }
    out.flush()
        .await
        .map_err(|e| ApiFailure::internal(&Error::io("writing the upload", &e)))?;
    let file = out.into_inner();
    if received == 0 {
        return Err(unprocessable(
            "not_a_cab",
            "the upload is empty; expected a usage cab",
        ));
    }
    let sha256 = hex::encode(hasher.finalize());
    // The flush to disk runs while the cab is validated (from the page cache, on the
    // other threads): the two take about as long, and a refused cab is removed anyway.
    // Nothing is stored or recorded before both are done.
    let synced = tokio::spawn(async move { file.sync_all().await });

    let st = state.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> Result<UploadResponse, ApiFailure> {
        let manifest = validate(temp.file())?;
        handle
            .block_on(synced)
            .map_err(|e| {
                ApiFailure::internal(&Error::internal(format!("upload task failed: {e}")))
            })?
            .map_err(|e| ApiFailure::internal(&Error::io("writing the upload", &e)))?;
        let packs = st
            .catalog
            .list_packs()
            .map_err(|e| ApiFailure::internal(&e))?;
        let chosen = select_packs(
            &packs,
            &manifest.hierarchy_id,
            &manifest.site_version,
            selection,
        );
        let offered: Vec<OfferedPack> = chosen
            .into_iter()
            .map(|p| {
                let base = format!("{API_PREFIX}/packages/{}", p.id);
                OfferedPack {
                    id: p.id,
                    name: p.name.clone(),
                    version: p.version.clone(),
                    pack_type: p.pack_type,
                    min_site_version: p.min_site_version.clone(),
                    max_site_version: p.max_site_version.clone(),
                    size: p.size,
                    file_count: p.file_count,
                    manifest_sha256: p.manifest_sha256.clone(),
                    manifest_url: format!("{base}/manifest.json"),
                    signature_url: format!("{base}/manifest.json.minisig"),
                    content_url: format!("{base}/content/"),
                }
            })
            .collect();

        let answer = |upload_id: String| UploadResponse {
            upload_id,
            hierarchy_id: manifest.hierarchy_id,
            site_version: manifest.site_version.clone(),
            selection,
            packages: offered.clone(),
        };
        // Sent before (a retry, perhaps through another replica): recorded once.
        if let Some(existing) = st
            .catalog
            .find_upload(&manifest.hierarchy_id, &sha256)
            .map_err(|e| ApiFailure::internal(&e))?
        {
            return Ok(answer(existing.id));
        }

        let upload_id = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now();
        let rel = format!(
            "{}/{}/{}-{}.cab",
            super::UPLOADS_DIR,
            manifest.hierarchy_id,
            now.format("%Y%m%dT%H%M%S%3fZ"),
            upload_id
        );
        let stored = match (&st.content, temp) {
            (Content::Folder(root), Spool::Named(temp)) => {
                let dest = root.join(&rel);
                mkdirs(crate::fsutil::parent_dir(&dest)).map_err(|e| ApiFailure::internal(&e))?;
                temp.persist_noclobber(&dest).map_err(|e| {
                    ApiFailure::internal(&Error::io(
                        format!("storing {}", dest.display()),
                        &e.error,
                    ))
                })?;
                Stored::File(dest)
            }
            (Content::Object(o), Spool::Anonymous(mut file)) => {
                use std::io::Seek;
                file.rewind()
                    .map_err(|e| ApiFailure::internal(&Error::io("rereading the upload", &e)))?;
                handle
                    .block_on(o.put_stream(&rel, tokio::fs::File::from_std(file)))
                    .map_err(|e| ApiFailure::internal(&e))?;
                Stored::Object(o.clone(), rel.clone())
            }
            _ => unreachable!("the spool matches the content store"),
        };
        let record = UploadRecord {
            id: upload_id.clone(),
            hierarchy_id: manifest.hierarchy_id,
            site_version: manifest.site_version.to_string(),
            diagnostics_level: manifest.diagnostics_level.to_string(),
            selection,
            path: rel,
            size: received,
            sha256,
            received: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            offered: offered.len() as u64,
        };
        let take_back = || match &stored {
            Stored::File(dest) => {
                let _ = std::fs::remove_file(dest);
            }
            Stored::Object(o, key) => {
                let _ = handle.block_on(o.delete(key));
            }
        };
        match st.catalog.insert_upload(&record) {
            Ok(UploadInsert::Inserted) => Ok(answer(upload_id)),
            // Another replica recorded the same cab between our check and our insert.
            Ok(UploadInsert::Existing(first)) => {
                take_back();
                Ok(answer(first.id))
            }
            Err(e) => {
                take_back();
                Err(ApiFailure::internal(&e))
            }
        }
    })
    .await
    .map_err(|e| ApiFailure::internal(&Error::internal(format!("upload task failed: {e}"))))?
    .map(Json)
}

/// Validate a received usage cab, classifying each failure with its own code:
/// `not_a_cab`, `manifest_missing`, `manifest_invalid`, `hash_mismatch`, `cab_corrupt`.
fn validate(file: &std::fs::File) -> Result<UsageManifest, ApiFailure> {
    // Each reader gets its own handle on the same file, from the start.
    let open = || {
        use std::io::Seek;
        file.try_clone()
            .and_then(|mut f| f.rewind().map(|_| f))
            .map(|f| std::io::BufReader::with_capacity(256 * 1024, f))
            .map_err(|e| ApiFailure::internal(&Error::io("rereading the upload", &e)))
    };
    let cabinet = cab::Cabinet::new(open()?).map_err(|e| {
        unprocessable(
            "not_a_cab",
            format!("the upload is not a cabinet file ({e}); expected a usage cab"),
        )
    })?;
    let has_manifest = cabinet
        .folder_entries()
        .flat_map(|f| f.file_entries())
        .any(|e| e.name() == USAGE_MANIFEST_FILE);
    if !has_manifest {
        return Err(unprocessable(
            "manifest_missing",
            format!(
                "the cab has no {USAGE_MANIFEST_FILE}; it is not a usage cab written by Prepare"
            ),
        ));
    }
    drop(cabinet);
    crate::usage::read_usage_cab(open()?).map_err(|e| match e.kind() {
        ErrorKind::InvalidManifest => unprocessable("manifest_invalid", e.message().to_string()),
        ErrorKind::IntegrityMismatch => unprocessable("hash_mismatch", e.message().to_string()),
        ErrorKind::InvalidCab => unprocessable("cab_corrupt", e.message().to_string()),
        _ => ApiFailure::internal(&e),
    })
}

/// Where a received cab waits while it is validated.
enum Spool {
    /// A named file under `uploads/.incoming/` (content folder): stored by a rename.
    Named(tempfile::NamedTempFile),
    /// An unnamed file (object store): streamed to the bucket, then closed and gone.
    Anonymous(std::fs::File),
}

impl Spool {
    fn file(&self) -> &std::fs::File {
        match self {
            Spool::Named(t) => t.as_file(),
            Spool::Anonymous(f) => f,
        }
    }
}

/// Where a received cab was stored (to take it back if the catalog refuses it).
enum Stored {
    File(PathBuf),
    Object(Arc<ObjectContent>, String),
}
