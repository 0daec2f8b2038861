#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first. This is the README's test command
# and what CI runs (.ci/run). Needs Rust and root (for apt-get); everything else it installs.
#
#   scripts/test.sh            everything: format, lints, unit, scenario, property, loopback
#                              integration and interop (coturn's turnutils) tests
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use:
#   coturn  turnutils_uclient / turnutils_peer: the TURN client and echo peer nobody here wrote
#   curl    the metrics test scrapes /metrics the way an operator would
need=()
command -v turnutils_uclient >/dev/null 2>&1 || need+=(coturn)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    echo "==> installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Only coturn's client tools are wanted; where systemd starts its server on install, stop it:
    # the interop test needs UDP 3478.
    if [[ " ${need[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now coturn >/dev/null 2>&1 || true
    fi
fi
for tool in turnutils_uclient turnutils_peer curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

# Tests run against release builds: the interop and fuzz tests push real traffic through the
# relay binary, and one build serves clippy's dependencies, the binary and the tests.
echo "==> cargo test"
cargo test --workspace --release -- --test-threads 4

echo "==> all tests passed"
