//! The update service's throughput on this machine: usage uploads per second and pack
//! download MB/s, for the zero-setup default (store folder + SQLite, one process), one
//! replica on PostgreSQL, three replicas on PostgreSQL behind haproxy, and three replicas
//! on PostgreSQL with the content in an S3-compatible server (`s3s-fs`), streamed through
//! the replicas or redirected to presigned URLs (`--content-redirect`), all on loopback
//! with real processes.
//!
//! ```text
//! cargo bench -p sct-service --bench replicas [-- --uploads N --pack-mib M --clients C]
//! ```
//! Prints a Markdown table (the README's performance section quotes one).
// PostgreSQL, haproxy and s3s-fs run on Unix only.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

#[path = "../../tests/common/haproxy.rs"]
mod haproxy;
#[path = "../../tests/common/service.rs"]
mod service;

use haproxy::{Balance, Balancer};
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::PackType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Args {
    uploads: usize,
    pack_mib: usize,
    clients: usize,
}

fn args() -> Args {
    let mut a = Args {
        uploads: 400,
        pack_mib: 64,
        clients: 16,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let num = |j: usize| -> usize {
            v.get(j)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--uploads" => a.uploads = num(i + 1),
            "--pack-mib" => a.pack_mib = num(i + 1),
            "--clients" => a.clients = num(i + 1),
            _ => {
                i += 1;
                continue; // cargo bench passes --bench
            }
        }
        i += 2;
    }
    a
}

struct Setup {
    name: &'static str,
    store: TestStore,
    _services: Vec<TestService>,
    lb: Option<Balancer>,
    direct: String,
}

/// Where a setup keeps its content.
#[derive(Clone, Copy, PartialEq)]
enum Content {
    Folder,
    /// In s3s-fs, streamed through the replicas.
    S3,
    /// In s3s-fs, content requests redirected to presigned URLs.
    S3Redirect,
}

impl Setup {
    fn new(name: &'static str, postgres: bool, replicas: usize, content: Content) -> Setup {
        let store = if postgres {
            TestStore::new_on_postgres()
        } else {
            TestStore::new()
        };
        if content != Content::Folder {
            store.use_shared_s3();
        }
        let extra: &[&str] = if content == Content::S3Redirect {
            &["--content-redirect"]
        } else {
            &[]
        };
        let services: Vec<TestService> = (0..replicas)
            .map(|_| TestService::start(&store, extra))
            .collect();
        let direct = services[0].url().to_string();
        let lb = (replicas > 1).then(|| {
            let urls: Vec<&str> = services.iter().map(|s| s.url()).collect();
            Balancer::start(&urls, Balance::RoundRobin)
        });
        Setup {
            name,
            store,
            _services: services,
            lb,
            direct,
        }
    }
    fn url(&self) -> &str {
        self.lb.as_ref().map_or(&self.direct, |b| b.url())
    }
}

/// `count` jobs over `clients` concurrent workers, each with its own HTTP client.
fn run_parallel(
    clients: usize,
    count: usize,
    job: impl Fn(&tokio::runtime::Runtime, &reqwest::Client, usize) + Sync,
) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    job(&rt, &client, i);
                }
            });
        }
    });
}

fn uploads_per_second(setup: &Setup, cabs: &[Vec<u8>], clients: usize) -> f64 {
    let url = format!("{}/v1/usage", setup.url());
    let start = Instant::now();
    run_parallel(clients, cabs.len(), |rt, c, i| {
        let status = rt
            .block_on(async { c.post(&url).body(cabs[i].clone()).send().await })
            .expect("upload")
            .status();
        assert!(status.is_success(), "upload {i}: {status}");
    });
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(setup.store.uploads().len(), cabs.len());
    cabs.len() as f64 / secs
}

fn download_mb_per_second(
    setup: &Setup,
    id: &uuid::Uuid,
    files: &[String],
    size: u64,
    clients: usize,
) -> f64 {
    let base = format!("{}/v1/packages/{id}/content", setup.url());
    let start = Instant::now();
    // Every client fetches the whole pack once.
    run_parallel(clients, clients * files.len(), |rt, c, i| {
        let f = &files[i % files.len()];
        let got = rt.block_on(async {
            let r = c.get(format!("{base}/{f}")).send().await.expect("download");
            assert!(r.status().is_success());
            let mut n = 0u64;
            let mut r = r;
            while let Some(chunk) = r.chunk().await.expect("body") {
                n += chunk.len() as u64;
            }
            n
        });
        assert_eq!(got, size / files.len() as u64);
    });
    let secs = start.elapsed().as_secs_f64();
    (clients as u64 * size) as f64 / secs / 1e6
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the replica benchmark needs PostgreSQL, haproxy and s3s-fs: Unix only");
}

#[cfg(unix)]
fn main() {
    let a = args();
    let setups = [
        Setup::new(
            "store folder + SQLite, 1 process (default)",
            false,
            1,
            Content::Folder,
        ),
        Setup::new("folder + PostgreSQL, 1 replica", true, 1, Content::Folder),
        Setup::new(
            "folder + PostgreSQL, 3 replicas behind haproxy",
            true,
            3,
            Content::Folder,
        ),
        Setup::new(
            "S3 (s3s-fs) + PostgreSQL, 3 replicas, streamed",
            true,
            3,
            Content::S3,
        ),
        Setup::new(
            "S3 (s3s-fs) + PostgreSQL, 3 replicas, --content-redirect",
            true,
            3,
            Content::S3Redirect,
        ),
    ];
    let file_count = 8;
    let file_size = (a.pack_mib * 1024 * 1024 / file_count) as u64;
    let files: Vec<String> = (0..file_count).map(|i| format!("part{i}.bin")).collect();
    let data: Vec<Vec<u8>> = (0..file_count)
        .map(|i| pseudo_random(file_size as usize, 100 + i as u64))
        .collect();
    println!(
        "| setup | uploads/s ({} cabs, {} clients) | download MB/s ({} clients x {} MiB) |",
        a.uploads, a.clients, a.clients, a.pack_mib
    );
    println!("|---|---|---|");
    for s in &setups {
        let content_files: Vec<(&str, &[u8])> = files
            .iter()
            .zip(&data)
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let content = write_content(&s.store.dir().join("content"), &content_files);
        let id = s.store.publish(
            "Bench",
            "5.00.9132.1000",
            PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        );
        let cab_path = s.store.dir().join("bench.cab");
        let cabs: Vec<Vec<u8>> = (0..a.uploads)
            .map(|_| {
                write_usage_cab(&cab_path, uuid::Uuid::new_v4(), "5.00.9106.1000");
                std::fs::read(&cab_path).unwrap()
            })
            .collect();
        let ups = uploads_per_second(s, &cabs, a.clients);
        let mbs = download_mb_per_second(s, &id, &files, file_size * file_count as u64, a.clients);
        println!("| {} | {ups:.0} | {mbs:.0} |", s.name);
    }
}
