//! Console content (SPEC section 10): the signed document that feeds the console views an
//! offline site otherwise shows empty (the servicing dashboard) and carries the service's
//! messages to administrators. Shared by the service (validates, stamps and signs it),
//! Connect (fetches it) and Import (verifies, filters and records it).
//!
//! # The document, `console-content.json`
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "content_version": 3,
//!   "published": "2026-11-30T15:00:00Z",
//!   "servicing": [
//!     { "product": "Windows 11", "version": "24H2", "build": "26100.2454",
//!       "channel": "General Availability", "release_date": "2024-10-01",
//!       "end_of_servicing": "2026-10-13" }
//!   ],
//!   "messages": [
//!     { "id": "kb-5031", "severity": "Warning", "title": "...", "body": "...",
//!       "link": "https://contoso.com/kb5031", "published": "2026-11-01",
//!       "expires": "2027-01-01", "hierarchies": ["2f1c...-..."] }
//!   ]
//! }
//! ```
//!
//! # Validation rules (decided here; the same code checks publish input and Import input)
//!
//! - Unknown fields anywhere are refused, naming the field.
//! - `format_version` is 1; `content_version` ≥ 1; `published` RFC 3339.
//! - Servicing row: `product` and `channel` non-empty; at least one of `version` and `build`;
//!   `release_date` and `end_of_servicing` dates, the end not before the release.
//! - Message: `id` non-empty, unique in the document (compared case-insensitively, as
//!   PowerShell compares); `severity` one of `Info`, `Warning`, `Critical`; `title` and
//!   `body` non-empty; `link`, when present, an `http://` or `https://` URL; `published` a
//!   date; `expires`, when present, a date strictly after `published`; `hierarchies`, when
//!   present, canonical GUIDs (empty or absent: meant for every hierarchy).
//! - Dates are RFC 3339 (`2026-11-30T15:00:00Z`) or a plain `YYYY-MM-DD`, read as midnight
//!   UTC. They are kept as written.
//! - Text fields hold no control characters except line breaks and tabs in `body`.
//! - A document is at most [`MAX_DOCUMENT_BYTES`].

use crate::error::{Error, ErrorKind, Result};
use crate::signing::PublicKey;
use serde::{Deserialize, Serialize};

/// Folder of the document on the transfer drive, beside the hierarchy folders.
pub const FOLDER: &str = "ConsoleContent";
/// The document's file name.
pub const DOCUMENT_FILE: &str = "console-content.json";
/// Its minisign signature's file name.
pub const SIGNATURE_FILE: &str = "console-content.json.minisig";
/// The only document format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Documents larger than this are refused before parsing (hostile input).
pub const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Signatures larger than this are refused (a minisign signature is about 300 bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// The trusted comment the service signs with a version: it ties the signature to one
/// publication, so a client can tell a document and a signature fetched in two requests
/// belong together.
pub fn trusted_comment(content_version: u64, sha256: &str) -> String {
    format!("console-content version:{content_version} sha256:{sha256}")
}

/// Severity of a console message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "Info",
            Severity::Warning => "Warning",
            Severity::Critical => "Critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            _ => Err(Error::invalid_argument(format!(
                "unknown severity '{s}' (expected Info, Warning or Critical)"
            ))),
        }
    }
}

/// One row of the servicing dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServicingRow {
    pub product: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    pub channel: String,
    pub release_date: String,
    pub end_of_servicing: String,
}

/// One message from the service to administrators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub published: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Empty: meant for every hierarchy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hierarchies: Vec<String>,
}

impl Message {
    /// Meant for hierarchy `h` (no list, or a list naming it).
    pub fn is_for(&self, h: &uuid::Uuid) -> bool {
        self.hierarchies.is_empty()
            || self
                .hierarchies
                .iter()
                .any(|s| uuid::Uuid::try_parse(s).is_ok_and(|g| &g == h))
    }

    /// Expired at `now` (an `expires` at or before `now`).
    pub fn is_expired_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires
            .as_deref()
            .and_then(|e| parse_date(e).ok())
            .is_some_and(|e| e <= now)
    }
}

