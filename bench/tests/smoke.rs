//! The bench in the test suite: a short `compare` in which every available target must deliver
//! packets, and the bench's loss and latency measurement checked against a raw forwarder that
//! drops and delays on purpose. No timing is asserted beyond lower bounds that only a broken
//! measurement could miss.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bench() -> Command {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let relay = bench.with_file_name("relay");
    assert!(relay.exists(), "{} missing: build it first (cargo build --release -p relay)", relay.display());
    let mut cmd = Command::new(bench);
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

fn run_json(args: &[&str]) -> Value {
    let out = bench().args(args).arg("--json").output().expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bench {args:?} printed no JSON ({e}):\n{stdout}"))
}

#[test]
fn compare_smoke_every_target_delivers() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let mut cmd = bench();
    cmd.args(["compare", "--smoke"]);
    // As the README's full run: the server on its own CPU where there is one to spare.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        cmd.args(["--server-cpus", "1"]);
    }
    let out = cmd.arg("--out").arg(&dir).output().expect("run bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "compare failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| figure | ours |"), "the markdown table is printed:\n{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("smoke.json")).unwrap()).unwrap();
    let svg = std::fs::read_to_string(dir.join("smoke.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "the chart has curves");
    let targets = report["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(names, ["ours", "ours-busy-poll", "coturn", "coturn-batched", "raw"]);
    let mut ran = 0;
    for t in targets {
        let name = t["target"].as_str().unwrap();
        if t["available"] == false {
            // Only the batched coturn may be missing (Debian's coturn predates the options); the
            // report must say why.
            assert_eq!(name, "coturn-batched", "{name} must run here (scripts/test.sh installs coturn)");
            assert!(t["note"].as_str().unwrap().contains("not run"), "{t}");
            continue;
        }
        ran += 1;
        assert_eq!(t["errors"].as_array().unwrap().len(), 0, "{name} failed a scenario: {}", t["errors"]);
        let throughput = t["throughput"].as_array().unwrap();
        assert_eq!(throughput.len(), 4, "{name}: all four throughput configurations");
        for x in throughput {
            let delivered: f64 =
                x["curve"].as_array().unwrap().iter().map(|p| p["delivered_pps"].as_f64().unwrap()).sum();
            assert!(delivered > 0.0, "{name} delivered packets in {x}");
        }
        assert!(t["cpu"]["delivered_pps"].as_f64().unwrap() > 0.0, "{name}: cpu scenario delivered");
        assert!(t["latency"]["samples"].as_u64().unwrap() > 0, "{name}: latency samples");
        assert!(t["latency_cpu_percent"].as_f64().unwrap() >= 0.0, "{name}: CPU use during the latency rounds");
        assert!(t["latency_host_steal_ms"].as_f64().unwrap() >= 0.0, "{name}: host steal during the latency rounds");
        if name != "raw" {
            let a = &t["allocations"];
            assert_eq!(a["succeeded"], a["attempted"], "{name}: every allocation succeeded: {a}");
            assert_eq!(a["held"], a["hold_attempted"], "{name}: every allocation held: {a}");
        }
    }
    assert!(ran >= 4, "ours, ours-busy-poll, coturn and raw ran");
}

#[test]
fn a_baseline_build_runs_side_by_side_with_ours() {
    // The same binary as its own baseline: what matters here is that both run in one report and
    // the table carries the ratio column.
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_bench")).with_file_name("relay");
    let dir = std::env::temp_dir().join(format!("bench-baseline-{}", std::process::id()));
    let out = bench()
        .args(["compare", "--smoke", "--targets", "ours,baseline", "--only", "latency", "--baseline-bin"])
        .arg(&relay)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("run bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "compare failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| figure | ours | baseline |") && stdout.contains("| ours/baseline |"), "{stdout}");
    let p99 = stdout.lines().find(|l| l.starts_with("| RTT p99 ")).unwrap_or_else(|| panic!("a p99 row:\n{stdout}"));
    let ratio: Vec<f64> = p99.split('|').filter_map(|c| c.trim().parse().ok()).collect();
    assert!(ratio.len() >= 3 && ratio.iter().all(|r| *r > 0.0), "both p99s and their ratio: {p99}");
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("smoke.json")).unwrap()).unwrap();
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert!(t["latency"]["samples"].as_u64().unwrap() > 0, "{t}");
    }
    // Without a binary, the baseline is reported as not run, and why.
    let out =
        bench().args(["compare", "--smoke", "--targets", "baseline", "--only", "latency", "--out"]).arg(&dir).output();
    let stdout = String::from_utf8_lossy(&out.as_ref().unwrap().stdout).into_owned();
    assert!(stdout.contains("no --baseline-bin given"), "{stdout}");
}

