//! A private test certificate authority and a server certificate for 127.0.0.1 it signed,
//! made with the stock `openssl` tool: either one valid from now (for HTTPS tests) or one
//! whose validity window is fixed, e.g. already over (for the expired-certificate test).
//! Include with `#[path = "common/tls.rs"] mod tls;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the server certificate's validity is set.
pub enum ServerValidity {
    /// Valid from now for this many days, signed with `openssl x509 -req -days N`.
    Days(u32),
    /// A fixed window, signed with `openssl ca -startdate START -enddate END`
    /// (times as `YYYYMMDDHHMMSSZ`); lets a test make a certificate that has expired.
    Window {
        start: &'static str,
        end: &'static str,
    },
}

/// What to make: the CA's lifetime (days from now) and the server certificate's validity.
pub struct TestCaOpts {
    pub ca_days: u32,
    pub server: ServerValidity,
}

impl TestCaOpts {
    /// A CA and a server certificate both valid for two days from now.
    pub fn fresh() -> TestCaOpts {
        TestCaOpts {
            ca_days: 2,
            server: ServerValidity::Days(2),
        }
    }

    /// A CA valid for ten years from now and a server certificate that was valid only
    /// from 2020-01-01 to 2020-01-02 (so it has expired).
    pub fn expired() -> TestCaOpts {
        TestCaOpts {
            ca_days: 3650,
            server: ServerValidity::Window {
                start: "20200101000000Z",
                end: "20200102000000Z",
            },
        }
    }
}

/// The files made in the directory given to [`make_test_ca`].
pub struct TestCa {
    /// The CA certificate (`ca.pem`), for the client to trust.
    pub ca: PathBuf,
    /// The server certificate (`server.pem`).
    pub cert: PathBuf,
    /// The server's private key (`server.key`).
    pub key: PathBuf,
}

impl TestCa {
    /// `--tls-cert CERT --tls-key KEY`, for `TestService::start_args`.
    pub fn service_args(&self) -> [&OsStr; 4] {
        [
            OsStr::new("--tls-cert"),
            self.cert.as_os_str(),
            OsStr::new("--tls-key"),
            self.key.as_os_str(),
        ]
    }
}

/// The server certificate's extensions: an end-entity TLS server certificate for
/// 127.0.0.1 and localhost.
const SERVER_EXTENSIONS: &str = "basicConstraints=critical,CA:FALSE\n\
     keyUsage=critical,digitalSignature\n\
     extendedKeyUsage=serverAuth\n\
     subjectAltName=IP:127.0.0.1,DNS:localhost\n";

/// Make `ca.pem`/`ca.key` (a P-256 CA, "SCT Test CA") and `server.key`/`server.pem`
/// (a P-256 key and a certificate for CN=127.0.0.1 it signed) in `dir`.
pub fn make_test_ca(dir: &Path, opts: TestCaOpts) -> TestCa {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_days = opts.ca_days.to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        &ca_days,
        "-subj",
        "/CN=SCT Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    match opts.server {
        ServerValidity::Days(days) => {
            std::fs::write(dir.join("server.ext"), SERVER_EXTENSIONS).unwrap();
            let days = days.to_string();
            run(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                &days,
                "-extfile",
                "server.ext",
            ]);
        }
        ServerValidity::Window { start, end } => {
            // `openssl x509` cannot back-date a certificate: `openssl ca` can.
            std::fs::write(dir.join("index.txt"), "").unwrap();
            std::fs::write(dir.join("serial"), "01\n").unwrap();
            std::fs::write(
                dir.join("ca.cnf"),
                format!(
                    "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nserial = serial\n\
                     new_certs_dir = .\ncertificate = ca.pem\nprivate_key = ca.key\n\
                     default_md = sha256\npolicy = any\ncopy_extensions = none\n\
                     x509_extensions = ext\n\
                     [any]\ncommonName = supplied\n\
                     [ext]\n{SERVER_EXTENSIONS}"
                ),
            )
            .unwrap();
            run(&[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-in",
                "server.csr",
                "-out",
                "server.pem",
                "-startdate",
                start,
                "-enddate",
                end,
                "-notext",
            ]);
        }
    }
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
