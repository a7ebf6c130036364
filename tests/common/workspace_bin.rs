//! Finding a binary of another crate of the workspace (e.g. `sct-service`, which lives in
//! `service/`): cargo tells a test only about its own package's binaries, but every crate
//! of the workspace builds into the same `target/<profile>/`, the folder above the test
//! executable (`target/<profile>/deps/`). `cargo build --workspace` (or plain `cargo
//! build`/`cargo test` at the root, whose default members are the whole workspace) puts
//! it there; a missing binary is a clear panic, never a silent skip.
#![allow(dead_code)]

use std::path::PathBuf;

/// `target/<profile>/<name>` of the workspace, checked to exist.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in target/<profile>/deps");
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build --workspace` (or `cargo build -p {name}`) first",
        bin.display()
    );
    bin
}
