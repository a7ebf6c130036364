//! The publisher keys a site trusts for update packs.

use super::panic::boundary;
use super::status::sct_status;
use super::strings::{arg_path, arg_str, check_out, opt_arg_str, to_json, write_out};
use crate::signing::PublicKey;
use crate::site::Site;
use std::os::raw::c_char;

/// Trust the publisher key in the file `public_key_path` (a minisign public key, such as
/// the service's `publisher.pub`) for update packs imported into this site. `comment`
/// may be NULL (empty comment). Trusting a key that is already trusted changes nothing
/// and returns the existing entry.
///
/// On success `*out_json` receives:
/// `{"key_id": "<16 hex digits>", "public_key": "<base64>", "comment": "...",
///   "added": "<RFC 3339 UTC>"}`
///
/// # Safety
/// `site_db` and `public_key_path` (required) are NUL-terminated; `comment` is NULL or
/// NUL-terminated; `out_json` (required) points to a writable `char *`.
#[no_mangle]
pub unsafe extern "C" fn sct_trust_add(
    site_db: *const c_char,
    public_key_path: *const c_char,
    comment: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_trust_add", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        let key_path = unsafe { arg_path(public_key_path, "public_key_path") }?;
        let comment = unsafe { opt_arg_str(comment, "comment") }?.unwrap_or("");
        check_out(out_json, "out_json")?;
        let key = PublicKey::from_file(&key_path)?;
        let site = Site::open(&path)?;
        let json = to_json(&site.add_trusted_publisher(&key, comment)?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}

/// The publisher keys the site trusts. On success `*out_json` receives an array of the
/// objects `sct_trust_add` returns, oldest first.
///
/// # Safety
/// `site_db` (required) is NUL-terminated; `out_json` (required) points to a writable
/// `char *`.
#[no_mangle]
pub unsafe extern "C" fn sct_trust_list(
    site_db: *const c_char,
    out_json: *mut *mut c_char,
) -> sct_status {
    boundary("sct_trust_list", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        check_out(out_json, "out_json")?;
        let json = to_json(&Site::open(&path)?.trusted_publishers()?)?;
        // SAFETY: checked above.
        unsafe { write_out(out_json, json) };
        Ok(())
    })
}

/// Stop trusting the key with this ID (as in `key_id` above; case-insensitive).
/// `SCT_NOT_FOUND` when the site does not trust it.
///
/// # Safety
/// `site_db` and `key_id` (required) are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sct_trust_remove(
    site_db: *const c_char,
    key_id: *const c_char,
) -> sct_status {
    boundary("sct_trust_remove", || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg_path(site_db, "site_db") }?;
        let key_id = unsafe { arg_str(key_id, "key_id") }?;
        Site::open(&path)?.remove_trusted_publisher(key_id)?;
        Ok(())
    })
}
