//! A bounded run of every fuzz target (`relay::testkit::fuzz`) on stable Rust, in the test suite:
//! mutated valid messages (bit flips, interesting bytes and lengths, insertions, deletions,
//! splices) and random bytes, from a fixed seed. It has no coverage feedback, which libFuzzer
//! adds for longer runs: `cargo +nightly fuzz run <target>` in `fuzz/` (see the README).
//!
//! `RELAY_FUZZ_INPUTS` sets the number of inputs per target (default 200,000) and
//! `RELAY_FUZZ_SEED` the seed. A failing input is written to `target/fuzz-failures/` and its
//! hex printed, to replay with `cargo +nightly fuzz run <target> <file>`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn inputs() -> usize {
    std::env::var("RELAY_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

fn seed() -> u64 {
    std::env::var("RELAY_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5EED_F022)
}

const INTERESTING: &[u8] = &[0, 1, 3, 4, 0x3F, 0x40, 0x41, 0x4F, 0x7F, 0x80, 0xFE, 0xFF];
const INTERESTING_U16: &[u16] = &[0, 1, 3, 4, 20, 24, 0x7FFF, 0x8000, 0xFFFC, 0xFFFF, 0x0008, 0x0012, 0x0013, 0x8028];

/// One mutated input: a seed changed 1 to 8 times, or random bytes.
fn mutate(rng: &mut SmallRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_ratio(1, 10) {
        let len = rng.random_range(0..256);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut v = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 if len > 1 => {
                let i = rng.random_range(0..len - 1);
                let x = INTERESTING_U16[rng.random_range(0..INTERESTING_U16.len())].to_be_bytes();
                v[i..i + 2].copy_from_slice(&x);
            }
            3 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len.min(i + 16));
                v.drain(i..j);
            }
            5 if len > 0 => v.truncate(rng.random_range(0..len)),
            6 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len.min(i + 32));
                let copy = v[i..j].to_vec();
                v.splice(j..j, copy);
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

fn run(name: &str, target: fn(&[u8])) {
    let (n, seed) = (inputs(), seed());
    let seeds = relay::testkit::fuzz::seeds();
    let mut rng = SmallRng::seed_from_u64(seed ^ name.len() as u64);
    // The seeds themselves first: the targets' promises hold for valid input too.
    for (i, input) in seeds.iter().cloned().chain((0..n).map(|_| mutate(&mut rng, &seeds))).enumerate() {
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{seed}-{i}"));
            std::fs::write(&file, &input).unwrap();
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("{name}: input {i} (seed {seed}) failed; saved to {}: {hex}", file.display());
        }
    }
    println!("{name}: {} inputs, no failure (seed {seed})", n + seeds.len());
}

#[test]
fn fuzz_stun_message() {
    run("stun_message", relay::testkit::fuzz::stun_message);
}

#[test]
fn fuzz_channel_data() {
    run("channel_data", relay::testkit::fuzz::channel_data);
}

#[test]
fn fuzz_link_wire() {
    run("link_wire", relay::testkit::fuzz::link_wire);
}

#[test]
fn fuzz_tcp_framing() {
    run("tcp_framing", relay::testkit::fuzz::tcp_framing);
}
