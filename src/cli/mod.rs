//! The `serviceconnectiontool` command line: the original tool's syntax (see [`args`]) on
//! top of the library. Results go to standard output (text, or one JSON document with
//! `-json`); every failure is one line on standard error,
//! `serviceconnectiontool: error: ...`, with exit status 1 (the operation failed) or 2
//! (the command line is wrong).

pub mod args;

use crate::connect::{ConnectOptions, ConnectReport, ProxyOptions};
use crate::error::{Error, ErrorKind};
use crate::import::{ImportOptions, ImportResult, ImportStatus};
use crate::progress::Progress;
use crate::site::{NewSite, Site};
use args::{Command, Mode, Parsed};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the operation failed (or, for Connect/Import, some item failed).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the command line is wrong.
pub const EXIT_USAGE: u8 = 2;

/// A failure as the command line reports it: one line and an exit status.
struct Failure {
    message: String,
    code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        // A malformed value (site code, version, extension) is a usage mistake.
        let code = if e.kind() == ErrorKind::InvalidArgument {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        };
        Failure {
            // Name the switch as this command line spells it.
            message: e.message().replace("(use force ", "(use -force "),
            code,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_USAGE,
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    install_interrupt_handler();
    let mut args = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(_) => {
                return fail(usage("an argument is not valid UTF-8"));
            }
        }
    }
    run(&args)
}

/// Run the command line `args` (without the program name).
pub fn run(args: &[String]) -> ExitCode {
    match args::parse(args) {
        Err(m) => fail(usage(m)),
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            ExitCode::from(EXIT_OK)
        }
        Ok(Command::Run(p)) => match execute(&p) {
            Ok(code) => ExitCode::from(code),
            Err(f) => fail(f),
        },
    }
}

fn fail(f: Failure) -> ExitCode {
    clear_progress();
    let line = f.message.replace(['\r', '\n'], " ");
    eprintln!("serviceconnectiontool: error: {line}");
    ExitCode::from(f.code)
}

