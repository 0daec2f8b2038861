//! `relay::testkit::fuzz::link_wire` under libFuzzer: `cargo +nightly fuzz run link_wire` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::testkit::fuzz::link_wire(data));
