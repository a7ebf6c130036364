//! `sct-service`: the reference update service (SPEC section 4).
//!
//! ```text
//! sct-service keygen  --store DIR
//! sct-service migrate (--catalog URL | --store DIR)
//! sct-service publish --store DIR [--catalog URL] [--content URL] [--key FILE] --name NAME
//!                     --version V --type Update|Hotfix --min-site-version V
//!                     [--max-site-version V] [--hierarchy GUID ...] [--publisher-name N]
//!                     CONTENT_DIR
//! sct-service serve   --store DIR [--catalog URL] [--content URL [--content-redirect
//!                     [--redirect-ttl SECS]]] [--listen 127.0.0.1:0]
//!                     [--tls-cert F --tls-key F] [--token-file F] [--max-upload-bytes N]
//! sct-service list    (--catalog URL | --store DIR | --content URL) [--json] [--uploads | --console]
//! sct-service console publish (--store DIR | --key FILE) [--content URL] [--catalog URL] FILE.json
//! ```
//! `--catalog` is `sqlite:PATH` or `postgres://USER@HOST:PORT/DB` (default: the store's
//! `catalog.sqlite`); it may also come from the `SCT_CATALOG` environment variable. A
//! PostgreSQL password comes from `PGPASSWORD` or a pgpass file, never the command line.
//! `--content` is a folder (default: the store) or `s3://BUCKET/PREFIX`, with endpoint,
//! region and credentials from `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (`AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
//! Exit status 0 on success, 1 on failure (one line on stderr), 2 on a usage error.

