//! Fuzz target; the logic lives in `sct_fuzzing::fuzz_console_content` so
//! that `tests/fuzz_replay.rs` replays this target's seeds with the normal test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sct_fuzzing::fuzz_console_content(data);
});