fn execute(p: &Parsed) -> Result<u8, Failure> {
    let json = p.has("json");
    match p.mode {
        Mode::Prepare | Mode::Export => {
            let site = site_db(p)?;
            let (dest, r) = if p.mode == Mode::Prepare {
                let dest = PathBuf::from(p.value("usagedatadest").unwrap_or_default());
                let r = crate::usage::prepare(
                    &site,
                    &dest,
                    p.has("force"),
                    &mut progress_bar(json, "Preparing"),
                );
                (dest, r)
            } else {
                let dest = PathBuf::from(p.value("dest").unwrap_or_default());
                let r = crate::usage::export_csv(
                    &site,
                    &dest,
                    p.has("force"),
                    &mut progress_bar(json, "Exporting"),
                );
                (dest, r)
            };
            clear_progress();
            let f = r?;
            if json {
                print_json(&f)?;
            } else {
                println!(
                    "{} {} usage records (diagnostics level {}, hierarchy {}, site version {}) to {} ({} bytes, SHA-256 {})",
                    if p.mode == Mode::Prepare { "Prepared" } else { "Exported" },
                    f.record_count,
                    f.diagnostics_level,
                    f.hierarchy_id,
                    f.site_version,
                    dest.display(),
                    f.size,
                    f.sha256
                );
            }
            Ok(EXIT_OK)
        }
        Mode::NewSite => newsite(p, json),
        Mode::Connect => connect(p, json),
        Mode::Import => {
            let site = site_db(p)?;
            let mut opts = ImportOptions::new(site, p.value("updatepacksrc").unwrap_or_default());
            opts.insecure_skip_signature_check = p.has("insecureskipsignaturecheck");
            if opts.insecure_skip_signature_check {
                // Loud on purpose: this turns off the one check that authenticates the publisher.
                eprintln!(
                    "serviceconnectiontool: WARNING: -insecureskipsignaturecheck: pack signatures are NOT verified; anyone who could write to the drive can have their pack imported"
                );
            }
            let r = crate::import::import(&opts, &mut progress_bar(json, "Importing"));
            clear_progress();
            let results = r?;
            print_import(&results, json)
        }
        Mode::Trust => {
            let site = Site::open(&site_db(p)?)?;
            let file = PathBuf::from(p.value("publickey").unwrap_or_default());
            let key = crate::signing::PublicKey::from_file(&file)?;
            let comment = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let t = site.add_trusted_publisher(&key, &comment)?;
            if json {
                print_json(&t)?;
            } else {
                println!("Trusted publisher key {} ({})", t.key_id, t.comment);
            }
            Ok(EXIT_OK)
        }
        Mode::ListUpdates => {
            let site = Site::open_read_only(&site_db(p)?)?;
            let list = site.list_updates()?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("No updates.");
            } else {
                for u in &list {
                    println!(
                        "{}  {}  {}  {}  {} ({})",
                        u.package_guid,
                        u.full_version,
                        u.update_type,
                        u.state.as_str(),
                        u.name,
                        u.state_code
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Mode::ConsoleContent => {
            let site = Site::open_read_only(&site_db(p)?)?;
            let view = site.console_content()?;
            if json {
                print_json(&view)?;
            } else {
                print_console(&view, p.has("includeexpired"));
            }
            Ok(EXIT_OK)
        }
        Mode::SiteInfo => {
            let site = Site::open_read_only(&site_db(p)?)?;
            let info = site.info()?;
            if json {
                print_json(&info)?;
            } else {
                print_site(&info);
            }
            Ok(EXIT_OK)
        }
    }
}

/// The site database from `-sitedb` or `SCT_SITE_DB`.
fn site_db(p: &Parsed) -> Result<PathBuf, Failure> {
    if let Some(v) = p.value("sitedb") {
        return Ok(PathBuf::from(v));
    }
    match std::env::var_os("SCT_SITE_DB") {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(usage(format!(
            "-{} needs a site database: give -sitedb FILE or set SCT_SITE_DB",
            p.mode.option()
        ))),
    }
}

fn newsite(p: &Parsed, json: bool) -> Result<u8, Failure> {
    let path = site_db(p)?;
    let new = NewSite {
        site_code: p.value("sitecode").unwrap_or_default().to_string(),
        site_version: p.value("siteversion").unwrap_or_default().parse()?,
        diagnostics_level: match p.value("diagnosticslevel") {
            Some(l) => l.parse()?,
            None => Default::default(),
        },
        hierarchy_id: match p.value("hierarchyid") {
            Some(h) => Some(
                h.trim_matches(['{', '}'])
                    .parse()
                    .map_err(|_| usage(format!("hierarchy ID '{h}' is not a GUID")))?,
            ),
            None => None,
        },
        site_name: p.value("sitename").map(str::to_string),
        scp_mode: match p.value("scpmode") {
            Some(m) => m.parse()?,
            None => Default::default(),
        },
    };
    crate::site::validate_site_code(&new.site_code)?;
    let rows = number(p, "sampledata")?.unwrap_or(0);
    let seed = number(p, "sampleseed")?.unwrap_or(1);
    let mut site = Site::create(&path, &new)?;
    if rows > 0 {
        let r = crate::site::sample::generate_with_progress(
            &mut site,
            rows,
            seed,
            &mut progress_bar(json, "Generating"),
        );
        clear_progress();
        if let Err(e) = r {
            // The site was created by this very run: leave nothing half-filled behind.
            drop(site);
            remove_site_files(&path);
            return Err(e.into());
        }
    }
    let info = site.info()?;
    if json {
        print_json(&info)?;
    } else {
        print_site(&info);
    }
    Ok(EXIT_OK)
}

fn remove_site_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
}

fn number(p: &Parsed, name: &str) -> Result<Option<u64>, Failure> {
    p.value(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| usage(format!("-{name} needs a whole number, not '{v}'")))
        })
        .transpose()
}

fn connect(p: &Parsed, json: bool) -> Result<u8, Failure> {
    let service = match p.value("serviceuri") {
        Some(v) => v.to_string(),
        None => match std::env::var("SCT_SERVICE_URI") {
            Ok(v) if !v.is_empty() => v,
            _ => return Err(usage(
                "-connect needs the update service: give -serviceuri URL or set SCT_SERVICE_URI",
            )),
        },
    };
    let mut opts = ConnectOptions::new(
        p.value("usagedatasrc").unwrap_or_default(),
        p.value("updatepackdest").unwrap_or_default(),
        service,
    );
    opts.selection = if p.has("downloadall") {
        crate::api::Selection::All
    } else if p.has("downloadhotfix") {
        crate::api::Selection::Hotfix
    } else if p.has("downloadsiteversion") {
        crate::api::Selection::SiteVersion
    } else {
        crate::api::Selection::Latest
    };
    opts.ca_cert = p.value("cacert").map(PathBuf::from);
    opts.token = std::env::var("SCT_SERVICE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(n) = number(p, "parallel")? {
        if !(1..=64).contains(&n) {
            return Err(usage(format!(
                "-parallel must be between 1 and 64, not {n}"
            )));
        }
        opts.parallelism = n as usize;
    }
    match (p.value("proxyserveruri"), p.value("proxyusername")) {
        (None, Some(_)) => {
            return Err(usage("-proxyusername needs -proxyserveruri HOST[:PORT]"));
        }
        (None, None) => {}
        (Some(uri), user) => {
            let password = match user {
                None => None,
                Some(u) => Some(proxy_password(u)?),
            };
            opts.proxy = Some(ProxyOptions {
                uri: uri.to_string(),
                username: user.map(str::to_string),
                password,
            });
        }
    }
    let r = crate::connect::connect(&opts, &mut progress_bar(json, "Connecting"));
    clear_progress();
    let report = r?;
    print_connect(&report, json)
}

