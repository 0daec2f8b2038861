//! `relay::testkit::fuzz::tcp_framing` under libFuzzer: `cargo +nightly fuzz run tcp_framing` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::testkit::fuzz::tcp_framing(data));
