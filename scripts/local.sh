#!/usr/bin/env bash
# Starts a complete local deployment on loopback and prints where to look: signaling (embedded
# SQLite under .local/) and three relays, one per simulated region, registered with it. This is
# the README's first command. Ctrl-C (or SIGTERM) stops everything.
#
#   scripts/local.sh
#
# Ports: signaling 127.0.0.1:8080; relays' STUN/TURN on UDP 3478 (eu-central), 3479 (us-east),
# 3480 (ap-southeast), their metrics on 9090-9092, their relay-to-relay links (QUIC) on UDP
# 4433-4435. Keys are generated on first start and kept in .local/keys.env, the cluster CA and
# the relays' link certificates in .local/ca/, so tokens stay valid across restarts; delete
# .local/ to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

state=.local
mkdir -p "$state/logs"

echo "==> building (release)"
cargo build --release --workspace --bins

bin=target/release
if [[ ! -f "$state/keys.env" ]]; then
    umask 077
    {
        echo "SIGNALING_JWT_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '=+/\n')"
        echo "SIGNALING_CLUSTER_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '=+/\n')"
    } >"$state/keys.env"
fi
set -a
# shellcheck disable=SC1091
source "$state/keys.env"
set +a

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "==> stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$bin/signaling" --config configs/signaling.toml --data-dir "$state/data" \
    >"$state/logs/signaling.out" 2>"$state/logs/signaling.log" &
pids+=($!)

# Waits for a line in a file (a banner), or fails naming the log to read.
await() {
    local file=$1 pattern=$2 log=$3
    for _ in $(seq 100); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: did not start; see $log" >&2
    exit 1
}
await "$state/logs/signaling.out" "ready" "$state/logs/signaling.log"

regions=(eu-central us-east ap-southeast)
# The cluster CA for relay links, and a certificate for each relay (kept across restarts).
ca=$state/ca
if [[ ! -f "$ca/ca.pem" ]]; then
    "$bin/relayctl" ca init --dir "$ca" --name local-cluster >/dev/null
fi
for region in "${regions[@]}"; do
    [[ -f "$ca/local-$region.pem" ]] || "$bin/relayctl" ca issue "local-$region" --dir "$ca" >/dev/null
done
for i in 0 1 2; do
    region=${regions[$i]}
    # Loopback peers are allowed so that relaying can be tried between local processes; the
    # default config refuses them, as a relay on the internet must.
    RELAY_CLUSTER_TOKEN=$SIGNALING_CLUSTER_TOKEN "$bin/relay" --config configs/relay.toml \
        --listen "127.0.0.1:$((3478 + i))" --admin-listen "127.0.0.1:$((9090 + i))" \
        --sfu-http-listen "127.0.0.1:$((8088 + i))" \
        --min-port $((40000 + i * 5000)) --max-port $((44999 + i * 5000)) \
        --signaling-url http://127.0.0.1:8080 --region "$region" --relay-id "local-$region" \
        --public-host 127.0.0.1 --allow-peer 127.0.0.0/8 \
        --link-listen "127.0.0.1:$((4433 + i))" --link-ca "$ca/ca.pem" \
        --link-cert "$ca/local-$region.pem" --link-key "$ca/local-$region.key" \
        >"$state/logs/relay-$region.out" 2>"$state/logs/relay-$region.log" &
    pids+=($!)
done
for region in "${regions[@]}"; do
    await "$state/logs/relay-$region.out" "ready" "$state/logs/relay-$region.log"
done

admin=$("$bin/relayctl" token mint --key "$SIGNALING_JWT_KEY" --sub local-admin --role admin --ttl-secs 86400)
player=$("$bin/relayctl" token mint --key "$SIGNALING_JWT_KEY" --sub player1 --role player --ttl-secs 86400)
# Relays register with their first heartbeat, within a second of starting.
for _ in $(seq 50); do
    n=$("$bin/relayctl" --url http://127.0.0.1:8080 --token "$admin" --json relays 2>/dev/null | grep -o '"status": *"serving"' | wc -l || true)
    [[ "$n" -ge 3 ]] && break
    sleep 0.2
done
cat >"$state/env" <<EOF
export RELAYCTL_URL=http://127.0.0.1:8080
export RELAYCTL_TOKEN=$admin
export PLAYER_TOKEN=$player
EOF

cat <<EOF

Local deployment running (logs in $state/logs/, Ctrl-C stops it):

  signaling     http://127.0.0.1:8080/v1/          metrics http://127.0.0.1:8080/metrics
  relays        eu-central    udp 127.0.0.1:3478   metrics http://127.0.0.1:9090/metrics   WHIP/WHEP http://127.0.0.1:8088
                us-east       udp 127.0.0.1:3479   metrics http://127.0.0.1:9091/metrics   WHIP/WHEP http://127.0.0.1:8089
                ap-southeast  udp 127.0.0.1:3480   metrics http://127.0.0.1:9092/metrics   WHIP/WHEP http://127.0.0.1:8090

Tokens and the CLI's settings are in $state/env:

  source $state/env

An ICE configuration for a player (probes favour us-east here; without them the default region):

  curl -s -X POST http://127.0.0.1:8080/v1/ice-config -H "Authorization: Bearer \$PLAYER_TOKEN" \\
       -H 'content-type: application/json' \\
       -d '{"probes": {"us-east": [40, 20, 21, 19, 20], "eu-central": [90, 80, 81, 79, 80]}}'

The admin CLI:

  $bin/relayctl relays
  $bin/relayctl relays links          # the relays' QUIC links to each other and their RTTs
  $bin/relayctl probe
  $bin/relayctl relays drain local-us-east
  $bin/relayctl sessions

EOF
"$bin/relayctl" --url http://127.0.0.1:8080 --token "$admin" relays || true
wait -n "${pids[@]}" || true
echo "error: a process exited; see $state/logs/" >&2
