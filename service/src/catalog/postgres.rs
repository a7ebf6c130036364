//! The PostgreSQL catalog (`postgres://USER@HOST:PORT/DB`): one database shared by any
//! number of replicas and by the publishing machine.
//!
//! - **TLS**: `sslmode=require` (the default) means an encrypted connection whose
//!   certificate chain and host name are verified, against the system's roots or the PEM
//!   bundle `sslrootcert=FILE`. Stricter than libpq's `require` (which does not verify),
//!   because this project never trusts an unverified peer unless told to:
//!   `sslmode=disable` is that explicit opt-out (plain TCP).
//! - **Password**: never in the URL (it would sit on a command line); from `PGPASSWORD`,
//!   else from a pgpass file (`PGPASSFILE`, default `~/.pgpass`, lines
//!   `host:port:database:user:password`, `*` wildcards), which must not be readable by
//!   group or others.
//! - **Schema**: table `sct_schema` holds the version. `migrate` runs in one transaction
//!   under a transaction-scoped advisory lock, so replicas started together serialise
//!   and each sees the finished schema; `open` only reads the version.
//! - **Pool**: `r2d2` over the synchronous `postgres` client (a thin wrapper of
//!   `tokio-postgres`), because the catalog trait is synchronous (called from
//!   `spawn_blocking` and from the command line).

use super::{
    duplicate_error, pack_from_columns, upload_from_columns, version_error, version_key, Catalog,
    CatalogPack, UploadInsert, UploadRecord, CATALOG_SCHEMA_VERSION, PACK_COLUMNS, UPLOAD_COLUMNS,
};
use crate::error::{Error, ErrorKind, Result};
use crate::version::SiteVersion;
use postgres::error::SqlState;
use r2d2_postgres::PostgresConnectionManager;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Connections a replica keeps open at most.
pub const POOL_SIZE: u32 = 8;
/// How long to wait for the server (connecting, or a free pooled connection).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Key of the advisory lock `migrate` holds ("SCTC").
const MIGRATE_LOCK: i64 = 0x5343_5443;

/// Schema version 2, created in one step (PostgreSQL catalogs start at 2).
const SCHEMA_V2: &str = "
CREATE TABLE packages (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    version_key      TEXT NOT NULL,
    type             TEXT NOT NULL CHECK (type IN ('Update', 'Hotfix')),
    min_site_version TEXT NOT NULL,
    max_site_version TEXT,
    hierarchies      TEXT NOT NULL,
    content_digest   TEXT NOT NULL,
    manifest_sha256  TEXT NOT NULL,
    size             BIGINT NOT NULL,
    file_count       BIGINT NOT NULL,
    publisher_name   TEXT NOT NULL,
    published        TEXT NOT NULL,
    UNIQUE (name, version_key, content_digest)
);
CREATE TABLE uploads (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY,
    id                TEXT PRIMARY KEY,
    hierarchy_id      TEXT NOT NULL,
    site_version      TEXT NOT NULL,
    diagnostics_level TEXT NOT NULL,
    selection         TEXT NOT NULL,
    path              TEXT NOT NULL,
    size              BIGINT NOT NULL,
    sha256            TEXT NOT NULL,
    received          TEXT NOT NULL,
    offered           BIGINT NOT NULL,
    UNIQUE (hierarchy_id, sha256)
);
CREATE INDEX uploads_by_hierarchy ON uploads (hierarchy_id, received);
";

/// How to use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Verified TLS (the default).
    Require,
    /// Plain TCP: an explicit opt-out.
    Disable,
}

/// A parsed `postgres://` catalog URL (no password: see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub sslmode: SslMode,
    /// PEM bundle of the CAs to trust instead of the system's.
    pub sslrootcert: Option<PathBuf>,
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }
}

fn bad_url(why: &str) -> Error {
    Error::invalid_argument(format!(
        "--catalog: {why} (expected postgres://USER@HOST:PORT/DB[?sslmode=require|disable&sslrootcert=FILE])"
    ))
}

