//! Usage data: which rows leave the site (level filtering, hashing of identifying
//! attributes), the usage cab written by Prepare, and the CSV written by Export.

pub mod manifest;
pub mod reader;

pub use manifest::{UsageFile, UsageManifest};
pub use reader::{read_usage_cab, read_usage_cab_file};