/// What a publisher writes: the body of a document, without the fields `publish` stamps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    #[serde(default)]
    pub servicing: Vec<ServicingRow>,
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// The signed document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleContent {
    pub format_version: u32,
    /// Grows by one with each publication; Import refuses going back.
    pub content_version: u64,
    /// When it was published, RFC 3339 UTC.
    pub published: String,
    pub servicing: Vec<ServicingRow>,
    pub messages: Vec<Message>,
}

fn invalid(m: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidManifest, m)
}

impl Draft {
    /// Parse a publisher's file. The stamped fields are refused with a message that says
    /// why (they are the service's to set), anything else unknown by serde's message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(Error::invalid_argument(
                "the console content file is larger than 16 MiB",
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid_argument(format!("the console content file is not valid JSON: {e}"))
        })?;
        if let Some(obj) = value.as_object() {
            for stamped in ["format_version", "content_version", "published"] {
                if obj.contains_key(stamped) {
                    return Err(Error::invalid_argument(format!(
                        "the console content file sets '{stamped}', which publish stamps itself; remove it"
                    )));
                }
            }
        }
        let d: Draft = serde_json::from_value(value).map_err(|e| {
            Error::invalid_argument(format!("the console content file is not valid: {e}"))
        })?;
        d.validate()
            .map_err(|e| Error::invalid_argument(e.message().to_string()))?;
        Ok(d)
    }

    fn validate(&self) -> Result<()> {
        for (i, r) in self.servicing.iter().enumerate() {
            r.validate()
                .map_err(|e| prefix(e, &format!("servicing[{i}]")))?;
        }
        let mut ids = std::collections::HashMap::new();
        for (i, m) in self.messages.iter().enumerate() {
            m.validate()
                .map_err(|e| prefix(e, &format!("messages[{i}]")))?;
            if let Some(first) = ids.insert(m.id.to_lowercase(), i) {
                return Err(invalid(format!(
                    "messages[{i}]: id '{}' is already used by messages[{first}]; ids must be unique",
                    m.id
                )));
            }
        }
        Ok(())
    }

    /// The document `publish` signs: this body stamped with its version and time.
    pub fn stamp(self, content_version: u64, published: String) -> ConsoleContent {
        ConsoleContent {
            format_version: FORMAT_VERSION,
            content_version,
            published,
            servicing: self.servicing,
            messages: self.messages,
        }
    }
}

fn prefix(e: Error, at: &str) -> Error {
    Error::new(e.kind(), format!("{at}: {}", e.message()))
}

impl ConsoleContent {
    /// Parse and validate untrusted document bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(invalid(
                "the console content document is larger than 16 MiB",
            ));
        }
        let c: ConsoleContent = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the console content document is not valid: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("console content serializes");
        v.push(b'\n');
        v
    }

    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "console content format {} is not supported (this tool reads format {FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.content_version == 0 {
            return Err(invalid("content_version must be 1 or more"));
        }
        chrono::DateTime::parse_from_rfc3339(&self.published).map_err(|_| {
            invalid(format!(
                "published '{}' is not an RFC 3339 time",
                self.published.escape_debug()
            ))
        })?;
        Draft {
            servicing: self.servicing.clone(),
            messages: self.messages.clone(),
        }
        .validate()
    }

    /// The same document with only the messages meant for hierarchy `h`.
    pub fn for_hierarchy(mut self, h: &uuid::Uuid) -> Self {
        self.messages.retain(|m| m.is_for(h));
        self
    }
}

/// Text without control characters (line breaks and tabs allowed when `multiline`).
fn check_text(field: &str, v: &str, multiline: bool) -> Result<()> {
    if v.trim().is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if v.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(invalid(format!("{field} holds control characters")));
    }
    Ok(())
}

