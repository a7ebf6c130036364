//! The upload half of Connect: find the cabs, validate each locally (a file that is not a
//! usage cab, or a second cab of a hierarchy already seen, is skipped with a reason and
//! the others proceed), then stream each to `POST /v1/usage` and keep the packs offered.

use super::client::{api_error_message, Activity, Failure};
use super::{Ctx, UploadReport, UploadStatus};
use crate::api::{UploadResponse, API_PREFIX};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Phase;
use crate::usage::UsageManifest;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest upload answer accepted (it lists packs, not content).
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// The cabs to upload: `source` itself if it is a file, else the `*.cab` files
/// (case-insensitive, not recursive) in the folder, in name order.
pub(crate) fn find_cabs(source: &Path) -> Result<Vec<PathBuf>> {
    if source.as_os_str().is_empty() {
        return Err(Error::invalid_argument("no usage-data source given"));
    }
    let meta = std::fs::metadata(source)
        .map_err(|e| Error::io(format!("usage-data source {}", source.display()), &e))?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let entries = std::fs::read_dir(source)
        .map_err(|e| Error::io(format!("reading {}", source.display()), &e))?;
    let mut cabs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", source.display()), &e))?;
        let path = entry.path();
        let is_cab = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("cab"));
        if is_cab && path.is_file() {
            cabs.push(path);
        }
    }
    if cabs.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("there is no .cab file in {}", source.display()),
        ));
    }
    cabs.sort();
    Ok(cabs)
}

/// [`find_cabs`] over several sources, in order; a cab reached twice (the same path, or
/// the same file by another path) is taken once.
pub(crate) fn find_all_cabs<'a>(
    sources: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut seen = std::collections::HashSet::new();
    let mut cabs = Vec::new();
    for source in sources {
        for cab in find_cabs(source)? {
            let key = std::fs::canonicalize(&cab).unwrap_or_else(|_| cab.clone());
            if seen.insert(key) {
                cabs.push(cab);
            }
        }
    }
    Ok(cabs)
}

fn blank_report(cab: &Path) -> UploadReport {
    UploadReport {
        cab: cab.to_path_buf(),
        hierarchy_id: None,
        site_version: None,
        status: UploadStatus::Failed,
        offered: 0,
        message: None,
        kind: None,
    }
}

/// Validate then upload every cab. `Err` only when cancelled.
pub(crate) async fn upload_all(
    ctx: &Arc<Ctx>,
    cabs: Vec<PathBuf>,
) -> Result<Vec<(UploadReport, Option<UploadResponse>)>> {
    // Local validation first, in name order, so the first cab of a hierarchy wins.
    let mut seen: Vec<(uuid::Uuid, PathBuf)> = Vec::new();
    let mut planned: Vec<(UploadReport, Option<UsageManifest>)> = Vec::new();
    for cab in cabs {
        let mut report = blank_report(&cab);
        ctx.events.emit(Phase::Verify, &display_name(&cab), 0, 0);
        let path = cab.clone();
        let checked = tokio::task::spawn_blocking(move || crate::usage::read_usage_cab_file(&path))
            .await
            .map_err(|e| Error::internal(format!("cab validation panicked: {e}")))?;
        if ctx.http.cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        match checked {
            Err(e) => {
                // A file that is not a usable usage cab is passed over; one that could not
                // be read (a failing drive, no permission) is a failure the user must see.
                report.status = if matches!(
                    e.kind(),
                    ErrorKind::InvalidCab
                        | ErrorKind::InvalidManifest
                        | ErrorKind::IntegrityMismatch
                ) {
                    UploadStatus::Skipped
                } else {
                    UploadStatus::Failed
                };
                report.kind = Some(e.kind());
                report.message = Some(format!("not uploaded: {}", e.message()));
                planned.push((report, None));
            }
            Ok(m) => {
                report.hierarchy_id = Some(m.hierarchy_id);
                report.site_version = Some(m.site_version.to_string());
                if let Some((_, first)) = seen.iter().find(|(h, _)| *h == m.hierarchy_id) {
                    report.status = UploadStatus::Skipped;
                    report.kind = Some(ErrorKind::InvalidArgument);
                    report.message = Some(format!(
                        "not uploaded: {} is a second cab of hierarchy {}, already uploaded from {}; keep one cab per hierarchy",
                        display_name(&cab),
                        m.hierarchy_id,
                        display_name(first)
                    ));
                    planned.push((report, None));
                } else {
                    seen.push((m.hierarchy_id, cab.clone()));
                    planned.push((report, Some(m)));
                }
            }
        }
    }
    // One request without a body first: a proxy that refuses the credentials, an
    // unreachable proxy or service, or a certificate problem shows up here with a clear
    // message (a proxy answering 407 to a streamed upload often just resets it).
    if planned.iter().any(|(_, m)| m.is_some()) {
        if let Err(e) = preflight(ctx).await {
            if e.kind() == ErrorKind::Cancelled {
                return Err(e);
            }
            for (report, manifest) in planned.iter_mut() {
                if manifest.take().is_some() {
                    report.status = UploadStatus::Failed;
                    report.kind = Some(e.kind());
                    report.message = Some(format!("not uploaded: {}", e.message()));
                }
            }
        }
    }
    let jobs = planned
        .into_iter()
        .map(|(mut report, manifest)| async move {
            let Some(manifest) = manifest else {
                return Ok((report, None));
            };
            match upload_one(ctx, &report.cab, &manifest).await {
                Ok(answer) => {
                    report.status = UploadStatus::Uploaded;
                    report.offered = answer.packages.len();
                    Ok((report, Some(answer)))
                }
                Err(e) if e.kind() == ErrorKind::Cancelled => Err(e),
                Err(e) => {
                    report.status = UploadStatus::Failed;
                    report.kind = Some(e.kind());
                    report.message = Some(e.message().to_string());
                    Ok((report, None))
                }
            }
        });
    futures_util::future::join_all(jobs)
        .await
        .into_iter()
        .collect()
}