/// The proxy password: `SCT_PROXY_PASSWORD`, or a no-echo prompt when a person is there.
fn proxy_password(user: &str) -> Result<String, Failure> {
    if let Ok(p) = std::env::var("SCT_PROXY_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("Password for proxy user {user}: ")).map_err(
            |e| Failure {
                message: format!("cannot read the proxy password: {e}"),
                code: EXIT_FAILED,
            },
        );
    }
    Err(usage(format!(
        "-proxyusername {user} needs a password: set SCT_PROXY_PASSWORD (passwords are never accepted as arguments)"
    )))
}

fn print_connect(r: &ConnectReport, json: bool) -> Result<u8, Failure> {
    if json {
        print_json(r)?;
    } else {
        for u in &r.uploads {
            println!(
                "upload {:?} {}: {} pack(s) offered{}",
                u.status,
                u.cab.display(),
                u.offered,
                u.message
                    .as_deref()
                    .map(|m| format!(" - {m}"))
                    .unwrap_or_default()
            );
        }
        for pk in &r.packs {
            println!(
                "{:?} {} {} {} ({}, {}) {}{}",
                pk.status,
                pk.hierarchy_id,
                pk.package_guid,
                pk.name,
                pk.version,
                pk.pack_type,
                pk.path.display(),
                pk.message
                    .as_deref()
                    .map(|m| format!(" - {m}"))
                    .unwrap_or_default()
            );
        }
        if let Some(c) = &r.console_content {
            println!(
                "console content {:?}{} {}{}",
                c.status,
                c.content_version
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default(),
                c.path.display(),
                c.message
                    .as_deref()
                    .map(|m| format!(" - {m}"))
                    .unwrap_or_default()
            );
        }
    }
    if r.is_success() {
        Ok(EXIT_OK)
    } else {
        let failed_uploads = r
            .uploads
            .iter()
            .filter(|u| u.status != crate::connect::UploadStatus::Uploaded)
            .count();
        let failed_packs = r
            .packs
            .iter()
            .filter(|p| p.status == crate::connect::PackStatus::Failed)
            .count();
        let console = match &r.console_content {
            Some(c) if c.status == crate::connect::ConsoleStatus::Failed => {
                ", console content failed"
            }
            _ => "",
        };
        eprintln!(
            "serviceconnectiontool: error: connect did not complete: {failed_uploads} cab(s) not uploaded, {failed_packs} pack(s) failed{console}"
        );
        Ok(EXIT_FAILED)
    }
}

fn print_import(results: &[ImportResult], json: bool) -> Result<u8, Failure> {
    if json {
        print_json(&results)?;
    } else if results.is_empty() {
        println!("No update packs for this site's hierarchy.");
    } else {
        for r in results {
            let id = if r.item == crate::import::ImportItem::ConsoleContent {
                "ConsoleContent".to_string()
            } else {
                r.package_guid
                    .map(|g| g.to_string())
                    .or_else(|| r.hierarchy_id.map(|h| format!("hierarchy {h}")))
                    .unwrap_or_else(|| r.source_path.display().to_string())
            };
            let mut line = format!("{:?} {id}", r.status);
            if let Some(n) = &r.name {
                line.push_str(&format!(" {n}"));
            }
            if let Some(v) = &r.version {
                line.push_str(&format!(" {v}"));
            }
            if let Some(s) = r.state {
                line.push_str(&format!(" ({})", s.as_str()));
            }
            if let Some(reason) = &r.reason {
                line.push_str(&format!(" - {reason}"));
            }
            println!("{line}");
        }
    }
    let refused = results
        .iter()
        .filter(|r| r.status == ImportStatus::Refused)
        .count();
    if refused > 0 {
        eprintln!(
            "serviceconnectiontool: error: {refused} item(s) were refused (update packs or console content)"
        );
        Ok(EXIT_FAILED)
    } else {
        Ok(EXIT_OK)
    }
}

