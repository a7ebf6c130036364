//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_replay.rs`, which
//! replays every committed corpus and crasher file through the same functions with the
//! normal test suite. Not part of the supported API.
//!
//! Each `fuzz_*` function takes arbitrary bytes, feeds them to one parser of outside data,
//! and panics (which the fuzzer reports as a crash) only when the code under test
//! misbehaves: a panic inside it, an error that is not a clean one-line [`Error`] (or,
//! for the service, a 5xx answer), or a broken invariant of what it accepted.

use serviceconnection::error::{Error, ErrorKind};
use std::io::Cursor;
use std::sync::OnceLock;

/// A failure must be a clean, user-facing error: a precise kind (never `Internal`, which
/// means a bug) and exactly one non-empty line.
fn assert_clean(err: &Error, what: &str) {
    assert_ne!(
        err.kind(),
        ErrorKind::Internal,
        "{what}: an internal error escaped: {err}"
    );
    assert_clean_message(err.message(), what);
}

fn assert_clean_message(message: &str, what: &str) {
    assert!(!message.trim().is_empty(), "{what}: empty error message");
    assert!(
        !message.contains(['\n', '\r']),
        "{what}: error message is not one line: {message:?}"
    );
}

/// Usage cabs (Connect reads them before uploading; the service reads every upload) and
/// the usage manifest inside them.
pub fn fuzz_usage_cab(data: &[u8]) {
    match serviceconnection::usage::read_usage_cab(Cursor::new(data)) {
        Ok(m) => {
            // Accepted: the manifest must survive its own writer and reader unchanged.
            let again = serviceconnection::usage::UsageManifest::from_bytes(&m.to_bytes())
                .expect("an accepted usage manifest re-parses");
            assert_eq!(again.hierarchy_id, m.hierarchy_id);
        }
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::InvalidCab
                        | ErrorKind::InvalidManifest
                        | ErrorKind::IntegrityMismatch
                ),
                "usage cab: unexpected kind {:?}: {e}",
                e.kind()
            );
            assert_clean(&e, "usage cab");
        }
    }
    // The manifest parser on its own, since few mutated cabs reach it.
    if let Err(e) = serviceconnection::usage::UsageManifest::from_bytes(data) {
        assert_eq!(e.kind(), ErrorKind::InvalidManifest, "usage manifest: {e}");
        assert_clean(&e, "usage manifest");
    }
}

/// The public key the committed signature seeds were made with (a throw-away test key;
/// its secret key was never kept). Trusting it lets mutated signatures reach the
/// Ed25519 check instead of stopping at "untrusted key".
pub const FUZZ_TRUSTED_KEY: &str = "RWTyYnA6uZNh3ZCOQLeSFWn/mYy8gjT2GEIkPPgKuHFduUMPVfveaA94";

/// Pack manifests, their minisign signatures and publisher key files. The input is the
/// manifest bytes, optionally followed by a NUL byte and the signature text.
pub fn fuzz_pack_manifest(data: &[u8]) {
    use serviceconnection::pack::manifest::PackManifest;
    let (manifest, signature) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    match PackManifest::from_bytes(manifest) {
        Ok(m) => {
            let again = PackManifest::from_bytes(&m.to_bytes())
                .expect("an accepted pack manifest re-parses");
            assert_eq!(again, m, "pack manifest does not round-trip");
            for f in &m.files {
                let rel = f.rel_path().expect("accepted paths stay valid");
                assert!(
                    rel.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_))),
                    "accepted path escapes: {:?}",
                    f.path
                );
            }
        }
        Err(e) => {
            assert!(
                matches!(e.kind(), ErrorKind::InvalidManifest | ErrorKind::UnsafePath),
                "pack manifest: unexpected kind {:?}: {e}",
                e.kind()
            );
            assert_clean(&e, "pack manifest");
        }
    }
    let trusted = trusted_key();
    let sig_text = String::from_utf8_lossy(signature);
    if let Err(e) =
        serviceconnection::signing::verify(manifest, &sig_text, std::slice::from_ref(trusted))
    {
        assert_eq!(e.kind(), ErrorKind::SignatureInvalid, "signature: {e}");
        assert_clean(&e, "signature");
    }
    if let Err(e) = serviceconnection::signing::PublicKey::parse(&sig_text) {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "public key: {e}");
        assert_clean(&e, "public key");
    }
}

