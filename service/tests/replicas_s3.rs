//! Stateless replicas on the scaled-out engines together: three `sct-service serve
//! --content s3://... --content-redirect` processes on one PostgreSQL catalog, behind a
//! real `haproxy` on loopback, with the content in a real S3-compatible server
//! (`s3s-fs`, which checks the presigned URLs). Several sites run Connect at once through
//! the balancer; every download is redirected to the object store and verified, every
//! upload is recorded once, and the catalog and the bucket agree afterwards.
//! (This target's name puts its test stores' content in the shared s3s-fs server: see
//! `service::on_s3`.)
// PostgreSQL, haproxy and s3s-fs test servers run on Unix only.
#![cfg(unix)]

#[path = "../../tests/common/haproxy.rs"]
mod haproxy;
#[path = "../../tests/common/service.rs"]
mod service;

use haproxy::{Balance, Balancer};
use service::s3;
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::PackType;
use serviceconnection::connect::{connect, ConnectOptions, PackStatus};

#[test]
fn redirected_downloads_through_three_replicas_are_verified_and_recorded_once() {
    let store = TestStore::new_on_postgres();
    let content_url = store.content_url().expect("content in s3s-fs");
    let prefix = content_url
        .strip_prefix(&format!("s3://{}/", s3::BUCKET))
        .unwrap()
        .to_string();
    let files = vec![
        ("big.bin", pseudo_random(3 * 1024 * 1024, 31)),
        ("dir/small.bin", pseudo_random(70_000, 32)),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let content = write_content(&store.dir().join("c"), &refs);
    let id = store.publish(
        "Replicated",
        "5.00.9132.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    let reps: Vec<TestService> = (0..3)
        .map(|_| TestService::start(&store, &["--content-redirect"]))
        .collect();
    let urls: Vec<&str> = reps.iter().map(|r| r.url()).collect();
    let lb = Balancer::start(&urls, Balance::RoundRobin);

    // Six sites at once, each its own hierarchy; one of them sends its cab twice.
    let sites: Vec<(uuid::Uuid, std::path::PathBuf)> = (0..6)
        .map(|i| {
            let h = uuid::Uuid::new_v4();
            let cab = store.dir().join(format!("usage-{i}.cab"));
            write_usage_cab(&cab, h, "5.00.9106.1000");
            (h, cab)
        })
        .collect();
    let runs: Vec<(uuid::Uuid, std::path::PathBuf)> = sites
        .iter()
        .cloned()
        .chain(std::iter::once(sites[0].clone()))
        .collect();
    std::thread::scope(|scope| {
        for (i, (h, cab)) in runs.iter().enumerate() {
            let dest = store.dir().join(format!("dest-{i}"));
            let url = lb.url().to_string();
            let files = &files;
            scope.spawn(move || {
                let mut o = ConnectOptions::new(cab, &dest, &url);
                o.max_attempts = 5;
                o.retry_base_delay_ms = 50;
                let r = connect(&o, &mut serviceconnection::progress::ignore).unwrap();
                assert!(r.is_success(), "{r:#?}");
                let p = r.packs.iter().find(|p| p.package_guid == id).unwrap();
                assert_eq!(p.status, PackStatus::Downloaded, "{p:#?}");
                for (path, data) in files {
                    let got = std::fs::read(p.path.join("content").join(path)).unwrap();
                    assert!(got == *data, "site {h}: {path} differs");
                }
            });
        }
    });

    // Every content request was answered by a redirect; no replica streamed content.
    let logs: String = reps.iter().map(|r| r.log()).collect();
    let content_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&format!("/v1/packages/{id}/content/")))
        .collect();
    assert!(content_lines.len() >= runs.len() * files.len(), "{logs}");
    assert!(
        content_lines.iter().all(|l| l.ends_with(" 307")),
        "{content_lines:#?}"
    );
    // Load was spread: more than one replica answered.
    assert!(reps.iter().filter(|r| r.log().contains(" 307")).count() > 1);

    // Catalog and bucket agree: one pack, one upload per site (the resent cab too), and
    // every recorded upload's object is in the bucket.
    assert_eq!(store.list().len(), 1);
    let uploads = store.uploads();
    assert_eq!(uploads.len(), sites.len(), "{uploads:#?}");
    let keys: Vec<String> = s3::shared()
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&format!("{prefix}/")))
        .collect();
    for u in &uploads {
        assert!(
            keys.contains(&format!("{prefix}/{}", u.path)),
            "{} missing from {keys:#?}",
            u.path
        );
    }
    let cabs = keys.iter().filter(|k| k.ends_with(".cab")).count();
    assert_eq!(cabs, sites.len(), "no stray upload objects: {keys:#?}");
    drop(lb);
}
