//! Which published packs a hierarchy is offered on upload (`POST /v1/usage?selection=`).
//!
//! The hierarchy and site version come from the uploaded cab's manifest. A pack is a
//! *candidate* for a hierarchy when its `hierarchies` list is empty (untargeted) or
//! contains that hierarchy. "Applicable" means `min_site_version ≤ site ≤ max_site_version`
//! (no max: no upper bound). Versions compare as four-part numbers.
//!
//! | selection | offered |
//! |---|---|
//! | `Latest` (default) | the single newest `Update` (highest version) that is applicable and newer than the site; no hotfixes; nothing when the site is current |
//! | `SiteVersion` | every `Update` and `Hotfix` newer than the site, applicable or not: the later steps of an upgrade chain (whose minimum site version is above the site's) come in the same trip, and Import records them as `NotApplicable` until the site gets there |
//! | `Hotfix` | every `Hotfix` candidate, whatever its version or applicability |
//! | `All` | every candidate |
//!
//! Results are ordered by version, then publication time, so an upgrade chain reads in
//! the order it installs. When two updates share the highest version, `Latest` offers
//! the one published last.

use super::catalog::CatalogPack;
use crate::api::{PackType, Selection};
use crate::version::SiteVersion;

/// Apply `selection` for a site of `hierarchy` at `site` to `packs` (the catalog).
pub fn select_packs<'a>(
    packs: &'a [CatalogPack],
    hierarchy: &uuid::Uuid,
    site: &SiteVersion,
    selection: Selection,
) -> Vec<&'a CatalogPack> {
    let newer_applicable = |p: &CatalogPack| p.applies_to(site) && &p.version > site;
    // Stable sort by version keeps catalog (publication) order among equal versions.
    let mut candidates: Vec<&CatalogPack> = packs.iter().filter(|p| p.targets(hierarchy)).collect();
    candidates.sort_by(|a, b| a.version.cmp(&b.version));
    match selection {
        Selection::Latest => candidates
            .into_iter()
            .rfind(|p| p.pack_type == PackType::Update && newer_applicable(p))
            .into_iter()
            .collect(),
        Selection::SiteVersion => candidates
            .into_iter()
            .filter(|p| &p.version > site)
            .collect(),
        Selection::Hotfix => candidates
            .into_iter()
            .filter(|p| p.pack_type == PackType::Hotfix)
            .collect(),
        Selection::All => candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(
        name: &str,
        v: &str,
        t: PackType,
        min: &str,
        max: Option<&str>,
        h: &[uuid::Uuid],
    ) -> CatalogPack {
        CatalogPack {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            version: v.parse().unwrap(),
            pack_type: t,
            min_site_version: min.parse().unwrap(),
            max_site_version: max.map(|m| m.parse().unwrap()),
            hierarchies: h.to_vec(),
            content_digest: String::new(),
            manifest_sha256: String::new(),
            size: 0,
            file_count: 0,
            publisher_name: String::new(),
            published: String::new(),
        }
    }

    #[test]
    fn rules_table() {
        use PackType::*;
        let h = uuid::Uuid::new_v4();
        let other = uuid::Uuid::new_v4();
        let packs = vec![
            pack(
                "u2203",
                "5.00.9078.1000",
                Update,
                "5.00.9000.1000",
                None,
                &[],
            ),
            pack(
                "u2207",
                "5.00.9088.1000",
                Update,
                "5.00.9040.1000",
                None,
                &[],
            ),
            pack(
                "u2211",
                "5.00.9096.1000",
                Update,
                "5.00.9058.1000",
                None,
                &[],
            ),
            pack(
                "hf2207",
                "5.00.9088.1005",
                Hotfix,
                "5.00.9088.1000",
                Some("5.00.9088.1000"),
                &[],
            ),
            pack(
                "ring",
                "5.00.9106.1000",
                Update,
                "5.00.9058.1000",
                None,
                &[other],
            ),
            pack(
                "hf-old",
                "5.00.9040.1010",
                Hotfix,
                "5.00.9040.1000",
                Some("5.00.9040.1000"),
                &[],
            ),
        ];
        let names = |site: &str, sel: Selection, hier: &uuid::Uuid| -> Vec<String> {
            select_packs(&packs, hier, &site.parse().unwrap(), sel)
                .into_iter()
                .map(|p| p.name.clone())
                .collect()
        };
        use Selection::{All, Latest, SiteVersion};
        let table: &[(&str, Selection, &[&str])] = &[
            ("5.00.9040.1000", Latest, &["u2207"]),
            ("5.00.9058.1000", Latest, &["u2211"]),
            ("5.00.9096.1000", Latest, &[]),
            ("5.00.8999.1000", Latest, &[]),
            ("5.00.9088.1000", SiteVersion, &["hf2207", "u2211"]),
            // hf2207 and u2211 need 9088 and 9058 first: later steps, offered too.
            (
                "5.00.9040.1000",
                SiteVersion,
                &["hf-old", "u2203", "u2207", "hf2207", "u2211"],
            ),
            ("5.00.9096.1000", SiteVersion, &[]),
            ("5.00.9096.1000", Selection::Hotfix, &["hf-old", "hf2207"]),
            (
                "5.00.9000.1000",
                All,
                &["hf-old", "u2203", "u2207", "hf2207", "u2211"],
            ),
        ];
        for (site, sel, want) in table {
            assert_eq!(&names(site, *sel, &h), want, "{site} {sel:?}");
        }
        assert_eq!(names("5.00.9058.1000", Latest, &other), ["ring"]);
        assert!(names("5.00.9000.1000", All, &other).contains(&"ring".to_string()));
    }
}