/// A date as the document allows it: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn parse_date(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if s.len() == 10 {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
        }
    }
    Err(invalid(format!(
        "'{}' is not a date (expected YYYY-MM-DD or RFC 3339, e.g. 2026-11-30T15:00:00Z)",
        s.chars().take(60).collect::<String>().escape_debug()
    )))
}

fn date_field(field: &str, v: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    parse_date(v).map_err(|e| prefix(e, field))
}

impl ServicingRow {
    fn validate(&self) -> Result<()> {
        check_text("product", &self.product, false)?;
        check_text("channel", &self.channel, false)?;
        if self.version.is_none() && self.build.is_none() {
            return Err(invalid("a servicing row needs a version or a build"));
        }
        if let Some(v) = &self.version {
            check_text("version", v, false)?;
        }
        if let Some(b) = &self.build {
            check_text("build", b, false)?;
        }
        let release = date_field("release_date", &self.release_date)?;
        let end = date_field("end_of_servicing", &self.end_of_servicing)?;
        if end < release {
            return Err(invalid(format!(
                "end_of_servicing {} is before release_date {}",
                self.end_of_servicing, self.release_date
            )));
        }
        Ok(())
    }
}

impl Message {
    fn validate(&self) -> Result<()> {
        check_text("id", &self.id, false)?;
        check_text("title", &self.title, false)?;
        check_text("body", &self.body, true)?;
        if let Some(link) = &self.link {
            let ok = reqwest::Url::parse(link)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(invalid(format!(
                    "link '{}' is not an http:// or https:// URL",
                    link.chars().take(100).collect::<String>().escape_debug()
                )));
            }
        }
        let published = date_field("published", &self.published)?;
        if let Some(exp) = &self.expires {
            let expires = date_field("expires", exp)?;
            if expires <= published {
                return Err(invalid(format!(
                    "expires {exp} is not after published {}",
                    self.published
                )));
            }
        }
        for (i, h) in self.hierarchies.iter().enumerate() {
            let ok = h.len() == 36 && uuid::Uuid::try_parse(h).is_ok();
            if !ok {
                return Err(invalid(format!(
                    "hierarchies[{i}]: '{}' is not a hierarchy GUID",
                    h.chars().take(60).collect::<String>().escape_debug()
                )));
            }
        }
        Ok(())
    }
}

/// A document whose signature verified against a trusted key (or was explicitly not checked).
#[derive(Debug, Clone)]
pub struct Verified {
    pub content: ConsoleContent,
    /// SHA-256 of the exact document bytes.
    pub sha256: String,
    /// The key that verified it; `None` when the check was skipped on request.
    pub key_id: Option<String>,
}