/// Percent-decoding of URL components (user and database names may hold any byte).
fn decode(s: &str, what: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad_url(&format!("the {what} has a malformed %-escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_url(&format!("the {what} is not UTF-8")))
}

impl PgTarget {
    pub fn parse(text: &str) -> Result<PgTarget> {
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| bad_url("not a postgres:// URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, db) = rest
            .split_once('/')
            .ok_or_else(|| bad_url("the database name is missing"))?;
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| bad_url("the user name is missing"))?;
        if userinfo.contains(':') {
            return Err(Error::invalid_argument(
                "--catalog: a password in the URL is refused (it would be visible on the command line); \
                 give it in PGPASSWORD or a pgpass file (PGPASSFILE)",
            ));
        }
        let user = decode(userinfo, "user name")?;
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| bad_url("an unclosed [ in the host"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_url("the port is not a number from 1 to 65535"))?,
        };
        let dbname = decode(db, "database name")?;
        if user.is_empty() || host.is_empty() || dbname.is_empty() {
            return Err(bad_url("user, host and database must all be given"));
        }
        let mut target = PgTarget {
            user,
            host,
            port,
            dbname,
            sslmode: SslMode::Require,
            sslrootcert: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v, k)?;
            match k {
                "sslmode" => {
                    target.sslmode = match v.as_str() {
                        "require" | "verify-full" => SslMode::Require,
                        "disable" => SslMode::Disable,
                        other => {
                            return Err(bad_url(&format!(
                                "sslmode '{}' is not supported: use require (verified TLS, the default) or disable",
                                other.escape_debug()
                            )))
                        }
                    }
                }
                "sslrootcert" => target.sslrootcert = Some(PathBuf::from(v)),
                "password" => {
                    return Err(Error::invalid_argument(
                        "--catalog: a password in the URL is refused (it would be visible on the command line); \
                         give it in PGPASSWORD or a pgpass file (PGPASSFILE)",
                    ))
                }
                other => {
                    return Err(bad_url(&format!(
                        "unknown parameter '{}'",
                        other.escape_debug()
                    )))
                }
            }
        }
        Ok(target)
    }

    /// The client configuration: target, password (environment or pgpass file), timeouts.
    fn config(&self) -> Result<postgres::Config> {
        let mut c = postgres::Config::new();
        c.user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("sct-service")
            .connect_timeout(CONNECT_TIMEOUT)
            .ssl_mode(match self.sslmode {
                SslMode::Require => postgres::config::SslMode::Require,
                SslMode::Disable => postgres::config::SslMode::Disable,
            });
        if let Some(pw) = self.password()? {
            c.password(pw);
        }
        Ok(c)
    }

    /// `PGPASSWORD`, else the matching line of the pgpass file, else none (the server
    /// may not ask for one).
    fn password(&self) -> Result<Option<String>> {
        if let Some(pw) = std::env::var_os("PGPASSWORD") {
            return Ok(Some(pw.into_string().map_err(|_| {
                Error::invalid_argument("PGPASSWORD is not UTF-8")
            })?));
        }
        let (file, explicit) = match std::env::var_os("PGPASSFILE") {
            Some(f) => (PathBuf::from(f), true),
            None => match std::env::var_os("HOME") {
                Some(h) => (Path::new(&h).join(".pgpass"), false),
                None => return Ok(None),
            },
        };
        if !explicit && !file.exists() {
            return Ok(None);
        }
        pgpass_lookup(&file, self)
    }

    /// TLS settings: rustls with the system's roots or `sslrootcert`. (With
    /// `sslmode=disable` the connector is never used, and trusts nothing.)
    fn tls(&self) -> Result<MakeRustlsConnect> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.sslrootcert {
            _ if self.sslmode == SslMode::Disable => {}
            Some(file) => {
                let pem = std::fs::read(file).map_err(|e| {
                    Error::io(format!("reading sslrootcert {}", file.display()), &e)
                })?;
                let mut n = 0;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| {
                        Error::invalid_argument(format!(
                            "sslrootcert {} is not a PEM certificate bundle: {e}",
                            file.display()
                        ))
                    })?;
                    roots.add(cert).map_err(|e| {
                        Error::invalid_argument(format!(
                            "sslrootcert {}: a certificate is not usable: {e}",
                            file.display()
                        ))
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::invalid_argument(format!(
                        "sslrootcert {} holds no PEM certificate",
                        file.display()
                    )));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Tls,
                        "no trusted root certificates found on this system for the catalog's TLS; \
                         give the server's CA with sslrootcert=FILE",
                    ));
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The password for `t` in a pgpass file (libpq's format; `\` escapes `:` and `\`).
fn pgpass_lookup(file: &Path, t: &PgTarget) -> Result<Option<String>> {
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::io(format!("reading the password file {}", file.display()), &e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "the password file {} is readable by others; chmod 600 it",
                    file.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::io(format!("reading the password file {}", file.display()), &e))?;
    let port = t.port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let want = [t.host.as_str(), &port, &t.dbname, &t.user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Ok(Some(fields[4].clone()));
        }
    }
    Ok(None)
}

/// A PostgreSQL error as one clear line, with the catalog it came from.
fn pg_err(t: &impl std::fmt::Display, what: &str, e: &postgres::Error) -> Error {
    let kind = if e.as_db_error().is_some() {
        ErrorKind::Database
    } else {
        ErrorKind::Network
    };
    // The chain's last source says what actually went wrong (refused, TLS, auth...).
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    if let Some(db) = e.as_db_error() {
        msg = format!("{} ({})", db.message(), db.code().code());
    }
    Error::new(
        kind,
        format!(
            "service catalog {t}: {what}: {}",
            msg.replace(['\n', '\r'], " ")
        ),
    )
}

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>;

/// One connection, made directly: for `migrate` and for clear first-contact errors.
fn connect_once(t: &PgTarget) -> Result<postgres::Client> {
    t.config()?
        .connect(t.tls()?)
        .map_err(|e| pg_err(t, "connecting", &e))
}

/// The schema version recorded in the database; 0 when `sct_schema` does not exist.
fn read_version(t: &PgTarget, c: &mut impl postgres::GenericClient) -> Result<i64> {
    match c.query_opt("SELECT version FROM sct_schema", &[]) {
        Ok(Some(row)) => Ok(i64::from(row.get::<_, i32>(0))),
        Ok(None) => Ok(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(pg_err(t, "reading the schema version", &e)),
    }
}

/// Create or upgrade the schema; see the module docs. Returns (before, after).
pub fn migrate(t: &PgTarget) -> Result<(i64, i64)> {
    let mut client = connect_once(t)?;
    let mut tx = client
        .transaction()
        .map_err(|e| pg_err(t, "migrating", &e))?;
    // Held until commit: a second `migrate` waits here, then finds the schema done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .map_err(|e| pg_err(t, "taking the migration lock", &e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sct_schema (
            one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
            version INTEGER NOT NULL
        )",
    )
    .map_err(|e| pg_err(t, "migrating", &e))?;
    let before = read_version(t, &mut tx)?;
    if before > CATALOG_SCHEMA_VERSION {
        return Err(version_error(&t.to_string(), before));
    }
    if before < 2 {
        tx.batch_execute(SCHEMA_V2)
            .map_err(|e| pg_err(t, "creating the schema", &e))?;
    }
    tx.execute(
        "INSERT INTO sct_schema (one, version) VALUES (TRUE, $1)
         ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
        &[&(CATALOG_SCHEMA_VERSION as i32)],
    )
    .map_err(|e| pg_err(t, "migrating", &e))?;
    tx.commit().map_err(|e| pg_err(t, "migrating", &e))?;
    Ok((before, CATALOG_SCHEMA_VERSION))
}