/// Console content: the signed document Import reads from a transfer drive, and the draft
/// `sct-service console publish` reads. The input is the document bytes, optionally followed
/// by a NUL byte and the signature text (checked against [`FUZZ_TRUSTED_KEY`]).
pub fn fuzz_console_content(data: &[u8]) {
    use serviceconnection::console::{ConsoleContent, Draft};
    let (doc, signature) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    match ConsoleContent::from_bytes(doc) {
        Ok(c) => {
            let again = ConsoleContent::from_bytes(&c.to_bytes())
                .expect("accepted console content re-parses");
            assert_eq!(again, c, "console content does not round-trip");
            let h = uuid::Uuid::nil();
            assert!(c.for_hierarchy(&h).messages.iter().all(|m| m.is_for(&h)));
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidManifest, "console content: {e}");
            assert_clean(&e, "console content");
        }
    }
    if let Err(e) = Draft::from_bytes(doc) {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "console draft: {e}");
        assert_clean(&e, "console draft");
    }
    let sig_text = String::from_utf8_lossy(signature);
    if let Err(e) = serviceconnection::console::verify(
        doc,
        Some(&sig_text),
        std::slice::from_ref(trusted_key()),
        false,
    ) {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::SignatureInvalid | ErrorKind::InvalidManifest
            ),
            "console content verify: {e}"
        );
        assert_clean(&e, "console content verify");
    }
}

fn trusted_key() -> &'static serviceconnection::signing::PublicKey {
    static KEY: OnceLock<serviceconnection::signing::PublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        serviceconnection::signing::PublicKey::parse(FUZZ_TRUSTED_KEY).expect("fuzz key")
    })
}

/// The original tool's command line. The input is the arguments, separated by NUL bytes.
pub fn fuzz_cli_args(data: &[u8]) {
    let args: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    match serviceconnection::cli::args::parse(&args) {
        Ok(first) => {
            assert_eq!(
                serviceconnection::cli::args::parse(&args),
                Ok(first),
                "parsing is not deterministic"
            );
        }
        // What the user sees: `cli::fail` prints the message with CR/LF replaced by spaces.
        // (Other control characters typed into an argument are echoed as typed.)
        Err(message) => assert_clean_message(&message.replace(['\r', '\n'], " "), "command line"),
    }
}

/// The C ABI's JSON options documents (`ConnectOptions`, `ImportOptions`, `NewSite`),
/// through the same parser the `sct_` functions use. Secret values (token, proxy
/// password) must never appear in an error message or in `Debug` output.
pub fn fuzz_options_json(data: &[u8]) {
    use serviceconnection::ffi::strings::parse_options_for_fuzzing as parse_options;
    let Ok(text) = std::str::from_utf8(data) else {
        return; // The ABI refuses non-UTF-8 before parsing (arg_str).
    };
    let secrets = secret_values(text);
    let check = |r: Result<String, String>, what: &str| {
        let shown = match r {
            Ok(debug) => debug,
            Err(message) => {
                assert_clean_message(&message, what);
                message
            }
        };
        for s in &secrets {
            assert!(
                !shown.contains(s.as_str()),
                "{what}: a secret leaked: {shown}"
            );
        }
    };
    check(
        parse_options::<serviceconnection::connect::ConnectOptions>(text, "connect")
            .map(|o| format!("{o:?}")),
        "connect options",
    );
    check(
        parse_options::<serviceconnection::import::ImportOptions>(text, "import")
            .map(|o| format!("{o:?}")),
        "import options",
    );
    check(
        parse_options::<serviceconnection::site::NewSite>(text, "site").map(|_| String::new()),
        "site options",
    );
}

/// String values under `token` or `password` keys anywhere in `text` that are distinctive
/// enough (letters and digits, at least 6, not all digits) that seeing one in a message
/// can only mean it was echoed.
fn secret_values(text: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if let serde_json::Value::String(s) = v {
                        let k = k.to_ascii_lowercase();
                        if (k.contains("token") || k.contains("password"))
                            && s.len() >= 6
                            && s.chars().all(|c| c.is_ascii_alphanumeric())
                            && s.chars().any(|c| c.is_ascii_alphabetic())
                            && s.chars().any(|c| c.is_ascii_digit())
                        {
                            out.push(s.clone());
                        }
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        walk(&v, &mut out);
    }
    out
}