#[test]
fn loss_is_measured_exactly() {
    // The raw forwarder drops every 50th client packet: 2% loss, nothing else on loopback.
    let r = run_json(&["throughput", "--target", "raw", "--drop-every", "50", "--rate", "5000", "--secs", "2"]);
    let (sent, received) = (r["sent"].as_u64().unwrap(), r["received"].as_u64().unwrap());
    assert!(sent >= 5000, "{r}");
    let dropped = sent - received;
    assert!(dropped >= sent / 50, "at least every 50th packet is missing: {r}");
    let loss = r["loss"].as_f64().unwrap();
    assert!((loss - dropped as f64 / sent as f64).abs() < 1e-12, "loss = dropped / sent: {r}");
    assert!((0.0199..0.025).contains(&loss), "reported loss matches the forwarder's 2%: {r}");
}

#[test]
fn latency_comes_from_the_samples() {
    // Every packet is held 3 ms in each direction: every round trip takes at least 6 ms.
    let r = run_json(&["latency", "--target", "raw", "--delay-us", "3000", "--rate", "500", "--secs", "1"]);
    let l = &r["latency"];
    assert!(l["samples"].as_u64().unwrap() >= 400, "one sample per returned packet: {r}");
    for q in ["p50_us", "p99_us", "p999_us"] {
        assert!(l[q].as_f64().unwrap() >= 6000.0 * 0.999, "{q} includes the 6 ms of delay: {r}");
    }
    assert!(l["p50_us"].as_f64() <= l["p99_us"].as_f64() && l["p99_us"].as_f64() <= l["p999_us"].as_f64());
}

