//! The console content a site holds (schema version 2): recording an imported version
//! (Import) and reading the current one (`-consolecontent`, `Get-ConsoleContent`,
//! `sct_console_content`).

use super::Site;
use crate::console::{ConsoleContent, Message, ServicingRow, Severity};
use crate::error::{Error, ErrorKind, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// The newest console content version a site holds, as Import compares against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVersion {
    pub content_version: u64,
    pub document_sha256: String,
}

/// The highest version ever imported (the current one), if any.
pub(crate) fn held_version(conn: &Connection) -> Result<Option<HeldVersion>> {
    Ok(conn
        .query_row(
            "SELECT content_version, document_sha256 FROM console_content
             ORDER BY content_version DESC LIMIT 1",
            [],
            |r| {
                Ok(HeldVersion {
                    content_version: r.get::<_, i64>(0)? as u64,
                    document_sha256: r.get(1)?,
                })
            },
        )
        .optional()?)
}

/// What Import records (inside its transaction): `content` already filtered to this
/// hierarchy; `messages_total` counts the messages of the signed document.
pub(crate) struct Record<'a> {
    pub content: &'a ConsoleContent,
    pub messages_total: usize,
    pub document_sha256: &'a str,
    pub publisher_key_id: Option<&'a str>,
    pub source_path: &'a str,
    pub imported: &'a str,
}

/// Record a version and make it the current one: the rows of older versions are removed
/// (their `console_content` history rows stay). Runs inside the caller's transaction.
pub(crate) fn insert(tx: &rusqlite::Transaction<'_>, r: &Record<'_>) -> Result<()> {
    let v = r.content.content_version as i64;
    tx.execute(
        "INSERT INTO console_content (content_version, published, document_sha256,
            publisher_key_id, source_path, imported_utc, messages_total)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            v,
            r.content.published,
            r.document_sha256,
            r.publisher_key_id,
            r.source_path,
            r.imported,
            r.messages_total as i64
        ],
    )?;
    tx.execute(
        "DELETE FROM console_servicing WHERE content_version <> ?1",
        [v],
    )?;
    tx.execute(
        "DELETE FROM console_messages WHERE content_version <> ?1",
        [v],
    )?;
    {
        let mut s = tx.prepare_cached(
            "INSERT INTO console_servicing (content_version, position, product, version, build,
                channel, release_date, end_of_servicing) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (i, row) in r.content.servicing.iter().enumerate() {
            s.execute(params![
                v,
                i as i64,
                row.product,
                row.version,
                row.build,
                row.channel,
                row.release_date,
                row.end_of_servicing
            ])?;
        }
    }
    let mut m = tx.prepare_cached(
        "INSERT INTO console_messages (content_version, position, id, severity, title, body,
            link, published, expires, hierarchies) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (i, msg) in r.content.messages.iter().enumerate() {
        m.execute(params![
            v,
            i as i64,
            msg.id,
            msg.severity.as_str(),
            msg.title,
            msg.body,
            msg.link,
            msg.published,
            msg.expires,
            serde_json::to_string(&msg.hierarchies).expect("strings serialize"),
        ])?;
    }
    Ok(())
}

/// The site's current console content, as every reader returns it (the JSON shape of
/// `sct_console_content` and `-consolecontent -json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleContentView {
    /// False when no console content was ever imported (then the rest is empty/null).
    pub imported: bool,
    pub content_version: Option<u64>,
    /// When the service published it (RFC 3339).
    pub published: Option<String>,
    /// When this site imported it (RFC 3339).
    pub imported_utc: Option<String>,
    pub publisher_key_id: Option<String>,
    pub document_sha256: Option<String>,
    pub servicing: Vec<ServicingRow>,
    /// This hierarchy's messages and those for every hierarchy, most severe first, then
    /// newest first; each says whether it has expired (at the time of reading).
    pub messages: Vec<MessageView>,
}

/// A message as read back, with its expiry judged at the time of reading. (No
/// `deny_unknown_fields` here: serde does not support it together with `flatten`.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageView {
    #[serde(flatten)]
    pub message: Message,
    pub expired: bool,
}

impl Site {
    /// The current console content (every message, expired ones marked).
    pub fn console_content(&self) -> Result<ConsoleContentView> {
        let now = chrono::Utc::now();
        // An older schema opened read-only has no console tables: nothing imported.
        let has_table: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'console_content')",
            [],
            |r| r.get(0),
        )?;
        let head = if !has_table {
            None
        } else {
            self
            .conn
            .query_row(
                "SELECT content_version, published, imported_utc, publisher_key_id, document_sha256
                 FROM console_content ORDER BY content_version DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()?
        };
        let Some((v, published, imported, key, sha)) = head else {
            return Ok(ConsoleContentView {
                imported: false,
                content_version: None,
                published: None,
                imported_utc: None,
                publisher_key_id: None,
                document_sha256: None,
                servicing: Vec::new(),
                messages: Vec::new(),
            });
        };
        let mut s = self.conn.prepare_cached(
            "SELECT product, version, build, channel, release_date, end_of_servicing
             FROM console_servicing WHERE content_version = ?1 ORDER BY position",
        )?;
        let servicing = s
            .query_map([v], |r| {
                Ok(ServicingRow {
                    product: r.get(0)?,
                    version: r.get(1)?,
                    build: r.get(2)?,
                    channel: r.get(3)?,
                    release_date: r.get(4)?,
                    end_of_servicing: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut m = self.conn.prepare_cached(
            "SELECT id, severity, title, body, link, published, expires, hierarchies
             FROM console_messages WHERE content_version = ?1 ORDER BY position",
        )?;
        let rows = m
            .query_map([v], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let corrupt = |what: &str| {
            Error::new(
                ErrorKind::Database,
                format!("console_messages.{what} holds a malformed value"),
            )
        };
        let mut messages = Vec::with_capacity(rows.len());
        for (id, sev, title, body, link, published, expires, hier) in rows {
            let message = Message {
                id,
                severity: sev.parse::<Severity>().map_err(|_| corrupt("severity"))?,
                title,
                body,
                link,
                published,
                expires,
                hierarchies: serde_json::from_str(&hier).map_err(|_| corrupt("hierarchies"))?,
            };
            let expired = message.is_expired_at(now);
            messages.push(MessageView { message, expired });
        }
        messages.sort_by(|a, b| {
            b.message.severity.cmp(&a.message.severity).then_with(|| {
                let pa = crate::console::parse_date(&a.message.published).ok();
                let pb = crate::console::parse_date(&b.message.published).ok();
                pb.cmp(&pa)
            })
        });
        Ok(ConsoleContentView {
            imported: true,
            content_version: Some(v as u64),
            published: Some(published),
            imported_utc: Some(imported),
            publisher_key_id: key,
            document_sha256: Some(sha),
            servicing,
            messages,
        })
    }
}