/// The reference service's request handling: URL paths, `Range`/`If-Range`/
/// `If-None-Match` headers, bearer tokens and upload bodies, through the real router on a
/// real store holding one published pack. No request may get a 5xx answer, and every
/// answer must be coherent (error bodies are JSON, 206 lengths match `Content-Range`).
///
/// Input layout: byte 0 picks the method and whether the service requires a token and the
/// request sends one; then NUL-separated fields: path, `Range`, `If-Range`,
/// `If-None-Match`; the rest is the body. `{P}` in the path stands for the published
/// pack's GUID, which changes with each store.
///
/// Returns the answer's status code (`None` when the input is not a request), so the
/// replay test can check that the seeds reach every kind of answer.
pub fn fuzz_service_request(data: &[u8]) -> Option<u16> {
    use axum::body::Body;
    use axum::http::{header, Method, Request};
    use tower::ServiceExt;

    let (&ctl, rest) = data.split_first()?;
    let mut fields = rest.splitn(5, |&b| b == 0);
    let path = String::from_utf8_lossy(fields.next().unwrap_or_default());
    let range = fields.next().unwrap_or_default();
    let if_range = fields.next().unwrap_or_default();
    let inm = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default().to_vec();

    let fx = service_fixture();
    let path = path.replace("{P}", &fx.pack_id);

    // The range logic on its own, with a length taken from the input.
    if let Ok(r) = std::str::from_utf8(range) {
        let len = u64::from(ctl) * 37;
        if let sct_service::range::RangeAnswer::Partial { start, end } =
            sct_service::range::decide(Some(r), None, "\"e\"", len)
        {
            assert!(
                start <= end && end < len,
                "range {r:?} of {len} gave {start}-{end}"
            );
        }
    }

    let method = match ctl & 3 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::PUT,
    };
    let Ok(mut req) = Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .body(Body::from(body))
    else {
        return None; // Not a valid request target: hyper refuses it before routing.
    };
    let h = req.headers_mut();
    for (name, value) in [
        (header::RANGE, range),
        (header::IF_RANGE, if_range),
        (header::IF_NONE_MATCH, inm),
    ] {
        if !value.is_empty() {
            if let Ok(v) = header::HeaderValue::from_bytes(value) {
                h.insert(name, v);
            }
        }
    }
    if ctl & 8 != 0 {
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer fuzz-token"),
        );
    }
    let app = if ctl & 4 != 0 {
        fx.app_with_token.clone()
    } else {
        fx.app.clone()
    };
    fx.runtime.block_on(async move {
        let res = app.oneshot(req).await.expect("the router is infallible");
        let status = res.status();
        assert!(!status.is_server_error(), "{method} {path:?} got {status}");
        let content_range = res
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_json = res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("bounded body");
        if status.is_client_error() && method != Method::HEAD {
            assert!(is_json, "{status} without a JSON body");
            let e: serviceconnection::api::ApiError =
                serde_json::from_slice(&bytes).expect("error bodies are ApiError JSON");
            assert_clean_message(&e.error.message, "service error");
        }
        if status.as_u16() == 206 && method == Method::GET {
            let cr = content_range.expect("206 has Content-Range");
            let (a, b) = cr
                .strip_prefix("bytes ")
                .and_then(|s| s.split_once('/'))
                .and_then(|(r, _)| r.split_once('-'))
                .expect("Content-Range shape");
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(bytes.len() as u64, b - a + 1, "206 body length");
        }
        Some(status.as_u16())
    })
}

struct ServiceFixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    app_with_token: axum::Router,
    pack_id: String,
}

/// A store with one published two-file pack, made once per process.
fn service_fixture() -> &'static ServiceFixture {
    static FX: OnceLock<ServiceFixture> = OnceLock::new();
    FX.get_or_init(|| {
        use sct_service::{http, keygen, publish, PublishRequest, Store};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        keygen(&store).expect("keygen");
        let content = dir.path().join("content");
        std::fs::create_dir_all(content.join("sub")).expect("content");
        std::fs::write(content.join("a.bin"), vec![7u8; 3000]).expect("content");
        std::fs::write(content.join("sub/b.txt"), b"hello pack\n").expect("content");
        let v = |s: &str| {
            s.parse::<serviceconnection::SiteVersion>()
                .expect("version")
        };
        let pack = publish(
            &store,
            &PublishRequest {
                name: "Fuzz pack".into(),
                version: v("5.00.9132.1000"),
                pack_type: serviceconnection::api::PackType::Update,
                min_site_version: v("5.00.9000.1000"),
                max_site_version: None,
                hierarchies: Vec::new(),
                publisher_name: "fuzz".into(),
                content_dir: content,
            },
        )
        .expect("publish");
        let state = |token: Option<&str>| {
            std::sync::Arc::new(
                http::AppState::new(Store::open(&store).expect("store"), token, 64 * 1024)
                    .expect("state"),
            )
        };
        ServiceFixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            app: http::router(state(None)),
            app_with_token: http::router(state(Some("fuzz-token"))),
            pack_id: pack.id.to_string(),
            _dir: dir,
        }
    })
}
