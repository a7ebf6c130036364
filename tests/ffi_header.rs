//! `include/serviceconnection.h` must be exactly what cbindgen generates from `src/ffi/`
//! with `cbindgen.toml`. Regenerate with `SCT_BLESS=1 cargo test --test ffi_header`.

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    // Only src/ffi/ (not the whole crate), so no other module's constants or types leak
    // into the header.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen can generate the header from src/ffi/");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/serviceconnection.h");
    let generated = generate();
    if std::env::var_os("SCT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}).\n\
             Regenerate it with:  SCT_BLESS=1 cargo test --test ffi_header\n\
             and commit the result.\n--- committed line: {:?}\n+++ generated line: {:?}",
            path.display(),
            first_diff + 1,
            committed.lines().nth(first_diff),
            generated.lines().nth(first_diff),
        );
    }
}

/// Things the C and Python callers rely on, checked in the generated text itself.
#[test]
fn header_declares_the_whole_abi() {
    let h = generate();
    // Compare with whitespace collapsed so line wrapping does not matter.
    let flat = h.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(h.contains("#ifndef SERVICECONNECTION_H"), "include guard");
    assert!(h.contains("do not edit"), "generated banner");
    assert!(h.contains("#define SCT_ABI_VERSION 1"), "ABI version macro");
    assert!(h.contains("SCT_OK = 7000"));
    assert!(h.contains("SCT_PANIC = 7102"));
    for f in [
        "sct_version",
        "sct_abi_version",
        "sct_status_name",
        "sct_last_error_status",
        "sct_last_error_message",
        "sct_last_error_copy",
        "sct_string_free",
        "sct_site_create",
        "sct_site_info",
        "sct_generate_sample_data",
        "sct_prepare",
        "sct_export_csv",
        "sct_usage_rows",
        "sct_connect",
        "sct_import",
        "sct_list_updates",
        "sct_trust_add",
        "sct_trust_list",
        "sct_trust_remove",
    ] {
        assert!(
            flat.contains(&format!(" {f}(")) || flat.contains(&format!("*{f}(")),
            "{f} is declared"
        );
    }
    assert!(
        flat.contains(
            "typedef int (*sct_progress_cb)(void *user_data, const struct sct_progress *progress);"
        ),
        "progress callback typedef"
    );
    assert!(
        flat.contains("typedef int (*sct_usage_row_cb)(void *user_data, const char *row_json);")
    );
    // Doc comments are carried over, including the JSON result shapes.
    assert!(h.contains("\"usage_rows\": [<Basic rows>, <Enhanced rows>, <Full rows>]"));
    // Nothing from other modules leaks in.
    assert!(!h.contains("APPLICATION_ID"));
}