/// The console content as text: the servicing rows, then the messages (expired ones only
/// when asked for; how many were hidden is said).
fn print_console(v: &crate::site::console::ConsoleContentView, include_expired: bool) {
    let Some(version) = v.content_version else {
        println!("No console content has been imported into this site.");
        return;
    };
    println!(
        "Console content version {version}, published {}, imported {}",
        v.published.as_deref().unwrap_or("-"),
        v.imported_utc.as_deref().unwrap_or("-")
    );
    println!();
    println!("Servicing ({} rows):", v.servicing.len());
    for r in &v.servicing {
        let ver = [r.version.as_deref(), r.build.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" build ");
        println!(
            "  {}  {}  {}  released {}  end of servicing {}",
            r.product, ver, r.channel, r.release_date, r.end_of_servicing
        );
    }
    let shown: Vec<_> = v
        .messages
        .iter()
        .filter(|m| include_expired || !m.expired)
        .collect();
    println!();
    println!("Messages ({}):", shown.len());
    for m in &shown {
        let msg = &m.message;
        println!(
            "  [{}] {}  {}{}",
            msg.severity.as_str(),
            msg.id,
            msg.title,
            if m.expired { "  (expired)" } else { "" }
        );
        for line in msg.body.lines() {
            println!("      {line}");
        }
        if let Some(link) = &msg.link {
            println!("      {link}");
        }
    }
    let hidden = v.messages.len() - shown.len();
    if hidden > 0 {
        println!("  ({hidden} expired message(s) hidden; -includeexpired shows them)");
    }
}

fn print_site(i: &crate::SiteInfo) {
    println!("Site database:     {}", i.path.display());
    println!("Hierarchy ID:      {}", i.hierarchy_id);
    println!("Site code:         {}", i.site_code);
    println!("Site name:         {}", i.site_name);
    println!("Site version:      {}", i.site_version);
    println!("Diagnostics level: {}", i.diagnostics_level);
    println!("SCP mode:          {}", i.scp_mode.as_str());
    println!(
        "Usage rows:        {} Basic, {} Enhanced, {} Full",
        i.usage_rows[0], i.usage_rows[1], i.usage_rows[2]
    );
}

fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure {
        message: format!("cannot write JSON: {e}"),
        code: EXIT_FAILED,
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    Ok(())
}

/// A progress line on standard error, only for a person watching a terminal (never in
/// JSON mode, never in a pipe), so scripts see exactly one stderr line per failure. It
/// names the phase and its unit (Import verifies, then places), and moves as the
/// library reports (rows every few thousand, bytes as they go).
fn progress_bar(json: bool, verb: &'static str) -> impl FnMut(&Progress) -> bool {
    use crate::progress::Phase;
    let show = !json && std::io::stderr().is_terminal();
    let mut last = (Phase::Generate, u64::MAX);
    move |p: &Progress| {
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        if show && p.total > 0 {
            let pct = p.done.saturating_mul(100) / p.total;
            if (p.phase, pct) != last {
                last = (p.phase, pct);
                let (what, unit) = match p.phase {
                    Phase::Prepare | Phase::Export => ("writing rows", "rows"),
                    Phase::Generate => ("inserting rows", "rows"),
                    Phase::Upload => ("uploading", "bytes"),
                    Phase::Download => ("downloading", "bytes"),
                    Phase::Verify => ("verifying", "bytes"),
                    Phase::Import => ("placing", "bytes"),
                };
                eprint!(
                    "\r\x1b[K{verb} ({what}): {pct:3}% ({}/{} {unit})",
                    p.done, p.total
                );
                PROGRESS_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        true
    }
}

static PROGRESS_SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn clear_progress() {
    if PROGRESS_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
}

/// Set by Ctrl+C / SIGTERM: the running operation is cancelled through its progress
/// callback, so it removes its temporary output and the site stays as it was.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ctrl+C (and SIGTERM, or closing the console window on Windows) sets [`INTERRUPTED`]
/// through the platform's handler; a second Ctrl+C ends the process at once.
fn install_interrupt_handler() {
    crate::platform::on_interrupt(&INTERRUPTED);
}
