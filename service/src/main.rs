//! `sct-service`: the reference update service (SPEC section 4).
//!
//! ```text
//! sct-service keygen  --store DIR
//! sct-service publish --store DIR --name NAME --version V --type Update|Hotfix
//!                     --min-site-version V [--max-site-version V] [--hierarchy GUID ...]
//!                     [--publisher-name N] CONTENT_DIR
//! sct-service serve   --store DIR [--listen 127.0.0.1:0] [--tls-cert F --tls-key F]
//!                     [--token-file F] [--max-upload-bytes N]
//! sct-service list    --store DIR [--json] [--uploads | --console]
//! sct-service console publish --store DIR FILE.json
//! ```
//! Exit status 0 on success, 1 on failure (one line on stderr), 2 on a usage error.

use clap::{Parser, Subcommand};
use sct_service::{
    self as service, publish::DEFAULT_PUBLISHER_NAME, Catalog, PublishRequest, ServeOptions, Store,
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
    /// Add CONTENT_DIR as a new signed update pack; prints its GUID.
    Publish {
        /// Store folder made by `keygen`.
        #[arg(long)]
        store: PathBuf,
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
        /// Folder of regular files (no symbolic links) that becomes the pack's content/.
        content_dir: PathBuf,
    },
    /// Serve the HTTP API until SIGINT/SIGTERM.
    Serve {
        /// Store folder made by `keygen`.
        #[arg(long)]
        store: PathBuf,
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
    },
    /// Console content: the signed document Connect fetches and Import brings into sites.
    Console {
        #[command(subcommand)]
        action: ConsoleCommand,
    },
    /// List the published packs (or, with --uploads, the received usage cabs; with
    /// --console, the console content versions).
    List {
        /// Store folder made by `keygen`.
        #[arg(long)]
        store: PathBuf,
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
        /// Store folder made by `keygen` (its publisher.key signs).
        #[arg(long)]
        store: PathBuf,
        /// JSON file with `servicing` and `messages` (see the README).
        file: PathBuf,
    },
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
        Command::Publish {
            store,
            name,
            version,
            pack_type,
            min_site_version,
            max_site_version,
            hierarchies,
            publisher_name,
            content_dir,
        } => {
            let pack = service::publish(
                &store,
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
            listen,
            tls_cert,
            tls_key,
            token_file,
            max_upload_bytes,
            idle_timeout,
            max_connections,
        } => {
            let token = token_file
                .as_deref()
                .map(service::server::read_token_file)
                .transpose()?;
            service::serve(
                &ServeOptions {
                    store,
                    listen,
                    tls_cert,
                    tls_key,
                    max_upload_bytes,
                    idle_timeout: std::time::Duration::from_secs(idle_timeout.max(1)),
                    max_connections,
                },
                token,
            )?;
        }
        Command::Console {
            action: ConsoleCommand::Publish { store, file },
        } => {
            let v = service::console::publish(&store, &file)?;
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
            ..
        } if console => {
            let list = service::console::list(&store)?;
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
            json,
            uploads,
            ..
        } => {
            let store = Store::open(&store)?;
            let catalog = Catalog::open(&store.catalog_path())?;
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
                    print_console_versions(&service::console::list(store.root())?);
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
