//! `relay::testkit::fuzz::stun_message` under libFuzzer: `cargo +nightly fuzz run stun_message` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::testkit::fuzz::stun_message(data));
