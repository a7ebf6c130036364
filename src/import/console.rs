//! The console content item of an Import (SPEC section 10): `<source>/ConsoleContent/`
//! verified against the site's trusted keys, compared with the version the site holds,
//! filtered to this hierarchy and recorded in one SQLite transaction.
//!
//! - No `ConsoleContent` folder, or one without `console-content.json` and without a
//!   signature (a service that publishes none, a drive from an older Connect): no item at
//!   all. The packs' own results already say what the run did, and the absence of console
//!   content is normal, not something to act on.
//! - A signature without its document, an unsigned, tampered, untrusted or invalid
//!   document: one `Refused` item with the reason; nothing is recorded.
//! - A version older than the one the site holds: `Refused` (`Conflict`), "rollback".
//!   The same version with the same bytes: `AlreadyImported`; with other bytes: `Refused`.
//! - Otherwise the document, with only this hierarchy's and every-hierarchy messages, is
//!   recorded and becomes current in one `BEGIN IMMEDIATE` transaction, under the import
//!   lock. There are no files to place, so the transaction alone is the crash safety: a
//!   process killed before the commit leaves the previous version exactly as it was.
//!
//! Pause points (see the module docs of `import`): `console-verified`, `console-recorded`
//! (rows written, not committed), `console-committed`.

use super::verify::read_limited;
use super::{pause_point, ImportItem, ImportOptions, ImportResult, ImportStatus, INSECURE_NOTE};
use crate::console::{self, FOLDER};
use crate::error::{Error, ErrorKind, Result};
use crate::signing::PublicKey;
use crate::site::console::{held_version, insert, Record};
use crate::site::Site;
use std::path::Path;

/// The console content item of this run, or `None` when the drive holds none.
pub(crate) fn import_console(
    opts: &ImportOptions,
    site: &mut Site,
    hierarchy: uuid::Uuid,
    trusted: &[PublicKey],
) -> Result<Option<ImportResult>> {
    let source = opts.source.as_path();
    let folder = source.join(FOLDER);
    let mut r = ImportResult::new(ImportStatus::Refused, Some(hierarchy), folder.clone());
    r.item = ImportItem::ConsoleContent;
    r.name = Some("Console content".into());
    match folder.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            r.refuse(&Error::io(format!("reading {}", folder.display()), &e));
            return Ok(Some(r));
        }
        Ok(m) if m.file_type().is_symlink() => {
            r.refuse(&Error::new(
                ErrorKind::UnsafePath,
                format!(
                    "{} is a symbolic link; links are never followed",
                    folder.display()
                ),
            ));
            return Ok(Some(r));
        }
        Ok(m) if !m.is_dir() => {
            r.refuse(&Error::new(
                ErrorKind::InvalidManifest,
                format!("{} is not a folder", folder.display()),
            ));
            return Ok(Some(r));
        }
        Ok(_) => {}
    }
    let doc_rel = Path::new(FOLDER).join(console::DOCUMENT_FILE);
    let sig_rel = Path::new(FOLDER).join(console::SIGNATURE_FILE);
    let exists = |rel: &Path| source.join(rel).symlink_metadata().is_ok();
    let (has_doc, has_sig) = (exists(&doc_rel), exists(&sig_rel));
    if !has_doc && !has_sig {
        return Ok(None);
    }
    match check(
        opts, site, hierarchy, trusted, &doc_rel, &sig_rel, has_sig, &mut r,
    ) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
        Err(e) => r.refuse(&e),
    }
    Ok(Some(r))
}

#[allow(clippy::too_many_arguments)]
fn check(
    opts: &ImportOptions,
    site: &mut Site,
    hierarchy: uuid::Uuid,
    trusted: &[PublicKey],
    doc_rel: &Path,
    sig_rel: &Path,
    has_sig: bool,
    r: &mut ImportResult,
) -> Result<()> {
    let source = opts.source.as_path();
    let shown = |rel: &Path| source.join(rel).display().to_string();
    if source.join(doc_rel).symlink_metadata().is_err() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "{} is missing beside its signature (an interrupted Connect?); run Connect again",
                shown(doc_rel)
            ),
        ));
    }
    let bytes = read_limited(
        source,
        doc_rel,
        &shown(doc_rel),
        console::MAX_DOCUMENT_BYTES,
    )?;
    let signature = if has_sig {
        let s = read_limited(
            source,
            sig_rel,
            &shown(sig_rel),
            console::MAX_SIGNATURE_BYTES,
        )?;
        Some(String::from_utf8(s).map_err(|_| {
            Error::new(
                ErrorKind::SignatureInvalid,
                format!("{} is not a minisign signature (not text)", shown(sig_rel)),
            )
        })?)
    } else {
        None
    };
    let verified = console::verify(
        &bytes,
        signature.as_deref(),
        trusted,
        opts.insecure_skip_signature_check,
    )?;
    let doc = verified.content;
    r.version = Some(doc.content_version.to_string());
    if let Some(held) = held_version(site.connection())? {
        if doc.content_version < held.content_version {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "rollback refused: this console content is version {}, older than version {} that the site already holds",
                    doc.content_version, held.content_version
                ),
            ));
        }
        if doc.content_version == held.content_version {
            if held.document_sha256 != verified.sha256 {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the site already holds a different console content document with version {}; refused",
                        doc.content_version
                    ),
                ));
            }
            r.status = ImportStatus::AlreadyImported;
            r.reason = opts
                .insecure_skip_signature_check
                .then(|| INSECURE_NOTE.to_string());
            return Ok(());
        }
    }
    let total = doc.messages.len();
    let mine = doc.for_hierarchy(&hierarchy);
    pause_point("console-verified");
    let now = crate::site::now_rfc3339();
    let source_path = source.join(doc_rel).display().to_string();
    let tx = site
        .connection_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    insert(
        &tx,
        &Record {
            content: &mine,
            messages_total: total,
            document_sha256: &verified.sha256,
            publisher_key_id: verified.key_id.as_deref(),
            source_path: &source_path,
            imported: &now,
        },
    )
    .map_err(|e| e.context("the console content could not be recorded in the site database"))?;
    pause_point("console-recorded");
    tx.commit()
        .map_err(|e| Error::from(e).context("the console content could not be recorded"))?;
    pause_point("console-committed");
    r.status = ImportStatus::Imported;
    let mut notes = vec![format!(
        "{} servicing rows; {} of {} messages are for this hierarchy",
        mine.servicing.len(),
        mine.messages.len(),
        total
    )];
    if opts.insecure_skip_signature_check {
        notes.push(INSECURE_NOTE.to_string());
    }
    r.reason = Some(notes.join("; "));
    Ok(())
}