/// Verify `signature` over `bytes` against `trusted`, then parse and validate. The
/// signature is checked before the bytes are parsed, so nothing unauthenticated is read.
/// `insecure_skip_signature_check` accepts a missing or untrusted signature (labs only).
pub fn verify(
    bytes: &[u8],
    signature: Option<&str>,
    trusted: &[PublicKey],
    insecure_skip_signature_check: bool,
) -> Result<Verified> {
    let key_id = if insecure_skip_signature_check {
        None
    } else {
        let sig = signature.ok_or_else(|| {
            Error::new(
                ErrorKind::SignatureInvalid,
                format!("the console content is not signed ({SIGNATURE_FILE} is missing)"),
            )
        })?;
        if trusted.is_empty() {
            return Err(Error::new(
                ErrorKind::SignatureInvalid,
                "this site trusts no publisher key, so the console content cannot be verified (trust the publisher's key first)",
            ));
        }
        Some(
            crate::signing::verify(bytes, sig, trusted)
                .map_err(|e| e.context("console content"))?,
        )
    };
    let content = ConsoleContent::from_bytes(bytes)?;
    Ok(Verified {
        content,
        sha256: crate::hashing::sha256_hex(bytes),
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "11111111-2222-3333-4444-555555555555";

    fn draft() -> serde_json::Value {
        serde_json::json!({
            "servicing": [{"product": "Windows 11", "version": "24H2", "channel": "GA",
                "release_date": "2024-10-01", "end_of_servicing": "2026-10-13T00:00:00Z"}],
            "messages": [{"id": "a", "severity": "Info", "title": "t", "body": "b\nc",
                "published": "2026-11-01", "expires": "2027-01-01", "hierarchies": [H]}]
        })
    }

    fn check(mutate: impl Fn(&mut serde_json::Value)) -> Result<Draft> {
        let mut v = draft();
        mutate(&mut v);
        Draft::from_bytes(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn a_good_draft_is_accepted_and_stamped() {
        let d = check(|_| {}).unwrap();
        let c = d.stamp(4, "2026-11-30T15:00:00Z".into());
        let back = ConsoleContent::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back.content_version, 4);
        assert_eq!(back.messages.len(), 1);
        let h: uuid::Uuid = H.parse().unwrap();
        assert_eq!(back.clone().for_hierarchy(&h).messages.len(), 1);
        assert_eq!(back.for_hierarchy(&uuid::Uuid::nil()).messages.len(), 0);
    }

    #[test]
    fn each_rule_is_enforced_with_a_message_naming_it() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["content_version"] = 3.into()),
                "content_version",
            ),
            (Box::new(|v| v["published"] = "x".into()), "published"),
            (Box::new(|v| v["extra"] = 1.into()), "extra"),
            (
                Box::new(|v| v["messages"][0]["colour"] = "red".into()),
                "colour",
            ),
            (
                Box::new(|v| v["messages"][0]["severity"] = "Bad".into()),
                "Bad",
            ),
            (
                Box::new(|v| v["messages"][0]["title"] = " ".into()),
                "title is empty",
            ),
            (
                Box::new(|v| v["messages"][0]["published"] = "30/11/2026".into()),
                "published",
            ),
            (
                Box::new(|v| v["messages"][0]["expires"] = "2026-10-01".into()),
                "not after",
            ),
            (
                Box::new(|v| v["messages"][0]["hierarchies"][0] = "nope".into()),
                "GUID",
            ),
            (
                Box::new(|v| v["messages"][0]["link"] = "file:///etc/passwd".into()),
                "link",
            ),
            (
                Box::new(|v| {
                    let m = v["messages"][0].clone();
                    v["messages"].as_array_mut().unwrap().push(m);
                    v["messages"][1]["id"] = "A".into();
                }),
                "unique",
            ),
            (
                Box::new(|v| {
                    v["servicing"][0]["version"].take();
                }),
                "version or a build",
            ),
            (
                Box::new(|v| v["servicing"][0]["end_of_servicing"] = "2020-01-01".into()),
                "before",
            ),
            (
                Box::new(|v| v["servicing"][0]["channel"] = "".into()),
                "channel",
            ),
        ];
        for (i, (mutate, needle)) in cases.into_iter().enumerate() {
            let e = check(mutate).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "case {i}: {e}");
            assert!(e.message().contains(needle), "case {i}: {e}");
        }
    }

    #[test]
    fn signatures_are_required_and_checked_before_parsing() {
        let sk = crate::signing::SecretKey::generate().unwrap();
        let doc = check(|_| {})
            .unwrap()
            .stamp(1, "2026-11-30T15:00:00Z".into());
        let bytes = doc.to_bytes();
        let sig = sk.sign(&bytes, "console-content:1").unwrap();
        let keys = [sk.public_key().clone()];
        assert_eq!(
            verify(&bytes, Some(&sig), &keys, false).unwrap().content,
            doc
        );
        let e = verify(&bytes, None, &keys, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SignatureInvalid);
        let mut tampered = bytes.clone();
        let n = tampered.len() - 3;
        tampered[n] ^= 1;
        let e = verify(&tampered, Some(&sig), &keys, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SignatureInvalid, "{e}");
        let other = crate::signing::SecretKey::generate().unwrap();
        let e = verify(&bytes, Some(&sig), &[other.public_key().clone()], false).unwrap_err();
        assert!(e.message().contains("does not trust"), "{e}");
        assert!(verify(&bytes, None, &[], true).unwrap().key_id.is_none());
    }
}