use clap::{Parser, Subcommand};
use sct_service::content::{Content, ContentUrl};
use sct_service::{
    self as service, catalog, publish::DEFAULT_PUBLISHER_NAME, CatalogUrl, PublishRequest,
    ServeOptions, Store,
};
use serviceconnection::api::PackType;
use serviceconnection::SiteVersion;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sct-service",
    version,
    about = "ServiceConnection reference update service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store and its Ed25519 (minisign) signing key; prints the public key.
    Keygen {
        /// Store folder (created; must not already hold a key).
        #[arg(long)]
        store: PathBuf,
    },
    /// Create the catalog's schema or upgrade it to this version (safe to run from
    /// several machines at once); `serve` refuses a catalog that was not migrated.
    Migrate {
        /// Catalog: sqlite:PATH or postgres://USER@HOST:PORT/DB.
        #[arg(long, env = "SCT_CATALOG", required_unless_present = "store")]
        catalog: Option<String>,
        /// Store folder whose catalog.sqlite to migrate (when --catalog is not given).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Add CONTENT_DIR as a new signed update pack; prints its GUID.
    Publish {
        /// Store folder made by `keygen` (where the content goes).
        #[arg(long)]
        store: PathBuf,
        /// Catalog: sqlite:PATH or postgres://USER@HOST:PORT/DB (default: the store's).
        #[arg(long, env = "SCT_CATALOG")]
        catalog: Option<String>,
        /// Minisign secret key file (default: the store's publisher.key).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Display name, e.g. "Configuration Manager 2211".
        #[arg(long)]
        name: String,
        /// Full four-part version of the pack, e.g. 5.00.9096.1000.
        #[arg(long)]
        version: SiteVersion,
        #[arg(long = "type", value_name = "Update|Hotfix")]
        pack_type: PackType,
        /// Lowest site version the pack applies to.
        #[arg(long, value_name = "V")]
        min_site_version: SiteVersion,
        /// Highest site version the pack applies to (default: no upper bound).
        #[arg(long, value_name = "V")]
        max_site_version: Option<SiteVersion>,
        /// Offer the pack only to this hierarchy (repeatable); default: every hierarchy.
        #[arg(long = "hierarchy", value_name = "GUID")]
        hierarchies: Vec<uuid::Uuid>,
        /// Publisher name written into the manifest.
        #[arg(long, value_name = "N", default_value = DEFAULT_PUBLISHER_NAME)]
        publisher_name: String,
        /// Where the pack's content, manifest and signature go: a folder (default: the
        /// store) or s3://BUCKET/PREFIX (endpoint, region and credentials from AWS_*).
        #[arg(long, value_name = "URL", value_parser = parse_content)]
        content: Option<ContentUrl>,
        /// Folder of regular files (no symbolic links) that becomes the pack's content/.
        content_dir: PathBuf,
    },
    /// Serve the HTTP API until SIGINT/SIGTERM.
    Serve {
        /// Store folder made by `keygen`.
        #[arg(long)]
        store: PathBuf,
        /// Catalog: sqlite:PATH or postgres://USER@HOST:PORT/DB (default: the store's).
        #[arg(long, env = "SCT_CATALOG")]
        catalog: Option<String>,
        /// Address to listen on; port 0 picks a free port (printed on the first line).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long, value_name = "F", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, value_name = "F", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// File whose first line is the bearer token clients must send.
        #[arg(long, value_name = "F")]
        token_file: Option<PathBuf>,
        /// Largest usage cab accepted (bytes).
        #[arg(long, value_name = "N", default_value_t = service::DEFAULT_MAX_UPLOAD_BYTES)]
        max_upload_bytes: u64,
        /// Close a connection after this many seconds without a byte moving either way.
        #[arg(long, value_name = "SECS", default_value_t = service::server::DEFAULT_IDLE_TIMEOUT.as_secs())]
        idle_timeout: u64,
        /// Connections served at once; more clients wait until one closes.
        #[arg(long, value_name = "N", default_value_t = service::server::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Content, manifests, signatures and uploads: a folder (default: the store) or
        /// s3://BUCKET/PREFIX (endpoint, region and credentials from AWS_* variables).
        #[arg(long, value_name = "URL", value_parser = parse_content)]
        content: Option<ContentUrl>,
        /// Answer content requests with a 307 to a short-lived presigned URL of the
        /// object store instead of streaming the bytes through this process.
        #[arg(long)]
        content_redirect: bool,
        /// Lifetime of those presigned URLs.
        #[arg(long, value_name = "SECS", default_value_t = service::server::DEFAULT_REDIRECT_TTL.as_secs(), requires = "content_redirect")]
        redirect_ttl: u64,
    },
    /// Console content: the signed document Connect fetches and Import brings into sites.
    Console {
        #[command(subcommand)]
        action: ConsoleCommand,
    },
    /// List the published packs (or, with --uploads, the received usage cabs; with
    /// --console, the console content versions).
    List {
        /// Store folder made by `keygen` (its catalog.sqlite, unless --catalog is given).
        #[arg(long, required_unless_present_any = ["catalog", "content"])]
        store: Option<PathBuf>,
        /// Catalog: sqlite:PATH or postgres://USER@HOST:PORT/DB.
        #[arg(long, env = "SCT_CATALOG")]
        catalog: Option<String>,
        /// Content store of the console content versions (with --console): a folder
        /// (default: the store) or s3://BUCKET/PREFIX.
        #[arg(long, value_name = "URL", value_parser = parse_content)]
        content: Option<ContentUrl>,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// List received usage cabs instead of packs.
        #[arg(long, conflicts_with = "console")]
        uploads: bool,
        /// List the published console content versions instead of packs.
        #[arg(long)]
        console: bool,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Validate FILE (servicing rows and messages), stamp the next content_version and the
    /// time, sign it and keep it as a new version; prints the version.
    Publish {
        /// Store folder made by `keygen` (its publisher.key signs; the default content store).
        #[arg(long, required_unless_present = "key")]
        store: Option<PathBuf>,
        /// Minisign secret key file (default: the store's publisher.key).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Catalog: accepted like `publish` takes it; console content versions live in the
        /// content store, not in the catalog, so it is only checked for syntax.
        #[arg(long, env = "SCT_CATALOG")]
        catalog: Option<String>,
        /// Where the versions go: a folder (default: the store) or s3://BUCKET/PREFIX
        /// (endpoint, region and credentials from AWS_*).
        #[arg(long, value_name = "URL", value_parser = parse_content)]
        content: Option<ContentUrl>,
        /// JSON file with `servicing` and `messages` (see the README).
        file: PathBuf,
    },
}

fn parse_content(s: &str) -> Result<ContentUrl, String> {
    ContentUrl::parse(s).map_err(|e| e.message().to_string())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("sct-service: error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> serviceconnection::Result<()> {
    match cli.command {
        Command::Keygen { store } => {
            let pk = service::keygen(&store)?;
            println!("{}", pk.to_base64());
            eprintln!(
                "sct-service: created store {} (key ID {}); sites trust {}",
                store.display(),
                pk.key_id(),
                Store::at(&store).public_key_path().display()
            );
        }
        Command::Migrate { catalog, store } => {
            let url = CatalogUrl::or_store(catalog.as_deref(), store.as_deref())?;
            let (before, after) = catalog::migrate(&url)?;
            if before == after {
                eprintln!("sct-service: catalog {url} is at schema {after}; nothing to do");
            } else {
                eprintln!("sct-service: catalog {url} migrated from schema {before} to {after}");
            }
        }
        Command::Publish {
            store,
            catalog,
            key,
            name,
            version,
            pack_type,
            min_site_version,
            max_site_version,
            hierarchies,
            publisher_name,
            content,
            content_dir,
        } => {
            let store = match &catalog {
                None => Store::open(&store)?,
                Some(_) => Store::open_folder(&store)?,
            };
            let url = CatalogUrl::or_store(catalog.as_deref(), Some(store.root()))?;
            let key = key.unwrap_or_else(|| store.secret_key_path());
            let pack = service::publish::publish_to(
                &store,
                &url,
                &key,
                content.as_ref(),
                &PublishRequest {
                    name,
                    version,
                    pack_type,
                    min_site_version,
                    max_site_version,
                    hierarchies,
                    publisher_name,
                    content_dir,
                },
            )?;
            println!("{}", pack.id);
        }
        Command::Serve {
            store,
            catalog,
            listen,
            tls_cert,
            tls_key,
            token_file,
            max_upload_bytes,
            idle_timeout,
            max_connections,
            content,
            content_redirect,
            redirect_ttl,
        } => {
            let token = token_file
                .as_deref()
                .map(service::server::read_token_file)
                .transpose()?;
            service::serve(
                &ServeOptions {
                    store,
                    catalog: catalog.as_deref().map(CatalogUrl::parse).transpose()?,
                    listen,
                    tls_cert,
                    tls_key,
                    max_upload_bytes,
                    idle_timeout: std::time::Duration::from_secs(idle_timeout.max(1)),
                    max_connections,
                    content,
                    content_redirect: content_redirect
                        .then(|| std::time::Duration::from_secs(redirect_ttl.max(1))),
                },
                token,
            )?;
        }
        Command::Console {
            action:
                ConsoleCommand::Publish {
                    store,
                    key,
                    catalog,
                    content,
                    file,
                },
        } => {
            if let Some(c) = &catalog {
                CatalogUrl::parse(c)?;
            }
            let v = match (&store, &key, &content) {
                // The default, unchanged: the store's key, versions in the store folder.
                (Some(store), None, None) => service::console::publish(store, &file)?,
                _ => {
                    let key = match (&key, &store) {
                        (Some(k), _) => k.clone(),
                        (None, Some(s)) => Store::at(s).secret_key_path(),
                        (None, None) => unreachable!("clap requires --store or --key"),
                    };
                    let root = store.clone().unwrap_or_default();
                    if content.is_none() && store.is_none() {
                        return Err(serviceconnection::Error::invalid_argument(
                            "console publish --key needs --content URL or --store DIR (where the versions go)",
                        ));
                    }
                    let content = Content::open(content.as_ref(), &root)?;
                    service::console::publish_to(&key, &content, &file)?
                }
            };
            println!("{}", v.content_version);
            eprintln!(
                "sct-service: published console content version {} ({} servicing rows, {} messages)",
                v.content_version, v.servicing, v.messages
            );
        }
        Command::List {
            store,
            json,
            console,
            content,
            ..
        } if console => {
            // Console content versions live in the content store, not in the catalog.
            let list = match (&content, &store) {
                (None, Some(store)) => service::console::list(store)?,
                (None, None) => {
                    return Err(serviceconnection::Error::invalid_argument(
                        "list --console needs --content URL or --store DIR (console content lives in the content store)",
                    ))
                }
                (Some(url), _) => service::console::list_in(&Content::open(
                    Some(url),
                    store.as_deref().unwrap_or(std::path::Path::new("")),
                )?)?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
            } else {
                print_console_versions(&list);
            }
        }
        Command::List {
            store,
            catalog,
            json,
            uploads,
            content,
            ..
        } => {
            let catalog = match (&catalog, &store) {
                (None, Some(root)) => {
                    let store = Store::open(root)?;
                    catalog::open(&CatalogUrl::Sqlite(store.catalog_path()))?
                }
                _ => catalog::open(&CatalogUrl::or_store(catalog.as_deref(), store.as_deref())?)?,
            };
            if uploads {
                let list = catalog.list_uploads()?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&list).expect("serializes")
                    );
                } else {
                    for u in list {
                        println!(
                            "{}  {}  {}  {}  offered {}  {}",
                            u.received,
                            u.hierarchy_id,
                            u.site_version,
                            u.selection.as_str(),
                            u.offered,
                            u.path
                        );
                    }
                }
            } else {
                let list = catalog.list_packs()?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&list).expect("serializes")
                    );
                } else {
                    for p in list {
                        let max = p
                            .max_site_version
                            .as_ref()
                            .map_or("-".to_string(), |m| m.to_string());
                        let targets = if p.hierarchies.is_empty() {
                            "all hierarchies".to_string()
                        } else {
                            p.hierarchies
                                .iter()
                                .map(|h| h.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        println!(
                            "{}  {}  {}  {}  [{} .. {}]  {} files, {} bytes  {}",
                            p.id,
                            p.pack_type.as_str(),
                            p.version,
                            p.name,
                            p.min_site_version,
                            max,
                            p.file_count,
                            p.size,
                            targets
                        );
                    }
                    // The text listing shows the console content versions too (after the
                    // packs, so the pack lines keep their place); --console lists them alone.
                    match (&content, &store) {
                        (Some(url), _) => {
                            print_console_versions(&service::console::list_in(&Content::open(
                                Some(url),
                                store.as_deref().unwrap_or(std::path::Path::new("")),
                            )?)?)
                        }
                        (None, Some(root)) => {
                            print_console_versions(&service::console::list(root)?)
                        }
                        (None, None) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_console_versions(list: &[service::console::ConsoleVersion]) {
    for v in list {
        println!(
            "console content version {}  published {}  {} servicing rows, {} messages  {} bytes  sha256 {}",
            v.content_version, v.published, v.servicing, v.messages, v.size, v.sha256
        );
    }
}
