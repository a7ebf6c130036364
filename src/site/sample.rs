//! Sample usage data generator (for demos, tests and benchmarks): fills a site with
//! realistic rows across the three diagnostics levels — hierarchy and site attributes,
//! client counts by OS, feature usage, client settings, update compliance, server roles,
//! database health and collection evaluation.
//!
//! Deterministic for a seed (its own SplitMix64, so the data never changes with a `rand`
//! upgrade), and fast: one transaction, one prepared statement, no per-row allocation
//! beyond SQLite's own. Site, site-system and collection names include commas, quotes,
//! and non-ASCII text, as real ones do, so every consumer meets them.

use super::{DiagnosticsLevel, Site};
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress, ProgressFn};
use std::fmt::Write as _;

/// SplitMix64: tiny, fast, and stable forever for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A site of the sample hierarchy: code, name, and its site server.
const SITES: &[(&str, &str, &str)] = &[
    ("CAS", "Central Administration Site", "CM-CAS01.contoso.com"),
    ("PS1", "Primary Site, Seattle", "CM-PS101.contoso.com"),
    ("PS2", "Zürich Primärstandort", "CM-PS201.contoso.ch"),
    ("PS3", "São Paulo \"Matriz\"", "CM-PS301.contoso.com.br"),
    ("S01", "東京 Secondary", "CM-S0101.contoso.co.jp"),
    ("S02", "Secondary, Redmond Lab", "CM-S0201.contoso.com"),
];

const OPERATING_SYSTEMS: &[&str] = &[
    "Windows 11 Enterprise 24H2",
    "Windows 11 Enterprise 23H2",
    "Windows 10 Enterprise 22H2",
    "Windows 10 Enterprise LTSC 2021",
    "Windows Server 2022 Datacenter",
    "Windows Server 2019 Standard",
    "Windows Server 2016 Standard",
    "macOS 14 Sonoma",
    "Ubuntu 22.04 LTS",
];

const FEATURES: &[&str] = &[
    "CoManagement",
    "CloudManagementGateway",
    "EndpointProtection",
    "SoftwareUpdates",
    "ApplicationManagement",
    "OperatingSystemDeployment",
    "ComplianceSettings",
    "PeerCache",
    "DeliveryOptimization",
    "BitLockerManagement",
    "Scripts",
    "CMPivot",
    "TenantAttach",
    "DesktopAnalytics",
];

const CLIENT_SETTINGS: &[(&str, &[&str])] = &[
    ("HardwareInventoryScheduleDays", &["1", "3", "7", "14"]),
    ("SoftwareInventoryScheduleDays", &["7", "14", "30"]),
    ("PolicyPollingIntervalMinutes", &["60", "30", "120"]),
    ("SoftwareUpdateScanScheduleDays", &["1", "7"]),
    ("EnableUserPolicy", &["True", "False"]),
    ("RemoteControlEnabled", &["True", "False"]),
    ("PowerManagementEnabled", &["True", "False"]),
    ("ClientCacheSizeMB", &["5120", "10240", "20480", "51200"]),
    ("BITSThrottlingKbps", &["0", "512", "1024", "4096"]),
];

const ROLES: &[&str] = &[
    "Site server",
    "Site database server",
    "Management point",
    "Distribution point",
    "Software update point",
    "Service connection point",
    "Reporting services point",
    "Fallback status point",
];

const DB_METRICS: &[&str] = &[
    "DatabaseSizeMB",
    "LogSizeMB",
    "ReplicationLinkLatencyMs",
    "AverageQueryDurationMs",
    "IndexFragmentationPercent",
    "BackupAgeHours",
];

const COLLECTIONS: &[&str] = &[
    "All Systems",
    "All Desktop and Server Clients",
    "Servers, \"Tier 0\"",
    "Workstations – Pilot Ring",
    "Büro Laptops",
    "All Unknown Computers",
];