#[test]
fn sfu_smoke_every_viewer_receives_the_stream() {
    let dir = std::env::temp_dir().join(format!("bench-sfu-smoke-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let report = run_json(&["sfu", "--viewers", "2,4", "--secs", "2", "--out", out]);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    for (s, viewers) in steps.iter().zip([2u64, 4]) {
        assert_eq!(s["viewers"], viewers);
        let sent = s["sent"].as_u64().unwrap();
        // Two seconds of a 30 fps stream of 1,200-byte packets: hundreds of packets.
        assert!(sent >= 200, "{s}");
        assert!(s["delivered"].as_u64().unwrap() >= sent * viewers / 2, "the viewers got the stream: {s}");
        assert!(s["egress_pps"].as_f64().unwrap() > 0.0 && s["relay_cores"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["latency"]["samples"].as_u64().unwrap() > 0, "{s}");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(dir.join("sfu.json")).unwrap()).unwrap();
    assert_eq!(saved["steps"].as_array().unwrap().len(), 2);
}

#[test]
fn cascade_smoke_viewers_at_the_linked_relay_get_one_link_copy_per_packet() {
    let dir = std::env::temp_dir().join(format!("bench-cascade-smoke-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let report =
        run_json(&["cascade", "--viewers", "3", "--secs", "3", "--link-delay-ms", "20", "--rounds", "1", "--out", out]);
    let cases = report["cases"].as_array().unwrap();
    let paths: Vec<&str> = cases.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["direct", "cascade"], "{report}");
    for c in cases {
        let s = &c["step"];
        assert!(s["sent"].as_u64().unwrap() >= 200, "{c}");
        assert!(s["loss"].as_f64().unwrap() < 0.01, "every viewer got the stream: {c}");
    }
    let cascade = &cases[1];
    // The media crossed the 20 ms link once, whatever the viewer count.
    let copies = cascade["link_copies_per_packet"].as_f64().unwrap();
    assert!((copies - 1.0).abs() <= 0.01, "{cascade}");
    let measured = cascade["step"]["latency"]["p50_us"].as_f64().unwrap();
    assert!(measured >= 20_000.0, "the viewers at B see the link's delay: {cascade}");
    let hop = cascade["hop_latency"]["p50_us"].as_f64().unwrap();
    assert!((hop - (measured - 20_000.0)).abs() < 1.0, "the hop is the latency less the link's delay: {cascade}");
    // The paired measure: one sample per video packet that reached both B and A's reference.
    let paired = cascade["paired_hop"]["samples"].as_u64().unwrap();
    assert!(paired >= 200, "{cascade}");
    assert!(cases[0]["paired_hop"].is_null(), "no reference viewer when direct: {}", cases[0]);
    // One round: the summary's hop is this cascade's p99 less the direct case's.
    let direct_p99 = cases[0]["hop_latency"]["p99_us"].as_f64().unwrap();
    let hop_p99 = report["summary"]["hop_p99_us"].as_f64().unwrap();
    assert!((hop_p99 - (cascade["hop_latency"]["p99_us"].as_f64().unwrap() - direct_p99)).abs() < 1.0, "{report}");
    let saved: Value = serde_json::from_slice(&std::fs::read(dir.join("cascade.json")).unwrap()).unwrap();
    assert_eq!(saved["cases"].as_array().unwrap().len(), 2);
}

/// `bench soak` with both servers at once, briefly: samples every interval for each, churn
/// allocations succeed, nothing is lost at a low rate, and the summary compares the windows.
#[test]
fn soak_smoke_samples_both_servers_side_by_side() {
    let dir = std::env::temp_dir().join(format!("bench-soak-smoke-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let report = run_json(&[
        "soak",
        "--targets",
        "ours,coturn",
        "--minutes",
        "0.5",
        "--interval-secs",
        "5",
        "--rate",
        "1000",
        "--churn",
        "600",
        "--flows",
        "4",
        "--out",
        out,
    ]);
    let targets = report["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(names, ["ours", "coturn"], "{report}");
    for t in targets {
        assert!(t["error"].is_null(), "{t}");
        let samples = t["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 6, "{t}");
        for s in samples {
            assert!(s["rss_bytes"].as_u64().unwrap() > 1_000_000, "{s}");
            assert!(s["fds"].as_u64().unwrap() > 0 && s["threads"].as_u64().unwrap() > 0, "{s}");
            // Traffic flows through each (how much is lost beside the other smoke tests on a
            // small machine is no measure of anything).
            assert!(s["sent"].as_u64().unwrap() > 1000 && s["received"].as_u64().unwrap() > 0, "{s}");
        }
        let last = samples.last().unwrap();
        assert!(last["churn_allocated"].as_u64().unwrap() >= 100, "churn ran: {last}");
        assert_eq!(last["churn_failed"].as_u64().unwrap(), 0, "{t}");
        assert!(last["churn_deleted"].as_u64().unwrap() > 0, "deleted after 20 s: {last}");
        let summary = &t["summary"];
        let (sent, received) = samples
            .iter()
            .fold((0.0, 0.0), |(s, r), x| (s + x["sent"].as_f64().unwrap(), r + x["received"].as_f64().unwrap()));
        assert!((summary["total_loss"].as_f64().unwrap() - (1.0 - received / sent)).abs() < 1e-9, "{summary}");
        assert!(summary["rss_first"].as_f64().unwrap() > 0.0, "{summary}");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(dir.join("soak.json")).unwrap()).unwrap();
    assert_eq!(saved["targets"].as_array().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
