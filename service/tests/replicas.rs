//! Stateless replicas: three `sct-service serve` processes on one PostgreSQL catalog and
//! one content store, behind a real `haproxy` on loopback. Many hierarchies upload at
//! once and each is recorded exactly once; a replica killed in the middle of a download
//! costs nothing: Connect completes through the balancer, resuming on another replica.
// PostgreSQL, haproxy and s3s-fs test servers run on Unix only.
#![cfg(unix)]

#[path = "../../tests/common/haproxy.rs"]
mod haproxy;
#[path = "../../tests/common/service.rs"]
mod service;

use haproxy::{Balance, Balancer};
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::{PackType, UploadResponse};
use serviceconnection::connect::{connect, ConnectOptions, FileStatus};
use serviceconnection::progress::{Phase, Progress};
use std::collections::{BTreeMap, BTreeSet};

fn replicas(store: &TestStore, n: usize) -> Vec<TestService> {
    (0..n).map(|_| TestService::start(store, &[])).collect()
}

fn post(url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = c.post(url).body(body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn two_hundred_hierarchies_upload_at_once_each_recorded_exactly_once() {
    let store = TestStore::new_on_postgres();
    let reps = replicas(&store, 3);
    let urls: Vec<&str> = reps.iter().map(|r| r.url()).collect();
    let lb = Balancer::start(&urls, Balance::RoundRobin);
    let cabs_dir = store.dir().join("cabs");
    std::fs::create_dir_all(&cabs_dir).unwrap();
    let hierarchies: Vec<uuid::Uuid> = (0..200).map(|_| uuid::Uuid::new_v4()).collect();
    let cabs: Vec<Vec<u8>> = hierarchies
        .iter()
        .map(|h| {
            let p = cabs_dir.join(format!("{h}.cab"));
            write_usage_cab(&p, *h, "5.00.9106.1000");
            std::fs::read(p).unwrap()
        })
        .collect();
    let target = format!("{}/v1/usage", lb.url());
    // 16 clients at a time, each taking the next hierarchy; every 10th cab is sent twice
    // (a retry), which must not make a second upload.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ids = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= cabs.len() {
                    return;
                }
                let sends = if i % 10 == 0 { 2 } else { 1 };
                for _ in 0..sends {
                    let (status, body) = post(&target, cabs[i].clone());
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    let r: UploadResponse = serde_json::from_slice(&body).unwrap();
                    assert_eq!(r.hierarchy_id, hierarchies[i]);
                    let mut ids = ids.lock().unwrap();
                    let first = ids.entry(i).or_insert_with(|| r.upload_id.clone());
                    assert_eq!(*first, r.upload_id, "a retried cab got a new upload id");
                }
            });
        }
    });
    // The catalog: 200 rows, one per hierarchy, with the ids the clients were given.
    let uploads = store.uploads();
    assert_eq!(uploads.len(), 200);
    let recorded: BTreeSet<_> = uploads.iter().map(|u| u.hierarchy_id).collect();
    assert_eq!(recorded, hierarchies.iter().copied().collect());
    let given: BTreeSet<String> = ids.into_inner().unwrap().into_values().collect();
    let listed: BTreeSet<String> = uploads.iter().map(|u| u.id.clone()).collect();
    assert_eq!(given, listed);
    // The content store: exactly one cab per upload, where the catalog says.
    let mut files = 0;
    for u in &uploads {
        assert!(store.path().join(&u.path).is_file(), "{}", u.path);
    }
    for d in std::fs::read_dir(store.path().join("uploads"))
        .unwrap()
        .flatten()
    {
        if d.file_name() != ".incoming" {
            files += std::fs::read_dir(d.path()).unwrap().count();
        }
    }
    assert_eq!(files, 200);
    // Every replica took a share.
    for r in &reps {
        assert!(r.log().contains("POST /v1/usage 200"), "{}", r.log());
    }
}

#[test]
fn a_replica_killed_mid_download_costs_nothing() {
    let store = TestStore::new_on_postgres();
    let big = pseudo_random(24 * 1024 * 1024, 21);
    let small = pseudo_random(100_000, 22);
    let content = write_content(
        &store.dir().join("c"),
        &[("big.bin", &big[..]), ("small.bin", &small[..])],
    );
    let id = store.publish(
        "Replicated",
        "5.00.9132.1000",
        PackType::Update,
        "5.00.9000.1000",
        None,
        &[],
        &content,
    );
    let mut reps = replicas(&store, 3);
    let urls: Vec<&str> = reps.iter().map(|r| r.url()).collect();
    // `first`: every connection goes to r0 while it is up, so r0 is the one serving.
    let lb = Balancer::start(&urls, Balance::First);
    let victim = reps[0].pid();

    let h = uuid::Uuid::new_v4();
    let cab = store.dir().join("usage.cab");
    write_usage_cab(&cab, h, "5.00.9106.1000");
    let dest = store.dir().join("UpdatePacks");
    let mut opts = ConnectOptions::new(&cab, &dest, lb.url());
    opts.parallelism = 2;
    opts.max_attempts = 5;
    opts.retry_base_delay_ms = 50;
    opts.idle_timeout_secs = 20;
    // Slow enough that most of the pack is still to come when the replica dies (the
    // kill happens on a progress event, not after a delay).
    opts.max_bytes_per_second = Some(16 * 1024 * 1024);
    let mut killed_at = None;
    let mut on_progress = |p: &Progress| {
        if killed_at.is_none() && p.phase == Phase::Download && p.done > 1024 * 1024 {
            // SAFETY: kill(2) on a child this test started.
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
            killed_at = Some((p.done, p.total));
        }
        true
    };
    let report = connect(&opts, &mut on_progress).expect("connect");
    let (done, total) = killed_at.expect("the download reached the kill point");
    assert!(
        done < total,
        "killed at {done} of {total}: not mid-download"
    );
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(report.packs.len(), 1);
    assert!(!reps[0].is_running(), "the victim is dead");
    let pack = &report.packs[0];
    assert_eq!(pack.package_guid, id);
    let content = pack.path.join("content");
    assert!(std::fs::read(content.join("big.bin")).unwrap() == big);
    assert!(std::fs::read(content.join("small.bin")).unwrap() == small);
    let big_report = pack.files.iter().find(|f| f.path == "big.bin").unwrap();
    assert_eq!(
        big_report.status,
        FileStatus::Resumed,
        "big.bin was not resumed: {big_report:?}"
    );
    // The rest came from a surviving replica, resumed from where the cut left it.
    let survivors = format!("{}{}", reps[1].log(), reps[2].log());
    assert!(
        survivors.contains(&format!("GET /v1/packages/{id}/content/big.bin 206")),
        "no resumed range request on a surviving replica:\n{survivors}"
    );
    // The catalog is consistent: the pack once, the upload once.
    assert_eq!(store.list().len(), 1);
    let ups = store.uploads();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].hierarchy_id, h);
    drop(lb);
}