/// Days of data the generator spreads `collected_utc` over, ending at a fixed date so the
/// output depends only on the seed.
const SPAN_SECONDS: i64 = 90 * 86_400;
const END_UNIX: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// Format a Unix time as RFC 3339 UTC (`2025-11-20T05:11:04Z`) without allocating
/// (chrono's formatter dominated generation time). Days-to-civil per H. Hinnant.
fn write_utc(out: &mut String, t: i64) {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Fill `site` with `rows` sample usage rows; returns the number of rows inserted.
pub fn generate(site: &mut Site, rows: u64, seed: u64) -> Result<u64> {
    generate_with_progress(site, rows, seed, &mut crate::progress::ignore)
}

/// [`generate`] with progress (rows) and cancellation; a cancelled run inserts nothing.
pub fn generate_with_progress(
    site: &mut Site,
    rows: u64,
    seed: u64,
    progress: ProgressFn,
) -> Result<u64> {
    let _held = super::reentry::hold(site.path(), "sample-data generation")?;
    let mut rng = Rng(seed ^ 0x5C7_5A3B1E);
    // A bigger page cache while bulk loading (bounded, restored afterwards) keeps SQLite
    // from spilling half-built pages to the WAL over and over.
    let cache: i64 = site
        .connection()
        .query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    site.connection()
        .pragma_update(None, "cache_size", -65_536)?;
    let r = insert_rows(site, rows, &mut rng, progress);
    site.connection().pragma_update(None, "cache_size", cache)?;
    r
}

fn insert_rows(site: &mut Site, rows: u64, rng: &mut Rng, progress: ProgressFn) -> Result<u64> {
    // IMMEDIATE: take the write lock up front (waiting through the busy timeout) rather
    // than upgrading a read snapshot that another writer may have made stale.
    let tx = site
        .connection_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut instance = String::new();
        let mut value = String::new();
        let mut when = String::new();
        for i in 0..rows {
            if i % 16_384 == 0
                && !progress(&Progress {
                    phase: Phase::Generate,
                    item: String::new(),
                    item_done: i,
                    item_total: rows,
                    done: i,
                    total: rows,
                })
            {
                return Err(Error::cancelled());
            }
            instance.clear();
            value.clear();
            when.clear();
            let (code, name, server) = rng.pick(SITES);
            let t = END_UNIX - rng.below(SPAN_SECONDS as u64) as i64;
            write_utc(&mut when, t);
            // Weights: 30% Basic, 40% Enhanced, 30% Full.
            let roll = rng.below(100);
            let (level, category, metric, site_cols): (_, _, &str, (&str, &str, &str));
            match roll {
                0..=9 => {
                    level = DiagnosticsLevel::Basic;
                    category = "Hierarchy";
                    let m = rng.below(4);
                    metric = ["SiteVersion", "SiteType", "ClientCount", "SiteLanguage"][m as usize];
                    let _ = match m {
                        0 => write!(value, "5.00.{}.1000", 9100 + rng.below(40)),
                        1 => write!(
                            value,
                            "{}",
                            if code == "CAS" {
                                "CentralAdministrationSite"
                            } else if code.starts_with('S') {
                                "Secondary"
                            } else {
                                "Primary"
                            }
                        ),
                        2 => write!(value, "{}", 50 + rng.below(50_000)),
                        _ => write!(value, "{}", rng.pick(&["en-US", "de-CH", "pt-BR", "ja-JP"])),
                    };
                    site_cols = (code, name, "");
                }
                10..=29 => {
                    level = DiagnosticsLevel::Basic;
                    category = "ClientCountByOS";
                    metric = "ClientCount";
                    instance.push_str(rng.pick(OPERATING_SYSTEMS));
                    let _ = write!(value, "{}", rng.below(20_000));
                    site_cols = (code, "", "");
                }
                30..=49 => {
                    level = DiagnosticsLevel::Enhanced;
                    category = "FeatureUsage";
                    metric = rng.pick(FEATURES);
                    instance.push_str(if rng.below(2) == 0 {
                        "Enabled"
                    } else {
                        "ObjectCount"
                    });
                    let _ = write!(value, "{}", rng.below(1_000));
                    site_cols = (code, "", "");
                }
                50..=59 => {
                    level = DiagnosticsLevel::Enhanced;
                    category = "ClientSettings";
                    let (m, vals) = rng.pick(CLIENT_SETTINGS);
                    metric = m;
                    let _ = write!(instance, "Client Settings {}", 1 + rng.below(12));
                    value.push_str(rng.pick(vals));
                    site_cols = (code, "", "");
                }
                60..=69 => {
                    level = DiagnosticsLevel::Enhanced;
                    category = "UpdateCompliance";
                    metric = "CompliancePercent";
                    let _ = write!(instance, "KB50{:05}", rng.below(100_000));
                    let _ = write!(value, "{:.1}", rng.below(1001) as f64 / 10.0);
                    site_cols = (code, "", "");
                }
                70..=79 => {
                    level = DiagnosticsLevel::Full;
                    category = "ServerRoles";
                    metric = "RoleInstalled";
                    instance.push_str(rng.pick(ROLES));
                    value.push_str("True");
                    site_cols = (code, name, server);
                }
                80..=89 => {
                    level = DiagnosticsLevel::Full;
                    category = "DatabaseHealth";
                    metric = rng.pick(DB_METRICS);
                    let _ = write!(value, "{}", rng.below(500_000));
                    site_cols = (code, "", server);
                }
                _ => {
                    level = DiagnosticsLevel::Full;
                    category = "CollectionEvaluation";
                    metric = "FullEvaluationSeconds";
                    instance.push_str(rng.pick(COLLECTIONS));
                    let _ = write!(value, "{}.{:03}", rng.below(600), rng.below(1000));
                    site_cols = (code, "", "");
                }
            }
            stmt.execute(rusqlite::params![
                level.as_i64(),
                category,
                metric,
                instance,
                value,
                site_cols.0,
                site_cols.1,
                site_cols.2,
                when,
            ])?;
        }
    }
    if !progress(&Progress {
        phase: Phase::Generate,
        item: String::new(),
        item_done: rows,
        item_total: rows,
        done: rows,
        total: rows,
    }) {
        return Err(Error::cancelled());
    }
    tx.commit()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn timestamps_match_chrono() {
        for t in [
            0i64,
            951_782_400,
            1_767_225_599,
            1_767_225_600,
            4_102_444_800,
            1_709_164_800,
        ] {
            let mut s = String::new();
            super::write_utc(&mut s, t);
            let want = chrono::DateTime::from_timestamp(t, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            assert_eq!(s, want);
        }
    }

    #[test]
    fn rng_is_stable_for_a_seed() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng(7);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng(7);
                move |_| r.next()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], Rng(8).next());
    }
}
