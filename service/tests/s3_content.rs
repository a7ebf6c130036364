//! The content store in a real S3-compatible server (`s3s-fs`, which checks SigV4
//! signatures and presigned URLs): `publish --content s3://...`, `serve --content
//! s3://...` streaming with `Range`/`ETag`, `--content-redirect` presigned 307s, usage
//! cabs stored in the bucket, console content published to and served from the bucket,
//! killed publishes leaving nothing visible, and the
//! configuration errors.
// Runs on Windows too (under Wine in CI, with the Windows build of s3s-fs), except the
// check with the stock minisign program.

#[path = "../../tests/common/service.rs"]
mod service;
#[path = "../../tests/common/start.rs"]
#[allow(clippy::duplicate_mod)] // service.rs, site.rs and s3.rs load it too
mod start;

use service::s3::{S3Server, BUCKET};
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::{PackType, UploadResponse};
use start::Start;
use std::path::Path;
use std::process::{Command, Output};
use uuid::Uuid;

const PREFIX: &str = "tenant/a";

fn content_url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// No redirects followed: the tests look at the 307 itself.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    rt().block_on(async {
        let mut req = client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    })
}

fn publish_s3(store: &TestStore, s3: &S3Server, name: &str, content: &Path) -> Output {
    store
        .publish_command(
            name,
            "5.00.9100.1000",
            PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            content,
        )
        .args(["--content", &content_url()])
        .envs(s3.env())
        .output_retrying()
        .unwrap()
}

fn published(out: &Output) -> Uuid {
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn serve_s3(store: &TestStore, s3: &S3Server, extra: &[&str]) -> TestService {
    let url = content_url();
    let mut args = vec!["--content", url.as_str()];
    args.extend_from_slice(extra);
    TestService::start_env(store.path(), args.iter().map(|s| s.as_ref()), s3.env())
}

fn pack_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("readme.txt", b"hello, site\n".to_vec()),
        // Above the 8 MiB part size: a multipart upload.
        ("bin/payload.bin", pseudo_random(9 * 1024 * 1024 + 123, 7)),
        ("dir with space/ü.dat", b"unicode".to_vec()),
        ("empty.txt", Vec::new()),
    ]
}

