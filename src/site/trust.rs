//! The publisher keys a site trusts for update packs.

use super::{now_rfc3339, Site};
use crate::error::{Error, ErrorKind, Result};
use crate::signing::PublicKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustedPublisher {
    pub key_id: String,
    pub public_key: String,
    pub comment: String,
    pub added: String,
}

impl Site {
    /// Trust `key`. Trusting a key already trusted is a no-op that returns the existing entry.
    pub fn add_trusted_publisher(
        &self,
        key: &PublicKey,
        comment: &str,
    ) -> Result<TrustedPublisher> {
        super::reentry::check(&self.path)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO trusted_publishers (key_id, public_key, comment, added_utc) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![key.key_id(), key.to_base64(), comment, now_rfc3339()],
        )?;
        self.trusted_publishers()?
            .into_iter()
            .find(|t| t.key_id == key.key_id())
            .ok_or_else(|| Error::internal("trusted key vanished after insert"))
    }

    pub fn trusted_publishers(&self) -> Result<Vec<TrustedPublisher>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key_id, public_key, comment, added_utc FROM trusted_publishers ORDER BY added_utc, key_id")?;
        let rows = stmt.query_map([], |r| {
            Ok(TrustedPublisher {
                key_id: r.get(0)?,
                public_key: r.get(1)?,
                comment: r.get(2)?,
                added: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The trusted keys, parsed, for signature verification.
    pub fn trusted_keys(&self) -> Result<Vec<PublicKey>> {
        self.trusted_publishers()?
            .iter()
            .map(|t| {
                PublicKey::parse(&t.public_key).map_err(|e| {
                    Error::new(
                        ErrorKind::Database,
                        format!("trusted key {} is corrupt: {e}", t.key_id),
                    )
                })
            })
            .collect()
    }

    /// Stop trusting the key with this ID (case-insensitive). Not trusted → NotFound.
    pub fn remove_trusted_publisher(&self, key_id: &str) -> Result<()> {
        super::reentry::check(&self.path)?;
        let n = self.conn.execute(
            "DELETE FROM trusted_publishers WHERE key_id = upper(?1)",
            [key_id.trim()],
        )?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("publisher key {key_id} is not trusted by this site"),
            ));
        }
        Ok(())
    }
}