/// `GET /v1/health`. Fails only on what makes every upload pointless: the connection
/// (service or proxy unreachable, proxy credentials refused, TLS); any HTTP answer from
/// the service itself, even an error, lets the uploads go ahead.
async fn preflight(ctx: &Arc<Ctx>) -> Result<()> {
    let what = "checking the update service";
    let url = ctx.http.url(&format!("{API_PREFIX}/health"))?;
    let resp = match ctx
        .http
        .send_with_retry(what, |_| Ok(ctx.http.get(url.clone())))
        .await
    {
        Ok(resp) => resp,
        Err(e) if e.kind() == ErrorKind::Service => return Ok(()),
        Err(e) => return Err(e),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let headers = resp.headers().clone();
    let body = ctx
        .http
        .read_small(resp, 64 * 1024)
        .await
        .unwrap_or_default();
    let f = ctx.http.status_failure(status, &headers, what, &body);
    if f.error.kind() == ErrorKind::ProxyAuth {
        return Err(f.error);
    }
    Ok(())
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

async fn upload_one(
    ctx: &Arc<Ctx>,
    cab: &Path,
    manifest: &UsageManifest,
) -> Result<UploadResponse> {
    let name = display_name(cab);
    let what = format!("uploading {name}");
    let url = ctx.http.url(&format!(
        "{API_PREFIX}/usage?selection={}",
        ctx.selection.as_str()
    ))?;
    let size = std::fs::metadata(cab)
        .map_err(|e| Error::io(format!("reading {}", cab.display()), &e))?
        .len();
    let resp = ctx
        .http
        .send_with_retry(&what, |activity: &Activity| {
            // A fresh body per attempt, streamed from disk (memory stays flat), touching
            // the inactivity clock and reporting progress as it is read.
            let f = std::fs::File::open(cab)
                .map_err(|e| Error::io(format!("reading {}", cab.display()), &e))?;
            let activity = activity.clone();
            let ctx2 = ctx.clone();
            let item = name.clone();
            let mut sent = 0u64;
            let mut throttle = super::Throttle::new();
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(f),
                64 * 1024,
            )
            .inspect(move |chunk| {
                activity.touch();
                if let Ok(c) = chunk {
                    sent += c.len() as u64;
                    if throttle.due() || sent == size {
                        ctx2.events.emit(Phase::Upload, &item, sent, size);
                    }
                }
            });
            Ok(ctx
                .http
                .post(url.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/vnd.ms-cab-compressed",
                )
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(stream)))
        })
        .await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = ctx
        .http
        .read_small(resp, MAX_ANSWER_BYTES)
        .await
        .map_err(|f: Failure| f.error.context(&what))?;
    if !status.is_success() {
        let f = ctx.http.status_failure(status, &headers, &what, &body);
        return Err(f.error);
    }
    let answer: UploadResponse = serde_json::from_slice(&body).map_err(|e| {
        let detail = api_error_message(&body).unwrap_or_else(|| e.to_string());
        Error::new(
            ErrorKind::Service,
            format!("{what}: the service's answer is not understood: {detail}"),
        )
    })?;
    if answer.hierarchy_id != manifest.hierarchy_id {
        return Err(Error::new(
            ErrorKind::Service,
            format!(
                "{what}: the service answered for hierarchy {}, but the cab is from hierarchy {}",
                answer.hierarchy_id, manifest.hierarchy_id
            ),
        ));
    }
    for p in &answer.packages {
        if !crate::hashing::is_sha256_hex(&p.manifest_sha256.to_ascii_lowercase()) {
            return Err(Error::new(
                ErrorKind::Service,
                format!(
                    "{what}: the service offered pack {} with a malformed manifest hash",
                    p.id
                ),
            ));
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_cabs_case_insensitively_not_recursively() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.cab", "A.CAB", "c.Cab", "notes.txt", "cab", "x.cab.txt"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.cab")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/deep.cab"), b"x").unwrap();
        let names: Vec<String> = find_cabs(d.path())
            .unwrap()
            .iter()
            .map(|p| display_name(p))
            .collect();
        assert_eq!(names, ["A.CAB", "b.cab", "c.Cab"]);
        // A single file is taken as given, whatever its name; validation judges it later.
        assert_eq!(find_cabs(&d.path().join("notes.txt")).unwrap().len(), 1);
    }

    #[test]
    fn several_sources_keep_their_order_and_take_each_cab_once() {
        let d = tempfile::tempdir().unwrap();
        let (one, two) = (d.path().join("one"), d.path().join("two"));
        for (dir, names) in [(&one, ["b.cab", "a.cab"]), (&two, ["c.cab", "d.cab"])] {
            std::fs::create_dir(dir).unwrap();
            for n in names {
                std::fs::write(dir.join(n), b"x").unwrap();
            }
        }
        let sources = [
            two.join("d.cab"),
            one.clone(),
            // The same file again, by another path.
            two.join("../two/d.cab"),
            two.clone(),
        ];
        let got: Vec<PathBuf> = find_all_cabs(&sources).unwrap();
        let want = [
            two.join("d.cab"),
            one.join("a.cab"),
            one.join("b.cab"),
            two.join("c.cab"),
        ];
        assert_eq!(got, want);
        let e = find_all_cabs(&[one.clone(), d.path().join("gone")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn empty_folder_and_missing_source_are_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("readme.txt"), b"x").unwrap();
        let e = find_cabs(d.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("no .cab file"), "{e}");
        let e = find_cabs(&d.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("missing"), "{e}");
    }
}
