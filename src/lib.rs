//! ServiceConnection: offline servicing for Configuration Manager sites.
//!
//! Three steps on two machines that never talk to each other:
//! **Prepare** (site database → usage cab, [`usage`]), **Connect** (upload cabs, download
//! signed update packs, [`connect`]), **Import** (verify and record packs, [`import`]).
//! The same logic is exposed as a C ABI ([`ffi`]), the `serviceconnectiontool` command line
//! ([`cli`]) and wrapped by the PowerShell module. The reference update service
//! (`sct-service`) and the fuzzing entry points are separate crates of the workspace
//! (`service/`, `fuzzing/`), so this library carries no server code.

pub mod api;
pub mod cli;
pub mod connect;
pub mod console;
pub mod error;
pub mod ffi;
pub mod fsutil;
pub mod hashing;
pub mod import;
pub mod pack;
mod platform;
pub mod progress;
pub mod signing;
pub mod site;
mod testhooks;
pub mod usage;
pub mod version;

pub use error::{Error, ErrorKind, Result};
pub use progress::{Phase, Progress};
pub use site::{DiagnosticsLevel, NewSite, ScpMode, Site, SiteInfo};
pub use version::SiteVersion;

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// "ServiceConnection <version>", as written into manifests and health answers.
pub fn tool_version() -> String {
    format!("ServiceConnection {VERSION}")
}