/// An open PostgreSQL catalog (a connection pool).
pub struct PgCatalog {
    target: PgTarget,
    pool: Pool,
}

impl PgCatalog {
    /// Connect, and refuse a database whose schema is missing, older or newer.
    pub fn open(t: &PgTarget) -> Result<PgCatalog> {
        // First contact directly, so a refused connection, TLS or password problem is
        // reported as itself rather than as a pool timeout.
        let mut first = connect_once(t)?;
        let ver = read_version(t, &mut first)?;
        if ver != CATALOG_SCHEMA_VERSION {
            return Err(version_error(&t.to_string(), ver));
        }
        drop(first);
        let manager = PostgresConnectionManager::new(t.config()?, t.tls()?);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            .test_on_check_out(true)
            .build_unchecked(manager);
        Ok(PgCatalog {
            target: t.clone(),
            pool,
        })
    }

    fn conn(&self) -> Result<Conn> {
        self.pool.get().map_err(|e| {
            Error::new(
                ErrorKind::Network,
                format!(
                    "service catalog {}: no connection: {}",
                    self.target,
                    e.to_string().replace(['\n', '\r'], " ")
                ),
            )
        })
    }

    fn err(&self, what: &str, e: &postgres::Error) -> Error {
        pg_err(&self.target, what, e)
    }
}

fn row_to_pack(r: &postgres::Row) -> Result<CatalogPack> {
    pack_from_columns(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
        r.get(12),
    )
}

fn row_to_upload(r: &postgres::Row) -> Result<UploadRecord> {
    upload_from_columns(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
    )
}

impl Catalog for PgCatalog {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn ping(&self) -> Result<()> {
        let mut c = self.conn()?;
        c.query_one("SELECT count(*) FROM packages", &[])
            .map_err(|e| self.err("reading", &e))?;
        Ok(())
    }

