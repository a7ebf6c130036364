//! Connect against a service that answers content with `--content-redirect`: a 307 to a
//! short-lived presigned URL of a real S3-compatible server (`s3s-fs`, which checks the
//! presigned signature). Between Connect and the object store sits the recording "flaky"
//! front of the Connect tests, so the test sees every request that reaches the object
//! store — and can cut one short.

#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/service.rs"]
mod service;
#[path = "common/site.rs"]
mod site;

use proxy::{Action, Flaky};
use service::s3::{S3Server, BUCKET};
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::PackType;
use serviceconnection::connect::{connect, ConnectOptions, FileStatus, PackStatus};
use serviceconnection::pack::manifest::CONTENT_DIR;

const SITE_VERSION: &str = "5.00.9128.1000";
const TOKEN: &str = "svc-token-9d1e-only-for-the-service";

#[test]
fn connect_follows_redirects_without_the_token_and_resumes_at_the_object_store() {
    let s3 = S3Server::start();
    let store = TestStore::new();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("setup.exe".into(), pseudo_random(300_000, 1)),
        ("payload/data 1/big.cab".into(), pseudo_random(1_200_000, 2)),
        ("empty.txt".into(), Vec::new()),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let content = write_content(&store.dir().join("c"), &refs);
    let content_url = format!("s3://{BUCKET}/site-packs");
    let out = site::output(
        store
            .publish_command(
                "Update 2303",
                "5.00.9132.1000",
                PackType::Update,
                SITE_VERSION,
                None,
                &[],
                &content,
            )
            .args(["--content", &content_url])
            .envs(s3.env()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: uuid::Uuid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    // The object store as the service presigns it: behind the recording front, whose
    // first answer for the big file is cut after ~300 KB.
    let front = Flaky::start(
        &s3.url(),
        "/big.cab",
        vec![Action::Truncate(300_000)],
        Action::Pass,
    );
    let token_file = store.token_file(TOKEN);
    let svc = TestService::start_env(
        store.path(),
        [
            "--content",
            &content_url,
            "--content-redirect",
            "--token-file",
            token_file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.as_ref()),
        s3.env_for(front.url()),
    );

    let work = tempfile::tempdir().unwrap();
    let cab = work.path().join("usage.cab");
    let h = uuid::Uuid::new_v4();
    write_usage_cab(&cab, h, SITE_VERSION);
    let dest = work.path().join("packs");
    let mut o = ConnectOptions::new(&cab, &dest, svc.url());
    o.token = Some(TOKEN.into());
    o.retry_base_delay_ms = 20;
    o.max_attempts = 3;
    let r = connect(&o, &mut serviceconnection::progress::ignore).unwrap();
    assert!(r.is_success(), "{r:#?}");
    let p = r.packs.iter().find(|p| p.package_guid == id).unwrap();
    assert_eq!(p.status, PackStatus::Downloaded, "{p:#?}");

    // Every byte came from the object store, verified, and the cut file was continued.
    for (path, data) in &files {
        let got = std::fs::read(
            dest.join(h.to_string())
                .join(id.to_string())
                .join(CONTENT_DIR)
                .join(path),
        )
        .unwrap();
        assert_eq!(&got, data, "{path}");
    }
    let big = p
        .files
        .iter()
        .find(|f| f.path == "payload/data 1/big.cab")
        .unwrap();
    assert_eq!(big.status, FileStatus::Resumed, "{big:?}");
    assert!(
        big.bytes_transferred < 1_500_000,
        "only the rest moved again: {big:?}"
    );

    // The front also sees the service's own signed requests (the usage cab's PUT, the
    // manifest's GET); Connect's are the GETs of content.
    let heads = front.heads();
    let connects: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("GET ") && h.contains("/content/"))
        .collect();
    // setup.exe once, big.cab twice (cut, then continued).
    assert!(
        front.count("/setup.exe") == 1 && front.count("/big.cab") == 2,
        "{heads:#?}"
    );
    for head in &connects {
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("authorization:"),
            "Connect sent credentials to the object store: {head}"
        );
        assert!(lower.contains("x-amz-signature="), "presigned: {head}");
    }
    for head in &heads {
        assert!(
            !head.contains(TOKEN) && !head.to_ascii_lowercase().contains("bearer"),
            "the service token went to the object store: {head}"
        );
    }
    let continued: Vec<&String> = heads
        .iter()
        .filter(|h| h.contains("/big.cab") && h.to_ascii_lowercase().contains("range: bytes="))
        .collect();
    assert_eq!(continued.len(), 1, "{heads:#?}");
    // The service itself was asked twice for the big file (a fresh URL for the resume).
    let asked = svc
        .log()
        .lines()
        .filter(|l| l.contains("/content/payload/data%201/big.cab 307"))
        .count();
    assert_eq!(asked, 2, "{}", svc.log());
}