fn write_pack_content(store: &TestStore, files: &[(&'static str, Vec<u8>)]) -> std::path::PathBuf {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    write_content(&store.dir().join("content"), &refs)
}

#[test]
fn publish_to_s3_then_serve_streams_with_range_and_etag() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let files = pack_files();
    let content = write_pack_content(&store, &files);
    let id = published(&publish_s3(&store, &s3, "S3 pack", &content));

    // Everything lives in the bucket under the prefix; nothing in the store's packs/.
    let keys = s3.keys();
    for want in [
        format!("{PREFIX}/packs/{id}/manifest.json"),
        format!("{PREFIX}/packs/{id}/manifest.json.minisig"),
        format!("{PREFIX}/packs/{id}/content/bin/payload.bin"),
        format!("{PREFIX}/packs/{id}/content/dir with space/ü.dat"),
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:#?}");
    }
    assert!(
        std::fs::read_dir(store.path().join("packs"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the store folder holds no content"
    );
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    let svc = serve_s3(&store, &s3, &[]);
    let base = format!("{}/v1/packages/{id}", svc.url());
    // The manifest lists the files with the SHA-256 of exactly the uploaded bytes.
    let m = get(&format!("{base}/manifest.json"), &[]);
    assert_eq!(m.status, 200);
    let manifest = serviceconnection::pack::PackManifest::from_bytes(&m.body).unwrap();
    for (path, data) in &files {
        let f = manifest.files.iter().find(|f| f.path == *path).unwrap();
        assert_eq!(f.sha256, serviceconnection::hashing::sha256_hex(data));
        assert_eq!(f.size, data.len() as u64);
    }
    let sig = get(&format!("{base}/manifest.json.minisig"), &[]);
    assert_eq!(sig.status, 200);
    assert!(String::from_utf8_lossy(&sig.body).contains("untrusted comment"));

    let big = &files[1].1;
    let url = format!("{base}/content/bin/payload.bin");
    let full = get(&url, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, *big);
    let etag = full.header("etag").unwrap();
    assert_eq!(
        etag,
        format!("\"{}\"", serviceconnection::hashing::sha256_hex(big))
    );
    let part = get(
        &url,
        &[("Range", "bytes=8388600-8388620"), ("If-Range", &etag)],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, big[8388600..=8388620]);
    assert_eq!(
        part.header("content-range").unwrap(),
        format!("bytes 8388600-8388620/{}", big.len())
    );
    let tail = get(&url, &[("Range", "bytes=-5")]);
    assert_eq!(tail.body, big[big.len() - 5..]);
    let unicode = get(
        &format!("{base}/content/dir%20with%20space/%C3%BC.dat"),
        &[],
    );
    assert_eq!(unicode.status, 200);
    assert_eq!(unicode.body, b"unicode");
    let empty = get(&format!("{base}/content/empty.txt"), &[]);
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    let missing = get(&format!("{base}/content/nope.bin"), &[]);
    assert_eq!(missing.status, 404);

    // An object that no longer matches its manifest is refused, never served.
    let stored = s3
        .bucket_dir()
        .join(PREFIX)
        .join(format!("packs/{id}/content/readme.txt"));
    std::fs::write(&stored, b"tampered, and longer than before\n").unwrap();
    let bad = get(&format!("{base}/content/readme.txt"), &[]);
    assert_eq!(bad.status, 500, "{}", String::from_utf8_lossy(&bad.body));
    assert!(svc.log().contains("manifest says"), "{}", svc.log());
}

#[test]
fn content_redirect_answers_307_to_a_working_presigned_url() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let files = pack_files();
    let content = write_pack_content(&store, &files);
    let id = published(&publish_s3(&store, &s3, "Redirected", &content));
    let token = store.token_file("s3cret-token");
    let svc = serve_s3(
        &store,
        &s3,
        &[
            "--content-redirect",
            "--redirect-ttl",
            "60",
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let base = format!("{}/v1/packages/{id}", svc.url());
    let auth = ("Authorization", "Bearer s3cret-token");

    // Without the token: 401, no URL given away.
    let r = get(&format!("{base}/content/readme.txt"), &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("location").is_none());

    let r = get(&format!("{base}/content/bin/payload.bin"), &[auth]);
    assert_eq!(r.status, 307);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!(
            "{}/{BUCKET}/{PREFIX}/packs/{id}/content/bin/payload.bin?",
            s3.url()
        )),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=60"));
    assert!(!location.contains("s3cret-token"));
    // Manifest and signature are still answered by the service itself.
    assert_eq!(get(&format!("{base}/manifest.json"), &[auth]).status, 200);
    // HEAD is answered here (a presigned URL is signed for GET only).
    let head = rt().block_on(async {
        client()
            .head(format!("{base}/content/bin/payload.bin"))
            .header(auth.0, auth.1)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(head.status().as_u16(), 200);

    // The presigned URL works without any credentials, with Range, at the object store.
    let big = &files[1].1;
    let whole = get(&location, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, *big);
    let part = get(&location, &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, big[100..200]);
    // A tampered signature or key is refused by the object store.
    let forged = location.replace("payload.bin", "payload.bim");
    assert_eq!(get(&forged, &[]).status, 403);
    let unsigned = location.split('?').next().unwrap().to_string();
    assert!(get(&unsigned, &[]).status >= 400);

    // --content-redirect needs an object store.
    let out = Command::new(service::bin())
        .args(["serve", "--content-redirect", "--store"])
        .arg(store.path())
        .output_retrying()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--content-redirect needs an object store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn uploads_are_stored_in_the_bucket_and_the_replica_keeps_no_file() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let svc = serve_s3(&store, &s3, &[]);
    let h = Uuid::new_v4();
    let cab = store.dir().join("u.cab");
    write_usage_cab(&cab, h, "5.00.9000.1000");
    let bytes = std::fs::read(&cab).unwrap();
    let r = rt().block_on(async {
        client()
            .post(format!("{}/v1/usage?selection=All", svc.url()))
            .body(bytes.clone())
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status().as_u16(), 200);
    let answer: UploadResponse = rt().block_on(r.json()).unwrap();
    assert_eq!(answer.hierarchy_id, h);
    let uploads = store.uploads();
    assert_eq!(uploads.len(), 1);
    let key = format!("{PREFIX}/{}", uploads[0].path);
    assert!(uploads[0].path.starts_with(&format!("uploads/{h}/")));
    assert_eq!(
        std::fs::read(s3.bucket_dir().join(&key)).unwrap(),
        bytes,
        "the bucket holds the exact cab"
    );
    assert!(
        !store.path().join("uploads").join(h.to_string()).exists(),
        "nothing of the upload in the store folder"
    );
    assert!(
        std::fs::read_dir(store.path().join("uploads/.incoming"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // A bad cab is refused and leaves nothing in the bucket.
    let before = s3.keys();
    let r = rt().block_on(async {
        client()
            .post(format!("{}/v1/usage", svc.url()))
            .body(b"MSCF but not really".to_vec())
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status().as_u16(), 422);
    assert_eq!(s3.keys(), before);
}

fn killed_publish_at(at: &str) {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let content = write_content(
        &store.dir().join("c"),
        &[("a.bin", &pseudo_random(50_000, 1)), ("b/c.txt", b"c")],
    );
    let go = store.dir().join("go");
    let mut child = store
        .publish_command(
            "P",
            "5.00.9100.1000",
            PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        )
        .args(["--content", &content_url()])
        .envs(s3.env())
        .env("SCT_TEST_PAUSE_PUBLISH", &go)
        .env("SCT_TEST_PAUSE_PUBLISH_AT", at)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_retrying()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let keys = s3.keys();
    // Killed before anything is asserted, so a failing check leaves no paused publish.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains(&format!("paused at '{at}'")), "{line}");
    assert!(
        keys.iter().any(|k| k.ends_with("/content/a.bin")),
        "the publish got this far: {keys:#?}"
    );
    assert_eq!(
        keys.iter().any(|k| k.ends_with("/manifest.json.minisig")),
        at == "renamed"
    );

    assert!(store.list().is_empty(), "a killed publish is not visible");
    let half: Uuid = keys[0]
        .strip_prefix(&format!("{PREFIX}/packs/"))
        .and_then(|k| k.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let svc = serve_s3(&store, &s3, &[]);
    let m = get(
        &format!("{}/v1/packages/{half}/manifest.json", svc.url()),
        &[],
    );
    assert_eq!(m.status, 404, "an unrecorded pack is never served");
    let c = get(
        &format!("{}/v1/packages/{half}/content/a.bin", svc.url()),
        &[],
    );
    assert_eq!(c.status, 404);

    // The same publish again succeeds. The leftovers are younger than the orphan grace
    // (another machine's publish could be in progress), so they stay, unlisted.
    let id = published(&publish_s3(&store, &s3, "P", &content));
    assert_ne!(id, half);
    assert_eq!(store.list().len(), 1);
    assert!(s3.keys().iter().any(|k| k.contains(&half.to_string())));
}

#[test]
fn publish_killed_before_the_manifest_leaves_no_visible_pack() {
    killed_publish_at("staged");
}

#[test]
fn publish_killed_before_the_catalog_row_leaves_no_visible_pack() {
    killed_publish_at("renamed");
}

#[test]
fn a_refused_publish_removes_what_it_uploaded() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let content = write_content(&store.dir().join("c"), &[("a.bin", b"one")]);
    let id = published(&publish_s3(&store, &s3, "Dup", &content));
    let before = s3.keys();
    let out = publish_s3(&store, &s3, "Dup", &content);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already published"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s3.keys(), before, "the duplicate's objects were removed");
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.list()[0].id, id);
}

#[test]
fn bad_s3_configuration_fails_with_a_clear_error() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let content = write_content(&store.dir().join("c"), &[("a.bin", b"one")]);
    let run = |url: &str, env: &[(&str, &str)], drop_vars: &[&str]| -> String {
        let mut c = store.publish_command(
            "X",
            "5.00.9100.1000",
            PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        );
        c.args(["--content", url]).envs(s3.env());
        for (k, v) in env {
            c.env(k, v);
        }
        for k in drop_vars {
            c.env_remove(k);
        }
        let out = c.output_retrying().unwrap();
        assert!(!out.status.success(), "{url} {env:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&content_url(), &[], &["AWS_SECRET_ACCESS_KEY"]);
    assert!(e.contains("AWS_SECRET_ACCESS_KEY is not set"), "{e}");
    let e = run(&content_url(), &[], &["AWS_ALLOW_HTTP"]);
    assert!(e.contains("AWS_ALLOW_HTTP=true"), "{e}");
    let e = run("s3://No_Such", &[], &[]);
    assert!(e.contains("not an S3 bucket name"), "{e}");
    let e = run("/nonexistent/sct-content", &[], &[]);
    assert!(e.contains("no such folder"), "{e}");
    let e = run("ftp://host/x", &[], &[]);
    assert!(e.contains("only a folder or s3://"), "{e}");
    // A wrong secret: the server checks the signature, so nothing is stored.
    let e = run(
        &content_url(),
        &[("AWS_SECRET_ACCESS_KEY", "wrong-secret")],
        &[],
    );
    assert!(e.contains("sct-service: error:"), "{e}");
    assert!(s3.keys().is_empty(), "{:#?}", s3.keys());
    assert!(store.list().is_empty());
    // The secret never appears in an error message.
    assert!(!e.contains("wrong-secret"), "{e}");
}

#[test]
fn ready_reports_an_unreachable_object_store_and_health_stays_live() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let svc = serve_s3(&store, &s3, &[]);
    let ready = get(&format!("{}/v1/ready", svc.url()), &[]);
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    drop(s3);
    let ready = get(&format!("{}/v1/ready", svc.url()), &[]);
    assert_eq!(ready.status, 503);
    let body = String::from_utf8_lossy(&ready.body);
    assert!(
        body.contains("not_ready") && body.contains(&format!("s3://{BUCKET}/{PREFIX}")),
        "{body}"
    );
    assert_eq!(get(&format!("{}/v1/health", svc.url()), &[]).status, 200);
}

#[test]
fn a_separate_content_folder_holds_packs_and_uploads() {
    let store = TestStore::new();
    let folder = store.dir().join("shared-content");
    std::fs::create_dir(&folder).unwrap();
    let content = write_content(&store.dir().join("c"), &[("a.bin", b"folder bytes")]);
    let out = store
        .publish_command(
            "Folder",
            "5.00.9100.1000",
            PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        )
        .arg("--content")
        .arg(&folder)
        .output_retrying()
        .unwrap();
    let id = published(&out);
    assert_eq!(
        std::fs::read(folder.join(format!("packs/{id}/content/a.bin"))).unwrap(),
        b"folder bytes"
    );
    assert!(!store.path().join("packs").join(id.to_string()).exists());

    let svc = TestService::start_args(
        store.path(),
        [std::ffi::OsStr::new("--content"), folder.as_os_str()],
    );
    let r = get(
        &format!("{}/v1/packages/{id}/content/a.bin", svc.url()),
        &[],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"folder bytes"[..]));
    let h = Uuid::new_v4();
    let cab = store.dir().join("u.cab");
    write_usage_cab(&cab, h, "5.00.9000.1000");
    let r = rt().block_on(async {
        client()
            .post(format!("{}/v1/usage", svc.url()))
            .body(std::fs::read(&cab).unwrap())
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status().as_u16(), 200);
    let uploads = store.uploads();
    assert_eq!(uploads.len(), 1);
    assert!(folder.join(&uploads[0].path).is_file());
    assert!(!store.path().join(&uploads[0].path).exists());
}

/// `sct-service` with the S3 environment; returns (success, stdout, stderr).
fn sct_s3(s3: &S3Server, args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(service::bin())
        .args(args)
        .envs(s3.env())
        .output_retrying()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn console_content_is_published_to_s3_and_served_by_a_replica() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let url = content_url();
    let draft = store.dir().join("console-draft.json");
    let publish = |title: &str| {
        std::fs::write(
            &draft,
            serde_json::to_vec(&serde_json::json!({
                "servicing": [{"product": "Windows 11", "version": "24H2", "build": "26100.2454",
                    "channel": "General Availability", "release_date": "2024-10-01",
                    "end_of_servicing": "2026-10-13"}],
                "messages": [{"id": title, "severity": "Info", "title": title,
                    "body": "Servicing dashboard refreshed.", "published": "2026-11-03"}]
            }))
            .unwrap(),
        )
        .unwrap();
        // Only the key file and the content store: no store folder is written.
        sct_s3(
            &s3,
            &[
                "console".as_ref(),
                "publish".as_ref(),
                "--key".as_ref(),
                store.secret_key_path().as_os_str(),
                "--content".as_ref(),
                url.as_ref(),
                draft.as_os_str(),
            ],
        )
    };
    let (ok, out, err) = publish("first");
    assert!(ok, "console publish failed: {err}");
    assert_eq!(out.trim(), "1");
    let (ok, out, err) = publish("second");
    assert!(ok, "console publish failed: {err}");
    assert_eq!(out.trim(), "2");

    let keys = s3.keys();
    for n in [1, 2] {
        for name in ["console-content.json", "console-content.json.minisig"] {
            let want = format!("{PREFIX}/console/{n}/{name}");
            assert!(keys.contains(&want), "{want} not in {keys:#?}");
        }
    }
    assert!(
        !store.path().join("console").exists(),
        "the store folder holds no console content"
    );

    // A publish killed after claiming number 3 (document, no signature yet): never served
    // nor listed, and the next publish takes 4.
    let half = s3.bucket_dir().join(PREFIX).join("console/3");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("console-content.json"), b"{\"half\": true}").unwrap();

    let list = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args: Vec<&std::ffi::OsStr> = ["list", "--console", "--json", "--content"]
            .iter()
            .map(|s| s.as_ref())
            .collect();
        args.push(url.as_ref());
        args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        let (ok, out, err) = sct_s3(&s3, &args);
        assert!(ok, "list --console failed: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let listed = list(&[]);
    let versions: Vec<u64> = listed
        .iter()
        .map(|v| v["content_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);

    let svc = serve_s3(&store, &s3, &[]);
    let doc = get(&format!("{}/v1/console-content", svc.url()), &[]);
    assert_eq!(doc.status, 200);
    let parsed: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(parsed["content_version"], 2);
    assert_eq!(parsed["messages"][0]["id"], "second");
    let etag = doc.header("etag").unwrap();
    assert_eq!(
        etag,
        format!("\"{}\"", serviceconnection::hashing::sha256_hex(&doc.body))
    );
    assert_eq!(
        listed[1]["sha256"],
        serviceconnection::hashing::sha256_hex(&doc.body)
    );
    let again = get(
        &format!("{}/v1/console-content", svc.url()),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let sig = get(
        &format!("{}/v1/console-content.json.minisig", svc.url()),
        &[],
    );
    assert_eq!(sig.status, 200);

    // Stock minisign (a Linux program here) verifies what the replica served against the
    // store's public key.
    #[cfg(unix)]
    {
        let check = store.dir().join("served");
        std::fs::create_dir_all(&check).unwrap();
        std::fs::write(check.join("console-content.json"), &doc.body).unwrap();
        std::fs::write(check.join("console-content.json.minisig"), &sig.body).unwrap();
        let out = Command::new("minisign")
            .arg("-Vm")
            .arg(check.join("console-content.json"))
            .arg("-x")
            .arg(check.join("console-content.json.minisig"))
            .arg("-p")
            .arg(store.public_key_path())
            .output()
            .expect("minisign is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "minisign -V refused: {text}");
        assert!(text.contains("console-content version:2"), "{text}");
    }

    // A new publication is served at once; the half-written number is skipped.
    let (ok, out, err) = publish("third");
    assert!(ok, "console publish failed: {err}");
    assert_eq!(out.trim(), "4");
    let newer = get(
        &format!("{}/v1/console-content", svc.url()),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(newer.status, 200);
    let parsed: serde_json::Value = serde_json::from_slice(&newer.body).unwrap();
    assert_eq!(parsed["content_version"], 4);
    assert_eq!(list(&[]).len(), 3);

    // Bad invocations: a clear error, nothing stored.
    let before = s3.keys();
    let (ok, _, err) = sct_s3(
        &s3,
        &[
            "console".as_ref(),
            "publish".as_ref(),
            "--key".as_ref(),
            store.secret_key_path().as_os_str(),
            draft.as_os_str(),
        ],
    );
    assert!(!ok);
    assert!(err.contains("--content URL or --store DIR"), "{err}");
    let (ok, _, err) = sct_s3(
        &s3,
        &[
            "list".as_ref(),
            "--console".as_ref(),
            "--catalog".as_ref(),
            "sqlite:/nonexistent/catalog.sqlite".as_ref(),
        ],
    );
    assert!(!ok);
    assert!(err.contains("--content URL or --store DIR"), "{err}");
    assert_eq!(s3.keys(), before);

    // The replica wrote nothing of its own.
    assert!(!store.path().join("console").exists());
    assert!(
        !store.path().join("staging").exists()
            || std::fs::read_dir(store.path().join("staging"))
                .unwrap()
                .count()
                == 0
    );
    #[cfg(unix)]
    svc.stop();
    #[cfg(not(unix))]
    drop(svc); // no signal to send a console-less child on Windows
}
