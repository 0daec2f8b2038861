//! `relay::testkit::fuzz::channel_data` under libFuzzer: `cargo +nightly fuzz run channel_data` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::testkit::fuzz::channel_data(data));
