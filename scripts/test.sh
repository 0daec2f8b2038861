#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first. This is the README's test command
# and what CI runs (.ci/run). Needs Rust and root (for apt-get); everything else it installs.
#
#   scripts/test.sh            everything: format, lints, unit, scenario, property, loopback
#                              integration and interop (coturn's turnutils) tests
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "==> [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

# System packages the tests use:
#   coturn      turnutils_uclient / turnutils_peer: the TURN client and echo peer nobody here wrote
#   curl        the metrics test scrapes /metrics the way an operator would
#   postgresql  signaling's API suite runs on PostgreSQL as well as on embedded SQLite
#   chromium    the real-browser tests (WHIP publish, WHEP watch, TURN-only watch, turns: only)
#   firefox-esr a viewer without H.264: refused with both sides' codecs, or served a VP8 backup
#   python3     writes the Firefox test profile's permissions (sqlite3 module)
#   openssl     the rotation test reads which certificate the TLS listener presents
#   prometheus, prometheus-alertmanager, yamllint, shellcheck, systemd (systemd-analyze)
#               check the deployment's files and the scripts (deploy/check.sh); Prometheus and
#               Alertmanager run the alert drill (signaling/tests/drill.rs)
#   nftables    nft -c checks the firewall rules deploy/install.sh writes
#   caddy       caddy validate checks deploy/Caddyfile (the TLS proxy in front of signaling)
#   systemd-container  systemd-nspawn boots systemd in a throwaway root, where install.sh
#               upgrades a relay during a live session (signaling/tests/upgrade.rs)
need=()
command -v turnutils_uclient >/dev/null 2>&1 || need+=(coturn)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v yamllint >/dev/null 2>&1 || need+=(yamllint)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
# The operator trial (scripts/trial.sh): a fresh Debian for its VPSes, an ACME server.
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# From PyPI: the Kubernetes manifests' and the compose file's validators (deploy/check.sh).
pypi=()
command -v kubernetes-validate >/dev/null 2>&1 || pypi+=(kubernetes-validate)
command -v check-jsonschema >/dev/null 2>&1 || pypi+=(check-jsonschema)
if ((${#need[@]})); then
    step "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Only coturn's client tools are wanted; where systemd starts its server on install, stop it:
    # the interop test needs UDP 3478.
    if [[ " ${need[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now coturn >/dev/null 2>&1 || true
    fi
    # Likewise only promtool and amtool are wanted: Prometheus's own server would hold port
    # 9090, which the local deployment gives a relay's metrics.
    if [[ " ${need[*]} " == *" prometheus"* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true
    fi
    # And caddy's own server would hold ports 80 and 443.
    if [[ " ${need[*]} " == *" caddy "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now caddy >/dev/null 2>&1 || true
    fi
fi
if ((${#pypi[@]})); then
    step "installing ${pypi[*]} (PyPI)"
    # (PyYAML comes with kubernetes-validate: the install test reads the ConfigMaps with it.)
    python3 -m pip install -q --root-user-action=ignore "${pypi[@]}" \
        || python3 -m pip install -q --root-user-action=ignore --break-system-packages "${pypi[@]}"
fi
for tool in turnutils_uclient turnutils_peer curl chromium firefox-esr python3 openssl promtool amtool prometheus prometheus-alertmanager yamllint shellcheck systemd-analyze nft systemd-nspawn nsenter caddy debootstrap pebble kubernetes-validate check-jsonschema; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

# A throw-away PostgreSQL server for signaling's tests: its own data directory and port, trust
# authentication on loopback only, stopped when this script exits. The tests create one database
# per signaling instance on it.
pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)
[[ -x "$pg_bin/initdb" ]] || { echo "error: PostgreSQL's initdb is missing after install" >&2; exit 1; }
pg_port=${SIGNALING_TEST_PG_PORT:-55432}
pg_data=$(mktemp -d /tmp/signaling-test-pg.XXXXXX)
chown postgres "$pg_data"
stop_postgres() {
    su postgres -c "$pg_bin/pg_ctl -D $pg_data -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$pg_data"
}
trap stop_postgres EXIT
step "starting PostgreSQL on 127.0.0.1:$pg_port"
su postgres -c "$pg_bin/initdb -D $pg_data -A trust -U postgres" >/dev/null
su postgres -c "$pg_bin/pg_ctl -D $pg_data -l $pg_data/log -w -o '-k $pg_data -p $pg_port -c listen_addresses=127.0.0.1 -c fsync=off' start" >/dev/null
export SIGNALING_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

step "deployment files and scripts: promtool, amtool, yamllint, shellcheck, systemd-analyze (deploy/check.sh)"
deploy/check.sh

# Tests run against optimised builds (profile `ci`: release without LTO, see Cargo.toml): the
# interop and fuzz tests push real traffic through the relay binary. Everything, the workspace's
# binaries included, is built in one pass before any test runs, so tests that start one another's
# binaries (signaling's end-to-end test runs the relay) find them current.
step "cargo test (build)"
cargo test --workspace --profile ci --no-run
step "cargo test (run)"
cargo test --workspace --profile ci -- --test-threads 4

step "region selection on measured internet latencies (report)"
cargo test --profile ci -p geo --test simulation -- --nocapture --test-threads 1 2>&1 | grep -v "^test \|^running \|^$"

step "abuse and fuzzing (figures)"
# --workspace, as above, so the relay is not rebuilt with another feature set.
cargo test --workspace --profile ci --test flood --test fuzz -- --nocapture 2>&1 \
    | grep -E "^(flood|stun_message|channel_data|tcp_framing|link_wire):"

step "the README's deployment on three fresh Debian VPSes (scripts/trial.sh)"
scripts/trial.sh

step "all tests passed"
