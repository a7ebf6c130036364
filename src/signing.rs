//! Publisher keys and update-pack signatures, in the minisign format so that the stock
//! `minisign` tool can verify what we sign (`minisign -Vm manifest.json -p publisher.pub`).
//!
//! Signatures are the prehashed (`ED`) minisign kind, the default of minisign ≥ 0.10;
//! legacy signatures are refused.

use crate::error::{Error, ErrorKind, Result};
use std::io::Cursor;

/// File name of a pack manifest's signature beside it.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// A publisher's public key as sites trust it.
#[derive(Clone)]
pub struct PublicKey {
    key: minisign::PublicKey,
    /// The base64 key line (what `minisign -G` prints as the public key).
    base64: String,
}

impl PublicKey {
    /// Parse a `publisher.pub` file's text (untrusted comment + base64 line) or a bare base64 key.
    pub fn parse(text: &str) -> Result<Self> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| {
                Error::new(ErrorKind::InvalidArgument, "the public key file is empty")
            })?;
        let key = minisign::PublicKey::from_base64(line).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("not a minisign public key: {e}"),
            )
        })?;
        Ok(PublicKey {
            base64: key.to_base64(),
            key,
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading public key {}", path.display()), &e))?;
        Self::parse(&text).map_err(|e| e.context(path.display()))
    }

    /// The 16-hex-digit key ID minisign prints (upper case, as minisign shows it).
    pub fn key_id(&self) -> String {
        key_id_hex(self.key.keynum())
    }

    pub fn to_base64(&self) -> String {
        self.base64.clone()
    }

    /// The text of a `.pub` file, as minisign writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            self.base64
        )
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

fn key_id_hex(keynum: &[u8]) -> String {
    // minisign shows the 8-byte key number as a little-endian u64 in upper-case hex.
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// A publisher's signing key (kept by the update service, never by sites).
pub struct SecretKey {
    key: minisign::SecretKey,
    public: PublicKey,
}

impl SecretKey {
    /// A fresh unencrypted Ed25519 key pair. The service protects the file by permissions.
    pub fn generate() -> Result<Self> {
        let kp = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| Error::internal(format!("key generation failed: {e}")))?;
        let base64 = kp.pk.to_base64();
        Ok(SecretKey {
            key: kp.sk,
            public: PublicKey { key: kp.pk, base64 },
        })
    }

    /// Text of the secret key file (minisign format, unencrypted).
    pub fn to_file_text(&self) -> Result<String> {
        Ok(self
            .key
            .to_box(Some("ServiceConnection publisher secret key"))
            .map_err(|e| Error::internal(format!("cannot encode secret key: {e}")))?
            .to_string())
    }

    pub fn parse(text: &str) -> Result<Self> {
        let bad = |e: minisign::PError| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("not a minisign secret key: {e}"),
            )
        };
        let sk_box = minisign::SecretKeyBox::from_string(text).map_err(bad)?;
        let key = sk_box.into_unencrypted_secret_key().map_err(bad)?;
        let pk = minisign::PublicKey::from_secret_key(&key).map_err(bad)?;
        let base64 = pk.to_base64();
        Ok(SecretKey {
            key,
            public: PublicKey { key: pk, base64 },
        })
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Sign `data`, returning the text of the `.minisig` file.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String> {
        let sig = minisign::sign(
            Some(&self.public.key),
            &self.key,
            Cursor::new(data),
            Some(trusted_comment),
            Some("signature from ServiceConnection update service"),
        )
        .map_err(|e| Error::internal(format!("signing failed: {e}")))?;
        Ok(sig.into_string())
    }
}

/// Verify `signature` (text of a `.minisig` file) over `data` against any of `trusted`.
/// Returns the key ID that verified it.
pub fn verify(data: &[u8], signature: &str, trusted: &[PublicKey]) -> Result<String> {
    // minisign 0.10 slices the global (trusted-comment) signature without checking its
    // length and panics on a short one (found by fuzzing: a genuine signature with its
    // last line replaced). Check it here, and keep any other panic a clean error.
    let global_ok = signature.lines().nth(3).is_some_and(|l| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(l.trim())
            .is_ok_and(|b| b.len() == 64)
    });
    if !global_ok {
        return Err(Error::new(
            ErrorKind::SignatureInvalid,
            "the signature file is malformed: its trusted-comment signature (fourth line) is missing or not 64 bytes",
        ));
    }
    crate::error::catch_panic(|| verify_inner(data, signature, trusted)).unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::SignatureInvalid,
            "the signature file is malformed (the signature library could not read it)",
        ))
    })
}

fn verify_inner(data: &[u8], signature: &str, trusted: &[PublicKey]) -> Result<String> {
    let sig = minisign::SignatureBox::from_string(signature).map_err(|e| {
        Error::new(
            ErrorKind::SignatureInvalid,
            format!("the signature file is malformed: {e}"),
        )
    })?;
    let sig_id = key_id_hex(sig.keynum());
    let key = trusted
        .iter()
        .find(|k| k.key_id() == sig_id)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::SignatureInvalid,
                format!("signed by key {sig_id}, which this site does not trust"),
            )
        })?;
    minisign::verify(&key.key, &sig, Cursor::new(data), true, false, false).map_err(|e| {
        Error::new(
            ErrorKind::SignatureInvalid,
            format!("the signature does not verify with trusted key {sig_id} (content was altered): {e}"),
        )
    })?;
    Ok(sig_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::parse(&sk.public_key().to_file_text()).unwrap();
        assert_eq!(pk.key_id(), sk.public_key().key_id());
        let sig = sk.sign(b"hello", "file:manifest.json").unwrap();
        assert_eq!(
            verify(b"hello", &sig, std::slice::from_ref(&pk)).unwrap(),
            pk.key_id()
        );
        assert_eq!(
            verify(b"hellO", &sig, std::slice::from_ref(&pk))
                .unwrap_err()
                .kind(),
            ErrorKind::SignatureInvalid
        );
        let other = SecretKey::generate().unwrap();
        let e = verify(b"hello", &sig, &[other.public_key().clone()]).unwrap_err();
        assert!(e.message().contains("does not trust"), "{e}");
        let sk2 = SecretKey::parse(&sk.to_file_text().unwrap()).unwrap();
        assert_eq!(sk2.public_key().key_id(), pk.key_id());
    }
}
