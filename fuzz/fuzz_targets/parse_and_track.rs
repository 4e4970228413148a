//! The parser the kernel programs use (run here over bytes in memory) and
//! the reference model of their tracking, under libFuzzer and AddressSanitizer:
//! `cargo +nightly fuzz run parse_and_track` (from the repository root).
//! See `handshake_common::fuzz` for how the input is read and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handshake_common::fuzz::run(data));
