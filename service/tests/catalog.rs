//! The catalog beyond one machine: `migrate` and the schema checks, the PostgreSQL URL,
//! password and TLS rules, `/v1/ready`, and "one cab, one upload" across replicas, on a
//! real PostgreSQL server (tests/common/postgres.rs) and real SQLite files.
// PostgreSQL, haproxy and s3s-fs test servers run on Unix only.
#![cfg(unix)]

#[path = "../../tests/common/service.rs"]
mod service;

use service::postgres;
use service::{pseudo_random, write_content, write_usage_cab, TestService, TestStore};
use serviceconnection::api::{PackType, UploadResponse};
use std::path::Path;
use std::process::{Command, Output};

fn sct(args: &[&str]) -> Command {
    let mut c = Command::new(service::bin());
    c.args(args);
    c
}

/// Run with the test server's password in the environment (never an argument).
fn with_pw(mut c: Command) -> Output {
    c.env("PGPASSWORD", postgres::server().password())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fresh_db_url() -> String {
    let pg = postgres::server();
    pg.url(&pg.create_database())
}

fn http(method: &str, url: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut r = c.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            r = r.body(b);
        }
        let r = r.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn serve_refuses_an_unmigrated_or_newer_catalog_and_migrate_fixes_the_first() {
    let store = TestStore::new();
    let url = fresh_db_url();
    let serve = |url: &str| {
        let mut c = sct(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--catalog",
            url,
            "--store",
        ]);
        c.arg(store.path());
        with_pw(c)
    };
    // An empty database: refused with the command that fixes it; nothing created.
    let out = serve(&url);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("sct-service migrate"), "{err}");
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap();
    let pg = postgres::server();
    assert_eq!(
        pg.psql(
            db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .trim(),
        "0"
    );
    // list and publish refuse it the same way.
    let out = with_pw(sct(&["list", "--catalog", &url]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("migrate"), "{}", stderr(&out));

    // migrate creates schema 2; a second run has nothing to do.
    let out = with_pw(sct(&["migrate", "--catalog", &url]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from schema 0 to 2"),
        "{}",
        stderr(&out)
    );
    let out = with_pw(sct(&["migrate", "--catalog", &url]));
    assert!(out.status.success());
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    let out = with_pw(sct(&["list", "--json", "--catalog", &url]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // A catalog from a newer sct-service: serve and migrate both refuse, nothing changes.
    pg.psql(db, "UPDATE sct_schema SET version = 99");
    for out in [serve(&url), with_pw(sct(&["migrate", "--catalog", &url]))] {
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("newer sct-service") && err.contains("99"),
            "{err}"
        );
    }
    assert_eq!(pg.psql(db, "SELECT version FROM sct_schema").trim(), "99");
}

#[test]
fn replicas_migrating_at_once_do_not_race() {
    let url = fresh_db_url();
    let children: Vec<_> = (0..6)
        .map(|_| {
            sct(&["migrate", "--catalog", &url])
                .env("PGPASSWORD", postgres::server().password())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        if stderr(&out).contains("from schema 0 to 2") {
            created += 1;
        }
    }
    // Exactly one run created the schema; the others waited for it and found it done.
    assert_eq!(created, 1);
    let out = with_pw(sct(&["list", "--uploads", "--json", "--catalog", &url]));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_password_never_goes_on_the_command_line_and_tls_is_verified() {
    let url = fresh_db_url();
    assert!(with_pw(sct(&["migrate", "--catalog", &url]))
        .status
        .success());
    let pg = postgres::server();

    // A password inside the URL is refused without being echoed.
    let with_secret = url.replacen("sct@", "sct:Sup3rSecret9@", 1);
    let out = with_pw(sct(&["list", "--catalog", &with_secret]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("PGPASSWORD"), "{err}");
    assert!(!err.contains("Sup3rSecret9"), "{err}");
    let out = with_pw(sct(&[
        "list",
        "--catalog",
        &format!("{url}&password=Sup3rSecret9"),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).contains("Sup3rSecret9"));

    // A wrong password: the server's refusal, as one line.
    let out = sct(&["list", "--catalog", &url])
        .env("PGPASSWORD", "wrong-password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("password authentication failed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A pgpass file instead of PGPASSWORD; refused while others can read it.
    let dir = tempfile::tempdir().unwrap();
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("# test\n127.0.0.1:{}:*:sct:{}\n", pg.port(), pg.password()),
    )
    .unwrap();
    let run_pgpass = || {
        sct(&["list", "--json", "--catalog", &url])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", &pgpass)
            .output()
            .unwrap()
    };
    set_mode(&pgpass, 0o644);
    let out = run_pgpass();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    set_mode(&pgpass, 0o600);
    let out = run_pgpass();
    assert!(out.status.success(), "{}", stderr(&out));

    // Another CA: the server's certificate is not trusted, so nothing is sent.
    let other = tempfile::tempdir().unwrap();
    let other_ca = service_tls::make_test_ca(other.path(), service_tls::TestCaOpts::fresh());
    let untrusted = url.replace(
        &pg.ca().display().to_string(),
        &other_ca.ca.display().to_string(),
    );
    let out = with_pw(sct(&["list", "--catalog", &untrusted]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // sslmode=disable is an explicit opt-out; this server only accepts TLS logins.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let out = with_pw(sct(&["list", "--catalog", &plain]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pg_hba.conf"), "{}", stderr(&out));

    // Malformed URLs: one clear line each.
    for bad in [
        "mysql://x@h/db",
        "postgres://127.0.0.1:5432/db",
        "postgres://sct@127.0.0.1:99999/db",
        "postgres://sct@127.0.0.1:5432/db?sslmode=prefer",
        "postgres://sct@127.0.0.1:5432/db?bogus=1",
        "sqlite:",
    ] {
        let out = sct(&["list", "--catalog", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            stderr(&out).contains("--catalog"),
            "{bad}: {}",
            stderr(&out)
        );
    }
}

use service::postgres::pg_tls as service_tls;

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn ready_reports_the_catalog_and_the_content_store_health_stays_liveness() {
    // PostgreSQL: ready while the database answers, 503 once it is gone.
    let store = TestStore::new_on_postgres();
    let svc = TestService::start(&store, &[]);
    let (status, body) = http("GET", &format!("{}/v1/ready", svc.url()), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let url = store.catalog_url().unwrap();
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap();
    postgres::server().psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    let (status, body) = http("GET", &format!("{}/v1/ready", svc.url()), None);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("not_ready") && text.contains("catalog"),
        "{text}"
    );
    let (status, _) = http("GET", &format!("{}/v1/health", svc.url()), None);
    assert_eq!(status, 200);

    // SQLite + folder: 503 when the content store cannot be read.
    let store = TestStore::new();
    let token = store.token_file("t0ken-for-ready");
    let svc = TestService::start_args(
        store.path(),
        [std::ffi::OsStr::new("--token-file"), token.as_os_str()],
    );
    let (status, _) = http("GET", &format!("{}/v1/ready", svc.url()), None);
    assert_eq!(
        status, 200,
        "ready needs no token (load balancers have none)"
    );
    std::fs::rename(store.path().join("packs"), store.path().join("packs.away")).unwrap();
    let (status, body) = http("GET", &format!("{}/v1/ready", svc.url()), None);
    assert_eq!(status, 503);
    assert!(
        String::from_utf8_lossy(&body).contains("content store"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    std::fs::rename(store.path().join("packs.away"), store.path().join("packs")).unwrap();
    let (status, _) = http("GET", &format!("{}/v1/ready", svc.url()), None);
    assert_eq!(status, 200);
}

#[test]
fn the_same_cab_through_two_replicas_is_one_upload() {
    let store = TestStore::new_on_postgres();
    let a = TestService::start(&store, &[]);
    let b = TestService::start(&store, &[]);
    let h = uuid::Uuid::new_v4();
    let cab = store.dir().join("usage.cab");
    write_usage_cab(&cab, h, "5.00.9106.1000");
    let bytes = std::fs::read(&cab).unwrap();
    // Eight clients at once, alternating replicas, all with the same cab.
    let urls: Vec<String> = (0..8)
        .map(|i| format!("{}/v1/usage", if i % 2 == 0 { a.url() } else { b.url() }))
        .collect();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = urls
            .iter()
            .map(|u| {
                let body = bytes.clone();
                s.spawn(move || {
                    let (status, body) = http("POST", u, Some(body));
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    serde_json::from_slice::<UploadResponse>(&body)
                        .unwrap()
                        .upload_id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let uploads = store.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].id, ids[0]);
    // Exactly one stored copy (the losers of a race remove theirs).
    let dir = store.path().join("uploads").join(h.to_string());
    let stored: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(stored[0].path()).unwrap(), bytes);

    // A different cab of the same hierarchy is a different upload.
    write_usage_cab(&cab, h, "5.00.9122.1000");
    let (status, body) = http(
        "POST",
        &format!("{}/v1/usage", b.url()),
        Some(std::fs::read(&cab).unwrap()),
    );
    assert_eq!(status, 200);
    let other: UploadResponse = serde_json::from_slice(&body).unwrap();
    assert_ne!(other.upload_id, ids[0]);
    assert_eq!(store.uploads().len(), 2);
}

#[test]
fn publish_goes_to_the_shared_catalog_with_a_key_kept_off_the_replica() {
    let store = TestStore::new_on_postgres();
    let url = store.catalog_url().unwrap();
    // The key lives on the publishing machine only.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("publisher.key");
    std::fs::rename(store.secret_key_path(), &key).unwrap();
    let content = write_content(
        &store.dir().join("c"),
        &[("a.bin", &pseudo_random(10_000, 3)[..])],
    );
    let mut c = sct(&[
        "publish",
        "--catalog",
        &url,
        "--name",
        "Shared",
        "--version",
        "5.00.9130.1000",
        "--type",
        PackType::Update.as_str(),
        "--min-site-version",
        "5.00.9000.1000",
        "--store",
    ]);
    c.arg(store.path()).arg("--key").arg(&key).arg(&content);
    let out = with_pw(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // In the shared catalog, not in the store's own catalog.sqlite.
    let listed = with_pw(sct(&["list", "--json", "--catalog", &url]));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
    let local = sct(&["list", "--json", "--store"])
        .arg(store.path())
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", stderr(&local));
    assert!(!String::from_utf8_lossy(&local.stdout).contains(&id));
    // A replica serves it without the key.
    let svc = TestService::start(&store, &[]);
    let (status, _) = http(
        "GET",
        &format!("{}/v1/packages/{id}/content/a.bin", svc.url()),
        None,
    );
    assert_eq!(status, 200);
    // Without a key, publish says so and records nothing.
    let mut c = sct(&[
        "publish",
        "--catalog",
        &url,
        "--name",
        "No key",
        "--version",
        "5.00.9131.1000",
        "--type",
        "Update",
        "--min-site-version",
        "5.00.9000.1000",
        "--store",
    ]);
    c.arg(store.path()).arg(&content);
    let out = with_pw(c);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("signing key"), "{}", stderr(&out));
    assert_eq!(store.list().len(), 1);
}

#[test]
fn a_version_1_sqlite_catalog_is_refused_until_migrated_and_duplicates_fold() {
    let store = TestStore::new();
    let path = store.path().join("catalog.sqlite");
    let h = uuid::Uuid::new_v4().to_string();
    {
        // Make it what the first sct-service wrote: schema 1, the same cab twice.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP INDEX uploads_once; PRAGMA user_version = 1;")
            .unwrap();
        for (id, rec) in [
            ("u1", "2026-01-01T00:00:00Z"),
            ("u2", "2026-01-02T00:00:00Z"),
        ] {
            c.execute(
                "INSERT INTO uploads (id, hierarchy_id, site_version, diagnostics_level, selection,
                    path, size, sha256, received, offered)
                 VALUES (?1, ?2, '5.00.9106.1000', 'Enhanced', 'Latest', 'uploads/x.cab', 10, 'abc', ?3, 0)",
                rusqlite::params![id, h, rec],
            )
            .unwrap();
        }
    }
    let out = sct(&["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("schema 1") && err.contains("sct-service migrate"),
        "{err}"
    );
    let out = sct(&["migrate", "--store"])
        .arg(store.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from schema 1 to 2"),
        "{}",
        stderr(&out)
    );
    let ups = store.uploads();
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].id, "u1", "the first record is kept");
}
