//! Fuzz target; the logic lives in `sct_fuzzing::fuzz_pack_manifest` so that
//! `tests/fuzz_replay.rs` replays this target's corpus with the normal test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // libfuzzer-sys aborts in its panic hook, before unwinding, so even a panic the
    // library catches on purpose (the `cab` crate's, in `read_usage_cab`) would count as
    // a crash. The default hook lets those unwind; a panic that escapes the entry point
    // is still caught by libfuzzer-sys and aborts, so real crashes are still found.
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        sct_fuzzing::fuzz_pack_manifest(data);
    }
);