    fn insert_pack(&self, p: &CatalogPack) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c
            .transaction()
            .map_err(|e| self.err("recording the pack", &e))?;
        let dup = tx
            .query_opt(
                &format!(
                    "SELECT {PACK_COLUMNS} FROM packages
                     WHERE name = $1 AND version_key = $2 AND content_digest = $3"
                ),
                &[&p.name, &version_key(&p.version), &p.content_digest],
            )
            .map_err(|e| self.err("reading", &e))?;
        if let Some(row) = dup {
            return Err(duplicate_error(&row_to_pack(&row)?));
        }
        let max = p.max_site_version.as_ref().map(|v| v.as_str().to_string());
        let hier = serde_json::to_string(&p.hierarchies).expect("uuids serialize");
        let r = tx.execute(
            "INSERT INTO packages (id, name, version, version_key, type, min_site_version,
                max_site_version, hierarchies, content_digest, manifest_sha256, size, file_count,
                publisher_name, published)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &p.id.to_string(),
                &p.name,
                &p.version.as_str(),
                &version_key(&p.version),
                &p.pack_type.as_str(),
                &p.min_site_version.as_str(),
                &max,
                &hier,
                &p.content_digest,
                &p.manifest_sha256,
                &(p.size as i64),
                &(p.file_count as i64),
                &p.publisher_name,
                &p.published,
            ],
        );
        match r {
            Ok(_) => {}
            // A concurrent publish of the same pack got there first.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                    "a pack with id {} or the same name, version and content is already published",
                    p.id
                ),
                ))
            }
            Err(e) => return Err(self.err("recording the pack", &e)),
        }
        tx.commit().map_err(|e| self.err("recording the pack", &e))
    }

    fn find_duplicate(
        &self,
        name: &str,
        version: &SiteVersion,
        content_digest: &str,
    ) -> Result<Option<CatalogPack>> {
        let mut c = self.conn()?;
        c.query_opt(
            &format!(
                "SELECT {PACK_COLUMNS} FROM packages
                 WHERE name = $1 AND version_key = $2 AND content_digest = $3"
            ),
            &[&name, &version_key(version), &content_digest],
        )
        .map_err(|e| self.err("reading", &e))?
        .map(|r| row_to_pack(&r))
        .transpose()
    }

    fn get_pack(&self, id: &uuid::Uuid) -> Result<Option<CatalogPack>> {
        let mut c = self.conn()?;
        c.query_opt(
            &format!("SELECT {PACK_COLUMNS} FROM packages WHERE id = $1"),
            &[&id.to_string()],
        )
        .map_err(|e| self.err("reading", &e))?
        .map(|r| row_to_pack(&r))
        .transpose()
    }

    fn list_packs(&self) -> Result<Vec<CatalogPack>> {
        let mut c = self.conn()?;
        c.query(
            &format!("SELECT {PACK_COLUMNS} FROM packages ORDER BY published, seq"),
            &[],
        )
        .map_err(|e| self.err("reading", &e))?
        .iter()
        .map(row_to_pack)
        .collect()
    }

    fn find_upload(&self, hierarchy_id: &uuid::Uuid, sha256: &str) -> Result<Option<UploadRecord>> {
        let mut c = self.conn()?;
        c.query_opt(
            &format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE hierarchy_id = $1 AND sha256 = $2"
            ),
            &[&hierarchy_id.to_string(), &sha256],
        )
        .map_err(|e| self.err("reading", &e))?
        .map(|r| row_to_upload(&r))
        .transpose()
    }

    fn insert_upload(&self, u: &UploadRecord) -> Result<UploadInsert> {
        let mut c = self.conn()?;
        let n = c
            .execute(
                "INSERT INTO uploads (id, hierarchy_id, site_version, diagnostics_level, selection,
                    path, size, sha256, received, offered)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (hierarchy_id, sha256) DO NOTHING",
                &[
                    &u.id,
                    &u.hierarchy_id.to_string(),
                    &u.site_version,
                    &u.diagnostics_level,
                    &u.selection.as_str(),
                    &u.path,
                    &(u.size as i64),
                    &u.sha256,
                    &u.received,
                    &(u.offered as i64),
                ],
            )
            .map_err(|e| self.err("recording the upload", &e))?;
        if n == 1 {
            return Ok(UploadInsert::Inserted);
        }
        drop(c);
        self.find_upload(&u.hierarchy_id, &u.sha256)?
            .map(UploadInsert::Existing)
            .ok_or_else(|| super::corrupt("uploads (a conflicting row vanished)"))
    }

    fn list_uploads(&self) -> Result<Vec<UploadRecord>> {
        let mut c = self.conn()?;
        c.query(
            &format!("SELECT {UPLOAD_COLUMNS} FROM uploads ORDER BY received, seq"),
            &[],
        )
        .map_err(|e| self.err("reading", &e))?
        .iter()
        .map(row_to_upload)
        .collect()
    }
}
